"""KPL at scale: the row-block paths (proxy loop, description scores) give the whole-matrix numbers
to float32 summation order, so a million images run in bounded memory without changing results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kpl.method.retrieval as retrieval
from kbuild.errors import KbuildError
from kpl.method.proxies import ProxyLoop, fit_vision_proxies

pytestmark = pytest.mark.usefixtures("one_thread")  # small arrays: a second thread only spins (conftest)


def unit(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32))


def clustered(n=2000, d=32, c=5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d))
    labels = rng.integers(0, c, n)
    x = unit(centers[labels] + rng.standard_normal((n, d)) * 1.5)
    w = unit(centers + rng.standard_normal((c, d)) * 0.8).T.contiguous()
    return x, w


def test_row_block_proxy_loop_matches_the_whole_matrix_loop():
    x, w = clustered()
    plan = torch.softmax(x @ w / 0.01, dim=1)
    kwargs = dict(tau_i=0.04, alpha=0.6, lr=10.0, iters=150, exact_iters=True)
    whole = fit_vision_proxies(x, plan, w, ProxyLoop(**kwargs))
    blocks = fit_vision_proxies(x, plan, w, ProxyLoop(chunk_rows=257, **kwargs))  # uneven last block on purpose
    assert whole.iterations == blocks.iterations == 150
    assert (whole.proxies - blocks.proxies).abs().max() < 1e-4
    assert torch.equal((x @ whole.proxies).argmax(1), (x @ blocks.proxies).argmax(1))
    # and the blocks really were used: a single block is the whole-matrix path, bit for bit
    single = fit_vision_proxies(x, plan, w, ProxyLoop(chunk_rows=x.shape[0], **kwargs))
    assert torch.equal(single.proxies, whole.proxies)


def test_row_block_scores_match(monkeypatch):
    x, _ = clustered(n=2000, d=16)
    e = unit(np.random.default_rng(1).standard_normal((7, 16)))
    whole = retrieval.description_scores(x, [e])[0]
    monkeypatch.setattr(retrieval, "SCORE_CHUNK_ELEMENTS", 7 * 300)  # blocks of 37 rows
    blocks = retrieval.description_scores(x, [e])[0]
    assert blocks.dtype == torch.float32 and (whole - blocks).abs().max() < 1e-6
    assert torch.equal(torch.argsort(whole), torch.argsort(blocks))


def test_row_block_checks_name_the_bad_row_of_the_whole_matrix(monkeypatch):
    monkeypatch.setattr(retrieval, "SCORE_CHUNK_ELEMENTS", 16 * 10)  # blocks of 1 row
    x, _ = clustered(n=300, d=16)
    x[123, 4] = float("nan")
    x[200] = 0
    with pytest.raises(KbuildError, match=r"NaN/inf in 1 row\(s\), first row 123;"):
        retrieval.as_matrix(x, "image_features")
    x[123, 4] = 0.5
    with pytest.raises(KbuildError, match=r"1 all-zero row\(s\), first row 200;"):
        retrieval.as_matrix(x, "image_features")
