"""Bring your own embeddings: ``kbuild load kb.npz`` (vectors from another pipeline, no CLIP model)
and ``kpl eval --features`` in the same space, end to end on the real PH2 features in ../shared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO
from kbuild.clip.models import load_clip
from kpl import KPLParams, compute_metrics, run_baseline, run_kpl
from kpl.method.retrieval import split_by_class

sys.path.insert(0, str(REPO / "examples"))
from ph2_own_embeddings import SPACE, write_ph2_files  # noqa: E402  (the README's own-embeddings files)

ROWS = ("clip", "dclip", "cupl", "inmap", "transclip", "transclip_desc", "stata", "stata_desc", "kpl.text", "kpl.image", "kpl.image_ot")


@pytest.fixture()
def store(monkeypatch, tmp_path) -> Path:
    """A fresh store and the default CLIP model (ViT-B-32 / openai, not cached here): nothing may load it."""
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    for name in ("KPL_CLIP_MODEL", "KPL_CLIP_PRETRAINED", "KBUILD_CHROMA_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "store"


def ph2_files(shared_dir: Path, folder: Path, space: str = SPACE, names: bool = True) -> tuple[Path, Path, dict]:
    """(kb.npz, features.npz, the arrays) built from ph2_vitb16.npz and its sentences (examples/ph2_own_embeddings.py)."""
    return write_ph2_files(shared_dir, folder, features_space=space, names=names)


@pytest.mark.slow
def test_ph2_round_trip_matches_the_library(kbuild, kpl, store, shared_dir, tmp_path):
    kb, feats, data = ph2_files(shared_dir, tmp_path)
    loads_before = load_clip.cache_info().misses
    loaded = kbuild("load", kb, "--json")
    assert loaded.code == 0, loaded.err
    assert "no CLIP model loaded" in loaded.err
    manifest = json.loads(kbuild("show", "latest", "--json").out)
    clip = manifest.get("clip") or manifest.get("manifest", {}).get("clip")
    assert clip["model_id"] == SPACE and clip["imported"] is True

    result = kpl("eval", "--kb", "latest", "--features", feats, "--json")
    assert result.code == 0, result.err
    assert load_clip.cache_info().misses == loads_before  # no CLIP model was loaded anywhere
    table = json.loads(result.out)["results"]
    assert set(table) == set(ROWS)

    x, labels = data["image_features"], data["labels"]
    classes = split_by_class(data["description_embeddings"], data["description_class"])
    names = data["class_label_embeddings"]
    params = KPLParams()
    expected = {f"kpl.{s}": run_kpl(x, classes, params=params).stage(s).predictions
                for s in ("text", "image", "image_ot")}
    inmap = {key: getattr(params, key) for key in ("tau_t", "tau_i", "alpha", "lr", "iters", "ot_iters",
                                                   "gamma", "tol", "patience", "exact_iters")}
    for method in ("clip", "dclip", "cupl", "inmap"):
        expected[method] = run_baseline(method, x, class_embeddings=classes, name_embeddings=names,
                                        **(inmap if method == "inmap" else {})).predictions
    expected["transclip"] = run_baseline("transclip", x, name_embeddings=names).predictions
    expected["transclip_desc"] = run_baseline("transclip", x, class_embeddings=classes).predictions
    expected["stata"] = run_baseline("stata", x, name_embeddings=names).predictions
    expected["stata_desc"] = run_baseline("stata", x, class_embeddings=classes).predictions
    for row, predictions in expected.items():
        want = compute_metrics(labels, predictions, class_names=[str(c) for c in data["class_names"]])
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert table[row][key] == pytest.approx(getattr(want, key), abs=1e-12), (row, key)


def test_without_name_embeddings_the_class_name_rows_are_skipped(kbuild, kpl, store, shared_dir, tmp_path):
    kb, feats, _ = ph2_files(shared_dir, tmp_path, names=False)
    assert kbuild("load", kb).code == 0
    result = kpl("eval", "--kb", "latest", "--features", feats, "--json", "--iters", "50")
    assert result.code == 0, result.err
    assert "no name_embeddings" in result.err
    payload = json.loads(result.out)
    assert set(payload["skipped_methods"]) == {"clip", "inmap", "transclip", "stata"}
    assert {"kpl.image_ot", "dclip", "transclip_desc", "stata_desc"} <= set(payload["results"])


def test_features_in_another_space_name_both(kbuild, kpl, store, shared_dir, tmp_path):
    kb, feats, _ = ph2_files(shared_dir, tmp_path, space="ViT-L-14/openai")
    assert kbuild("load", kb).code == 0
    for command in (("eval",), ("sweep", "--k", "2")):
        result = kpl(*command, "--kb", "latest", "--features", feats)
        assert result.code == 1, result.err
        line = result.err.strip().splitlines()[-1]
        assert line.startswith("Error: ") and SPACE in line and "ViT-L-14/openai" in line


def _write_kb(path: Path, **override) -> Path:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    arrays = {"classes": np.asarray(["cat", "cat", "dog", "dog"]),
              "texts": np.asarray(["whiskers", "fur", "a tail", "a wet nose"]),
              "embeddings": vectors, "model_id": np.asarray("my-space")}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize("override, fragment", [
    ({"model_id": None}, "missing key(s) model_id"),
    ({"model_id": np.asarray(["a", "b"])}, "model_id must be one string naming the embedding space"),
    ({"embeddings": np.ones((4,), dtype=np.float32)}, "embeddings must be a non-empty 2-D float array"),
    ({"embeddings": np.ones((3, 8), dtype=np.float32)}, "embeddings has 3 rows but there are 4 texts"),
    ({"texts": np.asarray(["a", "b", "c"])}, "classes has 4 entries but texts has 3"),
    ({"embeddings": np.where(np.arange(32).reshape(4, 8) == 9, np.nan, 1.0).astype(np.float32)},
     "NaN/inf in 1 row(s), first row 1"),
    ({"embeddings": np.zeros((4, 8), dtype=np.float32)}, "all-zero row"),
    ({"texts": np.asarray(["a", " ", "c", "d"])}, "empty class or text, first row 1"),
])
def test_bad_embeddings_file_is_one_line(kbuild, store, tmp_path, override, fragment):
    result = kbuild("load", _write_kb(tmp_path / "kb.npz", **override))
    assert result.code == 1, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.err
    assert "kb.npz" in lines[0]
    assert kbuild("list", "--json").out.count("snapshot_v") == 0  # nothing was published


def test_non_unit_rows_are_normalised_and_said(kbuild, store, tmp_path):
    vectors = np.arange(1, 33, dtype=np.float32).reshape(4, 8)
    result = kbuild("load", _write_kb(tmp_path / "kb.npz", embeddings=vectors))
    assert result.code == 0, result.err
    assert "4 rows were not unit length and were normalised" in result.err

    from kbuild.store import SnapshotStore

    kb = SnapshotStore.open(str(store), None).read("latest")
    assert np.allclose(np.linalg.norm(kb.embeddings, axis=1), 1.0, atol=1e-6)
    stored = {d.text: v for d, v in zip(kb.descriptions, kb.embeddings)}
    assert np.allclose(stored["fur"], vectors[1] / np.linalg.norm(vectors[1]), atol=1e-6)


def test_prune_of_imported_snapshot_needs_a_model_only_for_name_prompts(kbuild, store, tmp_path):
    assert kbuild("load", _write_kb(tmp_path / "kb.npz")).code == 0
    loads_before = load_clip.cache_info().misses
    assert kbuild("prune", "latest", "--force").code == 0  # on the stored vectors: no model
    assert load_clip.cache_info().misses == loads_before
    result = kbuild("prune", "v1", "--cross-class", "best")  # compares with class-name prompts
    assert result.code == 2, result.err
    line = result.err.strip().splitlines()[-1]
    assert line.startswith("Error: ") and "--margin-reference centroid" in line and "--model" in line


def test_features_file_round_trip_keeps_space_and_name_embeddings(tmp_path):
    from kpl.images.features import FeatureSet, load_features_npz, save_features_npz

    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    names = x[:2] * 3  # off unit length: normalised on reading
    fs = FeatureSet(x, np.array([0, 1, 0, 1, 1]), ["a", "b"], "transformers:vinid/plip", name_embeddings=names)
    back = load_features_npz(save_features_npz(fs, tmp_path / "f.npz"))
    assert back.model_id == "transformers:vinid/plip"
    assert np.allclose(back.name_embeddings, x[:2], atol=1e-6)
    np.savez(tmp_path / "bad.npz", image_features=x, labels=fs.labels, class_names=np.asarray(["a", "b"]),
             name_embeddings=x[:3])
    from kpl.errors import KplError

    with pytest.raises(KplError, match=r"name_embeddings must be \(C, D\) = \(2, 4\)"):
        load_features_npz(tmp_path / "bad.npz")


def test_jsonl_with_embeddings_loads_like_the_npz(kbuild, store, tmp_path):
    rows = [{"class": "cat", "text": "whiskers", "embedding": [1.0, 0.0, 0.0], "model_id": "my-space"},
            {"class": "dog", "text": "a tail", "embedding": [0.0, 2.0, 0.0], "model_id": "my-space"}]
    path = tmp_path / "kb.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = kbuild("load", path)
    assert result.code == 0, result.err
    assert "no CLIP model loaded" in result.err and "1 rows were not unit length" in result.err
    manifest = json.loads(kbuild("show", "latest", "--json").out)["manifest"]
    assert manifest["clip"]["model_id"] == "my-space" and manifest["clip"]["imported"] is True

    # A JSONL of class/text records is still a curated file (it needs a model, so it is not loaded here).
    from kbuild.sources.embedded import is_embedded_file

    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"class": "cat", "text": "whiskers"}\n', encoding="utf-8")
    assert is_embedded_file(path) and not is_embedded_file(plain)


@pytest.mark.parametrize("lines, fragment", [
    (['{"class": "c", "text": "t", "embedding": [1, 0], "model_id": "a"}',
      '{"class": "c", "text": "u", "embedding": [1, 0], "model_id": "b"}'], "2 different model_id values"),
    (['{"class": "c", "text": "t", "embedding": [1, 0], "model_id": "a"}',
      '{"class": "c", "text": "u", "embedding": [1, 0, 0], "model_id": "a"}'], "line 2: embedding has 3 numbers"),
    (['{"class": "c", "text": "t", "embedding": [1, 0], "model_id": "a"}', '{"class": "c"}'],
     "line 2 needs class, text, embedding and model_id"),
    (['{"class": "c", "text": "t", "embedding": [1, 0], "model_id": "a"}', 'not json'], "line 2 is not JSON"),
    (['{"class": "c", "text": "t", "embedding": ["x", 0], "model_id": "a"}'], "embedding must be a list of numbers"),
])
def test_bad_jsonl_embeddings_are_one_line(kbuild, store, tmp_path, lines, fragment):
    path = tmp_path / "kb.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = kbuild("load", path)
    assert result.code == 1, (result.out, result.err)
    err = result.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and fragment in err[0] and "kb.jsonl" in err[0], result.err
