"""Planted classification problems with known structure, for benchmarks, tests and sanity checks.

``synthetic_case(kind, seed)`` returns unit image features X (N, D), labels (N,) and C per-class
(M_c, D) description embeddings, built like CLIP features: every vector shares a common
direction (CLIP's "modality gap" makes all images alike), a class direction of strength
``separation``, and noise. Descriptions of a class are ranked from informative (close to the
class direction) to nearly generic, like a knowledge base whose weaker texts say little.

Kinds: ``well`` (separated), ``overlap`` (classes close), ``imbalanced`` (binary, 4:1),
``many`` (40 classes).
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


__all__ = ["KINDS", "synthetic_case"]
