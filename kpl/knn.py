"""k-nearest-neighbour graph by cosine similarity: exact in row blocks, or approximate with faiss.

For unit rows X (N, D), ``knn_graph(X, k)`` returns, for every image i, the indices of its k most
similar other images and the weights ``max(cos(x_i, x_j), 0)``.

``method="exact"`` processes rows ``block`` at a time against all of X, so memory is
O(block * N + N * k) instead of the O(N^2) of a full similarity matrix; time is O(N^2 D), about
7.5 minutes at N = 100 000 on 2 cores and so some 12 hours at N = 1 000 000.

``method="faiss"`` (optional dependency, ``pip install 'kpl-toolkit[scale]'``) is an inverted-file
(IVF) search on inner product: faiss's spherical k-means splits X into about sqrt(N) lists, and
the rows of each list are compared, by exact float32 matrix products, only with the rows of the
``nprobe`` lists whose centroids are nearest to their own list's. Neighbours in other lists can
be missed (recall is measured in benchmarks/bench_knn.py); the weights are true cosines, as in
the exact graph. Searching list by list keeps the work in BLAS: faiss's own per-query IVF search
ran 40x below the matrix-product speed on this project's 2-core machine at D 512, and it keeps no
copy of X (memory: X, one int64 per row, one list's similarities). Settings are fixed (k-means
seed, training sample, nprobe), so two runs give the same graph.

``method="auto"`` (the default) is exact below ``AUTO_FAISS_FROM`` images and faiss from there
when faiss is installed (exact otherwise).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kpl.errors import UsageError

DEFAULT_BLOCK = 1024
METHODS = ("auto", "exact", "faiss")
# Past this size "auto" uses faiss. The exact graph costs N^2 D: 7.5 min at 100k here, so
# 30 min at 200k; below 200k it is affordable and gives the exact answer, above it turns to hours.
AUTO_FAISS_FROM = 200_000
SCALE_EXTRA = "scale"
# inverted lists: about sqrt(N) (1000 at 1M: assigning 1M rows to 4 sqrt(N) lists, faiss's usual
# rule, costs 4x more and is the slow part on 2 cores), each trained with at least 39 points
LISTS_PER_SQRT_N = 1
MIN_TRAIN_PER_LIST = 39
TRAIN_PER_LIST = 64
KMEANS_ITERS = 10
SEED = 1234
# lists searched per list: 8 of 316 at 100k (2.5 % of the rows compared with each row), 8 of
# 1000 at 1M (0.8 %, 8000 rows). Time grows with it linearly, recall slowly
# (benchmarks/bench_knn.py); on 2 cores 8 keeps the 1M graph to minutes.
DEFAULT_NPROBE = 8
SEARCH_BLOCK = 65536
# similarities held at once when comparing a list's rows with its candidates (64 MB of float32)
QUERY_SIMS = 16 * 2**20


def faiss_module():
    """The faiss module, or None when it is not installed (the one place that checks)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UsageError(f"knn_graph: {name} must be an integer >= {low} (got {value!r})")


def knn_graph(features, k: int, block: int = DEFAULT_BLOCK, method: str = "auto",
              nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N, k) int64, weights (N, k) float32): each row's k nearest other rows by cosine.

    ``features`` must have unit rows (a float32 tensor or array). Exact: ties go to the lower
    index, as torch.topk orders them. With fewer than k other rows, k shrinks to N - 1.
    ``method``: "exact", "faiss" or "auto" (see the module doc); ``nprobe``: lists searched
    per list by faiss (default 8).
    """
    _check_int("k", k, 1)
    _check_int("block", block, 1)
    if method not in METHODS:
        raise UsageError(f"knn_graph: method must be one of {', '.join(METHODS)} (got {method!r})")
    if nprobe is not None:
        _check_int("nprobe", nprobe, 1)
    n = len(features)
    if method == "faiss" and faiss_module() is None:
        raise UsageError(f"knn_graph: method 'faiss' needs the faiss package; "
                         f"install it with: pip install 'kpl-toolkit[{SCALE_EXTRA}]'")
    if method == "faiss" or (method == "auto" and n >= AUTO_FAISS_FROM and faiss_module() is not None):
        return _faiss_graph(features, int(k), nprobe)
    return _exact_graph(features, int(k), int(block))


def _exact_graph(features, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(features, dtype=torch.float32)
    n = x.shape[0]
    k = min(k, n - 1)
    indices = torch.empty((n, max(k, 0)), dtype=torch.int64)
    weights = torch.empty((n, max(k, 0)), dtype=torch.float32)
    if k <= 0:
        return indices.numpy(), weights.numpy()
    with torch.inference_mode():
        for start in range(0, n, block):
            stop = min(start + block, n)
            sims = x[start:stop] @ x.T
            # an image is not its own neighbour: push the diagonal below any cosine
            rows = torch.arange(stop - start)
            sims[rows, rows + start] = -2.0
            top = torch.topk(sims, k, dim=1)
            indices[start:stop] = top.indices
            weights[start:stop] = top.values.clamp_min(0.0)
    return indices.numpy(), weights.numpy()


def index_lists(n: int) -> int:
    """Number of inverted lists for n rows: about sqrt(n), with >= 39 training rows per list."""
    return max(1, min(int(LISTS_PER_SQRT_N * math.sqrt(n)), n // MIN_TRAIN_PER_LIST))


def _faiss_graph(features, k: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
    faiss = faiss_module()
    x = features.numpy() if isinstance(features, torch.Tensor) else features
    x = np.ascontiguousarray(x, dtype=np.float32)  # no copy when already float32 and contiguous
    n, d = x.shape
    k = min(k, n - 1)
    if k <= 0:
        return np.empty((n, max(k, 0)), dtype=np.int64), np.empty((n, max(k, 0)), dtype=np.float32)
    lists = index_lists(n)
    probe = min(lists, nprobe or DEFAULT_NPROBE)
    # a fixed training sample, in row order, and a fixed k-means seed: the same graph every run
    train = min(n, TRAIN_PER_LIST * lists)
    sample = np.sort(np.random.default_rng(SEED).choice(n, size=train, replace=False))
    kmeans = faiss.Kmeans(d, lists, niter=KMEANS_ITERS, seed=SEED, spherical=True,
                          max_points_per_centroid=TRAIN_PER_LIST, min_points_per_centroid=1)
    kmeans.train(x[sample])
    label = np.concatenate([kmeans.index.search(x[s:s + SEARCH_BLOCK], 1)[1][:, 0]
                            for s in range(0, n, SEARCH_BLOCK)])
    # rows grouped by list; list c holds order[bounds[c]:bounds[c + 1]]
    order = np.argsort(label, kind="stable")
    bounds = np.searchsorted(label[order], np.arange(lists + 1))
    centroids = torch.from_numpy(kmeans.centroids)
    nearest_lists = torch.topk(centroids @ centroids.T, probe, dim=1).indices.numpy()
    del kmeans, label
    indices = np.empty((n, k), dtype=np.int64)
    weights = np.empty((n, k), dtype=np.float32)
    missing = []
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        for c in range(lists):
            rows = order[bounds[c]:bounds[c + 1]]
            if len(rows) == 0:
                continue
            cand = np.concatenate([order[bounds[j]:bounds[j + 1]] for j in nearest_lists[c]])
            if len(cand) <= k:  # too few rows nearby: these rows get exact neighbours below
                missing.extend(rows.tolist())
                continue
            cand_t = torch.from_numpy(cand)
            base = xt[cand_t]
            step = max(1, QUERY_SIMS // len(cand))
            for s in range(0, len(rows), step):
                q = rows[s:s + step]
                sims = xt[torch.from_numpy(q)] @ base.T
                # an image is not its own neighbour (its list is always among the probed ones)
                sims[torch.from_numpy(q)[:, None] == cand_t[None, :]] = -2.0
                top = torch.topk(sims, k, dim=1)
                indices[q] = cand[top.indices.numpy()]
                weights[q] = top.values.clamp_min(0.0).numpy()
    if missing:
        _fill_exact(x, np.asarray(missing), k, indices, weights)
    return indices, weights


def _fill_exact(x: np.ndarray, rows: np.ndarray, k: int, indices: np.ndarray, weights: np.ndarray) -> None:
    for start in range(0, len(rows), DEFAULT_BLOCK):
        chunk = rows[start:start + DEFAULT_BLOCK]
        sims = torch.from_numpy(x[chunk]) @ torch.from_numpy(x).T
        sims[torch.arange(len(chunk)), torch.from_numpy(chunk)] = -2.0
        top = torch.topk(sims, k, dim=1)
        indices[chunk] = top.indices.numpy()
        weights[chunk] = top.values.clamp_min(0.0).numpy()


__all__ = ["AUTO_FAISS_FROM", "DEFAULT_BLOCK", "METHODS", "SCALE_EXTRA", "faiss_module", "index_lists", "knn_graph"]
