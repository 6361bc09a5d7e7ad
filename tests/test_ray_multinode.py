"""``kpl embed --engine ray`` on a real two-node Ray cluster started the way the README says:
``ray start --head`` and ``ray start --address HEAD:PORT`` (two raylets on 127.0.0.1, one CPU each,
each with its own temp dir), with ``kpl`` run as a separate process. By the GCS address and by
``--ray-address auto`` it gives the default engine's features, and its two encoder actors ran one on
each node; a Ray Client address (``ray://``) is refused in one line, since Ray Data cannot run
through Ray Client (shown here too).

The cluster belongs to this module: its processes run in two process groups of our own (one per
``ray start --block``) and are stopped by those groups, never by ``ray stop`` (which would also
stop the in-process session cluster of tests/conftest.py and any other Ray on the machine)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from test_kpl_features import make_image_folder

from helpers import REPO, cli_env, free_port, run_subprocess

pytest.importorskip("ray", reason="Ray is absent: pip install 'kpl-toolkit[distributed]'")
pytestmark = pytest.mark.slow  # starts a two-node Ray cluster

OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's floor is 75 MiB; the features are a few KiB
# Every process of this cluster inherits this variable, so teardown can find (and stop) exactly them.
MARKER = "KPL_TEST_RAY_MULTINODE"


@dataclass
class TwoNodeCluster:
    gcs: str     # "127.0.0.1:PORT", the address ``ray start --address`` and ``--ray-address`` take
    client: str  # "ray://127.0.0.1:PORT", the Ray Client server on the head
    tmp: Path    # RAY_TMPDIR of the head: ``--ray-address auto`` finds the cluster through it
    env: dict
    seen: set = field(default_factory=set)  # encoder actors of earlier runs


def _ray_env(marker: str) -> dict:
    """The environment of every node and of kpl. The workers import kpl: this checkout comes first.
    Ray 2.60 turns token auth on for ``ray start --head`` whenever ~/.ray/auth_token exists (a local
    ``ray.init()``, such as ``kpl embed --engine ray`` without an address, writes one), and then a node
    or driver without the token is refused; so the cluster runs with a token of its own, given to all."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = cli_env(RAY_USAGE_STATS_ENABLED="0", RAY_DISABLE_DOCKER_CPU_WARNING="1", PYTHONPATH=path,
                  RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), **{MARKER: marker})
    env.pop("RAY_ADDRESS", None)  # it would override every address given to ray and kpl
    return env


def _start_node(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """``ray start ... --block`` in a new session (its own process group), returned once Ray says it runs."""
    ray = Path(sys.executable).with_name("ray")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ray), "start", "--block", *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**env, "PYTHONUNBUFFERED": "1"}, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_groups([proc])  # whatever it started before failing
            raise RuntimeError(f"ray start {args[0]} failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc


def _stop_groups(procs: list[subprocess.Popen]) -> None:
    """SIGKILL the process groups of our ``ray start --block`` (raylet, GCS, agents, workers), at once.

    SIGTERM would make ``ray start`` wait for each process in turn (about 10 s); this test cluster keeps
    nothing worth a graceful stop, and the marker sweep below catches anything that left the group."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        proc.wait(timeout=10)


def _marked_pids(marker: str) -> list[int]:
    """Our processes that carry ``MARKER=marker`` in their environment (any that left our groups)."""
    needle = f"{MARKER}={marker}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone, or not ours
                pass
    return pids


# The cluster's node and actor tables, read from its GCS by a child process that has the cluster's
# token (this process may hold the session cluster, without one). The public state API (``ray list
# actors``, ``ray.util.state``) is served by the dashboard, which needs ``ray[default]``; the
# ``[distributed]`` extra installs ``ray[data]`` only, so this reads the same tables through Ray's
# ``GlobalState`` (what ``ray.nodes()`` uses) without joining the cluster as a driver.
_READ_TABLES = """
import json, sys, time
from ray._private.services import _get_gcs_client_options
from ray._private.state import GlobalState

state = GlobalState()
state._initialize_global_state(_get_gcs_client_options(sys.argv[1]))
deadline = time.monotonic() + 30
while True:  # a node that has just started may not be registered yet
    nodes = [n["NodeID"] for n in state.node_table() if n["Alive"]]
    if len(nodes) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.2)
actors = {key: {"class": info["ActorClassName"], "node": info["Address"]["NodeID"], "state": info["State"]}
          for key, info in state.actor_table(None).items() if "_Encoder" in info["ActorClassName"]}
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def read_tables(cluster: TwoNodeCluster, nodes: int = 2) -> dict:
    """{"nodes": alive node ids, "actors": {id: class, node, state}} of the actors that ran ``_Encoder``."""
    proc = subprocess.run([sys.executable, "-c", _READ_TABLES, cluster.gcs, str(nodes)], capture_output=True,
                          text=True, env=cluster.env, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def two_nodes():
    """The head (GCS, Ray Client server) and one worker node, each ``ray start --block`` in its own group."""
    # Short path: Ray's Unix sockets live under the temp dir (107-byte limit), pytest's tmp_path is long.
    base = Path(tempfile.mkdtemp(prefix="kplray", dir="/tmp"))
    env = _ray_env(base.name)
    gcs_port, client_port = free_port(), free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
              "--object-store-memory", str(OBJECT_STORE_BYTES), "--min-worker-port", "0", "--max-worker-port", "0",
              "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start_node(
            ["--head", "--port", str(gcs_port), "--ray-client-server-port", str(client_port),
             "--include-dashboard=false", "--dashboard-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(base / "head" / "ray"), *common],
            base / "head.log", env))
        gcs = f"127.0.0.1:{gcs_port}"
        procs.append(_start_node(
            ["--address", gcs, "--dashboard-agent-listen-port", str(free_port()),
             "--temp-dir", str(base / "worker"), *common], base / "worker.log", env))
        cluster = TwoNodeCluster(gcs, f"ray://127.0.0.1:{client_port}", base / "head", env)
        tables = read_tables(cluster)
        assert len(tables["nodes"]) == 2, "the second node never joined the head"
        cluster.seen.update(tables["actors"])
        yield cluster
    finally:
        _stop_groups(procs)
        for pid in _marked_pids(base.name):  # none expected; never leave a stray raylet worker behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)


def exported(path: Path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def embed(images: Path, cache: Path, export: Path, *extra: str, env: dict) -> dict:
    result = run_subprocess("kpl", "embed", "--data", str(images), "--cache-dir", str(cache), "--json",
                            "--export", str(export), *extra, env=env, timeout=240)
    assert result.code == 0, result.err[-3000:]
    return result.json()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("multinode") / "images", per_class=3)


@pytest.fixture(scope="module")
def local_run(images, tiny_model, tmp_path_factory):
    """The default engine through kpl's CLI, in this process (it has torch loaded already): the reference."""
    from kbuild.cli.app import run_with_boundary
    from kpl.cli import app

    folder = tmp_path_factory.mktemp("local")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setenv("KPL_CLIP_MODEL", tiny_model)
        code = run_with_boundary(app, "kpl", ["embed", "--data", str(images), "--cache-dir", str(folder / "cache"),
                                              "--json", "--export", str(folder / "local.npz")])
    assert code == 0, err.getvalue()
    report = json.loads(out.getvalue())
    assert report["encoded"] == 10 and report["corrupt"] == 1  # 3 x 3 images, 1 corrupt
    return report, exported(folder / "local.npz")


def assert_same_features(ray_report: dict, ray_npz: Path, local_run) -> None:
    local, reference = local_run
    assert ray_report["cache"]["engine"] == "ray" and ray_report["cache"]["key"] == local["cache"]["key"]
    assert ray_report["encoded"] == local["encoded"] and ray_report["corrupt_files"] == local["corrupt_files"]
    got = exported(ray_npz)
    assert got["paths"].tolist() == reference["paths"].tolist()
    assert got["labels"].tolist() == reference["labels"].tolist()
    assert np.abs(got["image_features"] - reference["image_features"]).max() < 1e-4


def run_on_cluster(cluster: TwoNodeCluster, address: str, images, tiny_model, folder: Path, **env: str):
    """``kpl embed --engine ray --ray-address ADDRESS --ray-actors 2`` as its own process; returns
    (report, export, the encoder actors this run created, the cluster's alive nodes)."""
    env = {**cluster.env, "KPL_CLIP_MODEL": tiny_model, **env}
    report = embed(images, folder / "cache", folder / "ray.npz", "--engine", "ray", "--ray-address", address,
                   "--ray-actors", "2", "--shard-size", "4", "--batch-size", "2", env=env)
    after = read_tables(cluster)
    actors = {key: info for key, info in after["actors"].items() if key not in cluster.seen}
    cluster.seen.update(actors)
    return report, folder / "ray.npz", actors, set(after["nodes"])


def assert_one_encoder_per_node(actors: dict, nodes: set) -> None:
    assert len(actors) == 2 and len(nodes) == 2, (actors, nodes)
    assert {info["node"] for info in actors.values()} == nodes, actors
    assert {info["state"] for info in actors.values()} == {"DEAD"}  # the run ended and released them


def test_embed_on_two_nodes_by_gcs_address_equals_the_local_engine(two_nodes, images, tiny_model, local_run,
                                                                    tmp_path):
    """Both encoder actors ran, one on each node (each node has one CPU, each actor takes one); the
    node of each actor is read from the GCS actor table after the run, when the actors are dead."""
    report, npz, actors, nodes = run_on_cluster(two_nodes, two_nodes.gcs, images, tiny_model, tmp_path)
    assert report["cache"]["status"] == "miss" and report["cache"]["shards"]["total"] == 3
    assert_same_features(report, npz, local_run)
    assert_one_encoder_per_node(actors, nodes)


def test_embed_with_address_auto_finds_the_cluster_started_by_ray_start(two_nodes, images, tiny_model, local_run,
                                                                       tmp_path):
    """``--ray-address auto`` on the head reads the address ``ray start --head`` left in its temp dir
    (here RAY_TMPDIR, so this cluster is found and not the session cluster or any other)."""
    report, npz, actors, nodes = run_on_cluster(two_nodes, "auto", images, tiny_model, tmp_path,
                                                RAY_TMPDIR=str(two_nodes.tmp))
    assert report["cache"]["status"] == "miss"
    assert_same_features(report, npz, local_run)
    assert_one_encoder_per_node(actors, nodes)


# Ray Data through Ray Client, without kpl: what kpl's refusal below rests on. The head's client
# server starts one server process per connection; under load that has once failed to come up, so a
# failed connection is tried once more (never falling back to a local cluster).
_RAY_DATA_THROUGH_CLIENT = """
import sys, ray
for attempt in range(2):
    try:
        ray.init(sys.argv[1], log_to_driver=False)
        break
    except ConnectionAbortedError as err:
        print("no connection:", err, file=sys.stderr)
else:
    sys.exit(3)
try:
    print("ran", len(ray.data.range(4).map_batches(lambda batch: batch).take_all()))
except AttributeError as err:
    print("failed:", err)
"""


def client_server_logs(cluster: TwoNodeCluster) -> str:
    return "".join(f"\n== {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                   for p in sorted(cluster.tmp.glob("ray/session_latest/logs/ray_client_server*")))


def test_ray_client_address_is_refused_in_one_line(two_nodes, images, tiny_model, tmp_path):
    """``ray://HEAD:10001`` (Ray Client) cannot drive Ray Data in Ray 2.60: its streaming executor
    needs the driver's core worker, which a Ray Client process has not (``'Worker' object has no
    attribute 'core_worker'``; ray-project/ray#41333). Through it, ``kpl embed`` failed part-way with
    Ray's logged traceback and a "rerun to resume" hint that could never help; kpl now refuses such an
    address, given as --ray-address or in RAY_ADDRESS (which ray.init would take), before any work,
    and says what works. The first check fails once a Ray release lifts the limit (then drop the
    refusal, kpl.images.ray_engine._refuse_ray_client)."""
    probe = subprocess.run([sys.executable, "-c", _RAY_DATA_THROUGH_CLIENT, two_nodes.client], capture_output=True,
                           text=True, env=two_nodes.env, timeout=120, cwd=REPO)
    assert "failed: 'Worker' object has no attribute 'core_worker'" in probe.stdout, (
        probe.stdout + probe.stderr[-3000:] + client_server_logs(two_nodes))

    env = {**two_nodes.env, "KPL_CLIP_MODEL": tiny_model}
    args = ["embed", "--data", str(images), "--cache-dir", str(tmp_path / "cache"), "--engine", "ray"]
    for result in (run_subprocess("kpl", *args, "--ray-address", two_nodes.client, env=env),
                   run_subprocess("kpl", *args, env={**env, "RAY_ADDRESS": two_nodes.client})):
        assert result.code == 2 and "Traceback" not in result.err, result.err[-3000:]
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and two_nodes.client in lines[0] and "Ray Client" in lines[0], lines
        assert "--ray-address auto" in lines[0]
    assert not (tmp_path / "cache").exists()
