"""Benchmark: TransCLIP and StatA on batches that hold some of the classes, and StatA's anchor weight.

1. The shared PH2 CLIP ViT-B/16 features, batches of 40 drawn with a fixed melanoma share
   (0 ... 100 %), plain accuracy averaged over 10 draws per share, then its mean and worst mix, and
   the whole set (top-1 / balanced accuracy). StatA rows at several anchor weights (alpha).
2. Synthetic clip-like features (kpl.synthetic.clip_like_features, 10 classes): batches holding 1, 2
   or all 10 classes; accuracy / share of images sent to classes absent from the batch.

    python benchmarks/bench_stata.py                                    # about a minute on 2 cores
    KPL_TEST_SHARED=/path/to/shared python benchmarks/bench_stata.py   # shared data elsewhere
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kpl import compute_metrics, run_baseline  # noqa: E402
from kpl.method.retrieval import split_by_class  # noqa: E402
from kpl.synthetic import clip_like_features  # noqa: E402

SHARED = Path(os.environ.get("KPL_TEST_SHARED") or Path(__file__).resolve().parents[2] / "shared")
PH2 = SHARED / "datasets" / "features" / "ph2_vitb16.npz"
SHARES = (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
DRAWS = 10
BATCH = 40
ANCHORS = (1.0, 2.0, 3.0, 5.0)


def ph2_rows() -> None:
    data = np.load(PH2)
    x, y = data["image_features"], data["labels"]
    inputs = {"names": {"name_embeddings": data["class_label_embeddings"]},
              "descriptions": {"class_embeddings": split_by_class(data["description_embeddings"],
                                                                  data["description_class"])}}
    rows = [("clip", "names", {}), ("dclip", "descriptions", {}), ("transclip", "names", {}),
            ("transclip", "descriptions", {})]
    rows += [("stata", source, {"anchor": a}) for source in ("names", "descriptions") for a in ANCHORS]
    print("| method | prototypes | " + " | ".join(f"{int(100 * s)} %" for s in SHARES) + " | mean | worst | whole set |")
    print("|---|---|" + "---|" * (len(SHARES) + 3))
    for method, source, extra in rows:
        cells = []
        for share in SHARES:
            accs = []
            for seed in range(DRAWS):
                rng = np.random.default_rng(seed)
                m = round(BATCH * share)
                idx = np.concatenate([rng.choice(np.where(y == 1)[0], m, replace=False),
                                      rng.choice(np.where(y == 0)[0], BATCH - m, replace=False)])
                accs.append((run_baseline(method, x[idx], **inputs[source], **extra).predictions == y[idx]).mean())
            cells.append(100 * np.mean(accs))
        whole = compute_metrics(y, run_baseline(method, x, **inputs[source], **extra).predictions, num_classes=2)
        name = method + (f" alpha {extra['anchor']:g}" if extra else "")
        print(f"| {name} | {source} | " + " | ".join(f"{c:.0f}" for c in cells)
              + f" | {np.mean(cells):.1f} | {min(cells):.0f} | {100 * whole.accuracy:.1f} / {100 * whole.balanced_accuracy:.1f} |")


def synthetic_rows() -> None:
    x, y, t = clip_like_features(4000, classes=10, seed=0)
    cases = [(1, 40), (2, 40), (1, 256), (10, 256)]
    methods = [("clip", {}), ("transclip", {})] + [("stata", {"anchor": a}) for a in ANCHORS]
    print("\n| classes present / batch | " + " | ".join(m + (f" {e['anchor']:g}" if e else "") for m, e in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for present, n in cases:
        idx = np.random.default_rng(1).choice(np.where(y < present)[0], n, replace=False)
        cells = []
        for method, extra in methods:
            p = run_baseline(method, x[idx], name_embeddings=t, **extra).predictions
            cells.append(f"{100 * (p == y[idx]).mean():.0f} / {100 * (p >= present).mean():.0f}")
        print(f"| {present} of 10 / {n} | " + " | ".join(cells) + " |")


def main() -> None:
    if PH2.exists():
        ph2_rows()
    else:
        print(f"{PH2} is absent: PH2 rows skipped")
    synthetic_rows()


if __name__ == "__main__":
    main()
