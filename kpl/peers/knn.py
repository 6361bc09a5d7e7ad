"""k-nearest-neighbour graph by cosine similarity: exact in row blocks, or approximate with faiss.

For unit rows X (N, D), ``knn_graph(X, k)`` returns, for every image i, the indices of its k most
similar other images and the weights ``max(cos(x_i, x_j), 0)``, as a ``KnnGraph``: it unpacks
like the pair ``(indices, weights)`` and its ``info`` says how it was built and how good it is.

``method="exact"`` processes rows ``block`` at a time against all of X, so memory is
O(block * N + N * k) instead of the O(N^2) of a full similarity matrix; time is O(N^2 D): about a
minute at N = 100 000 on 2 idle cores, so about two hours at N = 1 000 000.

``method="faiss"`` (optional dependency, ``pip install 'kpl-toolkit[scale]'``) is an inverted-file
(IVF) search on inner product. faiss's spherical k-means splits X into lists of about
``ROWS_PER_LIST`` images; each image is compared, by exact float32 matrix products, with the images
of the ``nprobe`` lists whose centroids are nearest to it. Neighbours in other lists can be missed;
the weights are true cosines, as in the exact graph. The search runs list by list (each list's
images against every image that probes it), which keeps the work in BLAS: faiss's own per-query
search ran 40x below the matrix-product speed on this project's 2-core machine at D 512.

How many lists to probe depends on the data: at 100 000 images, features shaped like real CLIP
ones (kpl.synthetic.clip_like_features) reach a recall of 0.95 with 5 of 100 lists, clusters
buried in isotropic noise need 22 (benchmarks/bench_knn.py). So by default the graph measures its
own recall: it finds the exact neighbours of a fixed sample of ``RECALL_SAMPLE`` images (a
sample-by-N product, cheap), searches that sample with 1, 2, 4, ... lists, bisects between the
last two, and builds the whole graph with the fewest lists whose recall on the sample reaches
``target_recall`` (0.95) at the low end of its 95 % interval. It never probes more than
``MAX_PROBE_SHARE`` of the lists (past that an approximate graph saves too little over the exact
one); a graph that stops there says so (``info.target_met``). A given ``nprobe`` skips the ladder,
and its recall is still measured. Seeds, samples and ladder are fixed: the same graph every run.

``method="auto"`` (the default) is exact below ``AUTO_FAISS_FROM`` images and faiss from there
when faiss is installed (exact otherwise).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from kbuild.progress import task
from kpl.errors import UsageError
from kpl.params import DEFAULT_KNN_RECALL, require_int

DEFAULT_BLOCK = 1024
METHODS = ("auto", "exact", "faiss")
# Past this size "auto" uses faiss. The exact graph costs N^2 D: minutes at 200k on 2 cores, hours
# at 1M; below 200k it is affordable and gives the exact answer.
AUTO_FAISS_FROM = 200_000
SCALE_EXTRA = "scale"
# inverted lists of about ROWS_PER_LIST images (1000 lists at 1M), each trained with at least 39
# points. A fixed list size, rather than faiss's usual sqrt(N) lists, makes an image's search cost
# (lists probed) x ROWS_PER_LIST at any N, so the graph grows as N x (lists probed) instead of N^1.5;
# assigning N rows to N / 1000 centroids is quadratic but small (8 s of the 1M graph).
ROWS_PER_LIST = 1000
MIN_TRAIN_PER_LIST = 39
TRAIN_PER_LIST = 64
KMEANS_ITERS = 10
SEED = 1234
DEFAULT_TARGET_RECALL = DEFAULT_KNN_RECALL
# The recall ladder starts at one list and doubles (each step searches only the sample: cheap). Its
# last step is MAX_PROBE_SHARE of the lists: a quarter of the lists costs a quarter of the exact
# graph, where an approximation stops paying.
FIRST_NPROBE = 1
MAX_PROBE_SHARE = 0.25
# between two ladder steps, bisect until the count is known to within an eighth
BISECT_TO = 8
# images whose exact neighbours measure the recall: 1000 give a 95 % interval of about +-0.007 at a
# recall of 0.95, for a sample-by-N product (about 8 s at 1M x 512 on 2 cores)
RECALL_SAMPLE = 1000
# rows of X against the centroids at once (64 MB of float32 similarities at 1000 lists)
ASSIGN_BLOCK = 16384
# (image, list) probe pairs handled at once: bounds the probe table at 16 MB of int64
PROBE_PAIRS = 2**21
# similarities held at once when comparing a list's rows with the images probing it (64 MB)
QUERY_SIMS = 16 * 2**20


@dataclass(frozen=True)
class GraphInfo:
    """How a kNN graph was built and how good it is (``recall``: share of the exact neighbours found,
    measured on ``sample`` images, +- ``recall_margin`` at 95 % confidence; 1.0 for the exact graph)."""

    method: str
    neighbours: int
    images: int
    seconds: float
    recall: float = 1.0
    recall_margin: float = 0.0
    sample: int | None = None
    target_recall: float | None = None
    target_met: bool = True
    lists: int | None = None
    nprobe: int | None = None
    ladder: tuple[tuple[int, float], ...] = ()  # (nprobe, sample recall) for every count tried

    def to_json(self) -> dict:
        out = asdict(self)
        out["ladder"] = [list(step) for step in self.ladder]
        return out

    @classmethod
    def from_json(cls, record: dict) -> "GraphInfo":
        """The inverse of ``to_json`` (a record read back from a result, e.g. KPL's prior record)."""
        return cls(**{**record, "ladder": tuple(tuple(step) for step in record.get("ladder", ()))})

    def describe(self) -> str:
        """One line for a person: what was built, its recall, and what to do if it falls short."""
        if self.method == "exact":
            return f"kNN graph: exact, {self.images} images, {self.seconds:.1f} s"
        line = (f"kNN graph: faiss, {self.nprobe} of {self.lists} lists probed, recall@{self.neighbours} "
                f"{self.recall:.3f} +- {self.recall_margin:.3f} on {self.sample} sampled images, "
                f"{self.seconds:.1f} s")
        if not self.target_met and self.target_recall is not None:
            line += (f"; below the {self.target_recall:.2f} target even with {self.nprobe} lists "
                     f"(features without local structure): the exact graph (--knn exact) is the remedy, "
                     f"at N^2 cost")
        return line


class KnnGraph(tuple):
    """``(indices (N, k) int64, weights (N, k) float32)``, unpacking as that pair, plus ``info``."""

    info: GraphInfo

    def __new__(cls, indices: np.ndarray, weights: np.ndarray, info: GraphInfo):
        graph = super().__new__(cls, (indices, weights))
        graph.info = info
        return graph


def faiss_module():
    """The faiss module, or None when it is not installed (the one place that checks)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def require_faiss(what: str) -> None:
    """One line saying how to install faiss when ``what`` needs it and it is missing."""
    if faiss_module() is None:
        raise UsageError(f"{what} needs the faiss package; install it with: pip install 'kpl-toolkit[{SCALE_EXTRA}]'")


def check_target_recall(value, name: str = "knn_graph: target_recall") -> None:
    """A recall target is a number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 < value <= 1:
        raise UsageError(f"{name} must be a number in (0, 1] (got {value!r})")


def knn_graph(features, k: int, block: int = DEFAULT_BLOCK, method: str = "auto",
              nprobe: int | None = None, target_recall: float = DEFAULT_TARGET_RECALL) -> KnnGraph:
    """Each row's k nearest other rows by cosine, as ``KnnGraph((indices, weights), info)``.

    ``features`` must have unit rows (a float32 tensor or array). Exact: ties go to the lower
    index, as torch.topk orders them. With fewer than k other rows, k shrinks to N - 1.
    ``method``: "exact", "faiss" or "auto" (see the module doc). faiss only: ``nprobe`` fixes the
    lists searched per image; otherwise the fewest lists whose measured recall reaches
    ``target_recall`` are used.
    """
    require_int(k, "knn_graph: k", 1)
    require_int(block, "knn_graph: block", 1)
    if method not in METHODS:
        raise UsageError(f"knn_graph: method must be one of {', '.join(METHODS)} (got {method!r})")
    if nprobe is not None:
        require_int(nprobe, "knn_graph: nprobe", 1)
    check_target_recall(target_recall)
    n = len(features)
    if method == "faiss":
        require_faiss("knn_graph: method 'faiss'")
    start = time.perf_counter()
    if method == "faiss" or (method == "auto" and n >= AUTO_FAISS_FROM and faiss_module() is not None):
        return _faiss_graph(features, int(k), nprobe, float(target_recall), start)
    indices, weights = _exact_graph(features, int(k), int(block))
    info = GraphInfo("exact", indices.shape[1], n, time.perf_counter() - start)
    return KnnGraph(indices, weights, info)


def _exact_graph(features, k: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    x = torch.as_tensor(features, dtype=torch.float32)
    n = x.shape[0]
    k = min(k, n - 1)
    indices = torch.empty((n, max(k, 0)), dtype=torch.int64)
    weights = torch.empty((n, max(k, 0)), dtype=torch.float32)
    if k <= 0:
        return indices.numpy(), weights.numpy()
    with torch.inference_mode(), task("kNN graph (exact)", n) as progress:
        for start in range(0, n, block):
            stop = min(start + block, n)
            progress.advance(stop - start)
            sims = x[start:stop] @ x.T
            # an image is not its own neighbour: push the diagonal below any cosine
            rows = torch.arange(stop - start)
            sims[rows, rows + start] = -2.0
            top = torch.topk(sims, k, dim=1)
            indices[start:stop] = top.indices
            weights[start:stop] = top.values.clamp_min(0.0)
    return indices.numpy(), weights.numpy()


def index_lists(n: int) -> int:
    """Number of inverted lists for n rows: about n / 1000, with >= 39 training rows per list."""
    return max(1, min(round(n / ROWS_PER_LIST), n // MIN_TRAIN_PER_LIST))


def probe_ladder(lists: int) -> list[int]:
    """The list counts tried, in order: 1, 2, 4, ... up to MAX_PROBE_SHARE of the lists."""
    top = max(1, min(lists, math.ceil(MAX_PROBE_SHARE * lists)))
    ladder = []
    probe = FIRST_NPROBE
    while probe < top:
        ladder.append(probe)
        probe *= 2
    return ladder + [top]


def _merge_best(best_i: np.ndarray, best_w: torch.Tensor, rows: np.ndarray,
                cand_i: np.ndarray, cand_w: torch.Tensor) -> None:
    """Keep, for each of ``rows``, the k best of its current neighbours and the new candidates."""
    k = best_i.shape[1]
    at = torch.from_numpy(rows)
    ids = np.concatenate([best_i[rows], cand_i], axis=1)
    top = torch.topk(torch.cat([best_w[at], cand_w], dim=1), k, dim=1)
    best_w[at] = top.values
    best_i[rows] = np.take_along_axis(ids, top.indices.numpy(), axis=1)


def exact_neighbours(x: torch.Tensor, rows: np.ndarray, k: int) -> tuple[np.ndarray, torch.Tensor]:
    """The exact k nearest other rows of X for ``rows``, comparing them with X in column blocks
    (memory: len(rows) x ASSIGN_BLOCK similarities, never len(rows) x N). Raw cosines, best first."""
    n = x.shape[0]
    best_i = np.full((len(rows), k), -1, dtype=np.int64)
    best_w = torch.full((len(rows), k), -torch.inf)
    query = x[torch.from_numpy(rows)]
    local = np.arange(len(rows))
    for start in range(0, n, ASSIGN_BLOCK):
        stop = min(start + ASSIGN_BLOCK, n)
        sims = query @ x[start:stop].T
        inside = (rows >= start) & (rows < stop)
        sims[torch.from_numpy(local[inside]), torch.from_numpy(rows[inside] - start)] = -torch.inf
        top = torch.topk(sims, min(k, stop - start), dim=1)
        _merge_best(best_i, best_w, local, top.indices.numpy() + start, top.values)
    return best_i, best_w


class _InvertedLists:
    """X cut into lists by its nearest centroid; searches images against the lists they probe."""

    def __init__(self, x: torch.Tensor, centroids: torch.Tensor):
        self.x, self.centroids = x, centroids
        n, lists = x.shape[0], centroids.shape[0]
        label = self.probes(np.arange(n), 1)[:, 0]
        self.label = label
        self.order = np.argsort(label, kind="stable")  # list c holds order[bounds[c]:bounds[c + 1]]
        self.bounds = np.searchsorted(label[self.order], np.arange(lists + 1))
        self.position = np.empty(n, dtype=np.int64)  # each row's place within its own list
        self.position[self.order] = np.arange(n) - self.bounds[label[self.order]]

    @property
    def lists(self) -> int:
        return self.centroids.shape[0]

    def probes(self, rows: np.ndarray, nprobe: int) -> np.ndarray:
        """(len(rows), nprobe): the lists whose centroids are nearest to each row, nearest first."""
        out = np.empty((len(rows), nprobe), dtype=np.int64)
        for start in range(0, len(rows), ASSIGN_BLOCK):
            chunk = torch.from_numpy(rows[start:start + ASSIGN_BLOCK])
            out[start:start + ASSIGN_BLOCK] = torch.topk(self.x[chunk] @ self.centroids.T, nprobe, dim=1).indices
        return out

    def search(self, rows: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, torch.Tensor]:
        """(indices, raw cosines), best first, of each row's k nearest others in its probed lists;
        weight -inf where those lists hold fewer than k other rows."""
        best_i = np.full((len(rows), k), -1, dtype=np.int64)
        best_w = torch.full((len(rows), k), -torch.inf)
        chunk = max(1, PROBE_PAIRS // nprobe)
        with task(f"kNN graph (faiss lists, {nprobe} probed)", len(rows)) as progress:
            for start in range(0, len(rows), chunk):
                local = np.arange(start, min(start + chunk, len(rows)))
                self._search_chunk(rows, local, k=k, nprobe=nprobe, best_i=best_i, best_w=best_w)
                progress.advance(len(local))
        return best_i, best_w

    def _search_chunk(self, rows, local, k, nprobe, best_i, best_w) -> None:
        flat = self.probes(rows[local], nprobe).ravel()
        by_list = np.argsort(flat, kind="stable")
        edges = np.searchsorted(flat[by_list], np.arange(self.lists + 1))
        for c in range(self.lists):
            members = self.order[self.bounds[c]:self.bounds[c + 1]]
            askers = local[by_list[edges[c]:edges[c + 1]] // nprobe]  # positions in rows probing c
            if len(members) == 0 or len(askers) == 0:
                continue
            base = self.x[torch.from_numpy(members)]
            step = max(1, QUERY_SIMS // len(members))
            for s in range(0, len(askers), step):
                part = askers[s:s + step]
                query = rows[part]
                sims = self.x[torch.from_numpy(query)] @ base.T
                # an image is not its own neighbour: it meets itself only in its own list
                own = np.nonzero(self.label[query] == c)[0]
                sims[torch.from_numpy(own), torch.from_numpy(self.position[query[own]])] = -torch.inf
                top = torch.topk(sims, min(k, len(members)), dim=1)
                _merge_best(best_i, best_w, part, members[top.indices.numpy()], top.values)


def _recall(exact: np.ndarray, found: np.ndarray, population: int) -> tuple[float, float]:
    """(share of the exact neighbours found, half-width of its 95 % interval) for a sample of the
    ``population`` images.

    The interval comes from the spread of the per-image recalls: an image's k neighbours are
    found or missed together more often than not, so counting the k x sample pairs as independent
    would make it too narrow. A sample that is most of the images leaves little unmeasured (the
    finite-population factor): measured on all of them, the recall is exact."""
    per_image = (exact[:, :, None] == found[:, None, :]).any(axis=2).mean(axis=1)
    s = len(per_image)
    spread = max(per_image.var(ddof=1) if s > 1 else 0.0, 1.0 / s)
    unmeasured = (population - s) / max(population - 1, 1)
    return float(per_image.mean()), 1.96 * math.sqrt(spread / s * unmeasured)


def _train_centroids(x: np.ndarray, lists: int) -> torch.Tensor:
    faiss = faiss_module()
    n, d = x.shape
    # a fixed training sample, in row order, and a fixed k-means seed: the same graph every run
    train = min(n, TRAIN_PER_LIST * lists)
    sample = np.sort(np.random.default_rng(SEED).choice(n, size=train, replace=False))
    kmeans = faiss.Kmeans(d, lists, niter=KMEANS_ITERS, seed=SEED, spherical=True,
                          max_points_per_centroid=TRAIN_PER_LIST, min_points_per_centroid=1)
    kmeans.train(x[sample])
    return torch.from_numpy(np.ascontiguousarray(kmeans.centroids))


def _faiss_graph(features, k: int, nprobe: int | None, target: float, start: float) -> KnnGraph:
    x = features.numpy() if isinstance(features, torch.Tensor) else features
    x = np.ascontiguousarray(x, dtype=np.float32)  # no copy when already float32 and contiguous
    n = x.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        empty = np.empty((n, 0), dtype=np.int64), np.empty((n, 0), dtype=np.float32)
        return KnnGraph(*empty, GraphInfo("faiss", 0, n, time.perf_counter() - start))
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        index = _InvertedLists(xt, _train_centroids(x, index_lists(n)))
        sample = np.sort(np.random.default_rng(SEED + 1).choice(n, size=min(n, RECALL_SAMPLE), replace=False))
        truth = exact_neighbours(xt, sample, k)[0]
        ladder = [min(nprobe, index.lists)] if nprobe else probe_ladder(index.lists)
        tried = []

        def reaches(probe: int) -> bool:
            # the target must hold at the low end of the sample's 95 % interval, not just on
            # average: a point estimate at the target would leave the whole graph below it half the time
            recall, margin = _recall(truth, index.search(sample, k, probe)[0], n)
            tried.append((probe, recall, margin))
            return recall - margin >= target

        passed = next((p for p in ladder if reaches(p)), None)
        if passed is not None and len(tried) > 1:
            # recall only grows with the lists probed (each count searches a superset of the
            # last), so bisect between the last count that fell short and the first that passed
            low = tried[-2][0]
            while passed - low > max(1, low // BISECT_TO):
                middle = (low + passed) // 2
                low, passed = (low, middle) if reaches(middle) else (middle, passed)
        probe = passed if passed is not None else ladder[-1]
        recall, margin = next((r, m) for p, r, m in tried if p == probe)
        indices, weights = index.search(np.arange(n), k, probe)
        # rows whose probed lists held fewer than k other rows get their exact neighbours
        short = np.nonzero(torch.isinf(weights).any(dim=1).numpy())[0]
        if len(short):
            indices[short], weights[torch.from_numpy(short)] = exact_neighbours(xt, short, k)
    info = GraphInfo("faiss", k, images=n, seconds=time.perf_counter() - start, recall=recall, recall_margin=margin,
                     sample=len(sample), target_recall=target, target_met=recall - margin >= target, lists=index.lists,
                     nprobe=probe, ladder=tuple((p, r) for p, r, _ in tried))
    return KnnGraph(indices, weights.clamp_min(0.0).numpy(), info)


__all__ = ["AUTO_FAISS_FROM", "DEFAULT_BLOCK", "DEFAULT_TARGET_RECALL", "GraphInfo", "KnnGraph", "METHODS",
           "SCALE_EXTRA", "check_target_recall", "exact_neighbours", "faiss_module", "index_lists", "knn_graph",
           "probe_ladder", "require_faiss"]
