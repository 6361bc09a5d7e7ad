"""Crash safety: ``kbuild load``, ``prune``, ``generate`` and ``tag`` killed (SIGKILL) at random points.

For each command, one full run is timed first; then each of ``TRIALS`` trials starts the command as a
fresh process, SIGKILLs it after a delay drawn uniformly over that duration, and checks, from another
fresh process, that
- every snapshot published before the trial is still listed with the same content hash and passes
  ``kbuild verify``'s checks (the same function, in one process for speed; the command itself verifies
  every snapshot at the end);
- nothing partial is visible under a real name: every collection is a published snapshot (which
  verifies), a tag pointing at one, or a pending ``kbuild-tmp-`` write that no reader lists; at most
  one snapshot is new (the kill came after the publish);
- the same command, run again, succeeds (and ``generate`` pays for no finished call twice); a run
  that finished before its kill came counts as its own rerun.
At the end ``kbuild gc`` removes what the killed writes left and everything still verifies.
A trial's outcome (killed before writing, while writing, after publishing, or finished) is printed
per command: the kills are spread over the whole run, not aimed at the write.

The processes are forked from ``forkserver.py`` (real processes running the real CLI; only the
imports are paid once), so a trial takes about a second. The RNG seed is printed; set
``KBUILD_CRASH_SEED`` to replay a run.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path

import forkserver
import pytest
from forkserver import ForkServer
from llm_server import FakeLLMServer

from helpers import cli_env

pytestmark = pytest.mark.slow

# 12 per command keeps the suite within its 10-minute budget; KBUILD_CRASH_TRIALS=100 for a long soak.
TRIALS = int(os.environ.get("KBUILD_CRASH_TRIALS") or 12)
SEED = int(os.environ.get("KBUILD_CRASH_SEED") or random.SystemRandom().randrange(2**31))
PENDING, TAG = "kbuild-tmp-", "kbuild-tag-"
# A snapshot is written in batches of 5000 records; a few hundred would go in one request, which
# Chroma applies all or nothing. Small batches give these small snapshots the many-request writes of
# real ones, so that kills land between batches, as they do in a 50 000-description write.
SMALL_BATCHES = {"kbuild.store.snapshots._WRITE_BATCH": 25}


@pytest.fixture(scope="module")
def forks(tmp_path_factory) -> ForkServer:
    return forkserver.shared(tmp_path_factory.mktemp("forks"))


class Trials:
    """Runs one command again and again in one store, killing it at random points."""

    def __init__(self, forks: ForkServer, home: Path, env: dict, name: str):
        self.forks, self.home, self.env, self.name = forks, home, {**env, "KBUILD_STORE": str(home)}, name
        self.rng = random.Random(f"{SEED}:{name}")
        self.outcomes: Counter = Counter()
        self.started = time.monotonic()
        print(f"crash trials of {name}: seed {SEED} (replay with KBUILD_CRASH_SEED={SEED})")

    def where(self) -> str:
        return f"[{self.name}, seed {SEED}]"

    def run(self, *args, expect: int = 0) -> tuple[str, str]:
        child = self.forks.run("kbuild", *args, env=self.env, patch=SMALL_BATCHES)
        code = self.forks.wait(child, timeout_s=60)
        out, err = child.out.read_text(), child.err.read_text()
        assert code == expect, f"{self.where()} kbuild {' '.join(map(str, args))} -> {code}: {err[-2000:]}"
        return out, err

    def timed_run(self, *args) -> tuple[float, str]:
        started = time.monotonic()
        out, _ = self.run(*args)
        return time.monotonic() - started, out

    def kill_at_random(self, args, duration: float) -> tuple[int, float]:
        """Start ``kbuild *args`` and SIGKILL it ``U(0, duration)`` seconds later; (exit code, delay)."""
        delay = self.rng.uniform(0.0, duration)
        child = self.forks.run("kbuild", *args, env=self.env, patch=SMALL_BATCHES)
        time.sleep(max(0.0, child.started + delay - time.monotonic()))
        if self.forks.poll(child) is None:
            self.forks.kill(child)
        code = self.forks.wait(child, timeout_s=30)
        assert code in (0, -9), f"{self.where()} killed run exited {code}: {child.err.read_text()[-2000:]}"
        return code, delay

    def report(self, cli_verify: bool = False) -> dict:
        child = self.forks.run("report", str(self.home), "", "cli" if cli_verify else "", env=self.env)
        code = self.forks.wait(child, timeout_s=60)
        assert code == 0, f"{self.where()} store report failed: {child.out.read_text()} {child.err.read_text()[-2000:]}"
        return json.loads(child.out.read_text())

    def check(self, before: dict[str, str], new_allowed: int = 1, cli_verify: bool = False) -> dict:
        """The store after a kill: earlier snapshots intact and verified, nothing partial under a real name."""
        report = self.report(cli_verify)
        snapshots, where = report["snapshots"], self.where()
        for name, content_hash in before.items():
            assert snapshots.get(name) == content_hash, f"{where} {name} changed or vanished: {snapshots.get(name)}"
        for name, verdict in report["verified"].items():
            assert verdict["ok"], f"{where} kbuild verify {name} failed: {verdict['err']}"
        new = set(snapshots) - set(before)
        assert len(new) <= new_allowed, f"{where} more snapshots appeared than one run can publish: {sorted(new)}"
        for name, kind in report["collections"].items():
            if name.startswith(PENDING):
                assert name not in snapshots
            elif name.startswith(TAG):
                assert kind == "tag", f"{where} {name} is not a tag"
            else:
                assert name in snapshots, f"{where} collection {name} is visible under a real name but not a snapshot"
        for tag, target in report["tags"].items():
            assert target in snapshots, f"{where} tag {tag} points at {target}, which is not a snapshot"
        return report

    def classify(self, code: int, before: dict, report: dict, pending_before: int) -> None:
        pending = sum(n.startswith(PENDING) for n in report["collections"])
        if code == 0:
            self.outcomes["finished before the kill"] += 1
        elif set(report["snapshots"]) - set(before):
            self.outcomes["killed after publishing"] += 1
        elif pending > pending_before:
            self.outcomes["killed while writing (pending left)"] += 1
        else:
            self.outcomes["killed before writing"] += 1

    def finish(self, before: dict[str, str]) -> None:
        """``kbuild gc`` removes every leftover; everything still verifies; every trial was counted.

        The time the trials took is printed, not asserted (speed belongs to benchmarks/): a hang is
        caught by the per-command timeouts of the fork server."""
        out, _ = self.run("gc")
        assert out.startswith("removed "), out
        report = self.check(before, new_allowed=0, cli_verify=True)  # 'kbuild verify' itself, on every snapshot
        assert not [n for n in report["collections"] if n.startswith(PENDING)], self.where()
        assert set(report["snapshots"]) == set(before)
        elapsed = time.monotonic() - self.started
        print(f"{self.name}: {TRIALS} trials in {elapsed:.1f} s: {dict(self.outcomes)}")
        assert sum(self.outcomes.values()) == TRIALS


def write_kb(path: Path, prefix: str, classes: int = 10, per_class: int = 20) -> Path:
    data = {f"{prefix} class {c}": [f"{prefix} class {c} shows a visual trait of kind {i}" for i in range(per_class)]
            for c in range(classes)}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def published(out: str) -> tuple[str, str]:
    payload = json.loads(out)
    return payload["snapshot"], payload["content_hash"]


def write_trials(trials: Trials, args_for, base: dict[str, str]) -> dict[str, str]:
    """The loop shared by the commands that publish: kill, check, rerun; returns the final snapshots."""
    duration, out = trials.timed_run(*args_for(0))
    name, content_hash = published(out)
    before = {**base, name: content_hash}
    pending = 0
    for i in range(1, TRIALS + 1):
        args = args_for(i)
        code, delay = trials.kill_at_random(args, duration)
        report = trials.check(before)
        trials.classify(code, before, report, pending)
        pending = sum(n.startswith(PENDING) for n in report["collections"])
        before = dict(report["snapshots"])  # a snapshot published just before the kill is a real one
        if code == 0:
            continue  # the run finished before the kill came: it is its own successful rerun
        out = trials.run(*args)[0]
        name, content_hash = published(out)
        if json.loads(out).get("published") is False:
            # the killed run had published just before the kill: the rerun finds that snapshot
            assert before.get(name) == content_hash, f"{trials.where()} unchanged rerun names {name}"
            continue
        assert name not in before, f"{trials.where()} the rerun reused the name {name}"
        before[name] = content_hash
    return before


@pytest.mark.timeout(240)
def test_load_killed_at_random_points(forks, tmp_path, tiny_model):
    trials = Trials(forks, tmp_path / "store", cli_env(KPL_CLIP_MODEL=tiny_model), "load")
    base = {"snapshot_v1": published(trials.run("load", write_kb(tmp_path / "base.json", "base"), "--json")[0])[1]}
    # A new file each trial, so every run embeds (and caches) new texts before it writes.
    files = [write_kb(tmp_path / f"kb{i}.json", f"trial {i}") for i in range(TRIALS + 1)]
    final = write_trials(trials, lambda i: ["load", files[i], "--json"], base)
    trials.finish(final)


@pytest.mark.timeout(240)
def test_prune_killed_at_random_points(forks, tmp_path, tiny_model):
    trials = Trials(forks, tmp_path / "store", cli_env(KPL_CLIP_MODEL=tiny_model), "prune")
    data = {f"class {c}": [f"class {c} has trait {i % 9}" + (" !" * (i // 9)) for i in range(18)] + ["ok", "x"]
            for c in range(10)}
    source = tmp_path / "base.json"
    source.write_text(json.dumps(data), encoding="utf-8")
    base = {"snapshot_v1": published(trials.run("load", source, "--json")[0])[1]}

    def args_for(i: int) -> list:
        return ["prune", "v1", "--dedup-threshold", f"{0.80 + 0.01 * (i % 15):.2f}", "--json"]

    final = write_trials(trials, args_for, base)
    trials.finish(final)


CLASSES = ["melanoma", "nevus", "keratosis", "dermatofibroma"]


def calls_by_seed(server: FakeLLMServer, seed: int) -> Counter:
    return Counter((c.class_name, c.round) for c in server.calls if c.body.get("seed") == seed)


@pytest.mark.timeout(240)
def test_generate_killed_at_random_points(forks, tmp_path, tiny_model):
    server = FakeLLMServer(CLASSES, per_reply=2, api_key="sk-crash-test").start()
    server._httpd.handle_error = lambda *args: None  # a killed client resets its connection: expected here
    try:
        env = cli_env(KPL_CLIP_MODEL=tiny_model, OPENAI_API_KEY="sk-crash-test")
        trials = Trials(forks, tmp_path / "store", env, "generate")
        classes = tmp_path / "classes.txt"
        classes.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")

        def args_for(i: int) -> list:
            # A new --seed each trial is a new cache key: every trial asks the LLM again, then embeds and
            # writes, so the kills fall on calls, on the call log, on CLIP and on the store alike.
            return ["generate", "--classes", classes, "--base-url", server.url, "--per-class", "4",
                    "--seed", str(i), "--concurrency", "2", "--timeout", "10", "--backoff", "0.01", "--json"]

        final = write_trials(trials, args_for, {})
        log = sqlite3.connect(tmp_path / "store" / "llm" / "calls.sqlite")
        try:
            assert log.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            log.close()
        for i in range(TRIALS + 1):
            counts = calls_by_seed(server, i)
            assert set(counts) == {(c, r) for c in CLASSES for r in (0, 1)}, (trials.where(), i, counts)
            # Only a call in flight at the kill (at most --concurrency 2 of them) can have been sent twice.
            assert sum(counts.values()) - len(counts) <= 2 and max(counts.values()) <= 2, (trials.where(), i, counts)
        trials.finish(final)
    finally:
        server.stop()


@pytest.mark.timeout(180)
def test_tag_killed_at_random_points(forks, tmp_path, tiny_model):
    trials = Trials(forks, tmp_path / "store", cli_env(KPL_CLIP_MODEL=tiny_model), "tag")
    snapshots = {}
    for k in range(3):
        source = write_kb(tmp_path / f"t{k}.json", f"tag {k}", 2, 3)
        name, content_hash = published(trials.run("load", source, "--json")[0])
        snapshots[name] = content_hash
    duration, _ = trials.timed_run("tag", "v1", "pick0")
    tags = {"pick0": "snapshot_v1"}
    for i in range(1, TRIALS + 1):
        tag, target = f"pick{i % 2}", f"snapshot_v{trials.rng.randint(1, 3)}"
        code, _ = trials.kill_at_random(["tag", target, tag], duration)
        report = trials.check(snapshots, new_allowed=0)
        assert set(report["snapshots"]) == set(snapshots)
        assert report["tags"].get(tag) in {tags.get(tag), target}, (trials.where(), report["tags"])
        for other, where_to in tags.items():
            if other != tag:
                assert report["tags"][other] == where_to, (trials.where(), report["tags"])
        moved = report["tags"].get(tag) == target != tags.get(tag)
        trials.outcomes["finished before the kill" if code == 0 else
                        "killed after moving the tag" if moved else "killed before moving the tag"] += 1
        out, _ = trials.run("tag", target, tag)
        assert out.startswith(f"{tag} -> {target}"), out
        tags[tag] = target
    report = trials.check(snapshots, new_allowed=0)
    assert report["tags"] == tags
    trials.finish(snapshots)
