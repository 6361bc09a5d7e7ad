"""KPL step 3: pseudo-labels from text logits, by (approximate) optimal transport.

Given text logits L = X W_t (N, C) and a temperature tau_t, the starting plan is the row-wise
softmax ``P0 = softmax(L / tau_t)``. An OT method moves P0 toward a plan with row masses r and
column masses q (uniform 1/N and 1/C, or a class prior q ~ (column mass of P0)^gamma), so that
no class swallows the whole data set:

- ``greenkhorn`` (KPL's default): in log space, repeatedly rescale the single row or column that
  violates its marginal the most (Altschuler et al., 2017). The result keeps the plan's scale, so
  its rows sum to about 1/N; the paper's numbers were produced with exactly that plan.
- ``sinkhorn`` (InMaP's): alternately rescale all columns to q and all rows to 1/N, then scale
  rows back to 1 so each row is a label distribution.
- ``none``: P0 itself.

Every method has the signature ``method(logits, tau_t, iters=20, gamma=0.0) -> (N, C) tensor``
and never writes into ``logits``.
"""

from __future__ import annotations

import torch

from kpl.errors import UsageError


def _column_prior(col_mass: torch.Tensor, gamma: float) -> torch.Tensor:
    """Target column masses (C,): uniform for gamma 0, else col_mass**gamma normalised to 1."""
    if gamma > 0:
        prior = col_mass**gamma
        return prior / prior.sum()
    return torch.ones_like(col_mass) / col_mass.shape[0]


def greenkhorn(logits: torch.Tensor, tau_t: float, iters: int = 20, gamma: float = 0.0) -> torch.Tensor:
    """(N, C) Greenkhorn plan from (N, C) logits; rows sum to ~1/N, columns move toward q.

    One step fixes only the worst marginal: the worst column when its violation is strictly larger
    than the worst row's, else the worst row (first index on ties, as torch.argmax gives).
    """
    log_p = logits / tau_t
    log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
    n, c = log_p.shape
    row_target = torch.ones(n, dtype=log_p.dtype, device=log_p.device) / n
    col_target = _column_prior(torch.exp(torch.logsumexp(log_p, dim=0)), gamma)
    log_row, log_col = torch.log(row_target), torch.log(col_target)
    for _ in range(iters):
        p = torch.exp(log_p)
        col_violation = (p.sum(dim=0) - col_target).abs()
        row_violation = (p.sum(dim=1) - row_target).abs()
        if col_violation.max() > row_violation.max():
            j = int(torch.argmax(col_violation))
            log_p[:, j] -= torch.logsumexp(log_p[:, j], dim=0)
            log_p[:, j] += log_col[j]
        else:
            i = int(torch.argmax(row_violation))
            log_p[i, :] -= torch.logsumexp(log_p[i, :], dim=0)
            log_p[i, :] += log_row[i]
    return torch.exp(log_p)


def sinkhorn(logits: torch.Tensor, tau_t: float, iters: int = 20, gamma: float = 0.0) -> torch.Tensor:
    """(N, C) balanced Sinkhorn plan from (N, C) logits, rows rescaled to sum to 1 (InMaP)."""
    n, c = logits.shape
    plan = torch.softmax(logits / tau_t, dim=1) / n
    prior = _column_prior(plan.sum(dim=0), gamma) if gamma > 0 else None
    for _ in range(iters):
        plan /= plan.sum(dim=0, keepdim=True)
        if prior is not None:
            plan *= prior
        else:
            plan /= c  # same values as multiplying by a uniform prior, in InMaP's op order
        plan /= plan.sum(dim=1, keepdim=True)
        plan /= n
    return plan * n


def softmax_plan(logits: torch.Tensor, tau_t: float, iters: int = 20, gamma: float = 0.0) -> torch.Tensor:
    """(N, C) row-wise softmax of logits / tau_t; ``iters`` and ``gamma`` are ignored."""
    return torch.softmax(logits / tau_t, dim=1)


OT_METHODS = {"greenkhorn": greenkhorn, "sinkhorn": sinkhorn, "none": softmax_plan}


def get_ot_method(name: str):
    """The OT callable registered under ``name``, or a UsageError listing the available ones."""
    try:
        return OT_METHODS[name]
    except (KeyError, TypeError):
        available = ", ".join(sorted(OT_METHODS))
        raise UsageError(f"Unknown OT method {name!r}. Available: {available}") from None
