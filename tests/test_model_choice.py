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
