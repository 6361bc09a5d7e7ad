"""Text embedding of descriptions through a CLIP model and the persistent cache.

Snapshots store embeddings of the *templated* text (``template.format(class, description)``), the
input KPL retrieves from; pruning compares descriptions on their bare text (template ``"{}"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence, overload

import numpy as np

from kbuild import settings
from kbuild.clip.cache import TextEmbeddingCache
from kbuild.descriptions import DEFAULT_TEMPLATE, NAME_TEMPLATE, Description  # noqa: F401 (kpl reads them here)
from kbuild.errors import UsageError
from kbuild.progress import task

BARE_TEMPLATE = "{}"
PROGRESS_CHUNK = 1024  # texts encoded between two progress reports


def check_template(template: str) -> str:
    """A description template has exactly two ``{}`` slots: class name, then description."""
    if template.count("{}") != 2:
        raise UsageError(f"Template {template!r} must contain two {{}} slots: class name, then description")
    return template


class TextEmbedder:
    """Encodes texts with one CLIP model, never encoding the same (model, template, text) twice."""

    def __init__(self, clip, cache_path: Path | None):
        self.clip = clip
        self.cache = TextEmbeddingCache(cache_path)

    @property
    def model_id(self) -> str:
        return self.clip.model_id

    def embed_texts(self, texts: Sequence[str], template_key: str = BARE_TEMPLATE) -> np.ndarray:
        """(len(texts), D) unit rows for already-rendered texts; ``template_key`` names how they were rendered."""
        if not texts:
            return np.zeros((0, self.clip.dim), dtype=np.float32)
        return self.cache.embed(self.model_id, template_key, list(texts), self._encode)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """The cache misses, encoded in chunks so a long run reports its progress."""
        chunks = []
        with task("embedding texts", len(texts)) as progress:
            for start in range(0, len(texts), PROGRESS_CHUNK):
                chunks.append(self.clip.encode_texts(texts[start:start + PROGRESS_CHUNK]))
                progress.advance(len(chunks[-1]))
        return np.concatenate(chunks)

    def embed_descriptions(self, descriptions: Sequence[Description], template: str,
                           display_names: dict[str, str] | None = None) -> np.ndarray:
        """(M, D) embeddings of ``template.format(name, text)`` for each description, where name is
        the class's display name (``display_names``, e.g. ``mel -> melanoma``) or else its key."""
        check_template(template)
        names = display_names or {}
        rendered = [template.format(names.get(d.class_name, d.class_name), d.text) for d in descriptions]
        return self.embed_texts(rendered, template)

    def embed_class_names(self, class_names: Sequence[str], template: str = NAME_TEMPLATE) -> np.ndarray:
        """(C, D) class-name prompt embeddings (the ``clip`` baseline, prune's margin reference)."""
        rendered = [template.format(name) for name in class_names]
        return self.embed_texts(rendered, template)


def cache_path(home: Path) -> Path:
    """Where a store keeps its text-embedding cache."""
    return home / "cache" / "text_embeddings.sqlite"


@overload
def snapshot_embedder(home: Path, clip: dict[str, Any], model: str | None = None, pretrained: str | None = None,
                      required: Literal[True] = True) -> TextEmbedder: ...


@overload
def snapshot_embedder(home: Path, clip: dict[str, Any], model: str | None = None, pretrained: str | None = None,
                      *, required: bool) -> TextEmbedder | None: ...


def snapshot_embedder(home: Path, clip: dict[str, Any], model: str | None = None, pretrained: str | None = None,
                      required: bool = True) -> TextEmbedder | None:
    """An embedder for work on an existing snapshot: the snapshot's own CLIP model (``clip`` from its
    manifest) unless a flag or the environment names another. The model loads only when a text
    must be encoded (``LazyClip``). A snapshot of imported vectors names no model: that is an error
    when ``required``, else None (the caller works on the stored vectors alone)."""
    from kbuild.clip.models import LazyClip

    chosen = settings.clip_override(model, pretrained) or (clip.get("model"), clip.get("pretrained"))
    if not chosen[0]:
        if not required:
            return None
        raise UsageError(f"This snapshot holds imported embeddings ({clip.get('model_id')}) and names no CLIP "
                         "model to embed new texts with: pass --model (and --pretrained) for that space")
    return TextEmbedder(LazyClip(*chosen), cache_path(home))


def templated_embeddings(embedder: TextEmbedder | None, parent_vectors: dict[str, np.ndarray],
                         descriptions: Sequence[Description], template: str, reuse: bool,
                         display_names: dict[str, str] | None = None) -> np.ndarray:
    """(M, D) templated embeddings for a child snapshot, taking the parent's vector (by description
    id) wherever the description is unchanged and ``reuse`` says the parent shares the model.

    Only the other descriptions go to ``embedder`` (whose model loads then, not before); with no
    embedder (imported vectors, no model named) every description must have a parent vector."""
    missing = [d for d in descriptions if not reuse or d.id not in parent_vectors]
    if missing and embedder is None:
        raise UsageError(f"{len(missing)} texts need a new vector (first: {missing[0].text[:60]!r}) and this "
                         "snapshot's imported embeddings name no model to encode them with: pass --model "
                         "(and --pretrained) for that space")
    if not descriptions:
        if parent_vectors:
            dim = next(iter(parent_vectors.values())).shape[0]
        elif embedder is not None:
            dim = embedder.clip.dim
        else:
            raise UsageError("this snapshot has no vectors and its imported embeddings name no model to size "
                             "them with: pass --model (and --pretrained) for that space")
        return np.zeros((0, dim), dtype=np.float32)
    fresh: dict[str, np.ndarray] = {}
    if missing and embedder is not None:  # (missing with no embedder was refused above)
        fresh = dict(zip((d.id for d in missing), embedder.embed_descriptions(missing, template, display_names)))
    return np.stack([fresh[d.id] if d.id in fresh else parent_vectors[d.id] for d in descriptions]).astype(np.float32)
