"""Benchmark: TransCLIP-ZS at N = 10 000 and 100 000 images (D 512, C 10): time and peak memory.

The kNN graph is built in row blocks (kpl.peers.knn), so memory grows as O(N (k + C) + block N), never
N x N (at N = 100 000 a full float32 similarity matrix would take 40 GB). Each size runs in a
fresh subprocess so that its peak resident memory (ru_maxrss) is its own. The data are synthetic
unit vectors: 10 Gaussian clusters around a shared direction, prototypes = noisy cluster means.

    python benchmarks/bench_transclip.py                  # 10k and 100k (100k takes minutes on 2 cores)
    python benchmarks/bench_transclip.py --sizes 10000    # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_data(n: int, d: int, c: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) / np.sqrt(d)
    shared = rng.normal(size=d) / np.sqrt(d)
    labels = rng.integers(0, c, size=n)
    # weak class signal (0.25) against unit noise, and prototypes off by 0.6: zero-shot ~70 %
    x = centers[labels] * 0.25 + shared + rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    t = centers * 0.25 + shared + rng.normal(size=(c, d)) / np.sqrt(d) * 0.6
    t = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
    return x, labels, t


def one_size(n: int, d: int, c: int) -> dict:
    """Run in the child process: build data, time the kNN graph and the whole method."""
    import numpy as np
    import torch

    from kpl import run_baseline
    from kpl.peers.knn import knn_graph
    from kpl.peers.transclip import transclip

    x, labels, t = make_data(n, d, c)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    features, prototypes = torch.from_numpy(x), torch.from_numpy(t)
    start = time.perf_counter()
    with torch.inference_mode():
        graph = knn_graph(features, 3)
        knn_seconds = time.perf_counter() - start
        _, scores, _ = transclip(features, prototypes, graph=graph)  # the 10 x 5 iterations on that graph
    seconds = time.perf_counter() - start
    predictions = scores.argmax(dim=1).numpy()
    zero_shot = run_baseline("clip", x, name_embeddings=t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "d": d, "c": c, "knn_seconds": knn_seconds, "seconds": seconds,
            "peak_rss_mb": peak / 1024, "data_rss_mb": base_rss / 1024, "threads": torch.get_num_threads(),
            "accuracy": float(np.mean(predictions == labels)),
            "zero_shot_accuracy": float(np.mean(zero_shot.predictions == labels))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_size(args.child, args.dim, args.classes)))
        return
    print("N        | D   | C  | kNN graph s | TransCLIP s (total) | peak RSS MB (data alone) | N x N float32 would be "
          "| zero-shot acc | TransCLIP acc", flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--dim", str(args.dim),
                              "--classes", str(args.classes)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        full = n * n * 4 / 2**20
        print(f"{n:<8} | {r['d']:<3} | {r['c']:<2} | {r['knn_seconds']:11.1f} | {r['seconds']:19.1f} | "
              f"{r['peak_rss_mb']:8.0f} ({r['data_rss_mb']:.0f}){'':13} | {full:19.0f} MB | "
              f"{100 * r['zero_shot_accuracy']:13.1f} | {100 * r['accuracy']:.1f}", flush=True)


if __name__ == "__main__":
    main()
