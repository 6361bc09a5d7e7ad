"""prior="auto" (kpl.method.prior): one-sided batches keep their class, the balanced whole set stays
close to the paper's KPL, the plan's pull does not fade with N; --prior in the CLI; bad input in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_kpl_cli import FAST, one_error_line, setup  # noqa: F401  (setup is a fixture)

from helpers import SHARED
from kpl import KPLParams, run_kpl
from kpl.errors import KplError, UsageError
from kpl.method.prior import assign_to_shares, estimate_prior, plan_scale
from kpl.method.retrieval import split_by_class
from kpl.results.metrics import compute_metrics
from kpl.synthetic import synthetic_case

PH2 = SHARED / "datasets" / "features" / "ph2_vitb16.npz"


def _one_sided(kind: str, cls: int, n: int = 60):
    x, y, classes = synthetic_case(kind, seed=0)
    keep = np.flatnonzero(y == cls)[:n]
    return x[keep], y[keep], classes


@pytest.mark.parametrize("kind,cls", [("well", 2), ("overlap", 0)])
def test_auto_keeps_the_majority_class_of_a_one_sided_batch(kind, cls):
    x, y, classes = _one_sided(kind, cls)
    uniform = run_kpl(x, classes, k=8)
    auto = run_kpl(x, classes, k=8, prior="auto")
    kept = float(np.mean(auto.image_ot.predictions == cls))
    # the paper's uniform marginals spread a one-sided batch over the other classes
    assert kept > float(np.mean(uniform.image_ot.predictions == cls))
    assert kept >= float(np.mean(auto.text.predictions == cls)) - 0.05  # at least the text prediction, nearly
    assert int(np.bincount(auto.image_ot.predictions, minlength=len(classes)).argmax()) == cls
    record = auto.prior
    assert record["mode"] == "auto" and int(np.argmax(record["estimated_shares"])) == cls
    assert uniform.prior is None


def test_auto_on_the_balanced_whole_set_stays_close_to_uniform():
    x, y, classes = synthetic_case("well", seed=1)
    uniform = run_kpl(x, classes, k=8).image_ot.predictions
    auto = run_kpl(x, classes, k=8, prior="auto").image_ot.predictions
    assert float(np.mean(auto == uniform)) >= 0.95
    assert abs(compute_metrics(y, auto).balanced_accuracy - compute_metrics(y, uniform).balanced_accuracy) <= 0.02


@pytest.mark.skipif(not PH2.exists(), reason="shared PH2 features not present")
def test_auto_on_ph2_whole_set_within_two_points_of_the_paper():
    data = np.load(PH2)
    x, y = data["image_features"], data["labels"]
    classes = split_by_class(data["description_embeddings"], data["description_class"])
    # the paper code's own result on these inputs (ph2_vitb16.json: 80.94 %; our uniform run: 81.56 %)
    paper = json.loads(PH2.with_suffix(".json").read_text())["results"]["k=8"]["balanced_accuracy"]["image_ot"] / 100
    auto = compute_metrics(y, run_kpl(x, classes, k=8, prior="auto").image_ot.predictions).balanced_accuracy
    assert auto >= paper - 0.02, (auto, paper)


def test_em_shares_follow_the_batch_and_the_plan_scale_stops_at_the_reference():
    rng = np.random.default_rng(0)
    import torch

    # confident posteriors of a 90/10 batch: EM recovers about 0.9, never exactly 0 for a class
    logits = torch.tensor(np.where(rng.random((200, 1)) < 0.9, [[0.05, 0.0]], [[0.0, 0.05]]), dtype=torch.float32)
    shares = estimate_prior(logits, 0.01)
    assert 0.85 < float(shares[0]) < 0.95 and float(shares.min()) > 0
    assert plan_scale(200) == 1.0 and plan_scale(10_000) == 1.0 and plan_scale(1_000_000) == 100.0
    # balancing to shares moves only thresholds: 30 % of the images go to class 1
    scores = torch.tensor(rng.normal(size=(100, 2)), dtype=torch.float64)
    out = assign_to_shares(scores, torch.tensor([0.7, 0.3], dtype=torch.float64))
    assert abs(float((out.argmax(dim=1) == 1).double().mean()) - 0.3) <= 0.03


def test_prior_validation_and_bad_input_are_one_clear_error():
    x, _, classes = synthetic_case("well", seed=0)
    with pytest.raises(UsageError, match="prior must be one of uniform, auto"):
        run_kpl(x, classes, prior="skewed")
    with pytest.raises(UsageError, match="prior must be one of"):
        KPLParams(prior="Auto").validate()
    assert KPLParams().prior == "uniform" and KPLParams(prior="auto").validate().to_json()["prior"] == "auto"
    with pytest.raises(KplError, match="at least 2 images"):
        run_kpl(x[:1], classes, prior="auto")
    with pytest.raises(KplError, match="class 1 has no description embeddings"):
        run_kpl(x, [classes[0], classes[1][:0], classes[2]], prior="auto")


def test_cli_prior_auto_shows_both_kpl_rows_and_unknown_prior_is_a_usage_error(kpl, setup, tmp_path):  # noqa: F811
    one_error_line(kpl("eval", "--kb", "v1", "--data", setup, "--prior", "skewed"), 2, "prior must be one of")
    one_error_line(kpl("sweep", "--kb", "v1", "--data", setup, "--prior", "skewed"), 2, "prior must be one of")
    result = kpl("eval", "--kb", "v1", "--data", setup, "--prior", "auto", "--methods", "dclip,kpl", "--json",
                 "--out", tmp_path / "out", *FAST)
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["params"]["prior"] == "auto"
    rows = payload["results"]
    assert {"kpl.image_ot", "kpl_auto.image_ot"} <= set(rows)
    assert rows["kpl.image_ot"]["params"]["prior"] == "uniform"
    auto = rows["kpl_auto.image_ot"]["params"]
    assert auto["prior"] == "auto" and auto["prior_record"]["mode"] == "auto"
    table = kpl("eval", "--kb", "v1", "--data", setup, "--prior", "auto", "--methods", "kpl", *FAST)
    assert table.code == 0 and "kpl_auto.image_ot" in table.out and "kpl.image_ot" in table.out


def test_cli_one_image_and_a_class_without_descriptions_are_one_line(kpl, kbuild, setup, tmp_path):  # noqa: F811
    npz = tmp_path / "feats.npz"
    assert kpl("embed", "--data", setup, "--export", npz).code == 0
    data = dict(np.load(npz))
    data["image_features"], data["labels"] = data["image_features"][:1], data["labels"][:1]
    one = tmp_path / "one.npz"
    np.savez(one, **data)
    one_error_line(kpl("eval", "--kb", "v1", "--features", one, "--prior", "auto", *FAST), 1, "at least 2 images")
    # a dataset class the snapshot has no description for: named, with the fix
    (tmp_path / "nodog.json").write_text(json.dumps({"bird": ["feathers", "a beak"], "cat": ["whiskers", "fur"]}),
                                         encoding="utf-8")
    assert kbuild("load", tmp_path / "nodog.json").code == 0
    result = kpl("eval", "--kb", "v2", "--features", npz, "--prior", "auto", *FAST)
    assert result.code in (1, 2)
    one_error_line(result, result.code, "dog")
