"""The LLM call log and cache: one SQLite file, ``<store>/llm/calls.sqlite``.

Every HTTP attempt is a row: model, provider URL (never credentials), rendered messages, raw reply,
parsed items, token usage, duration and outcome (``ok``, ``malformed`` or ``error``). A row is one
autocommitted INSERT, so a process killed at any instant leaves every finished call on disk and no
half row; WAL mode lets concurrent runs read while one writes.

The cache is the same table: a request whose key (a hash of provider, model, messages, sampling
settings and round) already has an ``ok`` row is answered from it, so a rerun with the same inputs,
or the resumption of a killed run, pays for no call twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOG_RELATIVE_PATH = Path("llm") / "calls.sqlite"
# A raw reply is kept whole up to this many characters; past it (only an unusable reply gets that big:
# the cache answers from the parsed items) the rest is dropped, so a few odd replies cannot grow the log
# by hundreds of megabytes.
MAX_LOGGED_RESPONSE = 256_000
OK, MALFORMED, ERROR = "ok", "malformed", "error"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    created TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    class_name TEXT NOT NULL,
    round INTEGER NOT NULL,
    messages TEXT NOT NULL,
    params TEXT NOT NULL,
    response TEXT,
    items TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    duration_s REAL NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS calls_by_key ON calls (cache_key, outcome, id);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL,
    details TEXT NOT NULL
);
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def cache_key(identity: dict[str, Any], messages: list[dict], round_index: int) -> str:
    """``sha256:<hex>`` of everything that decides a reply (``identity`` = provider, model, sampling)."""
    payload = json.dumps({"identity": identity, "messages": messages, "round": round_index},
                         sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class CallRecord:
    """One attempt, as written to the log."""

    cache_key: str
    identity: dict[str, Any]
    class_name: str
    round: int
    messages: list[dict]
    outcome: str
    duration_s: float
    response: str | None = None
    items: list[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    http_status: int | None = None
    error: str | None = None


@dataclass
class CachedReply:
    items: list[str]
    prompt_tokens: int | None
    completion_tokens: int | None


class CallLog:
    """The log of one store; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit, so each INSERT is its own durable transaction.
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; only a power cut may lose the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    @classmethod
    def for_store(cls, home: Path | str) -> "CallLog":
        return cls(Path(home) / LOG_RELATIVE_PATH)

    def __enter__(self) -> "CallLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def lookup(self, key: str) -> CachedReply | None:
        """The first successful reply logged under ``key``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT items, prompt_tokens, completion_tokens FROM calls "
                "WHERE cache_key = ? AND outcome = ? ORDER BY id LIMIT 1", (key, OK)).fetchone()
        return None if row is None else CachedReply(json.loads(row[0]), row[1], row[2])

    def record(self, run_id: str, call: CallRecord) -> None:
        identity = call.identity
        params = {k: v for k, v in identity.items() if k not in ("provider", "model")}
        values = (run_id, now_iso(), call.cache_key, identity["provider"], identity["model"], call.class_name,
                  call.round, _dumps(call.messages), _dumps(params), _logged(call.response),
                  None if call.items is None else _dumps(call.items), call.prompt_tokens,
                  call.completion_tokens, call.duration_s, call.outcome, call.http_status, call.error)
        with self._lock:
            self._db.execute(
                "INSERT INTO calls (run_id, created, cache_key, provider, model, class_name, round, messages, "
                "params, response, items, prompt_tokens, completion_tokens, duration_s, outcome, http_status, "
                "error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)

    def start_run(self, details: dict[str, Any]) -> str:
        run_id = uuid.uuid4().hex
        with self._lock:
            self._db.execute("INSERT INTO runs (run_id, started, status, details) VALUES (?, ?, 'running', ?)",
                             (run_id, now_iso(), _dumps(details)))
        return run_id

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        with self._lock:
            row = self._db.execute("SELECT details FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            details = {**json.loads(row[0]), "summary": summary or {}} if row else {"summary": summary or {}}
            self._db.execute("UPDATE runs SET finished = ?, status = ?, details = ? WHERE run_id = ?",
                             (now_iso(), status, _dumps(details), run_id))

    def rows(self, table: str = "calls") -> list[dict[str, Any]]:
        """Every row of ``calls`` or ``runs`` as dicts, oldest first (for inspection and tests)."""
        if table not in ("calls", "runs"):
            raise ValueError(f"unknown table {table!r}")
        with self._lock:
            cursor = self._db.execute(f"SELECT * FROM {table} ORDER BY rowid")
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]


def _logged(response: str | None) -> str | None:
    if response is None or len(response) <= MAX_LOGGED_RESPONSE:
        return response
    return f"{response[:MAX_LOGGED_RESPONSE]}\n[... {len(response) - MAX_LOGGED_RESPONSE} more characters not logged]"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
