"""The CLIP wrapper on a tiny real open_clip model, loaded through every path a user has:
a ``local-dir:`` folder, and a registered model name with a ``.pt`` or ``.safetensors`` checkpoint.
Also: checkpoints cannot run code, and the text-embedding cache never encodes a text twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY_CLIP_CONFIG, run_kbuild
from kbuild.clip.models import ClipModel, ModelSpec, model_id
from kbuild.clip.text import TextEmbedder
from kbuild.errors import KbuildError, UsageError

TINY_NAME = "kbuild-test-tiny"
TEXTS = ["a photo of a melanoma, which has an irregular border", "a photo of a nevus, which has a round shape",
         "crème fraîche on top"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """The tiny config registered under a model name, the way a user adds a custom architecture."""
    import open_clip

    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder / f"{TINY_NAME}.json")
    assert TINY_NAME in open_clip.list_models()
    return TINY_NAME


@pytest.fixture(scope="module")
def tiny_state(tiny_clip_dir):
    from safetensors.torch import load_file

    return load_file(str(tiny_clip_dir / "open_clip_model.safetensors"))


@pytest.fixture(scope="module")
def from_dir(tiny_model) -> ClipModel:
    return ClipModel(ModelSpec(tiny_model, None))


def checkpoint(tmp_path, state, suffix: str):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def test_local_dir_model_encodes_unit_rows(from_dir):
    vectors = from_dir.encode_texts(TEXTS)
    assert vectors.shape == (3, TINY_CLIP_CONFIG["embed_dim"]) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert from_dir.dim == 64 and from_dir.model_id.startswith("local-dir:")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_model_name_plus_checkpoint_file_loads_the_same_weights(registered, tiny_state, from_dir, tmp_path, suffix):
    path = checkpoint(tmp_path, tiny_state, suffix)
    clip = ClipModel(ModelSpec(registered, str(path)))
    # Same weights as the local-dir folder -> the same vectors (random init would differ).
    assert np.allclose(clip.encode_texts(TEXTS), from_dir.encode_texts(TEXTS), atol=1e-6)
    assert Path(clip.describe()["pretrained"]).name == path.name  # provenance names the checkpoint


def test_pt_checkpoint_wrapped_in_a_state_dict_key_loads(registered, tiny_state, from_dir, tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": tiny_state, "epoch": 3}, path)
    clip = ClipModel(ModelSpec(registered, str(path)))
    assert np.allclose(clip.encode_texts(TEXTS), from_dir.encode_texts(TEXTS), atol=1e-6)


def test_model_id_is_stable_and_follows_the_weights(registered, tiny_state, tmp_path):
    a = checkpoint(tmp_path, tiny_state, ".safetensors")
    copy = tmp_path / "copy"
    copy.mkdir()
    b = checkpoint(copy, tiny_state, ".safetensors")
    other = {k: v + 0.01 for k, v in tiny_state.items()}
    c = checkpoint(tmp_path / "copy", other, ".pt")
    ids = [model_id(ModelSpec(registered, str(p))) for p in (a, a, b, c)]
    assert ids[0] == ids[1] == ids[2]  # same bytes under another path: same model
    assert ids[3] != ids[0]
    assert ids[0].startswith(f"{registered}@sha256:")


def test_local_dir_model_id_changes_when_the_weights_change(tmp_path, tiny_model):
    from helpers import build_tiny_clip_dir

    other = build_tiny_clip_dir(tmp_path / "tiny_seed1", seed=1)
    assert model_id(ModelSpec(tiny_model, None)) == model_id(ModelSpec(tiny_model, None))
    assert model_id(ModelSpec(f"local-dir:{other}", None)) != model_id(ModelSpec(tiny_model, None))


class WritesMarker:
    """Pickles to a call that would write a file when unpickled: what a hostile checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def test_a_checkpoint_that_would_run_code_is_refused(registered, tiny_state, tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "hostile.pt"
    torch.save({"state_dict": tiny_state, "payload": WritesMarker(marker)}, path)
    with pytest.raises(KbuildError, match="Could not load CLIP model"):
        ClipModel(ModelSpec(registered, str(path)))
    assert not marker.exists()


def test_the_cli_refuses_a_hostile_checkpoint_with_one_line(registered, tiny_state, tmp_path, kb_files):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "hostile.pt"
    torch.save(WritesMarker(marker), path)
    result = run_kbuild("load", kb_files / "LaBo__HAM10000_selected_concepts.json", "--model", registered,
                        "--pretrained", path, "--store", tmp_path / "store")
    assert result.code == 1 and not marker.exists()
    assert result.err.startswith("Error: Could not load CLIP model") and len(result.err.strip().splitlines()) == 1


def test_local_dir_without_a_config_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="open_clip_config.json"):
        ClipModel(ModelSpec(f"local-dir:{tmp_path}", None))


# ---- the text-embedding cache ---------------------------------------------------------------------
class CountingClip:
    """The real model, counting how many texts it is asked to encode."""

    def __init__(self, clip):
        self.clip, self.encoded = clip, 0
        self.model_id, self.dim = clip.model_id, clip.dim

    def encode_texts(self, texts):
        self.encoded += len(texts)
        return self.clip.encode_texts(texts)


def test_second_embed_of_the_same_texts_encodes_nothing(from_dir, tmp_path):
    clip = CountingClip(from_dir)
    embedder = TextEmbedder(clip, tmp_path / "cache.sqlite")
    first = embedder.embed_texts(TEXTS + TEXTS[:1])
    assert clip.encoded == 3 and embedder.cache.misses == 3
    again = embedder.embed_texts(TEXTS)
    assert clip.encoded == 3 and embedder.cache.hits == 1 + 3
    assert again.tobytes() == first[:3].tobytes()


def test_the_cache_persists_across_embedders_on_the_same_path(from_dir, tmp_path):
    path = tmp_path / "cache.sqlite"
    first = TextEmbedder(CountingClip(from_dir), path).embed_texts(TEXTS)
    clip = CountingClip(from_dir)
    fresh = TextEmbedder(clip, path)
    second = fresh.embed_texts(TEXTS)
    assert clip.encoded == 0 and fresh.cache.hits == 3
    assert second.tobytes() == first.tobytes()


def test_the_cache_key_includes_model_and_template(from_dir, tmp_path):
    path = tmp_path / "cache.sqlite"
    TextEmbedder(CountingClip(from_dir), path).embed_texts(TEXTS)
    other_template = CountingClip(from_dir)
    TextEmbedder(other_template, path).embed_texts(TEXTS, template_key="a {} of {}")
    other_model = CountingClip(from_dir)
    other_model.model_id = "another-model"
    TextEmbedder(other_model, path).embed_texts(TEXTS)
    assert other_template.encoded == 3 and other_model.encoded == 3
