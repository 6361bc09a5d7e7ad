"""Helpers the commands share: opening the store, loading CLIP, printing to the right stream."""

from __future__ import annotations

import json
import sys
from typing import Any

from kbuild.descriptions import visible
from kbuild.store import SnapshotStore


def open_store(store: str | None, chroma_url: str | None) -> SnapshotStore:
    return SnapshotStore.open(store, chroma_url)


def load_embedder(store: SnapshotStore, model: str | None, pretrained: str | None):
    """The CLIP text embedder named by the flags/environment, with the store's embedding cache."""
    from kbuild.clip.choice import choose_model
    from kbuild.clip.models import load_clip
    from kbuild.clip.text import TextEmbedder, cache_path

    choice = choose_model(model, pretrained)  # flag > environment > default (a new snapshot has no model yet)
    clip = load_clip(choice.model, choice.pretrained)
    return TextEmbedder(clip, cache_path(store.home))



def info(message: str) -> None:
    """Diagnostics and progress go to stderr so stdout stays data."""
    print(visible(message), file=sys.stderr, flush=True)


def print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False, default=str))
