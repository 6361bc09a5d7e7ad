"""Snapshot and tag names, and the one function that turns a reference into a name.

Names become Chroma collection names, so they follow Chroma's rules (3-128 characters from
letters, digits, ``.``, ``_``, ``-``, starting and ending with a letter or digit) and never look like
paths. Names starting with ``kbuild-`` are reserved for the store's own collections (pending writes, tags).
"""

from __future__ import annotations

import difflib
import ipaddress
import re

from kbuild.errors import UsageError

AUTO_PREFIX = "snapshot_v"
INTERNAL_PREFIX = "kbuild-"
PENDING_PREFIX = "kbuild-tmp-"
TAG_PREFIX = "kbuild-tag-"
REMOVED_PREFIX = "kbuild-removed-"  # marks a removed snapshot's name as used
LATEST = "latest"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,126}[A-Za-z0-9]$")
_AUTO = re.compile(r"^snapshot_v([0-9]+)$")
_SHORT = re.compile(r"^v([0-9]+)$")
_RULE = "use 3-128 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"


def _check(value: str, kind: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"An empty {kind} name is not allowed ({_RULE})")
    if "/" in value or "\\" in value or ".." in value or value.startswith("~"):
        raise UsageError(f"'{value}' looks like a path, not a {kind} name ({_RULE})")
    if not _NAME.match(value):
        raise UsageError(f"'{value}' is not a valid {kind} name ({_RULE})")
    if _is_ip_address(value):  # Chroma refuses collection names that parse as an IP address
        raise UsageError(f"'{value}' reads as an IP address, which is not a valid {kind} name (add a letter)")
    if value.startswith(INTERNAL_PREFIX):
        raise UsageError(f"'{value}' is reserved: {kind} names may not start with '{INTERNAL_PREFIX}'")
    return value


def _is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def validate_snapshot_name(name: str) -> str:
    _check(name, "snapshot")
    if _SHORT.match(name) or name == LATEST:
        raise UsageError(f"'{name}' is a reference form, not a snapshot name (try snapshot_{name})")
    if _AUTO.match(name):
        # A chosen snapshot_v99999999999 would set the next automatic number; only numbering makes these.
        raise UsageError(f"'{name}' is reserved for automatic numbering (leave out --name for the next "
                         "snapshot_vN, or choose a name without the 'snapshot_v<digits>' form)")
    return name


def validate_tag_name(tag: str) -> str:
    _check(tag, "tag")
    if tag == LATEST or _SHORT.match(tag) or _AUTO.match(tag):
        raise UsageError(f"'{tag}' cannot be a tag: it reads as a snapshot reference (choose another tag)")
    return tag


def auto_number(name: str) -> int | None:
    match = _AUTO.match(name)
    return int(match.group(1)) if match else None


def resolve_auto_name(reference: str) -> str:
    """``v3`` -> ``snapshot_v3``; other references unchanged."""
    match = _SHORT.match(reference)
    return f"{AUTO_PREFIX}{int(match.group(1))}" if match else reference


def auto_name(number: int) -> str:
    return f"{AUTO_PREFIX}{number}"


def check_reference(reference: str) -> str:
    """Refuse path-like or malformed references before they reach Chroma."""
    if reference == LATEST or _SHORT.match(reference):
        return reference
    return _check(reference, "snapshot")


SHOWN_ALL = 10  # a store with at most this many names lists them all in an "unknown" error


def nearest(reference: str, candidates: list[str], count: int = 5) -> list[str]:
    """The ``count`` candidates closest to ``reference``: for ``v12``/``snapshot_v12`` the automatic
    names with the nearest numbers first, then the others by spelling (difflib's ratio), so a typo in
    a tag or an out-of-range number still points at what exists."""
    wanted = resolve_auto_name(reference)
    number = auto_number(wanted)

    def distance(name: str) -> tuple[float, float, str]:
        other = auto_number(name)
        by_number = abs(other - number) if number is not None and other is not None else float("inf")
        return by_number, -difflib.SequenceMatcher(None, wanted.lower(), name.lower()).ratio(), name

    return sorted(dict.fromkeys(candidates), key=distance)[:count]


def unknown_listing(reference: str, snapshots: list[str], tags: list[str]) -> str:
    """``Available: a, b`` for a small store; else how many there are and the nearest names."""
    if len(snapshots) + len(tags) <= SHOWN_ALL:
        return "Available: " + ", ".join(snapshots + tags)
    counted = f"{len(snapshots)} snapshots" + (f" and {len(tags)} tags" if tags else "")
    return f"{counted}; nearest: " + ", ".join(nearest(reference, snapshots + tags))
