"""The text-only prune stages: sanitise, over-long, exact duplicates.

These stages look at strings alone (no embeddings). They work on ``Item``s, the prune pipeline's
working copy of each input description, in one canonical order (class, normalised text, then the
rest of the description), so every later decision is independent of the order the descriptions
were stored in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from kbuild.descriptions import Description, normalise_text

FIX_ENDS = "stripped leading/trailing whitespace"
FIX_INNER = "collapsed inner whitespace"
FIX_TRUNCATED = "truncated to fit the token limit"


@dataclass
class Item:
    """One description on its way through the stages.

    ``row`` is its row in the caller's embedding array; ``text`` is its current text (normalised,
    maybe truncated); ``order`` its position in the canonical order; ``fixes`` lists what was
    repaired; ``scores`` are the numbers that kept it. ``class_name`` is copied from the
    original because every stage reads it, many times.
    """

    original: Description
    row: int
    text: str
    class_name: str = ""
    order: int = 0
    fixes: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    restored: str | None = None  # why a removed item was put back (a class's minimum)


class Drop(NamedTuple):
    """A stage's decision to remove an item: why, with which score, and its partner: ``related``
    is the text it duplicated or collided with, ``related_classes`` the other class(es) involved
    (empty when the partner is in the item's own class)."""

    item: Item
    reason: str
    score: float | None = None
    related: str | None = None
    related_classes: tuple[str, ...] = ()


def canonical_items(descriptions: list[Description]) -> list[Item]:
    """Items sorted by (class, normalised text), ties broken by the rest of each description."""
    items = [Item(d, row, normalise_text(d.text), d.class_name) for row, d in enumerate(descriptions)]
    items.sort(key=_sort_key)
    for position, item in enumerate(items):
        item.order = position
    return items


def _sort_key(item: Item) -> tuple[str, str, bool, str, str, str, str, int]:
    d = item.original
    extra = json.dumps(d.extra, sort_keys=True, ensure_ascii=False, default=str) if d.extra else ""
    # Among copies of one text the already-clean one comes first, so exact dedup keeps it; the
    # row comes last: it only separates descriptions that are identical in every field.
    return (d.class_name, item.text, d.text != item.text, d.text, d.source, d.created, extra, item.row)


def sanitise(items: list[Item], min_chars: int) -> tuple[list[Item], list[Drop]]:
    """Drop empty, punctuation-only and too-short texts; record whitespace repairs on the rest.

    The text was already normalised by ``canonical_items``; here we only judge it and note what
    normalisation changed. A repair is not a removal.
    """
    kept, drops = [], []
    for item in items:
        reason = _sanitise_reason(item.text, min_chars)
        if reason:
            drops.append(Drop(item, reason, float(len(item.text)) if reason.startswith("too short") else None))
            continue
        raw = item.original.text
        if raw != raw.strip():
            item.fixes.append(FIX_ENDS)
        if item.text != raw.strip():  # item.text is already the normalised raw text
            item.fixes.append(FIX_INNER)
        kept.append(item)
    return kept, drops


def _sanitise_reason(text: str, min_chars: int) -> str | None:
    if not text:
        return "empty"
    if not any(ch.isalnum() for ch in text):
        return "punctuation-only"
    if len(text) < min_chars:
        return f"too short (< {min_chars} characters)"
    return None


def overlong(items: list[Item], token_count: Callable[[str], int], template: str, max_tokens: int,
             mode: str, display_names: dict[str, str] | None = None) -> tuple[list[Item], list[Drop]]:
    """Texts whose templated prompt exceeds ``max_tokens``: truncate by words, or drop (``mode``).

    The prompt is the one CLIP sees: with the class's display name when it has one."""
    kept, drops = [], []
    names = display_names or {}
    for item in items:
        shown = names.get(item.class_name, item.class_name)
        count = token_count(template.format(shown, item.text))
        if count <= max_tokens:
            kept.append(item)
            continue
        shorter = _truncate(item, token_count, template.replace("{}", shown.replace("{", "{{").replace("}", "}}"), 1),
                            max_tokens) if mode == "truncate" else None
        if shorter is None:
            reason = f"over-long ({count} > {max_tokens} tokens)"
            if mode == "truncate":
                reason += "; no shorter word prefix fits"
            drops.append(Drop(item, reason, float(count)))
            continue
        item.scores["tokens_before_truncation"] = float(count)
        item.text = shorter
        item.fixes.append(FIX_TRUNCATED)
        kept.append(item)
    return kept, drops


def _truncate(item: Item, token_count: Callable[[str], int], template: str, max_tokens: int) -> str | None:
    """The longest word prefix of the text whose prompt fits (binary search), or None.

    ``template`` has its class name already filled in: one ``{}`` left, for the text."""
    words = item.text.split(" ")

    def fits(n: int) -> bool:
        return token_count(template.format(" ".join(words[:n]))) <= max_tokens

    low, high = 0, len(words) - 1  # invariant: the full text does not fit
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    text = " ".join(words[:low]).rstrip(",;:-")
    return text if low > 0 and fits(low) and text else None


def exact_duplicates(items: list[Item]) -> tuple[list[Item], list[Drop]]:
    """Within each class keep the first item of each identical text.

    Identical means equal after whitespace normalisation, case included: the same rule as a
    description's id. Case-only variants are left to the near-duplicate stage (CLIP's tokenizer
    lowercases, so their embeddings coincide).
    """
    kept, drops = [], []
    first: dict[tuple[str, str], Item] = {}
    for item in items:
        key = (item.class_name, item.text)
        if key in first:
            drops.append(Drop(item, "exact duplicate", 1.0, first[key].text))
        else:
            first[key] = item
            kept.append(item)
    return kept, drops
