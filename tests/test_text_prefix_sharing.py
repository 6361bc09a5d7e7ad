"""Texts that share a token prefix (one template, one class) run it once per group, then only their
own tokens against the cached keys and values: embeddings equal open_clip's ``encode_text`` within
1e-5, on the tiny random model and on a text tower the size of ViT-B-32's; blocks of another form
keep the sorted path."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers import TINY_CLIP_CONFIG
from kbuild.clip import causal, kv_text
from kbuild.clip.prefix_groups import shared_prefixes
from kbuild.descriptions import DEFAULT_TEMPLATE

# classes whose names tokenize to different lengths, so prefixes of different lengths share batches
CLASSES = {
    "cat": ["whiskers", "soft fur and a long tail", "green eyes"],
    "painted bunting": ["a bright blue head", "red underside and a green back", "short rounded wings"],
    "great crested flycatcher with a lemon yellow belly": ["rusty wings", "olive back"],
    "dog": ["x"],  # one token past its prefix
}
EXTRA = [
    "a photo of a cat, which has",  # a text equal to its class's prefix (the template, empty description)
    "a photo of a cat, which has whiskers",  # a duplicate keeps its own row
    "a photo of a cat, which has whiskers",
    "completely different text about a zebra",
]
VIT_B_TEXT = {
    "embed_dim": 512,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}


def templated() -> list[str]:
    return [DEFAULT_TEMPLATE.format(name, text) for name, rows in CLASSES.items() for text in rows] + EXTRA


@pytest.fixture(scope="module")
def tokenizer():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def model_of(config: dict, seed: int = 0, **text_cfg):
    import open_clip
    import torch

    torch.manual_seed(seed)
    config = copy.deepcopy(config)
    config["text_cfg"].update(text_cfg)
    return open_clip.CLIP(**config).eval()


def reference(model, tokens) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model.encode_text(tokens, normalize=True).float().numpy()


def encode_counting(model, tokens, monkeypatch) -> tuple[np.ndarray, list[int]]:
    """``causal.encode`` and how many rows went through the shared-prefix path."""
    import torch

    shared: list[int] = []
    real = kv_text.encode

    def spy(model, tokens, *args, **kwargs):
        shared.append(int(tokens.shape[0]))
        return real(model, tokens, *args, **kwargs)

    monkeypatch.setattr(kv_text, "encode", spy)
    with torch.inference_mode():
        return causal.encode(model, tokens).numpy(), shared


def lengths_of(tokens) -> np.ndarray:
    return tokens.argmax(dim=-1).numpy() + 1


def test_groups_share_each_class_prefix_of_its_own_length(tokenizer):
    texts = templated()
    tokens = tokenizer(texts)
    groups = shared_prefixes(tokens.numpy(), lengths_of(tokens))
    for name, rows in CLASSES.items():
        if len(rows) < 2:
            continue
        expected = len(tokenizer.encode(f"a photo of a {name}, which has")) + 1  # + the start token
        members = [i for i, text in enumerate(texts) if text.startswith(f"a photo of a {name},")]
        assert len({int(groups.group[i]) for i in members}) == 1
        assert groups.prefix[groups.group[members[0]]] == expected
    first = texts.index("a photo of a cat, which has whiskers")
    assert groups.group[first] == groups.group[len(texts) - 2] == groups.group[len(texts) - 3]
    lengths = lengths_of(tokens)
    # every row keeps at least its end-of-text token to itself
    assert (groups.prefix[groups.group] <= lengths - 1).all()
    assert groups.saved_tokens() > 0.3 * lengths.sum()


def test_one_text_duplicates_and_unrelated_texts(tokenizer):
    one = tokenizer(["a photo of a cat, which has whiskers"])
    single = shared_prefixes(one.numpy(), lengths_of(one))
    assert single.prefix.tolist() == [0] and single.saved_tokens() == 0
    twice = tokenizer(["red", "red"])
    pair = shared_prefixes(twice.numpy(), lengths_of(twice))
    assert pair.prefix.tolist() == [2]  # start token + "red"; the end-of-text token stays each row's own
    unrelated = tokenizer(["zebra stripes", "an orange cat", "blue sky at noon", "the red door", ""])
    apart = shared_prefixes(unrelated.numpy(), lengths_of(unrelated))
    # only the start token is common: not worth a shared run
    assert apart.saved_tokens() < causal.MIN_SHARED * lengths_of(unrelated).sum()


def test_tiny_model_shared_prefixes_match_encode_text(tokenizer, monkeypatch):
    model = model_of(TINY_CLIP_CONFIG)
    assert kv_text.supports(model)
    for texts in (templated(), templated()[:1] * 3, [DEFAULT_TEMPLATE.format("dog", "x"), "a photo of a dog, which has"]):
        tokens = tokenizer(texts)
        got, shared = encode_counting(model, tokens, monkeypatch)
        assert shared == [len(texts)], texts
        assert np.abs(got - reference(model, tokens)).max() <= 1e-5


def test_unrelated_texts_keep_the_sorted_path(tokenizer, monkeypatch):
    model = model_of(TINY_CLIP_CONFIG)
    texts = ["zebra stripes", "an orange cat", "blue sky at noon", "the red door", "", "one"]
    tokens = tokenizer(texts)
    got, shared = encode_counting(model, tokens, monkeypatch)
    assert shared == []
    assert np.abs(got - reference(model, tokens)).max() <= 1e-5


@pytest.mark.slow
def test_vit_b_sized_tower_in_small_chunks_and_batches(tokenizer, monkeypatch):
    # several chunks, each with its own cache, and suffix batches split by length
    monkeypatch.setattr(kv_text, "CHUNK_ROWS", 4)
    monkeypatch.setattr(kv_text, "CHUNK_PREFIX_TOKENS", 40)
    monkeypatch.setattr(kv_text, "SUFFIX_MIN_TOKENS", 0)
    model = model_of(VIT_B_TEXT)
    rng = np.random.default_rng(0)
    words = "black white long short wings bill tail feathers red a".split()
    texts = templated() + [DEFAULT_TEMPLATE.format(name, " ".join(rng.choice(words, size=rng.integers(1, 30))))
                           for name in ("sparrow", "blue jay", "northern cardinal bird") for _ in range(6)]
    tokens = tokenizer(texts)
    got, shared = encode_counting(model, tokens, monkeypatch)
    assert shared == [len(texts)]
    assert np.abs(got - reference(model, tokens)).max() <= 1e-5


def test_layer_scale_and_sequence_first_blocks_match(tokenizer, monkeypatch):
    tokens = tokenizer(templated())
    scaled = model_of(TINY_CLIP_CONFIG, ls_init_value=0.5)
    sequence_first = model_of(TINY_CLIP_CONFIG, seed=1)
    sequence_first.transformer.batch_first = False
    for block in sequence_first.transformer.resblocks:
        block.attn.batch_first = False
    for model in (scaled, sequence_first):
        got, shared = encode_counting(model, tokens, monkeypatch)
        assert shared, "the shared path handles layer scale and sequence-first attention"
        assert np.abs(got - reference(model, tokens)).max() <= 1e-5


def test_other_blocks_are_refused_and_keep_the_sorted_path(tokenizer, monkeypatch):
    tokens = tokenizer(templated())
    custom = model_of(TINY_CLIP_CONFIG, qk_norm=True)  # CustomResidualAttentionBlock
    inner_norm = model_of(TINY_CLIP_CONFIG, scale_attn_inner=True)
    training = model_of(TINY_CLIP_CONFIG).train()
    for model in (custom, inner_norm):
        assert causal.supports(model) and not kv_text.supports(model)
        got, shared = encode_counting(model, tokens, monkeypatch)
        assert shared == []
        assert np.abs(got - reference(model, tokens)).max() <= 1e-5
    assert not kv_text.supports(training)
