"""Text encoding for open_clip CLIP models that pads each batch only to its longest text.

open_clip's ``encode_text`` always runs the text transformer over the full context (77 tokens),
though a description is typically 10-25 tokens. CLIP's text tower is causal (token i attends to
tokens <= i only) and reads its output at the end-of-text token, which the tokenizer gives the
largest id, so the pooled position is ``argmax(token ids)``. Everything after the longest text's
end-of-text token in a batch therefore cannot change the result: the transformer runs on the
tokens up to that point, with the positional embedding and the causal mask sliced to the same
length. Texts are sorted by length so that each batch holds texts of similar length, and the
rows are returned in the caller's order. Texts that share a token prefix (one template, one
class) go further where the blocks allow it: the prefix runs once per group and each text runs
only its own tokens against the cached keys and values (``prefix_groups``, ``kv_text``).

The result equals ``encode_text`` up to float32 rounding of the shorter matrix products (a few
1e-7; ``tests/test_text_encoding.py`` holds it within 1e-5). Models whose text path differs
(another pooling, no causal mask, a text tower of another class, an overridden ``encode_text``)
are not handled here: ``supports`` says so, and the caller uses ``encode_text``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kbuild.clip import kv_text
from kbuild.clip.prefix_groups import shared_prefixes

if TYPE_CHECKING:  # torch loads only when a batch is encoded
    import torch

BATCH_TOKENS = 16384  # at most this many tokens (rows x padded length) per forward pass
MIN_BATCH_TOKENS = 4096  # below this a batch keeps growing even past a length jump: on a CPU, small
#                          matrix products cost more per token than the padding they save
MAX_BATCH = 512
MIN_SHARED = 0.1  # share prefixes when that skips at least this fraction of the token positions


def supports(model) -> bool:
    """Whether ``model`` is an open_clip ``CLIP`` whose text path is the causal, argmax-pooled one."""
    try:
        from open_clip.model import CLIP
    except ImportError:
        return False
    if not isinstance(model, CLIP) or type(model).encode_text is not CLIP.encode_text:
        return False
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if any(getattr(model, name, None) is None for name in needed):
        return False
    mask = model.attn_mask
    # A causal mask: -inf strictly above the diagonal, 0 elsewhere.
    causal = mask.dim() == 2 and bool((mask.triu(1) == float("-inf")).sum() == mask.shape[0] * (mask.shape[0] - 1) // 2)
    return getattr(model, "text_pool_type", "argmax") == "argmax" and causal


def end_positions(tokens) -> np.ndarray:
    """(B,) index of each row's end-of-text token (its largest id), as ``encode_text`` pools it."""
    return tokens.argmax(dim=-1).cpu().numpy()


def length_batches(lengths: np.ndarray, batch_tokens: int = BATCH_TOKENS, max_batch: int = MAX_BATCH,
                   min_tokens: int | None = None):
    """Row indices grouped into batches of similar length, shortest first: (rows, padded length)."""
    min_tokens = MIN_BATCH_TOKENS if min_tokens is None else min_tokens
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        stop = start + 1
        # rows are sorted, so the batch's padded length is its last row's length; a batch of
        # enough tokens ends where lengths jump (a few long texts must not pad many short ones)
        longest = 1.2 * int(lengths[order[start]]) + 2
        while stop < len(order) and stop - start < max_batch and \
                (stop - start + 1) * int(lengths[order[stop]]) <= batch_tokens and \
                (int(lengths[order[stop]]) <= longest or (stop - start) * int(lengths[order[stop - 1]]) < min_tokens):
            stop += 1
        rows = order[start:stop]
        yield rows, int(lengths[rows[-1]])
        start = stop


def encode(model: Any, tokens: torch.Tensor, share_prefixes: bool = True) -> torch.Tensor:
    """(B, D) unit text embeddings of (B, L) token ids, each batch cut to its longest text.

    Texts that share a token prefix (one template, one class) run it once per group
    (``kv_text``) where the model allows it and that skips enough positions; ``share_prefixes``
    False keeps to the sorted, cut batches alone (benchmarks compare the two)."""
    import torch
    import torch.nn.functional as F

    lengths = end_positions(tokens) + 1
    if share_prefixes and kv_text.supports(model):
        groups = shared_prefixes(tokens.cpu().numpy(), lengths)
        if groups.saved_tokens() >= MIN_SHARED * lengths.sum():
            return kv_text.encode(model, tokens, lengths, groups, length_batches)
    out = torch.empty((tokens.shape[0], _output_dim(model)), dtype=torch.float32, device=tokens.device)
    cast_dtype = model.transformer.get_cast_dtype()
    for rows, length in length_batches(lengths):
        index = torch.as_tensor(rows, device=tokens.device)
        batch = tokens.index_select(0, index)[:, :length]
        x = model.token_embedding(batch).to(cast_dtype)
        x = x + model.positional_embedding[:length].to(cast_dtype)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), batch.argmax(dim=-1)]
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
                else x @ model.text_projection
        out[index] = F.normalize(x.float(), dim=-1)
    return out


def _output_dim(model) -> int:
    projection = model.text_projection
    if projection is None:
        return int(model.ln_final.normalized_shape[0])
    if hasattr(projection, "out_features"):
        return int(projection.out_features)
    return int(projection.shape[1])
