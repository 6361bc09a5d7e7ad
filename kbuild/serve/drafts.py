"""Unsaved reviews, kept on the server so they survive a page reload or a closed tab.

One draft per (snapshot, reviewer), as a JSON file under ``<store home>/review_drafts/``. Each change
names the draft version it was made against and is refused when the draft has moved on since (another
tab, another reviewer with the same name), so nobody silently overwrites decisions they have not seen.
Files are replaced atomically (write a temporary file, fsync, rename): a crash leaves the old draft or
the new one, never half of one. Saving a draft as a snapshot leaves a tombstone (``saved_as``) with
a higher version, so a second save of the same draft from a stale page is refused, not published twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from kbuild.errors import KbuildError
from kbuild.store.locking import store_write_lock
from kbuild.store.manifest import now_iso

FOLDER = "review_drafts"


class StaleDraft(KbuildError):
    """The draft changed since the page loaded it (HTTP 409)."""

    def __init__(self, current: dict[str, Any]):
        super().__init__(f"This draft changed elsewhere (now version {current['version']}); "
                         "reload it and check the decisions before trying again")
        self.current = current


class DraftStore:
    """Review drafts under ``folder``; safe for several threads and processes (one file lock)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def _path(self, snapshot: str, reviewer: str) -> Path:
        # Names come from requests: hash them so no request text ever becomes part of a path.
        digest = hashlib.sha256(json.dumps([snapshot, reviewer]).encode("utf-8")).hexdigest()[:32]
        return self.folder / f"{digest}.json"

    def key(self, snapshot: str, reviewer: str, version: int) -> str:
        """This draft at this version, as the snapshot its save publishes records it: a save killed
        after publishing and before the tombstone is written finds its snapshot on the next try."""
        return f"{self._path(snapshot, reviewer).stem}@{version}"

    def get(self, snapshot: str, reviewer: str) -> dict[str, Any]:
        """The draft as stored, or an empty version-0 draft (nothing is written until the first change)."""
        path = self._path(snapshot, reviewer)
        if not path.is_file():
            return {"snapshot": snapshot, "reviewer": reviewer, "version": 0, "decisions": [],
                    "updated": None, "saved_as": None}
        try:
            draft = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KbuildError(f"Review draft {path} is unreadable ({exc}); delete the file to start over") from exc
        if draft.get("snapshot") != snapshot or draft.get("reviewer") != reviewer:
            raise KbuildError(f"Review draft {path} belongs to another snapshot or reviewer; delete it")
        return draft

    @contextlib.contextmanager
    def change(self, snapshot: str, reviewer: str, version: Any) -> Iterator[dict[str, Any]]:
        """Yield the draft for editing if ``version`` is current; write it back as ``version + 1``.

        The lock is held until the block ends, so a save that publishes a snapshot inside the block
        cannot race another change of the same draft.
        """
        with store_write_lock(self.folder, timeout_s=60):
            draft = self.get(snapshot, reviewer)
            if not isinstance(version, int) or isinstance(version, bool) or version != draft["version"]:
                raise StaleDraft(draft)
            yield draft
            draft["version"] = version + 1
            draft["updated"] = now_iso()
            self._write(self._path(snapshot, reviewer), draft)

    def _write(self, path: Path, draft: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".draft-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(draft, out, ensure_ascii=False, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def put_decision(draft: dict[str, Any], key: str, decision: dict[str, Any]) -> None:
    """Add or replace the decision with this key, keeping the order in which decisions were first made."""
    decisions = draft["decisions"]
    for i, existing in enumerate(decisions):
        if existing.get("key") == key:
            decisions[i] = {"key": key, **decision}
            return
    decisions.append({"key": key, **decision})


def drop_decision(draft: dict[str, Any], key: str) -> bool:
    before = len(draft["decisions"])
    draft["decisions"] = [d for d in draft["decisions"] if d.get("key") != key]
    return len(draft["decisions"]) != before
