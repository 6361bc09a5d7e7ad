"""``--engine ray``: the same features and cache entry as the in-process encoder, resumable shards,
and one clear line when Ray is not installed. Ray runs as one local 2-CPU cluster (conftest)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_kpl_features import make_image_folder

from helpers import REPO, cli_env, run_subprocess
from kpl.images.features import FeatureCache
from kpl.images.shards import ShardFolder, shard_ranges


def embed(kpl, images: Path, cache: Path, *extra: str) -> dict:
    result = kpl("embed", "--data", images, "--cache-dir", cache, "--json", *extra)
    assert result.code == 0, result.err
    return result.json()


def exported(path: Path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def test_ray_engine_equals_local_engine_and_shares_its_cache(kpl, clip_env, ray_cluster, tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=7)
    local = embed(kpl, images, tmp_path / "local_cache", "--export", tmp_path / "local.npz")
    ray_run = embed(kpl, images, tmp_path / "ray_cache", "--engine", "ray", "--ray-actors", "2",
                    "--shard-size", "5", "--batch-size", "3", "--export", tmp_path / "ray.npz")
    assert ray_run["encoded"] == local["encoded"] == 22 and ray_run["corrupt"] == local["corrupt"] == 1
    assert ray_run["corrupt_files"] == local["corrupt_files"]
    assert ray_run["cache"]["key"] == local["cache"]["key"] and ray_run["cache"]["shards"]["total"] == 5
    a, b = exported(tmp_path / "local.npz"), exported(tmp_path / "ray.npz")
    assert a["paths"].tolist() == b["paths"].tolist() and a["labels"].tolist() == b["labels"].tolist()
    assert np.abs(a["image_features"] - b["image_features"]).max() < 1e-4
    # the Ray run left one ordinary cache entry (no shard folder): the default engine encodes nothing
    assert [p.name for p in (tmp_path / "ray_cache").iterdir()] == [Path(ray_run["cache"]["file"]).name]
    again = embed(kpl, images, tmp_path / "ray_cache")
    assert again["cache"]["status"] == "hit" and again["encoded"] == 0


def test_ray_engine_without_cache_leaves_nothing_behind(kpl, clip_env, ray_cluster, tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=2, junk=False)
    result = kpl("embed", "--data", images, "--no-cache", "--engine", "ray", "--shard-size", "2", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["cache"]["status"] == "off" and report["encoded"] == 6 and report["images"] == 6
    assert not (clip_env / "cache").exists()


@pytest.mark.slow
def test_killed_ray_run_resumes_with_the_missing_shards(kpl, clip_env, ray_cluster, tmp_path):
    # Large images so the run lasts long enough to be killed in the middle of it.
    images = make_image_folder(tmp_path / "images", per_class=20, size=384, junk=False)
    cache = tmp_path / "cache"
    args = ["embed", "--data", images, "--cache-dir", cache, "--engine", "ray", "--ray-address", ray_cluster,
            "--ray-actors", "1", "--shard-size", "6", "--batch-size", "2", "--json"]
    proc = subprocess.Popen([sys.executable, "-c", "from kpl.cli import main; main()", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env(), cwd=REPO)
    deadline = time.monotonic() + 120
    finished = []
    while time.monotonic() < deadline and proc.poll() is None:
        # finished shards only: pathlib's * also matches the hidden temp file of a shard being written
        finished = [p for p in cache.glob("*.shards/*.npz") if not p.name.startswith(".")]
        if len(finished) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not list(cache.glob("*.npz")), "the run finished before it could be killed"
    # finished shards only: a shard being written when the kill came is a hidden temp file (atomic write)
    kept = {p.name for p in cache.glob("*.shards/*.npz") if not p.name.startswith(".")}
    assert 2 <= len(kept) < 10  # 60 images in shards of 6

    resumed = run_subprocess("kpl", *args, env=cli_env())
    assert resumed.code == 0, resumed.err
    report = resumed.json()
    reused = report["cache"]["shards"]["reused"]
    assert reused >= len(kept) and report["encoded"] == 60 - 6 * reused
    assert not list(cache.glob("*.shards")), "shards are removed once joined into the cache entry"
    local = embed(kpl, images, tmp_path / "local_cache", "--export", tmp_path / "local.npz")
    hit = embed(kpl, images, cache, "--export", tmp_path / "ray.npz")
    assert hit["cache"]["status"] == "hit" and hit["cache"]["key"] == local["cache"]["key"]
    a, b = exported(tmp_path / "local.npz"), exported(tmp_path / "ray.npz")
    assert a["paths"].tolist() == b["paths"].tolist()
    assert np.abs(a["image_features"] - b["image_features"]).max() < 1e-4


def test_unreadable_shard_is_encoded_again(tmp_path):
    shards = ShardFolder(FeatureCache(tmp_path), "ab" * 32, 10, shard_size=4)
    assert shards.ranges == shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    for start, stop in shards.ranges:
        ok = np.arange(start, stop) % 3 != 0
        shards.write(start, stop, np.full((int(ok.sum()), 2), start, dtype=np.float32), ok)
    assert shards.missing() == []
    features, ok = shards.join(2)
    assert ok.tolist() == [i % 3 != 0 for i in range(10)] and features[:, 0].tolist() == [0, 0, 4, 4, 4, 8]
    shards.file(4, 8).write_bytes(b"truncated")
    shards.file(0, 4).rename(shards.file(0, 3))  # a file under another range's name is not trusted
    assert shards.missing() == [(0, 4), (4, 8)]
    with pytest.raises(FileNotFoundError):
        shards.join(2)


@pytest.mark.slow
def test_without_ray_one_line_says_what_to_install(clip_env, tmp_path):
    blocker = tmp_path / "no_ray" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('ray is not installed here')\n")
    images = make_image_folder(tmp_path / "images", per_class=1, junk=False)
    env = cli_env(PYTHONPATH=f"{tmp_path / 'no_ray'}:{REPO}")
    result = run_subprocess("kpl", "embed", "--data", images, "--engine", "ray", env=env)
    assert result.code == 1 and "Traceback" not in result.err
    assert result.err.strip().splitlines() == [
        "Error: --engine ray needs Ray Data, which is not installed (pip install 'kpl-toolkit[distributed]')"]


@pytest.mark.parametrize("args, message", [
    (["--engine", "spark"], "--engine 'spark' is not an engine"),
    (["--ray-actors", "2"], "need --engine ray"),
    (["--engine", "ray", "--ray-actors", "0"], "--ray-actors must be >= 1"),
    (["--engine", "ray", "--shard-size", "0"], "--shard-size must be >= 1"),
])
def test_bad_engine_options_are_usage_errors(kpl, clip_env, tmp_path, args, message):
    result = kpl("embed", "--data", tmp_path, *args)
    assert result.code == 2 and message in result.err.strip().splitlines()[-1], result.err


def test_eval_with_ray_engine_then_default_engine_hits_the_cache(kpl, clip_env, kbuild, ray_cluster, tmp_path):
    (tmp_path / "kb.json").write_text(json.dumps({"bird": ["feathers", "a beak"], "cat": ["whiskers"],
                                                  "dog": ["floppy ears", "a wet nose"]}), encoding="utf-8")
    assert kbuild("load", tmp_path / "kb.json").code == 0
    images = make_image_folder(tmp_path / "images", per_class=4)
    common = ["eval", "--kb", "latest", "--data", images, "--cache-dir", tmp_path / "cache", "--iters", "50",
              "--methods", "clip,kpl", "--json"]
    first = kpl(*common, "--engine", "ray", "--shard-size", "4")
    assert first.code == 0, first.err
    assert "(miss, 13 encoded)" in first.err
    second = kpl(*common)
    assert second.code == 0 and "(hit, 0 encoded)" in second.err, second.err
    confusion = [{m: r["confusion_matrix"] for m, r in run.json()["results"].items()} for run in (first, second)]
    assert confusion[0] == confusion[1] and len(confusion[0]) >= 2


def test_a_ray_run_prints_no_raw_ray_log_lines(clip_env, ray_cluster, tmp_path):
    """Before (issue 23, item 18): every run printed Ray's own '[date pid] logging.cc:303: Set ray log
    level from environment variable ...' line on stderr (from its C++ core, on file descriptor 2)."""
    import re

    images = make_image_folder(tmp_path / "images", per_class=1, junk=False)
    result = run_subprocess("kpl", "embed", "--data", images, "--cache-dir", tmp_path / "cache", "--engine", "ray",
                            "--ray-address", ray_cluster, env=cli_env())
    assert result.code == 0, result.err
    raw = [line for line in result.err.splitlines() if re.match(r"\[\d{4}-\d\d-\d\d ", line)]
    assert raw == [], result.err
