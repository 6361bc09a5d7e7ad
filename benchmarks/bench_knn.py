"""Benchmark: TransCLIP's kNN graph, exact vs approximate (faiss), at N = 100 000 and 1 000 000.

Two kinds of synthetic features (D 512, C 10):
- ``clip``: kpl.synthetic.clip_like_features, whose geometry is fitted to real CLIP ViT-B/16 image
  features (a common direction and a power-law spread; neighbours a little farther apart than in
  the real ones);
- ``iso``: bench_transclip.py's clusters buried in isotropic 512-d noise, the worst case for any
  index (no low-dimensional structure: a point's nearest neighbours are barely nearer than the rest).

At 100 000 images both graphs are built: build time, peak RSS, the lists the faiss graph chose to
probe, its own recall estimate (on 1000 sampled images) and its true recall@3 against the exact
graph, and TransCLIP's accuracy with each. At 1 000 000 only faiss (the exact graph would take
hours): graph and TransCLIP time and peak RSS against the 2 GB feature matrix. Each run is a fresh
subprocess, so its peak RSS (ru_maxrss) is its own.

    python benchmarks/bench_knn.py                          # both kinds, 100k (exact: minutes) then 1M
    python benchmarks/bench_knn.py --sizes 100000 --data clip --exact-cache /tmp/knn --nprobe 8
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


def make_data(n: int, kind: str = "iso", d: int = 512, c: int = 10, seed: int = 0):
    """Unit features (N, D) float32, labels (N,), prototypes (C, D) of the given kind."""
    if kind == "clip":
        from kpl.synthetic import clip_like_features

        return clip_like_features(n, d, c, seed)
    return isotropic_clusters(n, d, c, seed)


def isotropic_clusters(n: int, d: int = 512, c: int = 10, seed: int = 0):
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


def one_run(n: int, kind: str, method: str, nprobe: int | None, cache: Path | None) -> dict:
    """Run in the child process: data, graph (timed), TransCLIP on it (timed), accuracies."""
    import torch

    from kpl import run_baseline
    from kpl.peers.knn import knn_graph

    x, labels, t = make_data(n, kind)
    out = {"n": n, "kind": kind, "method": method, "fixed_nprobe": nprobe, "data_mb": peak_mb(),
           "threads": torch.get_num_threads()}
    cached = cache / f"exact-{kind}-{n}" if cache else None
    start = time.perf_counter()
    if method == "exact" and cached and cached.with_suffix(".json").exists():
        graph = (np.load(cached.with_suffix(".idx.npy")), np.load(cached.with_suffix(".w.npy")))
        out.update(json.loads(cached.with_suffix(".json").read_text()), cached=True)
    else:
        graph = knn_graph(x, 3, method=method, nprobe=nprobe)
        out.update(graph_seconds=time.perf_counter() - start, graph_peak_mb=peak_mb(), info=graph.info.to_json())
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
    parser.add_argument("--data", default="clip,iso", help="comma list of feature kinds: clip, iso")
    parser.add_argument("--nprobe", default="", help="comma list of fixed faiss nprobe values to add at the exact size")
    parser.add_argument("--exact-cache", type=Path, help="folder to keep the exact graph in, and reuse it from")
    parser.add_argument("--exact-up-to", type=int, default=100_000, help="largest N that also gets the exact graph")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        n, kind, method, nprobe = args.child.split(":")
        print(json.dumps(one_run(int(n), kind, method, int(nprobe) or None, args.exact_cache)))
        return
    print("N        | data | graph                 | graph s | graph peak MB | recall est. | recall@3 | TransCLIP s "
          "| peak RSS MB | x MB | peak / x | zero-shot acc | TransCLIP acc", flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        for kind in args.data.split(","):
            runs = [("exact", 0)] if n <= args.exact_up_to else []
            runs += [("faiss", 0)] + [("faiss", int(p)) for p in args.nprobe.split(",") if p and n <= args.exact_up_to]
            for method, nprobe in runs:
                cmd = [sys.executable, __file__, "--child", f"{n}:{kind}:{method}:{nprobe}"]
                if args.exact_cache:
                    args.exact_cache.mkdir(parents=True, exist_ok=True)
                    cmd += ["--exact-cache", str(args.exact_cache)]
                r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
                print(row(r), flush=True)


def row(r: dict) -> str:
    """One table line from a child's result."""
    x_mb = r["n"] * 512 * 4 / 2**20
    info = r.get("info") or {}
    if r["method"] == "exact":
        label, estimate = "exact", "-"
    else:
        how = "fixed" if r.get("fixed_nprobe") else ("for 0.95" if info["target_met"] else "cap")
        label = f"faiss {info['nprobe']}/{info['lists']} {how}"
        estimate = f"{info['recall']:.3f}+-{info['recall_margin']:.3f}"
    true = f"{r['recall']:.3f}" if "recall" in r else ("1" if r["method"] == "exact" else "-")
    return (f"{r['n']:<8} | {r['kind']:<4} | {label:<21} | {r['graph_seconds']:7.1f} | {r['graph_peak_mb']:13.0f} | "
            f"{estimate:>11} | {true:>8} | {r['transclip_seconds']:11.1f} | {r['peak_mb']:11.0f} | {x_mb:4.0f} | "
            f"{r['peak_mb'] / x_mb:8.2f} | {100 * r['zero_shot_accuracy']:13.1f} | {100 * r['accuracy']:.1f}")


if __name__ == "__main__":
    main()
