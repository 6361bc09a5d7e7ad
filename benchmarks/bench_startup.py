"""Benchmark: start-up time of the command line (target: ``kbuild --help`` < 1 s).

Runs each command as a fresh process through the installed console scripts (the ones next to this
Python), ``--runs`` times, and prints the median wall time and the median CPU time (user + system
of the child). On a shared, busy machine wall time is inflated by waiting for a core; CPU time is
what the code itself costs, so both are shown together with the load average.

    python benchmarks/bench_startup.py            # 7 runs each
    python benchmarks/bench_startup.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = [("kbuild --help", ["kbuild", "--help"]), ("kbuild list", ["kbuild", "list"]),
            ("kbuild prompts list", ["kbuild", "prompts", "list"]), ("kpl --help", ["kpl", "--help"])]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run; a failing command stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"Error: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[:300]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as store:
        env = {**os.environ, "KBUILD_STORE": store, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.runs} runs each")
        print(f"{'command':22s} {'wall median s':>14s} {'wall min s':>11s} {'cpu median s':>13s}")
        for label, argv in COMMANDS:
            runs = [timed([str(BIN / argv[0]), *argv[1:]], env) for _ in range(args.runs)]
            walls, cpus = [w for w, _ in runs], [c for _, c in runs]
            print(f"{label:22s} {statistics.median(walls):14.2f} {min(walls):11.2f} {statistics.median(cpus):13.2f}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
