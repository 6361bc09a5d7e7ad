"""The built wheel works outside the repo: templates ship inside it, the console script runs.

An editable install reads the checkout, so it hides anything the wheel forgets. Here a copy of the
sources is built into a wheel (no network: --no-deps --no-build-isolation with this venv's
setuptools), installed non-editable into a fresh --target folder, and its ``kbuild`` script is run
from a folder outside the repo, with PYTHONPATH holding only that folder (the venv supplies the
dependencies). ``generate`` talks over real HTTP to the fake OpenAI-compatible server and writes a
snapshot with the tiny CLIP model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from llm_server import FakeLLMServer

from helpers import REPO, cli_env
from kbuild.sources.llm.prompts import load_prompt_file

# What a wheel is built from (the sdist holds the same; see MANIFEST.in).
SOURCES = ("kbuild", "kpl", "prompts", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
FAKE_KEY = "sk-test-wheel-0000"
pytestmark = pytest.mark.slow  # builds and installs a wheel, runs its console script in fresh interpreters


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A --target folder holding the wheel built from a copy of the sources (the checkout stays clean)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", root / "dist", src],
                   check=True, capture_output=True, timeout=300, cwd=root)
    wheels = list((root / "dist").glob("kpl_toolkit-*.whl"))
    assert len(wheels) == 1, wheels
    target = root / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", target, wheels[0]],
                   check=True, capture_output=True, timeout=300, cwd=root)
    return target


def run_installed(target: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the wheel's own ``kbuild`` script from ``cwd`` with only the install folder on PYTHONPATH."""
    environment = cli_env(PYTHONPATH=str(target), **env)
    for name in ("KBUILD_PROMPTS_DIR", "KBUILD_CHROMA_URL", "OPENAI_BASE_URL", "KBUILD_LLM_MODEL"):
        environment.pop(name, None)
    return subprocess.run([str(target / "bin" / "kbuild"), *args], capture_output=True, text=True,
                          env=environment, cwd=cwd, timeout=300)


def test_installed_kbuild_is_the_wheel_not_the_checkout(installed, tmp_path):
    where = subprocess.run([sys.executable, "-c", "import kbuild; print(kbuild.__file__)"], capture_output=True,
                           text=True, env=cli_env(PYTHONPATH=str(installed)), cwd=tmp_path, timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(installed), where


def test_installed_kbuild_lists_the_shipped_prompts(installed, tmp_path):
    listed = run_installed(installed, tmp_path, "prompts", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    names = {entry["name"] for entry in entries}
    assert names == {p.stem for p in (REPO / "prompts").glob("*.toml")}
    assert all(Path(entry["path"]).is_relative_to(installed) for entry in entries)


def test_installed_kbuild_generates_a_snapshot_over_http(installed, tmp_path, tiny_model):
    classes = tmp_path / "classes.txt"
    classes.write_text("melanoma\nnevus: melanocytic nevus\n", encoding="utf-8")
    store = tmp_path / "store"
    with FakeLLMServer(["melanoma", "melanocytic nevus"], per_reply=3, api_key=FAKE_KEY) as server:
        made = run_installed(installed, tmp_path, "generate", "--classes", str(classes), "--base-url", server.url,
                             "--per-class", "3", "--timeout", "5", "--store", str(store), "--model", tiny_model,
                             "--json", OPENAI_API_KEY=FAKE_KEY)
        assert made.returncode == 0, made.stderr
        assert server.count() == 2  # one real HTTP call per class
    shown = run_installed(installed, tmp_path, "show", "latest", "--store", str(store), "--json")
    assert shown.returncode == 0, shown.stderr
    manifest = json.loads(shown.stdout)["manifest"]
    assert manifest["operation"] == "generate" and manifest["counts"] == {"melanoma": 3, "nevus": 3}
    # The packaged template is the checkout's prompts/general.toml, byte for byte in meaning.
    shipped = load_prompt_file(REPO / "prompts" / "general.toml")
    assert manifest["parameters"]["prompt"] == "general" and manifest["parameters"]["prompt_hash"] == shipped.hash
