"""StatA: TransCLIP with anchored means. One-sided batches, balanced ones, the anchor's formula, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kpl.peers.transclip as tc
from kpl import BASELINES, run_baseline
from kpl.errors import UsageError
from kpl.synthetic import clip_like_features


@pytest.fixture(scope="module")
def clip_like():
    return clip_like_features(4000, classes=10, seed=0)


def batch(data, present: int, n: int, seed: int = 1):
    x, y, t = data
    idx = np.random.default_rng(seed).choice(np.where(y < present)[0], n, replace=False)
    return x[idx], y[idx], t


def test_a_one_sided_batch_keeps_its_images_out_of_absent_classes(clip_like):
    """40 images of one class out of ten: TransCLIP hands many to classes that are not there; StatA far fewer."""
    x, y, t = batch(clip_like, present=1, n=40)
    plain = run_baseline("transclip", x, name_embeddings=t)
    anchored = run_baseline("stata", x, name_embeddings=t)
    assert anchored.name == "stata" and anchored.params["anchor"] == 2.0
    absent_plain, absent_anchored = (plain.predictions > 0).mean(), (anchored.predictions > 0).mean()
    assert absent_plain >= 0.3  # the failure StatA is for
    assert absent_anchored <= absent_plain - 0.15
    assert (anchored.predictions == y).mean() >= (plain.predictions == y).mean() + 0.15


def test_a_balanced_batch_stays_close_to_transclip(clip_like):
    x, y, t = batch(clip_like, present=10, n=256)
    plain = (run_baseline("transclip", x, name_embeddings=t).predictions == y).mean()
    anchored = (run_baseline("stata", x, name_embeddings=t).predictions == y).mean()
    assert abs(anchored - plain) <= 0.05


def test_no_anchor_is_transclip(clip_like):
    x, _, t = batch(clip_like, present=3, n=60)
    np.testing.assert_array_equal(run_baseline("stata", x, name_embeddings=t, anchor=0).logits,
                                  run_baseline("transclip", x, name_embeddings=t).logits)


def test_each_mean_is_pulled_to_its_own_prototype_by_alpha_images(monkeypatch, clip_like):
    """mu_c = normalise(alpha t_c + sum_i z_ic x_i), after every round, with t_c the class's prototype."""
    x, _, t = batch(clip_like, present=2, n=40)
    seen = []
    real = tc.update_means

    def spy(x_, z, previous, anchors=None, strength=0.0):
        out = real(x_, z, previous, anchors, strength)
        seen.append((z.numpy().copy(), anchors.numpy().copy(), strength, out[0].numpy().copy()))
        return out

    monkeypatch.setattr(tc, "update_means", spy)
    run_baseline("stata", x, name_embeddings=t, anchor=3.0)
    assert len(seen) == 10
    for z, anchors, strength, means in seen:
        np.testing.assert_array_equal(anchors, t)
        assert strength == 3.0
        want = 3.0 * t.astype(np.float64) + z.T.astype(np.float64) @ x.astype(np.float64)
        np.testing.assert_allclose(means, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


def test_the_pull_weakens_as_a_class_gathers_images():
    """Same anchor, same images: a class holding a tenth of an image sits near its anchor, one holding 100 not."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(100, 16)).astype(np.float32) + 3.0)  # far from the anchors
    x = x / x.norm(dim=1, keepdim=True)
    anchors = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(2, 16)).astype(np.float32)), dim=1)
    z = torch.zeros(100, 2)
    z[:, 0], z[:1, 1] = 1.0, 0.1  # class 0: 100 images; class 1: a tenth of one
    means, _, _ = tc.update_means(x, z, anchors, anchors, strength=2.0)
    to_anchor = (means * anchors).sum(dim=1)
    assert to_anchor[1] > 0.95 and to_anchor[0] < 0.2


def test_stata_bad_input_is_one_usage_error(clip_like):
    x, _, t = batch(clip_like, present=2, n=20)
    with pytest.raises(UsageError, match="stata: anchor must be a number >= 0"):
        run_baseline("stata", x, name_embeddings=t, anchor=-1)
    with pytest.raises(UsageError, match="Unknown stata parameter"):
        run_baseline("stata", x, name_embeddings=t, alpha=1)
    with pytest.raises(UsageError, match="Baseline 'stata' needs name_embeddings"):
        run_baseline("stata", x)


def test_descriptions_give_the_desc_prototype(clip_like):
    x, _, t = batch(clip_like, present=3, n=60)
    classes = [np.stack([row, row]) for row in t]  # two identical descriptions: their mean is the prototype
    by_desc = run_baseline("stata", x, class_embeddings=classes)
    assert by_desc.params["prototypes"] == "descriptions"
    np.testing.assert_array_equal(by_desc.predictions, run_baseline("stata", x, name_embeddings=t).predictions)


def test_the_registry_is_the_one_list_of_methods():
    """`kpl eval`'s methods and its --methods help follow BASELINES (the help is static: no torch at --help)."""
    from kpl.cli import MethodsOpt
    from kpl.evaluate import METHODS, PROTOTYPE_ROWS

    assert METHODS == tuple(BASELINES) and "stata" in METHODS
    help_text = MethodsOpt.__metadata__[0].help
    assert help_text.startswith("Comma list of " + ", ".join(BASELINES) + " ")
    assert PROTOTYPE_ROWS["stata"] == {"stata": "name_embeddings", "stata_desc": "class_embeddings"}
