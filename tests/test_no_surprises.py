"""No silent surprises (issue 21, problem 6): a repeated prune publishes nothing, classes that look
like one class under two names are reported and joined with ``--class-map``, an unknown snapshot
names the nearest ones and the count, and a count rule never prints a similarity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_store import make_draft

from kbuild.descriptions import Description
from kbuild.errors import SnapshotNotFound
from kbuild.sources.class_names import similar_classes, singular_key
from kbuild.store import RemovedRecord, SnapshotStore


@pytest.fixture()
def small_kb(tmp_path):
    kb = {"cat": ["whiskers", "pointed ears", "a long tail", "soft fur", "green eyes", "a small nose"],
          "dog": ["floppy ears", "a wet nose", "a wagging tail", "a loud bark", "a thick coat", "big paws"]}
    path = tmp_path / "kb.json"
    path.write_text(json.dumps(kb))
    return path


def names(kbuild) -> list[str]:
    return [s["name"] for s in kbuild("list", "--json").json()]


@pytest.mark.usefixtures("clip_env")
def test_pruning_the_same_snapshot_twice_publishes_once(kbuild, small_kb):
    assert kbuild("load", small_kb).code == 0
    first = kbuild("prune", "v1", "--max-per-class", "3", "--json")
    assert first.code == 0 and first.json()["snapshot"] == "snapshot_v2"
    again = kbuild("prune", "v1", "--max-per-class", "3", "--json")
    assert again.code == 0, again.err
    payload = again.json()
    assert payload["published"] is False and payload["snapshot"] == "snapshot_v2"
    assert "this prune of snapshot_v1 ran before: same content as snapshot_v2" in again.err
    assert "--force" in again.err
    assert names(kbuild) == ["snapshot_v1", "snapshot_v2"]
    other = kbuild("prune", "v1", "--max-per-class", "4", "--json")  # other settings, other content
    assert other.json()["snapshot"] == "snapshot_v3"
    forced = kbuild("prune", "v1", "--max-per-class", "3", "--force", "--json")
    assert forced.json()["published"] is True and forced.json()["snapshot"] == "snapshot_v4"


def test_unknown_snapshot_lists_the_nearest_names_and_the_count(tmp_path):
    store = SnapshotStore(tmp_path / "store")
    for k in range(12):
        store.publish(make_draft(tag=str(k)))
    store.tag("v3", "derm-final")
    with pytest.raises(SnapshotNotFound) as caught:
        store.resolve("v30")
    message = str(caught.value)
    assert "12 snapshots and 1 tags; nearest: snapshot_v12, snapshot_v11, snapshot_v10" in message
    with pytest.raises(SnapshotNotFound) as caught:
        store.resolve("v2x")  # not a number: by spelling, and the early snapshots are not cut off
    assert "nearest: snapshot_v2," in str(caught.value)
    with pytest.raises(SnapshotNotFound) as caught:
        store.resolve("derm-finl")
    assert "nearest: derm-final," in str(caught.value)


def test_a_count_rule_prints_its_count_not_a_similarity():
    d = Description("alpha", "ab")
    short = RemovedRecord(d, "sanitise", "too short (< 3 characters)", 2.0).explain()
    assert short == "sanitise: too short (< 3 characters): 2 characters" and "2.000" not in short
    long = RemovedRecord(d, "overlong", "over-long (80 > 77 tokens)", 80.0).explain()
    assert long == "overlong: over-long (80 > 77 tokens)"
    near = RemovedRecord(d, "near_duplicate", "near duplicate", 0.9534, "a b").explain()
    assert near == "near_duplicate: near duplicate (0.953) of 'a b'"


def test_similar_names_compare_only_the_classes_the_files_do_not_share():
    vectors = {"eft": [1, 0.1, 0], "newt": [1, 0.12, 0], "cat": [0, 1, 0], "dog": [0, 0, 1],
               "maillot": [0.5, 0.5, 0.7], "tights": [0.5, 0.5, 0.72], "horse": [0.1, -1, 0]}
    asked = []

    def encode(names):
        asked.append(list(names))
        return np.array([vectors[n] for n in names], dtype=float)

    pairs = similar_classes([["cat", "dog", "eft", "maillot"], ["cat", "dog", "newt", "tights", "Dogs"],
                             ["cat", "dog", "horse"]], encode)
    assert [(p.first, p.second, p.rule) for p in pairs] == [
        ("dog", "Dogs", "plural"), ("eft", "newt", "similar name"), ("maillot", "tights", "similar name")]
    assert len(asked) == 1 and "cat" not in asked[0] and "dog" not in asked[0]  # shared names cost nothing
    assert similar_classes([["cat", "eft"], ["cat", "eft"]], encode) == [] and len(asked) == 1
    assert singular_key("Golden_Retrievers") == singular_key("golden retriever") == "golden retriever"
    assert singular_key("butterflies") == "butterfly" and singular_key("bus") == "bus"


@pytest.mark.usefixtures("clip_env")
def test_load_reports_one_class_under_two_names_and_class_map_joins_them(kbuild, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"Golden Retriever": ["golden fur", "a friendly face"],
                                                 "cat": ["whiskers", "soft fur"]}))
    (tmp_path / "b.json").write_text(json.dumps({"golden_retrievers": ["a feathered tail"],
                                                 "cat": ["pointed ears"]}))
    loaded = kbuild("load", tmp_path / "a.json", tmp_path / "b.json", "--json")
    assert loaded.code == 0, loaded.err
    assert "may be one class under two names: Golden Retriever / golden_retrievers (plural)" in loaded.err
    assert "--class-map" in loaded.err
    similar = loaded.json()["import"]["similar_classes"]
    assert similar[0] == {"classes": ["Golden Retriever", "golden_retrievers"], "rule": "plural", "score": None}
    (tmp_path / "map.json").write_text(json.dumps({"golden_retrievers": "Golden Retriever"}))
    joined = kbuild("load", tmp_path / "a.json", tmp_path / "b.json", "--class-map", tmp_path / "map.json", "--json")
    assert joined.code == 0, joined.err
    assert "two names" not in joined.err
    counts = joined.json()["import"]["class_counts"]
    assert counts == {"Golden Retriever": 3, "cat": 3}
    manifest = kbuild("show", "latest", "--json").json()
    assert manifest["manifest"]["parameters"]["class_map"] == {"golden_retrievers": "Golden Retriever"}
