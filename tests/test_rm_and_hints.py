"""``kbuild rm``, "did you mean" for class names and exact ``--section`` names."""

from __future__ import annotations

import json

import pytest

from kbuild.errors import did_you_mean

pytestmark = pytest.mark.usefixtures("clip_env")


@pytest.fixture()
def three(kbuild, tmp_path):
    for k in range(3):
        path = tmp_path / f"kb{k}.json"
        path.write_text(json.dumps({"melanoma": [f"trait {k} {i}" for i in range(40)], "nevus": ["round", "brown"]}))
        assert kbuild("load", path).code == 0
    assert kbuild("prune", "v1", "--max-per-class", "5").code == 0  # snapshot_v4, child of v1
    assert kbuild("tag", "v2", "reviewed").code == 0


def test_rm_refuses_tagged_and_parents_then_frees_disk(kbuild, three, clip_env):
    tagged = kbuild("rm", "v2")
    assert tagged.code == 1 and "snapshot_v2 is tagged reviewed; pass --force" in tagged.err
    parent = kbuild("rm", "v1")
    assert parent.code == 1 and "parent of snapshot_v4" in parent.err
    plain = kbuild("rm", "v3", "--json")
    assert plain.code == 0, plain.err
    assert plain.json()["removed"] == "snapshot_v3" and plain.json()["freed_bytes"] > 0
    forced = kbuild("rm", "v2", "--force")
    assert forced.code == 0 and "tags removed with it: reviewed" in forced.err
    listed = kbuild("list", "--json").json()
    assert [s["name"] for s in listed] == ["snapshot_v1", "snapshot_v4"]
    assert kbuild("show", "reviewed").code == 1
    # numbers are never reused: the next write is v5, not v2 or v3
    assert kbuild("prune", "v1", "--max-per-class", "6", "--force", "--json").json()["snapshot"] == "snapshot_v5"
    assert kbuild("verify", "v4").code == 0


def test_class_name_one_edit_away_is_suggested(kbuild, three):
    result = kbuild("show", "v1", "--class", "melanomma")
    assert result.code == 1 and "did you mean 'melanoma'?" in result.err
    assert "did you mean" not in kbuild("show", "v1", "--class", "psoriasis").err


def test_did_you_mean_edits():
    names = ["melanoma", "nevus", "Basal cell"]
    assert did_you_mean("melanom", names) == " (did you mean 'melanoma'?)"
    assert did_you_mean("nveus", names) == " (did you mean 'nevus'?)"  # swapped neighbours
    assert did_you_mean("basal cell", names) == " (did you mean 'Basal cell'?)"
    assert did_you_mean("nevi", names) == ""


def test_section_must_match_exactly(kbuild, tmp_path):
    path = tmp_path / "kpl.json"
    path.write_text(json.dumps({"Skin_Features": {"cat": [{"feature": "fur"}]},
                                "Lung_Features": {"dog": [{"feature": "nose"}]}}))
    result = kbuild("load", path, "--section", "Skin")
    assert result.code == 1 and "no section 'Skin' (did you mean 'Skin_Features'?)" in result.err
    assert "available: Skin_Features, Lung_Features" in result.err
    assert kbuild("load", path, "--section", "Skin_Features").code == 0
