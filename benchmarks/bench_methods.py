"""Benchmark: every method's top-1, balanced accuracy and AUROC on the real feature sets in ../shared.

PH2 (real CLIP ViT-B/16 features, 160 nevus / 40 melanoma) carries the repository's class-label
prompt embeddings, so clip, inmap, transclip and stata (class-name prototypes) run there; the golden
cases have descriptions only. ``kpl`` is KPL's image_ot stage at k=8 and at k="auto".

    python benchmarks/bench_methods.py
    KPL_TEST_SHARED=/path/to/shared python benchmarks/bench_methods.py   # shared data elsewhere
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kpl import compute_metrics, run_baseline  # noqa: E402
from kpl.method.retrieval import split_by_class  # noqa: E402
from kpl.results.ranking import ranking_metrics  # noqa: E402

SHARED = Path(os.environ.get("KPL_TEST_SHARED") or Path(__file__).resolve().parents[2] / "shared")
SETS = [SHARED / "datasets" / "features" / "ph2_vitb16.npz", SHARED / "golden" / "nat10_k8.npz",
        SHARED / "golden" / "tb2_k8.npz"]


def cell(labels, result, c) -> str:
    m = compute_metrics(labels, result.predictions, num_classes=c)
    r = ranking_metrics(labels, result.logits)
    auc = r["auroc"] if r["auroc"] is not None else r["macro_auroc_ovr"]
    return f"{100 * m.accuracy:.1f} / {100 * m.balanced_accuracy:.1f} / {100 * auc:.1f}"


def main() -> None:
    sets = [p for p in SETS if p.exists()]
    rows: dict[str, list[str]] = {}
    for i, path in enumerate(sets):
        data = np.load(path)
        x, y = data["image_features"], data["labels"]
        classes = split_by_class(data["description_embeddings"], data["description_class"])
        names = data["class_label_embeddings"] if "class_label_embeddings" in data.files else None
        runs = {
            "clip": ("clip", {"name_embeddings": names}),
            "dclip": ("dclip", {"class_embeddings": classes}),
            "cupl": ("cupl", {"class_embeddings": classes}),
            "inmap": ("inmap", {"name_embeddings": names}),
            "transclip (class names)": ("transclip", {"name_embeddings": names}),
            "transclip_desc (descriptions)": ("transclip", {"class_embeddings": classes}),
            "stata (class names)": ("stata", {"name_embeddings": names}),
            "stata_desc (descriptions)": ("stata", {"class_embeddings": classes}),
            "kpl k=8": ("kpl", {"class_embeddings": classes, "k": 8}),
            "kpl k=auto": ("kpl", {"class_embeddings": classes, "k": "auto"}),
        }
        for row, (method, kwargs) in runs.items():
            given = [v for key, v in kwargs.items() if key.endswith("embeddings")]
            rows.setdefault(row, ["-"] * len(sets))
            if all(v is not None for v in given):
                rows[row][i] = cell(y, run_baseline(method, x, **kwargs), len(classes))
    print("| method | " + " | ".join(p.stem for p in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for row, cells in rows.items():
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
