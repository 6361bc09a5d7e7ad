"""CLIP's text tower run once per shared prefix, then on each text's remaining tokens (a KV cache).

The text tower is causal: the hidden state at position i, and so the keys and values every layer
derives from it, depend only on tokens <= i. Texts that start with the same tokens (one template,
one class: ``prefix_groups``) therefore share those positions' keys and values at every layer.
They are computed once per group (``_run_prefixes``); each text then runs only its own tokens,
at positions prefix + t, attending to its group's cached keys and values and causally to its own
(``_run_suffixes``), as LLM serving does with a prompt cache. Groups of different prefix lengths
share a batch: the cache is padded and a mask hides what lies past each row's prefix.

The last block's output is read at the end-of-text token only, so there its query, attention
output and MLP are computed for that one position per text; a prefix needs no last-block output
at all, only that block's keys and values.

The blocks are open_clip's ``ResidualAttentionBlock`` with an ``nn.MultiheadAttention``, whose
arithmetic this module repeats with its weights (``F.scaled_dot_product_attention``, as the
module itself uses); ``supports`` refuses every other block, and the caller keeps the plain path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kbuild.clip.prefix_groups import PrefixGroups

if TYPE_CHECKING:  # torch loads only when a batch is encoded
    import torch

CHUNK_ROWS = 2048  # texts whose groups' caches are held at once; their suffixes batch together
CHUNK_PREFIX_TOKENS = 4096  # and at most this many cached positions (groups x longest prefix)
SUFFIX_MIN_TOKENS = 512  # suffixes are short: a batch ends at a length jump sooner than a full text's


def supports(model: Any) -> bool:
    """Whether every text block is a plain open_clip ``ResidualAttentionBlock`` this module can repeat."""
    try:
        from open_clip.transformer import ResidualAttentionBlock, Transformer
        from torch import nn
    except ImportError:
        return False
    transformer: Any = getattr(model, "transformer", None)
    if type(transformer) is not Transformer or transformer.training:
        return False
    for block in transformer.resblocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv") or \
                type(attn) is not nn.MultiheadAttention:
            return False
        # one packed input projection, no extra key/value rows: what the arithmetic below repeats
        if not attn._qkv_same_embed_dim or attn.in_proj_weight is None or attn.bias_k is not None or \
                attn.bias_v is not None or attn.add_zero_attn:
            return False
    return True


def encode(model: Any, tokens: torch.Tensor, lengths: np.ndarray, groups: PrefixGroups,
           batches: Any) -> torch.Tensor:
    """(B, D) unit text embeddings; ``batches(lengths)`` yields (rows, padded length) batches."""
    import torch

    out = torch.empty((tokens.shape[0], _output_dim(model)), dtype=torch.float32, device=tokens.device)
    for chunk_groups in _chunks(groups):
        rows = np.flatnonzero(np.isin(groups.group, chunk_groups))
        cache = _run_prefixes(model, tokens, groups, chunk_groups, batches)
        _run_suffixes(model, tokens, _Rows(rows, lengths[rows], groups, chunk_groups), cache=cache, batches=batches, out=out)
    return out


class _Rows:
    """Texts of one chunk: their rows, lengths, prefix lengths and index into the chunk's cache."""

    def __init__(self, rows: np.ndarray, lengths: np.ndarray, groups: PrefixGroups, chunk_groups: np.ndarray):
        self.rows = rows
        slot = np.zeros(len(groups.prefix), dtype=np.int64)  # slot 0: no prefix (an empty cache row)
        shared = chunk_groups[groups.prefix[chunk_groups] > 0]
        slot[shared] = np.arange(1, len(shared) + 1)
        self.slot = slot[groups.group[rows]]
        self.prefix = groups.prefix[groups.group[rows]]
        self.suffix = lengths - self.prefix


def _chunks(groups: PrefixGroups):
    """Consecutive groups holding about ``CHUNK_ROWS`` texts, with a bounded cache."""
    sizes = np.bincount(groups.group, minlength=len(groups.prefix))
    start = 0
    while start < len(sizes):
        stop, rows, cached, longest = start, 0, 0, 0
        while stop < len(sizes) and rows < CHUNK_ROWS and \
                (cached + 1) * max(longest, int(groups.prefix[stop])) <= CHUNK_PREFIX_TOKENS:
            rows += int(sizes[stop])
            cached += int(groups.prefix[stop] > 0)
            longest = max(longest, int(groups.prefix[stop]))
            stop += 1
        stop = max(stop, start + 1)
        yield np.arange(start, stop)
        start = stop


def _run_prefixes(model, tokens, groups: PrefixGroups, chunk_groups: np.ndarray, batches):
    """Keys and values of every block at the prefix positions of each group that shares one:
    per block, two (1 + groups, H, P, hd), slot 0 empty (for texts without a prefix)."""
    import torch

    blocks = model.transformer.resblocks
    shared = chunk_groups[groups.prefix[chunk_groups] > 0]
    prefix = groups.prefix[shared]
    longest = int(prefix.max()) if len(shared) else 0
    heads, width = blocks[0].attn.num_heads, blocks[0].attn.embed_dim
    cast_dtype = model.transformer.get_cast_dtype()
    # group first: a batch gathers each row's cache as one contiguous block
    shape = (1 + len(shared), heads, longest, width // heads)
    cache = [(torch.zeros(shape, dtype=cast_dtype, device=tokens.device),
              torch.zeros(shape, dtype=cast_dtype, device=tokens.device)) for _ in blocks]
    for batch, length in batches(prefix) if len(shared) else ():
        slots = torch.as_tensor(batch + 1, device=tokens.device)
        ids = tokens.index_select(0, torch.as_tensor(groups.first_row[shared[batch]], device=tokens.device))[:, :length]
        x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        for layer, block in enumerate(blocks):
            h = block.ln_1(x)
            if layer == len(blocks) - 1:  # nothing reads a prefix's last-block output: keys and values only
                k, v = _split_heads(torch.nn.functional.linear(h, block.attn.in_proj_weight[width:],
                                                               _bias(block.attn, width)), 2, heads)
                cache[layer][0][slots, :, :length] = k
                cache[layer][1][slots, :, :length] = v
                break
            q, k, v = _split_heads(torch.nn.functional.linear(h, block.attn.in_proj_weight,
                                                              block.attn.in_proj_bias), 3, heads)
            cache[layer][0][slots, :, :length] = k
            cache[layer][1][slots, :, :length] = v
            attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = _after_attention(block, x, attended)
    return cache


def _run_suffixes(model, tokens, chunk: _Rows, *, cache, batches, out) -> None:
    """Each text's own tokens after its group's prefix, attending to the cached prefix; writes ``out``."""
    import torch

    device = tokens.device
    blocks = model.transformer.resblocks
    heads = blocks[0].attn.num_heads
    cast_dtype = model.transformer.get_cast_dtype()
    context = model.positional_embedding.shape[0]
    for batch, length in batches(chunk.suffix, min_tokens=SUFFIX_MIN_TOKENS):
        prefix = torch.as_tensor(chunk.prefix[batch], device=device)
        shared = int(prefix.max())
        steps = torch.arange(length, device=device)
        # position of each suffix token; padding past a row's end may run off the context: clamp it
        positions = (prefix[:, None] + steps[None, :]).clamp(max=context - 1)
        rows = torch.as_tensor(chunk.rows[batch], device=device)
        ids = tokens.index_select(0, rows).gather(1, positions)
        x = model.token_embedding(ids).to(cast_dtype) + model.positional_embedding[positions].to(cast_dtype)
        slots = torch.as_tensor(chunk.slot[batch], device=device)
        # keys: the row's own prefix (padding past it hidden), then its own tokens causally
        sees_prefix = (torch.arange(shared, device=device)[None, :] < prefix[:, None])[:, None, None, :]
        causal = torch.ones((length, length), dtype=torch.bool, device=device).tril()
        mask = torch.cat([sees_prefix.expand(-1, 1, length, -1), causal.expand(len(batch), 1, -1, -1)], dim=-1)
        for layer, block in enumerate(blocks[:-1]):
            q, k, v = _split_heads(torch.nn.functional.linear(block.ln_1(x), block.attn.in_proj_weight,
                                                              block.attn.in_proj_bias), 3, heads)
            k = torch.cat([cache[layer][0].index_select(0, slots)[:, :, :shared], k], dim=2)
            v = torch.cat([cache[layer][1].index_select(0, slots)[:, :, :shared], v], dim=2)
            attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = _after_attention(block, x, attended)
        end = torch.as_tensor(chunk.suffix[batch] - 1, device=device)
        past = [part.index_select(0, slots)[:, :, :shared] for part in cache[-1]]
        pooled = _last_block(blocks[-1], x, end, past, mask[torch.arange(len(batch), device=device), :, end][:, :, None])
        out[rows] = _project(model, pooled)


def _last_block(block, x, end, past, mask):
    """The last block at each row's end-of-text position only: (B, width)."""
    import torch

    heads, width = block.attn.num_heads, block.attn.embed_dim
    h = block.ln_1(x)
    picked = torch.arange(x.shape[0], device=x.device)
    k, v = _split_heads(torch.nn.functional.linear(h, block.attn.in_proj_weight[width:], _bias(block.attn, width)),
                        2, heads)
    bias = None if block.attn.in_proj_bias is None else block.attn.in_proj_bias[:width]
    q = torch.nn.functional.linear(h[picked, end][:, None], block.attn.in_proj_weight[:width], bias)
    (q,) = _split_heads(q, 1, heads)
    attended = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2), attn_mask=mask)
    return _after_attention(block, x[picked, end][:, None], attended)[:, 0]


def _after_attention(block, x, attended):
    """Residual of the attention output (heads merged, out projection), then the MLP's."""
    import torch

    merged = attended.transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(torch.nn.functional.linear(merged, block.attn.out_proj.weight, block.attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _split_heads(packed, parts: int, heads: int):
    """(B, L, parts * width) -> ``parts`` tensors of (B, heads, L, head width)."""
    b, length, total = packed.shape
    return packed.view(b, length, parts, heads, total // parts // heads).permute(2, 0, 3, 1, 4).unbind(0)


def _bias(attn, width: int):
    """The key and value rows of the packed input bias (None without a bias)."""
    return None if attn.in_proj_bias is None else attn.in_proj_bias[width:]


def _project(model, x):
    import torch
    import torch.nn.functional as F

    x = model.ln_final(x)
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) \
            else x @ model.text_projection
    return F.normalize(x.float(), dim=-1)


def _output_dim(model) -> int:
    projection = model.text_projection
    if projection is None:
        return int(model.ln_final.normalized_shape[0])
    if hasattr(projection, "out_features"):
        return int(projection.out_features)
    return int(projection.shape[1])
