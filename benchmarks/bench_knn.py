"""Benchmark: TransCLIP's kNN graph, exact vs approximate (faiss), at N = 100 000 and 1 000 000.

At 100 000 images (D 512, C 10) both graphs are built: build time, peak RSS, recall@3 of the
faiss graph against the exact one, and TransCLIP's accuracy with each graph. At 1 000 000 only
faiss (the exact graph would take hours): graph and TransCLIP time and peak RSS, against the
2 GB float32 feature matrix. Each run is a fresh subprocess, so its peak RSS (ru_maxrss) is its
own. The data are bench_transclip.py's: 10 Gaussian clusters around a shared direction with
unit noise, drawn in float32 chunks.

    python benchmarks/bench_knn.py                         # 100k (exact ~8 min on 2 cores) then 1M
    python benchmarks/bench_knn.py --sizes 100000 --exact-cache /tmp/knn   # reuse the exact graph
"""


from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK = 65536


def make_data(n: int, d: int = 512, c: int = 10, seed: int = 0):
    """Unit features (N, D) float32, labels (N,), prototypes (C, D): bench_transclip's clusters
    (weak class signal 0.25 against unit noise, prototypes off by 0.6), drawn in float32 chunks so
    that 1M x 512 costs its 2 GB and no float64 copy."""
    rng = np.random.default_rng(seed)
    centers = (rng.normal(size=(c, d)) / np.sqrt(d)).astype(np.float32)
    shared = (rng.normal(size=d) / np.sqrt(d)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    x = np.empty((n, d), dtype=np.float32)
    scale = np.float32(1.0 / np.sqrt(d))
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        block = rng.standard_normal(size=(stop - start, d), dtype=np.float32) * scale
        block += centers[labels[start:stop]] * np.float32(0.25) + shared
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:stop] = block
    t = centers * 0.25 + shared + rng.normal(size=(c, d)).astype(np.float32) * scale * 0.6
    t = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
    return x, labels, t


def recall(exact: np.ndarray, approx: np.ndarray) -> float:
    """Fraction of the exact neighbours that the approximate graph also found."""
    hits = 0
    for start in range(0, len(exact), CHUNK):
        a, b = exact[start:start + CHUNK], approx[start:start + CHUNK]
        hits += int((a[:, :, None] == b[:, None, :]).any(axis=2).sum())
    return hits / exact.size


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_run(n: int, method: str, nprobe: int | None, cache: Path | None) -> dict:
    """Run in the child process: data, graph (timed), TransCLIP on it (timed), accuracies."""
    import torch

    from kpl import run_baseline
    from kpl.knn import DEFAULT_NPROBE, index_lists, knn_graph

    x, labels, t = make_data(n)
    out = {"n": n, "method": method, "data_mb": peak_mb(), "threads": torch.get_num_threads()}
    cached = cache / f"exact{n}" if cache else None
    start = time.perf_counter()
    if method == "exact" and cached and cached.with_suffix(".json").exists():
        graph = (np.load(cached.with_suffix(".idx.npy")), np.load(cached.with_suffix(".w.npy")))
        out.update(json.loads(cached.with_suffix(".json").read_text()), cached=True)
    else:
        graph = knn_graph(x, 3, method=method, nprobe=nprobe)
        out.update(graph_seconds=time.perf_counter() - start, graph_peak_mb=peak_mb())
        if method == "faiss":
            out.update(lists=index_lists(n), nprobe=min(index_lists(n), nprobe or DEFAULT_NPROBE))
        if method == "exact" and cached:
            np.save(cached.with_suffix(".idx.npy"), graph[0])
            np.save(cached.with_suffix(".w.npy"), graph[1])
            cached.with_suffix(".json").write_text(json.dumps(
                {"graph_seconds": out["graph_seconds"], "graph_peak_mb": out["graph_peak_mb"]}))
    if method == "faiss" and cached and cached.with_suffix(".idx.npy").exists():
        out["recall"] = recall(np.load(cached.with_suffix(".idx.npy")), graph[0])
    start = time.perf_counter()
    with torch.inference_mode():
        result = run_baseline("transclip", x, name_embeddings=t, graph=graph)  # the user's entry point
    out["transclip_seconds"] = time.perf_counter() - start
    out["accuracy"] = float(np.mean(result.predictions == labels))
    out["zero_shot_accuracy"] = float(np.mean(np.argmax(x @ t.T, axis=1) == labels))  # CLIP's prediction
    out["peak_mb"] = peak_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--nprobe", default="", help="comma list of extra faiss nprobe values at the exact size")
    parser.add_argument("--exact-cache", type=Path, help="folder to keep the exact graph in, and reuse it from")
    parser.add_argument("--exact-up-to", type=int, default=100_000, help="largest N that also gets the exact graph")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, method, nprobe = args.child.split(":")
        print(json.dumps(one_run(int(n), method, int(nprobe) or None, args.exact_cache)))
        return
    print("N        | graph        | graph s | graph peak MB | recall@3 | TransCLIP s | peak RSS MB "
          "| x MB | peak / x | zero-shot acc | TransCLIP acc", flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        runs = [("exact", 0)] if n <= args.exact_up_to else []
        runs += [("faiss", 0)] + [("faiss", int(p)) for p in args.nprobe.split(",") if p and n <= args.exact_up_to]
        for method, nprobe in runs:
            cmd = [sys.executable, __file__, "--child", f"{n}:{method}:{nprobe}"]
            if args.exact_cache:
                args.exact_cache.mkdir(parents=True, exist_ok=True)
                cmd += ["--exact-cache", str(args.exact_cache)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            x_mb = n * 512 * 4 / 2**20
            label = "exact" if method == "exact" else f"faiss {r['nprobe']}/{r['lists']}"
            rec = f"{r['recall']:.3f}" if "recall" in r else "-"
            print(f"{n:<8} | {label:<12} | {r['graph_seconds']:7.1f} | {r['graph_peak_mb']:13.0f} | {rec:>8} | "
                  f"{r['transclip_seconds']:11.1f} | {r['peak_mb']:11.0f} | {x_mb:4.0f} | {r['peak_mb'] / x_mb:8.2f} | "
                  f"{100 * r['zero_shot_accuracy']:13.1f} | {100 * r['accuracy']:.1f}", flush=True)


if __name__ == "__main__":
    main()
