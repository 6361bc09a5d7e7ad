"""Benchmark: loading a shared knowledge base as a Parquet bundle vs as its json export (issue 22).

Target: ``kbuild load kb.parquet`` of a 30 000-description snapshot takes < 10 % of the time of
``kbuild load kb.json`` (its json export), which has no vectors and must re-embed every text. The
bundle loads no encoder at all; the json load uses the tiny random open_clip model of the tests
(width 64, 2 layers: far cheaper than any real CLIP, so the ratio here is the least favourable one).

Both go through ``kbuild.ops.load.load_files`` into a fresh embedded store (so the text-embedding
cache is empty), publish included. The source snapshot is synthetic: 200 classes x 150 descriptions
with unit vectors of the tiny model's dimension, published once, then exported both ways. A second
table splits each load into reading (+ embedding for json) and publishing.

    python benchmarks/bench_parquet.py              # 200 x 150 = 30 000 descriptions
    python benchmarks/bench_parquet.py --quick      # 40 x 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from kbuild.descriptions import Description  # noqa: E402
from kbuild.ops.export import export_parquet  # noqa: E402
from kbuild.ops.inspect import export_text  # noqa: E402
from kbuild.ops.load import load_files  # noqa: E402
from kbuild.settings import DEFAULT_TEMPLATE  # noqa: E402
from kbuild.store import SnapshotStore  # noqa: E402
from kbuild.store.bundle import read_bundle  # noqa: E402
from kbuild.store.manifest import SnapshotDraft  # noqa: E402

WORDS = ("dark", "round", "scaly", "pink", "raised", "flat", "irregular", "smooth", "crusted", "glossy",
         "border", "center", "patch", "spots", "streaks", "ring", "texture", "surface", "edge", "pattern")


def tiny_clip(folder: Path):
    from helpers import build_tiny_clip_dir
    from kbuild.clip.models import load_clip

    return load_clip(f"local-dir:{build_tiny_clip_dir(folder)}", None)


def source_store(home: Path, clip, classes: int, per_class: int) -> SnapshotStore:
    rng = np.random.default_rng(0)
    descriptions = [Description(f"class {c:03d}", f"trait {i:04d}: a {' '.join(rng.choice(WORDS, size=4))}",
                                source="bench:synthetic") for c in range(classes) for i in range(per_class)]
    dim = clip.encode_texts(["probe"]).shape[1]
    vectors = rng.standard_normal((len(descriptions), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = SnapshotStore(home)
    store.publish(SnapshotDraft(descriptions, vectors, "load", {}, clip={**clip.describe(), "template": DEFAULT_TEMPLATE}))
    return store


def timed(work):
    start = time.perf_counter()
    value = work()
    return time.perf_counter() - start, value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 classes x 50 descriptions")
    args = parser.parse_args()
    classes, per_class = (40, 50) if args.quick else (200, 150)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = tiny_clip(root / "tiny")
        store = source_store(root / "source", clip, classes, per_class)
        kb = store.read("latest", embeddings=False)
        (root / "kb.json").write_text(export_text(kb, "json"), encoding="utf-8")
        export_parquet(store, "latest", root / "kb.parquet")

        def embedder(home):
            from kbuild.clip.text import TextEmbedder, cache_path

            return lambda: TextEmbedder(clip, cache_path(home))

        def refuse():
            raise AssertionError("the bundle load asked for an encoder")

        json_s, json_result = timed(lambda: load_files(SnapshotStore(root / "J"), embedder(root / "J"),
                                                       [root / "kb.json"], DEFAULT_TEMPLATE))
        parquet_s, parquet_result = timed(lambda: load_files(SnapshotStore(root / "P"), refuse,
                                                             [root / "kb.parquet"], DEFAULT_TEMPLATE))
        assert json_result.snapshot.content_hash == parquet_result.snapshot.content_hash == kb.info.content_hash
        read_s, _ = timed(lambda: read_bundle(root / "kb.parquet"))
        embed_s, _ = timed(lambda: embedder(root / "E")().embed_descriptions(kb.descriptions, DEFAULT_TEMPLATE))
        sizes = {name: (root / name).stat().st_size / 1e6 for name in ("kb.json", "kb.parquet")}
    total = classes * per_class
    ratio = parquet_s / json_s
    print(f"kbuild load of a {total}-description snapshot ({classes} classes x {per_class}); json re-embeds with the "
          "tiny test CLIP, the bundle loads no encoder")
    print(f"{'file':<12}{'MB':>8}{'load s':>10}{'of json':>10}")
    print(f"{'kb.json':<12}{sizes['kb.json']:>8.1f}{json_s:>10.2f}{1:>10.0%}")
    print(f"{'kb.parquet':<12}{sizes['kb.parquet']:>8.1f}{parquet_s:>10.2f}{ratio:>10.1%}")
    print(f"parts: read + check bundle {read_s:.2f} s; embed {total} texts (tiny CLIP) {embed_s:.2f} s; "
          f"publish ~{parquet_s - read_s:.2f} s")
    met = ratio < 0.10
    print(f"target: bundle < 10 % of json -> {'met' if met else 'MISSED'} ({ratio:.1%})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
