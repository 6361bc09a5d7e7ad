"""A ``kbuild load`` killed (SIGKILL) in the middle of writing a 15 000-description snapshot:
earlier snapshots stay intact, no partial snapshot appears under a real name, ``kbuild gc``
removes the leftover, and the same load then succeeds.

Everything after the kill runs as separate ``kbuild`` processes, as a user would run them (forked
from tests/forkserver.py: real processes without the import cost).
The store is watched through a read-only SQLite connection, so this process never holds a
Chroma client that could mask what a fresh process sees.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import cli_env, run_forked
from kbuild.clip.cache import TextEmbeddingCache
from kbuild.clip.models import ModelSpec, model_id
from kbuild.descriptions import DEFAULT_TEMPLATE, Description
from kbuild.store import SnapshotStore
from kbuild.store.manifest import SnapshotDraft

pytestmark = pytest.mark.slow

CLASSES, PER_CLASS, DIM = 150, 100, 64


def big_file(path: Path) -> Path:
    data = {f"species {c:03d}": [f"species {c:03d} shows a distinctive marking of kind {i}" for i in range(PER_CLASS)]
            for c in range(CLASSES)}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def warm_cache(home: Path, model: str, path: Path) -> None:
    """Fill the store's text-embedding cache for the big file, so the load's time goes to writing."""
    data = json.loads(path.read_text(encoding="utf-8"))
    template = DEFAULT_TEMPLATE
    texts = [template.format(c, t) for c, items in data.items() for t in items]
    rng = np.random.default_rng(0)

    def random_units(batch):
        rows = rng.standard_normal((len(batch), DIM)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    cache = TextEmbeddingCache(home / "cache" / "text_embeddings.sqlite")
    cache.embed(model_id(ModelSpec(model, None)), template, texts, random_units)
    cache.close()


def pending_rows(home: Path) -> dict[str, int]:
    """Pending (``kbuild-tmp-``) collections and how many records each holds, read-only."""
    db_path = home / "chroma" / "chroma.sqlite3"
    if not db_path.exists():
        return {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute(
            "SELECT c.name, COUNT(e.id) FROM collections c JOIN segments s ON s.collection = c.id "
            "LEFT JOIN embeddings e ON e.segment_id = s.id "
            "WHERE c.name LIKE 'kbuild-tmp-%' AND s.scope = 'METADATA' GROUP BY c.name").fetchall()
    except sqlite3.OperationalError:  # locked for a moment by the writer, or not yet created
        return {}
    finally:
        db.close()
    return dict(rows)


def first_snapshot(home: Path) -> str:
    descriptions = [Description("melanoma", f"dark lesion variant {i}") for i in range(20)]
    rows = np.eye(DIM, dtype=np.float32)[:20]
    return SnapshotStore(home).publish(SnapshotDraft(descriptions, rows, "load", {}, {"model_id": "x"})).content_hash


def kill_while_writing(forks, args: list, env: dict, home: Path, limit_s: float = 40.0) -> int:
    """Start ``kbuild load``, SIGKILL it once its pending collection holds some records; returns them."""
    child = forks.run("kbuild", *args, env=env)
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and forks.poll(child) is None:
            written = sum(pending_rows(home).values())
            if 0 < written < CLASSES * PER_CLASS:
                forks.kill(child)
                assert forks.wait(child, 10) == -signal.SIGKILL
                return written
            time.sleep(0.05)
        pytest.fail(f"the load finished or stalled before it could be killed mid-write (rc {forks.poll(child)})")
    finally:
        forks.kill(child)
        forks.wait(child, 10)


def test_killed_load_leaves_earlier_snapshots_intact_and_gc_cleans_up(forks, tmp_path, tiny_model):
    home = tmp_path / "store"
    env = cli_env(KBUILD_STORE=str(home), KPL_CLIP_MODEL=tiny_model)
    earlier_hash = first_snapshot(home)
    source = big_file(tmp_path / "big.json")
    warm_cache(home, tiny_model, source)

    written = kill_while_writing(forks, ["load", source], env, home)
    assert 0 < written < CLASSES * PER_CLASS
    leftover = pending_rows(home)
    assert len(leftover) == 1

    listed = run_forked(forks, "kbuild", "list", "--json", env=env)
    assert listed.code == 0, listed.err
    assert [(s["name"], s["manifest"]["content_hash"]) for s in listed.json()] == [("snapshot_v1", earlier_hash)]
    verified = run_forked(forks, "kbuild", "verify", "v1", "--json", env=env)
    assert verified.code == 0 and verified.json()["recomputed"] == earlier_hash

    cleaned = run_forked(forks, "kbuild", "gc", env=env)
    assert cleaned.code == 0 and cleaned.out.splitlines()[0] == "removed 1 unfinished write(s)"
    assert pending_rows(home) == {}

    rerun = run_forked(forks, "kbuild", "load", source, "--json", env=env)
    assert rerun.code == 0, rerun.err
    assert rerun.json()["snapshot"] == "snapshot_v2" and rerun.json()["total"] == CLASSES * PER_CLASS
    final = run_forked(forks, "kbuild", "list", "--json", env=env).json()
    assert [s["name"] for s in final] == ["snapshot_v1", "snapshot_v2"]
    assert run_forked(forks, "kbuild", "verify", "v2", env=env).code == 0
    assert run_forked(forks, "kbuild", "verify", "v1", env=env).code == 0
