"""``kbuild generate`` over real HTTP against the fake OpenAI-compatible server in llm_server.py.

Covers: a full run and its provenance, the cache (rerun = zero calls), resumption after SIGKILL and
after Ctrl-C with no finished call paid twice, each fault (429 + Retry-After, 500, timeout, broken
body, malformed and short replies) recovering or being reported, the no-key message, and the API
key never reaching the store, the log or any output. Unit tests of the parser, the retry policy
and the call log come first.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from llm_server import FakeLLMServer

from helpers import REPO, cli_env
from kbuild.sources.llm.calllog import CallLog, CallRecord, cache_key
from kbuild.sources.llm.client import RetryPolicy, estimate_cost, public_url, redact, retry_after_seconds
from kbuild.sources.llm.parse import ReplyParseError, parse_reply
from kbuild.sources.llm.prompts import load_prompt

FAKE_KEY = "sk-test-SECRET-7f3a9c2b"
CLASSES_TEXT = "# skin lesions\nmelanoma\n\nnevus: melanocytic nevus\nseb_k: seborrheic keratosis\n"
DISPLAYS = ["melanoma", "melanocytic nevus", "seborrheic keratosis"]
NAMES = {"melanoma": "melanoma", "melanocytic nevus": "nevus", "seborrheic keratosis": "seb_k"}
FOUR = CLASSES_TEXT + "df: dermatofibroma\n"


# ---- units: parsing, retry policy, call log ---------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ('["red cap", "white spots"]', ["red cap", "white spots"]),
    ('```json\n["red cap", "white spots"]\n```', ["red cap", "white spots"]),
    ('Sure! Here you go:\n```\n["red cap",\n "white spots"]\n```\nAnything else?', ["red cap", "white spots"]),
    ('Here: ["red cap", "white spots"] - enjoy', ["red cap", "white spots"]),
    ('{"descriptions": ["red cap", "white spots"]}', ["red cap", "white spots"]),
    ('[{"feature": "red cap"}, {"feature": "white spots"}]', ["red cap", "white spots"]),
    ("1. red cap\n2) white spots\n3. **a thin stem**", ["red cap", "white spots", "a thin stem"]),
    ("Descriptions:\n- red cap,\n* 'white spots'\n\u2022 a thin stem", ["red cap", "white spots", "a thin stem"]),
    ('["  red   cap ", "", "white spots"]', ["red cap", "white spots"]),
])
def test_parse_reply_tolerates_common_shapes(reply, expected):
    assert parse_reply(reply) == expected


@pytest.mark.parametrize("reply, reason", [
    ("", "empty reply"),
    ("I cannot help with that.", "no JSON list"),
    ('["never closed", "list"', "no JSON list"),
    ("[]", "no non-empty descriptions"),
    ('["ok", 3]', "item 2 of the JSON list is not a string"),
    ('{"a": [1], "b": [2]}', "no JSON list"),
])
def test_parse_reply_rejects_unusable_replies(reply, reason):
    with pytest.raises(ReplyParseError, match=reason):
        parse_reply(reply)


def test_retry_policy_is_exponential_with_jitter_and_obeys_retry_after():
    policy, rng = RetryPolicy(retries=5, base_s=1.0, cap_s=5.0), random.Random(0)
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (2.5, 5), (2.5, 5)]):
        delays = {policy.delay(attempt, None, rng) for _ in range(20)}
        assert all(low <= d <= high for d in delays) and len(delays) > 1  # jittered, not fixed
    assert policy.delay(0, 7.0, rng) == 7.0  # the server's wish wins over backoff
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert 0 <= retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 1  # a past date
    assert retry_after_seconds({}) is None


def test_urls_keys_and_prices():
    assert public_url("https://user:pw@llm.example.com:8443/v1/?key=abc#x") == "https://llm.example.com:8443/v1"
    assert public_url(None) == "https://api.openai.com/v1"
    assert redact(f"bad key {FAKE_KEY}!", FAKE_KEY) == "bad key ***!"
    assert estimate_cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert estimate_cost("gpt-4o-mini-2024-07-18", 1000, 0) == pytest.approx(0.00015)
    assert estimate_cost("llama3.1", 1000, 1000) is None


def test_call_log_caches_only_ok_rows_and_survives_reopening(tmp_path):
    identity = {"provider": "http://h/v1", "model": "m", "temperature": None, "seed": None}
    messages = [{"role": "user", "content": "hi"}]
    key = cache_key(identity, messages, 0)
    assert key != cache_key(identity, messages, 1)
    assert key != cache_key({**identity, "temperature": 0.5}, messages, 0)
    with CallLog(tmp_path / "calls.sqlite") as log:
        run = log.start_run({"x": 1})
        log.record(run, CallRecord(key, identity, "c", 0, messages, "malformed", 0.1, response="nope"))
        assert log.lookup(key) is None
        log.record(run, CallRecord(key, identity, "c", 0, messages, "ok", 0.1, "[\"a\"]", ["a"], 5, 3))
        log.finish_run(run, "finished", {"made": 2})
    with CallLog(tmp_path / "calls.sqlite") as log:
        assert log.lookup(key).items == ["a"] and log.lookup(key).prompt_tokens == 5
        assert [r["outcome"] for r in log.rows()] == ["malformed", "ok"]
        assert log.rows("runs")[0]["status"] == "finished"
    mode = sqlite3.connect(tmp_path / "calls.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture()
def server():
    fake = FakeLLMServer(DISPLAYS + ["dermatofibroma"], per_reply=10, api_key=FAKE_KEY).start()
    yield fake
    fake.stop()


@pytest.fixture()
def gen(clip_env, monkeypatch, tmp_path, kbuild, server):
    """Run ``kbuild generate`` in-process against the fake server with fast timeouts and backoff."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    for name in ("OPENAI_BASE_URL", "KBUILD_LLM_MODEL", "KBUILD_PROMPTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    classes = tmp_path / "classes.txt"
    classes.write_text(CLASSES_TEXT, encoding="utf-8")

    def run(*extra, classes_file=classes, base_url=True):
        args = generate_args(server, classes_file)
        if not base_url:
            args = [a for a in args if a not in ("--base-url", server.url)]
        return kbuild(*args, *extra)

    run.classes = classes
    run.store = clip_env
    return run


def generate_args(server, classes_file, per_class="4") -> list[str]:
    return ["generate", "--classes", str(classes_file), "--base-url", server.url, "--per-class", per_class,
            "--timeout", "1", "--backoff", "0.01", "--concurrency", "2"]


def log_rows(store: Path, table: str = "calls") -> list[dict]:
    with CallLog.for_store(store) as log:
        return log.rows(table)


def snapshot(kbuild, ref="latest") -> dict:
    result = kbuild("show", ref, "--json")
    assert result.code == 0, result.err
    return result.json()


# ---- a full run and the cache -----------------------------------------------------------------------

@pytest.mark.slow
def test_generate_writes_a_snapshot_with_full_provenance(gen, server, kbuild):
    result = gen()
    assert result.code == 0, result.err
    assert result.out.startswith("snapshot_v1: 12 descriptions in 3 classes")
    snap = snapshot(kbuild)
    manifest = snap["manifest"]
    assert manifest["operation"] == "generate" and manifest["counts"] == {"melanoma": 4, "nevus": 4, "seb_k": 4}
    params = manifest["parameters"]
    port = server.url.split(":")[2].split("/")[0]
    assert params["llm_model"] == "gpt-4o-mini" and params["llm_host"] == f"127.0.0.1:{port}"
    assert params["prompt"] == "general" and params["prompt_hash"] == load_prompt("general").hash
    assert params["per_class"] == 4 and params["classes_file"] == "classes.txt" and params["seed"] is None
    assert manifest["extra"]["llm_calls"]["made"] == 3
    first = snap["descriptions"][0]
    assert first["source"] == "llm:gpt-4o-mini" and first["extra"]["prompt_hash"] == params["prompt_hash"]
    # The display name goes into the prompt, the folder name is what is stored.
    nevus_call = next(c for c in server.calls if c.class_name == "melanocytic nevus")
    assert "melanocytic nevus" in nevus_call.user_text() and "nevus:" not in nevus_call.user_text()
    assert nevus_call.body["model"] == "gpt-4o-mini"
    assert {d["text"] for d in snap["descriptions"] if d["class_name"] == "nevus"} == \
        {f"visual trait {i} of melanocytic nevus" for i in (1, 2, 3, 4)}
    # Progress per class, then the bill.
    assert sum(f"[{i}/3]" in result.err for i in (1, 2, 3)) == 3
    assert "LLM calls: 3 made, 0 taken from cache" in result.err
    assert "Tokens: 300 prompt + 150 completion; estimated cost $0.0001" in result.err
    rows = log_rows(gen.store)
    assert [r["outcome"] for r in rows] == ["ok"] * 3
    assert all(r["prompt_tokens"] == 100 and json.loads(r["items"]) and r["duration_s"] > 0 for r in rows)
    assert log_rows(gen.store, "runs")[0]["status"] == "finished"


def test_rerun_with_identical_inputs_makes_zero_calls(gen, server, kbuild):
    assert gen().code == 0
    assert server.count() == 3
    same = gen("--json")  # the same snapshot again: said, not published
    assert same.code == 0 and same.json()["published"] is False and same.json()["snapshot"] == "snapshot_v1"
    assert "generate changed nothing: same content as snapshot_v1" in same.err
    again = gen("--name", "again", "--force", "--json")
    assert again.code == 0, again.err
    assert server.count() == 3
    assert again.json()["stats"]["made"] == 0 and again.json()["stats"]["cached"] == 3
    assert "LLM calls: 0 made, 3 taken from cache" in again.err
    assert snapshot(kbuild, "again")["manifest"]["content_hash"] == snapshot(kbuild, "v1")["manifest"]["content_hash"]
    # Anything that changes the request is a new cache key: here the sampling temperature.
    assert gen("--temperature", "0.5").code == 0
    assert server.count() == 6 and server.calls[-1].body["temperature"] == 0.5


def test_short_replies_and_repeats_ask_further_rounds(gen, server, kbuild):
    server.per_reply = 3
    server.add_fault("short", cls="melanocytic nevus", items=1)
    server.add_fault("fenced", cls="melanoma")  # round 1: three items inside a code fence
    server.add_fault("repeat", cls="melanoma")  # round 2 repeats round 1: nothing new, ask again
    result = gen("--per-class", "5")
    assert result.code == 0, result.err
    # Round index on the server: 0 = first request, 1 = a follow-up.
    assert server.counts() == {("melanoma", 0): 1, ("melanoma", 1): 2, ("melanocytic nevus", 0): 1,
                               ("melanocytic nevus", 1): 2, ("seborrheic keratosis", 0): 1,
                               ("seborrheic keratosis", 1): 1}
    follow = [c for c in server.calls if c.class_name == "melanoma" and c.round == 1]
    for call in follow:  # the repeat added nothing, so the last follow-up is the same request
        assert json.loads(call.body["messages"][2]["content"]) == \
            [f"visual trait {i} of melanoma" for i in (1, 2, 3)]
        assert "Write 2 more descriptions" in call.body["messages"][3]["content"]
    nevus = [c for c in server.calls if c.class_name == "melanocytic nevus"]
    assert ["Write 4 more" in c.body["messages"][-1]["content"] for c in nevus] == [False, True, False]
    assert "Write 1 more" in nevus[2].body["messages"][-1]["content"]
    assert snapshot(kbuild)["manifest"]["counts"] == {"melanoma": 5, "nevus": 5, "seb_k": 5}


def test_round_limit_reports_short_classes_then_accepts_fewer_for_free(gen, server, kbuild):
    server.per_reply = 1
    short = gen("--per-class", "3", "--max-rounds", "2")
    assert short.code == 1
    assert "only 2 unique descriptions of 3 after 2 rounds" in short.err and "--min-per-class 2" in short.err
    assert server.count() == 6
    accepted = gen("--per-class", "3", "--max-rounds", "2", "--min-per-class", "2")
    assert accepted.code == 0, accepted.err
    assert server.count() == 6  # the finished rounds came from the log
    assert snapshot(kbuild)["manifest"]["counts"] == {"melanoma": 2, "nevus": 2, "seb_k": 2}


# ---- faults -------------------------------------------------------------------------------------------

def test_429_waits_for_retry_after(gen, server):
    server.add_fault("429", cls="melanoma", retry_after="1")
    result = gen()
    assert result.code == 0, result.err
    first, second = [c for c in server.calls if c.class_name == "melanoma"]
    assert (first.served, second.served) == ("429", "ok")
    assert second.at - first.at >= 0.95  # backoff alone (--backoff 0.01) would retry at once
    assert "HTTP 429: Rate limit reached; retrying in 1.0 s" in result.err
    errors = [r for r in log_rows(gen.store) if r["outcome"] == "error"]
    assert [(r["class_name"], r["http_status"]) for r in errors] == [("melanoma", 429)]


def test_server_errors_timeouts_and_broken_bodies_are_retried(gen, server):
    server.add_fault("500", cls="melanoma", times=2)
    server.add_fault("slow", cls="melanocytic nevus", delay=2.5)  # past --timeout 1
    server.add_fault("bad_body", cls="seborrheic keratosis")
    started = time.monotonic()
    result = gen()
    assert result.code == 0, result.err
    assert time.monotonic() - started < 20
    assert [server.count(d) for d in DISPLAYS] == [3, 2, 2]
    errors = {(r["class_name"], r["http_status"], r["error"].split(":")[0]) for r in log_rows(gen.store)
              if r["outcome"] == "error"}
    assert errors == {("melanoma", 500, "HTTP 500"), ("nevus", None, "timeout after 1 s"),
                      ("seb_k", None, "unreadable response body")}
    assert "4 failed attempts" in result.err


def test_malformed_replies_are_asked_again_and_tolerated_shapes_are_not(gen, server, kbuild):
    server.add_fault("malformed", cls="melanoma")
    server.add_fault("bad_json", cls="melanocytic nevus")
    server.add_fault("fenced", cls="seborrheic keratosis")
    result = gen()
    assert result.code == 0, result.err
    assert [server.count(d) for d in DISPLAYS] == [2, 2, 1]
    rows = log_rows(gen.store)
    assert sorted(r["class_name"] for r in rows if r["outcome"] == "malformed") == ["melanoma", "nevus"]
    malformed = next(r for r in rows if r["outcome"] == "malformed" and r["class_name"] == "melanoma")
    assert malformed["response"].startswith("I am sorry") and malformed["items"] is None
    assert "asking again" in result.err and "2 unusable replies" in result.err
    assert snapshot(kbuild)["manifest"]["counts"] == {"melanoma": 4, "nevus": 4, "seb_k": 4}


def test_failing_classes_are_listed_nothing_is_published_and_rerun_completes(gen, server, kbuild):
    server.add_fault("500", cls="melanocytic nevus", times=None)
    server.add_fault("malformed", cls="seborrheic keratosis", times=None)
    failed = gen("--retries", "1", "--max-reasks", "1")
    assert failed.code == 1
    assert "failed: nevus: HTTP 500" in failed.err and "after 2 attempt(s)" in failed.err
    assert "failed: seb_k: unusable reply 2 times in round 1" in failed.err
    assert "Error: 2 of 3 classes failed" in failed.err and "no snapshot was written" in failed.err
    assert kbuild("list", "--json").json() == []
    assert log_rows(gen.store, "runs")[0]["status"] == "incomplete"
    server.clear_faults()
    done = gen()
    assert done.code == 0, done.err
    assert [server.count(d, served="ok") for d in DISPLAYS] == [1, 1, 1]  # melanoma was not asked again
    assert server.count("melanoma") == 1
    assert "LLM calls: 2 made, 1 taken from cache" in done.err


# ---- kill and Ctrl-C ------------------------------------------------------------------------------------

def start_generate_process(server, classes_file, store, tiny_model) -> subprocess.Popen:
    env = cli_env(KBUILD_STORE=str(store), KPL_CLIP_MODEL=tiny_model, OPENAI_API_KEY=FAKE_KEY)
    for name in ("OPENAI_BASE_URL", "KBUILD_LLM_MODEL", "KBUILD_CHROMA_URL"):
        env.pop(name, None)
    args = [*generate_args(server, classes_file, per_class="5"), "--concurrency", "1", "--timeout", "20"]
    return subprocess.Popen([sys.executable, "-c", "from kbuild.cli import main; main()", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_held(server, proc) -> None:
    deadline = time.monotonic() + 120
    while not server.held.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"generate never reached the held call: {proc.communicate()[1][-2000:]}")


EVERY_ROUND_ONCE = {(d, r): 1 for d in DISPLAYS + ["dermatofibroma"] for r in (0, 1)}


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_sigkill_part_way_then_resume_pays_no_finished_call_twice(gen, server, tiny_model):
    server.per_reply = 3  # two rounds per class
    gen.classes.write_text(FOUR, encoding="utf-8")
    server.hold("seborrheic keratosis", 1)  # the 6th call, with 5 finished before it
    proc = start_generate_process(server, gen.classes, gen.store, tiny_model)
    wait_until_held(server, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    server.release()
    assert server.count() == 6
    rows = log_rows(gen.store)
    assert len(rows) == 5 and all(r["outcome"] == "ok" for r in rows)
    assert sqlite3.connect(gen.store / "llm" / "calls.sqlite").execute("PRAGMA integrity_check").fetchone() == ("ok",)
    resumed = gen("--per-class", "5", "--concurrency", "1")
    assert resumed.code == 0, resumed.err
    assert "LLM calls: 3 made, 5 taken from cache" in resumed.err
    # Only the call that was in flight when the process died was sent twice.
    assert server.counts() == {**EVERY_ROUND_ONCE, ("seborrheic keratosis", 1): 2}


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_ctrl_c_logs_the_call_in_flight_and_resumes(gen, server, tiny_model, kbuild):
    server.per_reply = 3
    gen.classes.write_text(FOUR, encoding="utf-8")
    server.hold("seborrheic keratosis", 1)
    proc = start_generate_process(server, gen.classes, gen.store, tiny_model)
    wait_until_held(server, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    server.release()  # the call in flight finishes after Ctrl-C ...
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    rows = log_rows(gen.store)
    assert len(rows) == 6 and all(r["outcome"] == "ok" for r in rows)  # ... and is logged
    assert log_rows(gen.store, "runs")[0]["status"] == "interrupted"
    assert kbuild("list", "--json").json() == []
    resumed = gen("--per-class", "5", "--concurrency", "1")
    assert resumed.code == 0, resumed.err
    assert "LLM calls: 2 made, 6 taken from cache" in resumed.err
    assert server.counts() == EVERY_ROUND_ONCE


# ---- keys, secrets, prompts, input -------------------------------------------------------------------------

def test_without_a_key_one_clear_message_and_no_call(gen, server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    result = gen(base_url=False)
    assert result.code == 1 and result.err.count("\n") == 1, result.err
    for needed in ("OPENAI_API_KEY", "--base-url", "kbuild load"):
        assert needed in result.err
    assert server.count() == 0


def test_local_server_without_key_gets_a_placeholder(gen, server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    server.api_key = None
    result = gen()
    assert result.code == 0, result.err
    assert {c.auth for c in server.calls} == {"Bearer kbuild-no-key"}


def test_api_key_never_reaches_store_log_or_output(gen, server, kbuild, monkeypatch):
    outputs = []
    server.add_fault("500", cls="melanoma")
    server.add_fault("malformed", cls="melanocytic nevus")
    for args in ((), ("--name", "again", "--json")):
        result = gen(*args)
        assert result.code == 0, result.err
        outputs += [result.out, result.err]
    assert {c.auth for c in server.calls} == {f"Bearer {FAKE_KEY}"}  # it was sent, so it could leak
    outputs += [kbuild("show", "latest", "--json").out, kbuild("list", "--json").out]
    # A server that echoes a refused key: the message must not repeat it either.
    wrong = "sk-wrong-SECRET-0000"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    refused = gen("--name", "refused", "--temperature", "0.3")  # a new request: the cache cannot answer
    assert refused.code == 1 and "refused the API key (HTTP 401" in refused.err and "***" in refused.err
    outputs += [refused.out, refused.err]
    # A refused key stops the run: no retries, and no class beyond the two already in flight (--concurrency 2).
    refused_calls = [c.class_name for c in server.calls if c.served == "401"]
    assert 1 <= len(refused_calls) <= 2 and len(set(refused_calls)) == len(refused_calls)
    assert log_rows(gen.store, "runs")[-1]["status"] == "stopped: FatalLLMError"
    for secret in (FAKE_KEY, wrong):
        for text in outputs:
            assert secret not in text
        for path in gen.store.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
        dump = "\n".join(sqlite3.connect(gen.store / "llm" / "calls.sqlite").iterdump())
        assert secret not in dump
    assert "HTTP 500" in dump and "I am sorry" in dump  # the log does hold the failed calls


def test_medical_prompt_needs_a_modality_and_sends_it(gen, server, kbuild):
    missing = gen("--prompt", "medical")
    assert missing.code == 2 and missing.err.count("\n") == 1
    assert "needs a value for 'modality'" in missing.err and "--modality" in missing.err
    wrong = gen("--modality", "dermoscopy")
    assert wrong.code == 2 and "Prompt 'general' has no variable 'modality'" in wrong.err
    assert server.count() == 0
    result = gen("--prompt", "medical", "--modality", "dermoscopy")
    assert result.code == 0, result.err
    assert all("dermoscopy image of" in c.user_text() for c in server.calls)
    params = snapshot(kbuild)["manifest"]["parameters"]
    assert params["modality"] == "dermoscopy" and params["prompt_hash"] == load_prompt("medical").hash


def test_contrastive_prompt_sends_the_sibling_classes(gen, server, tmp_path):
    result = gen("--prompt", "contrastive")
    assert result.code == 0, result.err
    melanoma = next(c for c in server.calls if c.class_name == "melanoma")
    assert "Other classes in the same dataset: melanocytic nevus; seborrheic keratosis" in melanoma.user_text()
    single = tmp_path / "one.txt"
    single.write_text("melanoma\n", encoding="utf-8")
    alone = gen("--prompt", "contrastive", classes_file=single)
    assert alone.code == 2 and "needs at least 2 classes" in alone.err


def test_bad_classes_file_is_one_line_and_costs_nothing(gen, server, tmp_path):
    bom_crlf = tmp_path / "bom.txt"
    bom_crlf.write_bytes(b"\xef\xbb\xbfmelanoma\r\nnevus: melanocytic nevus\r\n")
    assert gen(classes_file=bom_crlf).code == 0
    assert server.count() == 2
    duplicate = tmp_path / "dup.txt"
    duplicate.write_text("melanoma\nmelanoma\n", encoding="utf-8")
    result = gen(classes_file=duplicate)
    assert result.code == 1 and result.err.count("\n") == 1 and "duplicate class 'melanoma'" in result.err
    assert server.count() == 2


# ---- the whole pipeline ----------------------------------------------------------------------------------

def test_generate_then_prune_then_kpl_eval(gen, server, kbuild, capsys, tmp_path, tiny_clip_dir):
    from helpers import CliRunner
    from kpl.cli import app as kpl_app

    assert gen("--per-class", "8").code == 0
    pruned = kbuild("prune", "latest")
    assert pruned.code == 0, pruned.err
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 64)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    npz = tmp_path / "features.npz"
    np.savez(npz, image_features=features, labels=np.arange(30) % 3,
             class_names=np.array(["melanoma", "nevus", "seb_k"]))
    evaluated = CliRunner(kpl_app, "kpl", capsys)("eval", "--kb", "latest", "--features", str(npz), "--k", "1")
    assert evaluated.code == 0, evaluated.err
    pruned_snapshot = snapshot(kbuild)["manifest"]
    assert pruned_snapshot["operation"] == "prune" and pruned_snapshot["parents"][0]["name"] == "snapshot_v1"
    assert "snapshot_v2" in evaluated.out and "kpl.image_ot" in evaluated.out
