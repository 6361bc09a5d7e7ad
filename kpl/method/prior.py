"""``prior="auto"``: KPL on batches whose classes are not equally frequent, without labels.

The paper's KPL (``prior="uniform"``) assumes every class fills the same share of the batch. Two
things go wrong when it does not, and when N grows:

1. **The image_ot stage splits any batch.** Its proxy loop is dominated by the softmax term
   ``X^T softmax(X W / tau_i)`` (mass N) while the OT plan's pull has mass 1 (rows sum to 1/N):
   at its fixed point each proxy is the direction of the images it wins, a spherical soft k-means
   started from the text proxies. On an all-benign batch it still sends about half the images to
   the other class (measured on PH2 batches of 40: 52 % accuracy); the plan's column marginals
   hardly matter (gamma 0..1 moved the mean over batch mixes by < 0.5 pp).
2. **The plan's pull fades as 1/N.** With rows summing to 1/N the pull shrinks against the softmax
   term as N grows (synthetic, 10 classes: 0.91 at 10k, 0.56 at 100k, 0.24 at 1M).

``auto`` answers each with a label-free estimate:

- **Scale** (``plan_scale``): the plan's rows sum to ``1 / min(N, REFERENCE_ROWS)``: exactly the
  paper's plan up to 10 000 images, a constant pull beyond (synthetic 100k: 0.918 instead of 0.56).
- **Class proportions** (``estimate_prior``): the batch's class shares by EM on the zero-shot text
  posteriors (Saerens, Latinne & Decaestecker, 2002), a MAP estimate under a symmetric Dirichlet
  prior worth ``SMOOTHING`` pseudo-images in all, so no class is ever declared exactly absent.
- **Trust** (``prior_weight``): how far to believe that estimate: the batch's mean top text
  posterior above chance, rescaled to [0, 1] (a text classifier whose posteriors sit near chance
  says little about the shares; on PH2 the weight is about 0.3).
- **Decision** (``target_shares``, ``assign_to_shares``): the target shares lie between the shares
  the fitted proxies give (weight 0: the paper's decisions) and the EM estimate (weight 1), a
  linear blend; the final scores (centred, float64) get one offset per class so that their argmax gives
  those shares. Each class keeps its ranking of the images; only the thresholds move.

Measured (benchmarks/bench_batches.py, README "Batches that are not balanced"): one-sided synthetic
batches keep their class; on PH2, whose text stage is biased toward nevus (balanced accuracy 61 %),
auto trades melanoma-heavy batches for benign ones and its mean over mixes equals the paper's.
"""

from __future__ import annotations

import torch

PRIORS = ("uniform", "auto")
# Up to this many images the plan's rows sum to 1/N (the paper's plan); beyond it, 1/REFERENCE_ROWS.
REFERENCE_ROWS = 10_000
# Dirichlet pseudo-images in the EM estimate (MAP), spread evenly over the classes: keeps every share
# above 0 with the same prior evidence for any number of classes (one per class for two classes).
SMOOTHING = 2.0
EM_ITERS = 200
EM_TOL = 1e-7
# assign_to_shares: scores divided by this fraction of their batch spread before balancing (soft
# enough for Sinkhorn to converge, sharp enough that the argmax follows the target shares)
SHARPNESS = 0.05
OFFSET_TOL = 1e-9


def check_prior(prior) -> str:
    """``prior`` if it is one of PRIORS, else a UsageError naming the valid ones."""
    from kpl.errors import UsageError

    if prior not in PRIORS:
        raise UsageError(f"prior must be one of {', '.join(PRIORS)} (got {prior!r}); "
                         "uniform is the paper's KPL, auto estimates the batch's class shares")
    return prior


def plan_scale(n: int) -> float:
    """Factor that turns the paper's plan (rows ~1/N) into rows ~1/min(N, REFERENCE_ROWS)."""
    return n / min(n, REFERENCE_ROWS)


def estimate_prior(logits: torch.Tensor, tau: float, smoothing: float = SMOOTHING) -> torch.Tensor:
    """(C,) float64 class shares of the batch by EM on ``softmax(logits / tau)`` (a uniform reference).

    E-step: each image's posterior reweighted by the current shares (the classifier's own
    reference prior is uniform: the text proxies favour no class by construction); M-step: the
    shares are the mean reweighted posterior plus ``smoothing`` pseudo-images spread over the classes.
    """
    post = torch.softmax(logits.double() / tau, dim=1)
    n, c = post.shape
    pi = torch.full((c,), 1.0 / c, dtype=torch.float64, device=post.device)
    for _ in range(EM_ITERS):
        weighted = post * pi
        weighted /= weighted.sum(dim=1, keepdim=True)
        new = (weighted.sum(dim=0) + smoothing / c) / (n + smoothing)
        done = float((new - pi).abs().max()) < EM_TOL
        pi = new
        if done:
            break
    return pi


def prior_weight(logits: torch.Tensor, tau: float) -> float:
    """Trust in the EM shares, in [0, 1]: the batch's mean top text posterior above chance (1/C)."""
    post = torch.softmax(logits.double() / tau, dim=1)
    c = post.shape[1]
    top = float(post.max(dim=1).values.mean())
    return max(0.0, min(1.0, (top - 1.0 / c) / (1.0 - 1.0 / c)))


def target_shares(estimated: torch.Tensor, fitted: torch.Tensor, weight: float) -> torch.Tensor:
    """(C,) shares between the fitted proxies' own (weight 0) and the EM estimate (weight 1).

    A linear blend, so that an estimate at a corner of the simplex (EM on a biased text classifier
    declares a class nearly absent) moves the target by at most ``weight`` of the way; blending in
    log space went further (PH2, batches of 256: 62.3 % mean over mixes against 65.4 % linear; on
    the synthetic problems the two were within 0.6 pp).
    """
    return weight * estimated + (1 - weight) * fitted.double()


def centred_scores(x: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
    """(N, C) float64 ``X (W - mean_c w_c)``: the scores' differences, without their common part.

    KPL's final proxies can sit within 1e-7 of each other (cosine 0.9999998 on PH2), so the float32
    scores X W share a large common term and differ by ~1e-5; removing the common proxy first, in
    float64, keeps those differences exact enough to rank images by them.
    """
    w = proxies.double()
    return x.double() @ (w - w.mean(dim=1, keepdim=True))


def assign_to_shares(scores: torch.Tensor, shares: torch.Tensor, iters: int = 500) -> torch.Tensor:
    """(N, C) float64 log-scores whose argmax gives each class about ``shares`` of the images.

    The scores are put on a common scale (their spread across the batch), then balanced by Sinkhorn
    to rows 1 and column masses N * shares: per-class offsets, so each image keeps its ranking
    within every class and only the thresholds between classes move.
    """
    n, c = scores.shape
    spread = float(scores.std())
    if not spread > 0:
        return scores.clone()
    log_p = (scores - scores.mean(dim=1, keepdim=True)) / (SHARPNESS * spread)
    offsets = torch.zeros(c, dtype=torch.float64, device=scores.device)
    log_target = torch.log(shares.clamp_min(1e-12) * n)
    for _ in range(iters):
        rows = torch.logsumexp(log_p + offsets, dim=1, keepdim=True)
        new = log_target - torch.logsumexp(log_p - rows, dim=0)
        moved = float((new - offsets).abs().max())
        offsets = new
        if moved < OFFSET_TOL:  # converged: further sweeps change no decision
            break
    return log_p + offsets


__all__ = ["PRIORS", "REFERENCE_ROWS", "SMOOTHING", "assign_to_shares", "centred_scores",
           "check_prior", "estimate_prior", "plan_scale", "prior_weight", "target_shares"]
