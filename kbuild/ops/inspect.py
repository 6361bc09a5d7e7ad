"""Read-side operations on one snapshot: show, export and verify."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kbuild.descriptions import content_hash, description_id, visible
from kbuild.errors import UsageError
from kbuild.store import KnowledgeBase

EXPORT_FORMATS = ("json", "csv", "dclip")


def export_text(kb: KnowledgeBase, fmt: str, lineage: list | None = None, terminal: bool = False) -> str:
    """The snapshot's kept descriptions as ``json`` (with provenance and the ``lineage`` of its
    ancestors, see ``kbuild.store.transfer.lineage``), ``csv`` or ``dclip`` ({class: [text]}).

    ``terminal``: the text goes to a terminal, so control characters in CSV fields are written out as
    escapes (``ESC`` -> ``\\x1b``) like JSON's ``\\u001b``: an imported text cannot clear the screen or
    plant an OSC-8 link. Files and pipes get the data unchanged."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"Unknown export format '{fmt}'. Available: {', '.join(EXPORT_FORMATS)}")
    if fmt == "dclip":
        grouped: dict[str, list[str]] = {}
        for d in kb.descriptions:
            grouped.setdefault(d.class_name, []).append(d.text)
        return json.dumps(grouped, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["class", "text", "source", "id"])
        shown = visible if terminal else str
        for d in kb.descriptions:
            writer.writerow([shown(d.class_name), shown(d.text), shown(d.source), d.id])
        return buffer.getvalue()
    payload = {"snapshot": kb.info.name, "manifest": kb.info.manifest, "lineage": lineage or [],
               "descriptions": [d.to_json() for d in kb.descriptions],
               "removed": [r.to_json() for r in kb.removed]}
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


@dataclass
class VerifyResult:
    name: str
    content_hash: str
    recomputed: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.name, "ok": self.ok, "content_hash": self.content_hash,
                "recomputed": self.recomputed, "problems": self.problems}


def verify(kb: KnowledgeBase) -> VerifyResult:
    """Recompute the content hash and check counts, dimensions and vectors against the manifest."""
    manifest = kb.info.manifest
    recomputed = content_hash((d.class_name, d.text) for d in kb.descriptions)
    result = VerifyResult(kb.info.name, manifest.get("content_hash", ""), recomputed)
    if recomputed != result.content_hash:
        result.problems.append(f"content hash mismatch: manifest {result.content_hash}, recomputed {recomputed}")
    if len(kb.descriptions) != manifest.get("total"):
        result.problems.append(f"{len(kb.descriptions)} descriptions stored, manifest says {manifest.get('total')}")
    if len(kb.removed) != manifest.get("removed_total", 0):
        result.problems.append(f"{len(kb.removed)} removed records, manifest says {manifest.get('removed_total')}")
    counts: dict[str, int] = {}
    for d in kb.descriptions:
        counts[d.class_name] = counts.get(d.class_name, 0) + 1
    if counts != manifest.get("counts"):
        result.problems.append("per-class counts differ from the manifest")
    result.problems.extend(_vector_problems(kb))
    return result


def _vector_problems(kb: KnowledgeBase) -> list[str]:
    problems = []
    emb = kb.embeddings
    if emb.shape != (len(kb.descriptions), kb.info.manifest.get("embedding_dim")):
        problems.append(f"embeddings have shape {emb.shape}")
    elif not np.isfinite(emb).all():
        problems.append("embeddings contain NaN or infinite values")
    elif emb.size and np.abs(np.linalg.norm(emb, axis=1) - 1).max() > 1e-3:
        problems.append("embeddings are not unit vectors")
    if len({description_id(d.class_name, d.text) for d in kb.descriptions}) != len(kb.descriptions):
        problems.append("duplicate descriptions")
    return problems


@dataclass
class RemoveResult:
    name: str
    tags: list[str]
    children: list[str]
    freed_bytes: int | None  # measured on the store folder (embedded stores only)

    def to_json(self) -> dict[str, Any]:
        return {"removed": self.name, "tags_removed": self.tags, "orphaned_children": self.children,
                "freed_bytes": self.freed_bytes}


def remove_snapshot(store, reference: str, force: bool = False) -> RemoveResult:
    """``kbuild rm``: delete one snapshot (tagged or with children only with ``force``)."""
    before = _folder_bytes(store)
    info, tags, children = store.remove(reference, force)
    store.compact()
    after = _folder_bytes(store)
    freed = None if before is None or after is None else max(before - after, 0)
    return RemoveResult(info.name, tags, children, freed)


def _folder_bytes(store) -> int | None:
    if store.mode != "embedded":
        return None
    root = store.home / "chroma"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else None
