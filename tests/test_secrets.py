"""Secrets and untrusted files.

- With ``OPENAI_API_KEY`` and ``KBUILD_CHROMA_TOKEN`` set, a whole session (generate with retried faults,
  load, prune, tag, list/show/diff/verify/path, every export format, ``kpl eval --out``, the ``kbuild serve``
  start line and API, error paths) leaves neither value in any file under the store home (read as bytes:
  Chroma's SQLite and index files, the caches, the LLM call log), in the result folder or in any output.
- A Chroma server (or proxy) that echoes the token in its refusal, and any exception whose text carries
  a secret, still give one ``Error:`` line without it.
- Curated, features and classes files are data only: a YAML file with a python tag, a pickle, and a
  features file holding a pickled object are refused without running anything.
  (Checkpoints that would run code on load are refused in ``test_encoder.py``.)
"""

from __future__ import annotations

import json
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from llm_server import FakeLLMServer
from test_kpl_features import make_image_folder

KEY = "sk-proj-SECRET-key-4e1d7a99c0b2"
TOKEN = "chroma-SECRET-token-93b0e51f7a"
SECRETS = (KEY, TOKEN)
CLASSES = ["melanoma", "nevus", "keratosis"]


@pytest.fixture()
def secret_env(clip_env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("KBUILD_CHROMA_TOKEN", TOKEN)
    for name in ("OPENAI_BASE_URL", "KBUILD_LLM_MODEL", "KBUILD_PROMPTS_DIR", "KPL_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    return clip_env


def files_holding(folder: Path, secrets=SECRETS) -> list[str]:
    """Every file under ``folder`` whose bytes contain a secret (as UTF-8 or UTF-16, as SQLite may store it)."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for secret in secrets:
            if any(secret.encode(codec) in data for codec in ("utf-8", "utf-16-le", "utf-16-be")):
                found.append(f"{path.relative_to(folder)}: {secret}")
    return found


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_no_secret_reaches_the_store_caches_logs_exports_or_output(secret_env, kbuild, kpl, tmp_path, monkeypatch):
    home = secret_env
    outputs: list[str] = []

    def ok(result):
        assert result.code == 0, result.err
        outputs.extend((result.out, result.err))
        return result

    server = FakeLLMServer(CLASSES, per_reply=4, api_key=KEY).start()
    try:
        server.add_fault("500", cls="melanoma")
        server.add_fault("malformed", cls="nevus")
        classes = tmp_path / "classes.txt"
        classes.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
        ok(kbuild("generate", "--classes", classes, "--base-url", server.url, "--per-class", "4", "--timeout", "5",
                  "--backoff", "0.01", "--json"))
        assert {c.auth for c in server.calls} == {f"Bearer {KEY}"}  # the key was used, so it could leak
    finally:
        server.stop()
    curated = tmp_path / "kb.json"
    curated.write_text(json.dumps({c: [f"{c} trait {i}" for i in range(5)] + [f"{c} trait 0."] for c in CLASSES}))
    ok(kbuild("load", curated))
    ok(kbuild("prune", "v2", "--dedup-threshold", "0.9"))
    ok(kbuild("tag", "v3", "reviewed"))
    for command in (("list", "--json"), ("list",), ("show", "v3", "--json"), ("show", "v3", "--removed"),
                    ("diff", "v2", "v3", "--json"), ("verify", "v1", "--json"), ("path", "--json")):
        ok(kbuild(*command))
    for fmt in ("json", "csv", "dclip"):
        ok(kbuild("export", "reviewed", "--format", fmt))
        ok(kbuild("export", "v1", "--format", fmt, "-o", home / f"export.{fmt}"))
    images = make_image_folder(tmp_path / "images", per_class=2, classes={c: (40 * i, 90, 200 - 40 * i)
                                                                          for i, c in enumerate(CLASSES)})
    ok(kpl("eval", "--kb", "v2", "--data", images, "--out", tmp_path / "results", "--iters", "50"))
    for bad in (("show", "v99"), ("load", tmp_path / "missing.json"), ("prune", "v1", "--dedup-threshold", "2")):
        result = kbuild(*bad)
        assert result.code in (1, 2)
        outputs.extend((result.out, result.err))

    from kbuild.serve.server import KbuildHTTPServer

    def stop_at_once(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(KbuildHTTPServer, "serve_forever", stop_at_once)
        started = ok(kbuild("serve", "--port", "0"))
        assert "?token=" in started.out
    outputs.append(served_pages(home))

    for text in outputs:
        for secret in SECRETS:
            assert secret not in text
    assert files_holding(home) == []
    assert files_holding(tmp_path / "results") == []
    # ... and the files that could have held them were there to search: call log, store, both caches.
    assert (home / "llm" / "calls.sqlite").is_file() and (home / "chroma" / "chroma.sqlite3").is_file()
    assert (home / "cache" / "text_embeddings.sqlite").is_file() and any((home / "cache" / "features").iterdir())


def served_pages(home: Path) -> str:
    """What ``kbuild serve``'s API hands out about the store."""
    import urllib.request

    from kbuild.serve import ServeOptions, open_server
    from kbuild.store import SnapshotStore

    server = open_server(SnapshotStore(home), "127.0.0.1", 0, ServeOptions(None, None), token="t" * 32)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = server.url.split("?")[0].rstrip("/")
        pages = [urllib.request.urlopen(f"{base}{path}", timeout=30).read().decode("utf-8")
                 for path in ("/api/info", "/api/snapshots", "/api/snapshots/v1", "/api/snapshots/v3")]
    finally:
        server.shutdown()
        server.server_close()
    return "\n".join(pages)


# ---- servers that echo the secret back --------------------------------------------------------------------
class EchoingChroma(BaseHTTPRequestHandler):
    """Enough of Chroma's HTTP API to connect, then a refusal that repeats the token it was sent."""

    seen: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        path = self.path.split("?")[0]
        if path.endswith(("/heartbeat",)):
            self._send(200, {"nanosecond heartbeat": 1})
        elif path.endswith("/auth/identity"):
            self._send(200, {"user_id": "u", "tenant": "default_tenant", "databases": ["default_database"]})
        elif "/collections" not in path and "/databases/" in path:
            self._send(200, {"id": "00000000-0000-0000-0000-000000000001", "name": "default_database",
                             "tenant": "default_tenant"})
        elif "/collections" not in path and "/tenants/" in path:
            self._send(200, {"name": "default_tenant"})
        else:
            self._send(403, {"error": "AuthorizationError", "message": f"token {auth} may not read {path}"})

    do_POST = do_GET

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_server_echoing_the_token_gets_one_line_without_it(secret_env, kbuild):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EchoingChroma)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        for command in (("list",), ("show", "latest"), ("export", "v1")):
            result = kbuild(*command, "--chroma-url", url)
            assert result.code == 1 and "Traceback" not in result.err
            assert result.err.count("\n") == 1 and result.err.startswith("Error: The Chroma server"), result.err
            assert "refused access" in result.err and "KBUILD_CHROMA_TOKEN" in result.err
            assert TOKEN not in result.err + result.out
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert f"Bearer {TOKEN}" in EchoingChroma.seen  # the token was sent, and was echoed back


def test_any_error_carrying_a_secret_is_masked_at_the_boundary(secret_env, monkeypatch, capsys):
    import kbuild.cli.cmd_inspect as inspect_commands
    from kbuild.cli.app import app, run_with_boundary

    def leaky(*args, **kwargs):
        raise RuntimeError(f"upstream said: bad credentials {KEY} / {TOKEN}")

    monkeypatch.setattr(inspect_commands, "open_store", leaky)
    code = run_with_boundary(app, "kbuild", ["list"])
    err = capsys.readouterr().err
    assert code == 1 and err == "Error: unexpected RuntimeError: upstream said: bad credentials *** / *** " \
                                 "(set KBUILD_DEBUG=1 for the traceback)\n"


# ---- untrusted files are data ----------------------------------------------------------------------------
class Trap:
    """Unpickling this runs code: it creates the file it names."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_curated_and_features_files_are_parsed_as_data_only(secret_env, kbuild, kpl, tmp_path):
    marker = tmp_path / "code-ran"
    yaml_file = tmp_path / "kb.yaml"
    yaml_file.write_text(f"cat: !!python/object/apply:pathlib.Path.touch ['{marker}']\ndog: [fur]\n")
    pickle_file = tmp_path / "kb.pkl"
    pickle_file.write_bytes(pickle.dumps({"cat": [Trap(marker)]}))
    for path, extra in ((yaml_file, ()), (pickle_file, ()), (pickle_file, ("--format", "dclip")),
                        (pickle_file, ("--format", "jsonl")), (yaml_file, ("--format", "csv"))):
        result = kbuild("load", path, *extra)
        assert result.code in (1, 2) and result.err.startswith("Error: ") and result.err.count("\n") == 1, result.err
        assert not marker.exists(), f"loading {path.name} {extra} ran code"
    assert kbuild("list", "--json").json() == []

    (tmp_path / "kb.json").write_text(json.dumps({"cat": ["fur", "whiskers"], "dog": ["tail"]}))
    assert kbuild("load", tmp_path / "kb.json").code == 0
    features = tmp_path / "f.npz"
    np.savez(features, image_features=np.eye(2, 64, dtype=np.float32), labels=np.array([0, 1]),
             class_names=np.array([Trap(marker), "dog"], dtype=object))
    result = kpl("eval", "--kb", "v1", "--features", features)
    assert result.code == 1 and "without pickle" in result.err.splitlines()[-1], result.err
    assert not marker.exists()
