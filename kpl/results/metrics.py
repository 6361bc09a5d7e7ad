"""Classification metrics from (N,) true labels and (N,) predictions, in plain numpy.

From the C x C confusion matrix ``M[t, p]`` (count of images of true class t predicted as p):
top-1 accuracy ``trace(M) / N``; per-class recall ``M[c, c] / sum_p M[c, p]``; balanced accuracy,
the mean recall over the classes present in the labels; macro-F1, the mean of
``2 M[c, c] / (sum_p M[c, p] + sum_t M[t, c])`` over the classes that occur in the labels or the
predictions (scikit-learn's default ``f1_score(average="macro")``). Rates are fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kpl.errors import KplError


@dataclass
class Metrics:
    """Metrics of one set of predictions; ``per_class_recall`` is NaN for classes absent from labels."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    per_class_recall: np.ndarray
    confusion: np.ndarray
    class_names: list[str] | None = None

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    def to_json(self) -> dict:
        """JSON-ready dict (NaN recalls become null)."""
        recalls = [None if np.isnan(r) else float(r) for r in self.per_class_recall]
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "per_class_recall": recalls,
            "confusion_matrix": self.confusion.tolist(),
            "class_names": self.class_names,
        }


def _labels(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise KplError(f"{name} must be a 1-D array of integer class indices (got {arr.dtype}, shape {arr.shape})")
    if arr.size and arr.min() < 0:
        raise KplError(f"{name} has negative class index {int(arr.min())}; use 0..C-1")
    return arr.astype(np.int64)


def confusion_matrix(labels, predictions, num_classes: int | None = None) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    y, p = _labels(labels, "labels"), _labels(predictions, "predictions")
    if y.shape != p.shape:
        raise KplError(f"labels ({y.size}) and predictions ({p.size}) differ in length")
    c = int(max(y.max(initial=-1), p.max(initial=-1)) + 1) if num_classes is None else int(num_classes)
    if y.size and max(y.max(), p.max()) >= c:
        raise KplError(f"class index {int(max(y.max(), p.max()))} is out of range for {c} classes")
    return np.bincount(y * c + p, minlength=c * c).reshape(c, c)


def _safe_ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def metrics_from_confusion(confusion: np.ndarray, class_names: list[str] | None = None) -> Metrics:
    """All metrics from a (C, C) confusion matrix."""
    m = np.asarray(confusion, dtype=np.int64)
    hits, support, predicted = np.diag(m), m.sum(axis=1), m.sum(axis=0)
    n = int(m.sum())
    recall = _safe_ratio(hits, support, np.nan)
    f1 = _safe_ratio(2 * hits, support + predicted, 0.0)
    present, seen = support > 0, (support + predicted) > 0
    return Metrics(
        accuracy=float(hits.sum() / n) if n else float("nan"),
        balanced_accuracy=float(recall[present].mean()) if present.any() else float("nan"),
        macro_f1=float(f1[seen].mean()) if seen.any() else float("nan"),
        per_class_recall=recall,
        confusion=m,
        class_names=list(class_names) if class_names is not None else None,
    )


def compute_metrics(
    labels, predictions, num_classes: int | None = None, class_names: list[str] | None = None
) -> Metrics:
    """Metrics of (N,) predictions against (N,) labels; C from ``class_names``, ``num_classes`` or the data."""
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    return metrics_from_confusion(confusion_matrix(labels, predictions, num_classes), class_names)
