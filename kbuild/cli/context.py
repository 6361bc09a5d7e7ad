"""Helpers the commands share: opening the store, printing to the right stream."""

from __future__ import annotations

import json
import sys
from typing import Any

from kbuild.descriptions import visible
from kbuild.store import SnapshotStore


def open_store(store: str | None, chroma_url: str | None) -> SnapshotStore:
    return SnapshotStore.open(store, chroma_url)


def info(message: str) -> None:
    """Diagnostics and progress go to stderr so stdout stays data."""
    print(visible(message), file=sys.stderr, flush=True)


def print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False, default=str))
