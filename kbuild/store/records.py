"""How a description becomes a Chroma record and back.

Chroma metadata is flat (str/int/float/bool, no None), so nested provenance travels as a JSON string.
Records keep their write order in ``i`` so a snapshot reads back in the order it was written.
Removed descriptions (pruning, review) stay in the snapshot with ``state = removed`` and their reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from kbuild.descriptions import Description

KEPT = "kept"
REMOVED = "removed"


@dataclass
class RemovedRecord:
    """A description a write operation dropped, with the stage, reason and score that dropped it,
    and its partner: ``related`` is the text it duplicated or collided with (None when there is
    none), ``related_classes`` the other class(es) involved (empty for a same-class partner)."""

    description: Description
    stage: str
    reason: str
    score: float | None = None
    related: str | None = None
    related_classes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = self.description
        return {"id": d.id, "class_name": d.class_name, "text": d.text, "source": d.source,
                "stage": self.stage, "reason": self.reason, "score": self.score, "related": self.related,
                "related_classes": list(self.related_classes), "explanation": self.explain()}

    def explain(self) -> str:
        """One line: stage, reason, score and partner, e.g. ``near_duplicate: near duplicate
        (0.953) of 'a black bill'`` or ``cross_class: identical text in another class; also in
        Crow, Raven``."""
        line = f"{self.stage}: {self.reason}" + _score_text(self.stage, self.reason, self.score)
        same_text = self.related == self.description.text
        if self.related is not None and not same_text:
            line += f" of {self.related!r}" if not self.related_classes else f": {self.related!r}"
        if self.related_classes:
            line += (" in " if self.related is not None and not same_text else "; also in ") + _names(self.related_classes)
        return line


# Stages whose score is a count, not a similarity: a length in characters, a prompt in tokens.
COUNT_STAGES = {"sanitise": "characters", "overlong": "tokens"}


def _score_text(stage: str, reason: str, score: float | None) -> str:
    """`` (0.953)`` for a similarity; a count as a count (``: 2 characters``), left out when the
    reason already states it (``over-long (80 > 77 tokens)``); nothing without a score."""
    if score is None:
        return ""
    unit = COUNT_STAGES.get(stage)
    if unit is None:
        return f" ({score:.3f})"
    count = f"{score:.0f}"
    return "" if re.search(rf"\b{count}\b", reason) else f": {count} {unit}"


def _names(classes: list[str], shown: int = 5) -> str:
    names = ", ".join(classes[:shown])
    return names + (f" (+{len(classes) - shown} more)" if len(classes) > shown else "")


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
                         meta.get("removed_reason", ""), meta.get("removed_score"),
                         meta.get("removed_related"), classes)
