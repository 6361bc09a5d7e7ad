"""``kpl`` end to end: a knowledge base loaded with ``kbuild load``, images encoded by the tiny CLIP,
then eval / sweep / compare / embed through the real CLI and its error boundary."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_kpl_features import make_image_folder

from helpers import cli_env, run_subprocess, shared_data_missing

FAST = ("--iters", "300")  # the proxy loops stop early on real data; random features need a cap
KB = {
    "bird": ["feathers", "a pointed beak", "a <b>bright</b> & colourful plume"],
    "cat": ["whiskers", "pointy ears", "a long tail", "soft fur"],
    "dog": ["floppy ears", "a wagging tail", "a wet nose"],
    "fish": ["fins", "scales"],
}


@pytest.fixture()
def setup(clip_env, kbuild, tmp_path) -> Path:
    """An image folder (3 classes x 6, one text file, one corrupt jpg) and snapshot_v1 from a DCLIP file."""
    (tmp_path / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    assert kbuild("load", tmp_path / "kb.json").code == 0
    return make_image_folder(tmp_path / "images")


def one_error_line(result, code: int, *fragments: str) -> None:
    assert result.code == code, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.err, result.err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_eval_outputs_are_self_describing_and_cached(kpl, setup, tmp_path):
    out = tmp_path / "out"
    first = kpl("eval", "--kb", "v1", "--data", setup, "--out", out, *FAST)
    assert first.code == 0, first.err
    for method in ("clip", "dclip", "cupl", "inmap", "kpl.text", "kpl.image", "kpl.image_ot"):
        assert method in first.out
    assert "19 encoded" in first.err and "1 non image" in first.err and "1 corrupt" in first.err
    assert "fish" in first.err  # the knowledge-base class the dataset lacks is reported
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["snapshot"]["name"] == "snapshot_v1" and metrics["snapshot"]["content_hash"].startswith("sha256:")
    assert metrics["model"]["image_features"].startswith("local-dir:")
    assert metrics["params"]["k"] == 8 and metrics["params"]["iters"] == 300 and metrics["params"]["ot"] == "greenkhorn"
    assert metrics["dataset"]["skipped"] == {"non_image": 1} and metrics["features"]["corrupt"] == 1
    assert metrics["classes"]["names"] == ["bird", "cat", "dog"] and metrics["classes"]["ignored_kb_classes"] == ["fish"]
    final = metrics["results"]["kpl.image_ot"]
    assert set(final["per_class_recall"]) == {"bird", "cat", "dog"}
    assert np.array(final["confusion_matrix"]).sum() == 18
    assert {"accuracy", "balanced_accuracy", "macro_f1"} <= set(final)
    assert set(metrics["selected_descriptions"]["cat"]) == set(KB["cat"])
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 18 and rows[0]["label"] == "bird" and rows[0]["kpl.image_ot"] in {"bird", "cat", "dog"}
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "<table>" in page and "a &lt;b&gt;bright&lt;/b&gt; &amp; colourful plume" in page and "<b>bright" not in page

    second = kpl("eval", "--kb", "v1", "--data", setup, "--json", *FAST)
    assert second.code == 0, second.err
    payload = second.json()  # stdout is exactly the JSON
    assert payload["features"]["cache"]["status"] == "hit" and payload["features"]["encoded"] == 0
    assert "(hit, 0 encoded)" in second.err


def test_sweep_table_and_plot(kpl, setup, tmp_path):
    result = kpl("sweep", "--kb", "v1", "--data", setup, "--k", "1,2,4", "--tau-t", "0.01,0.05",
                 "--out", tmp_path / "sweep", *FAST)
    assert result.code == 0, result.err
    assert "image_ot" in result.out and "tau_t" in result.out
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert sorted((r["k"], r["tau_t"]) for r in rows) == [(k, t) for k in (1, 2, 4) for t in (0.01, 0.05)]
    assert (tmp_path / "sweep" / "accuracy_vs_k.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "sweep" / "sweep.csv").read_text().startswith("k,tau_t,")


def test_compare_side_by_side_with_diff(kpl, kbuild, setup, tmp_path):
    changed = {**KB, "cat": KB["cat"][:2] + ["striped fur"]}
    (tmp_path / "kb2.json").write_text(json.dumps(changed), encoding="utf-8")
    assert kbuild("load", tmp_path / "kb2.json").code == 0
    table = kpl("compare", "--kb", "v1", "--kb", "v2", "--data", setup, "--methods", "cupl,kpl", *FAST)
    assert table.code == 0, table.err
    assert "delta bal.acc" in table.out and "snapshot_v1" in table.out and "snapshot_v2" in table.out
    assert "snapshot_v1 -> snapshot_v2: classes: 0 added, 0 removed, 1 modified" in table.out
    result = kpl("compare", "--kb", "v1", "--kb", "v2", "--data", setup, "--methods", "cupl", "--json",
                 "--out", tmp_path / "cmp")
    payload = result.json()
    assert [s["snapshot"]["name"] for s in payload["snapshots"]] == ["snapshot_v1", "snapshot_v2"]
    assert payload["diffs"][0]["counts"]["descriptions_added"] == 1
    assert (tmp_path / "cmp" / "compare.json").is_file()
    one_error_line(kpl("compare", "--kb", "v1", "--data", setup), 2, "at least two snapshots")


def test_approximate_graph_is_chosen_reported_and_built_once_per_compare(kpl, kbuild, setup, tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    import kpl.peers.transclip as transclip_module

    built = []
    real = transclip_module.graph_for
    monkeypatch.setattr(transclip_module, "graph_for", lambda x, settings: built.append(settings) or real(x, settings))
    out = tmp_path / "out"
    result = kpl("eval", "--kb", "v1", "--data", setup, "--methods", "transclip", "--knn", "faiss",
                 "--knn-recall", "0.9", "--out", out)
    assert result.code == 0, result.err
    assert "kNN graph: faiss, 1 of 1 lists probed, recall@3 1.000" in result.err
    metrics = json.loads((out / "metrics.json").read_text())
    for row in ("transclip", "transclip_desc"):
        graph = metrics["results"][row]["params"]["graph"]
        assert graph["method"] == "faiss" and graph["target_recall"] == 0.9 and graph["target_met"]
        assert metrics["results"][row]["params"]["knn"] == "faiss"
    assert any(note.startswith("kNN graph: faiss") for note in metrics["notes"])
    assert len(built) == 1  # one graph for both TransCLIP rows

    (tmp_path / "kb2.json").write_text(json.dumps({**KB, "cat": KB["cat"][:2]}), encoding="utf-8")
    assert kbuild("load", tmp_path / "kb2.json").code == 0
    built.clear()
    both = kpl("compare", "--kb", "v1", "--kb", "v2", "--data", setup, "--methods", "transclip", "--knn", "faiss",
               "--json")
    assert both.code == 0, both.err
    assert len(built) == 1  # the images are the same: one graph serves every snapshot
    assert kpl("eval", "--kb", "v1", "--data", setup, "--methods", "transclip", "--json").json()[
        "results"]["transclip"]["params"]["graph"]["method"] == "exact"  # auto stays exact on few images


def test_embed_export_then_eval_features(kpl, setup, tmp_path):
    npz = tmp_path / "feats.npz"
    embedded = kpl("embed", "--data", setup, "--export", npz)
    assert embedded.code == 0 and "18 images x 64" in embedded.out and "1 corrupt" in embedded.out
    again = kpl("embed", "--data", setup, "--json")
    assert again.json()["cache"]["status"] == "hit" and again.json()["encoded"] == 0
    result = kpl("eval", "--kb", "v1", "--features", npz, "--json", *FAST)
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["features"]["kind"] == "features" and payload["model"]["descriptions"].startswith("stored")
    assert "clip" in payload["results"] and "inmap" in payload["results"]


def test_features_off_unit_length_are_normalised_and_predict_the_same(kpl, setup, tmp_path):
    """Issue 20: a features file with rows off unit length is normalised (kbuild.inputs.unit_rows), the run
    says how many rows, and the predictions are those of the same features saved with unit rows."""
    npz = tmp_path / "feats.npz"
    assert kpl("embed", "--data", setup, "--export", npz).code == 0
    arrays = dict(np.load(npz))
    scales = np.ones((len(arrays["image_features"]), 1), dtype=np.float32)
    scales[::3] = 5.0
    np.savez(tmp_path / "scaled.npz", **{**arrays, "image_features": arrays["image_features"] * scales})
    predictions = {}
    for name in ("feats", "scaled"):
        result = kpl("eval", "--kb", "v1", "--features", tmp_path / f"{name}.npz", "--out", tmp_path / name, *FAST)
        assert result.code == 0, result.err
        noted = "6 image_features row(s) were not unit length and were normalised" in result.err
        assert noted == (name == "scaled"), result.err
        with open(tmp_path / name / "predictions.csv", newline="") as handle:
            predictions[name] = list(csv.DictReader(handle))
    scores = [key for key in predictions["feats"][0] if key.startswith("score:")]
    assert len(scores) > 20 and len(predictions["feats"]) == len(predictions["scaled"]) == 18
    for unit, scaled in zip(predictions["feats"], predictions["scaled"]):
        assert {k: v for k, v in unit.items() if k not in scores} == {k: v for k, v in scaled.items() if k not in scores}
        # A normalised row differs from the exported unit row by float32 rounding alone (scores print 6 digits).
        np.testing.assert_allclose([float(scaled[k]) for k in scores], [float(unit[k]) for k in scores],
                                   rtol=1e-5, atol=1e-5)


def test_features_from_another_model(kpl, kbuild, setup, tmp_path):
    """Snapshot embedded by model B, images encoded by model A: descriptions are re-embedded with A."""
    from helpers import build_tiny_clip_dir

    other = f"local-dir:{build_tiny_clip_dir(tmp_path / 'other_clip', seed=1)}"
    assert kbuild("load", tmp_path / "kb.json", "--model", other, "--name", "by_b").code == 0
    on_images = kpl("eval", "--kb", "by_b", "--data", setup, "--methods", "cupl", "--json")
    assert on_images.code == 0, on_images.err
    assert on_images.json()["model"]["descriptions"].startswith("re-embedded (local-dir:tiny_clip")
    assert "by_b was embedded with local-dir:other_clip" in on_images.err
    npz = tmp_path / "a.npz"
    assert kpl("embed", "--data", setup, "--export", npz).code == 0  # carries model A's id
    one_error_line(kpl("eval", "--kb", "by_b", "--features", npz, "--model", other, "--methods", "cupl"), 1,
                   "by_b was embedded with local-dir:other_clip", "pass --model/--pretrained for local-dir:tiny_clip")
    fixed = kpl("eval", "--kb", "by_b", "--features", npz, "--methods", "cupl,clip", "--json")  # env: model A
    assert fixed.code == 0, fixed.err
    assert fixed.json()["model"]["descriptions"].startswith("re-embedded") and "clip" in fixed.json()["results"]


def test_other_template_re_embeds(kpl, setup):
    result = kpl("eval", "--kb", "v1", "--data", setup, "--template", "a photo of a {}, with {}",
                 "--methods", "dclip", "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["model"]["descriptions"].startswith("re-embedded")
    assert payload["model"]["template"] == "a photo of a {}, with {}"
    assert "re-embedded its descriptions" in result.err


def test_class_map(kpl, setup, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(setup, renamed)
    (renamed / "cat").rename(renamed / "kitty")
    one_error_line(kpl("eval", "--kb", "v1", "--data", renamed, "--methods", "cupl"), 1,
                   "Dataset classes without descriptions in snapshot_v1: kitty", "Available classes: bird, cat, dog, fish")
    mapping = tmp_path / "map.csv"
    mapping.write_text("folder,class\nkitty,cat\n", encoding="utf-8")
    result = kpl("eval", "--kb", "v1", "--data", renamed, "--class-map", mapping, "--methods", "cupl", "--json")
    assert result.code == 0, result.err
    assert result.json()["classes"]["kb_classes"]["kitty"] == "cat"


def test_user_errors_are_one_line(kpl, setup, tmp_path):
    data = ("--data", str(setup))
    one_error_line(kpl("eval", "--kb", "v7", *data), 1, "Unknown snapshot 'v7'", "snapshot_v1")
    one_error_line(kpl("eval", "--kb", "v1", "--data", tmp_path / "nowhere"), 1, "does not exist")
    (tmp_path / "empty").mkdir()
    one_error_line(kpl("eval", "--kb", "v1", "--data", tmp_path / "empty"), 1, "has no images")
    one_error_line(kpl("eval", "--kb", "v1", *data, "--k", "0"), 2, "k must be an integer >= 1")
    one_error_line(kpl("sweep", "--kb", "v1", *data, "--k", "4,0"), 2, "k must be an integer >= 1")
    one_error_line(kpl("sweep", "--kb", "v1", *data, "--k", "4,x"), 2, "'x' is not a valid int")
    one_error_line(kpl("eval", "--kb", "v1", *data, "--ot", "emd"), 2, "Unknown OT method 'emd'", "greenkhorn")
    one_error_line(kpl("eval", "--kb", "v1", *data, "--methods", "kpl,zeroshot"), 2, "Unknown method(s) zeroshot")
    one_error_line(kpl("eval", "--kb", "v1"), 2, "exactly one of --data")
    rows = np.eye(3, 64, dtype=np.float32)
    for name, arrays, fragment in [
        ("shape.npz", {"image_features": rows[0]}, "non-empty 2-D float array"),
        ("nan.npz", {"image_features": np.where(rows == 1, np.nan, rows)}, "NaN/inf"),
        ("zero.npz", {"image_features": rows * [[1], [0], [1]]}, "image_features has 1 all-zero row(s), first row 1"),
        ("dim.npz", {"image_features": np.eye(3, 32, dtype=np.float32)}, "dim 32"),
    ]:
        np.savez(tmp_path / name, labels=np.array([0, 1, 2]), class_names=np.array(["bird", "cat", "dog"]), **arrays)
        one_error_line(kpl("eval", "--kb", "v1", "--features", tmp_path / name), 1, fragment)


@pytest.mark.parametrize("command", ["eval", "compare", "sweep", "embed"])
def test_the_four_image_commands_check_one_request_the_same_way(kpl, clip_env, tmp_path, command):
    """eval, compare, sweep and embed build one request (kpl.evaluate.Inputs) in one helper: the same
    checks, the same words, before any snapshot is read (this store has none) or image listed."""
    kbs = ["--kb", "v1"] + (["--kb", "v2"] if command == "compare" else [])
    head = [command, "--data", tmp_path / "nowhere"] + ([] if command == "embed" else kbs)
    one_error_line(kpl(*head, "--batch-size", "0"), 2, "--batch-size must be >= 1 (got 0)")
    one_error_line(kpl(*head, "--workers", "-1"), 2, "--workers must be >= 0 (got -1)")
    one_error_line(kpl(*head, "--precision", "fp8"), 2, "--precision must be auto, fp32, fp16 or bf16")
    one_error_line(kpl(*head, "--engine", "spark"), 2, "--engine 'spark' is not an engine")


def test_the_request_is_typed_frozen_and_by_keyword(tmp_path):
    from dataclasses import FrozenInstanceError

    from kpl.cli import _request
    from kpl.evaluate import Inputs

    options = {"data": tmp_path, "split": "val", "model": "m", "pretrained": None, "device": None, "batch_size": 8,
               "workers": None, "precision": "auto", "cache_dir": None, "no_cache": True, "store": None,
               "engine": "local", "ray_address": None, "ray_actors": None, "shard_size": 100}  # embed's options
    request = _request(options)
    assert request == Inputs(data=tmp_path, split="val", model="m", batch_size=8, use_cache=False, precision="auto",
                             engine=request.engine)
    assert request.features is None and request.class_map is None and request.engine.name == "local"
    with pytest.raises(FrozenInstanceError):
        request.batch_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Inputs(tmp_path)  # type: ignore[misc]


@pytest.mark.slow
def test_console_script_error_boundary(setup):
    env = cli_env(KPL_CLIP_MODEL=os.environ["KPL_CLIP_MODEL"], KBUILD_STORE=os.environ["KBUILD_STORE"])
    result = run_subprocess("kpl", "eval", "--kb", "nope", "--data", setup, env=env)
    one_error_line(result, 1, "Unknown snapshot 'nope'")


# ------------------------------------------------------------------ real CLIP features (../shared)
def publish_ph2(store_home: Path, features_dir: Path) -> dict:
    """Publish the PH2 sentences with their exact ViT-B/16 embeddings as a snapshot (no model needed)."""
    from kbuild.descriptions import Description
    from kbuild.store import SnapshotStore
    from kbuild.store.manifest import SnapshotDraft

    data = np.load(features_dir / "ph2_vitb16.npz")
    sentences = json.loads((features_dir / "ph2_vitb16_kb.json").read_text(encoding="utf-8"))
    names = [str(n) for n in data["class_names"]]
    assert data["description_class"].tolist() == sorted(data["description_class"].tolist())  # grouped by class
    descriptions = [Description(c, text, source="curated:ph2_vitb16_kb.json") for c in names for text in sentences[c]]
    clip = {"model": "ViT-B-16", "pretrained": "openai", "model_id": "ViT-B-16/openai", "template": "{}"}
    SnapshotStore(store_home).publish(SnapshotDraft(descriptions, data["description_embeddings"], "load",
                                                    {"files": ["ph2_vitb16_kb.json"]}, clip))
    return {key: data[key] for key in data.files}


@pytest.mark.slow
def test_ph2_real_features_reproduce_paper_accuracies(kpl, clip_env, shared_dir):
    features_dir = shared_dir / "datasets" / "features"
    if not (features_dir / "ph2_vitb16.npz").is_file():
        shared_data_missing("../shared/datasets/features/ph2_vitb16.npz")
    golden = publish_ph2(clip_env, features_dir)
    expected = json.loads((features_dir / "ph2_vitb16.json").read_text())["results"]["k=8"]
    npz = features_dir / "ph2_vitb16.npz"

    exact = kpl("eval", "--kb", "v1", "--features", npz, "--methods", "kpl", "--exact-iters", "--json")
    assert exact.code == 0, exact.err
    results = exact.json()["results"]
    x, labels = golden["image_features"], golden["labels"]
    for stage in ("text", "image", "image_ot"):
        logits = x @ golden[f"k8_W_{stage}"]
        ties = np.abs(logits[:, 0] - logits[:, 1]) <= 1e-5
        if not ties.any():
            assert round(100 * results[f"kpl.{stage}"]["accuracy"], 2) == expected["accuracy"][stage]
            assert round(100 * results[f"kpl.{stage}"]["balanced_accuracy"], 2) == expected["balanced_accuracy"][stage]
            continue
        # A float tie goes either way with the CPU's rounding (AVX2 and AVX-512 give image_ot 77.0 and
        # 78.5 on identical proxies): the paper's figure is reproduced where it is decided, and every
        # difference from it is a tie.
        golden_correct = golden[f"k8_pred_{stage}"] == labels
        assert round(100 * golden_correct.mean(), 2) == expected["accuracy"][stage]
        ours = 100 * results[f"kpl.{stage}"]["accuracy"]
        assert abs(ours - expected["accuracy"][stage]) <= 100 * ties.mean()

    # Default run: early stop, all methods. The ViT-B-16 text model is not available offline, so
    # clip and inmap are skipped with a note; KPL agrees with the paper code on every image whose
    # top-2 margin under the paper's proxies exceeds 1e-5 (smaller ones are float ties).
    out = clip_env.parent / "ph2_out"
    default = kpl("eval", "--kb", "v1", "--features", npz, "--json", "--out", out)
    payload = default.json()
    assert set(payload["skipped_methods"]) == {"clip", "inmap", "transclip", "stata"}
    assert "skipping clip, inmap, transclip and stata (class names)" in default.err
    assert payload["model"]["descriptions"] == "stored (ViT-B-16/openai)"
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    index = {name: i for i, name in enumerate(payload["classes"]["names"])}
    for stage in ("text", "image", "image_ot"):
        logits = x @ golden[f"k8_W_{stage}"]
        decided = np.abs(logits[:, 0] - logits[:, 1]) > 1e-5
        ours = np.array([index[row[f"kpl.{stage}"]] for row in rows])
        assert decided.mean() > 0.4  # most images are not ties
        assert np.array_equal(ours[decided], golden[f"k8_pred_{stage}"][decided])
