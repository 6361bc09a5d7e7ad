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

PROBE = """
import json, sys
prog, args, heavy = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
from importlib import import_module
main = import_module({"kbuild": "kbuild.cli", "kpl": "kpl.cli"}[prog]).main
code = 0
try:
    main(args)
except SystemExit as exc:
    code = exc.code or 0
print(%r + json.dumps({"code": code, "heavy": sorted(m for m in heavy if m in sys.modules)}), file=sys.stderr)
""" % MARK


def heavy_imports(prog: str, *args: str, **env: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running ``prog args`` (which must exit 0)."""
    proc = subprocess.run([sys.executable, "-c", PROBE, prog, json.dumps(list(args)), json.dumps(HEAVY)],
                          capture_output=True, text=True, env=cli_env(**env), cwd=REPO, timeout=120)
    line = next((l for l in proc.stderr.splitlines() if l.startswith(MARK)), None)
    assert line is not None, proc.stderr
    report = json.loads(line[len(MARK):])
    assert report["code"] == 0, proc.stderr
    return report["heavy"]


@pytest.fixture(scope="module")
def store_with_a_snapshot(tmp_path_factory, tiny_model):
    """A store holding snapshot_v1 (loaded in this process, where torch is already paid for)."""
    root = tmp_path_factory.mktemp("startup")
    (root / "kb.json").write_text(json.dumps({"cat": ["pointed ears", "whiskers"], "dog": ["floppy ears"]}))
    loaded = run_kbuild("load", root / "kb.json", "--store", root / "store", "--model", tiny_model)
    assert loaded.code == 0, loaded.err
    return root / "store"


def test_kbuild_help_imports_no_torch():
    assert heavy_imports("kbuild", "--help") == []


@pytest.mark.parametrize("args", [("list",), ("show", "v1"), ("prompts", "list")], ids=["list", "show", "prompts-list"])
def test_kbuild_read_only_commands_import_no_torch(store_with_a_snapshot, args):
    assert heavy_imports("kbuild", *args, KBUILD_STORE=str(store_with_a_snapshot)) == []


@pytest.mark.xfail(strict=True, reason="kpl fast start lands after the kpl merges")
def test_kpl_help_imports_no_torch():
    assert heavy_imports("kpl", "--help") == []
