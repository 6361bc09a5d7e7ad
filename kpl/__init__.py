"""KPL: training-free CLIP classification with knowledge-base text proxies and vision proxies.

Public API::

    from kpl import run_kpl, run_baseline
    result = run_kpl(image_features, class_embeddings, k=8, ot="greenkhorn")
    result.image_ot.predictions
    run_kpl(image_features, class_embeddings, k="auto").auto          # k chosen without labels
    run_baseline("transclip", image_features, name_embeddings=T)      # TransCLIP-ZS
    run_baseline("stata", image_features, class_embeddings=E)         # StatA: anchored TransCLIP

Errors are ``kpl.KplError`` (and its ``UsageError``, ``InputFileError``). Names are imported on first
use (PEP 562), so ``import kpl`` and ``kpl --help`` load no torch until a function needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module that defines it
_EXPORTS = {
    "BASELINES": "kpl.peers.baselines", "BaselineResult": "kpl.peers.baselines", "run_baseline": "kpl.peers.baselines",
    "KPLResult": "kpl.method.core", "StageResult": "kpl.method.core", "run_kpl": "kpl.method.core", "run_kpl_many": "kpl.method.core",
    "KPLParams": "kpl.params", "MethodResult": "kpl.method.result",
    "InputFileError": "kpl.errors", "KplError": "kpl.errors", "UsageError": "kpl.errors",
    "Metrics": "kpl.results.metrics", "compute_metrics": "kpl.results.metrics",
    "OT_METHODS": "kpl.method.ot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kpl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly, each re-exported
    # as ``X as X`` (the names of __all__, which is built from _EXPORTS above)
    from kpl.errors import InputFileError as InputFileError
    from kpl.errors import KplError as KplError
    from kpl.errors import UsageError as UsageError
    from kpl.method.core import KPLResult as KPLResult
    from kpl.method.core import StageResult as StageResult
    from kpl.method.core import run_kpl as run_kpl
    from kpl.method.core import run_kpl_many as run_kpl_many
    from kpl.method.ot import OT_METHODS as OT_METHODS
    from kpl.method.result import MethodResult as MethodResult
    from kpl.params import KPLParams as KPLParams
    from kpl.peers.baselines import BASELINES as BASELINES
    from kpl.peers.baselines import BaselineResult as BaselineResult
    from kpl.peers.baselines import run_baseline as run_baseline
    from kpl.results.metrics import Metrics as Metrics
    from kpl.results.metrics import compute_metrics as compute_metrics
