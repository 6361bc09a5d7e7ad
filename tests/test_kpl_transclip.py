"""TransCLIP-ZS and the blocked kNN graph: known answers, both prototype forms, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kpl.errors import UsageError
from kpl import BASELINES, run_baseline
from kpl.peers.knn import knn_graph


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def two_clusters(seed=1, n=60, d=128):
    """Two tight clusters and text prototypes that lean to the right cluster only slightly.

    D 128 as in real features, where the Gaussian term (scaled by 1/50) can outweigh the text's noise.
    """
    rng = np.random.default_rng(seed)
    a, b, off = unit(rng.normal(size=(3, d)))
    labels = np.repeat([0, 1], n)
    x = unit(np.where(labels[:, None] == 0, a, b) + 0.04 * rng.normal(size=(2 * n, d)))
    names = unit(np.stack([0.505 * a + 0.495 * b + 0.3 * off, 0.495 * a + 0.505 * b - 0.3 * off]))
    return x, labels, names


def test_knn_graph_equals_brute_force_for_any_block():
    x = unit(np.random.default_rng(1).normal(size=(37, 8)))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    want = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    for block in (1, 5, 37, 1000):
        idx, w = knn_graph(x, 3, block=block)
        assert idx.shape == (37, 3) and idx.dtype == np.int64 and w.dtype == np.float32
        np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(want, axis=1))
        np.testing.assert_allclose(w, np.clip(np.take_along_axis(sims, idx, axis=1), 0, None), atol=1e-6)
        assert not (idx == np.arange(37)[:, None]).any()  # never its own neighbour


def test_knn_graph_clamps_negative_cosines_and_small_n():
    x = unit(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
    idx, w = knn_graph(x, 5)
    assert idx.shape == (3, 2) and (w >= 0).all() and w[0].min() == 0.0
    with pytest.raises(UsageError, match="k must be an integer >= 1"):
        knn_graph(x, 0)


def test_transclip_recovers_clusters_the_zero_shot_prediction_misses():
    x, labels, names = two_clusters()
    zero_shot = run_baseline("clip", x, name_embeddings=names)
    assert (zero_shot.predictions == labels).mean() < 0.9  # the text alone is not enough
    result = run_baseline("transclip", x, name_embeddings=names)
    assert "transclip" in BASELINES and result.name == "transclip"
    np.testing.assert_array_equal(result.predictions, labels)
    np.testing.assert_array_equal(result.logits.argmax(axis=1), result.predictions)  # log-assignments
    assert result.params["prototypes"] == "class names" and result.params["neighbours"] == 3


def test_no_assignment_steps_is_the_zero_shot_prediction():
    x, labels, names = two_clusters(seed=3)
    result = run_baseline("transclip", x, name_embeddings=names, inner_iters=0)
    np.testing.assert_array_equal(result.predictions, run_baseline("clip", x, name_embeddings=names).predictions)


def test_description_prototypes_are_the_normalised_mean():
    x, labels, names = two_clusters(seed=2)
    rng = np.random.default_rng(5)
    classes = []
    for t in names:  # two descriptions whose mean points exactly along the name embedding
        offset = unit(rng.normal(size=t.shape)) * 0.3
        offset -= (offset @ t) * t
        classes.append(np.stack([t + offset, t - offset]))
    by_desc = run_baseline("transclip", x, class_embeddings=classes)
    by_name = run_baseline("transclip", x, name_embeddings=names)
    assert by_desc.params["prototypes"] == "descriptions"
    np.testing.assert_array_equal(by_desc.predictions, by_name.predictions)
    np.testing.assert_allclose(by_desc.logits, by_name.logits, rtol=1e-4, atol=1e-3)


def test_transclip_bad_input_is_one_usage_error():
    x, _, names = two_clusters()
    with pytest.raises(UsageError, match="needs name_embeddings"):
        run_baseline("transclip", x)
    with pytest.raises(UsageError, match="Unknown transclip parameter"):
        run_baseline("transclip", x, name_embeddings=names, lamda=1)
    with pytest.raises(UsageError, match="neighbours must be an integer >= 1"):
        run_baseline("transclip", x, name_embeddings=names, neighbours=0)


def test_a_shared_graph_gives_the_same_answer():
    x, _, names = two_clusters(seed=2)
    alone = run_baseline("transclip", x, name_embeddings=names)
    shared = run_baseline("transclip", x, name_embeddings=names, graph=knn_graph(x, 3))
    np.testing.assert_array_equal(alone.logits, shared.logits)
    # the params record how the graph was built, never the (N, k) arrays themselves
    assert shared.params["graph"] == alone.params["graph"] | {"seconds": shared.params["graph"]["seconds"]}
    assert shared.params["graph"]["method"] == "exact"
    json.dumps(shared.params)
    indices, weights = knn_graph(x, 3)
    assert "graph" not in run_baseline("transclip", x, name_embeddings=names, graph=(indices, weights)).params
