"""``kbuild generate`` stays bounded in time and size (issue 23, items 9 and 10 and part of 18).

Reproduced before this change: against an endpoint that trickles one byte every 2 s, ``--timeout 5
--retries 0`` ran past 45 s (the timeout was per read) and two Ctrl-C left it running; two 45 MB
replies took 1.08 GB and a 186 MB call log; an API key with a trailing newline gave "connection
failed"; zero tokens gave "no price known".
"""

from __future__ import annotations

import signal
import time

import pytest
import test_generate
from test_generate import FAKE_KEY, log_rows, start_generate_process, wait_until_held

# Fixtures shared with test_generate: bound here by name, so pytest finds them in this module too.
gen, server = test_generate.gen, test_generate.server


@pytest.mark.slow
def test_a_trickling_reply_ends_at_the_whole_reply_deadline(gen, server):
    server.add_fault("trickle", cls="melanoma", delay=0.3)  # ~300 bytes: over a minute at this pace
    started = time.monotonic()
    result = gen("--timeout", "2", "--retries", "0")
    took = time.monotonic() - started
    assert took < 15, f"generate ran {took:.0f} s with --timeout 2 against a trickling reply"
    assert result.code == 1 and "melanoma: timeout after 2 s" in result.err, result.err


def test_a_huge_reply_is_refused_and_the_call_log_stays_small(gen, server):
    server.add_fault("huge", cls="melanoma", times=None, items=12_000_000)  # 12 MB per reply
    result = gen("--retries", "1")
    assert result.code == 1, result.err
    assert "melanoma: reply over" in result.err and "MB" in result.err, result.err
    assert server.count("melanoma") == 1  # a reply over the cap is not asked for again
    log_file = gen.store / "llm" / "calls.sqlite"
    assert log_file.stat().st_size < 2_000_000, log_file.stat().st_size
    assert all(len(r["response"] or "") < 100_000 for r in log_rows(gen.store))


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(gen, server, tiny_model):
    server.per_reply = 3
    server.hold("melanocytic nevus", 0)  # parked for 60 s: the first Ctrl-C waits for it to be logged
    proc = start_generate_process(server, gen.classes, gen.store, tiny_model)
    try:
        wait_until_held(server, proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting for the call in flight, as the first Ctrl-C promises
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 5, "the second Ctrl-C did not stop generate"
        assert proc.returncode == 130, err
        assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("Error: "), repr(err[-3000:])
    finally:
        server.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_large_unusable_reply_is_logged_cut_to_a_bounded_size(gen, server):
    server.add_fault("huge", cls="melanoma", times=None, items=3_000_000)  # under the reply cap, unusable
    result = gen("--max-reasks", "1")
    assert result.code == 1 and "melanoma: unusable reply" in result.err, result.err
    logged = [r["response"] for r in log_rows(gen.store) if r["class_name"] == "melanoma"]
    assert len(logged) == 2 and all(len(text) < 300_000 for text in logged), [len(t) for t in logged]
    assert all(text.endswith("characters not logged]") for text in logged)
    assert (gen.store / "llm" / "calls.sqlite").stat().st_size < 2_000_000


def test_an_api_key_with_a_trailing_newline_is_used_without_it(gen, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY + "\n")  # as read from a file or a secret mount
    result = gen()
    assert result.code == 0, result.err
    assert server.count() == 3 and all(call.auth == f"Bearer {FAKE_KEY}" for call in server.calls)


def test_an_api_key_with_a_line_break_inside_is_refused_clearly(gen, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY + "\nsk-second-line-key")
    result = gen()
    assert result.code == 2 and len(result.err.splitlines()) == 1, result.err
    assert "OPENAI_API_KEY" in result.err and "line break" in result.err and FAKE_KEY not in result.err
    assert server.count() == 0


def test_zero_tokens_cost_nothing_instead_of_no_price_known(gen, server):
    server.add_fault("500", times=None)
    result = gen("--retries", "0")
    assert result.code == 1
    assert "Tokens: 0 prompt + 0 completion; no cost (no tokens used)" in result.err, result.err
    assert "no price known" not in result.err
