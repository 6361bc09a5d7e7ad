"""Benchmark: do KPL's predictions rest on float32 rounding? Before (the paper's float32 arithmetic)
and after (kpl.method.proxies / kpl.method.decision), on the shared PH2 CLIP ViT-B/16 features.

For each k, on the final (image_ot) stage:

- ``margins < 1e-5 rel``: share of images whose top-2 score margin is below 1e-5 of the largest
  score magnitude the arithmetic sums: |X w_c| before, |X (w_c - mean_c w)| after (the loop's logits);
- ``float32 ties``: images within float32 resolution of their scores (kpl.method.decision's rule);
- ``flips early/2000``: predictions that differ between the early stop and all 2000 iterations;
- ``flips permuted``: predictions that differ when the feature dimensions are permuted (the same
  problem summed in another order, as another CPU's kernels do), worst and total over 4 permutations.

"Before" runs Greenkhorn and the proxy loop as the paper's code does (float32,
``G = X^T softmax(X W) - X^T P``, predictions ``argmax`` of float32 ``X W``) on run_kpl's own text
proxies, so only the OT sums, the loop and the scoring differ.

    python benchmarks/bench_float.py            # PH2 (../shared), k 8 and 14
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_loops import paper_loop  # noqa: E402  (the paper's float32 loop, shared with the parity tests)

from kpl import run_kpl  # noqa: E402
from kpl.method.decision import within_float32_resolution  # noqa: E402
from kpl.method.ot import greenkhorn  # noqa: E402
from kpl.method.retrieval import as_matrix, split_by_class  # noqa: E402

SHARED = Path(os.environ.get("KPL_TEST_SHARED") or Path(__file__).resolve().parents[2] / "shared")
PERMUTATIONS = 4


def before(x_np, classes, k, exact_iters=False):
    """(predictions, float32 scores) of image_ot in the paper's arithmetic."""
    w_text = torch.from_numpy(run_kpl(x_np, classes, k=k, iters=0).text.proxies)  # retrieval only
    x = as_matrix(x_np, "x")
    w = paper_loop(x, greenkhorn(x @ w_text, 0.01), w_text, early_stop=not exact_iters)  # float32 Greenkhorn, as the paper
    scores = x @ w
    return scores.argmax(1).numpy(), scores.numpy(), w


def after(x_np, classes, k, exact_iters=False):
    stage = run_kpl(x_np, classes, k=k, exact_iters=exact_iters).image_ot
    return stage.predictions, stage.logits, torch.from_numpy(stage.proxies)


def small_margins(scores: np.ndarray) -> float:
    s = np.sort(scores.astype(np.float64), axis=1)
    return float(np.mean((s[:, -1] - s[:, -2]) < 1e-5 * np.abs(scores).max(axis=1)))


def row(name, method, x_np, classes, k):
    predictions, scores, w = method(x_np, classes, k)
    exact = method(x_np, classes, k, exact_iters=True)[0]
    rng = np.random.default_rng(0)
    flips = []
    for _ in range(PERMUTATIONS):
        perm = rng.permutation(x_np.shape[1])
        flips.append(int((method(x_np[:, perm], [e[:, perm] for e in classes], k)[0] != predictions).sum()))
    x = as_matrix(x_np, "x")
    w64 = w.to(torch.float64)
    ties = int(within_float32_resolution(x, w64, x.to(torch.float64) @ w64).sum())
    cosine = float(F.normalize(w[:, 0], dim=0) @ F.normalize(w[:, 1], dim=0))
    return (f"| {k} | {name} | {cosine:.7f} | {100 * small_margins(scores):.0f} % | {ties} | "
            f"{int((exact != predictions).sum())} | {max(flips)} ({sum(flips)}) |")


def main() -> None:
    npz = SHARED / "datasets" / "features" / "ph2_vitb16.npz"
    if not npz.exists():
        sys.exit(f"Error: {npz} not found; set KPL_TEST_SHARED to the shared folder")
    data = np.load(npz)
    x_np = data["image_features"]
    classes = split_by_class(data["description_embeddings"], data["description_class"])
    torch.set_num_threads(1)
    print(f"PH2 ViT-B/16, {x_np.shape[0]} images, image_ot stage, {torch.backends.cpu.get_cpu_capability()}\n")
    print("| k | arithmetic | proxy cosine | margins < 1e-5 rel | float32 ties | flips early/2000 | flips permuted, worst (total) |")
    print("|---|---|---|---|---|---|---|")
    for k in (8, 14):
        print(row("before (paper float32)", before, x_np, classes, k))
        print(row("after", after, x_np, classes, k))


if __name__ == "__main__":
    main()
