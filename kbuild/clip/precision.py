"""Arithmetic precision of image encoding (``--precision``), shared by the open_clip and transformers models."""

from __future__ import annotations

import contextlib

from kbuild.errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16")


def pick_precision(device: str, precision: str | None = None) -> str:
    """Image-encoding arithmetic: fp16 autocast on CUDA, fp32 elsewhere, unless ``precision`` says.

    Text is always encoded in fp32: text embeddings are cached by (model, template, text) alone.
    """
    if precision in (None, "", "auto"):
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be auto, {', '.join(PRECISIONS)} (got {precision!r})")
    return precision


def image_autocast(device: str, precision: str):
    """torch.autocast for fp16/bf16 on ``device`` (CPU autocast supports both), else a no-op."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    kind = "cuda" if device.startswith("cuda") else "cpu" if device == "cpu" else device
    return torch.autocast(kind, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
