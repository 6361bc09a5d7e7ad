"""What a snapshot says about itself: parents, operation and parameters, CLIP model and template,
counts per class, kbuild version, time, and the algorithm-tagged content hash of its (class, text) pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from kbuild import __version__
from kbuild.descriptions import Description, content_hash
from kbuild.errors import KbuildError
from kbuild.store.records import RemovedRecord


class Parent(Protocol):
    """What a manifest records of a parent snapshot (a ``SnapshotInfo``; snapshots imports this module)."""

    @property
    def name(self) -> str: ...

    @property
    def content_hash(self) -> str: ...

MANIFEST_VERSION = 1


@dataclass
class SnapshotDraft:
    """Everything a write operation hands to ``SnapshotStore.publish``.

    ``embeddings`` (M, D) float32 unit rows align with ``descriptions``; ``removed_embeddings``
    (R, D) with ``removed``. ``clip`` = {model, pretrained, model_id, template}.
    """

    descriptions: list[Description]
    embeddings: np.ndarray
    operation: str
    parameters: dict[str, Any]
    clip: dict[str, Any]
    parents: list[str] = field(default_factory=list)
    removed: list[RemovedRecord] = field(default_factory=list)
    removed_embeddings: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    display_names: dict[str, str] = field(default_factory=dict)  # class key -> the name CLIP and people see
    # How the texts were made (kbuild.ops.provenance): prompt, LLM and call summary; source files and their
    # sha256; or the original snapshot and lineage of an imported bundle. Empty for prune/merge/review.
    provenance: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> list[str]:
        """Check the draft; returns its descriptions' ids (the store writes them: computed once)."""
        if not self.descriptions:
            raise KbuildError(f"Nothing to write: the {self.operation} produced no descriptions")
        ids = [d.id for d in self.descriptions]
        if len(set(ids)) != len(ids):
            raise KbuildError(f"{self.operation}: duplicate descriptions reached the store (a kbuild bug; please report it)")
        _check_matrix(self.embeddings, len(self.descriptions), "embeddings")
        if self.removed:
            _check_matrix(self.removed_embeddings, len(self.removed), "removed_embeddings")
        return ids


def _check_matrix(matrix: np.ndarray | None, rows: int, what: str) -> None:
    """An internal assertion on what an operation is about to publish, not an input policy: vectors
    from files were already checked by ``kbuild.inputs.unit_rows``, the others come from an encoder."""
    if matrix is None or matrix.ndim != 2 or matrix.shape[0] != rows:
        shape = None if matrix is None else matrix.shape
        raise KbuildError(f"internal: {what} shape {shape} does not match {rows} descriptions")
    if not np.isfinite(matrix).all():
        raise KbuildError(f"internal: {what} contain NaN or infinite values; nothing was written")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def build_manifest(draft: SnapshotDraft, parents: Sequence[Parent]) -> dict[str, Any]:
    counts = Counter(d.class_name for d in draft.descriptions)
    removed_by_stage = Counter(r.stage for r in draft.removed)
    return {
        "manifest_version": MANIFEST_VERSION,
        "operation": draft.operation,
        "parameters": _jsonable(draft.parameters),
        "parents": [{"name": p.name, "content_hash": p.content_hash} for p in parents],
        "clip": draft.clip,
        "counts": dict(sorted(counts.items())),
        "classes": len(counts),
        "total": len(draft.descriptions),
        "removed_total": len(draft.removed),
        "removed_by_stage": dict(sorted(removed_by_stage.items())),
        "embedding_dim": int(draft.embeddings.shape[1]),
        "kbuild_version": __version__,
        "created": now_iso(),
        "content_hash": content_hash((d.class_name, d.text) for d in draft.descriptions),
        "display_names": {k: v for k, v in sorted(draft.display_names.items()) if k in counts and v != k},
        "extra": _jsonable(draft.extra),
        **({"provenance": _jsonable(draft.provenance)} if draft.provenance else {}),
    }


def display_names(manifest: dict[str, Any]) -> dict[str, str]:
    """class key -> display name recorded in a manifest (only classes whose display differs)."""
    return dict(manifest.get("display_names") or {})


def display_name(manifest: dict[str, Any], class_name: str) -> str:
    """The name CLIP and reports use for ``class_name``: its display name, or the key itself."""
    name: str = (manifest.get("display_names") or {}).get(class_name, class_name)
    return name


def _jsonable(value: Any) -> Any:
    """Parameters as plain JSON values (paths to str, NaN to None) so the manifest always serialises."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
