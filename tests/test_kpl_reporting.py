"""Results a reviewer can trust and comparisons that say everything (issue 21, problems 5 and 7):
bootstrap intervals, the software and hardware in metrics.json, a row-normalised confusion plot
titled with balanced accuracy, a chance line, three deltas in ``kpl compare``, the k that
``--k auto`` chose, and progress of the long stages on stderr."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pytest
import test_kpl_cli
from test_kpl_cli import FAST, KB

from kbuild.cli import progress as cli_progress
from kpl.peers.transclip import TransCLIPParams, assignment_updates
from kpl.results.metrics import compute_metrics
from kpl.results.ranking import ranking_metrics

# Fixtures shared with test_kpl_cli: bound here by name, so pytest finds them in this module too.
setup = test_kpl_cli.setup


def _planted(n: int = 120, c: int = 3, seed: int = 3):
    """(N,) labels, (N,) predictions and (N, C) scores with ties, imbalanced classes."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(c, size=n, p=[0.6, 0.3, 0.1][:c] if c == 3 else None)
    scores = np.round(rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels], 1)  # rounding makes ties
    return labels, scores.argmax(axis=1), scores


def test_bootstrap_intervals_are_the_percentiles_of_resampled_metrics():
    from kpl.results.bootstrap import confidence_intervals

    labels, predictions, scores = _planted()
    resamples = 300
    ci = confidence_intervals(labels, predictions, scores, resamples=resamples, seed=7)
    # the same draws, one resample at a time, through the metric functions the table uses
    draws = np.random.default_rng(7).integers(0, labels.size, size=(resamples, labels.size))
    per = {"accuracy": [], "balanced_accuracy": [], "auroc": []}
    for idx in draws:
        m = compute_metrics(labels[idx], predictions[idx], num_classes=3)
        per["accuracy"].append(m.accuracy)
        per["balanced_accuracy"].append(m.balanced_accuracy)
        per["auroc"].append(ranking_metrics(labels[idx], scores[idx])["macro_auroc_ovr"])
    for metric, values in per.items():
        assert ci[metric] == pytest.approx(list(np.percentile(values, [2.5, 97.5])), abs=1e-12), metric
    point = compute_metrics(labels, predictions, num_classes=3)
    assert ci["accuracy"][0] < point.accuracy < ci["accuracy"][1]
    assert ci["balanced_accuracy"][0] < point.balanced_accuracy < ci["balanced_accuracy"][1]
    assert ci == confidence_intervals(labels, predictions, scores, resamples=resamples, seed=7)  # seeded
    assert ci["resamples"] == ci["auroc_resamples"] == resamples and ci["level"] == 0.95


def test_binary_auroc_interval_and_a_budget_that_says_it_was_cut():
    from kpl.results.bootstrap import auroc_resamples, confidence_intervals

    labels, predictions, scores = _planted(c=2)
    ci = confidence_intervals(labels, predictions, scores, resamples=200, seed=1)
    draws = np.random.default_rng(1).integers(0, labels.size, size=(200, labels.size))
    binary = [ranking_metrics(labels[i], scores[i])["auroc"] for i in draws]
    assert ci["auroc"] == pytest.approx(list(np.percentile(binary, [2.5, 97.5])), abs=1e-12)
    assert auroc_resamples(100_000, 1000) == 0 and auroc_resamples(200, 3) == 1000


def test_row_normalised_confusion_titled_with_balanced_accuracy_and_chance_line():
    from kpl.results.report import accuracy_vs_k_figure, confusion_figure

    counts = np.array([[90, 10], [15, 5]])
    figure = confusion_figure(counts, ["nevus", "melanoma"], "kpl.image_ot: balanced accuracy 57.50%")
    shown = np.asarray(figure.axes[0].images[0].get_array())
    assert np.allclose(shown, [[0.9, 0.1], [0.75, 0.25]])  # rows sum to one: the small class is visible
    assert "balanced accuracy" in figure.axes[0].get_title()

    class Sweep:
        rows = [{"k": k, "tau_t": 0.01, "tau_i": 0.04, "alpha": 0.6, "ot": "greenkhorn",
                 "image_ot_balanced_accuracy": a, "text_balanced_accuracy": a, "image_balanced_accuracy": a}
                for k, a in ((1, 0.3), (2, 0.5), (4, 0.6))]
        snapshot = {"name": "snapshot_v1"}
        chance = 1 / 3

    ax = accuracy_vs_k_figure(Sweep()).axes[0]
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), 100 / 3)


def test_eval_records_environment_intervals_and_plots_balanced_accuracy(kpl, setup, tmp_path, monkeypatch):
    from kpl.results import report

    titles = []
    real = report.plot_confusion

    def spy(confusion, names, title, path):  # the real plot, its title kept
        titles.append(title)
        return real(confusion, names, title, path)

    monkeypatch.setattr(report, "plot_confusion", spy)
    out = tmp_path / "out"
    result = kpl("eval", "--kb", "v1", "--data", setup, "--out", out, "--methods", "cupl,kpl", *FAST)
    assert result.code == 0, result.err
    metrics = json.loads((out / "metrics.json").read_text())
    env = metrics["environment"]
    assert env["packages"]["torch"] == metadata.version("torch")
    assert env["packages"]["numpy"] == np.__version__
    assert env["packages"]["open_clip"] == metadata.version("open_clip_torch")
    assert env["python"].count(".") == 2 and env["cpu"]["cores"] >= 1 and env["cpu"]["model"]
    assert env["gpu"] is None  # the math ran on the CPU
    final = metrics["results"]["kpl.image_ot"]
    ci = final["ci95"]
    assert ci["resamples"] == 1000 and ci["level"] == 0.95
    for metric in ("accuracy", "balanced_accuracy"):
        assert ci[metric][0] <= final[metric] <= ci[metric][1]
    line = next(l for l in result.out.splitlines() if l.startswith("kpl.image_ot"))
    assert f"{100 * ci['accuracy'][0]:.1f}, {100 * ci['accuracy'][1]:.1f}]" in line
    page = (out / "report.html").read_text()
    assert f"[{100 * ci['balanced_accuracy'][0]:.1f}, " in page and "percentile bootstrap" in page
    assert metadata.version("torch") in page
    assert titles and "balanced accuracy" in titles[0] and "top-1" not in titles[0]


def test_compare_shows_three_deltas_and_auto_k_is_printed(kpl, kbuild, setup, tmp_path):
    changed = {**KB, "cat": KB["cat"][:2] + ["striped fur"]}
    (tmp_path / "kb2.json").write_text(json.dumps(changed), encoding="utf-8")
    assert kbuild("load", tmp_path / "kb2.json").code == 0
    table = kpl("compare", "--kb", "v1", "--kb", "v2", "--data", setup, "--methods", "cupl,kpl", "--k", "auto", *FAST)
    assert table.code == 0, table.err
    header = next(l for l in table.out.splitlines() if l.startswith("method")).split()
    assert header == ["method", "snapshot", "top-1", "bal.acc", "AUROC", "delta", "top-1", "delta", "bal.acc",
                      "delta", "AUROC"]
    first, second = (l.split() for l in table.out.splitlines() if l.startswith("kpl.image_ot"))
    assert first[1] == "snapshot_v1" and len(first) == 5  # the reference row has no deltas
    assert second[1] == "snapshot_v2" and len(second) == 8 and all(c.startswith(("+", "-")) for c in second[-3:])
    assert float(second[-2]) == pytest.approx(float(second[3]) - float(first[3]), abs=0.011)  # balanced accuracy
    for name in ("snapshot_v1", "snapshot_v2"):
        assert f"k auto ({name}): chose k=" in table.err
    payload = kpl("compare", "--kb", "v1", "--kb", "v2", "--data", setup, "--methods", "cupl", "--json").json()
    runs = [s["results"]["cupl"] for s in payload["snapshots"]]
    delta = payload["deltas"]["snapshot_v2"]["cupl"]
    assert delta["balanced_accuracy"] == pytest.approx(runs[1]["balanced_accuracy"] - runs[0]["balanced_accuracy"])
    assert set(delta) == {"accuracy", "balanced_accuracy", "auroc"}
    single = kpl("eval", "--kb", "v1", "--data", setup, "--methods", "kpl", "--k", "auto", "--json", *FAST)
    chosen = single.json()["params"]["k"]
    assert f"k auto (snapshot_v1): chose k={chosen} of 1..4" in single.err
    sweep = kpl("sweep", "--kb", "v1", "--data", setup, "--k", "1,auto", *FAST)
    assert sweep.code == 0 and "k auto (snapshot_v1): chose k=" in sweep.err


def test_long_stages_report_progress_on_stderr_only(kpl, setup, monkeypatch):
    monkeypatch.setattr(cli_progress, "PLAIN_EVERY_S", 0.0)  # every update prints: stages of any length show
    result = kpl("eval", "--kb", "v1", "--data", setup, "--methods", "transclip,kpl", "--json", *FAST)
    assert result.code == 0, result.err
    for label in ("kNN graph (exact): ", "TransCLIP iterations: ", "KPL vision proxies: "):
        assert label in result.err, label
    steps = assignment_updates(TransCLIPParams())
    assert f"TransCLIP iterations: {steps}/{steps} (100%), done in" in result.err
    assert json.loads(result.out)["tool"] == "kpl eval"  # stdout stays pure JSON
    auto = kpl("eval", "--kb", "v1", "--data", setup, "--methods", "kpl", "--k", "auto", "--json", *FAST)
    assert "KPL over k: 4/4 (100%), done in" in auto.err
