"""TransCLIP-ZS and the blocked kNN graph: known answers, both prototype forms, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import kpl.peers.transclip as tc
from kpl import BASELINES, run_baseline
from kpl.errors import UsageError
from kpl.peers.knn import knn_graph
from kpl.peers.transclip import TransCLIPParams, transclip


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


# ---------------------------------------------------------------- the released algorithm's four facts
# Each fact of issue 24 (a)-(d) is pinned below against a direct numpy (float64) transcription of
# the equation it states; the last test runs the whole algorithm in numpy and compares.


def small_problem(seed=0, n=40, d=8, c=3):
    """Three clusters around a common direction and prototypes that lean to them a little, as in CLIP:
    zero-shot margins of a few nats, so no probability saturates to 1 in float32."""
    rng = np.random.default_rng(seed)
    centres, common = unit(rng.normal(size=(c, d))), unit(rng.normal(size=d))
    labels = rng.integers(0, c, size=n)
    x = unit(common + 0.5 * centres[labels] + 0.25 * rng.normal(size=(n, d)))
    t = unit(common + 0.05 * centres + 0.03 * rng.normal(size=(c, d)))
    return x, labels, t


def np_softmax(a):
    a = a - a.max(axis=1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(axis=1, keepdims=True)


def np_zero_shot(x, t, temperature=100.0):
    return np_softmax(temperature * x.astype(np.float64) @ t.astype(np.float64).T)


def np_log_p(x, means, variance):
    """log N(x_i; mu_c, diag(variance)) without the terms common to all classes, (N, C)."""
    diff = x[:, None, :] - means[None, :, :]
    return -0.5 * (diff ** 2 / variance).sum(axis=2)


def np_init_means(x, y, top=8):
    means = []
    for c in range(y.shape[1]):
        best = np.argsort(-y[:, c], kind="stable")[:top]
        m = (y[best, c, None] * x[best]).mean(axis=0)
        means.append(m / np.linalg.norm(m))
    return np.array(means)


def dense_w(idx, w, n):
    dense = np.zeros((n, n))
    for i in range(n):
        for s in range(idx.shape[1]):
            dense[i, idx[i, s]] += w[i, s]
    return dense


def log_softmax(s):
    s = np.asarray(s, dtype=np.float64)
    return s - s.max(axis=1, keepdims=True) - np.log(np.exp(s - s.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True))


def test_fact_a_one_assignment_step_is_the_scaled_equation():
    """(a) z_i ~ y_i^lambda exp((log p_i + (50 / 2k) ((W + W^T) z)_i) / 50), k = 3, first step from z = y."""
    x, _, t = small_problem()
    idx, w = knn_graph(x, 3)
    _, scores, _ = transclip(torch.from_numpy(x), torch.from_numpy(t), TransCLIPParams(outer_iters=0, inner_iters=1),
                             graph=(idx, w))
    x64 = x.astype(np.float64)
    y = np_zero_shot(x, t)
    a = dense_w(idx, w.astype(np.float64), len(x))
    log_p = np_log_p(x64, np_init_means(x64, y), np.full(x.shape[1], 1.0 / x.shape[1]))
    want = np.log(y) + (log_p + (50 / (2 * 3)) * ((a + a.T) @ y)) / 50
    np.testing.assert_allclose(log_softmax(scores.numpy()), log_softmax(want), atol=2e-4)
    unscaled = np.log(y) + log_p + (a + a.T) @ y  # the paper's equation read literally differs here
    assert np.abs(log_softmax(unscaled) - log_softmax(want)).max() > 0.05


def test_fact_b_neighbours_are_heard_both_ways():
    """(b) W z + W^T z: an image nobody of its own lists still hears the images that list it."""
    x, _, t = small_problem(n=6)
    n = len(x)
    idx = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 1, 2], [0, 1, 2]], dtype=np.int64)
    silent = np.zeros((n, 3), dtype=np.float32)
    one_way = silent.copy()
    one_way[4, 0] = one_way[5, 0] = 1.0  # images 4 and 5 list image 0; image 0 lists them not at all
    settings = TransCLIPParams(outer_iters=0, inner_iters=1, init_top=2)
    run = lambda w: transclip(torch.from_numpy(x), torch.from_numpy(t), settings, graph=(idx, w))
    (_, base, y), (_, heard, _) = run(silent), run(one_way)
    change = (heard - base).numpy()
    y = y.numpy()
    np.testing.assert_allclose(change[0], (y[4] + y[5]) / 6, atol=1e-6)  # W^T z: 0 hears 4 and 5
    np.testing.assert_allclose(change[4], y[0] / 6, atol=1e-6)  # W z: 4 hears 0
    np.testing.assert_allclose(change[5], y[0] / 6, atol=1e-6)
    np.testing.assert_allclose(change[1:4], 0, atol=1e-6)
    # and the sparse messages equal the dense (W + W^T) z for any graph
    gi, gw = knn_graph(x, 3)
    z = torch.softmax(torch.from_numpy(np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)), dim=1)
    a = dense_w(gi, gw.astype(np.float64), n)
    affinity = tc.symmetric_affinity(torch.from_numpy(gi), torch.from_numpy(gw), n)
    np.testing.assert_allclose(tc.neighbour_messages(z, affinity).numpy(),
                               (a + a.T) @ z.numpy().astype(np.float64), atol=1e-5)


def spy_on_the_loop(monkeypatch):
    """Record every (means, variance) the likelihood sees and every assignment update's steps and output."""
    seen = {"likelihood": [], "updates": [], "means": []}
    real_log_p, real_update, real_means = tc.log_likelihood, tc.assignment_update, tc.update_means

    def log_p(x, means, variance):
        seen["likelihood"].append((means.numpy().copy(), variance.numpy().copy()))
        return real_log_p(x, means, variance)

    def update(z, fixed, affinity, steps, neighbour_weight):
        out = real_update(z, fixed, affinity, steps, neighbour_weight)
        seen["updates"].append((steps, neighbour_weight, out[0].numpy().copy()))
        return out

    def means(*args, **kwargs):
        out = real_means(*args, **kwargs)
        seen["means"].append(out[0].numpy().copy())
        return out

    monkeypatch.setattr(tc, "log_likelihood", log_p)
    monkeypatch.setattr(tc, "assignment_update", update)
    monkeypatch.setattr(tc, "update_means", means)
    return seen


def test_fact_c_means_start_from_the_confident_eight_and_stay_unit(monkeypatch):
    """(c) first means: normalised mean of y_ic x_i over the 8 images most confident in c; every mean unit."""
    x, _, t = small_problem(seed=4)
    seen = spy_on_the_loop(monkeypatch)
    run_baseline("transclip", x, name_embeddings=t)
    first = seen["likelihood"][0][0]
    np.testing.assert_allclose(first, np_init_means(x.astype(np.float64), np_zero_shot(x, t)), atol=1e-5)
    assert len(seen["means"]) == 10
    for means in seen["means"] + [m for m, _ in seen["likelihood"]]:
        np.testing.assert_allclose(np.linalg.norm(means, axis=1), 1.0, atol=1e-5)
    # the update renormalises the z-weighted mean: same direction as sum_i z_ic x_i
    z = seen["updates"][0][2]
    want = z.T @ x.astype(np.float64)
    np.testing.assert_allclose(seen["means"][0], want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


def test_fact_d_eleven_updates_of_five_steps_variance_from_the_unit_means(monkeypatch):
    """(d) 10 rounds and a final assignment update (11 x 5 steps); variance 1/D first, then from unit means."""
    x, _, t = small_problem(seed=5)
    seen = spy_on_the_loop(monkeypatch)
    result = run_baseline("transclip", x, name_embeddings=t)
    assert [(steps, weight) for steps, weight, _ in seen["updates"]] == [(5, 1 / 6)] * 11
    assert len(seen["likelihood"]) == 11 and result.iterations == 55
    np.testing.assert_array_equal(seen["likelihood"][0][1], np.full(x.shape[1], 1 / x.shape[1], dtype=np.float32))
    x64 = x.astype(np.float64)
    for r in range(1, 11):
        means, variance = seen["likelihood"][r]
        z = seen["updates"][r - 1][2].astype(np.float64)
        diff = x64[:, None, :] - means[None].astype(np.float64)
        want = (z[:, :, None] * diff ** 2).sum(axis=(0, 1)) / len(x)
        np.testing.assert_allclose(variance, want, rtol=1e-4, atol=1e-7)


def np_transclip(x, t, idx, w, outer=10, inner=5, top=8, k=3, scale=50.0):
    """The released algorithm transcribed from issue 24's four facts, in float64."""
    x = x.astype(np.float64)
    n, d = x.shape
    y = np_zero_shot(x, t)
    a = dense_w(idx, w.astype(np.float64), n)
    both = a + a.T
    means, variance, z = np_init_means(x, y, top), np.full(d, 1.0 / d), y
    for r in range(outer + 1):
        log_p = np_log_p(x, means, variance)
        for _ in range(inner):
            scores = np.log(y) + (log_p + scale / (2 * k) * both @ z) / scale
            z = np_softmax(scores)
        if r == outer:
            break
        raw = z.T @ x / z.sum(axis=0)[:, None]
        means = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        variance = (z[:, :, None] * (x[:, None, :] - means[None]) ** 2).sum(axis=(0, 1)) / n
    return z, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_whole_run_equals_a_numpy_transcription(seed):
    x, _, t = small_problem(seed=seed)
    idx, w = knn_graph(x, 3)
    z, scores, _ = transclip(torch.from_numpy(x), torch.from_numpy(t), graph=(idx, w))
    want_z, want_scores = np_transclip(x, t, idx, w)
    np.testing.assert_allclose(z.numpy(), want_z, atol=1e-4)
    np.testing.assert_allclose(log_softmax(scores.numpy()), log_softmax(want_scores), atol=1e-3)
    assert 0.05 < want_z.max(axis=1).mean() < 0.999  # not a saturated case that any scaling would pass


def test_on_real_ph2_features_both_rows_match_the_numpy_transcription(shared_dir):
    """The real CLIP features (200 PH2 images): class-name and description prototypes, same labels as numpy."""
    from kpl.method.retrieval import split_by_class

    data = np.load(shared_dir / "datasets" / "features" / "ph2_vitb16.npz")
    x = unit(data["image_features"].astype(np.float64))  # stored from float16: renormalised, as kpl does
    classes = split_by_class(data["description_embeddings"], data["description_class"])
    descriptions = unit(np.stack([e.mean(axis=0) for e in classes]))
    idx, w = knn_graph(x, 3)
    for kwargs, prototypes in (({"name_embeddings": data["class_label_embeddings"]}, data["class_label_embeddings"]),
                               ({"class_embeddings": classes}, descriptions)):
        ours = run_baseline("transclip", x, graph=(idx, w), **kwargs)
        want_z, _ = np_transclip(x, prototypes, idx, w)
        assert (ours.predictions == want_z.argmax(axis=1)).mean() >= 0.99
        np.testing.assert_allclose(np.exp(log_softmax(ours.logits)), want_z, atol=1e-2)
