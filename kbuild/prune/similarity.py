"""Blocked cosine-similarity search used by ``kbuild prune``.

Every function here works on (n, D) float32 matrices of unit rows, so a dot product is a cosine
similarity, and none of them ever holds an n x n matrix: rows are processed ``BLOCK`` at a time.

* ``greedy_suppress`` is non-maximum suppression: rows arrive in priority order and row i is
  dropped when ``x_i . x_j >= t`` for some earlier row j that was itself kept.
* ``pairs_above`` finds every pair i < j with ``x_i . x_j >= t`` exactly, without a full D-dim
  product for most pairs. Write x = V p + r with V the top-k principal directions of the rows
  and r orthogonal to them. Then ``x . y = p_x . p_y + r_x . r_y <= p_x . p_y + |r_x| |r_y|``
  (Cauchy-Schwarz), which is one (k+1)-dim product of ``[p_x, |r_x|]`` and ``[p_y, |r_y|]``.
  Only pairs whose bound reaches t get the full product, so no pair above t is ever missed.
* ``mmr_order`` is maximal marginal relevance: repeatedly pick
  ``argmax_j  w * rel_j - (1 - w) * max_{s in chosen} x_j . x_s``.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

BLOCK = 2048
_BOUND_RANK = 64
_BASIS_SAMPLE = 8192
# The bound is computed in float32 from a float64 basis; this slack absorbs its rounding so the
# filter can only let extra candidates through, never lose a true pair.
_BOUND_SLACK = 1e-4


def unit_rows(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """(n, D) float32 rows scaled to unit norm: a copy, or x itself when ``inplace`` (and float32).

    A zero row raises ValueError.
    """
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no (n, D) temporary, unlike norm()
    if np.any(norms == 0):
        raise ValueError("an embedding row is all zeros")
    if inplace:
        x /= norms
        return x
    scaled: np.ndarray = x / norms
    return scaled


def normalise_vector(v: np.ndarray) -> np.ndarray:
    """(D,) unit vector along v (v itself when it is zero)."""
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def greedy_suppress(x: np.ndarray, threshold: float, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Non-maximum suppression of (n, D) rows given in priority order.

    Returns ``by`` (n,) int, -1 for a kept row, else the index of the most similar earlier kept
    row that suppresses it, and ``sim`` (n,) float32, that similarity (0 for kept rows).
    """
    n = len(x)
    by = np.full(n, -1, dtype=np.int64)
    sim = np.zeros(n, dtype=np.float32)
    kept: list[np.ndarray] = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        prior_sim, prior_by = _best_among(x[start:stop], x, np.concatenate(kept) if kept else None, block)
        local_by, local_sim = _suppress_within(x[start:stop], threshold, prior_sim, prior_by, start)
        by[start:stop], sim[start:stop] = local_by, local_sim
        kept.append(np.arange(start, stop)[local_by < 0])
    return by, sim


def _best_among(rows: np.ndarray, x: np.ndarray, candidates: np.ndarray | None,
                block: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of (b, D) rows, the best similarity to x[candidates] and which candidate gives it."""
    best_sim = np.full(len(rows), -np.inf, dtype=np.float32)
    best_by = np.full(len(rows), -1, dtype=np.int64)
    if candidates is None:
        return best_sim, best_by
    for start in range(0, len(candidates), block):
        chunk = candidates[start:start + block]
        s = rows @ x[chunk].T
        j = s.argmax(axis=1)
        s_j = s[np.arange(len(rows)), j]
        better = s_j > best_sim  # strict: on ties the earlier (higher-priority) row stays
        best_sim[better], best_by[better] = s_j[better], chunk[j[better]]
    return best_sim, best_by


def _suppress_within(rows: np.ndarray, threshold: float, prior_sim: np.ndarray, prior_by: np.ndarray,
                     offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Suppression inside one block, given each row's best similarity to earlier blocks' kept rows."""
    n = len(rows)
    # only earlier rows of the block can suppress a row: mask the diagonal and above
    s = np.where(np.tri(n, k=-1, dtype=bool), rows @ rows.T, -np.inf).astype(np.float32)
    has_local = (s >= threshold).any(axis=1)
    best_sim, best_by = prior_sim.copy(), prior_by.copy()
    kept = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(has_local):
        # Rows without an in-block neighbour above threshold are settled by earlier blocks alone;
        # the others need the sequential pass, since only rows kept so far can suppress.
        kept[:i] = best_sim[:i] < threshold
        local = np.where(kept[:i], s[i, :i], -np.inf)
        j = int(local.argmax())
        if local[j] > best_sim[i]:  # strict: on ties the earlier block's row has priority
            best_sim[i], best_by[i] = local[j], offset + j
    suppressed = best_sim >= threshold
    by = np.where(suppressed, best_by, -1)
    sim = np.where(suppressed, best_sim, 0).astype(np.float32)
    return by, sim


Hits = tuple[np.ndarray, np.ndarray, np.ndarray]


def pairs_above(x: np.ndarray, threshold: float, block: int = BLOCK) -> Iterator[Hits]:
    """Every pair i < j of (n, D) unit rows with ``x_i . x_j >= threshold``.

    Yields (i, j, sim) arrays one block pair at a time, so memory stays O(block^2) plus the hits.
    """
    bound = _bound_features(x)
    not_upper = np.tri(block, dtype=bool)  # the diagonal block's pairs with j <= i
    n = len(x)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        for j0 in range(i0, n, block):
            j1 = min(j0 + block, n)
            hit = _block_pairs(x, bound, threshold=threshold, rows=(i0, i1), cols=(j0, j1), not_upper=not_upper)
            if hit is not None:
                yield hit


def _bound_features(x: np.ndarray) -> np.ndarray:
    """(n, k+1) rows ``[p, |r|]`` whose dot products bound the true cosines from above."""
    k = min(_BOUND_RANK, x.shape[1])
    # Any orthonormal basis keeps the bound exact; a strided sample of rows finds a good one.
    sample = x[:: max(1, len(x) // _BASIS_SAMPLE)]
    basis = _top_subspace((sample.T @ sample).astype(np.float64), k).astype(np.float32)
    p = x @ basis
    residual = np.sqrt(np.clip(np.einsum("ij,ij->i", x, x) - np.einsum("ij,ij->i", p, p), 0, None))
    return np.hstack([p, residual[:, None]]).astype(np.float32)


def _top_subspace(gram: np.ndarray, k: int, iterations: int = 4) -> np.ndarray:
    """(D, k) orthonormal basis near the top-k eigenvectors of (D, D) gram: subspace iteration
    from a fixed start, far cheaper than a full eigendecomposition and deterministic."""
    basis, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((gram.shape[0], k)))
    for _ in range(iterations):
        basis, _ = np.linalg.qr(gram @ basis)
    return basis


def _block_pairs(x: np.ndarray, bound: np.ndarray, threshold: float, rows: tuple[int, int], cols: tuple[int, int],
                 not_upper: np.ndarray) -> Hits | None:
    """Exact pairs above threshold between rows[0]:rows[1] and cols[0]:cols[1] (i < j), or None."""
    (i0, i1), (j0, j1) = rows, cols
    b = bound[i0:i1] @ bound[j0:j1].T
    if i0 == j0:
        np.copyto(b, -np.inf, where=not_upper[: i1 - i0, : j1 - j0])
    candidate_rows = np.flatnonzero(b.max(axis=1) >= threshold - _BOUND_SLACK)
    if candidate_rows.size == 0:  # the usual case
        return None
    r, c = np.nonzero(b[candidate_rows] >= threshold - _BOUND_SLACK)
    r = candidate_rows[r]
    if r.size <= 4 * (i1 - i0):
        s = np.einsum("ij,ij->i", x[i0 + r], x[j0 + c])
    else:  # many candidates: one product of the candidate rows is cheaper than gathering pairs
        s = (x[i0 + candidate_rows] @ x[j0:j1].T)[np.searchsorted(candidate_rows, r), c]
    keep = s >= threshold
    if not keep.any():
        return None
    return i0 + r[keep], j0 + c[keep], s[keep]


def mmr_order(x: np.ndarray, relevance: np.ndarray, n: int, weight: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The first n rows of (m, D) x chosen by maximal marginal relevance.

    ``relevance`` (m,) scores each row alone (e.g. similarity to its class centroid). Returns the
    chosen indices (n,) in pick order and their MMR scores (n,); ties go to the lower index.
    """
    m = len(x)
    n = min(n, m)
    redundancy = np.full(m, -np.inf, dtype=np.float32)
    available = np.ones(m, dtype=bool)
    chosen: list[int] = []
    scores: list[float] = []
    for step in range(n):
        penalty: np.ndarray | float = redundancy if step else 0.0
        score = weight * relevance - (1 - weight) * penalty
        score = np.where(available, score, -np.inf)
        j = int(score.argmax())
        chosen.append(j)
        scores.append(float(score[j]))
        available[j] = False
        redundancy = np.maximum(redundancy, x @ x[j])
    return np.array(chosen, dtype=np.int64), np.array(scores)
