"""TransCLIP-ZS (Zanella, Gerin, Ben Ayed, NeurIPS 2024), written from the paper's equations.

Transductive zero-shot classification of all N images at once. Inputs: unit image features
X (N, D) and one unit text prototype per class, T (C, D) (class-name prompts, or the
renormalised mean of a class's description embeddings). The method minimises over soft
assignments z_i (rows of Z, on the simplex), class means mu_c and one shared diagonal
covariance Sigma:

    - sum_i z_i . log p_i                   Gaussian mixture fit, p_ic ~ N(x_i; mu_c, Sigma)
    - sum_i sum_{j in kNN(i)} w_ij z_i . z_j  neighbours share labels (Laplacian term)
    + lambda * sum_i KL(z_i || y_i)          stay close to the zero-shot prediction y_i

with ``y_i = softmax(temperature * T x_i)``. Block majorize-minimize gives closed-form updates:

    z_i   <- softmax(lambda * log y_i + log p_i + sum_j w_ij z_j)    (inner steps, mu and Sigma fixed)
    mu_c  <- sum_i z_ic x_i / sum_i z_ic
    Sigma <- diag( (1/N) sum_i sum_c z_ic (x_i - mu_c)^2 )

Settings are the paper's zero-shot ones: 3 neighbours weighted by cosine, lambda 1, 10 outer
iterations of 5 assignment updates, means initialised from the 8 most confident images of each
class, temperature 100. The paper gives no initial covariance for the first assignment steps;
we start from Sigma = I / D, the per-dimension variance of random unit vectors. The log-det of
Sigma is common to all classes (one shared covariance) and cancels in the softmax.

Memory is O(N (k + C) + C D) beyond X itself: the kNN graph is built in blocks (kpl.peers.knn), never
N x N, and no (N, D) temporary is made (squares are taken in row chunks). At N ~ 1M the graph
comes from an approximate index (``knn="auto"``, kpl.peers.knn).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from kbuild.progress import task
from kpl.errors import UsageError
from kpl.peers.knn import (DEFAULT_BLOCK, DEFAULT_TARGET_RECALL, METHODS as KNN_METHODS, check_target_recall, knn_graph,
                     require_faiss)
from kpl.params import require_int, require_number

# Variances below this are rounding noise of a collapsed dimension; dividing by them would blow up.
MIN_VARIANCE = 1e-8
# rows squared at a time: x * x in one go would be a second (N, D) matrix (2 GB at 1M x 512)
SQUARE_CHUNK = 65536


@dataclass(frozen=True)
class TransCLIPParams:
    """The paper's zero-shot settings."""

    neighbours: int = 3
    lam: float = 1.0
    outer_iters: int = 10
    inner_iters: int = 5
    init_top: int = 8
    temperature: float = 100.0
    block: int = DEFAULT_BLOCK
    knn: str = "auto"  # kNN graph backend: "auto", "exact" or "faiss" (kpl.peers.knn)
    knn_recall: float = DEFAULT_TARGET_RECALL  # recall an approximate graph must reach (kpl.peers.knn)

    def validate(self) -> "TransCLIPParams":
        for name in ("neighbours", "outer_iters", "inner_iters", "init_top", "block"):
            low = 0 if name in ("outer_iters", "inner_iters") else 1
            require_int(getattr(self, name), f"transclip: {name}", low)
        for name in ("lam", "temperature"):
            require_number(getattr(self, name), f"transclip: {name}")
        if self.knn not in KNN_METHODS:
            raise UsageError(f"transclip: knn must be one of {', '.join(KNN_METHODS)} (got {self.knn!r})")
        check_target_recall(self.knn_recall, "transclip: knn_recall")
        if self.knn == "faiss":
            require_faiss("transclip: knn 'faiss'")
        return self

    def to_json(self) -> dict:
        return asdict(self)


def _squares_times(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N,) sum_d x_id^2 v_d, squaring SQUARE_CHUNK rows at a time."""
    return torch.cat([(x[s:s + SQUARE_CHUNK] ** 2) @ v for s in range(0, x.shape[0], SQUARE_CHUNK)])


def _column_squares(x: torch.Tensor) -> torch.Tensor:
    """(D,) sum_i x_id^2, squaring SQUARE_CHUNK rows at a time."""
    total = torch.zeros(x.shape[1], dtype=x.dtype)
    for s in range(0, x.shape[0], SQUARE_CHUNK):
        total += (x[s:s + SQUARE_CHUNK] ** 2).sum(dim=0)
    return total


def _log_likelihood(x: torch.Tensor, means: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """(N, C) log N(x_i; mu_c, diag(variance)) up to a constant shared by all classes."""
    inv = 1.0 / variance
    cross = x @ (means * inv).T
    mean_term = (means * means * inv).sum(dim=1)
    return -0.5 * (_squares_times(x, inv)[:, None] - 2.0 * cross + mean_term[None, :])


def _initial_means(x: torch.Tensor, y: torch.Tensor, top: int) -> torch.Tensor:
    """(C, D): mean of the ``top`` images the zero-shot prediction is most confident about, per class."""
    count = min(top, x.shape[0])
    best = torch.topk(y, count, dim=0).indices  # (count, C)
    return x[best].mean(dim=0)


def graph_for(image_features, params: TransCLIPParams):
    """The kNN graph TransCLIP uses with these settings (a ``kpl.peers.knn.KnnGraph``)."""
    return knn_graph(image_features, params.neighbours, block=params.block, method=params.knn,
                     target_recall=params.knn_recall)


def transclip(image_features: torch.Tensor, prototypes: torch.Tensor,
              params: TransCLIPParams | None = None,
              graph: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Z, S, Y), each (N, C), for float32 unit-row ``image_features`` (N, D) and ``prototypes`` (C, D).

    Z are the final soft assignments, S their log-scores (``Z = softmax(S)``; S keeps the ranking
    that Z, saturated to 0/1 in float32, loses) and Y the initial zero-shot prediction.
    ``graph``: a precomputed ``kpl.peers.knn.knn_graph(image_features, neighbours)``, e.g. shared by
    runs with different prototypes; built here when None.
    """
    p = (params or TransCLIPParams()).validate()
    x, t = image_features, prototypes
    n = x.shape[0]
    y = torch.softmax(p.temperature * (x @ t.T), dim=1)
    log_y = torch.log(y.clamp_min(torch.finfo(torch.float32).tiny))
    idx, w = graph if graph is not None else graph_for(x, p)
    idx, w = torch.from_numpy(idx), torch.from_numpy(w)
    column_squares = _column_squares(x)

    means = _initial_means(x, y, p.init_top)
    variance = torch.full((x.shape[1],), 1.0 / x.shape[1], dtype=x.dtype)
    z = y.clone()
    scores = log_y.clone()
    progress = task("TransCLIP iterations", p.outer_iters * p.inner_iters)
    for _ in range(p.outer_iters):
        log_p = _log_likelihood(x, means, variance)
        fixed = p.lam * log_y + log_p
        for _ in range(p.inner_iters):
            neighbours = (w[:, :, None] * z[idx]).sum(dim=1) if idx.shape[1] else 0.0
            scores = fixed + neighbours
            z = torch.softmax(scores, dim=1)
            progress.advance()
        mass = z.sum(dim=0)  # (C,)
        weighted = z.T @ x  # (C, D): sum_i z_ic x_i
        # a class that lost every image keeps its mean rather than dividing by zero
        keep = mass > 0
        means = torch.where(keep[:, None], weighted / mass.clamp_min(1e-12)[:, None], means)
        # sum_i sum_c z_ic (x_i - mu_c)^2 = sum_i x_i^2 - 2 sum_c mu_c * (Z^T X)_c + sum_c m_c mu_c^2
        spread = column_squares - 2.0 * (means * weighted).sum(dim=0) + (mass[:, None] * means * means).sum(dim=0)
        variance = (spread / n).clamp_min(MIN_VARIANCE)
    progress.close()
    return z, scores, y


__all__ = ["TransCLIPParams", "transclip"]
