"""Long work reports progress on stderr (counts and an ETA), and cheap checks run before any embedding."""

from __future__ import annotations

import json

import pytest

from kbuild import progress
from kbuild.cli import progress as cli_progress

pytestmark = pytest.mark.usefixtures("clip_env")


@pytest.fixture()
def big_kb(tmp_path):
    kb = {f"class {c}": [f"trait {c} number {i}" for i in range(300)] for c in range(8)}  # 2400 texts
    path = tmp_path / "big.json"
    path.write_text(json.dumps(kb))
    return path


@pytest.mark.slow
def test_load_prune_diff_report_plain_progress(kbuild, big_kb, monkeypatch):
    monkeypatch.setattr(cli_progress, "PLAIN_EVERY_S", 0.0)  # every update prints a line
    loaded = kbuild("load", big_kb)
    assert loaded.code == 0, loaded.err
    lines = loaded.err.splitlines()
    assert "embedding texts: 1024/2400 (43%)" in "\n".join(lines) and any(" s left" in l for l in lines)
    assert any(l.startswith("embedding texts: 2400/2400 (100%), done in") for l in lines)
    assert any(l.startswith("writing snapshot: 2400/2400 (100%), done in") for l in lines)
    pruned = kbuild("prune", "--max-per-class", "100")
    assert pruned.code == 0 and "pruning (stages): 7/7" in pruned.err and "reading snapshot_v1: " in pruned.err
    assert "reading snapshot_v2: " in kbuild("diff", "latest").err


def test_no_sink_no_output(capsys):
    with progress.task("quiet", 3) as t:
        t.advance(3)
    assert capsys.readouterr().err == ""


def test_taken_name_fails_before_clip_is_loaded(kbuild, tmp_path, monkeypatch):
    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"cat": ["whiskers", "a long tail", "soft fur"]}))
    assert kbuild("load", path, "--name", "derm").code == 0
    monkeypatch.setenv("KPL_CLIP_MODEL", "no-such-model-anywhere")  # loading CLIP would fail
    for args in (("load", path, "--name", "derm"), ("prune", "--name", "derm")):
        result = kbuild(*args)
        assert result.code == 1, result.err
        assert "'derm' already exists" in result.err and "no-such-model" not in result.err


def _said_while_writing(tmp_path, monkeypatch, records: int = 6) -> list[bytes]:
    """Publish ``records`` descriptions in batches of 2 under the CLI's ``reporting()``, with the real
    stderr (fd 2) on a pipe, and collect what the pipe holds each time a progress line has just been
    said: the progress as the user sees it."""
    import os

    import numpy as np

    from kbuild.descriptions import Description
    from kbuild.store import SnapshotStore
    from kbuild.store import snapshots as store_snapshots
    from kbuild.store.manifest import SnapshotDraft

    monkeypatch.setattr(store_snapshots, "_WRITE_BATCH", 2)
    monkeypatch.setattr(cli_progress, "PLAIN_EVERY_S", 0.0)
    store = SnapshotStore(tmp_path / "store")
    draft = SnapshotDraft([Description("cat", f"trait {i}") for i in range(records)],
                          np.eye(records, 8, dtype=np.float32), "load", {}, clip={"model_id": "t/r", "dim": 8})
    seen: list[bytes] = []
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    say = cli_progress.PlainSink._say

    def watched(self, *args, **kwargs):
        say(self, *args, **kwargs)
        seen.append(_drain(read_end))

    monkeypatch.setattr(cli_progress.PlainSink, "_say", watched)
    saved = os.dup(2)
    os.dup2(write_end, 2)
    try:
        with cli_progress.reporting():
            store.publish(draft)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
        _drain(read_end)
        os.close(read_end)
    return seen


def _drain(fd: int) -> bytes:
    import os

    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_progress_reaches_stderr_while_the_store_writes(tmp_path, monkeypatch, capsys):
    """Before: the store sends fd 2 to a spool while Chroma runs (to hide Rust panic text), so every
    'writing snapshot' line came out at once when the write ended. Each line must show as it is said."""
    with capsys.disabled():  # the real sys.stderr, as on the command line
        seen = _said_while_writing(tmp_path, monkeypatch)
    said = [chunk.decode() for chunk in seen if chunk]
    assert len(said) >= 3 and said[0].startswith("writing snapshot: 2/6 (33%)"), seen
    assert said[1].startswith("writing snapshot: 4/6 (67%)"), seen


_BAR_CHILD = """
import os, sys, time
import numpy as np
from kbuild import progress
from kbuild.cli.progress import reporting
from kbuild.descriptions import Description
from kbuild.store import SnapshotStore
from kbuild.store import snapshots
from kbuild.store.manifest import SnapshotDraft

advance = progress.Task.advance
def slow_advance(self, n=1):  # called by the store after each batch it wrote, inside its stderr spool
    advance(self, n)
    time.sleep(0.4)
    os.write(1, b"<ADD>")  # fd 1 itself: rich's live display takes over sys.stdout on a terminal
progress.Task.advance = slow_advance
snapshots._WRITE_BATCH = 10
draft = SnapshotDraft([Description("cat", f"trait {i}") for i in range(60)], np.eye(60, 8, dtype=np.float32),
                      "load", {}, clip={"model_id": "t/r", "dim": 8})
with reporting():
    SnapshotStore(sys.argv[1]).publish(draft)
os.write(1, b"<DONE>")
"""


@pytest.mark.slow
def test_a_terminal_gets_a_live_bar_while_the_store_writes(tmp_path):
    """On a terminal the bar must move while the store writes: before, its frames were held in the
    store's stderr spool and came out after the last batch."""
    import os
    import pty
    import subprocess
    import sys

    from helpers import REPO, cli_env

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _BAR_CHILD, str(tmp_path / "store")], stdin=slave, stdout=slave,
                            stderr=slave, env=cli_env(), cwd=REPO)
    os.close(slave)
    seen = b""
    try:
        while b"<DONE>" not in seen:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        proc.wait(60)
        os.close(master)
    assert proc.returncode == 0, seen[-2000:]
    assert b"<ADD>" in seen, seen[-3000:]
    before_last_batch = seen[:seen.rindex(b"<ADD>")]
    assert b"writing snapshot" in before_last_batch and "━".encode() in before_last_batch, seen[-2000:]
