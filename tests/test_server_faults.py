"""Servers that fail under a running command.

- The Chroma server is killed (SIGKILL) in the middle of a read and of a write: the command ends within
  seconds with one ``Error:`` line and exit 1; after ``chroma run`` restarts on the same path, the earlier
  snapshots are intact and verify, the killed write is invisible (no partial snapshot under a real name),
  and the same command then succeeds.
- The LLM server drops connections (before answering, or half-way through a body) or hangs: ``kbuild
  generate`` gives up within the bounds set by ``--timeout``/``--retries``, reports each failed class with
  its reason, publishes nothing, keeps every finished call in its cache, and the rerun pays only for the
  classes that failed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import forkserver
import pytest
from llm_server import FakeLLMServer, _Handler

from helpers import cli_env, start_chroma_server, stop_process, write_class_lists

SMALL_PAGES = {"kbuild.store.snapshots._PAGE": 5, "kbuild.store.snapshots._WRITE_BATCH": 20}
LOST = "Error: Lost the connection to the Chroma server at http://127.0.0.1:"


# ---- the Chroma server goes away --------------------------------------------------------------------
@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    return forkserver.shared(tmp_path_factory.mktemp("forks"))


def pending_collections(server_path: Path) -> int:
    """``kbuild-tmp-`` collections in a server's store, read-only from its SQLite file."""
    db = sqlite3.connect(f"file:{server_path / 'chroma.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT COUNT(*) FROM collections WHERE name LIKE 'kbuild-tmp-%'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def one_error_line(child, code: int) -> None:
    err = child.err.read_text()
    assert code == 1, (code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(LOST) and "nothing half-written was published" in err, err


class KillSwitch:
    """A TCP relay in front of ``chroma run`` that counts the HTTP requests it passes on and, when armed,
    SIGKILLs the server just before forwarding the n-th one: a server death at a chosen point of a command."""

    def __init__(self, path: Path):
        self.path, self.requests, self._armed = path, 0, None
        self.proc, self.upstream = None, None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def start_server(self) -> None:
        self.proc, self.upstream = start_chroma_server(self.path)

    def arm(self, n: int | None) -> None:
        self.requests, self._armed = 0, n

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            port = int(self.upstream.rsplit(":", 1)[1])
            try:
                server = socket.create_connection(("127.0.0.1", port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client:
                    self.requests += data.count(b" HTTP/1.1\r\n")
                    if self._armed is not None and self.requests >= self._armed:
                        self._armed = None
                        self.proc.kill()  # SIGKILL: the server dies as in a crash or an OOM kill
                        self.proc.wait(10)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        if self.proc is not None:
            stop_process(self.proc)


@pytest.mark.server
@pytest.mark.timeout(180)
def test_chroma_server_killed_mid_read_and_mid_write(forks, tmp_path, tiny_model):
    switch = KillSwitch(tmp_path / "server")
    switch.start_server()
    env = cli_env(KBUILD_STORE=str(tmp_path / "home"), KPL_CLIP_MODEL=tiny_model, KBUILD_CHROMA_URL=switch.url)

    def run(*args, prog="kbuild", patch=None):
        child = forks.run(prog, *args, env=env, patch=patch)
        return child, forks.wait(child, 60)

    def requests_of(*args) -> int:
        switch.arm(None)
        child, code = run(*args, patch=SMALL_PAGES)
        assert code == 0, child.err.read_text()
        return switch.requests

    try:
        for k, name in enumerate(("base", "big", "same size")):
            child, code = run("load", write_class_lists(tmp_path / f"{k}.json", 10, 30, name), "--json")
            assert code == 0, child.err.read_text()
        child, code = run(str(tmp_path / "home"), switch.url, prog="report")
        assert code == 0, child.err.read_text()
        before = json.loads(child.out.read_text())["snapshots"]
        assert sorted(before) == ["snapshot_v1", "snapshot_v2", "snapshot_v3"]

        # A read of 300 records in pages of 5: the server dies half-way through the pages.
        switch.arm(requests_of("export", "v2", "--format", "csv") // 2)
        child, code = run("export", "v2", "--format", "csv", patch=SMALL_PAGES)
        one_error_line(child, code)
        assert child.out.read_text() == "" and time.monotonic() - child.started < 20  # no partial export

        # A write of 300 records in batches of 20 (a load of the same size took n requests): killed half-way.
        switch.start_server()
        source = write_class_lists(tmp_path / "new.json", 10, 30, "new")
        switch.arm(requests_of("load", tmp_path / "2.json", "--force") // 2)
        child, code = run("load", source, "--json", patch=SMALL_PAGES)
        one_error_line(child, code)
        assert time.monotonic() - child.started < 20
        assert pending_collections(tmp_path / "server") == 1  # the killed write's pending collection

        # The same path served again: nothing half-written is visible, the rest is intact, a rerun works.
        switch.start_server()
        switch.arm(None)
        child, code = run(str(tmp_path / "home"), switch.url, prog="report")
        assert code == 0, child.err.read_text()
        report = json.loads(child.out.read_text())
        assert {n: h for n, h in report["snapshots"].items() if n in before} == before
        assert len(report["snapshots"]) == len(before) + 1  # the measuring load's snapshot_v4
        assert all(v["ok"] for v in report["verified"].values()), report["verified"]
        visible = [n for n in report["collections"] if not n.startswith(("kbuild-tmp-", "kbuild-tag-"))]
        assert set(visible) == set(report["snapshots"])
        child, code = run("load", source, "--json")
        assert code == 0, child.err.read_text()
        assert json.loads(child.out.read_text())["snapshot"] == "snapshot_v5"
        child, code = run("verify", "v5")
        assert code == 0, child.err.read_text()
    finally:
        switch.close()


# ---- the LLM server drops connections or hangs ----------------------------------------------------------
class FaultyLLMServer(FakeLLMServer):
    """The fake OpenAI server, plus classes whose requests are dropped, cut short, or never answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.drop: set[str] = set()      # close the connection without a response
        self.truncate: set[str] = set()  # send headers and part of the body, then close
        self.hang: set[str] = set()      # read the request and never answer
        self.unanswered: list[str] = []
        self._stopping = threading.Event()

    def start(self) -> "FaultyLLMServer":
        server = self

        class Handler(_Handler):
            fake = server

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                cls = server.class_of(json.loads(raw or b"{}"))
                for kind in ("drop", "truncate", "hang"):
                    if cls in getattr(server, kind):
                        server.unanswered.append(f"{kind}:{cls}")
                        return getattr(self, f"_{kind}")()
                import io

                self.rfile = io.BytesIO(raw)
                super().do_POST()

            def _drop(self) -> None:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def _truncate(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "4000")
                self.end_headers()
                self.wfile.write(b'{"id": "chatcmpl-cut", "choices": [{"message": {"role": "assis')
                self.wfile.flush()
                self._drop()

            def _hang(self) -> None:
                server._stopping.wait(60)
                self.close_connection = True

        super().start()
        self._httpd.RequestHandlerClass = Handler
        self._httpd.handle_error = lambda *args: None  # dropped connections are the point here
        return self

    def stop(self) -> None:
        self._stopping.set()
        super().stop()


CLASSES = ["melanoma", "nevus", "keratosis", "dermatofibroma", "angioma"]


@pytest.fixture()
def faulty():
    server = FaultyLLMServer(CLASSES, per_reply=4, api_key="sk-faults").start()
    yield server
    server.stop()


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_llm_server_dropping_and_hanging_is_bounded_reported_per_class_and_cached(faulty, clip_env, kbuild,
                                                                                 tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-faults")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    faulty.drop, faulty.truncate, faulty.hang = {"nevus"}, {"keratosis"}, {"dermatofibroma"}
    args = ["generate", "--classes", classes, "--base-url", faulty.url, "--per-class", "4", "--timeout", "1",
            "--retries", "1", "--backoff", "0.01", "--concurrency", "5"]
    started = time.monotonic()
    failed = kbuild(*args)
    elapsed = time.monotonic() - started
    # Bounded: a hung class costs (retries + 1) x --timeout plus backoff, and classes run side by side.
    assert elapsed < 15, elapsed
    assert failed.code == 1 and "Traceback" not in failed.err
    lines = failed.err.strip().splitlines()
    reasons = {line.split(": ", 2)[1]: line.split(": ", 2)[2] for line in lines if line.startswith("failed: ")}
    assert set(reasons) == {"nevus", "keratosis", "dermatofibroma"}, failed.err
    assert reasons["nevus"].startswith("connection failed") and "after 2 attempt(s)" in reasons["nevus"]
    assert "after 2 attempt(s)" in reasons["keratosis"]
    assert reasons["dermatofibroma"] == "timeout after 1 s after 2 attempt(s)"
    assert lines[-1].startswith("Error: 3 of 5 classes failed") and "rerunning the same command" in lines[-1]
    assert sorted(faulty.unanswered) == sorted([f"{k}:{c}" for k, c in (("drop", "nevus"), ("truncate", "keratosis"),
                                                                        ("hang", "dermatofibroma"))] * 2)
    assert kbuild("list", "--json").json() == []  # nothing published

    log = sqlite3.connect(clip_env / "llm" / "calls.sqlite")
    try:
        assert log.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ok = sorted(r[0] for r in log.execute("SELECT class_name FROM calls WHERE outcome = 'ok'"))
        errors = log.execute("SELECT COUNT(*) FROM calls WHERE outcome = 'error'").fetchone()[0]
    finally:
        log.close()
    assert ok == ["angioma", "melanoma"] and errors == 6

    faulty.drop, faulty.truncate, faulty.hang = set(), set(), set()
    done = kbuild(*args)
    assert done.code == 0, done.err
    assert "LLM calls: 3 made, 2 taken from cache" in done.err
    assert faulty.count("melanoma") == 1 and faulty.count("angioma") == 1  # the cache answered the rest
    assert kbuild("show", "latest", "--json").json()["manifest"]["counts"] == {c: 4 for c in CLASSES}
