"""Snapshots that leave their store: lineage, a digest of the vectors, and publishing a snapshot exactly.

The content hash covers the (class, text) pairs only; a bundle or a copy also carries vectors, so
``vectors_digest`` hashes the float32 bytes of every stored vector in row order (kept rows, then
removed ones): a vector changed on the way shows up as a mismatch, not as silently different scores.

``publish_exact`` is the arrival side of ``kbuild copy``: the snapshot keeps its name and its manifest
byte for byte (parents, created time, content hash), goes into a pending collection like every write,
is read back and checked there (content hash and vector digest), and only then is renamed to its
name. A killed or failed copy leaves at most a pending collection, which no reader lists.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from kbuild.descriptions import content_hash
from kbuild.errors import KbuildError
from kbuild.store.manifest import SnapshotDraft
from kbuild.store.records import REMOVED
from kbuild.store.snapshots import KnowledgeBase, SnapshotInfo, SnapshotStore, _server_faults

LINEAGE_FIELDS = ("operation", "created", "content_hash", "parameters", "provenance", "kbuild_version")


def vectors_digest(kept: np.ndarray, removed: np.ndarray | None = None) -> str:
    """``sha256:<hex>`` of the float32 little-endian bytes of ``kept`` (M, D) then ``removed`` (R, D)."""
    digest = hashlib.sha256()
    for matrix in (kept, removed):
        if matrix is not None and matrix.size:
            digest.update(np.ascontiguousarray(matrix, dtype="<f4").data)  # the buffer itself: no copy
    return f"sha256:{digest.hexdigest()}"


def kb_digest(kb: KnowledgeBase) -> str:
    return vectors_digest(kb.embeddings, kb.removed_embeddings)


def lineage(store: SnapshotStore, info: SnapshotInfo) -> list[dict[str, Any]]:
    """``info``'s ancestors, nearest first: what each one did and how it was made.

    A parent that is not in this store any more (removed, or copied without it) is listed by the
    name and hash its child recorded, marked ``missing``."""
    by_name = {s.name: s for s in store.list()}
    out, seen = [], {info.name}
    queue = list(info.manifest.get("parents", []))
    while queue:
        parent = queue.pop(0)
        name = parent.get("name", "")
        if name in seen:
            continue
        seen.add(name)
        found = by_name.get(name)
        if found is None or found.content_hash != parent.get("content_hash"):
            out.append({"name": name, "content_hash": parent.get("content_hash"), "missing": True})
            continue
        m = found.manifest
        out.append({"name": name, "model_id": (m.get("clip") or {}).get("model_id"),
                    "parents": [p.get("name") for p in m.get("parents", [])],
                    **{key: m[key] for key in LINEAGE_FIELDS if key in m}})
        queue.extend(m.get("parents", []))
    return out


def draft_of(kb: KnowledgeBase, operation: str, parameters: dict[str, Any],
             provenance: dict[str, Any] | None = None) -> SnapshotDraft:
    """A draft that writes ``kb``'s records (kept and removed, with their vectors) as they are."""
    m = kb.info.manifest
    return SnapshotDraft(kb.descriptions, kb.embeddings, operation, parameters, clip=dict(m.get("clip") or {}),
                         removed=list(kb.removed), removed_embeddings=kb.removed_embeddings,
                         extra=dict(m.get("extra") or {}), display_names=dict(m.get("display_names") or {}),
                         provenance=provenance or {})


def taken_names(store: SnapshotStore) -> set[str]:
    """Names a snapshot may not take here: published ones and removed ones (their numbers stay used)."""
    return {s.name for s in store.list()} | set(store._removed_names())


@_server_faults
def publish_exact(store: SnapshotStore, kb: KnowledgeBase) -> SnapshotInfo:
    """Publish ``kb`` under its own name with its own manifest, checked on arrival (see module doc)."""
    name, manifest = kb.info.name, kb.info.manifest
    expected = kb_digest(kb)
    with store._lock():
        if name in taken_names(store):
            raise KbuildError(f"Snapshot '{name}' already exists in {store.location} (or was removed there); "
                              "nothing was copied")
        draft = draft_of(kb, manifest.get("operation", ""), {})
        pending = store._write_pending(draft, manifest)
        try:
            _check_arrival(store, pending.name, kb.info, expected)
            _rename(store, pending, name, manifest)
        except BaseException:
            store._drop_pending(pending.name)
            raise
    return SnapshotInfo(name, manifest)


def _rename(store: SnapshotStore, pending: Any, name: str, manifest: dict[str, Any]) -> None:
    try:
        pending.modify(name=name, metadata={"kbuild_kind": "snapshot",
                                            "kbuild_manifest": json.dumps(manifest, ensure_ascii=False)})
    except Exception as exc:
        if store._exists(name):  # a concurrent writer (on a server) took the name first
            raise KbuildError(f"Snapshot '{name}' appeared in {store.location} during the copy; nothing was "
                              "published for it (run the copy again: it skips what is already there)") from exc
        raise


def _check_arrival(store: SnapshotStore, pending_name: str, info: SnapshotInfo, expected_digest: str) -> None:
    """Read the pending collection back: the same content hash and vector digest, or nothing is published."""
    rows: list[tuple[dict[str, Any], str, Any]] = []
    for page in store._pages(pending_name, ["documents", "metadatas", "embeddings"]):
        rows.extend(zip(page["metadatas"], page["documents"], page["embeddings"]))
    rows.sort(key=lambda row: row[0]["i"])
    kept = [r for r in rows if r[0].get("state") != REMOVED]
    gone = [r for r in rows if r[0].get("state") == REMOVED]
    arrived = content_hash((r[0]["class"], r[1]) for r in kept)
    kept_m = np.asarray([r[2] for r in kept], dtype=np.float32)
    gone_m = np.asarray([r[2] for r in gone], dtype=np.float32) if gone else None
    digest = vectors_digest(kept_m, gone_m)
    if arrived != info.content_hash or digest != expected_digest:
        what = "content hash" if arrived != info.content_hash else "vectors"
        raise KbuildError(f"{info.name} arrived in {store.location} with different {what} than it left with; "
                          "nothing was published there, run the copy again")
