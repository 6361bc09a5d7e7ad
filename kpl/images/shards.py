"""Resumable encoding: a cache entry built from fixed-size shards of the file list.

A long encode (hundreds of thousands of images on a cluster) must survive a killed driver or a
lost node without starting over. So the file list is cut into ranges ``[start, stop)`` of
``shard_size`` files; each finished range is written atomically as its own file in
``<cache>/<key40>.shards/``, named by its range. A rerun with the same key (same files, model,
preprocessing, precision) and shard size finds the finished ranges and encodes only the others.
Once every range is present they are joined into the ordinary ``<key40>.npz`` cache entry, which
is what every other command reads, and the shard folder is removed.

A shard file holds ``features`` (decodable rows only, in file order), ``ok`` (one flag per file
of the range) and ``range`` (start, stop), so a file renamed by hand is never trusted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from kpl.images.features import FeatureCache, atomic_savez, entry_problem, read_entry

DEFAULT_SHARD_SIZE = 4096


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(0, s), (s, 2s), ...]`` covering ``range(count)``; the last range may be shorter."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1 (got {shard_size})")
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


class ShardFolder:
    """The finished shards of one cache key, and how to join them into the cache entry."""

    def __init__(self, cache: FeatureCache, key: str, count: int, shard_size: int = DEFAULT_SHARD_SIZE,
                 dim: int | None = None):
        self.cache, self.key, self.count, self.dim = cache, key, count, dim
        self.ranges = shard_ranges(count, shard_size)
        self.folder = cache.folder / f"{key[:40]}.shards"
        self.rejected: dict[str, str] = {}  # shard file name -> why it is encoded again

    def file(self, start: int, stop: int) -> Path:
        return self.folder / f"{start:010d}-{stop:010d}.npz"

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(features, ok) of a finished range, or None when absent or failing its checks (another
        width, NaN rows, not an .npz: recorded in ``rejected``, encoded again, never joined)."""
        path = self.file(start, stop)
        if not path.is_file():
            return None
        arrays, problem = read_entry(path, ("features", "ok", "range"))
        if arrays is not None:
            if arrays["range"].tolist() != [start, stop]:
                problem = f"holds range {arrays['range'].tolist()}"
            else:
                problem = entry_problem(arrays["features"], arrays["ok"], stop - start, self.dim)
        if problem is not None:
            self.rejected[path.name] = problem
            return None
        assert arrays is not None  # read_entry returns the arrays or a problem, never neither
        return arrays["features"].astype(np.float32, copy=False), arrays["ok"].astype(bool)

    def done(self) -> list[tuple[int, int]]:
        return [r for r in self.ranges if self.read(*r) is not None]

    def missing(self) -> list[tuple[int, int]]:
        return [r for r in self.ranges if self.read(*r) is None]

    def write(self, start: int, stop: int, features: np.ndarray, ok: np.ndarray) -> Path:
        """Store one finished range atomically (a kill mid-write leaves no file under its name)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.file(start, stop)
        atomic_savez(path, {"features": np.asarray(features, dtype=np.float32), "ok": np.asarray(ok, dtype=bool),
                             "range": np.asarray([start, stop], dtype=np.int64)})
        return path

    def join(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """All ranges, in file order: ((N_ok, D) float32, (N,) bool). Every range must be finished.

        Shards are read one at a time into a single preallocated matrix, so joining a million
        rows holds the result plus one shard, never two full copies.
        """
        masks = []
        for start, stop in self.ranges:
            part = self.read(start, stop)
            if part is None:
                raise FileNotFoundError(f"shard {start}-{stop} of {self.key[:12]} is missing")
            masks.append(part[1])
            del part
        ok = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
        features = np.empty((int(ok.sum()), dim), dtype=np.float32)
        row = 0
        for start, stop in self.ranges:
            part = self.read(start, stop)
            if part is None:  # removed since the first pass
                raise FileNotFoundError(f"shard {start}-{stop} of {self.key[:12]} is missing")
            part_features = part[0]
            features[row:row + len(part_features)] = part_features
            row += len(part_features)
        return features, ok

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
