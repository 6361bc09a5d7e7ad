"""A persistent cache of text embeddings keyed by (model id, template, text), so no text is encoded twice.

SQLite under the store's home; values are float32 blobs. Safe for several processes (SQLite locking,
``INSERT OR IGNORE``): two writers of the same key write the same bytes.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

_SCHEMA = "CREATE TABLE IF NOT EXISTS text_embeddings (key TEXT PRIMARY KEY, dim INTEGER, vec BLOB)"


def _key(model_id: str, template: str, text: str) -> str:
    return hashlib.sha256("\x00".join((model_id, template, text)).encode("utf-8")).hexdigest()


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=60)
    try:
        db.execute(_SCHEMA)
        db.execute("SELECT key, dim, vec FROM text_embeddings LIMIT 1").fetchall()
        db.commit()
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


class TextEmbeddingCache:
    def __init__(self, path: Path | None):
        self.path = path
        self._memory: dict[str, np.ndarray] = {}
        self._db = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = _open(path)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError):
                    raise  # busy or locked by another process: not damage, never moved aside
                # Only a cache: a damaged one is moved aside (kept for a look) and started afresh,
                # so a load or prune re-encodes what it needs instead of stopping.
                path.replace(path.with_name(path.name + ".damaged"))
                self._db = _open(path)
        self.hits = 0
        self.misses = 0

    def _lookup(self, keys: list[str]) -> dict[str, np.ndarray]:
        found = {k: self._memory[k] for k in keys if k in self._memory}
        missing = [k for k in keys if k not in found]
        if self._db is not None:
            for start in range(0, len(missing), 500):
                part = missing[start:start + 500]
                marks = ",".join("?" * len(part))
                for key, _dim, blob in self._db.execute(
                        f"SELECT key, dim, vec FROM text_embeddings WHERE key IN ({marks})", part):
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _store(self, items: dict[str, np.ndarray]) -> None:
        self._memory.update(items)
        if self._db is not None and items:
            with self._db:
                self._db.executemany(
                    "INSERT OR IGNORE INTO text_embeddings VALUES (?, ?, ?)",
                    [(k, int(v.shape[0]), v.astype(np.float32).tobytes()) for k, v in items.items()])

    def embed(self, model_id: str, template: str, texts: Sequence[str],
              encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """(len(texts), D) embeddings of ``template.format(text)``-style inputs, encoding only cache misses.

        ``texts`` are already-templated strings or raw texts; ``template`` is part of the key only.
        """
        keys = [_key(model_id, template, t) for t in texts]
        found = self._lookup(list(dict.fromkeys(keys)))
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if todo:
            vectors = encode(todo)
            fresh = {_key(model_id, template, t): v for t, v in zip(todo, vectors)}
            self._store(fresh)
            found.update(fresh)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
