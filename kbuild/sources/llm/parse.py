"""Turn a chat model's reply into a list of descriptions.

The prompts ask for a bare JSON list of strings, but models wrap it in code fences, put a sentence
before it, return ``{"descriptions": [...]}``, or fall back to a numbered or bulleted list. All of
those are accepted; anything else (prose, a list of numbers, an empty list) is a ``ReplyParseError``
so the caller can ask again instead of storing junk.
"""

from __future__ import annotations

import json
import re

from kbuild.descriptions import normalise_text
from kbuild.inputs import nfc

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)
_MARKED_LINE = re.compile(r"^\s*(?:[-*+\u2022\u2023\u25e6]|\(?\d{1,3}[.):]|\[\d{1,3}\])\s+(.*\S)\s*$")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"
# An item longer than this is a paragraph, not a short visual description.
MAX_ITEM_CHARS = 400


class ReplyParseError(ValueError):
    """The reply holds no usable list; ``str(err)`` says why in a few words."""


def parse_reply(text: str) -> list[str]:
    """The non-empty descriptions in ``text``, in order (duplicates are the caller's business)."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyParseError("empty reply")
    body = _unfence(text)
    items = _json_items(body)
    if items is None:
        items = _marked_lines(body)
    if items is None:
        raise ReplyParseError("no JSON list and no numbered or bulleted lines in the reply")
    cleaned = [c for c in (clean_item(item) for item in items) if c]
    if not cleaned:
        raise ReplyParseError("the list holds no non-empty descriptions")
    return cleaned


def clean_item(item: str) -> str:
    """One description without list debris: quotes, trailing commas, markdown bold, extra spaces."""
    text = nfc(normalise_text(item)).replace("**", "")
    text = text.rstrip(",;").strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if len(text) > MAX_ITEM_CHARS:
        return ""
    return text


def _unfence(text: str) -> str:
    """The inside of the first fenced block, or the text itself when there is none."""
    match = _FENCE.search(text)
    return match.group(1).strip() if match else text.strip()


def _json_items(body: str) -> list[str] | None:
    """Strings from a JSON list (or an object holding one list); None when the body is not JSON."""
    data = _loads(body)
    if data is None:
        start, end = body.find("["), body.rfind("]")
        data = _loads(body[start:end + 1]) if 0 <= start < end else None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else None
    if not isinstance(data, list):
        return None
    return [_as_text(item, index) for index, item in enumerate(data, start=1)]


def _loads(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _as_text(item, index: int) -> str:
    # Some models answer [{"feature": "..."}] (the KPL paper's own layout): take the one string.
    if isinstance(item, dict):
        strings = [v for v in item.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0]
    if not isinstance(item, str):
        raise ReplyParseError(f"item {index} of the JSON list is not a string")
    return item


def _marked_lines(body: str) -> list[str] | None:
    items = [m.group(1) for m in map(_MARKED_LINE.match, body.splitlines()) if m]
    return items or None
