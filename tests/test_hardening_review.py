"""Issue 23, items 7 and 8: a review save that survives a kill without publishing twice, and no
credential in any reply or log line of ``kbuild serve`` (the Chroma token echoed by a server's 500)."""

from __future__ import annotations

import json
import threading
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from kbuild.descriptions import Description
from kbuild.store import SnapshotStore
from kbuild.store.manifest import SnapshotDraft

CHROMA_TOKEN = "chroma-secret-token-5f2a9c"


def small_store(home):
    texts = [Description("cat", "whiskers"), Description("cat", "soft fur"), Description("dog", "wet nose")]
    SnapshotStore(home).publish(SnapshotDraft(texts, np.eye(3, 8, dtype=np.float32), "load", {},
                                              clip={"model_id": "t/r", "dim": 8}))
    return home


# ---- item 7 -----------------------------------------------------------------------------------------
def test_a_save_killed_before_the_draft_is_rewritten_does_not_publish_twice(tmp_path, monkeypatch):
    from kbuild.serve.drafts import DraftStore
    from kbuild.serve.service import ReviewService

    home = small_store(tmp_path / "store")
    service = ReviewService(SnapshotStore(home))
    who = {"snapshot": "v1", "reviewer": "ana"}
    draft = service.decide({**who, "version": 0, "decision": {"action": "reject", "class": "cat", "old": "soft fur"}})

    class Killed(BaseException):
        pass

    real_write = DraftStore._write

    def killed(*_args, **_kwargs):
        raise Killed()

    monkeypatch.setattr(DraftStore, "_write", killed)
    with pytest.raises(Killed):  # published, then killed before the tombstone is written
        service.save({**who, "version": draft["version"]})
    monkeypatch.setattr(DraftStore, "_write", real_write)
    assert [s.name for s in SnapshotStore(home).list()] == ["snapshot_v1", "snapshot_v2"]

    restarted = ReviewService(SnapshotStore(home))
    again = restarted.save({**who, "version": restarted.draft(who)["version"]})
    assert again["snapshot"] == "snapshot_v2"
    assert [s.name for s in SnapshotStore(home).list()] == ["snapshot_v1", "snapshot_v2"]
    assert restarted.draft(who)["saved_as"] == "snapshot_v2" and restarted.draft(who)["decisions"] == []


# ---- item 8 -----------------------------------------------------------------------------------------
class EchoingChroma(BaseHTTPRequestHandler):
    """Enough of Chroma's HTTP API for a client to connect; listing collections answers 500 with the
    request's Authorization header in the text, as a misconfigured server or proxy may."""

    def _send(self, status: int, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        if path.endswith("/heartbeat"):
            self._send(200, {"nanosecond heartbeat": 1})
        elif path.endswith("/pre-flight-checks"):
            self._send(200, {"max_batch_size": 1000})
        elif path.endswith("/auth/identity"):
            self._send(200, {"user_id": "", "tenant": "default_tenant", "databases": ["default_database"]})
        elif path.endswith("/collections"):
            self._send(500, {"error": "InternalError",
                             "message": f"request auth was {self.headers.get('Authorization')}"})
        elif "/databases/" in path or path.endswith("/tenants/default_tenant"):
            self._send(200, {"name": "default_database", "id": "00000000-0000-0000-0000-000000000000",
                             "tenant": "default_tenant"})
        else:
            self._send(404, {"error": "NotFound", "message": path})

    def log_message(self, *args):
        pass


@contextmanager
def echoing_chroma():
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingChroma)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_serve_masks_the_chroma_token_in_replies_and_log_lines(tmp_path, monkeypatch, capsys):
    from kbuild.serve import open_server

    monkeypatch.setenv("KBUILD_CHROMA_TOKEN", CHROMA_TOKEN)
    with echoing_chroma() as url:
        store = SnapshotStore(tmp_path / "home", url=url, token=CHROMA_TOKEN)
        server = open_server(store, "127.0.0.1", 0, token="serve-test-token-0123456789")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            port = server.server_address[1]
            with pytest.raises(urllib.request.HTTPError) as err:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/snapshots", timeout=30)
            body = err.value.read().decode()
        finally:
            server.shutdown()
            server.server_close()
    logged = capsys.readouterr().err
    assert err.value.code >= 400 and "error" in json.loads(body)
    assert "request auth was" in body  # the server's own words still reach the page ...
    assert CHROMA_TOKEN not in body and CHROMA_TOKEN not in logged  # ... without the token
