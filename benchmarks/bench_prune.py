"""Benchmark: ``prune_descriptions`` on 50 000 descriptions whose embeddings are cached.

docs/ALGORITHM.md target: prune of 50 000 descriptions with cached embeddings in < 10 s,
peak memory printed. Inputs are synthetic but shaped like CLIP text embeddings: every row shares
one direction (cross-class cosine ~0.67, same-class ~0.76), and each class has planted exact
duplicates, near duplicates (cosine ~0.99), texts copied into another class and near-identical
texts in another class, so every stage has real work and the counts can be checked.

    python benchmarks/bench_prune.py              # 100 classes x 500, D 512
    python benchmarks/bench_prune.py --quick      # 20 classes x 250, D 256

Each configuration runs twice: once for time, once under tracemalloc for the peak of Python and
numpy allocations (tracemalloc slows Python code, so it does not share the timed run).
"cpu s" is the CPU time of all threads: on a shared machine it shows the work that wall time
hides behind other processes (run with OPENBLAS_NUM_THREADS=1 to keep BLAS spin-waits out of it).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kbuild.descriptions import Description  # noqa: E402
from kbuild.prune.core import STAGES, PruneParams, prune_descriptions  # noqa: E402

TARGET_SECONDS = 10.0
# Planted per class: exact duplicates, near duplicates, copies into the next class, near copies.
PLANTED = {"exact": 5, "near": 8, "copy": 4, "near_copy": 3}


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def make_kb(classes: int, per_class: int, dim: int, seed: int = 0):
    """(descriptions, (M, D) embeddings, expected removals by stage) with planted collisions."""
    rng = np.random.default_rng(seed)
    shared, centres = unit(rng.standard_normal(dim)), unit(rng.standard_normal((classes, dim)))
    base = per_class - sum(PLANTED.values())
    texts, labels, rows = [], [], []

    def add(c, text, vector):
        texts.append(text), labels.append(c), rows.append(vector)

    for c in range(classes):
        noise = unit(rng.standard_normal((base, dim)))
        for i, v in enumerate(unit(0.82 * shared + 0.3 * centres[c] + 0.49 * noise)):
            add(c, f"class {c} trait {i} seen in the image", v)
    x = np.stack(rows)
    for c in range(classes):
        first = c * base
        other = (c + 1) % classes
        for i in range(PLANTED["exact"]):
            add(c, f"  class {c} trait {i}   seen in the image ", x[first + i])
        for i in range(PLANTED["near"]):
            add(c, f"class {c} trait {10 + i}, seen in this image", _nudge(rng, x[first + 10 + i]))
        for i in range(PLANTED["copy"]):
            add(other, texts[first + 30 + i], x[first + 30 + i])
        for i in range(PLANTED["near_copy"]):
            add(other, f"class {c} trait {40 + i} as seen in the image", _nudge(rng, x[first + 40 + i]))
    descriptions = [Description(f"class {c:03d}", t, source="bench:synthetic") for c, t in zip(labels, texts)]
    expected = {"exact": PLANTED["exact"] * classes, "near_duplicate": PLANTED["near"] * classes,
                "cross_class": 2 * (PLANTED["copy"] + PLANTED["near_copy"]) * classes}
    return descriptions, np.stack(rows).astype(np.float32), expected


def _nudge(rng, v: np.ndarray) -> np.ndarray:
    """A copy of unit v at cosine ~0.99 (noise of norm ~0.1)."""
    return unit(v + 0.1 * unit(rng.standard_normal(v.shape)))


def timed(descriptions, x, params):
    """(result, wall seconds, CPU seconds of all threads): a busy machine shows wall >> CPU / cores."""
    started, cpu = time.perf_counter(), time.process_time()
    result = prune_descriptions(descriptions, x, params)
    return result, time.perf_counter() - started, time.process_time() - cpu


def traced_peak(descriptions, x, params) -> float:
    tracemalloc.start()
    prune_descriptions(descriptions, x, params)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 classes x 250, D 256")
    args = parser.parse_args(argv)
    classes, per_class, dim = (20, 250, 256) if args.quick else (100, 500, 512)
    descriptions, x, expected = make_kb(classes, per_class, dim)
    print(f"prune benchmark: M {len(descriptions)}, C {classes}, D {dim}; embeddings cached "
          f"({x.nbytes / 2**20:.0f} MiB float32)")
    configs = {
        "default": PruneParams(),
        "all stages": PruneParams(cross_class="best", margin_reference="centroid", min_margin=0.05,
                                  max_per_class=50),
    }
    header = (f"{'config':12s} {'seconds':>8s} {'cpu s':>6s} {'peak MiB':>9s}  "
              + " ".join(f"{s:>14s}" for s in STAGES))
    print(header)
    slowest = 0.0
    for name, params in configs.items():
        result, seconds, cpu = timed(descriptions, x, params)
        peak = traced_peak(descriptions, x, params)
        slowest = max(slowest, seconds)
        removed = result.totals().removed
        print(f"{name:12s} {seconds:8.2f} {cpu:6.2f} {peak:9.1f}  " + " ".join(f"{removed[s]:14d}" for s in STAGES))
        stage_times = "  ".join(f"{s} {t:.2f}s" for s, t in result.seconds.items())
        print(f"{'':12s} stage times: {stage_times}")
        if name == "default":
            checks = {s: (removed[s], n) for s, n in expected.items()}
            print(f"{'':12s} planted vs removed: " + ", ".join(f"{s} {got}/{n}" for s, (got, n) in checks.items()))
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    print(f"load average {load:.1f} on {cpus} CPUs"
          + ("  (busy machine: wall time overstates the cost; see cpu s)" if load > cpus else ""))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS {rss:.0f} MiB (inputs included); slowest {slowest:.2f} s, "
          f"target < {TARGET_SECONDS:.0f} s: {'PASS' if slowest < TARGET_SECONDS else 'FAIL'}")
    return 0 if slowest < TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
