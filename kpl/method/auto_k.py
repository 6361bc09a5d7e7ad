"""``k="auto"``: choose KPL's k from the images and descriptions alone, never from labels.

The rule ("agreement medoid"): run KPL for every k in a range (default 1 .. min(30, largest
class's description count)), compare the final-stage (image_ot) predictions of every pair of k
and keep the k whose predictions agree best, on average, with those of all the other k. It is
the medoid of the k curve under prediction agreement: a k whose answer most other k share.

Why this and not a single "best-looking" k: no label-free score predicts accuracy reliably, but
the failures of KPL at a bad k are idiosyncratic (at small k a class can lose its proxy to a
couple of off-topic descriptions and collapse), while the many reasonable k agree with each
other. The medoid therefore lands inside the large agreeing group and away from collapses.

Determinism: the KPL runs are deterministic, agreement is a plain count, and ties go to the
smallest k. Nothing here sees labels; permuting images changes no agreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from kpl.errors import UsageError

AUTO = "auto"
DEFAULT_MAX_K = 30
RULE = "agreement-medoid"


def is_auto(k) -> bool:
    """True for the string ``"auto"`` (any case, surrounding blanks ignored)."""
    return isinstance(k, str) and k.strip().lower() == AUTO


def auto_range(sizes: Sequence[int], ks: Iterable[int] | None = None) -> list[int]:
    """The k values ``auto`` compares, given each class's description count ``sizes``.

    Default: 1 .. min(DEFAULT_MAX_K, max(sizes)); larger k select the same descriptions as
    max(sizes) and would only repeat a vote. Raises a UsageError for inputs where choosing k
    means nothing (a class with a single description) or an empty range.
    """
    from kpl.method.retrieval import check_k

    small = [c for c, m in enumerate(sizes) if m < 2]
    if small:
        raise UsageError(f"k='auto' needs at least 2 descriptions per class, but class {small[0]} has "
                         f"{sizes[small[0]]}; use a fixed k (e.g. k=8) or add descriptions to that class")
    if ks is None:
        ks = range(1, min(DEFAULT_MAX_K, max(sizes)) + 1)
    ks = list(dict.fromkeys(check_k(k) for k in ks))
    if not ks:
        raise UsageError("k='auto': the range of k to compare is empty; give at least one k, e.g. 1-30")
    return sorted(ks)


def agreement_matrix(predictions: np.ndarray) -> np.ndarray:
    """(K, K) fraction of images on which the (K, N) prediction rows agree."""
    preds = np.asarray(predictions)
    k = preds.shape[0]
    out = np.ones((k, k), dtype=np.float64)
    for a in range(k):
        for b in range(a + 1, k):
            out[a, b] = out[b, a] = float(np.mean(preds[a] == preds[b]))
    return out


def choose_k(ks: Sequence[int], predictions: np.ndarray) -> tuple[int, dict]:
    """(chosen k, record for metrics.json) from the image_ot predictions (K, N) of each k in ``ks``."""
    ks = list(ks)
    agree = agreement_matrix(predictions)
    if len(ks) == 1:
        score = np.ones(1)
    else:
        score = (agree.sum(axis=1) - 1.0) / (len(ks) - 1)  # mean agreement with the other k
    # round so that float noise in the mean never decides a tie; ties go to the smallest k
    best = int(np.argmax(np.round(score, 12)))
    record = {
        "rule": RULE,
        "range": [ks[0], ks[-1]],
        "ks": ks,
        "chosen_k": int(ks[best]),
        "mean_agreement": {str(k): round(float(s), 6) for k, s in zip(ks, score)},
    }
    return int(ks[best]), record


__all__ = ["AUTO", "DEFAULT_MAX_K", "RULE", "agreement_matrix", "auto_range", "choose_k", "is_auto"]
