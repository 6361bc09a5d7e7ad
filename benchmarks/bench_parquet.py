"""Benchmark: loading a shared knowledge base as a Parquet bundle vs as its json export (issue 22).

Target: ``kbuild load kb.parquet`` of a 30 000-description snapshot takes < 10 % of the time of
``kbuild load kb.json`` (its json export), which has no vectors and must re-embed every text with
the snapshot's model. The bundle loads no encoder at all.

The json side is what a user runs: ``kbuild load kb.json`` with the default model architecture,
ViT-B-32. No weights can be downloaded here, so it is ViT-B-32 with random weights saved as a
``local-dir:`` folder (a transformer's speed does not depend on its weights). Re-embedding 30 000
texts with it takes about an hour on this 2-core machine, so by default the embedding is timed on
an evenly spread sample of the texts (``--json-sample``, 600) and scaled to all of them; parsing the
full json file is timed as it is, and its store write is the bundle's own store write (the same
30 000 records, vectors of the same size, into the same kind of fresh store). The class-name
prompts a json load also embeds, and loading the model, are left out of the json side (both make it
slower: the ratio printed is the least favourable one). ``--json-sample 0`` times the whole json
load end to end instead (minutes with ``--json-model tiny``, the tests' 64-d random model, which is
the earlier, much cheaper comparison; an hour or more with ViT-B-32 on a CPU).

Each load goes through ``kbuild.ops.load.load_files`` into a fresh embedded store, publish included;
the source snapshot is synthetic: 200 classes x 150 descriptions with random unit vectors of the
model's dimension, published once, then exported both ways. Wall and CPU (process) seconds are
printed: on a shared machine the wall time follows the load average, the CPU time much less.

    python benchmarks/bench_parquet.py                  # 200 x 150 = 30 000 descriptions, ViT-B-32
    python benchmarks/bench_parquet.py --parquet-only --repeat 3   # the bundle load alone
    python benchmarks/bench_parquet.py --json-model tiny --json-sample 0   # the old end-to-end comparison
    python benchmarks/bench_parquet.py --quick          # 40 x 50
"""

from __future__ import annotations

import argparse
import os
import statistics
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
from kbuild.descriptions import DEFAULT_TEMPLATE, Description  # noqa: E402
from kbuild.ops.export import export_parquet  # noqa: E402
from kbuild.ops.inspect import export_text  # noqa: E402
from kbuild.ops.load import LoadRequest, load_files  # noqa: E402
from kbuild.sources.curated import load_curated  # noqa: E402
from kbuild.store import SnapshotStore  # noqa: E402
from kbuild.store.bundle import read_bundle  # noqa: E402
from kbuild.store.manifest import SnapshotDraft  # noqa: E402

WORDS = ("dark", "round", "scaly", "pink", "raised", "flat", "irregular", "smooth", "crusted", "glossy",
         "border", "center", "patch", "spots", "streaks", "ring", "texture", "surface", "edge", "pattern")
DEFAULT_ARCH = "ViT-B-32"  # kbuild's default model (kbuild.clip.registry), here with random weights


def model_dir(arch: str, folder: Path) -> str:
    """A ``local-dir:`` spec of ``arch`` with random weights (``tiny``: the tests' tiny model)."""
    if arch == "tiny":
        from helpers import build_tiny_clip_dir

        return f"local-dir:{build_tiny_clip_dir(folder)}"
    import open_clip

    from kbuild.clip.models import write_local_dir

    model = open_clip.create_model(arch, pretrained=None)
    return f"local-dir:{write_local_dir(model, open_clip.get_model_config(arch), folder)}"


def embedding_dim(arch: str) -> int:
    if arch == "tiny":
        from helpers import TINY_CLIP_CONFIG

        return int(TINY_CLIP_CONFIG["embed_dim"])
    import open_clip

    return int(open_clip.get_model_config(arch)["embed_dim"])


def source_store(home: Path, arch: str, classes: int, per_class: int) -> SnapshotStore:
    rng = np.random.default_rng(0)
    descriptions = [Description(f"class {c:03d}", f"trait {i:04d}: a {' '.join(rng.choice(WORDS, size=4))}",
                                source="bench:synthetic") for c in range(classes) for i in range(per_class)]
    vectors = rng.standard_normal((len(descriptions), embedding_dim(arch))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    clip = {"model": arch, "pretrained": None, "model_id": f"{arch}/random", "template": DEFAULT_TEMPLATE}
    store = SnapshotStore(home)
    store.publish(SnapshotDraft(descriptions, vectors, "load", {}, clip=clip))
    return store


def timed(work):
    """(wall s, CPU s of this process, value)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = work()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def load_parquet(root: Path, key: str, expected_hash: str):
    """One ``kbuild load kb.parquet`` into a fresh store: (wall, CPU) of the load."""
    store = SnapshotStore(root / key)  # opened (created) before the clock starts, as the json store
    # The bundle load names a model that cannot load: it must never ask for one.
    request = LoadRequest([root / "kb.parquet"], template=DEFAULT_TEMPLATE, model=ModelRequest("no-such-model", "none"))
    wall, cpu, result = timed(lambda: load_files(store, request))
    assert result.snapshot.content_hash == expected_hash
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 classes x 50 descriptions")
    parser.add_argument("--json-model", default=DEFAULT_ARCH, help="open_clip architecture (random weights) or tiny")
    parser.add_argument("--json-sample", type=int, default=600,
                        help="texts the embedding is timed on, scaled to all (0: the whole json load, end to end)")
    parser.add_argument("--parquet-only", action="store_true", help="time the bundle load alone")
    parser.add_argument("--repeat", type=int, default=1, help="bundle loads (each into a fresh store); median shown")
    args = parser.parse_args()
    classes, per_class = (40, 50) if args.quick else (200, 150)
    total = classes * per_class
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = source_store(root / "source", args.json_model, classes, per_class)
        kb = store.read("latest", embeddings=False)
        (root / "kb.json").write_text(export_text(kb, "json"), encoding="utf-8")
        export_parquet(store, "latest", root / "kb.parquet")
        sizes = {name: (root / name).stat().st_size / 1e6 for name in ("kb.json", "kb.parquet")}
        read_s, read_cpu, _ = timed(lambda: read_bundle(root / "kb.parquet"))
        runs = [load_parquet(root, f"P{k}", kb.info.content_hash) for k in range(args.repeat)]
        parquet_s = statistics.median(w for w, _ in runs)
        parquet_cpu = statistics.median(c for _, c in runs)
        print(f"kbuild load of a {total}-description snapshot ({classes} classes x {per_class}, "
              f"{embedding_dim(args.json_model)}-d vectors) into a fresh embedded store, wall s / CPU s")
        loads = ", ".join(f"{w:.2f} / {c:.2f}" for w, c in runs)
        print(f"kb.parquet ({sizes['kb.parquet']:.1f} MB): read+check {read_s:.2f} / {read_cpu:.2f}, "
              f"load {loads} (median {parquet_s:.2f} / {parquet_cpu:.2f})")
        if args.parquet_only:
            return 0
        from kbuild.clip.models import load_clip
        from kbuild.clip.text import TextEmbedder, cache_path

        spec = model_dir(args.json_model, root / "model")
        clip = load_clip(spec, None)  # loaded (and cached for the process) before any clock starts
        parse_s, parse_cpu, _ = timed(lambda: load_curated([root / "kb.json"]))
        bundle_write_s, bundle_write_cpu = max(parquet_s - read_s, 0), max(parquet_cpu - read_cpu, 0)
        write_s, write_cpu = bundle_write_s, bundle_write_cpu  # the json load's write (see the module doc)
        if args.json_sample:
            sample = kb.descriptions[:: max(1, total // args.json_sample)][: args.json_sample]
            embedder = TextEmbedder(clip, cache_path(root / "E"))  # a fresh, empty text cache
            sample_s, sample_cpu, _ = timed(lambda: embedder.embed_descriptions(sample, DEFAULT_TEMPLATE))
            embed_s, embed_cpu = sample_s * total / len(sample), sample_cpu * total / len(sample)
            json_s, json_cpu = parse_s + embed_s + write_s, parse_cpu + embed_cpu + write_cpu
            how = (f"embedding timed on {len(sample)} of the texts ({sample_s:.1f} s wall, "
                   f"{len(sample) / sample_s:.1f} texts/s) and scaled to {total}; the write is the bundle's")
        else:
            json_store = SnapshotStore(root / "J")
            request = LoadRequest([root / "kb.json"], template=DEFAULT_TEMPLATE, model=ModelRequest(spec, "none"))
            json_s, json_cpu, result = timed(lambda: load_files(json_store, request))
            assert result.snapshot.content_hash == kb.info.content_hash
            embedder = TextEmbedder(clip, cache_path(root / "E"))
            embed_s, embed_cpu, _ = timed(lambda: embedder.embed_descriptions(kb.descriptions, DEFAULT_TEMPLATE))
            write_s, write_cpu = max(json_s - parse_s - embed_s, 0), max(json_cpu - parse_cpu - embed_cpu, 0)
            how = "the whole json load timed end to end, its embedding again on its own"
    ratio, ratio_cpu = parquet_s / json_s, parquet_cpu / json_cpu
    print(f"kb.json re-embedded with {args.json_model} (random weights): {how}")
    print(f"{'file':<12}{'MB':>6}{'read+check s':>14}{'embed s':>11}{'write s':>10}{'load s':>10}"
          f"{'load CPU s':>12}{'of json':>9}{'(CPU)':>8}")
    print(f"{'kb.json':<12}{sizes['kb.json']:>6.1f}{parse_s:>14.2f}{embed_s:>11.1f}{write_s:>10.2f}{json_s:>10.1f}"
          f"{json_cpu:>12.1f}{1:>9.0%}{1:>8.0%}")
    print(f"{'kb.parquet':<12}{sizes['kb.parquet']:>6.1f}{read_s:>14.2f}{'-':>11}{bundle_write_s:>10.2f}{parquet_s:>10.2f}"
          f"{parquet_cpu:>12.2f}{ratio:>9.1%}{ratio_cpu:>8.1%}")
    met = ratio < 0.10
    print(f"target: bundle load < 10 % of the json load -> {'met' if met else 'MISSED'} ({ratio:.1%})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
