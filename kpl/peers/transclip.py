"""TransCLIP-ZS (Zanella, Gérin, Ben Ayed, NeurIPS 2024), as its authors run it, written from the paper.

Transductive zero-shot classification of all N images at once. Inputs: unit image features
X (N, D) and one unit text prototype per class, T (C, D) (class-name prompts, or the
renormalised mean of a class's description embeddings). The paper's objective, over soft
assignments z_i (rows of Z, on the simplex), class means mu_c and one shared diagonal
covariance Sigma, is a Gaussian mixture fit, a Laplacian term over a kNN graph W, and a KL
term to the zero-shot prediction ``y_i = softmax(temperature * T x_i)``. Its block
majorize-minimize steps are closed-form. We run them the way the authors' released algorithm
does; four facts set it apart from a literal reading of the equations (the code is AGPL and was
not read: these are stated facts, implemented here in our own words):

(a) the Gaussian log-likelihood and the neighbour term are scaled together by 1/``scale`` (50)
    relative to the zero-shot term, and the neighbour sum is averaged over 2k (k = 3):

        z_i  <-  y_i^lambda * exp( (log p_i + (scale / (2k)) * ((W + W^T) z)_i) / scale ),  normalised

    with log p_ic = log N(x_i; mu_c, Sigma) (its log-det is common to all classes and cancels);
(b) the neighbour term runs both ways, W z + W^T z: image i hears from its own k nearest
    neighbours and from every image that has i among its k nearest. W_ij = max(cos(x_i, x_j), 0)
    for the k nearest neighbours j of i (kpl.peers.knn), 0 elsewhere;
(c) each class mean is renormalised to unit length after every update; the first ones are the
    mean of y_ic x_i over the ``init_top`` (8) images most confidently predicted as c, renormalised;
(d) ``outer_iters`` (10) rounds of [assignment update of ``inner_iters`` (5) steps, means,
    variance], then a final assignment update: 11 assignment updates of 5 steps. The variance,
    Sigma = diag((1/N) sum_i sum_c z_ic (x_i - mu_c)^2), is computed from the renormalised means;
    before the first round it is I / D.

The mean update takes an optional pull toward per-class anchors (``anchors``, ``strength``):
StatA (kpl.peers.stata) is this algorithm with each mean pulled toward its class's text
embedding, ``mu_c = normalise(strength * t_c + sum_i z_ic x_i)``; TransCLIP has no pull.
An optional class-share prior (``share_weight`` > 0, used by KPL's ``prior="auto"``,
kpl.method.prior) shifts the zero-shot term by the classes' current shares, Saerens-style:
``log y_ic + share_weight * log(C pi_c)`` with ``pi_c = (sum_i z_ic + SHARE_SMOOTHING / C) /
(N + SHARE_SMOOTHING)`` after every round; 0 (TransCLIP, StatA) keeps the shares uniform.

Memory is O(N (k + C) + C D) beyond X itself: the kNN graph is built in blocks (kpl.peers.knn), never
N x N, and no (N, D) temporary is made (squares are taken in row chunks). At N ~ 1M the graph
comes from an approximate index (``knn="auto"``, kpl.peers.knn).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from kbuild.progress import task
from kpl.errors import UsageError
from kpl.params import require_int, require_number
from kpl.peers.knn import DEFAULT_BLOCK, DEFAULT_TARGET_RECALL, KnnGraph, check_target_recall, knn_graph, require_faiss
from kpl.peers.knn import METHODS as KNN_METHODS

# Variances below this are rounding noise of a collapsed dimension; dividing by them would blow up.
MIN_VARIANCE = 1e-8
# rows squared at a time: x * x in one go would be a second (N, D) matrix (2 GB at 1M x 512)
SQUARE_CHUNK = 65536
# pseudo-images of a uniform Dirichlet prior on the class shares (share_weight > 0): no class's share is ever 0
SHARE_SMOOTHING = 1.0


@dataclass(frozen=True)
class TransCLIPParams:
    """The zero-shot settings of the authors' released algorithm."""

    neighbours: int = 3
    lam: float = 1.0
    outer_iters: int = 10
    inner_iters: int = 5
    init_top: int = 8
    temperature: float = 100.0
    scale: float = 50.0  # Gaussian and neighbour terms, divided by this, against the zero-shot term
    block: int = DEFAULT_BLOCK
    knn: str = "auto"  # kNN graph backend: "auto", "exact" or "faiss" (kpl.peers.knn)
    knn_recall: float = DEFAULT_TARGET_RECALL  # recall an approximate graph must reach (kpl.peers.knn)

    def validate(self) -> "TransCLIPParams":
        for name in ("neighbours", "outer_iters", "inner_iters", "init_top", "block"):
            low = 0 if name in ("outer_iters", "inner_iters") else 1
            require_int(getattr(self, name), f"transclip: {name}", low)
        for name in ("lam", "temperature"):
            require_number(getattr(self, name), f"transclip: {name}")
        require_number(self.scale, "transclip: scale", positive=True)
        if self.knn not in KNN_METHODS:
            raise UsageError(f"transclip: knn must be one of {', '.join(KNN_METHODS)} (got {self.knn!r})")
        check_target_recall(self.knn_recall, "transclip: knn_recall")
        if self.knn == "faiss":
            require_faiss("transclip: knn 'faiss'")
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _squares_times(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) sum_d x_id^2 v_d, squaring SQUARE_CHUNK rows at a time."""
    return torch.cat([(x[s:s + SQUARE_CHUNK] ** 2) @ v for s in range(0, x.shape[0], SQUARE_CHUNK)])


def _column_squares(x: torch.Tensor) -> torch.Tensor:
    """(D,) sum_i x_id^2, squaring SQUARE_CHUNK rows at a time."""
    total = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], SQUARE_CHUNK):
        total += (x[s:s + SQUARE_CHUNK] ** 2).sum(dim=0)
    return total


def log_likelihood(x: torch.Tensor, means: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """(N, C) log N(x_i; mu_c, diag(variance)) up to a constant shared by all classes."""
    inv = 1.0 / variance
    cross = x @ (means * inv).T
    mean_term = (means * means * inv).sum(dim=1)
    return -0.5 * (_squares_times(x, inv)[:, None] - 2.0 * cross + mean_term[None, :])


def _unit(v: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
    """Rows of ``v`` scaled to unit length; a zero row keeps ``fallback``'s row (else stays zero)."""
    norms = v.norm(dim=1, keepdim=True)
    unit: torch.Tensor = v / norms.clamp_min(torch.finfo(v.dtype).tiny)
    if fallback is None:
        return unit
    return torch.where(norms > 0, unit, fallback)


def initial_means(x: torch.Tensor, y: torch.Tensor, top: int) -> torch.Tensor:
    """(C, D) unit rows: per class c, the mean of y_ic x_i over the ``top`` images with the largest y_ic."""
    count = min(top, x.shape[0])
    best = torch.topk(y, count, dim=0).indices  # (count, C)
    confidence = torch.gather(y, 0, best)  # (count, C): y_ic of those images
    return _unit((confidence[:, :, None] * x[best]).mean(dim=0))


def symmetric_affinity(idx: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """W + W^T as an (N, N) sparse tensor with 2 N k entries, from the kNN graph (indices, weights) (N, k).

    W_{i, idx[i, s]} = w[i, s]: image i's k nearest. Built once per run; memory O(N k), never N x N.
    """
    k = idx.shape[1]
    rows = torch.arange(n).repeat_interleave(k)
    cols = idx.reshape(-1)
    both = torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])])
    values = w.reshape(-1)
    return torch.sparse_coo_tensor(both, torch.cat([values, values]), (n, n), check_invariants=True).coalesce()


def neighbour_messages(z: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """(N, C) ((W + W^T) z): what each image hears from its k nearest and from the images that list it."""
    messages: torch.Tensor = torch.sparse.mm(affinity, z)
    return messages


def assignment_update(z: torch.Tensor, fixed: torch.Tensor, affinity: torch.Tensor,
                      steps: int, neighbour_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``steps`` z-steps with the means and variance fixed: z = softmax(fixed + neighbour_weight (W + W^T) z).

    ``fixed`` is lambda log y + log p / scale; ``affinity`` is W + W^T (``symmetric_affinity``);
    ``neighbour_weight`` is 1 / (2k). Returns (z, its log-scores; None when ``steps`` is 0).
    """
    scores: torch.Tensor | None = None
    for _ in range(steps):
        scores = fixed + neighbour_weight * neighbour_messages(z, affinity)
        z = torch.softmax(scores, dim=1)
    return z, scores


def update_means(x: torch.Tensor, z: torch.Tensor, previous: torch.Tensor, anchors: torch.Tensor | None = None,
                 strength: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(means, weighted, mass): unit means ``normalise(strength * anchor_c + sum_i z_ic x_i)``.

    Dividing by the class mass (plus ``strength``) first would not change the direction, so it is
    skipped. ``weighted`` (C, D) = Z^T X and ``mass`` (C,) = sum_i z_ic feed the variance. A class with
    no mass and no anchor keeps its previous mean.
    """
    weighted = z.T @ x
    mass = z.sum(dim=0)
    pulled = weighted if anchors is None or strength == 0 else weighted + strength * anchors
    return _unit(pulled, previous), weighted, mass


def shared_variance(column_squares: torch.Tensor, means: torch.Tensor, weighted: torch.Tensor,
                    mass: torch.Tensor, n: int) -> torch.Tensor:
    """(D,) (1/N) sum_i sum_c z_ic (x_i - mu_c)^2 for any means (here the renormalised ones).

    Expanded as sum_i x_i^2 - 2 sum_c mu_c (Z^T X)_c + sum_c m_c mu_c^2 (rows of Z sum to 1), so no
    (N, C, D) or (N, D) temporary is made.
    """
    spread = column_squares - 2.0 * (means * weighted).sum(dim=0) + (mass[:, None] * means * means).sum(dim=0)
    return (spread / n).clamp_min(MIN_VARIANCE)


def graph_for(image_features: torch.Tensor | np.ndarray, params: TransCLIPParams) -> KnnGraph:
    """The kNN graph TransCLIP uses with these settings (a ``kpl.peers.knn.KnnGraph``)."""
    return knn_graph(image_features, params.neighbours, block=params.block, method=params.knn,
                     target_recall=params.knn_recall)


def log_share_prior(mass: torch.Tensor, n: int) -> torch.Tensor:
    """(C,) ``log(C pi_c)``: the classes' smoothed shares ``pi`` against uniform (0 for equal shares)."""
    c = mass.shape[0]
    return torch.log((mass + SHARE_SMOOTHING / c) / (n + SHARE_SMOOTHING) * c)


@dataclass
class FitState:
    """Where the loop ended: Z, S, Y (N, C) as ``fit`` returns them, and the last (C, D) unit class means."""

    assignments: torch.Tensor
    scores: torch.Tensor
    zero_shot: torch.Tensor
    means: torch.Tensor


def fit(image_features: torch.Tensor, prototypes: torch.Tensor, params: TransCLIPParams,
        graph: tuple[np.ndarray, np.ndarray] | None = None, *, anchors: torch.Tensor | None = None,
        strength: float = 0.0, share_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared loop of TransCLIP and StatA: (Z, S, Y), each (N, C); see the module doc.

    ``anchors`` (C, D) and ``strength``: the pull of each class mean (StatA); None/0 for TransCLIP.
    ``share_weight``: how far the zero-shot term follows the classes' current shares (0: not at all).
    """
    state = fit_state(image_features, prototypes, params, graph, anchors=anchors, strength=strength,
                      share_weight=share_weight)
    return state.assignments, state.scores, state.zero_shot


def fit_state(image_features: torch.Tensor, prototypes: torch.Tensor, params: TransCLIPParams,
              graph: tuple[np.ndarray, np.ndarray] | None = None, *, anchors: torch.Tensor | None = None,
              strength: float = 0.0, share_weight: float = 0.0) -> FitState:
    """``fit``, returning the class means as well (a ``FitState``)."""
    p = params.validate()
    x, t = image_features, prototypes
    n, d = x.shape
    # log y straight from the logits: log(softmax) would floor at float32's tiny (-87) where y underflows
    log_y = torch.log_softmax(p.temperature * (x @ t.T), dim=1)
    y = torch.exp(log_y)
    idx, w = graph if graph is not None else graph_for(x, p)
    affinity = symmetric_affinity(torch.from_numpy(np.asarray(idx)), torch.from_numpy(np.asarray(w)), n).to(x.device)
    column_squares = _column_squares(x)
    neighbour_weight = 1.0 / (2 * p.neighbours)  # (scale / 2k) inside, then / scale with log p

    means = initial_means(x, y, p.init_top)
    variance = torch.full((d,), 1.0 / d, dtype=x.dtype, device=x.device)
    z, scores = y.clone(), p.lam * log_y
    shares = torch.zeros_like(log_y[0])  # log(C pi): uniform shares until the first round has assigned images
    progress = task("TransCLIP iterations", assignment_updates(p))
    for round_ in range(p.outer_iters + 1):  # the last round is the final assignment update alone
        fixed = p.lam * log_y + log_likelihood(x, means, variance) / p.scale
        if share_weight:
            fixed = fixed + share_weight * shares
        z, new_scores = assignment_update(z, fixed, affinity, p.inner_iters, neighbour_weight)
        scores = scores if new_scores is None else new_scores
        progress.advance(p.inner_iters)
        if round_ == p.outer_iters:
            break
        means, weighted, mass = update_means(x, z, means, anchors, strength)
        variance = shared_variance(column_squares, means, weighted, mass, n)
        shares = log_share_prior(mass, n)
    progress.close()
    return FitState(z, scores, y, means)


def transclip(image_features: torch.Tensor, prototypes: torch.Tensor,
              params: TransCLIPParams | None = None,
              graph: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Z, S, Y), each (N, C), for float32 unit-row ``image_features`` (N, D) and ``prototypes`` (C, D).

    Z are the final soft assignments, S their log-scores (``Z = softmax(S)``; S keeps the ranking
    that Z, saturated to 0/1 in float32, loses) and Y the initial zero-shot prediction.
    ``graph``: a precomputed ``kpl.peers.knn.knn_graph(image_features, neighbours)``, e.g. shared by
    runs with different prototypes; built here when None.
    """
    return fit(image_features, prototypes, params or TransCLIPParams(), graph)


def assignment_updates(params: TransCLIPParams) -> int:
    """How many z-steps a run takes: (outer_iters + 1) assignment updates of inner_iters steps."""
    return (params.outer_iters + 1) * params.inner_iters


__all__ = ["SHARE_SMOOTHING", "FitState", "TransCLIPParams", "assignment_updates", "fit", "fit_state",
           "log_share_prior", "transclip"]
