"""k-nearest-neighbour graph by cosine similarity: exact in row blocks, or approximate with faiss.

For unit rows X (N, D), ``knn_graph(X, k)`` returns, for every image i, the indices of its k most
similar other images and the weights ``max(cos(x_i, x_j), 0)``.

``method="exact"`` processes rows ``block`` at a time against all of X, so memory is
O(block * N + N * k) instead of the O(N^2) of a full similarity matrix; time is O(N^2 D), about
7.5 minutes at N = 100 000 on 2 cores and so some 12 hours at N = 1 000 000.

``method="faiss"`` (optional dependency, ``pip install kpl-toolkit[scale]``) partitions X with
k-means into about sqrt(N) inverted lists and compares each row only with the rows of the
``nprobe`` lists nearest to it. The rows are stored as 8-bit scalar codes (a quarter of the
float32 matrix, so the index adds 0.5 GB at 1M x 512, not another 2 GB) and the candidates it
returns are re-ranked with exact float32 cosines, so the weights are true cosines as in the
exact graph; only some neighbours can be missed (recall is measured in benchmarks/bench_knn.py).
Settings are fixed (k-means seed, training sample, nprobe), so two runs give the same graph.

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
# fraction of the lists searched per row (1/32: 3 % of the rows are compared with each row).
# Time grows with it linearly; recall too, slowly (benchmarks/bench_knn.py measures both).
DEFAULT_NPROBE_FRACTION = 1 / 32
# candidates fetched beyond k + 1 (the +1 is the row itself), re-ranked with exact cosines
EXTRA_CANDIDATES = 8
SEARCH_BLOCK = 4096


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
    per row by faiss (default: 1/32 of them).
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
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, lists, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = SEED
    index.cp.niter = KMEANS_ITERS
    index.cp.max_points_per_centroid = TRAIN_PER_LIST
    train = min(n, TRAIN_PER_LIST * lists)
    # a fixed sample, in row order, so that training (and so the graph) is reproducible
    sample = np.sort(np.random.default_rng(SEED).choice(n, size=train, replace=False))
    index.train(x[sample])
    index.add(x)
    index.nprobe = min(lists, nprobe or max(1, round(lists * DEFAULT_NPROBE_FRACTION)))
    wanted = min(n, k + 1 + EXTRA_CANDIDATES)
    indices = np.empty((n, k), dtype=np.int64)
    weights = np.empty((n, k), dtype=np.float32)
    missing = []
    for start in range(0, n, SEARCH_BLOCK):
        stop = min(start + SEARCH_BLOCK, n)
        queries = x[start:stop]
        _, cand = index.search(queries, wanted)
        # exact float32 cosines of the candidates; the row itself and empty slots (-1) go below any cosine
        sims = np.einsum("bd,bcd->bc", queries, x[np.maximum(cand, 0)])
        rows = np.arange(start, stop)[:, None]
        sims[(cand < 0) | (cand == rows)] = -3.0
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(sims, order, axis=1)
        indices[start:stop] = np.take_along_axis(cand, order, axis=1)
        weights[start:stop] = np.maximum(best, 0.0)
        missing.extend((start + np.flatnonzero(best[:, -1] < -2.0)).tolist())
    del index, quantizer
    if missing:
        # the probed lists held fewer than k other rows: those rows get exact neighbours
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
