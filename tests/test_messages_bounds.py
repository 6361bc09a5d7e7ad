"""Messages and output that told the user the wrong thing (issue 23, item 18): each says what happened.

Reproduced before this change: ``kbuild export --format csv`` to a terminal wrote raw ESC/OSC-8
sequences; on a full disk even ``kbuild list`` said "nothing half-written was published"; ``diff
CHILD`` after its parent was removed said only "Unknown snapshot"; an API key with a trailing newline
gave "connection failed"; zero tokens gave "no price known"; ``rm`` left the segment folder until gc.
"""

from __future__ import annotations

import contextlib
import errno
import io

import numpy as np
import pytest
from test_hardening_store import _draft, tiny_disk  # noqa: F401 (a fixture)

from helpers import Result, run_kbuild
from kbuild.descriptions import Description
from kbuild.store import SnapshotStore
from kbuild.store.damage import segment_dirs
from kbuild.store.manifest import SnapshotDraft

HOSTILE = "a red \x1b[2J cap \x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ here"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_on_terminal(*args) -> Result:
    from kbuild.cli.app import app, run_with_boundary

    out, err = _Terminal(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_with_boundary(app, "kbuild", [str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def _publish(home, texts, parents=(), operation="load"):
    store = SnapshotStore(home)
    vectors = np.eye(len(texts), 8, dtype=np.float32)
    draft = SnapshotDraft([Description("cat", t) for t in texts], vectors, operation, {},
                          clip={"model_id": "t/r", "dim": 8}, parents=list(parents))
    return store.publish(draft)


def test_csv_export_to_a_terminal_escapes_control_sequences(tmp_path):
    home = tmp_path / "store"
    _publish(home, [HOSTILE, "whiskers"])
    shown = _run_on_terminal("export", "v1", "--format", "csv", "--store", home)
    assert shown.code == 0, shown.err
    assert "\x1b" not in shown.out and "\\x1b]8;;http://evil.example/" in shown.out
    assert shown.out.splitlines()[0] == "class,text,source,id" and len(shown.out.splitlines()) == 3
    piped = run_kbuild("export", "v1", "--format", "csv", "--store", home)  # a pipe or file keeps the data
    assert HOSTILE in piped.out


def _fill(folder) -> None:
    with open(folder / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.mark.slow
def test_on_a_full_disk_a_read_does_not_talk_about_publishing(tiny_disk):  # noqa: F811
    import subprocess
    import sys

    from helpers import REPO, cli_env

    home = tiny_disk / "store"
    SnapshotStore(home).publish(_draft(20))
    _fill(tiny_disk)
    # A fresh process, as a user's next command: it opens the store anew on the full disk.
    done = subprocess.run([sys.executable, "-c", "from kbuild.cli import main; main()", "list", "--store", str(home)],
                          capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=120)
    if done.returncode == 0:
        pytest.skip("list needed no space on this system")
    assert "is full" in done.stderr and "half-written" not in done.stderr and "publish" not in done.stderr, done.stderr


def test_diff_of_a_child_whose_parent_was_removed_says_so(tmp_path):
    home = tmp_path / "store"
    _publish(home, ["whiskers", "pointy ears"])
    _publish(home, ["whiskers"], parents=["snapshot_v1"], operation="prune")
    assert run_kbuild("rm", "v1", "--force", "--store", home).code == 0
    result = run_kbuild("diff", "v2", "--store", home)
    assert result.code == 1 and len(result.err.splitlines()) == 1, result.err
    assert "parent snapshot_v1 was removed" in result.err and "kbuild diff A snapshot_v2" in result.err, result.err
    named = run_kbuild("diff", "v1", "v2", "--store", home)
    assert named.code == 1 and "snapshot_v1 was removed" in named.err, named.err


def test_rm_frees_the_segment_folders_at_once(tmp_path):
    home = tmp_path / "store"
    _publish(home, ["whiskers", "pointy ears"])
    before = {p.name for p in segment_dirs(home / "chroma")}
    _publish(home, ["wet nose"])
    assert len(segment_dirs(home / "chroma")) > len(before)
    result = run_kbuild("rm", "v2", "--store", home)
    assert result.code == 0, result.err
    assert {p.name for p in segment_dirs(home / "chroma")} == before  # not only at the next gc
    assert run_kbuild("verify", "v1", "--store", home).code == 0
