"""The snapshot store: immutable, versioned knowledge bases in ChromaDB (embedded or server)."""

from pathlib import Path

from kbuild import settings
from kbuild.store.names import resolve_auto_name, validate_snapshot_name, validate_tag_name
from kbuild.store.records import RemovedRecord
from kbuild.store.snapshots import KnowledgeBase, SnapshotInfo, SnapshotStore

__all__ = [
    "KnowledgeBase", "RemovedRecord", "SnapshotInfo", "SnapshotStore",
    "feature_cache_dir", "home_folder", "resolve_auto_name", "validate_snapshot_name", "validate_tag_name",
]


def home_folder(store: str | None = None) -> Path:
    """The local home of a store's caches (--store > KBUILD_STORE > ./kb_snapshots), even when no store is open."""
    return settings.store_path(store)


def feature_cache_dir(store: str | None = None) -> Path:
    """Where kpl keeps encoded image features for this store: KPL_CACHE_DIR, else <store>/cache/features
    (everything kept lives under the store's home)."""
    return settings.kpl_feature_cache(None, store)
