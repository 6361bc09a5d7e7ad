"""The one record of a classifier's output: a baseline's row and a KPL stage's (kpl.peers.baselines'
``BaselineResult`` and kpl.method.core's ``StageResult`` are both this class)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class MethodResult:
    """(N,) predictions, (D, C) proxies (None where a method has no single proxy), (N, C) logits, and
    where the method's loop stopped.

    ``logits`` of the methods scored by kpl.method.decision (KPL's stages, inmap) are ``X w_c`` minus
    each image's mean over classes, from float64 scores, so float32 keeps their differences;
    ``float32_ties`` is then how many predictions float32 scores cannot decide (None: not counted).
    ``params``: the settings a baseline ran with (None for a KPL stage: its run's ``KPLResult.params``).
    The field order is KPL stages' (name, predictions, proxies, logits, ...).
    """

    name: str
    predictions: np.ndarray
    proxies: np.ndarray | None
    logits: np.ndarray
    iterations: int = 0
    converged: bool = True
    float32_ties: int | None = None
    params: dict[str, Any] | None = None

    def to_json(self, arrays: bool = False) -> dict[str, Any]:
        """JSON-ready dict; proxies and logits only with ``arrays=True`` (they can be large)."""
        out: dict[str, Any] = {"name": self.name}
        if self.params is not None:
            out["params"] = dict(self.params)
        out.update(iterations=self.iterations, converged=self.converged, predictions=self.predictions.tolist())
        if self.float32_ties is not None:
            out["float32_ties"] = self.float32_ties
        if arrays:
            out["proxies"] = None if self.proxies is None else self.proxies.tolist()
            out["logits"] = self.logits.tolist()
        return out
