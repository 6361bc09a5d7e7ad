"""KPL's hyperparameters (ARCHITECTURE section 4), in a module that does not import torch.

The CLI builds its option defaults from ``KPLParams()`` at import time, so keeping this module
light is what lets ``kpl --help`` start without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from kpl.errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16")


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

    def __post_init__(self):
        # numpy scalars (e.g. k from np.arange) would not survive json.dumps in to_json
        for name, value in asdict(self).items():
            if isinstance(value, np.generic):
                object.__setattr__(self, name, value.item())

    def validate(self) -> KPLParams:
        """Return self, or raise a UsageError naming the bad value and a valid one."""
        # torch-backed checks, imported here so that `kpl --help` never loads torch
        from kpl.ot import get_ot_method
        from kpl.retrieval import check_k

        check_k(self.k)
        get_ot_method(self.ot)
        for name in ("tau_t", "tau_i", "lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a positive number (got {value!r})")
        for name in ("iters", "ot_iters", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise UsageError(f"{name} must be an integer >= 0 (got {value!r})")
        if not (isinstance(self.alpha, (int, float)) and 0 <= self.alpha <= 1):
            raise UsageError(f"alpha must lie in [0, 1] (got {self.alpha!r}): it is a confidence threshold; "
                             f"1 turns the one-hot step off")
        if not (isinstance(self.gamma, (int, float)) and self.gamma >= 0):
            raise UsageError(f"gamma must be a number >= 0 (got {self.gamma!r}); 0 means uniform classes")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise UsageError(f"tol must be a number >= 0 (got {self.tol!r})")
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        return self

    def to_json(self) -> dict:
        return asdict(self)
