"""Fast start: help and read-only commands never import torch or open_clip.

Each check runs the command in a fresh interpreter (``main()`` exactly as the console script
calls it) and reports which heavy modules ended up in ``sys.modules``. Import costs are a property
of the code, so this is asserted; the seconds themselves are measured by benchmarks/bench_startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, cli_env, run_kbuild

# Only CLIP-using commands (load, prune, generate, merge, kpl eval) may pay for these.
HEAVY = ("torch", "torchvision", "open_clip", "transformers", "sentence_transformers", "matplotlib")
MARK = "HEAVY-MODULES:"

# Runs several commands one after the other in one fresh interpreter (cheaper than one each) and
# reports, after each, its exit code and the heavy modules loaded so far.
PROBE = """
import json, sys
prog, runs, heavy = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
from importlib import import_module
main = import_module({"kbuild": "kbuild.cli", "kpl": "kpl.cli"}[prog]).main
report = []
for args in runs:
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code or 0
    report.append({"args": " ".join(args), "code": code, "heavy": sorted(m for m in heavy if m in sys.modules)})
print(%r + json.dumps(report), file=sys.stderr)
""" % MARK


def heavy_imports(prog: str, *runs: tuple[str, ...], **env: str) -> dict[str, list[str]]:
    """For each command run in turn in one fresh interpreter: the heavy modules loaded by then."""
    proc = subprocess.run([sys.executable, "-c", PROBE, prog, json.dumps([list(r) for r in runs]), json.dumps(HEAVY)],
                          capture_output=True, text=True, env=cli_env(**env), cwd=REPO, timeout=120)
    line = next((l for l in proc.stderr.splitlines() if l.startswith(MARK)), None)
    assert line is not None, proc.stderr
    report = json.loads(line[len(MARK):])
    assert all(r["code"] == 0 for r in report), proc.stderr
    return {r["args"]: r["heavy"] for r in report}


@pytest.fixture(scope="module")
def store_with_a_snapshot(tmp_path_factory, tiny_model):
    """A store holding snapshot_v1 (loaded in this process, where torch is already paid for)."""
    root = tmp_path_factory.mktemp("startup")
    (root / "kb.json").write_text(json.dumps({"cat": ["pointed ears", "whiskers"], "dog": ["floppy ears"]}))
    loaded = run_kbuild("load", root / "kb.json", "--store", root / "store", "--model", tiny_model)
    assert loaded.code == 0, loaded.err
    return root / "store"


@pytest.mark.slow
def test_kbuild_help_and_read_only_commands_import_no_torch(store_with_a_snapshot):
    runs = [("--help",), ("list",), ("show", "v1"), ("prompts", "list")]
    loaded = heavy_imports("kbuild", *runs, KBUILD_STORE=str(store_with_a_snapshot))
    assert loaded == {" ".join(r): [] for r in runs}


def test_kpl_help_imports_no_torch():
    runs = [("--help",), ("eval", "--help"), ("sweep", "--help"), ("models",)]
    assert heavy_imports("kpl", *runs) == {" ".join(r): [] for r in runs}


def test_kpl_public_names_import_on_first_use():
    """``from kpl import run_kpl`` still works although ``import kpl`` defers the torch-backed modules."""
    import kpl

    assert set(kpl.__all__) <= set(dir(kpl))
    for name in kpl.__all__:
        assert getattr(kpl, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = kpl.nope
