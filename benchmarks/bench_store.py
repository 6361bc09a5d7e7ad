"""Benchmark: the snapshot store on a 50 000-description knowledge base (docs/ALGORITHM.md, Targets).

Targets: writing (publishing) a 50 000-description snapshot with embeddings < 30 s; diffing two
50 000-description snapshots < 5 s (both read from the store, as ``kbuild diff`` does).

Synthetic knowledge base: 100 classes x 500 descriptions, precomputed random unit embeddings of
D 512 (the store is measured, not CLIP). The second snapshot changes ~5 %: per class 10 texts
reworded (embedding nudged, so the diff pairs them), 8 removed, 7 added. Each step is timed
without tracing; memory is the process's peak RSS after the step (``ru_maxrss``, a high-water mark
over the whole run) and, in a second pass, tracemalloc's peak of Python allocations for the step.
``--clip`` also times encoding the 50 000 templated texts with a tiny random open_clip model,
reported separately (it is not part of the store's write).

    python benchmarks/bench_store.py                 # 100 x 500, D 512, embedded store in a temp dir
    python benchmarks/bench_store.py --quick         # 20 x 100, D 128
    python benchmarks/bench_store.py --clip          # + tiny-CLIP text encoding time
    python benchmarks/bench_store.py --chroma-url http://127.0.0.1:8000   # against a chroma run server
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kbuild.descriptions import Description  # noqa: E402
from kbuild.diff import diff_stored  # noqa: E402
from kbuild.ops.inspect import verify  # noqa: E402
from kbuild.store import SnapshotStore  # noqa: E402
from kbuild.store.manifest import SnapshotDraft  # noqa: E402

WORDS = ("dark", "round", "scaly", "pink", "raised", "flat", "irregular", "smooth", "crusted", "glossy",
         "border", "center", "patch", "spots", "streaks", "ring", "texture", "surface", "edge", "pattern")
CLIP = {"model": "bench", "pretrained": None, "model_id": "bench/random-unit", "template": "{} {}"}


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def phrase(rng, c: int, i: int) -> str:
    picked = " ".join(rng.choice(WORDS, size=4))
    return f"class {c:03d} trait {i:04d}: a {picked}"


def make_kb(classes: int, per_class: int, dim: int, seed: int = 0):
    """(descriptions, (M, D) float32 unit embeddings) of the base snapshot."""
    rng = np.random.default_rng(seed)
    descriptions = [Description(f"class {c:03d}", phrase(rng, c, i), source="bench:synthetic")
                    for c in range(classes) for i in range(per_class)]
    return descriptions, unit(rng.standard_normal((len(descriptions), dim)))


def change_kb(descriptions, embeddings, per_class: int, seed: int = 1):
    """~5 % changed: per class 10 reworded (close embedding), 8 removed, 7 added."""
    rng = np.random.default_rng(seed)
    reword, drop, add = (max(1, round(per_class * f)) for f in (0.02, 0.016, 0.014))
    out, rows = [], []
    for start in range(0, len(descriptions), per_class):
        block = range(start, start + per_class)
        for k, row in enumerate(block):
            d = descriptions[row]
            if k < reword:
                out.append(Description(d.class_name, d.text + " (reworded)", source=d.source))
                noise = 0.25 / np.sqrt(embeddings.shape[1]) * rng.standard_normal(embeddings.shape[1])
                rows.append(unit((embeddings[row] + noise)[None])[0])
            elif k >= per_class - drop:
                continue
            else:
                out.append(d)
                rows.append(embeddings[row])
        name = descriptions[start].class_name
        for j in range(add):
            out.append(Description(name, f"{name} brand new trait {j}: {phrase(rng, 0, j)}", source="bench:new"))
            rows.append(unit(rng.standard_normal((1, embeddings.shape[1])))[0])
    return out, np.stack(rows).astype(np.float32)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class Bench:
    def __init__(self):
        self.rows: list[dict] = []

    def step(self, name: str, fn, target: float | None = None, note: str = ""):
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        self.rows.append({"step": name, "s": seconds, "target": target, "rss": rss_mb(), "py": None, "note": note})
        return value

    def trace(self, name: str, fn) -> None:
        """Second pass: tracemalloc's peak for ``fn`` (slower, so not timed)."""
        tracemalloc.start()
        fn()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        for row in self.rows:
            if row["step"] == name:
                row["py"] = peak / 2**20

    def table(self) -> str:
        lines = [f"{'step':<34} {'seconds':>8} {'target':>8} {'ok':>4} {'peak RSS MB':>12} {'py peak MB':>11}  note",
                 "-" * 100]
        for r in self.rows:
            target = f"< {r['target']:g}" if r["target"] else ""
            ok = ("yes" if r["s"] < r["target"] else "NO") if r["target"] else ""
            py = f"{r['py']:.0f}" if r["py"] is not None else ""
            lines.append(f"{r['step']:<34} {r['s']:>8.2f} {target:>8} {ok:>4} {r['rss']:>12.0f} {py:>11}  {r['note']}")
        return "\n".join(lines)

    def missed(self) -> list[str]:
        return [r["step"] for r in self.rows if r["target"] and r["s"] >= r["target"]]


def clip_encoding_seconds(texts: list[str]) -> tuple[float, str]:
    """Encode the templated texts with a tiny random open_clip model (as the tests build it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import build_tiny_clip_dir
    from kbuild.clip.models import ClipModel, ModelSpec

    with tempfile.TemporaryDirectory() as folder:
        clip = ClipModel(ModelSpec(f"local-dir:{build_tiny_clip_dir(Path(folder))}", None))
        start = time.perf_counter()
        clip.encode_texts(texts)
        return time.perf_counter() - start, f"tiny CLIP (width 64, 2 layers), {len(texts)} texts"


def run(args) -> Bench:
    bench = Bench()
    base, base_emb = bench.step("build synthetic KB", lambda: make_kb(args.classes, args.per_class, args.dim),
                                note=f"{args.classes} x {args.per_class}, D {args.dim}")
    changed, changed_emb = change_kb(base, base_emb, args.per_class)
    n = len(base)
    with tempfile.TemporaryDirectory() as home:
        store = SnapshotStore(Path(args.store or home), args.chroma_url)
        first = SnapshotDraft(base, base_emb, "load", {"files": ["bench.json"]}, CLIP)
        second = SnapshotDraft(changed, changed_emb, "load", {"files": ["bench.json"]}, CLIP)
        v1 = bench.step(f"publish {n} (write)", lambda: store.publish(first), 30.0, store.mode)
        v2 = bench.step(f"publish {len(changed)} (5% changed)", lambda: store.publish(second), 30.0)
        bench.step("list", store.list)
        bench.step(f"read {n} + embeddings", lambda: store.read(v1.name))
        bench.step(f"read {n} texts only", lambda: store.read(v1.name, embeddings=False))
        result = bench.step(f"verify {n} (read + check)", lambda: verify(store.read(v1.name)))
        assert result.ok, result.problems
        diff = bench.step(f"diff {n} vs {len(changed)}", lambda: store_diff(store, v1.name, v2.name), 5.0)
        counts = diff.counts()
        bench.rows[-1]["note"] = (f"{counts['descriptions_reworded']} reworded, {counts['descriptions_added']} added, "
                                  f"{counts['descriptions_removed']} removed")
        if not args.no_trace:
            bench.trace(f"read {n} + embeddings", lambda: store.read(v1.name))
            bench.trace(f"verify {n} (read + check)", lambda: verify(store.read(v1.name)))
            bench.trace(f"diff {n} vs {len(changed)}", lambda: store_diff(store, v1.name, v2.name))
            third = SnapshotDraft(base, base_emb, "load", {"files": ["bench.json"], "pass": "trace"}, CLIP)
            bench.trace(f"publish {n} (write)", lambda: store.publish(third))
        if args.clip:
            texts = [CLIP["template"].format(d.class_name, d.text) for d in base]
            seconds, note = clip_encoding_seconds(texts)
            bench.rows.append({"step": f"CLIP text encoding {n} (separate)", "s": seconds, "target": None,
                               "rss": rss_mb(), "py": None, "note": note})
    return bench


def store_diff(store: SnapshotStore, old: str, new: str):
    """What ``kbuild diff OLD NEW`` computes."""
    return diff_stored(store, old, new)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="20 classes x 100, D 128")
    parser.add_argument("--clip", action="store_true", help="also time tiny-CLIP encoding of the texts")
    parser.add_argument("--no-trace", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--store", help="store home (default: a temporary folder)")
    parser.add_argument("--chroma-url", help="benchmark a Chroma server instead of the embedded store")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.per_class, args.dim = 20, 100, 128
    print(f"bench_store: {args.classes} classes x {args.per_class} descriptions, D {args.dim}, "
          f"{os.cpu_count()} CPUs", file=sys.stderr)
    bench = run(args)
    print(bench.table())
    missed = bench.missed()
    print(f"\ntargets: {'all met' if not missed else 'MISSED: ' + ', '.join(missed)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
