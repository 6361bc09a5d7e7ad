"""The snapshot store: immutable, versioned knowledge bases in ChromaDB (embedded or server)."""

from kbuild.store.names import resolve_auto_name, validate_snapshot_name, validate_tag_name
from kbuild.store.snapshots import KnowledgeBase, RemovedRecord, SnapshotInfo, SnapshotStore

__all__ = [
    "KnowledgeBase", "RemovedRecord", "SnapshotInfo", "SnapshotStore",
    "resolve_auto_name", "validate_snapshot_name", "validate_tag_name",
]
