"""KPL: training-free CLIP classification with knowledge-base text proxies and vision proxies.

Public API::

    from kpl import run_kpl, run_baseline
    result = run_kpl(image_features, class_embeddings, k=8, ot="greenkhorn")
    result.image_ot.predictions
    run_kpl(image_features, class_embeddings, k="auto").auto          # k chosen without labels
    run_baseline("transclip", image_features, name_embeddings=T)      # TransCLIP-ZS

Errors are ``kpl.KplError`` (and its ``UsageError``, ``InputFileError``); importing ``kpl`` loads only numpy and torch.
"""

from kpl.baselines import BASELINES, BaselineResult, run_baseline
from kpl.errors import InputFileError, KplError, UsageError
from kpl.core import KPLParams, KPLResult, StageResult, run_kpl, run_kpl_many
from kpl.metrics import Metrics, compute_metrics
from kpl.ot import OT_METHODS

__all__ = [
    "BASELINES",
    "BaselineResult",
    "InputFileError",
    "KPLParams",
    "KPLResult",
    "KplError",
    "Metrics",
    "OT_METHODS",
    "StageResult",
    "UsageError",
    "compute_metrics",
    "run_baseline",
    "run_kpl",
    "run_kpl_many",
]
