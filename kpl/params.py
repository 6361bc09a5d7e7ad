"""KPL's hyperparameters (docs/ALGORITHM.md), in a module that does not import torch.

The CLI builds its option defaults from ``KPLParams()`` at import time, so keeping this module
light is what lets ``kpl --help`` start without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kpl.errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16")
# the batch's class shares: the paper's equal ones, or estimated without labels (kpl.method.prior)
PRIORS = ("uniform", "auto")
# share of the exact neighbours an approximate kNN graph must find (kpl.peers.knn; here so the CLI can
# show the default without importing torch)
DEFAULT_KNN_RECALL = 0.95


def check_prior(prior: Any) -> str:
    """``prior`` if it is one of PRIORS, else a UsageError naming the valid ones."""
    if prior not in PRIORS:
        raise UsageError(f"prior must be one of {', '.join(PRIORS)} (got {prior!r}); "
                         "uniform is the paper's KPL, auto estimates the batch's class shares")
    return str(prior)


def require_int(value: Any, label: str, low: int = 0) -> None:
    """``value`` is an integer (a bool is not) >= ``low``, or a UsageError naming ``label``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UsageError(f"{label} must be an integer >= {low} (got {value!r})")


def require_number(value: Any, label: str, positive: bool = False, hint: str = "") -> None:
    """``value`` is a finite number > 0 (``positive``) or >= 0, or a UsageError naming ``label``."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and math.isfinite(value) and (value > 0 if positive else value >= 0))
    if not ok:
        raise UsageError(f"{label} must be {'a positive number' if positive else 'a number >= 0'} "
                         f"(got {value!r}){hint}")


@dataclass(frozen=True)
class KPLParams:
    """Hyperparameters; the defaults are the paper code's."""

    k: int = 8
    tau_t: float = 0.01
    tau_i: float = 0.04
    alpha: float = 0.6
    lr: float = 10.0
    iters: int = 2000
    ot_iters: int = 20
    gamma: float = 0.0
    ot: str = "greenkhorn"
    tol: float = 1e-6
    patience: int = 20
    exact_iters: bool = False
    # The proxy loop's two big products: fp32 (the paper's), or fp16/bf16 for speed on a GPU, with
    # W and the gradient kept in float32; retrieval and OT always run in float32.
    precision: str = "fp32"
    # Class shares the batch is assumed to have: "uniform" (the paper's) or "auto" (estimated without
    # labels, kpl.method.prior); run_kpl's default stays the paper's.
    prior: str = "uniform"

    def __post_init__(self) -> None:
        # numpy scalars (e.g. k from np.arange) would not survive json.dumps in to_json
        for name, value in asdict(self).items():
            if isinstance(value, np.generic):
                object.__setattr__(self, name, value.item())

    def validate(self) -> KPLParams:
        """Return self, or raise a UsageError naming the bad value and a valid one."""
        # torch-backed checks, imported here so that `kpl --help` never loads torch
        from kpl.method.ot import get_ot_method
        from kpl.method.retrieval import check_k

        check_k(self.k)
        get_ot_method(self.ot)
        check_prior(self.prior)
        for name in ("tau_t", "tau_i", "lr"):
            require_number(getattr(self, name), name, positive=True)
        for name in ("iters", "ot_iters", "patience"):
            require_int(getattr(self, name), name)
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise UsageError(f"alpha must lie in [0, 1] (got {self.alpha!r}): it is a confidence threshold; "
                             f"1 turns the one-hot step off")
        require_number(self.gamma, "gamma", hint="; 0 means uniform classes")
        require_number(self.tol, "tol")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
