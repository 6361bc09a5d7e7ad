"""KPL step 4: vision proxies fitted to pseudo-labels in image space (InMaP's update).

Given image features X (N, D), a pseudo-label plan P (N, C) and initial proxies W_t (D, C), the
proxies W minimise the cross-entropy between P and ``softmax(X W / tau_i)`` over unit columns.
Rows of P whose largest entry exceeds alpha are first hardened to one-hot. With
``B = X^T P`` the gradient is ``G = X^T softmax(X W / tau_i) - B`` and one step is

    W <- normalise_columns(W - step / (N tau_i) * G),

where ``step`` starts at ``lr`` and halves whenever ``||G||`` grows. The loop stops once
``max |W_new - W| < tol`` has held for ``patience`` consecutive iterations (unless ``exact_iters``).

How the arithmetic is arranged (every change leaves the iterates of exact arithmetic unchanged):

- KPL's final proxies end nearly parallel (cosine 0.9999998 on PH2): Greenkhorn's plan rows sum
  to ~1/N, not 1, so every step pushes all columns along the same vector. The scores X w_c then
  share a large common term and their differences sit at float32's resolution. softmax and argmax
  do not see a vector common to all columns, so the loop's logits are ``X (W - mean_c w_c)``:
  small numbers, whose float32 differences are accurate.
- Because softmax rows sum to 1, ``G = X^T (Q - P)`` splits into a constant common column
  ``g0 = X^T (1 - r) / C`` (r: the hardened plan's row sums), computed once in float64, and a
  centred part ``H = X^T R`` with the residual ``R = (Q - 1/C) - (P - r/C)``. Only this one
  (N, D) x (D, C) product per iteration (and the logits) stays float32 (or half); it sums the
  small residual instead of subtracting two large products. ``Q - 1/C`` comes from expm1,
  without cancelling against 1/C.
- ``||G||^2 = C ||g0||^2 + ||H||^2`` exactly, so "||G|| grew" is tested as "||H|| grew": the
  constant g0 no longer buries the change under rounding.
- W itself, its update, normalisation and the stop test are float64 (D x C: free). An early
  stop and the full ``iters`` run then end on the same W (the remaining steps are below float64
  resolution), instead of a W that float32 rounding noise keeps moving.

Past ``CHUNK_ELEMENTS`` feature values (a million CLIP images), the products run over blocks of
rows instead, so neither an (N, D) transposed copy nor a full (N, C) softmax is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kbuild.progress import task

# Above this many entries in X (N * D), the proxy loop works on row blocks of X (see the docstring).
CHUNK_ELEMENTS = 1 << 26
CHUNK_ROWS = 8192
# Rows whose centred logits / tau stay within this bound take the expm1 form of softmax - 1/C
# (exp(40) is far from float32's overflow); wider rows are far from uniform and take softmax - 1/C.
NEAR_UNIFORM = 40.0


@dataclass
class ProxyFit:
    """Outcome of the proxy loop.

    ``proxies``: (D, C) in x's dtype (float32), what a stage reports; ``exact``: the loop's own
    float64 W, which the stage's scores and predictions use; iterations run; whether the stop test
    held; ``changes``: max |W_new - W| of every iteration run (what the stop test looked at).
    """

    proxies: torch.Tensor
    iterations: int
    converged: bool
    exact: torch.Tensor | None = None
    changes: list[float] = field(default_factory=list)


def harden_labels(plan: torch.Tensor, alpha: float) -> torch.Tensor:
    """A copy of the (N, C) plan whose rows with max > alpha are one-hot at their argmax."""
    labels = plan.clone()
    top_value, top_index = labels.max(dim=1)
    sure = top_value > alpha
    labels[sure, :] = 0
    labels[sure, top_index[sure]] = 1
    return labels


def softmax_deviation(z: torch.Tensor) -> torch.Tensor:
    """``softmax(z, dim=1) - 1/C`` for (N, C) z, accurate where the row is nearly uniform.

    With z centred per row and e = expm1(z): softmax_c - 1/C = (e_c - mean e) / (C (1 + mean e)),
    where no term cancels against 1/C (plain softmax - 1/C keeps only float32's absolute accuracy).
    """
    c = z.shape[1]
    zc = z - z.mean(dim=1, keepdim=True)
    near = zc.abs().amax(dim=1, keepdim=True) <= NEAR_UNIFORM
    e = torch.expm1(torch.where(near, zc, torch.zeros_like(zc)))
    e_mean = e.mean(dim=1, keepdim=True)
    return torch.where(near, (e - e_mean) / (c * (1 + e_mean)), torch.softmax(z, dim=1) - 1.0 / c)


@dataclass(frozen=True, kw_only=True)
class ProxyLoop:
    """The proxy loop's settings (KPL's defaults; kpl.params.KPLParams holds the same names).

    ``compute_dtype`` (fp16/bf16) runs the two big products in half precision; ``chunk_rows`` forces
    row blocks of that many rows (default: only past CHUNK_ELEMENTS).
    """

    tau_i: float = 0.04
    alpha: float = 0.6
    lr: float = 10.0
    iters: int = 2000
    tol: float = 1e-6
    patience: int = 20
    exact_iters: bool = False
    compute_dtype: torch.dtype | None = None
    chunk_rows: int | None = None

    @classmethod
    def of(cls, params: object, *, compute_dtype: torch.dtype | None = None) -> ProxyLoop:
        """The loop settings of a parameter record with the same field names (a KPLParams)."""
        names = ("tau_i", "alpha", "lr", "iters", "tol", "patience", "exact_iters")
        return cls(**{name: getattr(params, name) for name in names}, compute_dtype=compute_dtype)


def fit_vision_proxies(x: torch.Tensor, plan: torch.Tensor, init: torch.Tensor,
                       loop: ProxyLoop = ProxyLoop()) -> ProxyFit:
    """Fit (D, C) vision proxies to the (N, C) plan, starting from the (D, C) ``init``; ``x`` is (N, D) float32."""
    tau_i, alpha, lr, iters, tol = loop.tau_i, loop.alpha, loop.lr, loop.iters, loop.tol
    patience, exact_iters, compute_dtype, chunk_rows = loop.patience, loop.exact_iters, loop.compute_dtype, loop.chunk_rows
    n = x.shape[0]
    if chunk_rows is None:
        chunk_rows = n if x.numel() <= CHUNK_ELEMENTS else CHUNK_ROWS
    labels = harden_labels(plan, alpha)
    products: _HalfProducts | _RowBlocks | _WholeProducts
    if compute_dtype is not None and compute_dtype != x.dtype:
        products = _HalfProducts(x, compute_dtype)
    elif chunk_rows < n:
        products = _RowBlocks(x, chunk_rows)
    else:
        products = _WholeProducts(x)
    common = _common_column(x, labels, max(1, min(chunk_rows, n)))
    centred_labels = labels - labels.mean(dim=1, keepdim=True)  # P - r/C
    del labels

    w = init.to(torch.float64)
    prev_norm = math.inf
    step = lr
    quiet = 0  # consecutive iterations with max |W_new - W| < tol
    changes: list[float] = []
    with task("KPL vision proxies", iters) as progress:  # an early stop ends the reported task there
        for it in range(iters):
            progress.advance()
            centred = (w - w.mean(dim=1, keepdim=True)).to(x.dtype)
            h = products.xt_residual(centred, centred_labels, tau_i)
            grad_norm = float(torch.linalg.vector_norm(h))
            if grad_norm > prev_norm:
                step /= 2
            prev_norm = grad_norm
            moved = w - (step / (n * tau_i)) * (h + common[:, None])
            w_new = moved / torch.linalg.vector_norm(moved, dim=0).clamp_min(1e-12)
            changes.append(float((w_new - w).abs().max()))
            quiet = quiet + 1 if changes[-1] < tol else 0
            w = w_new
            if quiet >= patience and not exact_iters:
                return ProxyFit(w.to(x.dtype), it + 1, True, w, changes)
    return ProxyFit(w.to(x.dtype), iters, quiet >= patience, w, changes)


def _common_column(x: torch.Tensor, labels: torch.Tensor, rows: int) -> torch.Tensor:
    """(D,) float64 ``X^T (1 - r) / C``, r the row sums of labels: the gradient's common column."""
    common = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], rows):
        missing = 1 - labels[start:start + rows].to(torch.float64).sum(dim=1)
        common += x[start:start + rows].to(torch.float64).T @ missing
    return common / labels.shape[1]


class _WholeProducts:
    """``H = X^T (softmax(X W / tau) - 1/C - (P - r/C))`` on the whole matrix, returned in float64."""

    def __init__(self, x: torch.Tensor):
        # A contiguous X^T makes X^T @ Q ~15% faster than gemm's transposed operand, with bitwise
        # equal results on MKL (checked up to N 50 000); it is copied once, not per iteration.
        self.x, self.xt = x, x.T.contiguous()

    def xt_residual(self, centred: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
        return (self.xt @ (softmax_deviation(self.x @ centred / tau) - labels)).to(torch.float64)


class _HalfProducts:
    """The two products in ``dtype`` (fp16/bf16 on a GPU), everything else float32/float64.

    Both half-precision operands are scaled to a largest entry of 1 first (and the results scaled
    back), since centred proxies and softmax deviations can be small enough to be fp16 subnormals.
    One (N, D) transposed copy is made, affordable on the GPUs this path serves.
    """

    def __init__(self, x: torch.Tensor, dtype: torch.dtype):
        self.x, self.xt, self.dtype = x.to(dtype), x.T.contiguous().to(dtype), dtype

    def xt_residual(self, centred: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
        w_scale = float(centred.abs().max()) or 1.0
        logits = (self.x @ (centred / w_scale).to(self.dtype)).float() * (w_scale / tau)
        residual = softmax_deviation(logits) - labels
        r_scale = float(residual.abs().max()) or 1.0
        return (self.xt @ (residual / r_scale).to(self.dtype)).to(torch.float64) * r_scale


class _RowBlocks:
    """The same product over row blocks of X, without a transposed copy or a full (N, C) softmax.

    Sums are accumulated as (C, D) ``Q_b^T X_b``, which keeps X's row-major blocks as gemm's
    plain operand (as fast as the contiguous X^T on one core, where ``X_b^T Q_b`` was 2x slower),
    and bounds the (rows, C) temporaries, which matters for many classes.
    """

    def __init__(self, x: torch.Tensor, rows: int):
        self.x, self.rows = x, max(1, int(rows))

    def xt_residual(self, centred: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
        out = torch.zeros(centred.shape[1], self.x.shape[1], dtype=self.x.dtype, device=self.x.device)
        for start in range(0, self.x.shape[0], self.rows):
            stop = start + self.rows
            block = self.x[start:stop]
            out.addmm_((softmax_deviation(block @ centred / tau) - labels[start:stop]).T, block)
        return out.T.to(torch.float64)
