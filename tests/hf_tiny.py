"""A tiny random transformers ``CLIPModel`` + ``CLIPProcessor`` saved with ``save_pretrained``.

No download: the tokenizer's vocabulary and merges come from the BPE file open_clip ships (the same
49408-token CLIP vocabulary the hub checkpoints use), written in the layout ``CLIPTokenizer`` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

OPEN_CLIP_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def _write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer()
    vocab = {OPEN_CLIP_SPECIALS.get(token, token): index for token, index in simple.encoder.items()}
    merges = [" ".join(pair) for pair, _rank in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tiny_hf_clip_dir(folder: Path, seed: int = 0) -> Path:
    """Save a seeded random CLIPModel (dim 32, 32x32 images) and its processor into ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "_tokenizer_src"
    work.mkdir(exist_ok=True)
    vocab_file, merges_file = _write_tokenizer_files(work)
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=24)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    for leftover in work.iterdir():
        leftover.unlink()
    work.rmdir()
    return folder
