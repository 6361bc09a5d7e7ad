"""Which texts share a token prefix, and how long a prefix each group shares.

Texts of a knowledge base are rendered with one template ("a photo of a {class}, which has
{description}"), so every text of a class starts with the same tokens: the start token and
"a photo of a <class>, which has", often half of the text. CLIP's text tower is causal, so those
positions' hidden states do not depend on what follows and can be computed once per group
(``kv_text``). This module only decides the groups, on token ids, without torch.

Rows are sorted lexicographically by their tokens, which places rows with a common prefix next to
each other (a trie read in order); the longest common prefix (LCP) of neighbours then describes
the trie. A group is a run of sorted rows; its prefix is the smallest neighbour LCP inside it,
kept at least one token short of every member's end-of-text token (that token's output is the
embedding, so it must be computed for each row). A group of ``n`` rows sharing ``p`` tokens saves
``(n - 1) * p`` token positions; the grouping maximises the saving over the trie's nodes: a node
either becomes one group at its own depth or leaves the choice to its children (the runs between
its shallowest LCPs), whichever saves more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_PREFIX = 2  # every text starts with the start token: sharing that alone is not worth a cached run


@dataclass(frozen=True)
class PrefixGroups:
    """``group[i]``: row i's group; ``prefix[g]``: tokens shared by group g (0: nothing shared)."""

    group: np.ndarray  # (rows,) int, groups numbered in sorted-token order
    prefix: np.ndarray  # (groups,) int
    first_row: np.ndarray  # (groups,) one row of each group, whose tokens hold the prefix

    def saved_tokens(self) -> int:
        """Token positions not run thanks to sharing (each prefix still runs once)."""
        sizes = np.bincount(self.group, minlength=len(self.prefix))
        return int(((sizes - 1) * self.prefix).sum())


def neighbour_lcp(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows in lexicographic token order and each neighbour pair's shareable prefix length.

    ``tokens`` (rows, context) ids; ``lengths`` each row's tokens up to its end-of-text token."""
    order = np.lexsort(tokens[:, ::-1].T)  # lexsort's last key is the primary one: column 0
    ranked = tokens[order]
    differ = ranked[1:] != ranked[:-1]
    lcp = np.where(differ.any(axis=1), differ.argmax(axis=1), tokens.shape[1])
    ends = lengths[order]
    # a duplicate shares all of its tokens: keep its end-of-text token out of the prefix
    return order, np.minimum(lcp, np.minimum(ends[1:], ends[:-1]) - 1).clip(min=0)


def shared_prefixes(tokens: np.ndarray, lengths: np.ndarray) -> PrefixGroups:
    """Group rows by shared token prefix so that the prefixes' positions run once per group."""
    rows = len(lengths)
    order, lcp = neighbour_lcp(np.asarray(tokens), np.asarray(lengths))
    runs: list[tuple[int, int, int]] = []  # (start, stop, prefix) in sorted order
    _split(lcp, 0, rows, runs)
    group = np.empty(rows, dtype=np.int64)
    prefix = np.empty(len(runs), dtype=np.int64)
    first_row = np.empty(len(runs), dtype=np.int64)
    for g, (start, stop, shared) in enumerate(runs):
        group[order[start:stop]] = g
        prefix[g] = shared
        first_row[g] = order[start]
    return PrefixGroups(group, prefix, first_row)


def _split(lcp: np.ndarray, start: int, stop: int, runs: list[tuple[int, int, int]]) -> int:
    """Best grouping of sorted rows [start, stop): appends its runs, returns its saving.

    Recursion depth is bounded by the context length: each level's shallowest LCP is deeper."""
    if stop - start < 2:
        runs.append((start, stop, 0))
        return 0
    inner = lcp[start:stop - 1]
    depth = int(inner.min())
    whole = (stop - start - 1) * depth
    cuts = [start, *(np.flatnonzero(inner == depth) + start + 1).tolist(), stop]
    children: list[tuple[int, int, int]] = []
    saved = sum(_split(lcp, lo, hi, children) for lo, hi in zip(cuts[:-1], cuts[1:]))
    if depth >= MIN_PREFIX and whole >= saved:
        runs.append((start, stop, depth))
        return whole
    runs.extend(children)
    return saved
