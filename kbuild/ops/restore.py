"""``kbuild load kb.parquet``: a bundle back into a store, exactly as it was exported.

The texts, classes, display names, removed records (with reason and partner) and vectors are
written as they are, with the exported snapshot's CLIP record, so the new snapshot has the same
content hash and ``kpl eval`` uses the same vectors. No encoder is loaded. The snapshot gets a new
name in this store (its number belongs to this store's numbering); where it came from, with its
whole lineage, is kept as its provenance. Every check runs before the write, and the write is the
store's atomic publish, so a bad file publishes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbuild.errors import UsageError
from kbuild.ops import provenance
from kbuild.ops.unchanged import repeated_run
from kbuild.store import SnapshotInfo, SnapshotStore
from kbuild.store.bundle import Bundle, is_bundle, read_bundle
from kbuild.store.transfer import draft_of

__all__ = ["BundleImport", "is_bundle", "restore_bundle"]


@dataclass
class BundleImport:
    """What a bundle held: the exported snapshot, its size, and the file's hash."""

    bundle: Bundle

    def to_json(self) -> dict[str, Any]:
        kb = self.bundle.kb
        return {"path": self.bundle.path, "format": "parquet", "sha256": self.bundle.sha256,
                "from_snapshot": kb.info.name, "content_hash": kb.info.content_hash,
                "model_id": (kb.info.manifest.get("clip") or {}).get("model_id"),
                "kept_count": len(kb.descriptions), "removed_count": len(kb.removed),
                "lineage": len(self.bundle.lineage), "normalised_rows": self.bundle.normalised_rows}

    def summary_lines(self) -> list[str]:
        kb = self.bundle.kb
        model = (kb.info.manifest.get("clip") or {}).get("model_id")
        name, normalised = Path(self.bundle.path).name, self.bundle.normalised_rows
        notes = [f"{name}: {normalised} rows were not unit length and were normalised"] if normalised else []
        return [f"{name}: {kb.info.name} with {len(kb.descriptions)} descriptions "
                f"({len(kb.removed)} removed) and their {kb.embeddings.shape[1]}-d vectors ({model}); "
                "hashes checked, no CLIP model loaded"] + notes


def restore_bundle(store: SnapshotStore, paths: list[Path], name: str | None,
                   force: bool) -> tuple[SnapshotInfo, BundleImport, bool]:
    """(the snapshot, what was imported, unchanged): ``unchanged`` when an earlier load of the same
    content, embedded the same way, already holds it (nothing published unless ``force``)."""
    if len(paths) != 1:
        raise UsageError("Load a Parquet bundle on its own, not with other files "
                         "(load each separately, then combine them with 'kbuild merge')")
    bundle = read_bundle(paths[0])
    kb, imported = bundle.kb, BundleImport(bundle)
    clip, displays = dict(kb.info.manifest.get("clip") or {}), dict(kb.info.manifest.get("display_names") or {})
    existing = None if force else repeated_run(store, "load", kb.descriptions, clip, displays)
    if existing is not None:
        return existing, imported, True
    parameters = {"files": [Path(paths[0]).name], "format": "parquet", "from_snapshot": kb.info.name}
    draft = draft_of(kb, "load", parameters, provenance.from_bundle(bundle))
    return store.publish(draft, name=name), imported, False
