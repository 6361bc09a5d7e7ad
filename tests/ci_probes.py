"""Probe tests for test_ci_rules.py. The file name keeps pytest from collecting it in a normal run;
test_ci_rules.py runs it by path in a child pytest, with and without CI=true."""

import os

import pytest

if os.environ.get("KPL_CI_PROBE") == "module":
    pytest.importorskip("kpl_probe_module_that_does_not_exist")


def test_passes():
    pass


def test_plain_skip():
    pytest.skip("probe: a plain skip")


@pytest.mark.gpu
def test_gpu_skip():
    pytest.skip("probe: no CUDA GPU")


@pytest.mark.xfail(strict=True, reason="probe: an expected failure")
def test_expected_failure():
    raise AssertionError("probe: fails on purpose")  # not ``assert False``: python -O would drop it
