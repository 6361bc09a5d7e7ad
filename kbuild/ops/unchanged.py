"""A write whose result equals what it starts from publishes nothing unless forced.

A prune that removes nothing has its parent's content; a rerun of ``load`` or ``generate`` that
changes nothing has the content of a snapshot an earlier run of the same command wrote, and so does
a prune of the same parent that keeps what an earlier prune of it kept. Publishing either would
add an identical snapshot to the lineage, so the command says so and stops (``--force`` publishes
anyway). "Equal" means the same (class, text) pairs, embedded the same way: CLIP model, template
and display names, since those change the vectors KPL uses; for a knowledge base that brings its own
vectors, the vectors themselves (``clip["vectors_hash"]`` against the manifest's ``extra.vectors_hash``).

Only the newest snapshot counts as "what the rerun would repeat": ``latest`` is derived as the newest
snapshot, so after ``load A; load B`` a third ``load A`` must publish again (``same_as_earlier`` names
the older copy) or ``load A && kpl eval --kb latest`` would evaluate B.
"""

from __future__ import annotations

from typing import Any

from kbuild.descriptions import Description, content_hash
from kbuild.store import SnapshotInfo, SnapshotStore
from kbuild.store.manifest import display_names


def same_content(info: SnapshotInfo, descriptions: list[Description], clip: dict[str, Any],
                 displays: dict[str, str]) -> bool:
    """Whether ``info`` holds exactly these descriptions, embedded with ``clip`` and ``displays``."""
    m = info.manifest
    own = m.get("clip", {})
    wanted = {k: v for k, v in displays.items() if v != k}
    return (m.get("content_hash") == content_hash((d.class_name, d.text) for d in descriptions)
            and own.get("model_id") == clip.get("model_id") and own.get("template") == clip.get("template")
            and ("vectors_hash" not in clip or (m.get("extra") or {}).get("vectors_hash") == clip["vectors_hash"])
            and display_names(m) == wanted)


def repeated_run(store: SnapshotStore, operation: str, descriptions: list[Description], clip: dict[str, Any],
                 displays: dict[str, str]) -> SnapshotInfo | None:
    """The newest snapshot when the same ``operation`` made it with the same content, embedded the
    same way (a rerun that changes nothing), else None."""
    snapshots = store.list()
    latest = snapshots[-1] if snapshots else None
    if latest is not None and latest.manifest.get("operation") == operation and same_content(
            latest, descriptions, clip, displays):
        return latest
    return None


def same_as_earlier(store: SnapshotStore, operation: str, descriptions: list[Description], clip: dict[str, Any],
                    displays: dict[str, str]) -> SnapshotInfo | None:
    """An older snapshot (not the newest) with this content: the write publishes again so that
    ``latest`` holds it, and says which one it repeats."""
    for info in reversed(store.list()[:-1]):
        if info.manifest.get("operation") == operation and same_content(info, descriptions, clip, displays):
            return info
    return None


def republished_message(earlier: SnapshotInfo, published: SnapshotInfo) -> str:
    return (f"same content as {earlier.name}, which is not the latest snapshot: published it again as "
            f"{published.name} so that 'latest' holds it")


def repeated_prune(store: SnapshotStore, parent: str, descriptions: list[Description], clip: dict[str, Any],
                   displays: dict[str, str]) -> SnapshotInfo | None:
    """The newest earlier prune of ``parent`` that kept exactly ``descriptions``, embedded the same
    way (pruning the same snapshot twice with the same settings), else None."""
    for info in reversed(store.list()):
        m = info.manifest
        if (m.get("operation") == "prune" and [p.get("name") for p in m.get("parents", [])] == [parent]
                and same_content(info, descriptions, clip, displays)):
            return info
    return None


def unchanged_message(existing: SnapshotInfo, why: str) -> str:
    return (f"{why}: same content as {existing.name} ({existing.content_hash[:19]}...); nothing published "
            "(pass --force to publish it anyway)")
