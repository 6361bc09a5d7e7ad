"""The default CLIP fits a CPU laptop; a model that needs a download fails at once, in one line,
when the hub cannot be reached; ``kbuild models`` / ``kpl models`` say which models are cached."""

from __future__ import annotations

import json
import time

import pytest

from helpers import CliRunner, free_port
from kbuild import settings
from kbuild.clip import registry

KB = {"red": ["a red square", "crimson pixels"], "blue": ["a blue square", "sky pixels"]}


@pytest.fixture()
def empty_hub_cache(monkeypatch, tmp_path):
    """A fresh, empty Hugging Face cache and a store, with no CLIP model chosen by the environment."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    for name in ("KPL_CLIP_MODEL", "KPL_CLIP_PRETRAINED", "KBUILD_CHROMA_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    return cache


def fake_cached(cache, repo: str, filename: str = "open_clip_model.safetensors") -> None:
    """Put a file of ``repo`` into the hub cache layout (refs/main -> snapshots/REV/FILE)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (folder / "snapshots" / ("0" * 40) / filename).write_bytes(b"not real weights")


def test_the_default_is_a_laptop_model():
    assert (settings.DEFAULT_CLIP_MODEL, settings.DEFAULT_CLIP_PRETRAINED) == ("ViT-B-32", "openai")
    assert "ViT-B-32/openai" in registry.GENERAL and "ViT-L-14-336/openai" in registry.GENERAL


def test_general_rows_name_the_repos_open_clip_downloads_from():
    for key, entry in registry.GENERAL.items():
        name, tag = key.split("/")
        repo, files = registry.open_clip_weights(name, tag)
        assert repo == entry["repo"] and set(files) <= set(registry._OPEN_CLIP_FILES)


def _one_error_line(result, started: float) -> str:
    elapsed = time.monotonic() - started
    assert result.code == 1, result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err  # no retry log, no traceback
    assert elapsed < 5, f"{elapsed:.1f} s"
    return lines[0]


def test_the_default_model_offline_fails_at_once_naming_the_cache(kbuild, empty_hub_cache):
    started = time.monotonic()
    line = _one_error_line(kbuild("load", empty_hub_cache.parents[1] / "kb.json"), started)
    assert line.startswith("Error: ") and "ViT-B-32 / openai" in line and "HF_HUB_OFFLINE" in line
    assert str(empty_hub_cache) in line and "local-dir:" in line and "--pretrained FILE" in line
    assert "huggingface-cli download timm/vit_base_patch32_clip_224.openai" in line


def test_any_pretrained_tag_without_network_fails_at_once(kbuild, empty_hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    result = kbuild("load", empty_hub_cache.parents[1] / "kb.json", "--model", "ViT-L-14-336")
    line = _one_error_line(result, started)
    assert "cannot be reached" in line and "ViT-L-14-336 / openai" in line and str(empty_hub_cache) in line


def test_models_lists_what_is_cached(kbuild, empty_hub_cache):
    from kpl.cli import app

    fake_cached(empty_hub_cache, "timm/vit_base_patch32_clip_224.openai")
    listed = {row["name"]: row for row in json.loads(kbuild("models", "--json").out)}
    assert listed["ViT-B-32"]["cached"] is True and listed["ViT-L-14-336"]["cached"] is False
    assert listed["ViT-B-32"]["model"] == "ViT-B-32 --pretrained openai" and "biomedclip" in listed
    table = kbuild("models")
    assert table.code == 0 and "ViT-L-14-336" in table.out and "default: ViT-B-32 / openai" in table.err
    kpl_rows = {row["name"]: row for row in json.loads(CliRunner(app, "kpl", kbuild.capsys)("models", "--json").out)}
    assert kpl_rows["ViT-B-32"]["cached"] is True and kpl_rows["ViT-B-16"]["cached"] is False
