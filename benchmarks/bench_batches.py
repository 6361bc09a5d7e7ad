"""Benchmark: every method on the batches a clinic sends (one-sided, skewed, balanced), and KPL's prior vs N.

Issue 24. For each problem, batches are drawn with a fixed share of one class (binary: 0, 0.1, 0.25,
0.5, 0.75, 0.9, 1.0) or, for the 10-class problem, with only 1-4 classes present in Dirichlet(1)
proportions; plain accuracy is averaged over seeded draws. Printed per row: accuracy per mix, the
mean over mixes and the worst mix.

Rows: every baseline in ``kpl.peers.baselines.BASELINES`` (a row per input it accepts: class names,
``_desc`` descriptions; new baselines appear when registered), ``kpl`` (the paper: k 8, prior
uniform), ``kpl_text`` (its zero-shot text stage), ``kpl_auto`` (k 8, prior auto: kpl.method.prior's anchored
stage) and, with ``--auto-k``, ``kpl_auto_k`` (k auto, prior auto: the issue's target row; 30 KPL runs
per batch, slow). Problems:

- ``ph2``: the shared PH2 CLIP ViT-B/16 features (200 images, 40 melanoma; batches larger than a
  class's pool draw with replacement), class-label prompts as class names;
- ``synthetic``: kpl.synthetic.synthetic_case("imbalanced") as the pool (binary, no class names);
- ``synthetic10``: 10 classes in 128 dimensions (bench_scale's generator), 1-4 classes per batch.

``--scale 10000,100000`` adds KPL (uniform vs auto) on bench_scale's 10-class features at those N.

    python benchmarks/bench_batches.py --quick           # batches of 40, 2 draws, k 8 rows (~5 min here)
    python benchmarks/bench_batches.py                   # batches of 40 and 256, 4 draws
    python benchmarks/bench_batches.py --auto-k --problems ph2 --sizes 40
    python benchmarks/bench_batches.py --problems none --scale 10000,100000
    python benchmarks/bench_batches.py --problems none --scale 1000000 --scale-priors auto --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MIXES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
PH2 = Path("datasets") / "features" / "ph2_vitb16.npz"  # under the shared folder next to the checkout


# ------------------------------------------------------------------ problems
def ph2_pool():
    from kpl.method.retrieval import split_by_class

    candidates = [ROOT.parent / "shared" / PH2, ROOT.parent.parent / "shared" / PH2]
    d = np.load(next((p for p in candidates if p.exists()), candidates[0]))
    return (d["image_features"], d["labels"], split_by_class(d["description_embeddings"], d["description_class"]),
            d["class_label_embeddings"])


def synthetic_pool():
    from kpl.synthetic import synthetic_case

    x, y, classes = synthetic_case("imbalanced", seed=0)
    return x, y, classes, None


def synthetic10_pool():
    from bench_scale import make_features

    x, y, classes = make_features(4000, d=128, c=10, m=20, seed=1)
    return x, y, classes, None


def binary_batches(labels, size: int, draws: int):
    """{mix: [index arrays]}: ``size`` images with ``mix`` of them from class 1."""
    out = {}
    for mix in MIXES:
        out[mix] = []
        for seed in range(draws):
            rng = np.random.default_rng(seed)
            ones = int(round(mix * size))
            parts = []
            for cls, count in ((0, size - ones), (1, ones)):
                pool = np.flatnonzero(labels == cls)
                parts.append(rng.choice(pool, count, replace=count > len(pool)))
            out[mix].append(np.concatenate(parts))
    return out


def present_batches(labels, size: int, draws: int, classes: int = 10):
    """{"k present": [index arrays]}: 1-4 of the classes present, Dirichlet(1) proportions."""
    out = {}
    for present in (1, 2, 3, 4):
        out[f"{present} present"] = []
        for seed in range(draws):
            rng = np.random.default_rng(1000 * present + seed)
            chosen = rng.choice(classes, present, replace=False)
            drawn = rng.choice(chosen, size, p=rng.dirichlet(np.ones(present)))
            out[f"{present} present"].append(np.array([rng.choice(np.flatnonzero(labels == c)) for c in drawn]))
    return out


PROBLEMS = {"ph2": (ph2_pool, binary_batches), "synthetic": (synthetic_pool, binary_batches),
            "synthetic10": (synthetic10_pool, present_batches)}


# ------------------------------------------------------------------ methods
def method_rows(auto_k: bool):
    """[(row name, function(x, classes, names) -> predictions or None)] over BASELINES and KPL."""
    from kpl import run_kpl
    from kpl.errors import UsageError
    from kpl.peers.baselines import BASELINES, run_baseline

    def baseline(name, source):
        def run(x, classes, names):
            given = {"class_embeddings": classes} if source == "desc" else {"name_embeddings": names}
            if source == "names" and names is None:
                return None
            try:
                return run_baseline(name, x, **given).predictions
            except UsageError:  # this baseline does not take this input
                return None
        return run

    rows = []
    for name in BASELINES:
        if name == "kpl":
            continue
        rows.append((name, baseline(name, "names")))
        rows.append((f"{name}_desc", baseline(name, "desc")))
    rows.append(("kpl_text", lambda x, c, n: run_kpl(x, c, k=8).text.predictions))  # the zero-shot text stage
    rows.append(("kpl", lambda x, c, n: run_kpl(x, c, k=8).image_ot.predictions))
    rows.append(("kpl_auto", lambda x, c, n: run_kpl(x, c, k=8, prior="auto").image_ot.predictions))
    if auto_k:
        rows.append(("kpl_auto_k", lambda x, c, n: run_kpl(x, c, k="auto", prior="auto").image_ot.predictions))
    return rows


def run_problem(problem: str, size: int, draws: int, auto_k: bool):
    pool, batches = PROBLEMS[problem]
    x, y, classes, names = pool()
    mixes = batches(y, size, draws)
    table = {}
    for row, fn in method_rows(auto_k):
        accs = {}
        for mix, draws_ in mixes.items():
            got = []
            for idx in draws_:
                pred = fn(x[idx], classes, names)
                if pred is None:
                    break
                got.append(float(np.mean(pred == y[idx])))
            if len(got) != len(draws_):
                accs = None
                break
            accs[mix] = 100 * float(np.mean(got))
        if accs is not None:
            table[row] = accs
    return list(mixes), table


def print_table(title: str, mixes, table) -> None:
    heads = [f"{m:g}" if isinstance(m, float) else str(m) for m in mixes]
    print(f"\n{title}")
    print("| method | " + " | ".join(heads) + " | mean | worst |")
    print("|---|" + "---:|" * (len(heads) + 2))
    for row, accs in table.items():
        values = [accs[m] for m in mixes]
        print(f"| {row} | " + " | ".join(f"{v:.1f}" for v in values)
              + f" | **{np.mean(values):.1f}** | {min(values):.1f} |", flush=True)


def run_scale(sizes, priors=("uniform", "auto"), threads: int = 1, k: int | str = 8) -> None:
    import resource

    from bench_scale import make_features

    from kpl import run_kpl

    print(f"\nKPL vs N (bench_scale's 10-class features, D 512, k {k}, {threads} thread(s)): accuracy of image_ot")
    heads = " | ".join(f"kpl ({p})" for p in priors)
    print(f"| N | text | {heads} | wall s | CPU s | peak RSS MB |")
    print("|---:|---:|" + "---:|" * len(priors) + "---:|---:|---:|")
    for n in sizes:
        x, y, classes = make_features(n)
        out, secs, cpu = [], [], []
        for prior in priors:
            start, start_cpu = time.perf_counter(), time.process_time()
            r = run_kpl(x, classes, k=k, prior=prior, num_threads=threads)
            secs.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            out.append(float(np.mean(r.image_ot.predictions == y)))
            if r.prior is not None:
                chosen = f", k auto chose {r.params.k}" if r.auto is not None else ""
                print(f"  N {n}, prior {prior}{chosen}: {r.prior}", flush=True)
        text = float(np.mean(r.text.predictions == y))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; the process's peak so far
        print(f"| {n} | {text:.3f} | " + " | ".join(f"{a:.3f}" for a in out)
              + f" | {' / '.join(f'{v:.0f}' for v in secs)} | {' / '.join(f'{v:.0f}' for v in cpu)} | {rss:.0f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batches of 40, 2 draws")
    parser.add_argument("--problems", default="ph2,synthetic,synthetic10", help="comma list, or none")
    parser.add_argument("--sizes", default=None, help="batch sizes (default 40,256; --quick 40)")
    parser.add_argument("--draws", type=int, default=None, help="seeded draws per mix (default 4; --quick 2)")
    parser.add_argument("--auto-k", action="store_true", help="add kpl_auto_k (k auto, prior auto): slow")
    parser.add_argument("--scale", default="", help="N values for KPL uniform vs auto, e.g. 10000,100000")
    parser.add_argument("--scale-priors", default="uniform,auto", help="priors of the --scale rows (comma list)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the --scale runs")
    parser.add_argument("--scale-k", default="8", help="k of the --scale runs: a number or auto (30 KPL runs per N)")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("40" if args.quick else "40,256")).split(",")]
    draws = args.draws or (2 if args.quick else 4)
    problems = [] if args.problems == "none" else args.problems.split(",")
    for problem in problems:
        for size in sizes:
            start = time.perf_counter()
            mixes, table = run_problem(problem, size, draws, args.auto_k)
            print_table(f"{problem}, batches of {size}, {draws} draws per mix ({time.perf_counter() - start:.0f} s)",
                        mixes, table)
    if args.scale:
        run_scale([int(n) for n in args.scale.split(",")], priors=tuple(args.scale_priors.split(",")),
                  threads=args.threads, k=args.scale_k if args.scale_k == "auto" else int(args.scale_k))


if __name__ == "__main__":
    main()
