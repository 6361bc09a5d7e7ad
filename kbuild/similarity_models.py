"""Optional sentence-transformers model for prune's paraphrase detection (``--similarity-model``).

Accepts a local folder or a hub id; on a machine without network only local folders (or models
already in the cache) load, and the error says so instead of waiting on the hub.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import KbuildError


def sentence_embedder(name: str) -> Callable[[list[str]], np.ndarray]:
    """``embed(texts) -> (len(texts), D)`` unit rows from a sentence-transformers model."""
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(name, device="cpu")
    except Exception as exc:
        raise KbuildError(f"Could not load the similarity model '{name}': {str(exc).splitlines()[0][:160]} "
                          "(pass a local folder, or leave --similarity-model out to use the snapshot's CLIP)") from exc

    def embed(texts: list[str]) -> np.ndarray:
        vectors = model.encode(list(texts), batch_size=128, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    return embed
