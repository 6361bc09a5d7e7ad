"""Long work reports progress on stderr (counts and an ETA), and cheap checks run before any embedding."""

from __future__ import annotations

import json

import pytest

from kbuild import progress
from kbuild.cli import progress as cli_progress

pytestmark = pytest.mark.usefixtures("clip_env")


@pytest.fixture()
def big_kb(tmp_path):
    kb = {f"class {c}": [f"trait {c} number {i}" for i in range(300)] for c in range(8)}  # 2400 texts
    path = tmp_path / "big.json"
    path.write_text(json.dumps(kb))
    return path


def test_load_prune_diff_report_plain_progress(kbuild, big_kb, monkeypatch):
    monkeypatch.setattr(cli_progress, "PLAIN_EVERY_S", 0.0)  # every update prints a line
    loaded = kbuild("load", big_kb)
    assert loaded.code == 0, loaded.err
    lines = loaded.err.splitlines()
    assert "embedding texts: 1024/2400 (43%)" in "\n".join(lines) and any(" s left" in l for l in lines)
    assert any(l.startswith("embedding texts: 2400/2400 (100%), done in") for l in lines)
    assert any(l.startswith("writing snapshot: 2400/2400 (100%), done in") for l in lines)
    pruned = kbuild("prune", "--max-per-class", "100")
    assert pruned.code == 0 and "pruning (stages): 7/7" in pruned.err and "reading snapshot_v1: " in pruned.err
    assert "reading snapshot_v2: " in kbuild("diff", "latest").err


def test_no_sink_no_output(capsys):
    with progress.task("quiet", 3) as t:
        t.advance(3)
    assert capsys.readouterr().err == ""


def test_taken_name_fails_before_clip_is_loaded(kbuild, tmp_path, monkeypatch):
    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"cat": ["whiskers", "a long tail", "soft fur"]}))
    assert kbuild("load", path, "--name", "derm").code == 0
    monkeypatch.setenv("KPL_CLIP_MODEL", "no-such-model-anywhere")  # loading CLIP would fail
    for args in (("load", path, "--name", "derm"), ("prune", "--name", "derm")):
        result = kbuild(*args)
        assert result.code == 1, result.err
        assert "'derm' already exists" in result.err and "no-such-model" not in result.err
