"""The KPL math on small hand-made arrays: retrieval, OT plans, proxy loop, baselines, metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kpl import BASELINES, OT_METHODS, KPLParams, run_baseline, run_kpl, run_kpl_many
from kpl.errors import KplError, UsageError
from kpl.method.core import torch_threads
from kpl.method.ot import greenkhorn, sinkhorn, softmax_plan
from kpl.method.proxies import ProxyLoop, fit_vision_proxies, harden_labels
from kpl.method.retrieval import as_matrix
from kpl.results.metrics import compute_metrics, confusion_matrix


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def planted(n=300, d=32, c=4, m=12, seed=0, signal=0.5, spread=0.3):
    """Images and descriptions around C class directions, with a shared common direction."""
    rng = np.random.default_rng(seed)
    centers, shared = unit(rng.standard_normal((c, d))), unit(rng.standard_normal(d))
    labels = rng.integers(0, c, n)
    noise = lambda rows: rng.standard_normal((rows, d)) / np.sqrt(d)  # noqa: E731
    x = unit(centers[labels] * signal + shared * 0.5 + noise(n))
    classes = [unit(centers[k] * rng.uniform(0, spread * 2, (m, 1)) + shared * 0.5 + noise(m)) for k in range(c)]
    names = unit(centers * spread + shared * 0.5 + noise(c))
    return x, labels, classes, names


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These arrays are tiny: a second thread only adds fork/join cost (and stalls on a busy machine)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data():
    return planted()


# ----------------------------------------------------------------------------- retrieval
def test_top_k_equals_brute_force(data):
    x, _, classes, _ = data
    result = run_kpl(x, classes, k=5, iters=0)
    for c, e in enumerate(classes):
        scores = (x.astype(np.float64) @ e.T.astype(np.float64)).mean(axis=0)
        order = np.argsort(-scores)
        assert scores[order[4]] - scores[order[5]] > 1e-6  # no near-tie at the cut in this data
        assert set(result.selected[c].tolist()) == set(order[:5].tolist())
        assert list(result.selected[c]) == sorted(result.selected[c], key=lambda j: -scores[j])  # topk order
        proxy = e[order[:5]].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(result.text.proxies[:, c], proxy / np.linalg.norm(proxy), atol=1e-6)


def test_k_larger_than_class_uses_all_rows(data):
    x, _, classes, _ = data
    short = [classes[0][:3]] + classes[1:]
    result = run_kpl(x, short, k=8, iters=0)
    assert sorted(result.selected[0].tolist()) == [0, 1, 2]
    assert all(len(s) == 8 for s in result.selected[1:])
    cupl = run_baseline("cupl", x, class_embeddings=short)
    np.testing.assert_allclose(result.text.proxies[:, 0], cupl.proxies[:, 0], atol=1e-6)


def test_unit_rows_kept_bitwise_and_others_renormalised():
    rows = unit(np.random.default_rng(5).standard_normal((6, 8)))
    assert torch.equal(as_matrix(rows, "x"), torch.from_numpy(rows))  # renormalising would add rounding
    half = rows.astype(np.float16).astype(np.float32)  # float16 storage: norms off by ~1e-4
    fixed = as_matrix(half, "x")
    assert float((fixed.norm(dim=1) - 1).abs().max()) < 1e-6
    torch.testing.assert_close(fixed, F.normalize(torch.from_numpy(half), dim=1), rtol=0, atol=0)


def test_text_stage_predicts_argmax(data):
    x, _, classes, _ = data
    result = run_kpl(x, classes, iters=0)
    np.testing.assert_array_equal(result.text.predictions, (x @ result.text.proxies).argmax(1))
    assert result.text.iterations == 0


# ----------------------------------------------------------------------------- OT plans
def _violations(plan: torch.Tensor) -> tuple[float, float]:
    n, c = plan.shape
    return float((plan.sum(0) - 1 / c).abs().max()), float((plan.sum(1) - 1 / n).abs().max())


def test_greenkhorn_moves_masses_toward_targets():
    logits = torch.tensor([[0.30, 0.10, 0.00], [0.25, 0.05, 0.02], [0.28, 0.20, 0.01], [0.22, 0.21, 0.15]])
    start = torch.softmax(logits / 0.1, dim=1)
    plan = greenkhorn(logits, 0.1, iters=50)
    col0, row0 = _violations(start)
    col1, row1 = _violations(plan)
    assert col1 < col0 / 10 and row1 < row0 / 10
    assert abs(float(plan.sum()) - 1.0) < 1e-3  # rows carry ~1/N each, so total mass ~1


def test_greenkhorn_single_step_rescales_worst_column():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    plan = greenkhorn(logits, 1.0, iters=1)
    # column 0 holds most mass (violation ~1.69 > row violation 2/3): it alone is rescaled to 1/2
    assert float(plan[:, 0].sum()) == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose(plan[:, 1].numpy(), torch.softmax(logits, 1)[:, 1].numpy(), rtol=1e-6)


def test_greenkhorn_tie_goes_to_rows_then_first_index():
    # every column and row is off by exactly 1/2: the strict test picks a row, and the first one
    plan = greenkhorn(torch.zeros(2, 2), 1.0, iters=1)
    np.testing.assert_allclose(plan.numpy(), [[0.25, 0.25], [0.5, 0.5]], rtol=1e-6)


def test_greenkhorn_gamma_prior_and_no_mutation():
    logits = torch.randn(20, 3, generator=torch.Generator().manual_seed(1)) * 0.05
    before = logits.clone()
    plan = greenkhorn(logits, 0.01, iters=200, gamma=1.0)
    assert torch.equal(logits, before)
    assert torch.isfinite(plan).all()


def test_sinkhorn_rows_one_and_columns_balanced():
    logits = torch.randn(60, 4, generator=torch.Generator().manual_seed(0)) * 0.05
    plan = sinkhorn(logits, 0.01, iters=200)
    np.testing.assert_allclose(plan.sum(1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(plan.sum(0).numpy(), 60 / 4, rtol=1e-3)


def test_none_is_softmax():
    logits = torch.randn(5, 3)
    torch.testing.assert_close(softmax_plan(logits, 0.01), torch.softmax(logits / 0.01, 1))
    assert set(OT_METHODS) == {"greenkhorn", "sinkhorn", "none"}


# ----------------------------------------------------------------------------- proxies
def test_harden_labels_copies_and_one_hots():
    plan = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    hard = harden_labels(plan, 0.6)
    assert hard[0].tolist() == [1.0, 0.0, 0.0] and torch.equal(hard[1], plan[1])
    assert plan[0, 0] == pytest.approx(0.7)  # the caller's plan is untouched


def test_early_stop_matches_exact_iters(data):
    x, _, classes, _ = data
    early = run_kpl(x, classes, k=6)
    exact = run_kpl(x, classes, k=6, exact_iters=True)
    for stage in ("image", "image_ot"):
        assert early.stage(stage).converged and early.stage(stage).iterations < 1000
        assert exact.stage(stage).iterations == 2000
        assert np.abs(early.stage(stage).proxies - exact.stage(stage).proxies).max() < 1e-5


def _plain_loop(x, plan, init, iters, keep_at):
    """The straightforward proxy loop in float64, a stand-in for exact arithmetic, which run_kpl's
    loop follows (kpl.method.proxies): (W after ``keep_at`` iterations, every max |W_new - W|)."""
    x, plan, init = x.double(), plan.double(), init.double()
    w, step, prev, changes, kept = init.clone(), 10.0, float("inf"), [], None
    target = x.T @ harden_labels(plan, 0.6)
    for it in range(iters):
        grad = x.T @ torch.softmax(x @ w / 0.04, 1) - target
        norm = torch.norm(grad)
        step = step / 2 if norm > prev else step
        prev = norm
        w_new = F.normalize(w - (step / (x.shape[0] * 0.04)) * grad, dim=0)
        changes.append(float((w_new - w).abs().max()))
        w = w_new
        kept = w if it + 1 == keep_at else kept
    return kept, changes


@pytest.fixture(scope="module")
def loop_inputs(data):
    x_np, _, classes, _ = data
    x = torch.from_numpy(x_np)
    init = F.normalize(torch.from_numpy(np.stack([e.mean(0) for e in classes], 1)), dim=0)
    return x, torch.softmax(x @ init / 0.01, 1), init


@pytest.fixture(scope="module")
def plain_run(loop_inputs):
    return _plain_loop(*loop_inputs, iters=2000, keep_at=300)


def test_exact_loop_equals_plain_loop(loop_inputs, plain_run):
    """The same iterates as the straightforward loop in exact arithmetic: 300 iterations agree with
    the float64 loop far below float32 resolution of W."""
    fit = fit_vision_proxies(*loop_inputs, ProxyLoop(iters=300, exact_iters=True))
    assert torch.abs(fit.exact - plain_run[0]).max() < 1e-7  # float32 resolution of W's entries


@pytest.mark.parametrize("tol, patience", [(1e-6, 20), (1e-5, 5)])
def test_stop_rule_is_patience_quiet_iterations(loop_inputs, tol, patience):
    """The early stop ends where the full run's changes first stay under tol for patience iterations,
    on the W the full run had there."""
    full = fit_vision_proxies(*loop_inputs, ProxyLoop(tol=tol, patience=patience, exact_iters=True))
    quiet = np.convolve(np.array(full.changes) < tol, np.ones(patience), "valid") == patience
    expected = int(np.argmax(quiet)) + patience  # iterations run when the run of quiet ones completes
    fit = fit_vision_proxies(*loop_inputs, ProxyLoop(tol=tol, patience=patience))
    assert quiet.any() and fit.converged and fit.iterations == expected < full.iterations
    assert fit.changes == full.changes[:expected]
    cut = fit_vision_proxies(*loop_inputs, ProxyLoop(tol=tol, patience=patience, iters=expected, exact_iters=True))
    assert torch.equal(fit.exact, cut.exact)


# ----------------------------------------------------------------------------- API and validation
def test_inputs_not_mutated_and_tensors_accepted(data):
    x, _, classes, names = data
    x_copy, classes_copy = x.copy(), [e.copy() for e in classes]
    result = run_kpl(torch.from_numpy(x), [torch.from_numpy(e) for e in classes], ot="sinkhorn")
    run_baseline("inmap", x, name_embeddings=names)
    np.testing.assert_array_equal(x, x_copy)
    for e, e_copy in zip(classes, classes_copy):
        np.testing.assert_array_equal(e, e_copy)
    float64 = run_kpl(x.astype(np.float64), classes, ot="sinkhorn")
    np.testing.assert_array_equal(result.image_ot.predictions, float64.image_ot.predictions)


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"k": 0}, UsageError, "k must be an integer >= 1"),
        ({"k": 2.5}, UsageError, "k must be an integer >= 1"),
        ({"ot": "emd"}, UsageError, "Unknown OT method 'emd'. Available: greenkhorn, none, sinkhorn"),
        ({"tau_i": 0}, UsageError, "tau_i must be a positive number"),
        ({"bogus": 1}, UsageError, "Unknown KPL parameter(s): bogus"),
    ],
)
def test_bad_parameters_raise_usage_error(data, kwargs, error, text):
    x, _, classes, _ = data
    with pytest.raises(error, match=None) as info:
        run_kpl(x, classes, **kwargs)
    assert text in str(info.value) and "\n" not in str(info.value)


def test_bad_inputs_raise_kbuild_error(data):
    x, _, classes, _ = data
    with pytest.raises(KplError, match="has dim 16 but image_features has dim 32"):
        run_kpl(x, [e[:, :16] for e in classes])
    with pytest.raises(KplError, match="class 1 has no description embeddings"):
        run_kpl(x, [classes[0], np.zeros((0, 32), np.float32)])
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(KplError, match="NaN/inf in 1 row.*first row 7"):
        run_kpl(bad, classes)
    with pytest.raises(UsageError, match="list with one"):
        run_kpl(x, np.vstack(classes))


def test_run_kpl_many_equals_single_runs(data):
    x, _, classes, _ = data
    many = run_kpl_many(x, classes, ks=[2, 12, 50])
    for k in (2, 12):
        single = run_kpl(x, classes, k=k)
        np.testing.assert_array_equal(many[k].image_ot.proxies, single.image_ot.proxies)
        assert many[k].params.k == k
    assert many[50].image_ot is many[12].image_ot  # every class has 12 rows: k 12 and 50 coincide


def test_results_are_json_ready(data):
    x, labels, classes, names = data
    result = run_kpl(x, classes)
    text = json.dumps(result.to_json(arrays=True))
    assert json.loads(text)["image_ot"]["iterations"] == result.image_ot.iterations
    json.dumps(run_baseline("inmap", x, name_embeddings=names).to_json(arrays=True))
    json.dumps(compute_metrics(labels, result.image_ot.predictions).to_json())
    assert KPLParams().to_json()["k"] == 8


def test_import_is_light():
    code = "import sys, kpl; print([m for m in ('open_clip', 'chromadb', 'typer') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- baselines
@pytest.fixture(scope="module")
def separable():
    """Three orthogonal classes; every method should classify them perfectly."""
    rng = np.random.default_rng(3)
    d, c = 24, 3
    basis = np.eye(d, dtype=np.float32)[:c]
    labels = np.repeat(np.arange(c), 40)
    x = unit(basis[labels] + rng.standard_normal((labels.size, d)) * 0.05)
    classes = [unit(basis[k] + rng.standard_normal((6, d)) * 0.1) for k in range(c)]
    return x, labels, classes, unit(basis + 0.01)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_solve_separable_case(separable, name):
    x, labels, classes, names = separable
    result = run_baseline(name, x, class_embeddings=classes, name_embeddings=names)
    np.testing.assert_array_equal(result.predictions, labels)
    assert result.logits.shape == (x.shape[0], 3)
    assert result.proxies is None or result.proxies.shape == (x.shape[1], 3)


def test_baseline_formulas(data):
    x, _, classes, names = data
    dclip = run_baseline("dclip", x, class_embeddings=classes)
    scores = np.stack([(x.astype(np.float64) @ e.T).mean(1) for e in classes], 1)
    np.testing.assert_allclose(dclip.logits, scores, atol=1e-6)
    clip = run_baseline("clip", x, name_embeddings=names)
    np.testing.assert_allclose(clip.logits, x @ names.T, atol=1e-6)
    kpl = run_baseline("kpl", x, class_embeddings=classes, k=4)
    np.testing.assert_array_equal(kpl.predictions, run_kpl(x, classes, k=4).image_ot.predictions)


def test_baseline_errors(data):
    x, _, classes, _ = data
    with pytest.raises(UsageError, match=r"^Unknown baseline 'x'. Available: clip, cupl, dclip, inmap, kpl, stata, transclip$"):
        run_baseline("x", x)
    with pytest.raises(UsageError, match="needs name_embeddings"):
        run_baseline("clip", x, class_embeddings=classes)
    with pytest.raises(UsageError, match="takes no parameters"):
        run_baseline("cupl", x, class_embeddings=classes, k=3)


# ----------------------------------------------------------------------------- metrics
def test_metrics_on_hand_computed_confusion():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 2, 2]
    m = compute_metrics(labels, preds, num_classes=4)
    np.testing.assert_array_equal(m.confusion[:3, :3], [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert m.accuracy == pytest.approx(4 / 6)
    np.testing.assert_allclose(m.per_class_recall[:3], [2 / 3, 1 / 2, 1])
    assert np.isnan(m.per_class_recall[3])  # class 3 never occurs: left out of the averages
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m.to_json()["per_class_recall"][3] is None


def test_metrics_errors():
    with pytest.raises(KplError, match="differ in length"):
        confusion_matrix([0, 1], [0])
    with pytest.raises(KplError, match="out of range"):
        confusion_matrix([0, 3], [0, 1], num_classes=2)
