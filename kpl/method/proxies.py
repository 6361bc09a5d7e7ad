"""KPL step 4: vision proxies fitted to pseudo-labels in image space (InMaP's update).

Given image features X (N, D), a pseudo-label plan P (N, C) and initial proxies W_t (D, C), the
proxies W minimise the cross-entropy between P and ``softmax(X W / tau_i)`` over unit columns.
Rows of P whose largest entry exceeds alpha are first hardened to one-hot. With
``B = X^T P`` the gradient is ``G = X^T softmax(X W / tau_i) - B`` and one step is

    W <- normalise_columns(W - step / (N tau_i) * G),

where ``step`` starts at ``lr`` and halves whenever ``||G||`` grows. The step collapses within a
few hundred iterations, after which W only moves by float32 rounding noise; so the loop stops
once ``max |W_new - W| < tol`` has held for ``patience`` consecutive iterations (unless
``exact_iters``), which lands within ~1e-6 of the full run.

Past ``CHUNK_ELEMENTS`` feature values (a million CLIP images), the products run over blocks of
rows instead: ``X^T softmax(X W)`` is summed block by block, so neither an (N, D) transposed
copy nor a full (N, C) softmax is made. Memory stays at the feature matrix plus the (N, C) plan;
the sums are the same up to float32 summation order, and the speed matches the whole-matrix loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kbuild.progress import task

# Above this many entries in X (N * D), the proxy loop works on row blocks of X (see the docstring).
CHUNK_ELEMENTS = 1 << 26
CHUNK_ROWS = 8192


@dataclass
class ProxyFit:
    """Outcome of the proxy loop: (D, C) proxies, iterations run, and whether the stop test held."""

    proxies: torch.Tensor
    iterations: int
    converged: bool


def harden_labels(plan: torch.Tensor, alpha: float) -> torch.Tensor:
    """A copy of the (N, C) plan whose rows with max > alpha are one-hot at their argmax."""
    labels = plan.clone()
    top_value, top_index = labels.max(dim=1)
    sure = top_value > alpha
    labels[sure, :] = 0
    labels[sure, top_index[sure]] = 1
    return labels


def fit_vision_proxies(
    x: torch.Tensor,
    plan: torch.Tensor,
    init: torch.Tensor,
    *,
    tau_i: float = 0.04,
    alpha: float = 0.6,
    lr: float = 10.0,
    iters: int = 2000,
    tol: float = 1e-6,
    patience: int = 20,
    exact_iters: bool = False,
    compute_dtype: torch.dtype | None = None,
    chunk_rows: int | None = None,
) -> ProxyFit:
    """Fit (D, C) vision proxies to the (N, C) plan, starting from the (D, C) ``init``.

    ``x`` is (N, D) float32. The per-iteration arithmetic is the plain loop's, op for op, so an
    early stop differs from the full ``iters`` run only by the skipped rounding-noise updates.
    """
    n = x.shape[0]
    if chunk_rows is None:
        chunk_rows = n if x.numel() <= CHUNK_ELEMENTS else CHUNK_ROWS
    if compute_dtype is not None and compute_dtype != x.dtype:
        score, target = _mixed_precision_score(x, plan, alpha, compute_dtype)
    elif chunk_rows < n:
        blocks = _RowBlocks(x, chunk_rows)
        target, score = blocks.xt_times(harden_labels(plan, alpha)), blocks.xt_softmax
    else:
        # A contiguous X^T makes X^T @ Q ~15% faster than gemm's transposed operand, with bitwise
        # equal results on MKL (checked up to N 50 000); it is copied once, not per iteration.
        xt = x.T.contiguous()
        target = xt @ harden_labels(plan, alpha)

        def score(w, tau):
            return xt @ torch.softmax(x @ w / tau, dim=1)

    w = init.clone()
    with task("KPL vision proxies", iters) as progress:
        return _descend(x, w, score, target, _Loop(tau_i, lr, iters, tol, patience, exact_iters), progress)


@dataclass(frozen=True)
class _Loop:
    tau_i: float
    lr: float
    iters: int
    tol: float
    patience: int
    exact_iters: bool


def _descend(x, w, score, target, loop: "_Loop", progress) -> ProxyFit:
    """The gradient loop of ``fit_vision_proxies`` (the paper's step-halving descent), reporting each
    iteration to ``progress``; an early stop ends the reported task there."""
    n, tau_i, iters, tol, patience = x.shape[0], loop.tau_i, loop.iters, loop.tol, loop.patience
    prev_norm = math.inf
    step = loop.lr
    quiet = 0  # consecutive iterations with max |W_new - W| < tol
    for it in range(iters):
        progress.advance()
        grad = score(w, tau_i) - target
        grad_norm = float(torch.norm(grad))
        if grad_norm > prev_norm:
            step /= 2
        prev_norm = grad_norm
        w_new = F.normalize(w - (step / (n * tau_i)) * grad, dim=0)
        quiet = quiet + 1 if float((w_new - w).abs().max()) < tol else 0
        w = w_new
        if quiet >= patience and not loop.exact_iters:
            return ProxyFit(w, it + 1, True)
    return ProxyFit(w, iters, quiet >= patience)


def _mixed_precision_score(x: torch.Tensor, plan: torch.Tensor, alpha: float, dtype: torch.dtype):
    """The loop's two (N, D) x (D, C) products in ``dtype`` (fp16/bf16 on a GPU), results in float32.

    W, the gradient and the stop test stay float32 (mixed precision): the per-step update
    ``step / (N tau_i) * G`` is far below half precision's resolution of W, and updating W in half
    would swallow it. One (N, D) transposed copy is made, affordable on the GPUs this path serves.
    """
    xt = x.T.contiguous()
    target = xt @ harden_labels(plan, alpha)
    x_half, xt_half = x.to(dtype), xt.to(dtype)

    def score(w, tau):
        logits = (x_half @ w.to(dtype)).float()
        return (xt_half @ torch.softmax(logits / tau, dim=1).to(dtype)).float()

    return score, target


class _RowBlocks:
    """``X^T Q`` and ``X^T softmax(X W / tau)`` over row blocks of X, without a transposed copy.

    Sums are accumulated as (C, D) ``Q_b^T X_b``, which keeps X's row-major blocks as gemm's
    plain operand (as fast as the contiguous X^T on one core, where ``X_b^T Q_b`` was 2x slower),
    and bounds the (rows, C) temporaries, which matters for many classes.
    """

    def __init__(self, x: torch.Tensor, rows: int):
        self.x, self.rows = x, max(1, int(rows))

    def _spans(self):
        return ((start, min(start + self.rows, self.x.shape[0])) for start in range(0, self.x.shape[0], self.rows))

    def xt_times(self, q: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(q.shape[1], self.x.shape[1], dtype=self.x.dtype, device=self.x.device)
        for start, stop in self._spans():
            out.addmm_(q[start:stop].T, self.x[start:stop])
        return out.T

    def xt_softmax(self, w: torch.Tensor, tau: float) -> torch.Tensor:
        out = torch.zeros(w.shape[1], self.x.shape[1], dtype=self.x.dtype, device=self.x.device)
        for start, stop in self._spans():
            block = self.x[start:stop]
            out.addmm_(torch.softmax(block @ w / tau, dim=1).T, block)
        return out.T
