"""``kbuild serve`` under clients that misbehave: idle and half-sent connections, too many of them,
malformed or huge request lines, rebinding Host names, control characters in paths.

Reproduced before this change: 300 partial connections held 312 threads and blocked shutdown until
they left; a malformed request line or a >64 KB URL got an empty reply and an AttributeError in the
log; with ``--host 0.0.0.0`` any Host was served and reads needed no token; 431/501 replies lacked
the security headers; a 20 000-character description could not be reviewed.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from kbuild.descriptions import Description
from kbuild.ops.review import Decision
from kbuild.store import SnapshotStore
from kbuild.store.manifest import SnapshotDraft

TOKEN = "hardening-test-token-0123456789"
SECURITY = ("x-content-type-options: nosniff", "x-frame-options: deny", "referrer-policy: no-referrer")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve") / "store"
    vectors = np.eye(3, 8, dtype=np.float32)
    texts = [Description("cat", "whiskers"), Description("cat", "x" * 20_000), Description("dog", "wet nose")]
    SnapshotStore(home).publish(SnapshotDraft(texts, vectors, "load", {}, clip={"model_id": "t/r", "dim": 8}))
    return home


@contextmanager
def serving(home, host="127.0.0.1", **limits):
    from kbuild.serve import open_server

    server = open_server(SnapshotStore(home), host, 0, token=TOKEN, **limits)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
    return sock


def _exchange(server, raw: bytes) -> str:
    """Send raw bytes, read the whole reply (the server closes after an error)."""
    with _connect(server) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


def _get(server, path: str, host: str | None = None, token: str | None = None) -> tuple[int, str]:
    port = server.server_address[1]
    headers = f"Host: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\n"
    if token:
        headers += f"X-Kbuild-Token: {token}\r\n"
    reply = _exchange(server, f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode())
    return int(reply.split(" ", 2)[1]), reply


@pytest.mark.slow
def test_idle_and_partial_connections_time_out(home):
    with serving(home, timeout_s=0.5) as server:
        idle = [_connect(server) for _ in range(3)]
        partial = _connect(server)
        partial.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1")
        time.sleep(1.5)
        for sock in [*idle, partial]:
            sock.settimeout(2)
            assert sock.recv(1024) == b""  # the server hung up
            sock.close()
        assert len(server.connections) == 0


def test_connections_over_the_cap_get_a_503_with_security_headers(home):
    from test_serve_bounds import _hold_busy

    with serving(home, timeout_s=5, max_connections=3) as server:
        release, held = _hold_busy(server, 3)  # every place busy answering (idle ones would make room)
        reply = _exchange(server, b"GET /api/info HTTP/1.1\r\n\r\n").lower()
        assert reply.startswith("http/1.1 503") and all(h in reply for h in SECURITY)
        release.set()
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert _get(server, "/api/info")[0] == 200  # slots come back when clients leave


def test_shutdown_does_not_wait_for_idle_or_partial_clients(home):
    from kbuild.serve import open_server

    server = open_server(SnapshotStore(home), "127.0.0.1", 0, token=TOKEN, timeout_s=30)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    clients = [_connect(server) for _ in range(20)]
    for sock in clients[:10]:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1")  # never finished
    time.sleep(0.3)
    started = time.monotonic()
    server.shutdown()
    server.server_close()
    assert time.monotonic() - started < 5, "server_close waited for clients that never finish"
    for sock in clients:
        sock.close()


@pytest.mark.slow
def test_sigterm_stops_kbuild_serve_with_idle_clients_attached(home):
    import signal
    import subprocess
    import sys

    from helpers import REPO, cli_env, free_port, stop_process

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from kbuild.cli import main; main()", "serve", "--store", str(home),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=REPO)
    try:
        assert "kbuild serve: http://127.0.0.1:" in proc.stdout.readline()
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
        clients[0].sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        for sock in clients:
            sock.close()
    finally:
        stop_process(proc)


@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n", 431),
    (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
])
def test_stdlib_errors_are_json_with_security_headers_and_log_one_line(home, capsys, raw, status):
    with serving(home) as server:
        reply = _exchange(server, raw)
    head = reply.lower()
    assert head.startswith(f"http/1.0 {status}") or head.startswith(f"http/1.1 {status}"), reply[:200]
    assert all(h in head for h in SECURITY) and "content-security-policy" in head
    assert '{"error": ' in reply
    err = capsys.readouterr().err
    assert "Traceback" not in err and "AttributeError" not in err


def test_request_paths_are_logged_with_control_characters_escaped(home, capsys):
    with serving(home) as server:
        status, _ = _get(server, "/nope\x1b[31mred\x07")
    assert status == 404
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b[31mred\\x07" in err


def test_beyond_loopback_the_host_is_checked_and_reads_need_the_token(home):
    with serving(home, host="0.0.0.0", allowed_hosts=("kb.lab.example",)) as server:
        port = server.server_address[1]
        assert _get(server, "/api/snapshots", host=f"rebind.attacker.example:{port}", token=TOKEN)[0] == 403
        assert _get(server, "/api/snapshots", host=f"127.0.0.1:{port}")[0] == 403  # no token
        assert _get(server, "/api/snapshots/snapshot_v1", host=f"10.1.2.3:{port}")[0] == 403
        assert _get(server, "/api/snapshots", host=f"10.1.2.3:{port}", token=TOKEN)[0] == 200
        assert _get(server, f"/api/snapshots?token={TOKEN}", host=f"kb.lab.example:{port}")[0] == 200
        assert _get(server, "/", host=f"10.1.2.3:{port}")[0] == 200  # the app shell holds no data
        assert _get(server, "/api/snapshots", host=f"10.1.2.3:{port + 1}", token=TOKEN)[0] == 403


def test_on_loopback_reads_stay_open_and_rebinding_names_are_refused(home):
    with serving(home) as server:
        port = server.server_address[1]
        assert _get(server, "/api/snapshots")[0] == 200
        assert _get(server, "/api/snapshots", host=f"rebind.attacker.example:{port}")[0] == 403
        assert _get(server, "/api/snapshots", host=f"10.1.2.3:{port}")[0] == 403


def test_a_20000_character_description_can_be_reviewed():
    decision = Decision.from_json({"action": "reject", "class": "cat", "old": "x" * 20_000, "who": "alice"})
    assert decision.old == "x" * 20_000
