"""How a stage turns its proxies into predictions, and which decisions float32 cannot make.

A stage predicts ``argmax_c X_i . w_c``. KPL's final proxies are nearly parallel (cosine
0.9999998 on PH2), so the scores share a large common term and their differences (median 1e-5
there) are near float32's resolution of the scores themselves: the paper's float32 product flips
such decisions between CPUs. Here the scores are accumulated in float64 (an (N, D) x (D, C)
product, done once per stage) from the float64 proxies the loop kept, so the prediction rests on
the proxies, not on the summation order of one product.

A decision is *within float32 resolution* when the top-2 margin is no larger than

    resolution_i = sqrt(D) * 2**-24 * (sum_d |x_id w_ad| + sum_d |x_id w_bd|),

a, b the two best classes: the typical rounding error of two float32 dot products over D terms
(unit roundoff 2**-24, errors of D partial sums growing like sqrt(D), Higham and Mary 2019).
Such images are decided here in float64, but float32 scores - the paper's code - cannot decide them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

UNIT_ROUNDOFF_FP32 = 2.0**-24
SCORE_ROWS = 8192  # row blocks: a float64 copy of X is never made whole
RESOLUTION_RULE = "top-2 margin <= sqrt(D) * 2**-24 * (sum_d |x_d w_ad| + sum_d |x_d w_bd|), a, b the two best classes"


@dataclass
class Decision:
    """(N,) predictions, (N, C) logits and the count of predictions float32 cannot decide.

    ``logits`` are the float64 scores minus each image's mean over classes, in x's dtype: softmax,
    argmax and margins are those of ``X W``, and float32 keeps their differences.
    """

    predictions: torch.Tensor
    logits: torch.Tensor
    float32_ties: int


def decide(x: torch.Tensor, w: torch.Tensor) -> Decision:
    """Predictions of the (D, C) proxies ``w`` (float64 ones where the loop kept them) on (N, D) x."""
    scores = decision_scores(x, w)
    ties = int(within_float32_resolution(x, w, scores).sum())
    logits = (scores - scores.mean(dim=1, keepdim=True)).to(x.dtype)
    return Decision(scores.argmax(dim=1), logits, ties)


def decision_scores(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(N, C) float64 scores ``X W`` for (N, D) x and (D, C) w, accumulated in float64."""
    w64 = w.to(torch.float64)
    out = torch.empty(x.shape[0], w.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], SCORE_ROWS):
        out[start:start + SCORE_ROWS] = x[start:start + SCORE_ROWS].to(torch.float64) @ w64
    return out


def within_float32_resolution(x: torch.Tensor, w: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(N,) bool: images whose top-2 margin under ``scores`` is within float32 resolution (module doc)."""
    if scores.shape[1] < 2:
        return torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    top = torch.topk(scores, 2, dim=1)
    margin = top.values[:, 0] - top.values[:, 1]
    w_abs = w.abs().to(torch.float64)
    within = torch.empty(scores.shape[0], dtype=torch.bool, device=scores.device)
    scale = math.sqrt(x.shape[1]) * UNIT_ROUNDOFF_FP32
    for start in range(0, x.shape[0], SCORE_ROWS):
        stop = start + SCORE_ROWS
        magnitude = x[start:stop].abs().to(torch.float64) @ w_abs  # (rows, C): sum_d |x_d w_cd|
        pair = magnitude.gather(1, top.indices[start:stop]).sum(dim=1)
        within[start:stop] = margin[start:stop] <= scale * pair
    return within
