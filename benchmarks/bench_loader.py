"""Benchmark: image loading vs the model's own forward throughput, at the same batch size.

docs/ALGORITHM.md target: the data loader is not the bottleneck of image encoding: it
delivers at least 80 % of the images per second that the model can encode.

The model is open_clip's ViT-B-32 with random weights (``pretrained=None``: nothing is
downloaded), with its own preprocessing (resize to 224, centre crop, normalise). Rows:

- loader: ``kpl.images.features.make_loader`` alone (decode JPEG, preprocess, collate), per worker count;
- model: ``encode_image`` on ready (B, 3, 224, 224) tensors, no loading at all;
- pipeline: ``kpl.images.features.encode_images``, the product's encode loop (loader + model), per worker
  count; pipeline / model is the share of the model's speed the product actually gets.

Images are 500 x 375 JPEGs (a typical photo size).

    python benchmarks/bench_loader.py                      # 96 images, batch 32
    python benchmarks/bench_loader.py --images 96 --batch-size 16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kpl.images.features import default_workers, encode_images, make_loader  # noqa: E402


class ClipAdapter:
    """The slice of ``kbuild.clip.models.ClipModel`` that ``encode_images`` uses, around a bare model."""

    def __init__(self, model, preprocess, device: str = "cpu"):
        self.model, self.preprocess, self.device = model.eval(), preprocess, device
        self.dim = model.visual.output_dim

    def encode_image_batch(self, images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.model.encode_image(images.to(self.device), normalize=True).float().cpu().numpy()


def make_images(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        # Smooth colour fields plus noise: JPEG sizes close to real photos (~40-80 KB).
        gradient = np.linspace(0, 255, 500)[None, :, None] * rng.uniform(0.2, 1.0, 3)
        pixels = np.clip(gradient + rng.normal(0, 25, (375, 500, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def loader_rate(paths, preprocess, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    count = sum(len(indices) for _, indices, _ in make_loader(paths, preprocess, batch_size, workers))
    return count / (time.perf_counter() - start)


def model_rate(clip: ClipAdapter, count: int, batch_size: int) -> float:
    """Best of two timed passes after a full-batch warm-up (the first call allocates and picks kernels)."""
    batch = torch.randn(batch_size, 3, 224, 224)
    clip.encode_image_batch(batch)
    rates = []
    for _ in range(2):
        start, done = time.perf_counter(), 0
        while done < count:
            done += len(clip.encode_image_batch(batch[: min(batch_size, count - done)]))
        rates.append(done / (time.perf_counter() - start))
    return max(rates)


def pipeline_rate(paths, clip: ClipAdapter, batch_size: int, workers: int) -> float:
    start = time.perf_counter()
    features, ok = encode_images(paths, clip, batch_size=batch_size, workers=workers)
    assert ok.all() and features.shape == (len(paths), clip.dim)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="0,1,2", help="comma list of DataLoader worker counts")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    clip = ClipAdapter(model, preprocess)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp) / "images", args.images)
        loader_rate(paths[: args.batch_size], preprocess, args.batch_size, 0)  # warm the page cache
        model_ips = model_rate(clip, args.images, args.batch_size)
        loaders = {w: loader_rate(paths, preprocess, args.batch_size, w) for w in worker_counts}
        pipelines = {w: pipeline_rate(paths, clip, args.batch_size, w) for w in worker_counts}

    auto = default_workers(args.images, args.batch_size, clip.device)
    print(f"\nViT-B-32 (random weights), {args.images} JPEGs 500x375 -> 224, batch {args.batch_size}, "
          f"CPU, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores\n")
    print(f"| {'measure':<34} | {'images/s':>9} | {'vs model':>8} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 10}|")
    print(f"| {'model forward only':<34} | {model_ips:9.1f} | {'100 %':>8} |")
    for w, ips in loaders.items():
        print(f"| {f'loader only, {w} workers':<34} | {ips:9.1f} | {100 * ips / model_ips:6.0f} % |")
    for w, ips in pipelines.items():
        mark = " (auto)" if w == auto else ""
        print(f"| {f'pipeline, {w} workers{mark}':<34} | {ips:9.1f} | {100 * ips / model_ips:6.0f} % |")
    best_loader = max(loaders.values())
    print(f"\ntarget: loader >= 80 % of the model's throughput: {100 * best_loader / model_ips:.0f} % "
          f"{'PASS' if best_loader >= 0.8 * model_ips else 'FAIL'}")
    if auto in pipelines:
        print(f"encode pipeline with the default worker count ({auto}): {100 * pipelines[auto] / model_ips:.0f} % "
              "of the model-only rate")


if __name__ == "__main__":
    main()
