"""Planted classification problems with known structure, for benchmarks, tests and sanity checks.

``synthetic_case(kind, seed)`` returns unit image features X (N, D), labels (N,) and C per-class
(M_c, D) description embeddings, built like CLIP features: every vector shares a common
direction (CLIP's "modality gap" makes all images alike), a class direction of strength
``separation``, and noise. Descriptions of a class are ranked from informative (close to the
class direction) to nearly generic, like a knowledge base whose weaker texts say little.

Kinds: ``well`` (separated), ``overlap`` (classes close), ``imbalanced`` (binary, 4:1),
``many`` (40 classes).

``clip_like_features(n)`` draws image features at any size (a million in float32 chunks) whose
geometry follows real CLIP image features rather than isotropic noise: a common direction, and
around it a Gaussian spread whose variances fall off as a power law over the dimensions. Fitted to
the 200 real PH2 ViT-B/16 features: mean length 0.92, spread (total variance) 0.15, variances
decaying as i^-1 over the leading dimensions (tests/test_kpl_knn.py compares the two). Neighbour
search on these is harder than on the real features (nearest neighbours sit a little farther away)
and far easier than on isotropic noise, which has no low-dimensional structure at all.
"""

from __future__ import annotations

import numpy as np

from kpl.errors import UsageError

# kind: (classes, dim, images per class, class separation, descriptions per class)
KINDS = {
    "well": (4, 64, [150] * 4, 0.9, 20),
    "overlap": (4, 64, [150] * 4, 0.35, 20),
    "imbalanced": (2, 64, [400, 100], 0.5, 20),
    "many": (40, 128, [30] * 40, 0.6, 15),
}


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def synthetic_case(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(X (N, D) float32, labels (N,) int64, [E_c (M, D) float32]) of the named kind."""
    if kind not in KINDS:
        raise UsageError(f"Unknown synthetic case {kind!r}. Available: {', '.join(KINDS)}")
    c, d, counts, separation, m = KINDS[kind]
    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(c, d)))
    shared = _unit(rng.normal(size=d))
    images, labels = [], []
    for cls, n in enumerate(counts):
        noise = rng.normal(size=(n, d)) / np.sqrt(d)
        images.append(_unit(separation * centers[cls] + 0.8 * shared + noise))
        labels += [cls] * n
    classes = []
    for cls in range(c):
        relevance = np.sort(rng.uniform(0, 1, size=m))[::-1] ** 2  # a few informative, many weak
        generic = rng.uniform(0.5, 1.5, size=m)
        noise = rng.normal(size=(m, d)) / np.sqrt(d) * 0.7
        classes.append(_unit(relevance[:, None] * centers[cls] + generic[:, None] * shared + noise).astype(np.float32))
    return np.vstack(images).astype(np.float32), np.asarray(labels, dtype=np.int64), classes


# clip_like_features: fitted to the 200 real PH2 CLIP ViT-B/16 image features (see the module doc)
CLIP_COMMON = 0.92  # length of the features' mean
CLIP_SPREAD = 0.15  # total variance around it
CLIP_DECAY = 1.0  # variance of the i-th direction ~ i^-decay
CLIP_CLASS_SHARE = 0.3  # share of the spread that separates the classes
CLIP_PROTOTYPE_NOISE = 0.8  # class prototypes: class mean + this much of one image's spread
CHUNK = 65536


def clip_like_features(n: int, d: int = 512, classes: int = 10, seed: int = 0,
                       decay: float = CLIP_DECAY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X (n, d) float32 unit rows, labels (n,), prototypes (classes, d) float32 unit rows).

    Drawn in chunks of 65 536 rows, so n = 1 000 000 at d 512 costs the 2 GB of X and little more.
    The prototypes stand in for class-name text embeddings: noisy class means.
    """
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))  # random orientation of the spread
    variances = np.arange(1, d + 1, dtype=np.float64) ** -decay
    variances *= CLIP_SPREAD / variances.sum()
    spread = (basis * np.sqrt(variances)).astype(np.float32)  # x = common + spread @ z, z ~ N(0, I)
    common = (_unit(rng.normal(size=d)) * CLIP_COMMON).astype(np.float32)
    within = np.float32(np.sqrt(1 - CLIP_CLASS_SHARE))
    between = np.float32(np.sqrt(CLIP_CLASS_SHARE))
    centers = rng.standard_normal((classes, d), dtype=np.float32) @ spread.T * between
    labels = rng.integers(0, classes, size=n)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        block = rng.standard_normal((stop - start, d), dtype=np.float32) @ spread.T
        block *= within
        block += centers[labels[start:stop]]
        block += common
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
    noise = rng.standard_normal((classes, d), dtype=np.float32) @ spread.T * np.float32(CLIP_PROTOTYPE_NOISE)
    prototypes = _unit(common + centers + noise).astype(np.float32)
    return x, labels, prototypes


__all__ = ["KINDS", "clip_like_features", "synthetic_case"]
