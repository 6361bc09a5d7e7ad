"""Benchmark: KPL's label-free ``k="auto"`` against k=8 and the median over k=1..30.

For every feature set: balanced accuracy (image_ot) at every k in 1..30, then auto's chosen k and
its balanced accuracy, the target ``min(k=8, median) - 1`` and the spread of the k curve. Real
sets come from ../shared when present (PH2 CLIP ViT-B/16 and the golden cases); synthetic ones
(kpl.synthetic: well separated, overlapping, imbalanced 4:1, 40 classes) run for several seeds.

    python benchmarks/bench_auto_k.py              # everything (about a minute on 2 cores)
    python benchmarks/bench_auto_k.py --seeds 1    # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kpl import compute_metrics, run_kpl_many  # noqa: E402
from kpl.method.retrieval import split_by_class  # noqa: E402
from kpl.synthetic import KINDS, synthetic_case  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
KS = list(range(1, 31))


def real_cases() -> list[tuple[str, tuple]]:
    paths = [SHARED / "datasets" / "features" / "ph2_vitb16.npz", SHARED / "golden" / "nat10_k8.npz",
             SHARED / "golden" / "tb2_k8.npz"]
    cases = []
    for path in paths:
        if path.exists():
            data = np.load(path)
            classes = split_by_class(data["description_embeddings"], data["description_class"])
            cases.append((path.stem, (data["image_features"], data["labels"], classes)))
    return cases


def row(name: str, x, labels, classes) -> list[str]:
    start = time.perf_counter()
    results = run_kpl_many(x, classes, [*KS, "auto"])
    seconds = time.perf_counter() - start

    def bal(result) -> float:
        return 100 * compute_metrics(labels, result.image_ot.predictions, num_classes=len(classes)).balanced_accuracy

    curve = np.array([bal(results[k]) for k in KS])
    auto, k8, median = bal(results["auto"]), curve[7], float(np.median(curve))
    target = min(k8, median) - 1
    chosen = results["auto"].auto["chosen_k"]
    return [name, f"{auto:.1f} (k={chosen})", f"{k8:.1f}", f"{median:.1f}", f"{curve.min():.1f}-{curve.max():.1f}",
            f"{target:.1f}", "yes" if auto >= target else "NO", f"{seconds:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    headers = ["feature set", "auto", "k=8", "median k1-30", "range k1-30", "target", "met", "seconds"]
    rows = [row(name, *case) for name, case in real_cases()]
    for kind in KINDS:
        for seed in range(args.seeds):
            rows.append(row(f"synthetic {kind} s{seed}", *synthetic_case(kind, seed)))
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for r in [headers, *rows]:
        print(" | ".join(cell.ljust(w) for cell, w in zip(r, widths)), flush=True)


if __name__ == "__main__":
    main()
