"""One reading of --model (prefix -> library) and one precedence: flag > environment > snapshot > default."""

from __future__ import annotations

import pytest

from kbuild import settings
from kbuild.clip.choice import choose_model, parse_model_name


@pytest.mark.parametrize("given, library, identifier", [
    ("local-dir:/models/clip", "open_clip_dir", "/models/clip"),
    ("hf-hub:org/repo", "open_clip_hub", "org/repo"),
    ("transformers:./my_clip", "transformers", "./my_clip"),
    ("ViT-B-32", "open_clip", "ViT-B-32"),
    ("monet", "transformers", "chanwkim/monet"),          # a registry name resolves first
    ("  hf-hub:org/repo ", "open_clip_hub", "org/repo"),
])
def test_parse_model_name(given, library, identifier):
    name = parse_model_name(given)
    assert (name.library, name.identifier) == (library, identifier)
    assert name.carries_weights == (library != "open_clip")


@pytest.fixture()
def clean_env(monkeypatch):
    monkeypatch.delenv(settings.ENV_CLIP_MODEL, raising=False)
    monkeypatch.delenv(settings.ENV_CLIP_PRETRAINED, raising=False)
    return monkeypatch


SNAPSHOT = {"model": "local-dir:/snap/clip", "pretrained": None}


def test_flag_beats_environment_snapshot_and_default(clean_env):
    clean_env.setenv(settings.ENV_CLIP_MODEL, "ViT-B-16")
    choice = choose_model("RN50", "openai", snapshot=SNAPSHOT)
    assert (choice.model, choice.pretrained, choice.source) == ("RN50", "openai", "flag")


def test_environment_beats_snapshot_and_default(clean_env):
    clean_env.setenv(settings.ENV_CLIP_MODEL, "ViT-B-16")
    clean_env.setenv(settings.ENV_CLIP_PRETRAINED, "laion2b_s34b_b88k")
    choice = choose_model(None, None, snapshot=SNAPSHOT)
    assert (choice.model, choice.pretrained, choice.source) == ("ViT-B-16", "laion2b_s34b_b88k", "environment")


def test_snapshot_beats_default_and_keeps_its_pretrained(clean_env):
    choice = choose_model(None, None, snapshot={"model": "ViT-B-16", "pretrained": "openai"})
    assert (choice.model, choice.pretrained, choice.source) == ("ViT-B-16", "openai", "snapshot")
    explicit = choose_model(None, "none", snapshot={"model": "ViT-B-16", "pretrained": "openai"})
    assert explicit.pretrained is None  # an explicit "none" means random weights


def test_default_when_nothing_names_a_model(clean_env):
    choice = choose_model(None, None, snapshot={"model_id": "imported-space"})
    assert (choice.model, choice.pretrained, choice.source) == (settings.DEFAULT_CLIP_MODEL,
                                                                 settings.DEFAULT_CLIP_PRETRAINED, "default")


# ---- the same precedence through the commands: kbuild load, kbuild prune, kpl eval -------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Two tiny CLIPs with different weights: their model ids tell which one a command used."""
    from helpers import build_tiny_clip_dir

    return {name: f"local-dir:{build_tiny_clip_dir(tmp_path_factory.mktemp(name), seed=seed)}"
            for name, seed in (("a", 1), ("b", 2))}


@pytest.fixture()
def store(clean_env, tmp_path):
    clean_env.setenv("KBUILD_STORE", str(tmp_path / "store"))
    clean_env.delenv("KBUILD_CHROMA_URL", raising=False)
    clean_env.setenv("HF_HUB_OFFLINE", "1")  # the default model is not cached here: it must fail at once
    kb = tmp_path / "kb.json"
    kb.write_text('{"cat": ["whiskers", "pointed ears", "a long tail"], "dog": ["floppy ears", "a wet nose", "a tail"]}')
    return kb


def _model_id(kbuild, ref: str) -> str:
    return next(s for s in kbuild("list", "--json").json() if s["name"] == ref)["manifest"]["clip"]["model_id"]


def _id_of(model: str) -> str:
    from kbuild.clip.models import ModelSpec, model_id

    return model_id(ModelSpec(model, None))


def test_kbuild_load_flag_then_environment_then_default(kbuild, store, models, clean_env):
    clean_env.setenv(settings.ENV_CLIP_MODEL, models["a"])
    assert kbuild("load", store, "--model", models["b"]).code == 0
    assert _model_id(kbuild, "snapshot_v1") == _id_of(models["b"])  # flag > environment
    assert kbuild("load", store, "--force").code == 0
    assert _model_id(kbuild, "snapshot_v2") == _id_of(models["a"])  # environment > default
    clean_env.delenv(settings.ENV_CLIP_MODEL)
    default = kbuild("load", store, "--force")
    assert default.code == 1 and settings.DEFAULT_CLIP_MODEL in default.err  # the default, not cached offline


def test_kbuild_prune_flag_then_environment_then_snapshot(kbuild, store, models, clean_env):
    assert kbuild("load", store, "--model", models["a"]).code == 0
    assert kbuild("prune", "v1", "--force").code == 0  # nothing named: the snapshot's own model
    assert _model_id(kbuild, "snapshot_v2") == _id_of(models["a"])
    clean_env.setenv(settings.ENV_CLIP_MODEL, models["b"])
    assert kbuild("prune", "v1", "--force").code == 0
    assert _model_id(kbuild, "snapshot_v3") == _id_of(models["b"])  # environment > snapshot
    assert kbuild("prune", "v1", "--force", "--model", models["a"]).code == 0
    assert _model_id(kbuild, "snapshot_v4") == _id_of(models["a"])  # flag > environment


def test_kpl_eval_flag_then_environment_then_snapshot_then_default(kbuild, kpl, store, models, clean_env, tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 90 if cls == "cat" else 10, 50)).save(tmp_path / "images" / cls / f"{i}.png")
    data = str(tmp_path / "images")
    assert kbuild("load", store, "--model", models["a"]).code == 0

    def image_model(*flags: str) -> str:
        result = kpl("eval", "--kb", "v1", "--data", data, "--methods", "dclip", "--json", "--no-cache", *flags)
        assert result.code == 0, result.err
        return result.json()["model"]["image_features"]

    assert image_model() == _id_of(models["a"])  # snapshot > default
    clean_env.setenv(settings.ENV_CLIP_MODEL, models["b"])
    assert image_model() == _id_of(models["b"])  # environment > snapshot
    assert image_model("--model", models["a"]) == _id_of(models["a"])  # flag > environment
    clean_env.delenv(settings.ENV_CLIP_MODEL)
    np_kb = tmp_path / "own.npz"
    import numpy as np
    vectors = np.eye(3, 8, dtype=np.float32)
    np.savez(np_kb, classes=np.asarray(["cat", "cat", "dog"]), texts=np.asarray(["a", "b", "c"]),
             embeddings=vectors, model_id=np.asarray("someone-elses-space"))
    assert kbuild("load", np_kb).code == 0  # an imported snapshot names no model: the default applies
    default = kpl("eval", "--kb", "latest", "--data", data, "--methods", "dclip", "--no-cache")
    assert default.code == 1 and settings.DEFAULT_CLIP_MODEL in default.err
