"""How a description becomes a Chroma record and back.

Chroma metadata is flat (str/int/float/bool, no None), so nested provenance travels as a JSON string.
Records keep their write order in ``i`` so a snapshot reads back in the order it was written.
Removed descriptions (pruning, review) stay in the snapshot with ``state = removed`` and their reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field  # noqa: F401
from typing import Any

from kbuild.descriptions import Description
from kbuild.descriptions import RemovedRecord as RemovedRecord  # re-exported: the store's record of a removal

KEPT = "kept"
REMOVED = "removed"


def kept_metadata(d: Description, index: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"class": d.class_name, "source": d.source or "", "created": d.created or "",
                            "i": index, "state": KEPT}
    if d.extra:
        meta["extra"] = json.dumps(d.extra, ensure_ascii=False, sort_keys=True)
    return meta


def removed_metadata(r: RemovedRecord, index: int) -> dict[str, Any]:
    meta = kept_metadata(r.description, index)
    meta.update({"state": REMOVED, "removed_stage": r.stage, "removed_reason": r.reason})
    if r.score is not None:
        meta["removed_score"] = float(r.score)
    if r.related is not None:
        meta["removed_related"] = r.related
    if r.related_classes:
        meta["removed_related_classes"] = json.dumps(list(r.related_classes), ensure_ascii=False)
    return meta


def to_description(text: str, meta: dict[str, Any]) -> Description:
    extra = json.loads(meta["extra"]) if meta.get("extra") else {}
    return Description(class_name=meta["class"], text=text, source=meta.get("source", ""),
                       created=meta.get("created", ""), extra=extra)


def to_removed(text: str, meta: dict[str, Any]) -> RemovedRecord:
    classes = json.loads(meta["removed_related_classes"]) if meta.get("removed_related_classes") else []
    return RemovedRecord(to_description(text, meta), meta.get("removed_stage", ""),
                         reason=meta.get("removed_reason", ""), score=meta.get("removed_score"),
                         related=meta.get("removed_related"), related_classes=classes)
