"""Shared fixtures: offline environment, the tiny CLIP model, shared test data, CLI runners."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / chromadb: never wait on a hub, never send telemetry.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from helpers import SHARED, CliRunner, build_tiny_clip_dir, in_ci, shared_data_missing, start_chroma_server, stop_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---- CI: a skip is a failure ------------------------------------------------------------------------
# Locally a test may skip (no Chromium, no ../shared); under CI=true that would let a broken setup
# pass, so the skip is reported as a failure with its reason. Only tests marked `gpu` may skip there
# (CI machines have no GPU). An expected failure (xfail) is not a skip and is left alone.

def _skip_allowed(item) -> bool:
    return item.get_closest_marker("gpu") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail") and not _skip_allowed(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (only @pytest.mark.gpu tests may skip): {reason}"


def pytest_collection_modifyitems(config, items):
    """A test that starts `chroma run` is a server test, and one that starts Ray a slow one, wherever
    it lives (make test-fast leaves both out)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "chroma_url" in fixtures:
            item.add_marker(pytest.mark.server)
        if "ray_cluster" in fixtures:
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (pytest.importorskip at the top) fails under CI too."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI=true: {reason}"


# ---- shared test data ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        shared_data_missing("../shared")
    return SHARED


@pytest.fixture(scope="session")
def kb_files(shared_dir) -> Path:
    folder = shared_dir / "datasets" / "kb"
    if not folder.is_dir():
        shared_data_missing("../shared/datasets/kb (curated test files)")
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random-weight CLIP saved as an open_clip ``local-dir:`` folder (the path users use)."""
    return build_tiny_clip_dir(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_model(tiny_clip_dir) -> str:
    return f"local-dir:{tiny_clip_dir}"


@pytest.fixture()
def clip_env(monkeypatch, tiny_model, tmp_path):
    """Point every CLIP-using command at the tiny model and a fresh store for this test."""
    monkeypatch.setenv("KPL_CLIP_MODEL", tiny_model)
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    monkeypatch.delenv("KBUILD_CHROMA_URL", raising=False)
    return tmp_path / "store"


@pytest.fixture()
def kbuild(capsys) -> CliRunner:
    """Run ``kbuild`` in-process: ``kbuild("list", "--json")`` -> result with code/out/err."""
    from kbuild.cli.app import app

    return CliRunner(app, "kbuild", capsys)


@pytest.fixture()
def kpl(capsys) -> CliRunner:
    """Run ``kpl`` in-process, like ``kbuild`` above."""
    from kpl.cli import app

    return CliRunner(app, "kpl", capsys)


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread in this module: its arrays are small, and on a 2-core machine shared
    with Chroma servers and child processes a second OpenMP thread spins on them (10x the CPU time of
    one thread, same results). Use: pytestmark = pytest.mark.usefixtures("one_thread")."""
    from kpl.method.core import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def forks(tmp_path_factory):
    """One fork server for the whole run (tests/forkserver.py): each ``forks.run`` is a real, fresh
    ``kbuild``/``kpl`` process that did not pay the 4-6 s of imports (see helpers.run_forked)."""
    import forkserver

    return forkserver.shared(tmp_path_factory.mktemp("forks"))


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    """A ``chroma run`` server on 127.0.0.1 for one test module (fresh per module, so snapshot
    numbering in one module never depends on another); stopped by pid afterwards."""
    proc, url = start_chroma_server(tmp_path_factory.mktemp("chroma_server"))
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole test run (2 CPUs, no dashboard, no telemetry);
    ``--engine ray`` in this process reuses it, subprocesses join it by its address."""
    pytest.importorskip("ray", reason="Ray is absent: pip install 'kpl-toolkit[distributed]'")
    from kpl.images.ray_engine import import_ray

    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
