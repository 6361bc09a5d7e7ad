"""Threshold-free metrics from each method's (N, C) scores: AUROC (binary) and macro one-vs-rest AUROC.

Methods put their scores on different scales (cosines, logits at a temperature, probabilities),
so every class's score is turned into its margin ``s_c - max_{c' != c} s_c'``, the amount by which
the method prefers c over its best rival. The margin is positive exactly when c is predicted, does
not depend on a temperature, and for two classes is ``s_1 - s_0``, the usual binary decision value.

AUROC is the Mann-Whitney statistic: the probability that a random image of the class gets a
higher margin than a random image of the other classes, ties counting one half. Classes without
positives or without negatives have no AUROC (None) and are left out of the macro mean.
"""

from __future__ import annotations

import numpy as np


def class_margins(scores) -> np.ndarray:
    """(N, C) margins ``s_c - max_{c' != c} s_c'`` of (N, C) scores."""
    s = np.asarray(scores, dtype=np.float64)
    if s.shape[1] == 1:
        return s.copy()
    order = np.sort(s, axis=1)
    best, second = order[:, -1:], order[:, -2:-1]
    rival = np.where(s == best, second, best)  # the best other class (the runner-up for the winner)
    return s - rival


def auroc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC of ``score`` for the boolean ``positive`` labels; None when one side is empty."""
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    # average ranks handle ties: equal scores share the mean of their ranks
    values, inverse, counts = np.unique(np.asarray(score, dtype=np.float64), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0  # 1-based
    ranks = mean_rank[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ranking_metrics(labels, scores, class_names: list[str] | None = None) -> dict:
    """``{"auroc": binary AUROC or None, "macro_auroc_ovr": ..., "per_class_auroc": {...}}``."""
    y = np.asarray(labels, dtype=np.int64)
    margins = class_margins(scores)
    c = margins.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    per_class = {names[k]: auroc(y == k, margins[:, k]) for k in range(c)}
    present = [v for v in per_class.values() if v is not None]
    return {
        "auroc": per_class[names[1]] if c == 2 else None,
        "macro_auroc_ovr": float(np.mean(present)) if present else None,
        "per_class_auroc": per_class,
    }


__all__ = ["auroc", "class_margins", "ranking_metrics"]
