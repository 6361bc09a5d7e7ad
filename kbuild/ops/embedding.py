"""The CLIP text embedder of kbuild's writing commands, loaded by the ops themselves.

Callers (the CLI, a notebook) pass only what was asked for, a ``ModelRequest``; each op loads the
model where it first needs vectors, after its files parsed and its ``--name`` was checked, so a bad
file or a taken name costs no model load.
"""

from __future__ import annotations

from kbuild.clip.choice import ModelRequest
from kbuild.clip.text import TextEmbedder, cache_path, snapshot_embedder
from kbuild.store import SnapshotStore


def new_snapshot_embedder(store: SnapshotStore, model: ModelRequest) -> TextEmbedder:
    """For a new snapshot (load, generate): flag > environment > default, cached in the store."""
    from kbuild.clip.models import load_clip

    choice = model.choose()  # a new snapshot has no model of its own yet
    return TextEmbedder(load_clip(choice.model, choice.pretrained), cache_path(store.home))


def parent_embedder(store: SnapshotStore, model: ModelRequest, clip: dict) -> TextEmbedder:
    """For new vectors beside an existing snapshot's (merge): flag > environment > that snapshot's
    own model (``clip``, its manifest section); refused when it has none (imported vectors)."""
    return snapshot_embedder(store.home, clip, model.model, model.pretrained)
