"""Answers for imbalanced tasks: AUROC from scores, per-class recall, scores in predictions.csv,
``--k auto`` end to end (label-free: shuffled labels change nothing it does), sweep ranges."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_kpl_cli import FAST, KB, one_error_line, setup  # noqa: F401  (setup is a fixture)

from kpl.results.ranking import auroc, class_margins, ranking_metrics


def brute_auroc(positive, score):
    pos, neg = score[positive], score[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_auroc_equals_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    positive = rng.random(200) < 0.2  # imbalanced 1:4
    score = np.round(rng.normal(size=200) + positive, 1)  # rounding makes ties
    assert auroc(positive, score) == pytest.approx(brute_auroc(positive, score))
    assert auroc(np.array([True, False]), np.array([2.0, 1.0])) == 1.0
    assert auroc(np.array([True, False]), np.array([1.0, 1.0])) == 0.5
    assert auroc(np.array([True, True]), np.array([1.0, 2.0])) is None


def test_margins_and_macro_ovr():
    scores = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 0.0, 4.0], [2.0, 2.5, 0.0]])
    np.testing.assert_allclose(class_margins(scores)[0], [2.0, -2.0, -3.0])
    np.testing.assert_allclose(class_margins(scores)[3], [-0.5, 0.5, -2.5])
    labels = np.array([0, 1, 2, 1])
    out = ranking_metrics(labels, scores, ["a", "b", "c"])
    assert out["auroc"] is None and out["macro_auroc_ovr"] == 1.0 and out["per_class_auroc"]["b"] == 1.0
    binary = ranking_metrics(np.array([0, 0, 1, 1]), np.array([[1, 0], [0.5, 0.4], [0, 1], [0.2, 0.3]]))
    assert binary["auroc"] == 1.0  # s1 - s0 ranks every positive above every negative
    # a temperature does not change any AUROC
    assert ranking_metrics(labels, 7 * scores)["per_class_auroc"] == ranking_metrics(labels, scores)["per_class_auroc"]


def _predictions(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_auto_is_label_free_and_reports_every_method(kpl, setup, tmp_path):  # noqa: F811
    npz = tmp_path / "feats.npz"
    assert kpl("embed", "--data", setup, "--export", npz).code == 0
    first = kpl("eval", "--kb", "v1", "--features", npz, "--k", "auto", "--json", "--out", tmp_path / "a", *FAST)
    assert first.code == 0, first.err
    payload = first.json()
    record = payload["k_auto"]
    assert record["rule"] == "agreement-medoid" and payload["params"]["k_mode"] == "auto"
    assert payload["params"]["k"] == record["chosen_k"] and record["range"] == [1, 4]  # cat has 4 descriptions
    results = payload["results"]
    assert {"clip", "dclip", "cupl", "inmap", "transclip", "transclip_desc", "stata", "stata_desc", "kpl.image_ot"} <= set(results)
    for row in results.values():
        assert set(row["per_class_recall"]) == {"bird", "cat", "dog"}
        assert row["auroc"] is None and 0 <= row["macro_auroc_ovr"] <= 1  # three classes: macro one-vs-rest
    rows = _predictions(tmp_path / "a" / "predictions.csv")
    assert {"score:transclip:cat", "score:kpl.image_ot:dog", "kpl.image_ot"} <= set(rows[0])

    # the same features with the labels shuffled: auto sees no labels, so it does exactly the same
    data = dict(np.load(npz))
    data["labels"] = np.random.default_rng(0).permutation(data["labels"])
    shuffled_npz = tmp_path / "shuffled.npz"
    np.savez(shuffled_npz, **data)
    second = kpl("eval", "--kb", "v1", "--features", shuffled_npz, "--k", "auto", "--json", "--out", tmp_path / "b",
                 *FAST)
    assert second.code == 0, second.err
    assert second.json()["k_auto"] == record
    shuffled_rows = _predictions(tmp_path / "b" / "predictions.csv")
    methods = [m for m in results]
    assert [[r[m] for m in methods] for r in shuffled_rows] == [[r[m] for m in methods] for r in rows]


def test_sweep_ranges_auto_and_balanced_accuracy_per_stage(kpl, setup, tmp_path):  # noqa: F811
    result = kpl("sweep", "--kb", "v1", "--data", setup, "--k", "1..2,3-3,auto", "--out", tmp_path / "s", *FAST)
    assert result.code == 0, result.err
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())["rows"]
    assert [r["k"] for r in rows] == [1, 2, 3, "auto"] and rows[-1]["chosen_k"] in (1, 2, 3, 4)
    for row in rows:
        for stage in ("text", "image", "image_ot"):
            assert 0 <= row[f"{stage}_balanced_accuracy"] <= 1
    assert "image_ot bal" in result.out and f"auto ({rows[-1]['chosen_k']})" in result.out
    assert (tmp_path / "s" / "accuracy_vs_k.png").read_bytes()[:4] == b"\x89PNG"


def test_k_errors_are_one_line(kpl, kbuild, setup, tmp_path):  # noqa: F811
    data = ("--data", setup)
    one_error_line(kpl("sweep", "--kb", "v1", *data, "--k", "5-1"), 2, "range '5-1' is empty")
    one_error_line(kpl("sweep", "--kb", "v1", *data, "--k", "1-x"), 2, "not a range of integers")
    one_error_line(kpl("eval", "--kb", "v1", *data, "--k", "eight"), 2, "not an integer or 'auto'")
    (tmp_path / "one.json").write_text(json.dumps({**KB, "dog": ["floppy ears"]}), encoding="utf-8")
    assert kbuild("load", tmp_path / "one.json").code == 0
    one_error_line(kpl("eval", "--kb", "v2", *data, "--k", "auto", "--methods", "kpl"), 2,
                   "needs at least 2 descriptions per class", "fixed k")
