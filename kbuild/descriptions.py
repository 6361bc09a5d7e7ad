"""Descriptions: one (class, text) pair plus where it came from.

A description's id depends only on its class and its normalised text, so the same description
has the same id in every snapshot; the content hash of a knowledge base is taken over the sorted
(class, text) pairs and is tagged with its algorithm (``sha256:...``).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

_WHITESPACE = re.compile(r"\s+")
HASH_ALGORITHM = "sha256"
# How a description becomes the text CLIP embeds (class name, description), and a class name alone.
DEFAULT_TEMPLATE = "a photo of a {}, which has {}"
NAME_TEMPLATE = "a photo of a {}."


def normalise_text(text: str) -> str:
    """Strip the ends and collapse every run of whitespace (newlines, tabs) to one space."""
    return _WHITESPACE.sub(" ", text).strip()


def description_id(class_name: str, text: str) -> str:
    """Stable id of a description: a hash of its class and normalised text."""
    payload = json.dumps([class_name, normalise_text(text)], ensure_ascii=False)
    return "d" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


@dataclass
class Description:
    """One visual description of one class.

    ``source`` says where the text came from (``llm:gpt-4o-mini``, ``curated:file.json``);
    ``extra`` carries anything else worth keeping (prompt name/hash, prune scores, review notes).
    """

    class_name: str
    text: str
    source: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return description_id(self.class_name, self.text)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


def content_hash(pairs: Iterable[tuple[str, str]]) -> str:
    """Algorithm-tagged hash of a knowledge base's content: the sorted (class, text) pairs."""
    digest = hashlib.sha256()
    for class_name, text in sorted(pairs):
        digest.update(json.dumps([class_name, text], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return f"{HASH_ALGORITHM}:{digest.hexdigest()}"


def group_by_class(descriptions: Iterable[Description]) -> dict[str, list[Description]]:
    """Descriptions grouped by class, classes in first-seen order."""
    groups: dict[str, list[Description]] = {}
    for d in descriptions:
        groups.setdefault(d.class_name, []).append(d)
    return groups


# Characters that would act on a terminal instead of being read: C0/C1 controls (ESC starts colour,
# cursor and OSC-8 hyperlink sequences), DEL, and the bidirectional overrides that reorder text.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every control character written out as an escape (``ESC`` -> ``\\x1b``).

    Data (class names, descriptions, paths, request lines) goes through this before it reaches a
    terminal or a log, so it is always read as text and never acts as a command."""
    text = str(text)
    if text.isprintable():
        return text  # the common case; isprintable() is False for every character escaped below
    return "".join(_escape_char(c) if (unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS) else c
                   for c in text)


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
