"""``prior="auto"``: KPL on batches whose classes are not equally frequent, without labels.

The paper's KPL (``prior="uniform"``) assumes every class fills the same share of the batch, and
its image_ot stage acts on that in two places that a label-free share estimate cannot repair:

1. **Its proxy loop splits any batch.** The loop is dominated by the softmax term
   ``X^T softmax(X W / tau_i)`` (mass N) while the OT plan's pull has mass 1: at its fixed point
   each proxy is the direction of the images it wins, a spherical soft k-means started from the
   text proxies. On an all-benign PH2 batch of 40 it sends about half the images to melanoma, and
   its final proxies carry no class geometry there (PH2 whole set: image_ot proxies at cosine
   1.0000, image-stage proxies at -1.0000), so they can be neither re-thresholded nor used as anchors.
2. **The plan's pull fades as 1/N** (rows sum to 1/N): synthetic 10 classes, 0.91 at 10k, 0.24 at 1M.

``auto`` keeps KPL's text stage (its retrieved text proxies ``W_t`` and posteriors
``softmax(X W_t / tau_t)``) and replaces the image_ot stage by a StatA-like transductive stage
(``anchored_stage``, run by ``kpl.peers.transclip.fit``, the peers' own loop):

- **Zero-shot term**: KPL's text posteriors (TransCLIP's ``y`` at temperature ``1 / tau_t`` with
  ``W_t`` as prototypes), so the retrieved descriptions, not a description mean, set the prior.
- **Class means anchored at KPL's text proxies**, ``mu_c = normalise(alpha t_c + sum_i z_ic x_i)``
  with ``alpha = ANCHOR_SHARE * N / C``: the anchor weighs as ``ANCHOR_SHARE`` of a balanced
  class's images, so its pull on a class, ``alpha / (alpha + mass_c)``, shrinks as the class gathers
  pseudo-label mass, and the same share of the batch is needed to escape it at any N (StatA's fixed
  alpha in images fades as N grows). A class that gathers little stays near its text proxy, which
  CLIP's modality gap keeps away from every image, so an absent class cannot capture images.
- **Class shares as an assignment prior**: the zero-shot term is shifted by the classes' current
  shares (``log y_ic + w log(C pi_c)``, Saerens et al. 2002's prior shift, pi from the previous
  round's assignments with one pseudo-image spread over the classes). ``w`` is the trust in the text
  posteriors (``text_trust``: their mean top posterior above chance, 0..1; PH2 ~0.3): a text
  classifier near chance says little about which classes the batch holds. An EM estimate of the
  shares from the text posteriors alone was measured first and dropped: on PH2, whose text stage
  calls 90 % of an all-melanoma batch nevus, it declares melanoma absent in every mix (50 % mean).
- **The Gaussian term weighs the evidence the batch holds**: ``log p / scale`` with
  ``scale = D / min(PR, m_min)`` (``likelihood_scale``, at least 1) instead of TransCLIP's fixed 50. A
  diagonal Gaussian sums D per-dimension terms as if each were independent evidence; the batch's
  spread fills only ``PR = tr(S)^2 / ||S||_F^2`` independent directions (S its covariance: the
  participation ratio, ``effective_dimensions``), and a class comparison is only as good as its
  worst-estimated mean, one fitted to ``m_min`` images: the least populated class's mass under the
  text posteriors (the stage's start) plus one pseudo-image spread over the classes. On PH2's CLIP
  ViT-B/16 features PR is ~12.5 of 512, so the scale is ~41 on the whole set (TransCLIP's 50 is this
  correction fixed for CLIP); on noisy isotropic clusters (bench_scale's 10 classes, PR ~450 of 512
  at 10k) it is ~1.1 and the Gaussian term separates clusters that the text stage mixes up, which 1/50
  could not (0.547 there with 1/50); on a batch where the text stage sees a class as nearly absent,
  m_min is small and the Gaussian term steps back, so it cannot split one class into several.
  Capping by N / C instead of m_min (measured first) let the Gaussian term split one-sided synthetic
  4-class batches (13 % of their images sent to absent classes, 10 % allowed by the tests).
- Neighbour term, shared variance, iterations: TransCLIP's (kpl.peers.transclip, its released
  settings), on the scalable kNN graph (kpl.peers.knn: exact below 200 000 images, an approximate
  index above), built once per batch and shared by every k. Memory and time O(N (k + C) + C D).

The image stage is the paper's (vision proxies fitted to the text posteriors), kept for reference;
``image_ot`` holds the anchored stage: predictions ``argmax S``, logits ``S`` (the assignments'
log-scores, centred), proxies the class means (D, C), and ``KPLResult.plan`` its soft assignments Z.

Measured (benchmarks/bench_batches.py --auto-k, README "Batches that are not balanced"; plain accuracy,
mean over mixes, 3 draws): PH2 ViT-B/16 batches of 40, melanoma share 0 .. 1: k auto 72.9 %, k 8 72.5 %
(paper's KPL 64.3, TransCLIP with descriptions 72.5, StatA with descriptions 75.1); batches of 256:
k auto 72.5 %, k 8 72.1 % (paper's KPL 66.3, TransCLIP and StatA with descriptions 71.4); whole PH2 set: balanced
accuracy 82.2 % with k auto, 80.0 % at k 8 (paper's KPL k 8: 81.6 %); synthetic one-sided binary batches of 40:
100 % (paper's KPL 60 %); 1-4 of 10 classes present, batches of 40: 41.5 % with k auto, 33.5 % at k 8 (text
stage 30.0 %); bench_scale's balanced 10-class features (D 512): 0.987 at 10k, 0.989 at 100k and 0.989 at
1M (k 8; k auto: 0.991 / 0.992 at 10k / 100k) against the paper's 0.909 / 0.918 / 0.240. At 1M the kNN graph
is most of the time (88 of 95 minutes on 2 cores: on these near-isotropic features it probes 250 of 1000
lists for a sampled recall of 0.936, below its 0.95 target, which ``KPLResult.prior["graph"]`` records).
With TransCLIP's fixed 1/50 instead of ``likelihood_scale`` the same runs gave 74.3 / 74.6 % on PH2 (k auto,
40 / 256), 81.2 % whole set, 40.2 % with 1-4 of 10 classes, and stayed near the text stage on bench_scale's
features (0.547 / 0.544).

The numbers below were measured with the fixed 1/50.
Anchors at KPL's vision proxies instead of its text proxies (PH2 batches of 40 / 256, k 8): 74.6 / 73.4
(image_ot proxies) and 77.1 / 76.1 (image-stage proxies) against 73.0 / 73.4, but those proxies are
degenerate on PH2 (cosine +-1.0000: no class direction between them), so what they anchor to is an
accident of the batch; the text anchor rests on a reason that holds for any CLIP (the modality gap).
``ANCHOR_SHARE``: 0.03 / 0.05 / 0.1 give 74.3 / 74.8 / 76.2 % over PH2 batches of 40 (k auto) and
81.2 / 78.8 / 73.4 % whole-set balanced accuracy; the smallest keeps the whole set within 2 points of
the paper. An anchor fixed in images (StatA's 2, no share prior) fell from 75.4 to 71.3 % between
batches of 40 and 256; 0.1 N / C, also without the share prior, held 75.4 / 75.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kpl.params import PRIORS, check_prior

# alpha = ANCHOR_SHARE * N / C: the text anchor weighs as this share of a balanced class's images
ANCHOR_SHARE = 0.03
# rows converted to float64 at a time for the covariance (a float64 copy of 1M x 512 features is 4 GB)
COVARIANCE_ROWS = 65536


def text_trust(logits: torch.Tensor, tau: float) -> float:
    """Trust in the text posteriors ``softmax(logits / tau)``, in [0, 1]: their mean top posterior above chance."""
    post = torch.softmax(logits.double() / tau, dim=1)
    c = post.shape[1]
    top = float(post.max(dim=1).values.mean())
    return max(0.0, min(1.0, (top - 1.0 / c) / (1.0 - 1.0 / c)))


def anchor_strength(n: int, c: int) -> float:
    """alpha, in images: ANCHOR_SHARE of a balanced class's N / C images."""
    return ANCHOR_SHARE * n / c


def effective_dimensions(x: torch.Tensor) -> float:
    """The batch's participation ratio ``tr(S)^2 / ||S||_F^2`` (S its covariance): how many independent
    directions its spread fills (D for isotropic noise; ~12 of 512 for PH2's CLIP features)."""
    n, d = x.shape
    mean = x.double().mean(dim=0, keepdim=True) if n <= COVARIANCE_ROWS else _chunked_mean(x)
    if n <= d:  # the (N, N) Gram matrix has S's nonzero spectrum and is the smaller one
        centred = x.double() - mean
        gram = centred @ centred.T
    else:  # the (D, D) scatter matrix, summed over row blocks: no float64 (N, D) copy
        gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for start in range(0, n, COVARIANCE_ROWS):
            block = x[start:start + COVARIANCE_ROWS].double() - mean
            gram += block.T @ block
    total = float(torch.trace(gram))
    return total * total / max(float((gram * gram).sum()), torch.finfo(torch.float64).tiny)


def _chunked_mean(x: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(1, x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], COVARIANCE_ROWS):
        total += x[start:start + COVARIANCE_ROWS].double().sum(dim=0, keepdim=True)
    return total / x.shape[0]


def likelihood_scale(x: torch.Tensor, text_posteriors: torch.Tensor, dimensions: float | None = None) -> float:
    """D / independent dimensions (>= 1). A diagonal Gaussian counts each of D dimensions as independent
    evidence; only min(effective dimensions, images behind the least populated class mean) are: the
    class comparison is only as good as the worst-estimated mean. That class's images are counted from
    ``text_posteriors`` (N, C), the stage's start, with one pseudo-image spread over the classes
    (kpl.peers.transclip.SHARE_SMOOTHING). ``dimensions``: ``effective_dimensions(x)`` when already known.
    """
    from kpl.peers.transclip import SHARE_SMOOTHING

    c = text_posteriors.shape[1]
    smallest = float(text_posteriors.double().sum(dim=0).min()) + SHARE_SMOOTHING / c
    independent = min(effective_dimensions(x) if dimensions is None else dimensions, smallest)
    return max(1.0, x.shape[1] / max(independent, 1.0))


def batch_graph(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph of the batch with TransCLIP's settings (kpl.peers.knn; one per batch, shared over k)."""
    from kpl.peers.transclip import TransCLIPParams, graph_for

    return graph_for(x, TransCLIPParams())


@dataclass
class AnchoredFit:
    """The anchored stage: (N, C) soft assignments Z and log-scores S, (C, D) unit class means, record."""

    assignments: torch.Tensor
    scores: torch.Tensor
    means: torch.Tensor
    record: dict[str, Any]


def anchored_stage(x: torch.Tensor, w_text: torch.Tensor, tau_t: float, *,
                   graph: tuple[np.ndarray, np.ndarray] | None = None, dimensions: float | None = None) -> AnchoredFit:
    """StatA-like stage on KPL's text stage: zero-shot ``softmax(X W_t / tau_t)``, means anchored at ``W_t``.

    ``x`` (N, D) float32 unit rows, ``w_text`` (D, C) KPL's text proxies; ``graph`` from ``batch_graph``
    (built here when None), ``dimensions`` ``effective_dimensions(x)`` (computed here when None): both
    depend on the images only, so k="auto" computes them once. The record holds the graph's
    ``GraphInfo`` (method, lists probed, sampled recall) under "graph" when the graph carries one.
    See the module doc.
    """
    from kpl.peers.transclip import TransCLIPParams, fit_state

    n, c = x.shape[0], w_text.shape[1]
    prototypes = w_text.T.contiguous()
    strength = anchor_strength(n, c)
    trust = text_trust(x @ w_text, tau_t)
    scale = likelihood_scale(x, torch.softmax((x @ w_text).double() / tau_t, dim=1), dimensions)
    # KPL's text posteriors are softmax(X W_t / tau_t): TransCLIP's zero-shot term at temperature 1 / tau_t
    graph = graph if graph is not None else batch_graph(x)
    state = fit_state(x, prototypes, TransCLIPParams(temperature=1.0 / tau_t, scale=scale), graph,
                      anchors=prototypes, strength=strength, share_weight=trust)
    shares = state.assignments.double().mean(dim=0)
    record = {"mode": "auto", "stage": "anchored", "anchor_share": ANCHOR_SHARE, "anchor_images": round(strength, 6),
              "text_trust": round(trust, 6), "likelihood_scale": round(scale, 6), "shares": [round(float(v), 6) for v in shares]}
    info = getattr(graph, "info", None)  # a kpl.peers.knn.KnnGraph says how it was built; a plain pair does not
    if info is not None:  # an approximate graph's recall (and whether it met its target) travels to metrics.json
        record["graph"] = info.to_json()
    return AnchoredFit(state.assignments, state.scores, state.means, record)


__all__ = ["ANCHOR_SHARE", "PRIORS", "AnchoredFit", "anchor_strength", "anchored_stage", "batch_graph",
           "check_prior", "effective_dimensions", "likelihood_scale", "text_trust"]
