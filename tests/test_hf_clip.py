"""transformers CLIP models (``--model transformers:DIR``) and the registry of medical model names.

A tiny random ``CLIPModel`` saved with ``save_pretrained`` goes through our loader, ``kbuild load``,
``kbuild prune`` and ``kpl eval``; its embeddings are checked against a direct transformers call.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from hf_tiny import build_tiny_hf_clip_dir
from test_kpl_features import make_image_folder

KB = {"red": ["a red square", "crimson pixels", "warm colour"],
      "green": ["a green square", "leafy pixels", "cool colour", "grass"],
      "blue": ["a blue square", "sky pixels", "ocean colour"]}
COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return build_tiny_hf_clip_dir(tmp_path_factory.mktemp("tiny_hf_clip"))


def test_embeddings_equal_a_direct_transformers_call(hf_dir, tmp_path):
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from kbuild.clip.models import ModelSpec, load_clip, model_id

    ours = load_clip(f"transformers:{hf_dir}", None, "cpu")
    assert ours.model_id.startswith(f"transformers:{hf_dir.name}@sha256:")
    assert model_id(ModelSpec(f"transformers:{hf_dir}", "openai")) == ours.model_id  # --pretrained is moot
    texts = ["a photo of a red square, which has crimson pixels", "grass", "x " * 100]  # the last is truncated
    model, processor = CLIPModel.from_pretrained(hf_dir).eval(), CLIPProcessor.from_pretrained(hf_dir)
    with torch.inference_mode():
        tokens = processor(text=texts, padding=True, truncation=True, return_tensors="pt")
        direct = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        direct = getattr(direct, "pooler_output", direct)
        direct = (direct / direct.norm(dim=-1, keepdim=True)).numpy()
    assert np.allclose(ours.encode_texts(texts), direct, atol=1e-5)

    images = [Image.fromarray(np.full((40, 50, 3), c, dtype=np.uint8)) for c in COLORS.values()]
    batch = torch.stack([ours.preprocess(im) for im in images])
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        direct = model.get_image_features(pixel_values=pixels)
        direct = getattr(direct, "pooler_output", direct)
        direct = (direct / direct.norm(dim=-1, keepdim=True)).numpy()
    assert np.allclose(ours.encode_image_batch(batch), direct, atol=1e-5)
    assert ours.dim == 24 and ours.count_tokens("grass") == 3


@pytest.mark.slow
def test_load_prune_and_eval_with_a_transformers_model(hf_dir, kbuild, kpl, monkeypatch, tmp_path):
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("KPL_CLIP_MODEL", f"transformers:{hf_dir}")
    monkeypatch.delenv("KBUILD_CHROMA_URL", raising=False)
    (tmp_path / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    loaded = kbuild("load", tmp_path / "kb.json", "--json")
    assert loaded.code == 0, loaded.err
    manifest = json.loads(kbuild("show", "v1", "--json").out)["manifest"]
    assert manifest["clip"]["model_id"].startswith(f"transformers:{hf_dir.name}@sha256:")
    assert manifest["clip"]["model"] == f"transformers:{hf_dir.resolve()}"

    monkeypatch.delenv("KPL_CLIP_MODEL")  # prune must find the model from the snapshot's manifest alone
    pruned = kbuild("prune", "v1", "--json", "--force")  # --force: publish v2 even if nothing is removed
    assert pruned.code == 0, pruned.err
    assert json.loads(pruned.out)["reembedded"] is False  # same model: the parent's vectors are reused

    images = make_image_folder(tmp_path / "images", per_class=4, classes=COLORS, junk=False)
    args = ("eval", "--kb", "v2", "--data", images, "--model", f"transformers:{hf_dir}", "--iters", "50", "--json")
    first = kpl(*args)
    assert first.code == 0, first.err
    payload = json.loads(first.out)
    assert payload["model"]["image_features"] == manifest["clip"]["model_id"]
    assert payload["model"]["descriptions"].startswith("stored")
    assert {"clip", "inmap", "kpl.image_ot"} <= set(payload["results"])
    second = kpl(*args)
    assert second.code == 0 and json.loads(second.out)["features"]["cache"]["status"] == "hit"

    # Round trip: exported features name their space, and eval on them uses the stored vectors.
    exported = kpl("embed", "--data", images, "--model", f"transformers:{hf_dir}", "--export", tmp_path / "f.npz")
    assert exported.code == 0, exported.err
    assert str(np.load(tmp_path / "f.npz")["model_id"]) == manifest["clip"]["model_id"]
    again = kpl("eval", "--kb", "v2", "--features", tmp_path / "f.npz", "--iters", "50", "--json")
    assert again.code == 0, again.err
    again_results = json.loads(again.out)["results"]
    assert json.loads(again.out)["model"]["descriptions"].startswith("stored")
    for row in ("dclip", "kpl.image_ot", "clip"):
        assert again_results[row]["accuracy"] == payload["results"][row]["accuracy"]


def test_a_folder_without_config_is_one_line(kbuild, monkeypatch, tmp_path):
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    (tmp_path / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    (tmp_path / "empty").mkdir()
    result = kbuild("load", tmp_path / "kb.json", "--model", f"transformers:{tmp_path / 'empty'}")
    assert result.code == 2
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "no config.json" in line and "Traceback" not in result.err


def test_registry_names_resolve_and_are_listed(kpl):
    from kbuild.clip.models import ModelSpec, model_id
    from kbuild.clip.registry import MODELS

    assert {"biomedclip", "monet", "plip", "pubmedclip", "whylesionclip", "whyxrayclip", "quiltnet"} <= set(MODELS)
    assert model_id(ModelSpec("biomedclip", "openai")) == "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    assert model_id(ModelSpec("plip", None)) == "transformers:vinid/plip"
    listed = kpl("models", "--json")
    assert listed.code == 0
    rows = {row["name"]: row for row in json.loads(listed.out)}
    assert set(MODELS) <= set(rows) and all(row["source"] for row in rows.values())
    assert rows["monet"]["library"] == "transformers" and rows["quiltnet"]["library"] == "open_clip"
    table = kpl("models")
    assert "pubmedclip" in table.out and "arXiv:2405.14839" in table.out


@pytest.mark.parametrize("name, repo", [("monet", "chanwkim/monet"), ("biomedclip", "microsoft/BiomedCLIP")])
def test_an_uncached_name_offline_says_how_to_download(kbuild, monkeypatch, tmp_path, name, repo):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    (tmp_path / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    start = time.monotonic()
    result = kbuild("load", tmp_path / "kb.json", "--model", name)
    assert result.code == 1, result.err
    lines = result.err.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "not in the Hugging Face cache" in lines[-1]
    assert f"huggingface-cli download {repo}" in lines[-1] and name in lines[-1]
    assert time.monotonic() - start < 30  # a message, not a network timeout


def test_an_uncached_name_without_network_fails_fast_when_not_offline(kbuild, monkeypatch, tmp_path):
    from helpers import free_port

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    (tmp_path / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    start = time.monotonic()
    result = kbuild("load", tmp_path / "kb.json", "--model", "plip")
    assert result.code == 1, result.err
    line = result.err.strip().splitlines()[-1]
    assert "cannot be reached" in line and "huggingface-cli download vinid/plip" in line, line
    assert time.monotonic() - start < 30
