"""``--engine ray``: encode an image collection on a Ray cluster into the ordinary feature cache.

Ray Data reads the file list (index, path), a pool of CLIP encoder actors maps batches of it
(one actor per GPU, or ``--ray-actors N`` on CPUs), and the driver collects the rows by their
carried index, never by Ray's row order. Finished ranges of ``shard_size`` files are written
atomically as shards (kpl.images.shards), so a killed run resumes with the missing ranges only; when
all are there they are joined into the same ``<key>.npz`` entry, under the same key, that the
in-process encoder writes. Everything downstream (``kpl eval``, sweep, compare) is unchanged and
encodes nothing when the entry is there.

Each actor decodes and preprocesses with the very code of the in-process engine
(``kpl.images.features.ImageFiles``) and the same model loader, and checks that its model has the
driver's ``model_id``, so both engines give the same features (to batch-composition rounding).
Image paths must be readable at the same path on every node (a shared filesystem); the cache
only has to be on the driver's machine, since features come back to the driver.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from kbuild.errors import KbuildError
from kpl.errors import KplError, UsageError
from kpl.images.datasets import ImageDataset
from kpl.images.features import FeatureSet, ImageRequest, Progress, feature_set, look_up, precision_of
from kpl.images.shards import DEFAULT_SHARD_SIZE, ShardFolder

ENGINES = ("local", "ray")
INSTALL_HINT = "pip install 'kpl-toolkit[distributed]'"
# Ray must never phone home or wait on the network from this offline tool.
# Its core-worker log line about actor constructor arguments (Ray Data's own actors) is noise for
# our users; failures still surface as Python exceptions.
_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
            "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_BACKEND_LOG_LEVEL": "fatal"}


@dataclass(frozen=True)
class EngineSpec:
    """How to encode images: in this process (``local``) or on Ray (``address`` None: a local cluster)."""

    name: str = "local"
    address: str | None = None
    actors: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE

    def validate(self) -> EngineSpec:
        """Return self, or raise naming the bad value; ``ray`` also needs Ray to be importable."""
        if self.name not in ENGINES:
            raise UsageError(f"--engine {self.name!r} is not an engine (choose local or ray)")
        if self.actors is not None and self.actors < 1:
            raise UsageError(f"--ray-actors must be >= 1 (got {self.actors})")
        if self.shard_size < 1:
            raise UsageError(f"--shard-size must be >= 1 (got {self.shard_size})")
        if self.name == "local" and (self.address or self.actors):
            raise UsageError("--ray-address and --ray-actors need --engine ray")
        if self.name == "ray":
            _refuse_ray_client(self.address)
            _check_address(self.address)
            import_ray()
        return self

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "actors": self.actors, "shard_size": self.shard_size}


def _refuse_ray_client(address: str | None) -> None:
    """Ray Data's executor needs a driver on a cluster node: through Ray Client (``ray://``) it fails
    part-way with Ray's traceback (ray-project/ray#41333). ray.init takes RAY_ADDRESS when no address
    is given, so that is checked too."""
    where, value = ("--ray-address", address) if address else ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS"))
    if value and value.strip().lower().startswith("ray://"):
        raise UsageError(f"{where} {value} is a Ray Client address, which Ray Data cannot run through: run kpl "
                         "on a node of the cluster with --ray-address auto (or HEAD_IP:6379)")


CONNECT_TIMEOUT_S = 5.0  # ray.init retries an unreachable address for ten minutes, printing its own log lines


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of an explicit ``HOST:PORT``; None for ``auto``/``local`` (Ray finds those itself)."""
    if address.strip().lower() in ("auto", "local"):
        return None
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--ray-address {address}: the port must be a number from 1 to 65535 (give HOST:PORT, "
                         "the head's GCS address, 6379 by default; or auto on a node of the cluster)")
    return host.strip("[]"), int(port)


def _check_address(address: str | None) -> None:
    """A malformed or unresolvable ``--ray-address`` is a usage error before anything starts."""
    target = _host_port(address) if address else None
    if target is None:
        return
    try:
        socket.getaddrinfo(target[0], target[1], type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UsageError(f"--ray-address {address}: cannot resolve the host '{target[0]}' (check the name, or "
                         "give the head's IP address)") from None


def _probe(address: str) -> None:
    """Refuse in seconds an address where nothing listens: ray.init would retry it for minutes."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = "connection refused" if isinstance(err, ConnectionRefusedError) else (
            f"no answer in {CONNECT_TIMEOUT_S:g} s" if isinstance(err, TimeoutError) else (err.strerror or str(err)))
        raise KplError(f"Cannot reach a Ray cluster at {address} ({reason}): check --ray-address (the head's "
                       "GCS address, HOST:6379), or start one with 'ray start --head'") from None


_RAY_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d [^\]]*\] [\w./-]+\.(cc|h):\d+: ")


@contextlib.contextmanager
def _ray_log_lines_dropped():
    """Ray's C++ core writes its own log lines (``[date pid] logging.cc:303: Set ray log level ...`` on
    every run) straight to file descriptor 2: while Ray starts or stops, fd 2 goes to a spool, and
    everything else in it is written back."""
    try:
        sys.stderr.flush()
        saved, spool = os.dup(2), tempfile.TemporaryFile()
        os.dup2(spool.fileno(), 2)
    except (OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        spool.seek(0)
        kept = b"".join(line for line in spool.read().splitlines(keepends=True) if not _RAY_LOG_LINE.match(line))
        spool.close()
        if kept:
            os.write(2, kept)


def import_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or a one-line error saying what to install."""
    for key, value in _RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise KplError(f"--engine ray needs Ray Data, which is not installed ({INSTALL_HINT})") from None
    return ray


class _Cluster:
    """Connect to ``address`` or start a local cluster; shut down only a cluster this process started."""

    def __init__(self, address: str | None) -> None:
        self.ray, self.address, self.started = import_ray(), address, False

    def __enter__(self) -> ModuleType:
        import logging

        ray = self.ray
        # Ray's own notices (token auth, progress bars) are not ours to print; its errors still come through.
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        if not ray.is_initialized():
            if self.address:
                _probe(self.address)
            try:
                with _ray_log_lines_dropped():
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                             configure_logging=False, ignore_reinit_error=True)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = self.address or "a local cluster"
                raise KplError(f"Cannot start Ray on {where}: {str(err).splitlines()[0] if str(err) else err} "
                                  "(check --ray-address, or start one with 'ray start --head')") from None
            self.started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        return ray

    def __exit__(self, *exc: object) -> None:
        if self.started:
            with _ray_log_lines_dropped():
                self.ray.shutdown()


@dataclass(frozen=True)
class EncoderSpec:
    """What each encoder actor loads: the driver's model choice, its id (checked on the node), where it runs."""

    model: str
    pretrained: str | None
    device: str
    model_id: str
    threads: int


class _Encoder:
    """A Ray Data actor: the CLIP model loaded once, applied to batches of (index, path)."""

    def __init__(self, spec: EncoderSpec) -> None:
        import torch

        from kbuild.clip.models import load_clip
        from kpl.images.features import ImageFiles, placeholder_image

        if spec.device == "cpu":
            torch.set_num_threads(spec.threads)
        self.clip = load_clip(spec.model, spec.pretrained, spec.device)
        if self.clip.model_id != spec.model_id:
            raise KplError(f"the model on this Ray node is {self.clip.model_id}, the driver's is {spec.model_id} "
                           "(give every node the same weights)")
        self.files: Callable[[list[Path]], ImageFiles] = lambda paths: ImageFiles(paths, self.clip.preprocess, placeholder_image(self.clip.preprocess))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        files = self.files([Path(p) for p in batch["path"].tolist()])
        items = [files[i] for i in range(len(files))]
        ok = np.array([good for _, _, good in items], dtype=bool)
        features = np.zeros((len(items), self.clip.dim), dtype=np.float32)
        if ok.any():
            images = torch.stack([image for image, _, good in items if good])
            features[ok] = self.clip.encode_image_batch(images)
        return {"index": batch["index"], "ok": ok, "features": features}


@dataclass(frozen=True)
class ActorPlan:
    """How the encoder actors are laid out on this cluster."""

    device: str
    actors: int
    resources: dict[str, float]  # per actor: num_gpus or num_cpus
    threads: int  # torch threads per actor


def _actor_plan(ray: ModuleType, device: str | None, actors: int | None) -> ActorPlan:
    """Where the encoder actors run, how many, and what each reserves on this cluster."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    device = device or ("cuda" if gpus else "cpu")
    if device == "cuda":
        if not gpus:
            raise KplError("--device cuda, but the Ray cluster has no GPU (drop --device, or add GPU nodes)")
        count = actors or gpus
        return ActorPlan(device, count, {"num_gpus": min(1.0, gpus / count)}, 1)  # more actors than GPUs share them
    if device != "cpu":
        raise UsageError(f"--engine ray encodes on cuda or cpu (got --device {device})")
    cpus = max(1, int(resources.get("CPU", 1)))
    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    count = actors or max(1, cpus // 4)
    per_actor = max(1, min(min(node_cpus or [cpus]), cpus // count))
    return ActorPlan(device, count, {"num_cpus": per_actor}, per_actor)


def _precision(device: str) -> str:
    return "fp16-autocast" if device == "cuda" else "fp32"


def encode_dataset_ray(dataset: ImageDataset, clip: Any, request: ImageRequest, engine: EngineSpec,
                       progress: Progress | None = None) -> FeatureSet:
    """Like ``kpl.images.features.encode_dataset``, with the encoding done by Ray actors, in shards.

    ``request`` gives the model choice, device, batch size and cache folder (its data was read into ``dataset``).
    """
    batch_size, cache_dir = request.batch_size, request.cache_dir
    if batch_size < 1:
        raise KplError(f"batch size must be >= 1 (got {batch_size})")
    count = len(dataset)
    # A finished entry (from either engine) needs no cluster at all.
    if cache_dir is not None:
        early = look_up(dataset, clip, cache_dir, precision_of(clip), engine="ray")
        if early.hit is not None:
            features, ok = early.hit
            return feature_set(dataset, clip, features=features, ok=ok, cache_info=early.info, encoded=0,
                               device=clip.device, precision=precision_of(clip))
    with _Cluster(engine.address) as ray:
        plan = _actor_plan(ray, request.device, engine.actors)
        device, precision = plan.device, _precision(plan.device)
        scratch = None
        if cache_dir is None:  # --no-cache: shards still need a home for this run (and nothing is kept)
            scratch = tempfile.TemporaryDirectory(prefix="kpl-shards-")
        found = look_up(dataset, clip, Path(scratch.name) if scratch else cache_dir, precision, engine="ray")
        cache, key, cache_info = found.cache, found.key, found.info
        assert cache is not None  # look_up was given a folder: the cache's, or this run's scratch one
        if scratch is not None:
            cache_info = {"status": "off", "key": cache_info["key"], "engine": "ray"}
        try:
            if found.hit is not None and scratch is None:
                features, ok = found.hit
                return feature_set(dataset, clip, features=features, ok=ok, cache_info=cache_info, encoded=0,
                                   device=device, precision=precision)
            shards = ShardFolder(cache, key, count, engine.shard_size, dim=clip.dim)
            missing = shards.missing()
            cache_info["shards"] = {"total": len(shards.ranges), "reused": len(shards.ranges) - len(missing),
                                    "size": engine.shard_size}
            rejected = [cache.rejected] if cache.rejected else []
            rejected += [f"{len(shards.rejected)} shard(s), e.g. {name}: {why}"
                         for name, why in list(shards.rejected.items())[:1]]
            if rejected:
                cache_info["rejected"] = "; ".join(rejected)
            spec = EncoderSpec(request.model, request.pretrained, device, clip.model_id, plan.threads)
            encoded = _encode_missing(ray, dataset, shards=shards, missing=missing, spec=spec, plan=plan,
                                      batch_size=batch_size, progress=progress)
            features, ok = shards.join(clip.dim)
            # kept shards let a rerun join them without encoding when the entry could not be written
            if scratch is None and found.save(dataset, clip, features, ok, precision, engine="ray"):
                shards.remove()
            return feature_set(dataset, clip, features=features, ok=ok, cache_info=cache_info, encoded=encoded,
                               device=device, precision=precision)
        finally:
            if scratch is not None:
                scratch.cleanup()


def _encode_missing(ray: ModuleType, dataset: ImageDataset, shards: ShardFolder, missing: list[tuple[int, int]],
                    spec: EncoderSpec, plan: ActorPlan, *, batch_size: int, progress: Progress | None) -> int:
    """Encode the ``missing`` ranges on the actor pool, writing each shard as soon as it is complete."""
    import pyarrow as pa

    total = len(dataset)
    todo = sum(stop - start for start, stop in missing)
    done = total - todo
    if progress:
        progress(done, total)
    if not missing:
        return 0
    # One block per shard: Ray spreads blocks over the actors, and a shard finishes as a unit.
    tables = [pa.table({"index": np.arange(start, stop, dtype=np.int64),
                        "path": [str(p) for p in dataset.paths[start:stop]]}) for start, stop in missing]
    size = shards.ranges[0][1] - shards.ranges[0][0]
    pending: dict[int, list[Any]] = {}  # range start -> [features (n, D), ok (n,), rows received]
    ends = dict(missing)
    mapped = ray.data.from_arrow(tables).map_batches(
        _Encoder, fn_constructor_kwargs={"spec": spec}, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors), **plan.resources)
    try:
        for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            index = batch["index"].astype(np.int64)
            starts = (index // size) * size
            for start in np.unique(starts).tolist():
                rows = starts == start
                stop = ends[start]
                slot = pending.setdefault(start, [np.zeros((stop - start, batch["features"].shape[1]), np.float32),
                                                  np.zeros(stop - start, dtype=bool), 0])
                local = index[rows] - start
                slot[0][local] = batch["features"][rows]
                slot[1][local] = batch["ok"][rows]
                slot[2] += int(rows.sum())
                if slot[2] == stop - start:
                    shards.write(start, stop, slot[0][slot[1]], slot[1])
                    del pending[start]
            done += len(index)
            if progress:
                progress(done, total)
    except KbuildError:
        raise
    except Exception as err:  # a Ray task/actor failure: say what, keep the finished shards
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise KplError(f"Ray encoding failed: {first[:300]} (finished shards are kept; rerun to resume)") from None
    if pending:
        raise KplError(f"Ray encoding ended with {len(pending)} shard(s) incomplete (rerun to resume)")
    return todo
