"""Benchmark: what the bootstrap 95 % intervals add to one method's row of ``kpl eval``.

Planted predictions and scores (seeded) at PH2's size and larger; 1000 resamples for top-1 and
balanced accuracy, AUROC with the resamples its budget allows (0: no AUROC interval).

    python benchmarks/bench_bootstrap.py            # about half a minute on 2 cores
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kpl.results.bootstrap import confidence_intervals  # noqa: E402

CASES = [(200, 2), (2_000, 10), (10_000, 10), (10_000, 100), (100_000, 10)]


def main() -> None:
    print(f"{'images':>8} {'classes':>7} {'seconds':>8} {'auroc resamples':>15}  top-1 interval")
    for n, c in CASES:
        rng = np.random.default_rng(0)
        labels = rng.integers(0, c, n)
        scores = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[labels]
        start = time.perf_counter()
        ci = confidence_intervals(labels, scores.argmax(axis=1), scores)
        seconds = time.perf_counter() - start
        low, high = ci["accuracy"]
        print(f"{n:>8} {c:>7} {seconds:>8.2f} {ci['auroc_resamples']:>15}  [{100 * low:.1f}, {100 * high:.1f}]")


if __name__ == "__main__":
    main()
