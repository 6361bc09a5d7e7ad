"""The approximate (faiss) kNN graph against the exact one, backend choice, and faiss missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kpl.knn as knn
import kpl.transclip as transclip_module
from kpl import run_baseline
from kpl.errors import UsageError
from kpl.knn import knn_graph
from kpl.transclip import transclip

ROOT = Path(__file__).resolve().parents[1]


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n=3000, d=32, groups=60, seed=0):
    """Images around many small groups (like photos of the same kind of scene), plus noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(groups, d))
    members = rng.integers(0, groups, size=n)
    return unit(centers[members] + 1.0 * rng.normal(size=(n, d)))


def recall(exact: np.ndarray, approx: np.ndarray) -> float:
    return float((exact[:, :, None] == approx[:, None, :]).any(axis=2).mean())


@pytest.fixture(scope="module")
def faiss_graph():
    pytest.importorskip("faiss")
    x = clustered()
    lists = knn.index_lists(len(x))
    return x, knn_graph(x, 3, method="faiss", nprobe=max(1, lists // 4)), lists


def test_faiss_graph_finds_the_exact_neighbours(faiss_graph):
    x, (idx, w), lists = faiss_graph
    exact_idx, exact_w = knn_graph(x, 3, method="exact")
    assert idx.shape == (len(x), 3) and idx.dtype == np.int64 and w.dtype == np.float32
    assert recall(exact_idx, idx) >= 0.95
    # the data are hard enough that probing one list would miss neighbours
    assert recall(exact_idx, knn_graph(x, 3, method="faiss", nprobe=1)[0]) < 0.95
    assert not (idx == np.arange(len(x))[:, None]).any()  # never its own neighbour
    # the weights are the true cosines of the neighbours found, clamped at 0, best first
    cos = np.einsum("nd,nkd->nk", x, x[idx])
    np.testing.assert_allclose(w, np.clip(cos, 0, None), atol=1e-5)
    assert (np.diff(w, axis=1) <= 1e-6).all()
    # a neighbour it found is never better than the exact k-th one
    assert (w[:, -1] <= exact_w[:, -1] + 1e-5).all()


def test_faiss_graph_is_deterministic(faiss_graph):
    x, (idx, w), lists = faiss_graph
    again_idx, again_w = knn_graph(x, 3, method="faiss", nprobe=max(1, lists // 4))
    np.testing.assert_array_equal(idx, again_idx)
    np.testing.assert_array_equal(w, again_w)


def test_faiss_graph_on_tiny_inputs_and_few_probes():
    pytest.importorskip("faiss")
    x = unit(np.random.default_rng(2).normal(size=(5, 4)))
    idx, w = knn_graph(x, 10, method="faiss")  # k shrinks to N - 1, as in the exact graph
    assert idx.shape == (5, 4)
    assert all(sorted(row) == [j for j in range(5) if j != i] for i, row in enumerate(idx.tolist()))
    # one probed list rarely holds k other rows: those rows fall back to exact neighbours
    y = clustered(n=400, d=16, groups=40, seed=3)
    idx, w = knn_graph(y, 3, method="faiss", nprobe=1)
    assert not (idx == np.arange(len(y))[:, None]).any() and (idx >= 0).all()


def test_auto_uses_faiss_from_the_threshold_and_exact_without_faiss(monkeypatch):
    pytest.importorskip("faiss")
    x = unit(np.random.default_rng(4).normal(size=(2000, 32)))  # no clusters: some neighbours missed
    exact = knn_graph(x, 3, method="exact")
    approx = knn_graph(x, 3, method="faiss")
    assert knn.AUTO_FAISS_FROM > len(x)
    np.testing.assert_array_equal(knn_graph(x, 3)[0], exact[0])
    monkeypatch.setattr(knn, "AUTO_FAISS_FROM", len(x))
    np.testing.assert_array_equal(knn_graph(x, 3)[0], approx[0])
    assert not np.array_equal(approx[0], exact[0])  # else this test could not tell them apart
    monkeypatch.setattr(knn, "faiss_module", lambda: None)
    np.testing.assert_array_equal(knn_graph(x, 3)[0], exact[0])


def test_missing_faiss_gives_one_line_how_to_install():
    code = ("import sys; sys.modules['faiss'] = None\n"
            "import numpy as np\n"
            "from kpl.errors import UsageError\n"
            "from kpl.knn import knn_graph\n"
            "x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)\n"
            "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
            "print(np.array_equal(knn_graph(x, 2, method='auto')[0], knn_graph(x, 2, method='exact')[0]))\n"
            "try:\n    knn_graph(x, 1, method='faiss')\n"
            "except UsageError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "True"  # auto stays exact
    assert len(lines) == 2 and "pip install 'kpl-toolkit[scale]'" in lines[1]


@pytest.mark.parametrize("bad", [{"method": "annoy"}, {"nprobe": 0}, {"nprobe": 1.5}])
def test_bad_backend_settings(bad):
    with pytest.raises(UsageError, match="knn_graph"):
        knn_graph(np.eye(3, dtype=np.float32), 1, **bad)


def test_transclip_passes_the_backend_through():
    pytest.importorskip("faiss")
    x = clustered(n=600, d=16, groups=10, seed=5)
    names = unit(np.random.default_rng(6).normal(size=(4, 16)))
    via_param = run_baseline("transclip", x, name_embeddings=names, knn="faiss")
    via_graph = run_baseline("transclip", x, name_embeddings=names, graph=knn_graph(x, 3, method="faiss"))
    np.testing.assert_array_equal(via_param.logits, via_graph.logits)
    assert via_param.params["knn"] == "faiss"
    with pytest.raises(UsageError, match="knn must be one of"):
        run_baseline("transclip", x, name_embeddings=names, knn="annoy")


def test_transclip_squares_in_chunks_without_changing_the_result(monkeypatch):
    x = torch.from_numpy(clustered(n=300, d=16, groups=10, seed=7))
    names = torch.from_numpy(unit(np.random.default_rng(8).normal(size=(3, 16))))
    whole = transclip(x, names)[1]
    monkeypatch.setattr(transclip_module, "SQUARE_CHUNK", 7)
    torch.testing.assert_close(transclip(x, names)[1], whole, rtol=1e-5, atol=1e-4)
