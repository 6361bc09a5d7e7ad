"""Benchmark: loading a shared knowledge base as a Parquet bundle vs as its json export (issue 22).

Target: ``kbuild load kb.parquet`` of a 30 000-description snapshot takes < 10 % of the time of
``kbuild load kb.json`` (its json export), which has no vectors and must re-embed every text. The
bundle loads no encoder at all; the json load uses the tiny random open_clip model of the tests
(width 64, 2 layers: far cheaper than any real CLIP, so the ratio here is the least favourable one).

Both go through ``kbuild.ops.load.load_files`` into a fresh embedded store (so the text-embedding
cache is empty), publish included. The source snapshot is synthetic: 200 classes x 150 descriptions
with unit vectors of the tiny model's dimension, published once, then exported both ways. The
columns split each load into reading and checking the file, embedding (json only) and writing to
the store (the same Chroma write for both, so it sets the floor of the bundle's time).

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
from kbuild.clip.choice import ModelRequest  # noqa: E402
from kbuild.descriptions import (
    DEFAULT_TEMPLATE,  # noqa: E402
    Description,  # noqa: E402
)
from kbuild.ops.export import export_parquet  # noqa: E402
from kbuild.ops.inspect import export_text  # noqa: E402
from kbuild.ops.load import LoadRequest, load_files  # noqa: E402
from kbuild.sources.curated import load_curated  # noqa: E402
from kbuild.store import SnapshotStore  # noqa: E402
from kbuild.store.bundle import read_bundle  # noqa: E402
from kbuild.store.manifest import SnapshotDraft  # noqa: E402

WORDS = ("dark", "round", "scaly", "pink", "raised", "flat", "irregular", "smooth", "crusted", "glossy",
         "border", "center", "patch", "spots", "streaks", "ring", "texture", "surface", "edge", "pattern")


def tiny_clip(folder: Path) -> str:
    """The spec of the tests' tiny random open_clip model, written to ``folder``."""
    from helpers import build_tiny_clip_dir

    return f"local-dir:{build_tiny_clip_dir(folder)}"


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
        from kbuild.clip.models import load_clip

        spec = tiny_clip(root / "tiny")
        clip = load_clip(spec, None)  # loaded (and cached for the process) before the clock starts
        store = source_store(root / "source", clip, classes, per_class)
        kb = store.read("latest", embeddings=False)
        (root / "kb.json").write_text(export_text(kb, "json"), encoding="utf-8")
        export_parquet(store, "latest", root / "kb.parquet")

        def embedder(home):
            from kbuild.clip.text import TextEmbedder, cache_path

            return lambda: TextEmbedder(clip, cache_path(home))

        # The bundle load names a model that cannot load: it must never ask for one.
        refuse = ModelRequest("no-such-model-anywhere", "none")
        stores = {key: SnapshotStore(root / key) for key in ("J", "P")}  # opened (created) before the clock starts
        json_s, json_result = timed(lambda: load_files(stores["J"], LoadRequest(
            [root / "kb.json"], template=DEFAULT_TEMPLATE, model=ModelRequest(spec, "none"))))
        parquet_s, parquet_result = timed(lambda: load_files(stores["P"], LoadRequest(
            [root / "kb.parquet"], template=DEFAULT_TEMPLATE, model=refuse)))
        assert json_result.snapshot.content_hash == parquet_result.snapshot.content_hash == kb.info.content_hash
        # The parts, each timed again on its own (fresh cache for the embedding).
        parse_s, _ = timed(lambda: load_curated([root / "kb.json"]))
        embed_s, _ = timed(lambda: embedder(root / "E")().embed_descriptions(kb.descriptions, DEFAULT_TEMPLATE))
        read_s, _ = timed(lambda: read_bundle(root / "kb.parquet"))
        sizes = {name: (root / name).stat().st_size / 1e6 for name in ("kb.json", "kb.parquet")}
    total = classes * per_class
    ratio = parquet_s / json_s
    print(f"kbuild load of a {total}-description snapshot ({classes} classes x {per_class}) into a fresh embedded "
          "store; the json export is re-embedded with the tiny test CLIP, the bundle loads no encoder")
    print(f"{'file':<12}{'MB':>6}{'read+check s':>14}{'embed s':>10}{'publish s':>11}{'load s':>9}{'of json':>9}")
    print(f"{'kb.json':<12}{sizes['kb.json']:>6.1f}{parse_s:>14.2f}{embed_s:>10.2f}"
          f"{max(json_s - parse_s - embed_s, 0):>11.2f}{json_s:>9.2f}{1:>9.0%}")
    print(f"{'kb.parquet':<12}{sizes['kb.parquet']:>6.1f}{read_s:>14.2f}{'-':>10}"
          f"{max(parquet_s - read_s, 0):>11.2f}{parquet_s:>9.2f}{ratio:>9.1%}")
    before_store = read_s / (parse_s + embed_s)
    print(f"before the store write (read+check vs parse+embed): {before_store:.1%}")
    met = ratio < 0.10
    print(f"target: bundle load < 10 % of the json load -> {'met' if met else 'MISSED'} ({ratio:.1%})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
