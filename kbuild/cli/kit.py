"""What kpl's command line builds on: kbuild's one error boundary, the options both CLIs share,
and printing data safely. With store, clip, classes_file, inputs, errors, progress and diff, this
is the whole of kbuild that kpl reads (tests/test_architecture.py checks it)."""

from __future__ import annotations

from kbuild.cli.boundary import run_with_boundary
from kbuild.cli.options import ChromaUrlOpt, JsonOpt, ModelOpt, PretrainedOpt, StoreOpt
from kbuild.descriptions import visible
from kbuild.settings import ENV_KPL_CACHE

__all__ = ["ENV_KPL_CACHE", "ChromaUrlOpt", "JsonOpt", "ModelOpt", "PretrainedOpt", "StoreOpt",
           "run_with_boundary", "visible"]
