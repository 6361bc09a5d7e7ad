"""``k="auto"``: label-free, deterministic, recorded, never the collapsed k on PH2, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kpl import compute_metrics, run_kpl, run_kpl_many
from kpl.errors import UsageError
from kpl.method.auto_k import agreement_matrix, auto_range, choose_k
from kpl.method.retrieval import split_by_class
from kpl.synthetic import synthetic_case

PH2 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "features" / "ph2_vitb16.npz"
FAST = {"iters": 300}
pytestmark = pytest.mark.usefixtures("one_thread")  # small arrays: a second thread only spins (conftest)


def test_choose_k_is_the_medoid_and_ties_go_to_the_smallest_k():
    preds = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1], [1, 1, 0, 1]])
    assert agreement_matrix(preds)[0, 1] == 0.5
    k, record = choose_k([1, 2, 3, 4], preds)
    # mean agreement: k=1 0.33, k=2, 3 and 4 all 0.67: a three-way tie, the smallest k wins
    assert k == 2 and record["chosen_k"] == 2 and record["range"] == [1, 4]
    assert record["mean_agreement"]["1"] < record["mean_agreement"]["2"] == record["mean_agreement"]["4"]


def test_auto_range_default_and_errors():
    assert auto_range([14, 30]) == list(range(1, 31))
    assert auto_range([5, 3]) == [1, 2, 3, 4, 5]
    assert auto_range([50, 60]) == list(range(1, 31))
    with pytest.raises(UsageError, match="at least 2 descriptions per class, but class 1 has 1"):
        auto_range([5, 1])
    with pytest.raises(UsageError, match="range of k to compare is empty"):
        auto_range([5, 5], [])


@pytest.mark.slow
def test_auto_result_is_the_chosen_k_and_records_it():
    x, _, classes = synthetic_case("overlap", 0)
    auto = run_kpl(x, classes, k="auto", **FAST)
    chosen = auto.auto["chosen_k"]
    assert auto.params.k == chosen and auto.to_json()["auto"]["rule"] == "agreement-medoid"
    fixed = run_kpl(x, classes, k=chosen, **FAST)
    np.testing.assert_array_equal(auto.image_ot.predictions, fixed.image_ot.predictions)
    many = run_kpl_many(x, classes, [2, "auto"], **FAST)
    assert list(many) == [2, "auto"] and many["auto"].auto == auto.auto
    assert "auto" not in run_kpl(x, classes, k=chosen, **FAST).to_json()


@pytest.mark.slow
def test_auto_is_deterministic_and_ignores_image_order():
    x, _, classes = synthetic_case("imbalanced", 1)
    first = run_kpl(x, classes, k="auto", **FAST)
    assert run_kpl(x, classes, k="auto", **FAST).auto == first.auto
    order = np.random.default_rng(0).permutation(len(x))
    shuffled = run_kpl(x[order], classes, k="auto", **FAST)
    assert shuffled.auto["chosen_k"] == first.auto["chosen_k"]


def test_auto_errors_are_usage_errors():
    x, _, classes = synthetic_case("well", 0)
    with pytest.raises(UsageError, match="class 2 has 1"):
        run_kpl(x, [classes[0], classes[1], classes[2][:1], classes[3]], k="auto")
    with pytest.raises(UsageError, match="empty"):
        run_kpl(x, classes, k="auto", auto_ks=[])
    with pytest.raises(UsageError, match="k must be an integer"):
        run_kpl(x, classes, k="automatic")


@pytest.mark.slow  # every k of the auto range to 2000 iterations on the real features
@pytest.mark.skipif(not PH2.is_file(), reason="../shared PH2 features are absent")
def test_auto_never_collapses_on_ph2():
    data = np.load(PH2)
    classes = split_by_class(data["description_embeddings"], data["description_class"])
    result = run_kpl(data["image_features"], classes, k="auto")
    balanced = compute_metrics(data["labels"], result.image_ot.predictions).balanced_accuracy
    assert balanced >= 0.75, (result.auto["chosen_k"], balanced)  # k <= 5 land below 0.3
