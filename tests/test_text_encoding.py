"""Text encoding cut to each batch's longest text equals open_clip's ``encode_text`` (within 1e-5),
on the tiny random model and on a text tower the size of ViT-B-32's; models with another text path
fall back to ``encode_text``."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers import TINY_CLIP_CONFIG
from kbuild.clip import causal
from kbuild.clip.models import load_clip

TEXTS = [
    "a photo of a cat, which has whiskers",
    "",
    "red",
    "a photo of a painted bunting, which has a bright blue head, a red underside and a green back, "
    "a small conical bill and short rounded wings that it flaps quickly when flying between bushes",
    "naïve café — ümlaut 🐦 test",
    "a photo of a cat, which has whiskers",  # a duplicate keeps its own row
    " ".join(["very long text"] * 60),  # over the 77-token context: cut by the tokenizer
    "a photo of a dog, which has four legs.",
]

# ViT-B-32's text tower (width 512, 8 heads, 12 layers) with a tiny image tower: random weights.
VIT_B_TEXT = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}


def _reference(model, tokens) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model.encode_text(tokens, normalize=True).float().numpy()


def _seq_lengths(model):
    """Record the sequence length of every run of the first text block (both paths call its ``ln_1``)."""
    seen: list[int] = []
    block = model.transformer.resblocks[0]
    handle = block.ln_1.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[1])))
    return seen, handle


def test_tiny_model_matches_encode_text_and_runs_short_sequences(tiny_model, monkeypatch):
    import torch

    monkeypatch.setattr(causal, "MIN_BATCH_TOKENS", 64)  # a few texts: let lengths split the batches
    clip = load_clip(tiny_model, None)
    assert clip.truncated_text
    texts = TEXTS * 5
    expected = _reference(clip.model, clip.tokenizer(texts))
    seen, handle = _seq_lengths(clip.model)
    try:
        got = clip.encode_texts(texts)
    finally:
        handle.remove()
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5
    # the over-long text needs 77 (76 shared by its duplicates + its end-of-text token); short ones far less
    assert seen and max(seen) >= 76 and min(seen) < 20
    assert torch.is_inference_mode_enabled() is False


@pytest.mark.slow
def test_vit_b_sized_text_tower_matches_encode_text(seed=0):
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**VIT_B_TEXT).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    rng = np.random.default_rng(seed)
    words = "a photo of bird which has black white long short wings bill tail feathers red".split()
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 40))) for _ in range(40)] + TEXTS
    tokens = tokenizer(texts)
    assert causal.supports(model)
    with torch.inference_mode():
        got = causal.encode(model, tokens).numpy()
    assert np.abs(got - _reference(model, tokens)).max() <= 1e-5


def test_rows_come_back_in_the_callers_order(tiny_model):
    clip = load_clip(tiny_model, None)
    order = np.random.default_rng(3).permutation(len(TEXTS))
    once = clip.encode_texts(TEXTS)
    shuffled = clip.encode_texts([TEXTS[i] for i in order])
    assert np.abs(shuffled - once[order]).max() <= 1e-6


def test_batches_are_sorted_by_length_and_cover_every_row():
    lengths = np.array([5, 77, 3, 12, 12, 40, 3])
    batches = list(causal.length_batches(lengths, batch_tokens=80, max_batch=3, min_tokens=0))
    rows = np.concatenate([b for b, _ in batches])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for b, padded in batches:
        assert padded == lengths[b].max() and len(b) <= 3
    pads = [p for _, p in batches]
    assert pads == sorted(pads)
    # too few tokens for a batch of its own: the short rows ride with the next length
    together = list(causal.length_batches(np.array([3, 3, 12, 12]), min_tokens=1000))
    assert [(sorted(b.tolist()), p) for b, p in together] == [([0, 1, 2, 3], 12)]
    apart = list(causal.length_batches(np.array([3, 3, 12, 12]), min_tokens=0))
    assert [p for _, p in apart] == [3, 12]


def test_other_text_paths_fall_back_to_encode_text(tiny_model):
    import open_clip
    import torch

    last_pool = open_clip.CLIP(**tiny_config(text_cfg={"pool_type": "last"})).eval()
    no_mask = open_clip.CLIP(**tiny_config(text_cfg={"no_causal_mask": True})).eval()
    custom = open_clip.CustomTextCLIP(**tiny_config()).eval()
    for model in (last_pool, no_mask, custom):
        assert not causal.supports(model)

    class Overridden(open_clip.CLIP):
        def encode_text(self, text, normalize: bool = False):
            return super().encode_text(text, normalize) * 2

    assert not causal.supports(Overridden(**tiny_config()))
    assert causal.supports(open_clip.CLIP(**tiny_config()))
    assert torch.is_tensor(custom.text.attn_mask)


def tiny_config(text_cfg: dict | None = None) -> dict:
    """The tests' tiny CLIP config with some text settings changed."""
    config = copy.deepcopy(TINY_CLIP_CONFIG)
    config["text_cfg"].update(text_cfg or {})
    return config
