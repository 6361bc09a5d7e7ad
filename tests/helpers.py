"""Test helpers shared by several test files (plain functions, importable from tests)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Shared test data (golden vectors, real features, curated KBs): never copied into the repo.
# KPL_TEST_SHARED points elsewhere (a git worktree, or a deliberately missing folder in a test).
SHARED = Path(os.environ.get("KPL_TEST_SHARED") or REPO.parent / "shared")


def in_ci() -> bool:
    """True under CI (CI=true): there a skipped test is a failure, and missing shared data too."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def shared_data_missing(what: str):
    """Skip locally, fail in CI: a test that needs ../shared never passes silently there."""
    import pytest

    message = f"{what} is absent (shared test data lives in {SHARED}; set KPL_TEST_SHARED to move it)"
    if in_ci():
        pytest.fail(f"CI needs shared test data: {message}", pytrace=False)
    pytest.skip(message)

# Small enough to build in a fraction of a second; vocab 49408 matches the bundled BPE tokenizer.
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_tiny_clip_dir(folder: Path, seed: int = 0) -> Path:
    """Build the tiny CLIP with seeded random weights and save it as a ``local-dir:`` folder."""
    import open_clip
    import torch

    from kbuild.clip.models import write_local_dir

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    return write_local_dir(model, TINY_CLIP_CONFIG, folder)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class CliRunner:
    """Runs a Typer app through the real error boundary, capturing stdout and stderr."""

    def __init__(self, app, prog: str, capsys):
        self.app, self.prog, self.capsys = app, prog, capsys

    def __call__(self, *args: str) -> Result:
        from kbuild.cli.app import run_with_boundary

        self.capsys.readouterr()
        code = run_with_boundary(self.app, self.prog, [str(a) for a in args])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    env.update(extra)
    return env


def run_subprocess(prog: str, *args: str, env: dict | None = None, timeout: float = 300) -> Result:
    """Run ``kbuild``/``kpl`` as a real process (for kill and concurrency tests)."""
    module = {"kbuild": "kbuild.cli", "kpl": "kpl.cli"}[prog]
    proc = subprocess.run([sys.executable, "-c", f"from {module} import main; main()", *map(str, args)],
                          capture_output=True, text=True, env=env or cli_env(), timeout=timeout, cwd=REPO)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_forked(forks, prog: str, *args, env: dict | None = None, timeout: float = 300) -> Result:
    """Run ``kbuild``/``kpl`` as a real, fresh process forked from the test session's fork server
    (tests/forkserver.py): the same code path as ``run_subprocess`` without 4-6 s of imports per run.
    Use ``run_subprocess`` where the console script's own interpreter start is what a test checks."""
    return finish_forked(forks, [forks.run(prog, *args, env=env)], timeout)[0]


def finish_forked(forks, children: list, timeout: float = 300) -> list[Result]:
    """Wait for children started together with ``forks.run`` (a concurrency trial); like ``finish``."""
    codes = [forks.wait(child, timeout_s=timeout) for child in children]
    return [Result(code, child.out.read_text(encoding="utf-8"), child.err.read_text(encoding="utf-8"))
            for code, child in zip(codes, children)]


def start_chroma_server(path: Path) -> tuple[subprocess.Popen, str]:
    """``chroma run`` on 127.0.0.1 with a free port; returns (process, url) once it answers."""
    import urllib.request

    port = free_port()
    chroma = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen([str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("chroma run exited early") from None
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("chroma run did not answer within 60 s")


def start_processes(prog: str, arg_lists: list[list[str]], env: dict) -> list[subprocess.Popen]:
    """Start several ``kbuild``/``kpl`` processes at once (for concurrency tests); see ``finish``."""
    module = {"kbuild": "kbuild.cli", "kpl": "kpl.cli"}[prog]
    return [subprocess.Popen([sys.executable, "-c", f"from {module} import main; main()", *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
            for args in arg_lists]


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[Result]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(Result(proc.returncode, out, err))
    return results


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate one process we started (by its pid), then kill it if it does not exit."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def write_class_lists(path: Path, classes: int, per_class: int, prefix: str = "class") -> Path:
    """A DCLIP-style ``{class: [text, ...]}`` file with distinct texts."""
    data = {f"{prefix} {c}": [f"{prefix} {c} has visual trait number {i}" for i in range(per_class)]
            for c in range(classes)}
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def store_fingerprint(home: Path, url: str | None = None) -> dict:
    """Every collection in a store: published snapshots with content hash and tags, and any others."""
    from kbuild.store import SnapshotStore

    store = SnapshotStore(home, url)
    snapshots = {s.name: (s.content_hash, tuple(s.tags)) for s in store.list()}
    collections = sorted(c.name for c in store.client.list_collections())
    return {"snapshots": snapshots, "collections": collections}


def run_kbuild(*args) -> Result:
    """Run ``kbuild`` in-process through the real error boundary, without pytest's capsys
    (usable from module-scoped fixtures)."""
    from kbuild.cli.app import app, run_with_boundary

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_with_boundary(app, "kbuild", [str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def killed_before_publish(monkeypatch):
    """Run the block as a write killed after its records are in, before its name is claimed.

    The stand-in for SIGKILL is a BaseException, which no ``except Exception`` in the code can
    swallow, so the pending collection stays behind exactly as after a real kill."""
    import pytest

    from kbuild.store import SnapshotStore

    class Killed(BaseException):
        pass

    def killed(*_args, **_kwargs):
        raise Killed()

    with monkeypatch.context() as patch:
        patch.setattr(SnapshotStore, "_claim_name", killed)
        with pytest.raises(Killed):
            yield
