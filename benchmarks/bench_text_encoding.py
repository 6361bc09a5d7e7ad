"""Benchmark: text encoding, open_clip's ``encode_text`` against kbuild's, side by side in one run.

Targets (issue 21): kbuild's encoding >= 3x the texts/s of ``encode_text`` on the same model, same
texts, same process, with embeddings equal within 1e-5 (printed beside kbuild's previous path:
sorted batches cut to their longest text, without sharing the template's prefix); ``kbuild load``
end to end (a fresh process, from its start to the published snapshot) >= 1.5x faster than
``encode_text`` alone.

No pretrained weights can be downloaded here, so the model is the chosen architecture with random
weights, saved as a ``local-dir:`` folder (the speed of a transformer does not depend on its
weights). The texts come from ../shared/datasets/kb: DCLIP's Food-101 descriptors (short, as in
the issue's DCLIP CUB case) or CuPL's Food-101 sentences (long, like CuPL ImageNet's), rendered with
the default template exactly as ``kbuild load`` renders them. The last line scales the measured
rate to CuPL ImageNet (29,940 texts); measure it with ``--kb cupl``.

    python benchmarks/bench_text_encoding.py --threads 2 --texts 499            # ViT-B-32, all DCLIP texts
    python benchmarks/bench_text_encoding.py --threads 2 --kb cupl --no-load    # for the CuPL ImageNet line
    python benchmarks/bench_text_encoding.py --threads 2 --omp-wait passive     # on a machine busy with others
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KB_DIR = ROOT.parent / "shared" / "datasets" / "kb"
FILES = {"dclip": ("DCLIP Food-101 descriptors", KB_DIR / "WaffleCLIP__descriptors_food101.json"),
         "cupl": ("CuPL Food-101 sentences", KB_DIR / "CuPL__food_prompts_full.json")}
CUPL_IMAGENET_TEXTS = 29_940


def pick_texts(path: Path, limit: int) -> dict[str, list[str]]:
    """Whole classes of the CuPL file, in file order, until ``limit`` texts are reached."""
    chosen: dict[str, list[str]] = {}
    total = 0
    for name, texts in json.loads(path.read_text()).items():
        if total >= limit:
            break
        chosen[name] = texts[: limit - total]
        total += len(chosen[name])
    return chosen


def random_model_dir(arch: str, folder: Path) -> Path:
    import open_clip

    from kbuild.clip.models import write_local_dir

    config = open_clip.get_model_config(arch)
    model = open_clip.create_model(arch, pretrained=None)
    return write_local_dir(model, config, folder)


def encode_text_alone(clip, texts: list[str], batch: int = 256):
    """open_clip's own path: tokenise, ``encode_text`` (77 tokens), normalise; (B, D) rows."""
    import numpy as np
    import torch

    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            tokens = clip.tokenizer(texts[start:start + batch])
            rows.append(clip.model.encode_text(tokens, normalize=True).float().numpy())
    return np.concatenate(rows)


def timed(fn, *args):
    """(wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def sorted_only(clip, texts: list[str]):
    """kbuild's previous path: batches sorted by length and cut to their longest text, no sharing."""
    import torch

    from kbuild.clip import causal

    with torch.inference_mode():
        return causal.encode(clip.model, clip.tokenizer(texts), share_prefixes=False).numpy()


PATHS = {"base": encode_text_alone, "sorted": sorted_only, "ours": lambda clip, texts: clip.encode_texts(texts)}


def side_by_side(clip, texts: list[str], rounds: int):
    """All paths on the same texts, alternating in ``rounds`` parts so that a shared machine's
    changing load falls on each alike: {path: [wall, cpu]}, and {path: rows}."""
    import numpy as np

    totals = {path: [0.0, 0.0] for path in PATHS}
    rows: dict[str, list] = {path: [] for path in PATHS}
    size = -(-len(texts) // rounds)
    for start in range(0, len(texts), size):
        part = texts[start:start + size]
        for path, fn in PATHS.items():
            wall, cpu, out = timed(fn, clip, part)
            totals[path][0] += wall
            totals[path][1] += cpu
            rows[path].append(out)
    return totals, {path: np.concatenate(parts) for path, parts in rows.items()}


def load_end_to_end(model: str, classes: dict[str, list[str]], threads: int | None) -> float:
    """Seconds of ``kbuild load`` in a fresh process and a fresh store, process start to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kb.json"
        path.write_text(json.dumps(classes))
        env = {**os.environ, "KBUILD_STORE": str(Path(tmp) / "store"), "PYTHONPATH": str(ROOT),
               "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "from kbuild.cli import main; main()", "load", str(path),
                               "--model", model],
                              capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"Error: kbuild load exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--kb", choices=sorted(FILES), default="dclip", help="which texts")
    parser.add_argument("--texts", type=int, default=250, help="how many texts (whole classes, in file order)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-load", action="store_true", help="skip the kbuild load end-to-end row")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the paths this many times (a busy machine)")
    parser.add_argument("--omp-wait", choices=("passive", "active"), default=None,
                        help="OMP_WAIT_POLICY for torch's threads (default: the environment's). On a machine with "
                             "more busy threads than cores, spinning threads burn CPU time waiting for a descheduled "
                             "partner at every operation; passive lets them sleep, so CPU time counts work")
    args = parser.parse_args()
    if args.omp_wait:  # read once, when torch's OpenMP starts: before torch is imported
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait.upper()

    import numpy as np
    import torch

    from kbuild.clip.models import load_clip
    from kbuild.clip.prefix_groups import shared_prefixes
    from kbuild.descriptions import DEFAULT_TEMPLATE

    if args.threads:
        torch.set_num_threads(args.threads)
    label, path = FILES[args.kb]
    classes = pick_texts(path, args.texts)
    texts = [DEFAULT_TEMPLATE.format(name, text) for name, rows in classes.items() for text in rows]
    with tempfile.TemporaryDirectory() as tmp:
        model = f"local-dir:{random_model_dir(args.arch, Path(tmp) / args.arch)}"
        clip = load_clip(model, None)
        tokens = np.asarray([int(t.argmax()) + 1 for t in clip.tokenizer(texts)])
        print(f"{args.arch} (random weights), {len(texts)} {label} (tokens: median "
              f"{int(np.median(tokens))}, max {tokens.max()}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")
        groups = shared_prefixes(clip.tokenizer(texts).numpy(), tokens)
        print(f"shared prefixes: {len(groups.prefix)} groups (median prefix {int(np.median(groups.prefix))} "
              f"tokens), {groups.saved_tokens() / tokens.sum():.0%} of {tokens.sum()} token positions skipped")
        totals, rows = side_by_side(clip, texts, args.rounds)
        load_s = None if args.no_load else load_end_to_end(model, classes, args.threads)
    (base_s, base_cpu), (ours_s, ours_cpu) = totals["base"], totals["ours"]
    n = len(texts)
    print(f"{'path':<50} {'wall s':>7} {'CPU s':>7} {'texts/s':>8} {'speedup':>8} {'CPU speedup':>11}")
    names = {"base": "open_clip encode_text (77 tokens)", "sorted": "kbuild sorted, cut to longest (no sharing)",
             "ours": "kbuild encode_texts (shared prefixes, KV cache)"}
    for path, name in names.items():
        wall, cpu = totals[path]
        print(f"{name:<50} {wall:>7.1f} {cpu:>7.1f} {n / wall:>8.1f} {base_s / wall:>8.2f} {base_cpu / cpu:>11.2f}")
    if load_s is not None:
        print(f"{'kbuild load, process start to snapshot':<50} {load_s:>7.1f} {'':>7} {n / load_s:>8.1f} "
              f"{base_s / load_s:>8.2f}")
    for path in ("sorted", "ours"):
        print(f"max |{names[path].split(' (')[0]} - encode_text| = {float(np.abs(rows[path] - rows['base']).max()):.2e}")
    threads = torch.get_num_threads()
    idle = CUPL_IMAGENET_TEXTS / n * ours_cpu / threads / 60
    print(f"CuPL ImageNet ({CUPL_IMAGENET_TEXTS:,} texts) at this rate: {CUPL_IMAGENET_TEXTS / n * ours_s / 60:.0f} min "
          f"wall here; about {idle:.0f} min on {threads} idle cores (CPU time / threads; encode_text: "
          f"{CUPL_IMAGENET_TEXTS / n * base_cpu / threads / 60:.0f} min)")

if __name__ == "__main__":
    main()
