"""A fork server for crash and concurrency trials: real ``kbuild`` processes without the import cost.

``python tests/forkserver.py`` imports torch, open_clip, chromadb, langchain and kbuild once, then
forks one child per request; each child runs the real CLI (``run_with_boundary``, the code path of
the console script) with its own environment and stdout/stderr files, and leaves with ``os._exit``.
The children are separate processes, so a SIGKILL hits them exactly as it hits a user's ``kbuild``;
only the 4-6 s of imports are paid once instead of once per trial.

The parent (``ForkServer``) talks to it over pipes, one JSON line per request:
``{"op": "run", "prog": "kbuild", "argv": [...], "env": {...}, "patch": {...}, "out": PATH, "err": PATH}``
-> ``{"pid": N}``; besides ``kbuild`` and ``kpl``, ``prog`` may be ``report`` (``store_report``) or
``reader`` (``reader_loop``), checks that run as fresh processes too;
``{"op": "wait", "pid": N, "block": bool}`` -> ``{"code": rc or None}`` (a killed child gives ``-9``).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRELOAD = ("numpy", "torch", "open_clip", "chromadb", "chromadb.api.rust", "langchain_openai", "openai",
           "kbuild.cli.app", "kbuild.clip.models", "kbuild.store", "kbuild.sources.llm.generate", "kbuild.ops.prune",
           "kbuild.ops.load", "kpl.cli")


# ---- the server side (runs in its own process) ---------------------------------------------------
def _child(request: dict) -> None:
    code = 70
    try:
        fd_out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd_err = os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        if request.get("env") is not None:  # like subprocess's env=: the whole environment
            os.environ.clear()
            os.environ.update(request["env"])
        for target, value in request.get("patch", {}).items():  # e.g. smaller write batches
            module, _, attribute = target.rpartition(".")
            setattr(importlib.import_module(module), attribute, value)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = _dispatch(request["prog"], request["argv"])
    except BaseException:  # noqa: BLE001 - a crash of the harness itself must show up as a code
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _dispatch(prog: str, argv: list[str]) -> int:
    from kbuild.cli.app import app, run_with_boundary

    if prog == "report":
        return store_report(*argv)
    if prog == "reader":
        return reader_loop(*argv)
    if prog == "kpl":
        from kpl.cli import app
    return run_with_boundary(app, prog, argv)


def _capture(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    from kbuild.cli.app import app, run_with_boundary

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_with_boundary(app, "kbuild", argv)
    return code, out.getvalue(), err.getvalue()


def store_report(home: str, url: str = "", cli_verify: str = "") -> int:
    """Print (JSON) what a fresh process sees in a store: every collection, the published snapshots with
    their content hashes (``kbuild list --json``), the tags, and the verification of every snapshot:
    the core check ``kbuild verify`` runs (``kbuild.ops.inspect.verify``), or with ``cli_verify`` the command itself."""
    from kbuild.ops.inspect import verify
    from kbuild.store import SnapshotStore

    where = ["--store", home] + (["--chroma-url", url] if url else [])
    store = SnapshotStore(Path(home), url or None)
    collections = {c.name: (c.metadata or {}).get("kbuild_kind") for c in store.client.list_collections()}
    code, out, err = _capture(["list", "--json", *where])
    if code != 0:
        print(json.dumps({"error": err}))
        return 1
    listed = json.loads(out)
    verified = {}
    for s in listed:
        if cli_verify:
            code, out, err = _capture(["verify", s["name"], "--json", *where])
            verified[s["name"]] = {"ok": code == 0 and json.loads(out)["ok"], "err": err.strip()}
        else:
            result = verify(store.read(s["name"]))
            verified[s["name"]] = {"ok": result.ok, "err": "; ".join(result.problems)}
    print(json.dumps({"collections": collections, "tags": store.tags(),
                      "snapshots": {s["name"]: s["manifest"]["content_hash"] for s in listed},
                      "verified": verified}))
    return 0


def reader_loop(home: str, url: str, stop_file: str, limit_s: str = "120") -> int:
    """Poll a store like a user would while others write to it, until ``stop_file`` exists (or ``limit_s``).

    Each round: ``kbuild list --json``; every snapshot seen before must still be there with the same
    content hash; every new one must pass ``kbuild verify`` and export all its descriptions; ``latest``
    must resolve. Prints (JSON) what was seen and every problem found.
    """
    where = ["--store", home] + (["--chroma-url", url] if url else [])
    seen: dict[str, str] = {}
    counts: list[int] = []
    problems: list[str] = []
    deadline = time.monotonic() + float(limit_s)
    while True:
        stopping = Path(stop_file).exists() or time.monotonic() > deadline
        code, out, err = _capture(["list", "--json", *where])
        if code != 0:
            problems.append(f"list: {err.strip()}")
        else:
            listed = {s["name"]: s["manifest"] for s in json.loads(out)}
            counts.append(len(listed))
            problems += [f"{name} changed or vanished" for name, content_hash in seen.items()
                         if listed.get(name, {}).get("content_hash") != content_hash]
            for name in sorted(listed.keys() - seen.keys()):
                problems += _check_new(name, listed[name], where)
                seen[name] = listed[name]["content_hash"]
            if listed:
                code, out, err = _capture(["show", "latest", "--json", *where])
                if code != 0:
                    problems.append(f"show latest: {err.strip()}")
        if stopping:
            break
    print(json.dumps({"seen": seen, "counts": counts, "problems": problems}))
    return 0


def _check_new(name: str, manifest: dict, where: list[str]) -> list[str]:
    code, out, err = _capture(["verify", name, "--json", *where])
    if code != 0:
        return [f"verify {name}: {err.strip()}"]
    code, out, err = _capture(["export", name, "--format", "dclip", *where])
    if code != 0:
        return [f"export {name}: {err.strip()}"]
    texts = sum(len(items) for items in json.loads(out).values())
    return [] if texts == manifest["total"] else [f"export {name}: {texts} texts, manifest says {manifest['total']}"]


def serve() -> None:
    for name in PRELOAD:
        __import__(name)  # kbuild.cli.app among them: it builds the app with every command
    reply = sys.stdout
    reply.write("ready\n")
    reply.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            reply.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer = {"pid": pid}
        else:
            pid, status = os.waitpid(request["pid"], 0 if request.get("block") else os.WNOHANG)
            answer = {"code": None if pid == 0 else os.waitstatus_to_exitcode(status)}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


# ---- the client side (runs in the test process) ----------------------------------------------------
@dataclass
class Child:
    pid: int
    out: Path
    err: Path
    started: float
    code: int | None = None


class ForkServer:
    """Start with ``ForkServer(workdir)``; ``run`` starts a child, ``kill``/``wait`` end it; ``close`` at the end."""

    def __init__(self, workdir: Path, env: dict[str, str], timeout_s: float = 120.0):
        self.workdir, self.counter = Path(workdir), 0
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=HERE.parent)
        line = self._readline(timeout_s)
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"fork server did not start: {line!r}")

    def _readline(self, timeout_s: float) -> str:
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                raise TimeoutError("fork server did not answer")
        return self.proc.stdout.readline()

    def _ask(self, request: dict, timeout_s: float = 30.0) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._readline(timeout_s))

    def run(self, prog: str, *argv, env: dict | None = None, patch: dict | None = None) -> Child:
        """Start ``prog argv`` in a fresh child with environment ``env`` (default: the server's own);
        ``patch`` sets module attributes there first (``{"kbuild.store.snapshots._WRITE_BATCH": 40}``),
        the way ``monkeypatch.setattr`` would."""
        self.counter += 1
        out, err = self.workdir / f"{self.counter}.out", self.workdir / f"{self.counter}.err"
        pid = self._ask({"op": "run", "prog": prog, "argv": [str(a) for a in argv], "env": env,
                         "patch": patch or {}, "out": str(out), "err": str(err)})["pid"]
        return Child(pid, out, err, time.monotonic())

    def poll(self, child: Child) -> int | None:
        if child.code is None:  # once reaped, the pid is no longer ours to ask about
            child.code = self._ask({"op": "wait", "pid": child.pid, "block": False})["code"]
        return child.code

    def wait(self, child: Child, timeout_s: float = 120.0) -> int:
        """The child's exit code; a child still running after ``timeout_s`` is killed (code -9)."""
        deadline = time.monotonic() + timeout_s
        while (code := self.poll(child)) is None:
            if time.monotonic() > deadline:
                self.kill(child)
                child.code = self._ask({"op": "wait", "pid": child.pid, "block": True})["code"]
                return child.code
            time.sleep(0.01)
        return code

    def kill(self, child: Child) -> None:
        # Until the server reaps it, a finished child stays a zombie holding its pid: never another process.
        if child.code is None:
            os.kill(child.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


_shared: ForkServer | None = None


def shared(workdir: Path) -> ForkServer:
    """One fork server for the whole test session (its start-up costs the imports once)."""
    global _shared
    if _shared is None or _shared.proc.poll() is not None:
        from helpers import cli_env

        _shared = ForkServer(workdir, cli_env())
        atexit.register(_shared.close)
    return _shared


if __name__ == "__main__":
    serve()
