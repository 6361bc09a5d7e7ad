"""Telling a damaged or full store from a bug, and finding what a killed write left on disk.

Chroma reports a corrupt ``chroma.sqlite3`` in several ways: a SQLite error text ("database disk
image is malformed", "file is not a database"), or a Rust panic (``pyo3_runtime.PanicException``),
which derives from ``BaseException`` and would pass any ``except Exception``. A full disk comes
back as "database or disk is full" or, from the vector index, "Error in compaction". Each becomes
one line naming the store and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from kbuild.errors import StoreUnavailable

DB_FILE = "chroma.sqlite3"
_SEGMENT_DIR = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DAMAGE_TEXTS = ("database disk image is malformed", "file is not a database", "(code: 11)", "(code: 26)",
                 "no such table", "malformed database schema",
                 # the vector index beside it: a segment folder's files garbled, cut short or deleted
                 "hnsw segment reader", "error loading hnsw index", "error deserializing pickle",
                 "error getting embedding", "error finding id")
_FULL_TEXTS = ("database or disk is full", "no space left on device", "(code: 13)")
_LOW_SPACE = 64 << 20  # bytes free below which "Error in compaction" is read as a full disk


class StoreDamaged(StoreUnavailable):
    """The store's files are unreadable: restore them from a copy."""


def _restore_advice(location: str) -> str:
    return (f"restore {location} from a copy (a backup or another machine), then run 'kbuild verify' "
            "on its snapshots; nothing was changed")


def is_panic(exc: BaseException) -> bool:
    """A Rust panic surfaced through pyo3 (Chroma's core), which is not an ``Exception``."""
    return type(exc).__name__ == "PanicException"


def classify(exc: BaseException, location: str, home: Path | None, writing: bool = False) -> StoreUnavailable | None:
    """The one-line error for a damaged or full store, or None when ``exc`` is neither. ``writing``: the
    call was a write (only then is "nothing half-written was published" news; a read publishes nothing)."""
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or any(t in text for t in _FULL_TEXTS) or (
            "compaction" in text and home is not None and _free_bytes(home) < _LOW_SPACE):
        where = f" ({_free_bytes(home) >> 20} MB free)" if home is not None else ""
        after = ("nothing half-written was published and earlier snapshots are untouched" if writing else
                 "the snapshots in it are untouched")
        return StoreUnavailable(f"The disk holding the store {location} is full{where}: free some space and "
                                f"rerun; {after}")
    if is_panic(exc) or any(t in text for t in _DAMAGE_TEXTS):
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return StoreDamaged(f"The store {location} is damaged ({detail}): {_restore_advice(location)}")
    return None


def _free_bytes(home: Path) -> int:
    probe = Path(home)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free
    except OSError:
        return 1 << 62


def segment_dirs(folder: Path) -> list[Path]:
    """Chroma's per-segment folders (named by the segment's UUID) under ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _SEGMENT_DIR.match(p.name))


def check_database_present(folder: Path, location: str) -> None:
    """Refuse an empty or missing ``chroma.sqlite3`` beside existing segment folders: Chroma would
    create a fresh, empty database there, and the store would look empty (``load`` would start again
    at ``snapshot_v1``) while its data sat unreachable beside it."""
    segments = segment_dirs(folder)
    if not segments:
        return
    db = folder / DB_FILE
    state = "missing" if not db.exists() else ("empty (0 bytes)" if db.stat().st_size == 0 else None)
    if state is None and _collection_count(db) == 0:
        # A kbuild store always keeps a collection once it has written (a snapshot, a tag, or the
        # marker of a removed one), and a failed or collected write takes its folder with it: a
        # database without any is a new one made over the old data, and gc would delete all of it.
        state = "a new, empty database (no collections)"
    if state:
        raise StoreDamaged(f"The store {location} is damaged: {DB_FILE} is {state} but {len(segments)} segment "
                           f"folder(s) hold data beside it: {_restore_advice(location)}; 'kbuild gc' "
                           "deletes nothing there")


def _collection_count(db: Path) -> int | None:
    """Collections in a Chroma database, read-only; None when it cannot tell (Chroma reports that)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "collections" not in tables:
                return 0
            return int(conn.execute("SELECT count(*) FROM collections").fetchone()[0])
    except sqlite3.Error:
        return None


def drop_orphaned_segments(folder: Path) -> None:
    """Delete the segment folders no collection names; called by a write that deleted its own pending
    collection while holding the store's write lock, so a failed first write leaves no folder that
    would later read as damage. Best effort: ``kbuild gc`` finds what this leaves."""
    with contextlib.suppress(OSError, sqlite3.Error):
        for orphan in orphaned_segments(folder):
            shutil.rmtree(orphan, ignore_errors=True)


def orphaned_segments(folder: Path) -> list[Path]:
    """Segment folders that no segment in the database names (left by deleted or killed writes).

    The database is read directly, read-only: Chroma has no call that lists segments."""
    segments = segment_dirs(folder)
    if not segments:
        return []
    db = folder / DB_FILE
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        known = {row[0] for row in conn.execute("SELECT id FROM segments")}
    return [p for p in segments if p.name not in known]


def segment_ids_of(folder: Path, collection_id: str) -> list[str]:
    """The segment ids of one collection, read directly (read-only) from the database, like
    ``orphaned_segments``; those with a folder under ``folder``."""
    db = folder / DB_FILE
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM segments WHERE collection = ?", (collection_id,))]
    return [i for i in ids if (folder / i).is_dir()]


# ---- Rust panic text on the process's stderr ---------------------------------------------------
# A panic in Chroma's Rust core is printed by Rust's panic hook straight to file descriptor 2
# ("thread '<unnamed>' panicked at ...", a backtrace), before Python sees the exception. While a
# store call runs, fd 2 goes to a temporary file; afterwards everything in it is written back except
# panic reports, which the one-line error replaces. Calls may overlap (serve's threads): the first
# to enter redirects, the last to leave restores.
_redirect_lock = threading.Lock()
_redirect_depth = 0
_redirect_state: tuple[int, Any] | None = None
_PANIC_START = re.compile(rb"^thread '.*' (\(\d+\) )?panicked at ")


@contextlib.contextmanager
def native_panics_silenced() -> Iterator[None]:
    global _redirect_depth, _redirect_state
    with _redirect_lock:
        if _redirect_depth == 0:
            try:
                sys.stderr.flush()
                saved, spool = os.dup(2), tempfile.TemporaryFile()
                os.dup2(spool.fileno(), 2)
                _redirect_state = (saved, spool)
            except (OSError, ValueError):
                _redirect_state = None
        _redirect_depth += 1
    try:
        yield
    finally:
        with _redirect_lock:
            _redirect_depth -= 1
            if _redirect_depth == 0 and _redirect_state is not None:
                saved, spool = _redirect_state
                _redirect_state = None
                os.dup2(saved, 2)
                os.close(saved)
                spool.seek(0)
                kept = _without_panic_reports(spool.read())
                spool.close()
                if kept:
                    os.write(2, kept)


def _without_panic_reports(data: bytes) -> bytes:
    """``data`` minus each panic report: from its 'thread ... panicked at' line to its 'note:' line."""
    out, skipping = [], False
    for line in data.splitlines(keepends=True):
        if _PANIC_START.match(line):
            skipping = True
        if not skipping:
            out.append(line)
        elif line.startswith(b"note: "):
            skipping = False
    return b"".join(out)
