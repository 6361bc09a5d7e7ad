"""Bootstrap 95 % confidence intervals for top-1, balanced accuracy and AUROC.

The percentile bootstrap: draw ``resamples`` sets of N images with replacement (a fixed seed, so
the same run gives the same interval), compute the metric on each, and report the 2.5th and
97.5th percentiles. Every resample is a vector of counts ``w`` (B, N) (how often each image was
drawn), so each metric is a weighted sum evaluated for all resamples at once:

- top-1: ``sum_i w_i [p_i = y_i] / N``;
- balanced accuracy: the mean over classes present in the resample of
  ``sum_{i: y_i = c} w_i [p_i = c] / sum_{i: y_i = c} w_i``;
- AUROC (the Mann-Whitney statistic of ``kpl.results.ranking``, ties counting one half): with the
  scores sorted once, ``sum_i w_i^+ (W^-_{<i} + W^-_{=i} / 2) / (W^+ W^-)``, where ``W^-_{<i}`` is
  the negative weight strictly below image i's score and ``W^-_{=i}`` the negative weight tied
  with it. Binary AUROC for two classes, else the macro one-vs-rest mean over classes present.

Resamples are drawn in chunks so memory stays near ``CHUNK_VALUES`` numbers. AUROC costs
B x N x C, so past ``AUROC_BUDGET`` it uses fewer resamples (never under ``MIN_RESAMPLES``, else
no interval); the count used is recorded next to the interval.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from kbuild.progress import task
from kpl.results.ranking import class_margins

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
CHUNK_VALUES = 2**23  # (resamples x images) counts held at once: 64 MB of float64
AUROC_BUDGET = 5 * 10**7  # resamples x images x classes for the AUROC interval: a few seconds on 2 cores
MIN_RESAMPLES = 200


def _count_chunks(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """(b, N) draw counts, b resamples at a time; the whole sequence depends only on ``seed``."""
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_VALUES // max(n, 1))
    with task("bootstrap resamples", resamples) as progress:  # seconds past ~100 000 images
        for start in range(0, resamples, step):
            b = min(step, resamples - start)
            drawn = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
            yield np.bincount(drawn.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
            progress.advance(b)


def _interval(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def _accuracies(labels: np.ndarray, predictions: np.ndarray, classes: int, resamples: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(B,) top-1 and (B,) balanced accuracy of every resample."""
    correct = (labels == predictions).astype(np.float64)
    top1, balanced = [], []
    for w in _count_chunks(labels.size, resamples, seed):
        b = w.shape[0]
        top1.append(w @ correct / labels.size)
        cells = ((np.arange(b) * classes)[:, None] + labels[None, :]).ravel()  # (resample, class) of each count
        support = np.bincount(cells, weights=w.ravel(), minlength=b * classes).reshape(b, classes)
        hits = np.bincount(cells, weights=(w * correct).ravel(), minlength=b * classes).reshape(b, classes)
        present = support > 0
        recall = np.divide(hits, support, out=np.zeros_like(hits), where=present)
        balanced.append(recall.sum(axis=1) / np.maximum(present.sum(axis=1), 1))
    return np.concatenate(top1), np.concatenate(balanced)


def _weighted_auroc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(b,) AUROC of ``score`` (N,) for ``positive`` (N,) under draw counts ``w`` (b, N); NaN where a
    resample lacks positives or negatives."""
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # first image of each tie group
    ws = w[:, order]
    pos = ws * positive[order]
    if starts.size == score.size:  # no ties (the usual case for float scores): groups are images
        pos_group, neg_group = pos, ws - pos
    else:
        pos_group = np.add.reduceat(pos, starts, axis=1)  # (b, G) weight per tie group
        neg_group = np.add.reduceat(ws, starts, axis=1) - pos_group
    below = np.cumsum(neg_group, axis=1) - neg_group  # negative weight strictly below each group
    wins = pos_group * (below + neg_group / 2)
    total_pos, total_neg = pos_group.sum(axis=1), neg_group.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((total_pos > 0) & (total_neg > 0), wins.sum(axis=1) / (total_pos * total_neg), np.nan)


def _aurocs(labels: np.ndarray, scores: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(B,) binary AUROC (two classes) or macro one-vs-rest AUROC of every resample."""
    margins = class_margins(scores)
    c = margins.shape[1]
    ks = [1] if c == 2 else [k for k in range(c) if 0 < (labels == k).sum() < labels.size]
    out = []
    for w in _count_chunks(labels.size, resamples, seed):
        if not ks:
            out.append(np.full(w.shape[0], np.nan))
            continue
        per_class = np.stack([_weighted_auroc(w, labels == k, margins[:, k]) for k in ks], axis=1)
        known = np.isfinite(per_class)  # classes a resample has both sides of; the macro mean skips the rest
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(known, per_class, 0.0).sum(axis=1) / known.sum(axis=1))
    return np.concatenate(out)


def auroc_resamples(n: int, classes: int, resamples: int = RESAMPLES) -> int:
    """How many resamples the AUROC interval can afford for n images and ``classes`` classes (0: none)."""
    per = n * (1 if classes == 2 else classes)
    fit = min(resamples, AUROC_BUDGET // max(per, 1))
    return fit if fit >= min(MIN_RESAMPLES, resamples) else 0


def confidence_intervals(labels, predictions, scores=None, resamples: int = RESAMPLES,
                         seed: int = SEED) -> dict:
    """``{"level": 0.95, "resamples": B, "seed": s, "accuracy": [lo, hi], "balanced_accuracy": [lo, hi],
    "auroc": [lo, hi] or None, "auroc_resamples": B'}`` for (N,) labels and predictions and optional
    (N, C) scores; fractions in [0, 1]."""
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    out: dict = {"level": LEVEL, "resamples": resamples, "seed": seed, "accuracy": None,
                 "balanced_accuracy": None, "auroc": None, "auroc_resamples": 0}
    if y.size == 0 or resamples < 1:
        return out
    classes = int(max(y.max(), p.max())) + 1
    if scores is not None:
        classes = max(classes, np.asarray(scores).shape[1])
    top1, balanced = _accuracies(y, p, classes, resamples, seed)
    out.update(accuracy=_interval(top1), balanced_accuracy=_interval(balanced))
    if scores is not None:
        affordable = auroc_resamples(y.size, classes, resamples)
        if affordable:
            interval = _interval(_aurocs(y, np.asarray(scores), affordable, seed))
            out.update(auroc=interval, auroc_resamples=affordable if interval is not None else 0)
    return out


__all__ = ["confidence_intervals", "auroc_resamples", "RESAMPLES", "SEED"]
