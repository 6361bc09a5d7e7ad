"""What the web app can do, as plain methods returning JSON-ready objects (no HTTP in here).

Browsing reads snapshots without embeddings and keeps a few in memory (snapshots are immutable, so a
cached read never goes stale). Comparing calls ``kbuild diff``'s own ``diff_stored``. Reviewing keeps
decisions in a server-side draft and saving publishes a child snapshot through ``review_snapshot``:
the same store API and atomic publish as every CLI command.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kbuild import __version__
from kbuild.descriptions import normalise_text
from kbuild.diff import diff_stored
from kbuild.errors import UsageError
from kbuild.ops.review import MAX_NAME, Decision, ReviewError, check_decision, review_snapshot, snapshot_embedder, stamp
from kbuild.serve.drafts import FOLDER, DraftStore, drop_decision, put_decision
from kbuild.serve.results import find_reports, report_file
from kbuild.settings import mask_secrets
from kbuild.store import KnowledgeBase, SnapshotStore, validate_snapshot_name
from kbuild.store.transfer import lineage

_CACHED_SNAPSHOTS = 8


@dataclass
class ServeOptions:
    """Choices made when the server starts: the results folder and the CLIP override for edits."""

    results: Path | None = None
    model: str | None = None
    pretrained: str | None = None


class ReviewService:
    def __init__(self, store: SnapshotStore, options: ServeOptions | None = None):
        self.store = store
        self.options = options or ServeOptions()
        self.drafts = DraftStore(store.home / FOLDER)
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()  # snapshots read, replies encoded
        self._pending: dict[tuple[str, str], threading.Event] = {}  # being made by one request right now
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()  # a save waits for a preload under way instead of loading twice
        self._preloaded: set[str] = set()

    # ---- browsing ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {"store": self.store.location, "mode": self.store.mode, "kbuild_version": __version__,
                "reports": self.options.results is not None}

    def snapshots(self) -> list[dict[str, Any]]:
        """Every snapshot, oldest first, with what the lineage view shows (parents, operation, counts)."""
        out = []
        for s in self.store.list():
            m = s.manifest
            out.append({"name": s.name, "tags": s.tags, "operation": m.get("operation", ""),
                        "parents": [p.get("name") for p in m.get("parents", [])], "created": m.get("created", ""),
                        "classes": m.get("classes", 0), "total": m.get("total", 0),
                        "removed_total": m.get("removed_total", 0), "parameters": m.get("parameters", {})})
        return out

    def _read(self, reference: str) -> KnowledgeBase:
        name = self.store.resolve(reference).name
        return self._shared(("kb", name), lambda: self.store.read(name, embeddings=False))

    def _shared(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        """``make()``'s value for ``key``, made once however many requests ask at the same time
        (200 concurrent GETs of a 50 000-description snapshot once read it 48 times, 2.8 GB) and kept
        for the next ones; snapshots are immutable, so a kept value never goes stale."""
        while True:
            with self._lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return self._cache[key]
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = threading.Event()
                    break
            pending.wait()  # then take the value, or make it ourselves if that maker failed
        try:
            value = make()
            with self._lock:
                self._cache[key] = value
                while len(self._cache) > _CACHED_SNAPSHOTS:
                    self._cache.popitem(last=False)
            return value
        finally:
            with self._lock:
                del self._pending[key]
            pending.set()

    def snapshot(self, reference: str) -> dict[str, Any]:
        kb = self._read(reference)
        return {**kb.info.to_json(), "lineage": lineage(self.store, kb.info), "descriptions": [d.to_json() for d in kb.descriptions],
                "removed": [r.to_json() for r in kb.removed]}

    def snapshot_body(self, reference: str) -> bytes:
        """``snapshot()`` as the UTF-8 JSON reply, encoded once and shared by every request for it."""
        name = self.store.resolve(reference).name
        return self._shared(("json", name), lambda: json.dumps(self.snapshot(name), ensure_ascii=False,
                                                               default=str).encode("utf-8"))

    def compare(self, old: str, new: str, threshold: float = 0.9) -> dict[str, Any]:
        """``kbuild diff OLD NEW --json`` plus its summary line; ``empty`` when nothing differs."""
        result = diff_stored(self.store, old, new, threshold)
        return {"old": result.old, "new": result.new, "empty": result.empty, "summary_line": result.summary(),
                "diff": result.to_json()}

    # ---- reviewing -----------------------------------------------------------------------
    def _target(self, payload: dict[str, Any]) -> tuple[str, str]:
        snapshot = payload.get("snapshot")
        reviewer = normalise_text(payload.get("reviewer") or "") if isinstance(payload.get("reviewer"), str) else ""
        if not isinstance(snapshot, str) or not snapshot:
            raise UsageError("Name the snapshot under review ('snapshot')")
        if not reviewer or len(reviewer) > MAX_NAME:
            raise UsageError(f"Enter a reviewer name (1-{MAX_NAME} characters) before reviewing")
        # Drafts belong to a concrete snapshot, never to 'latest', which moves when someone saves.
        return self.store.resolve(snapshot).name, reviewer

    def draft(self, payload: dict[str, Any]) -> dict[str, Any]:
        snapshot, reviewer = self._target(payload)
        return self.drafts.get(snapshot, reviewer)

    def decide(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Add or replace one decision in the reviewer's draft (checked against the snapshot first)."""
        snapshot, reviewer = self._target(payload)
        decision = check_decision(self._read(snapshot), stamp(payload.get("decision") or {}, reviewer))
        with self.drafts.change(snapshot, reviewer, payload.get("version")) as draft:
            put_decision(draft, decision.key, decision.to_json())
            draft["saved_as"] = None
        if decision.new is not None:
            self._preload_model(snapshot)
        return self.drafts.get(snapshot, reviewer)

    def _preload_model(self, snapshot: str) -> None:
        """Load the CLIP model an edit will need while the reviewer keeps working, so saving is quick."""
        info = self.store.resolve(snapshot)
        key = json.dumps(info.manifest.get("clip", {}), sort_keys=True)
        with self._lock:
            if key in self._preloaded:
                return
            self._preloaded.add(key)

        def load() -> None:
            with self._model_lock:
                try:
                    snapshot_embedder(self.store, info, self.options.model, self.options.pretrained)
                except Exception as exc:  # the save loads it again and reports the problem to the page
                    print(f"kbuild serve: could not preload CLIP ({mask_secrets(str(exc))}); saving will try again",
                          file=sys.stderr)

        threading.Thread(target=load, name="kbuild-preload-clip", daemon=True).start()

    def undo(self, payload: dict[str, Any]) -> dict[str, Any]:
        snapshot, reviewer = self._target(payload)
        key = payload.get("key")
        with self.drafts.change(snapshot, reviewer, payload.get("version")) as draft:
            if not isinstance(key, str) or not drop_decision(draft, key):
                raise ReviewError("That decision is not in the draft (reload the page)")
        return self.drafts.get(snapshot, reviewer)

    def discard(self, payload: dict[str, Any]) -> dict[str, Any]:
        snapshot, reviewer = self._target(payload)
        with self.drafts.change(snapshot, reviewer, payload.get("version")) as draft:
            draft["decisions"] = []
        return self.drafts.get(snapshot, reviewer)

    def save(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Publish the draft as a child snapshot; the draft becomes a tombstone naming it."""
        snapshot, reviewer = self._target(payload)
        name = payload.get("name") or None
        if name is not None:
            validate_snapshot_name(name if isinstance(name, str) else "")
        with self.drafts.change(snapshot, reviewer, payload.get("version")) as draft:
            decisions = [Decision.from_json(d) for d in draft["decisions"]]
            with self._model_lock:
                info = review_snapshot(self.store, snapshot, decisions, model=self.options.model,
                                       pretrained=self.options.pretrained, name=name,
                                       draft_key=self.drafts.key(snapshot, reviewer, draft["version"]))
            draft.update(decisions=[], saved_as=info.name)
        return {"snapshot": info.name, "parent": snapshot, "content_hash": info.content_hash,
                "draft": self.drafts.get(snapshot, reviewer)}

    # ---- reports -------------------------------------------------------------------------
    def reports(self) -> list[dict[str, Any]]:
        return find_reports(self.options.results) if self.options.results else []

    def report(self, relative: str) -> Path:
        if self.options.results is None:
            raise UsageError("No results folder: start with 'kbuild serve --results DIR'")
        return report_file(self.options.results, relative)
