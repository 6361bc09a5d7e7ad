"""`kbuild serve` without a browser: the review core, drafts, the JSON API and its guards, reports,
and the command's start-up and shutdown. The server runs in-process on a free port (port 0) over a
real embedded store built with the tiny CLIP; one test runs the real command as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, cli_env, start_chroma_server, stop_process
from kbuild.ops.review import Decision, ReviewError, apply_review
from kbuild.serve.drafts import DraftStore, StaleDraft

TOKEN = "test-token-123"
KB = {"cat": ["whiskers on the muzzle", "pointed ears", "a long tail"],
      "dog": ["floppy ears", "a wet nose", "a wagging tail"]}


# ---- helpers -------------------------------------------------------------------------------
@contextmanager
def running(home: Path, results: Path | None = None, model: str | None = None, url: str | None = None):
    """The app on 127.0.0.1 with a free port, serving from a thread; yields its base URL."""
    from kbuild.serve import ServeOptions, open_server
    from kbuild.store import SnapshotStore

    server = open_server(SnapshotStore(home, url), "127.0.0.1", 0, ServeOptions(results, model), token=TOKEN)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url.rstrip("/")
    finally:
        server.shutdown()
        server.server_close()


def call(url: str, body: dict | None = None, headers: dict | None = None, token: str | None = TOKEN):
    """(status, JSON or text, headers) of a GET, or of a JSON POST when ``body`` is given."""
    sent = {"Content-Type": "application/json"} if body is not None else {}
    if body is not None and token is not None:
        sent["X-Kbuild-Token"] = token
    sent.update(headers or {})
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=sent, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        status, raw, got = err.code, err.read(), err.headers
    text = raw.decode("utf-8")
    kind = got.get("Content-Type", "")
    return status, (json.loads(text) if kind.startswith("application/json") else text), got


def decision(action: str, cls: str, old: str | None = None, new: str | None = None, comment: str = "") -> dict:
    return {"action": action, "class": cls, "old": old, "new": new, "comment": comment}


@pytest.fixture()
def home(clip_env, kbuild, tmp_path) -> Path:
    """A store with snapshot_v1 loaded from KB."""
    path = tmp_path / "kb.json"
    path.write_text(json.dumps(KB))
    assert kbuild("load", path).code == 0
    return clip_env


# ---- the review core -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedder(tiny_model):
    from kbuild.clip.models import load_clip
    from kbuild.clip.text import TextEmbedder

    return TextEmbedder(load_clip(tiny_model, None), None)


def parent_kb(embedder):
    from kbuild.descriptions import Description
    from kbuild.store import KnowledgeBase, SnapshotInfo

    descs = [Description(c, t, "curated:kb.json") for c, texts in KB.items() for t in texts]
    template = "a photo of a {}, which has {}"
    clip = {**embedder.clip.describe(), "template": template}
    info = SnapshotInfo("snapshot_v1", {"clip": clip, "content_hash": "sha256:x"})
    return KnowledgeBase(info, descs, embedder.embed_descriptions(descs, template))


def stamped(action, cls, old=None, new=None, comment="", who="alice") -> Decision:
    return Decision.from_json({**decision(action, cls, old, new, comment), "who": who, "when": "2026-01-01T00:00:00"})


def test_apply_review_rejects_edits_adds_and_reuses_parent_vectors(embedder):
    parent = parent_kb(embedder)
    decisions = [stamped("reject", "dog", "a wet nose", comment="not visual"),
                 stamped("edit", "cat", "pointed ears", "tall  pointed ears"),
                 stamped("accept", "dog", "floppy ears", who="bob"),
                 stamped("add", "cat", new="green eyes")]
    draft = apply_review(parent, decisions, lambda: embedder)
    texts = [(d.class_name, d.text) for d in draft.descriptions]
    assert texts == [("cat", "whiskers on the muzzle"), ("cat", "tall pointed ears"), ("cat", "a long tail"),
                     ("dog", "floppy ears"), ("dog", "a wagging tail"), ("cat", "green eyes")]
    assert [(r.description.text, r.stage, r.reason) for r in draft.removed] == [
        ("a wet nose", "review", "rejected by alice: not visual")]
    rows = {(d.class_name, d.text): i for i, d in enumerate(parent.descriptions)}
    # Unchanged texts keep the parent's vectors bit for bit; new ones come from the parent's model + template.
    for i, d in enumerate(draft.descriptions):
        if (d.class_name, d.text) in rows:
            assert np.array_equal(draft.embeddings[i], parent.embeddings[rows[(d.class_name, d.text)]])
    fresh = embedder.embed_descriptions(draft.descriptions[1:2], parent.info.manifest["clip"]["template"])
    assert np.allclose(draft.embeddings[1], fresh[0], atol=1e-6)
    assert draft.operation == "review" and draft.parents == ["snapshot_v1"]
    assert draft.parameters == {"reviewers": ["alice", "bob"], "decisions": {"accept": 1, "reject": 1, "edit": 1, "add": 1}}
    log = draft.extra["review"]
    assert log[1] == {"who": "alice", "when": "2026-01-01T00:00:00", "action": "edit", "class": "cat",
                      "old": "pointed ears", "new": "tall pointed ears", "comment": ""}
    assert draft.descriptions[1].source == "review:alice"
    assert draft.descriptions[1].extra["review"]["original_text"] == "pointed ears"
    assert draft.descriptions[3].extra["review"]["by"] == "bob"
    draft.validate()


def test_apply_review_without_new_texts_never_loads_a_model(embedder):
    def no_model():
        raise AssertionError("a review without edits or additions must not load CLIP")

    draft = apply_review(parent_kb(embedder), [stamped("reject", "cat", "a long tail")], no_model)
    assert len(draft.descriptions) == 5 and draft.removed_embeddings.shape == (1, embedder.clip.dim)


@pytest.mark.parametrize("bad, message", [
    (lambda: [stamped("reject", "cat", "no such text")], "No description"),
    (lambda: [stamped("add", "dog", new="a wet  nose")], "already has"),
    (lambda: [stamped("edit", "cat", "a long tail", "pointed ears")], "already has"),
    (lambda: [stamped("edit", "cat", "a long tail", "green"), stamped("add", "cat", new="green")], "twice"),
    (lambda: [], "Nothing to save"),
])
def test_apply_review_refuses_what_cannot_apply(embedder, bad, message):
    with pytest.raises(ReviewError, match=message):
        apply_review(parent_kb(embedder), bad(), lambda: embedder)


def test_decision_from_json_checks_untrusted_fields():
    with pytest.raises(ReviewError, match="Unknown review action"):
        Decision.from_json({"action": "delete", "class": "a", "old": "b", "who": "x"})
    with pytest.raises(ReviewError, match="must be a string"):
        Decision.from_json({"action": "reject", "class": "a", "old": ["b"], "who": "x"})
    with pytest.raises(ReviewError, match="same as the original"):
        Decision.from_json({"action": "edit", "class": "a", "old": "b c", "new": " b  c ", "who": "x"})
    with pytest.raises(ReviewError, match="'who' is empty"):
        Decision.from_json({"action": "reject", "class": "a", "old": "b", "who": "  "})


# ---- drafts ----------------------------------------------------------------------------------
def test_drafts_version_every_change_and_refuse_stale_ones(tmp_path):
    drafts = DraftStore(tmp_path / "review_drafts")
    assert drafts.get("snapshot_v1", "alice")["version"] == 0
    with drafts.change("snapshot_v1", "alice", 0) as draft:
        draft["decisions"].append({"key": "k"})
    assert drafts.get("snapshot_v1", "alice")["version"] == 1
    with pytest.raises(StaleDraft) as stale, drafts.change("snapshot_v1", "alice", 0):
        pass
    assert stale.value.current["decisions"] == [{"key": "k"}]
    with pytest.raises(RuntimeError), drafts.change("snapshot_v1", "alice", 1) as draft:
        draft["decisions"] = []
        raise RuntimeError("a failed save must leave the draft as it was")
    assert drafts.get("snapshot_v1", "alice")["decisions"] == [{"key": "k"}]
    assert drafts.get("snapshot_v1", "bob")["version"] == 0  # one draft per reviewer
    names = sorted(p.name for p in (tmp_path / "review_drafts").iterdir())
    assert len(names) == 2 and names[0] == ".write.lock" and names[1].endswith(".json")  # no temp files left


# ---- the HTTP API ----------------------------------------------------------------------------
def test_review_through_the_api_lands_exactly_in_a_child_snapshot(home, kbuild):
    with running(home) as base:
        status, snaps, _ = call(f"{base}/api/snapshots")
        assert status == 200 and [s["name"] for s in snaps] == ["snapshot_v1"]
        target = {"snapshot": "v1", "reviewer": "alice"}
        status, draft, _ = call(f"{base}/api/draft/decision", {**target, "version": 0, "decision": decision(
            "reject", "dog", "a wet nose", comment="not visual")})
        assert status == 200 and draft["version"] == 1 and draft["snapshot"] == "snapshot_v1"
        status, stale, _ = call(f"{base}/api/draft/decision", {**target, "version": 0, "decision": decision(
            "reject", "cat", "a long tail")})
        assert status == 409 and stale["draft"]["version"] == 1  # the page gets the current draft back
        status, draft, _ = call(f"{base}/api/draft/decision", {**target, "version": 1, "decision": decision(
            "edit", "cat", "pointed ears", "tall pointed ears")})
        assert status == 200 and len(draft["decisions"]) == 2
        status, draft, _ = call(f"{base}/api/draft/decision", {**target, "version": 2, "decision": decision(
            "add", "dog", new="a  black nose", comment="seen in most photos")})
        assert status == 200 and draft["decisions"][-1]["new"] == "a black nose"  # whitespace normalised
        status, bad, _ = call(f"{base}/api/draft/decision", {**target, "version": 3, "decision": decision(
            "reject", "cat", "not in the snapshot")})
        assert status == 400 and "No description" in bad["error"]
        status, kept, _ = call(f"{base}/api/draft?snapshot=snapshot_v1&reviewer=alice")
        assert kept["version"] == 3 and len(kept["decisions"]) == 3  # what a reload sees
        status, saved, _ = call(f"{base}/api/draft/save", {**target, "version": 3})
        assert status == 200 and saved["snapshot"] == "snapshot_v2" and saved["draft"]["saved_as"] == "snapshot_v2"
        status, again, _ = call(f"{base}/api/draft/save", {**target, "version": 3})
        assert status == 409  # a second click or a stale tab cannot publish the same review twice
    diff = kbuild("diff", "v1", "v2", "--json").json()
    removed = {(c["class_name"], t) for c in diff["modified_classes"] for t in c["removed"]}
    removed |= {(c["class_name"], r["old"]) for c in diff["modified_classes"] for r in c["reworded"]}
    added = {(c["class_name"], t) for c in diff["modified_classes"] for t in c["added"]}
    added |= {(c["class_name"], r["new"]) for c in diff["modified_classes"] for r in c["reworded"]}
    assert removed == {("dog", "a wet nose"), ("cat", "pointed ears")}
    assert added == {("cat", "tall pointed ears"), ("dog", "a black nose")}
    assert diff["manifest"]["operation"] == {"old": "load", "new": "review"}
    assert kbuild("verify", "v2").code == 0
    shown = kbuild("show", "v2", "--json").json()
    assert [(d["who"], d["action"]) for d in shown["manifest"]["extra"]["review"]] == [
        ("alice", "reject"), ("alice", "edit"), ("alice", "add")]
    assert shown["removed"][0]["reason"] == "rejected by alice: not visual"


def test_undo_and_discard_change_only_the_draft(home, kbuild):
    target = {"snapshot": "v1", "reviewer": "dana"}
    with running(home) as base:
        for version, (cls, text) in enumerate((("cat", "a long tail"), ("dog", "floppy ears"))):
            assert call(f"{base}/api/draft/decision", {**target, "version": version,
                                                       "decision": decision("reject", cls, text)})[0] == 200
        status, draft, _ = call(f"{base}/api/draft/undo", {**target, "version": 2, "key": "row\ncat\na long tail"})
        assert status == 200 and [d["old"] for d in draft["decisions"]] == ["floppy ears"]
        assert call(f"{base}/api/draft/undo", {**target, "version": 3, "key": "no such key"})[0] == 400
        status, draft, _ = call(f"{base}/api/draft/discard", {**target, "version": 3})
        assert status == 200 and draft["decisions"] == [] and draft["version"] == 4
        assert call(f"{base}/api/draft/save", {**target, "version": 4})[1]["error"].startswith("Nothing to save")
    assert [s["name"] for s in kbuild("list", "--json").json()] == ["snapshot_v1"]


def test_concurrent_reviewers_each_get_their_own_snapshot(home, kbuild):
    with running(home) as base:
        for who, text in (("alice", "a long tail"), ("bob", "floppy ears")):
            cls = "cat" if text == "a long tail" else "dog"
            assert call(f"{base}/api/draft/decision", {"snapshot": "v1", "reviewer": who, "version": 0,
                                                       "decision": decision("reject", cls, text)})[0] == 200
        answers = []
        savers = [threading.Thread(target=lambda who=who: answers.append(call(
            f"{base}/api/draft/save", {"snapshot": "v1", "reviewer": who, "version": 1}))) for who in ("alice", "bob")]
        for t in savers:
            t.start()
        for t in savers:
            t.join()
    assert sorted(a[0] for a in answers) == [200, 200]
    assert sorted(a[1]["snapshot"] for a in answers) == ["snapshot_v2", "snapshot_v3"]
    children = {s["name"]: (s["manifest"]["parameters"]["reviewers"], s["manifest"]["parents"][0]["name"])
                for s in kbuild("list", "--json").json() if s["name"] != "snapshot_v1"}
    assert sorted(children.values()) == [(["alice"], "snapshot_v1"), (["bob"], "snapshot_v1")]


def test_state_changes_need_token_json_and_same_origin(home):
    body = {"snapshot": "v1", "reviewer": "mallory", "version": 0, "decision": decision("reject", "cat", "a long tail")}
    with running(home) as base:
        url = f"{base}/api/draft/decision"
        assert call(url, body, token=None)[0] == 403
        assert call(url, body, token="wrong")[0] == 403
        assert call(url, body, headers={"Origin": "http://evil.example"})[0] == 403
        assert call(url, body, headers={"Content-Type": "text/plain"})[0] == 403
        status, answer, _ = call(url, body, headers={"Host": "attacker.example:80"})
        assert status == 403 and "Host" in answer["error"]  # DNS rebinding: a foreign name is refused
        assert call(f"{base}/api/snapshots", headers={"Host": "attacker.example"})[0] == 403
        assert call(f"{base}/api/draft?snapshot=v1&reviewer=mallory")[1]["version"] == 0  # nothing changed
        assert call(url, body)[0] == 200  # the same request with the token goes through
        request = urllib.request.Request(url, method="DELETE")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 405


def test_pages_carry_security_headers_and_no_request_path_reaches_files(home):
    with running(home) as base:
        status, page, headers = call(f"{base}/")
        assert status == 200 and "main.js" in page
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
        assert call(f"{base}/static/app.js")[0] == 404
        status, script, headers = call(f"{base}/static/main.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        for probe in ("/static/../server.py", "/static/%2e%2e%2fserver.py", "/static/..%2fserver.py",
                      "/reports/..%2f..%2fetc%2fpasswd", "/api/snapshots/..%2f..%2fx", "/api/snapshots/%2fetc%2fpasswd"):
            status, answer, _ = call(base + probe)
            assert status in (400, 404), probe
            assert "root:" not in json.dumps(answer) and "import" not in json.dumps(answer), probe


def test_static_code_never_parses_data_as_html():
    # Descriptions are untrusted (LLM output, curated files): the UI builds DOM nodes and text nodes only.
    static = REPO / "kbuild" / "serve" / "static"
    for path in static.glob("*.js"):
        code = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{path.name} uses {sink}"
    assert "http" not in (static / "index.html").read_text().replace("http-equiv", "")  # no CDN


@pytest.mark.server
def test_review_against_a_chroma_server(clip_env, kbuild, tmp_path):
    proc, url = start_chroma_server(tmp_path / "chroma")
    try:
        (tmp_path / "kb.json").write_text(json.dumps(KB))
        assert kbuild("load", tmp_path / "kb.json", "--chroma-url", url).code == 0
        with running(clip_env, url=url) as base:
            assert call(f"{base}/api/info")[1]["mode"] == "server"
            assert call(f"{base}/api/draft/decision", {"snapshot": "latest", "reviewer": "s", "version": 0,
                                                       "decision": decision("reject", "dog", "floppy ears")})[0] == 200
            status, saved, _ = call(f"{base}/api/draft/save", {"snapshot": "v1", "reviewer": "s", "version": 1})
            assert status == 200 and saved["snapshot"] == "snapshot_v2"
        shown = kbuild("show", "v2", "--removed", "--json", "--chroma-url", url).json()
        assert [r["text"] for r in shown["removed"]] == ["floppy ears"]
        assert kbuild("list", "--json").json() == []  # nothing went to the embedded store
    finally:
        stop_process(proc)


def test_compare_is_kbuild_diff(home, kbuild):
    with running(home) as base:
        assert call(f"{base}/api/draft/decision", {"snapshot": "v1", "reviewer": "a", "version": 0,
                                                   "decision": decision("reject", "cat", "a long tail")})[0] == 200
        assert call(f"{base}/api/draft/save", {"snapshot": "v1", "reviewer": "a", "version": 1})[0] == 200
        status, compared, _ = call(f"{base}/api/compare?old=v1&new=v2")
        assert status == 200 and compared["diff"] == kbuild("diff", "v1", "v2", "--json").json()
        assert compared["summary_line"].endswith("1 removed, 0 reworded")
        assert call(f"{base}/api/compare?old=v1&new=v1")[1]["empty"] is True
        assert call(f"{base}/api/compare?old=v1&new=nope")[0] == 404
        assert call(f"{base}/api/compare?old=v1&new=v2&threshold=abc")[0] == 400


def test_reports_are_listed_and_served_read_only_inside_the_folder(home, tmp_path):
    results = tmp_path / "results"
    (results / "run1").mkdir(parents=True)
    (results / "run1" / "report.html").write_text("<h1>run1</h1>")
    (results / "run1" / "metrics.json").write_text("{}")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "report.html").write_text("secret")
    os.symlink(outside, results / "escape")
    with running(home, results=results) as base:
        status, listed, _ = call(f"{base}/api/reports")
        assert status == 200 and [r["path"] for r in listed] == ["run1/report.html"]
        status, page, headers = call(f"{base}/reports/run1/report.html")
        assert status == 200 and page == "<h1>run1</h1>"
        assert headers["Content-Security-Policy"].startswith("sandbox")  # a report can run no script
        for probe in ("escape/report.html", "run1/metrics.json", "..%2fsecret%2freport.html", "run1/../run1/report.html"):
            assert call(f"{base}/reports/{probe}")[0] == 404, probe
    with running(home) as base:
        assert call(f"{base}/api/reports")[1] == []


@pytest.mark.slow
def test_command_prints_token_url_on_loopback_and_stops_cleanly(home, tmp_path):
    env = cli_env(KBUILD_STORE=str(home))
    errors = tmp_path / "serve.err"
    with open(errors, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", "from kbuild.cli import main; main()", "serve", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=REPO)
        try:
            line = proc.stdout.readline()
            assert line.startswith("kbuild serve: http://127.0.0.1:") and "?token=" in line, line
            url = line.split()[2]
            status, _, _ = call(url.split("?")[0] + "api/snapshots")
            assert status == 200
            token = url.split("token=")[1]
            base = url.split("?")[0].rstrip("/")
            body = {"snapshot": "v1", "reviewer": "z", "version": 0, "decision": decision("accept", "cat", "a long tail")}
            assert call(f"{base}/api/draft/decision", body, token=token)[0] == 200
        finally:
            stop_process(proc)
    assert proc.returncode == 0 and "stopped" in errors.read_text()


def test_non_loopback_host_warns(clip_env, kbuild, monkeypatch):
    from kbuild.serve.server import KbuildHTTPServer

    def stop_at_once(self, *args, **kwargs):  # the warning and start-up line come before serving
        raise KeyboardInterrupt

    monkeypatch.setattr(KbuildHTTPServer, "serve_forever", stop_at_once)
    result = kbuild("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.code == 0 and "warning: listening on 0.0.0.0" in result.err
    assert "?token=" in result.out
    quiet = kbuild("serve", "--port", "0")
    assert quiet.code == 0 and "warning" not in quiet.err and "http://127.0.0.1:" in quiet.out
    assert kbuild("serve", "--results", "/no/such/folder").code == 2
