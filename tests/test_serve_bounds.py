"""``kbuild serve`` under load and slow or rude clients (issue 23, item 12 and two of item 18).

Reproduced before this change: 64 connections sending one header byte every 10 s locked every other
client out (503) for as long as they trickled, because the timeout was per recv, not per request;
200 concurrent GETs of a big snapshot got TCP resets instead of 503s and read the snapshot from the
store once per request; a client resetting its connection printed BrokenPipe/ConnectionReset
tracebacks; ``--port 80`` refused browsers that leave ":80" out of the Host header.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import numpy as np
import pytest
from test_hardening_serve import _connect, _get, serving

from kbuild.descriptions import Description
from kbuild.store import SnapshotStore
from kbuild.store.manifest import SnapshotDraft


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One snapshot of 3000 descriptions of ~300 characters: a reply of about a megabyte."""
    home = tmp_path_factory.mktemp("serve_bounds") / "store"
    texts = [Description(f"class {i % 30}", f"trait {i} " + "y" * 300) for i in range(3000)]
    vectors = np.zeros((3000, 8), dtype=np.float32)
    vectors[np.arange(3000), np.arange(3000) % 8] = 1.0
    SnapshotStore(home).publish(SnapshotDraft(texts, vectors, "load", {}, clip={"model_id": "t/r", "dim": 8}))
    return home


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    for byte in data:
        if stop.is_set():
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        stop.wait(every)


def test_a_trickling_request_is_dropped_at_its_deadline_not_per_byte(home):
    with serving(home, timeout_s=1.0) as server:
        sock = _connect(server)
        stop = threading.Event()
        sender = threading.Thread(target=_trickle, args=(sock, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n", 0.2,
                                                          stop), daemon=True)
        started = time.monotonic()
        sender.start()
        try:
            sock.settimeout(8)
            assert sock.recv(1024) == b""  # the server hung up on the unfinished request
            assert time.monotonic() - started < 3.0, "a byte every 0.2 s kept a 1 s request deadline from firing"
        finally:
            stop.set()
            sock.close()


def test_trickling_clients_cannot_lock_others_out(home):
    with serving(home, timeout_s=30, max_connections=4) as server:
        stop = threading.Event()
        slow = [_connect(server) for _ in range(4)]
        for sock in slow:
            threading.Thread(target=_trickle, args=(sock, b"GET / HTTP/1.1\r\nHost: 127.0.0.1", 0.5, stop),
                             daemon=True).start()
        time.sleep(0.3)
        try:
            assert _get(server, "/api/info")[0] == 200  # the slowest partial request made room
        finally:
            stop.set()
            for sock in slow:
                sock.close()


def _hold_busy(server, count: int):
    """``count`` requests kept busy inside the handler until the returned event is set."""
    release, entered = threading.Event(), threading.Semaphore(0)
    info = server.service.info

    def slow_info():
        entered.release()
        release.wait(20)
        return info()

    server.service.info = slow_info
    port = server.server_address[1]
    socks = []
    for _ in range(count):
        sock = _connect(server)
        sock.sendall(f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        socks.append(sock)
    for _ in range(count):
        assert entered.acquire(timeout=10)
    return release, socks


def test_over_the_cap_a_full_request_gets_a_503_not_a_reset(home):
    with serving(home, timeout_s=5, max_connections=2) as server:
        release, busy = _hold_busy(server, 2)
        try:
            for _ in range(5):
                with _connect(server) as sock:
                    sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 2000 + b"\r\n\r\n")
                    time.sleep(0.2)  # the refusal arrives while the request is still unread
                    reply = _read_all(sock)  # a reset raises ConnectionResetError here
                assert reply.startswith(b"HTTP/1.1 503"), reply[:100]
        finally:
            release.set()
            for sock in busy:  # the held requests finish normally
                assert b" 200 " in _read_all(sock).split(b"\r\n", 1)[0]
                sock.close()


def test_concurrent_reads_of_one_snapshot_read_the_store_once(home):
    with serving(home) as server:
        store = server.service.store
        calls = []
        real_read = store.read

        def counted(*args, **kwargs):
            calls.append(args)
            time.sleep(0.3)  # long enough for the other requests to arrive meanwhile
            return real_read(*args, **kwargs)

        store.read = counted
        port = server.server_address[1]
        replies: list[int] = []

        def fetch():
            replies.append(_get(server, "/api/snapshots/snapshot_v1", host=f"127.0.0.1:{port}")[0])

        threads = [threading.Thread(target=fetch) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert replies == [200] * 12
        assert len(calls) == 1, f"the snapshot was read {len(calls)} times for 12 concurrent requests"


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a browser tab that is closed mid-download."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_reset_their_connection_leave_no_traceback(home, capfd):
    with serving(home) as server:
        port = server.server_address[1]
        assert _get(server, "/api/snapshots/snapshot_v1")[0] == 200  # cached: replies start at once
        for _ in range(10):
            sock = _connect(server)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /api/snapshots/snapshot_v1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            sock.recv(100)  # the reply has started; about a megabyte is still to come
            _reset(sock)
        for _ in range(10):  # and half-sent requests reset before their end
            sock = _connect(server)
            sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127")
            _reset(sock)
        time.sleep(0.5)
        assert _get(server, "/api/info")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err[-2000:]


def test_port_80_accepts_a_host_header_without_the_port():
    from kbuild.serve.server import host_headers

    assert {"127.0.0.1", "127.0.0.1:80", "localhost", "localhost:80"} <= host_headers({"127.0.0.1", "localhost"}, 80)
    assert "localhost" not in host_headers({"localhost"}, 8080)  # elsewhere the port is part of the name
