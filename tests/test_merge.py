"""`kbuild merge`: union of two snapshots, deduplicated by id, with both as parents."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("clip_env")


def _write(path, payload):
    path.write_text(json.dumps(payload))
    return path


def test_merge_is_union_without_duplicates(kbuild, tmp_path):
    kbuild("load", _write(tmp_path / "a.json", {"cat": ["whiskers", "a long tail"], "dog": ["a wet nose"]}))
    kbuild("load", _write(tmp_path / "b.json", {"cat": ["whiskers", "green eyes"], "bird": ["feathers"]}))
    result = kbuild("merge", "v1", "v2", "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload == {**payload, "from_first": 3, "from_second": 2, "shared": 1, "total": 5}
    merged = kbuild("export", "latest", "--format", "dclip").json()
    assert merged == {"cat": ["whiskers", "a long tail", "green eyes"], "dog": ["a wet nose"], "bird": ["feathers"]}
    manifest = kbuild("show", "latest", "--json").json()["manifest"]
    assert [p["name"] for p in manifest["parents"]] == ["snapshot_v1", "snapshot_v2"]
    assert kbuild("verify", "latest").code == 0


def test_merge_refuses_same_snapshot_and_unknown(kbuild, tmp_path):
    kbuild("load", _write(tmp_path / "a.json", {"cat": ["whiskers"]}))
    same = kbuild("merge", "v1", "latest")
    assert same.code == 2 and same.err.startswith("Error:")
    missing = kbuild("merge", "v1", "v9")
    assert missing.code == 1 and "snapshot_v1" in missing.err
    assert len(kbuild("list", "--json").json()) == 1
