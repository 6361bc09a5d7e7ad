"""Benchmark: time and peak memory of the transductive methods at N = 10k, 100k and 1M images.

ARCHITECTURE target (issue 16): KPL and TransCLIP on N = 1 000 000 CLIP features (D 512, C 10) on a
24 GiB machine with peak memory under 2.5x the (N, D) float32 feature matrix, time growing linearly
in N for KPL and as N log N for TransCLIP's kNN graph. The ``transclip`` rows build the graph with
faiss at every N (``auto`` would build the exact, quadratic one below 200 000) on
kpl.synthetic.clip_like_features, and print the graph's own time, lists probed and recall.

Each (method, N) runs in a fresh process, so one run's peak never hides in another's. The child
builds synthetic CLIP-like features block by block straight into one float32 matrix (unit rows,
each class a direction plus a shared one, as in bench_kpl.py), resets the kernel's peak-RSS
counter (/proc/self/clear_refs), runs the method, and reports its wall time and the peak RSS of
the process (VmHWM, which includes the feature matrix and the Python/torch runtime).

A method is one function ``name(x, labels, classes) -> dict`` in METHODS; add a row by adding one.

    python benchmarks/bench_scale.py                    # N 10k, 100k, 1M; every method
    python benchmarks/bench_scale.py --sizes 10000,100000 --methods kpl --threads 1
    python benchmarks/bench_scale.py --methods transclip
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

D, C, M = 512, 10, 50
BLOCK = 65536


def make_features(n: int, d: int = D, c: int = C, m: int = M, seed: int = 0):
    """(N, D) float32 unit rows built block by block (no float64 (N, D) temporary), labels, C (M, D)."""
    rng = np.random.default_rng(seed)

    def unit(a):
        return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)

    centers, shared = unit(rng.standard_normal((c, d))), unit(rng.standard_normal(d))
    # Descriptions first, so every N gets the same knowledge base and only the images grow.
    classes = []
    generic = shared * 0.5 + rng.standard_normal((5, d)) / np.sqrt(d)
    for k in range(c):
        fit = rng.uniform(0.0, 0.3, (m - 5, 1))
        rows = centers[k] * fit + shared * 0.5 + rng.standard_normal((m - 5, d)) / np.sqrt(d)
        classes.append(unit(np.vstack([rows, generic])))
    labels = rng.integers(0, c, n)
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, BLOCK):
        rows = labels[start:start + BLOCK]
        noise = rng.standard_normal((len(rows), d), dtype=np.float32) / np.float32(np.sqrt(d))
        block = centers[rows] * np.float32(0.2) + shared * np.float32(0.5) + noise
        x[start:start + len(rows)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, labels, classes


# ------------------------------------------------------------------ methods (one function each)
def kpl(x, labels, classes) -> dict:
    """KPL with its defaults (Greenkhorn, early-stopped proxy loops)."""
    from kpl import run_kpl

    result = run_kpl(x, classes, num_threads=THREADS)
    return {"accuracy": float((result.image_ot.predictions == labels).mean()),
            "text_accuracy": float((result.text.predictions == labels).mean()),
            "iterations": result.image.iterations + result.image_ot.iterations}


def transclip(x, labels, prototypes) -> dict:
    """TransCLIP-ZS with class-name prototypes on its kNN graph, built approximately (faiss) at every N
    so that the graph's growth shows; the graph searches as many lists as a recall of 0.95 needs."""
    import torch

    from kpl import run_baseline
    from kpl.peers.knn import knn_graph

    if THREADS:
        torch.set_num_threads(THREADS)
    start = time.perf_counter()
    graph = knn_graph(x, 3, method="faiss")
    graph_seconds = time.perf_counter() - start
    result = run_baseline("transclip", x, name_embeddings=prototypes, graph=graph)
    info = graph.info
    return {"accuracy": float((result.predictions == labels).mean()),
            "text_accuracy": float((np.argmax(x @ prototypes.T, axis=1) == labels).mean()),
            "graph_seconds": graph_seconds, "graph": f"{info.nprobe}/{info.lists} lists, recall {info.recall:.3f}"}


def clip_like(n: int):
    """kpl.synthetic.clip_like_features: features whose neighbours are spread like real CLIP ones."""
    from kpl.synthetic import clip_like_features

    return clip_like_features(n, D, C)


METHODS = {"kpl": kpl, "transclip": transclip}
# the data each method runs on: KPL needs descriptions; the kNN graph needs a realistic geometry
DATA = {"kpl": make_features, "transclip": clip_like}
# --threads: torch threads for every method (None: each method's own choice).
THREADS = int(os.environ["BENCH_THREADS"]) if os.environ.get("BENCH_THREADS") else None


# ------------------------------------------------------------------ measurement
def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass


def run_one(method: str, n: int) -> dict:
    x, labels, classes = DATA[method](n)
    _reset_peak()
    start = time.perf_counter()
    out = METHODS[method](x, labels, classes)
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    return {"method": method, "n": n, "seconds": seconds, "peak_rss": peak, "features_bytes": x.nbytes, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, help="torch threads per run (on a shared machine: 1)")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return
    rows = []
    header = (f"{'method':<10}{'N':>10}{'seconds':>10}{'us/image':>10}{'peak RSS GB':>13}{'features GB':>13}"
              f"{'peak/feat':>11}{'text acc':>10}{'accuracy':>10}{'iters':>7}")
    print(header)
    for method in args.methods.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            child = subprocess.run([sys.executable, __file__, "--one", method, str(n)], capture_output=True,
                                   text=True, env={**os.environ, "PYTHONWARNINGS": "ignore",
                                                                 "BENCH_THREADS": str(args.threads or "")})
            if child.returncode != 0:
                print(f"{method:<10}{n:>10}  failed: {child.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{method:<10}{n:>10}{r['seconds']:>10.1f}{1e6 * r['seconds'] / n:>10.1f}"
                  f"{r['peak_rss'] / 2**30:>13.2f}{r['features_bytes'] / 2**30:>13.2f}"
                  f"{r['peak_rss'] / r['features_bytes']:>11.2f}{r.get('text_accuracy', float('nan')):>10.3f}"
                  f"{r.get('accuracy', float('nan')):>10.3f}"
                  f"{r.get('iterations', 0):>7}"
                  + (f"  graph {r['graph_seconds']:.1f} s, {r['graph']}" if "graph" in r else ""), flush=True)


if __name__ == "__main__":
    main()
