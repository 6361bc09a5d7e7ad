"""The ``kbuild`` CLI in-process, on the four shared curated files and a real embedded Chroma store.

A module-scoped store holds the four loads (v1 CuPL, v2 WaffleCLIP, v3 LaBo raw, v4 LaBo selected);
tests that change a store (tag, gc, round trips) use a fresh one of their own.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import cli_env, free_port, killed_before_publish, run_kbuild, run_subprocess, store_fingerprint
from kbuild.descriptions import Description, content_hash, normalise_text
from kbuild.store import RemovedRecord, SnapshotStore
from kbuild.store.manifest import SnapshotDraft

CUPL = "CuPL__food_prompts_full.json"
WAFFLE = "WaffleCLIP__descriptors_food101.json"
LABO_RAW = "LaBo__HAM10000_class2concepts.json"
LABO_SELECTED = "LaBo__HAM10000_selected_concepts.json"
DCLIP_EMPTY = ["donuts", "french fries", "fried calamari", "mussels", "oysters"]


def raw(kb_files: Path, name: str) -> dict[str, list[str]]:
    return json.loads((kb_files / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def kb(tmp_path_factory, kb_files, tiny_model):
    """One store with the four shared files loaded, in this order, as v1..v4."""
    home = tmp_path_factory.mktemp("cli") / "store"

    def run(*args):
        return run_kbuild(*args, "--store", home)

    loads = {name: run("load", kb_files / name, "--model", tiny_model, "--json")
             for name in (CUPL, WAFFLE, LABO_RAW, LABO_SELECTED)}
    for name, result in loads.items():
        assert result.code == 0, (name, result.err)
    return SimpleNamespace(home=home, run=run, loads=loads, files=kb_files, model=tiny_model)


def file_report(result) -> dict:
    (report,) = result.json()["import"]["files"]
    return report


# ---- load: the shared files' known counts ---------------------------------------------------------
def test_load_cupl_keeps_2957_of_3030_and_normalises_68(kb):
    result = kb.loads[CUPL]
    report = file_report(result)
    assert result.json()["snapshot"] == "snapshot_v1" and result.json()["total"] == 2957
    assert (report["raw_count"], report["kept_count"]) == (3030, 2957)
    assert sum(report["duplicates"].values()) == 73
    texts = [t for items in raw(kb.files, CUPL).values() for t in items]
    end_space = [t for t in texts if t != t.strip()]
    inner_newline = [t for t in texts if t == t.strip() and "\n" in t]
    assert (len(end_space), len(inner_newline)) == (66, 2)
    assert report["whitespace_fixed"] == 68
    assert "3030 texts -> 2957 kept; 73 exact duplicates collapsed; 68 whitespace-normalised" in result.err


def test_load_waffleclip_keeps_499_texts_in_96_classes_and_reports_5_empty(kb):
    result = kb.loads[WAFFLE]
    report = file_report(result)
    assert result.json()["total"] == 499 and report["raw_count"] == 499
    assert len(result.json()["import"]["class_counts"]) == 96
    assert sorted(report["empty_classes"]) == DCLIP_EMPTY
    assert "5 empty classes (donuts, french fries, fried calamari, mussels, oysters)" in result.err


def test_load_labo_raw_collapses_its_one_duplicate(kb):
    report = file_report(kb.loads[LABO_RAW])
    assert (report["raw_count"], report["kept_count"]) == (3063, 3062)
    assert sum(report["duplicates"].values()) == 1


def test_load_labo_selected_keeps_50_per_class(kb):
    counts = kb.loads[LABO_SELECTED].json()["import"]["class_counts"]
    assert sum(counts.values()) == 350 and set(counts.values()) == {50} and len(counts) == 7


def test_loaded_content_hash_is_the_hash_of_the_normalised_file(kb):
    data = raw(kb.files, LABO_RAW)
    pairs = {(c, normalise_text(t)) for c, items in data.items() for t in items}
    assert kb.loads[LABO_RAW].json()["content_hash"] == content_hash(pairs)


# ---- list ---------------------------------------------------------------------------------------
def test_list_json_shows_provenance_of_every_snapshot(kb):
    listed = kb.run("list", "--json").json()
    assert [s["name"] for s in listed] == ["snapshot_v1", "snapshot_v2", "snapshot_v3", "snapshot_v4"]
    assert [s["manifest"]["parameters"]["files"] for s in listed] == [[CUPL], [WAFFLE], [LABO_RAW], [LABO_SELECTED]]
    model_ids = {s["manifest"]["clip"]["model_id"] for s in listed}
    assert len(model_ids) == 1 and model_ids.pop().startswith("local-dir:")
    assert listed[-1]["tags"] == ["latest"]
    assert all(s["manifest"]["clip"]["pretrained"] is None for s in listed)  # local-dir carries its weights


def test_list_table_shows_file_names_model_id_and_latest(kb):
    out = kb.run("list").out
    model_id = kb.run("list", "--json").json()[0]["manifest"]["clip"]["model_id"]
    rows = out.strip().splitlines()[1:]
    assert len(rows) == 4
    for row, name in zip(rows, (CUPL, WAFFLE, LABO_RAW, LABO_SELECTED)):
        assert name in row and model_id in row
    assert "latest" in rows[-1] and "latest" not in rows[0]


# ---- diff ---------------------------------------------------------------------------------------
def test_diff_labo_selected_is_a_per_class_subset_of_raw(kb):
    result = kb.run("diff", "v3", "v4", "--json")
    assert result.code == 0
    diff = result.json()
    assert diff["added_classes"] == {} and diff["removed_classes"] == {}
    assert diff["summary"]["classes_modified"] == 7
    for change in diff["modified_classes"]:
        new_texts = change["added"] + [pair["new"] for pair in change["reworded"]]
        assert new_texts == [], change["class_name"]  # every selected concept is already in raw
    assert diff["summary"]["descriptions_removed"] == 3062 - 350
    labo_raw, selected = raw(kb.files, LABO_RAW), raw(kb.files, LABO_SELECTED)
    assert all(set(selected[c]) <= set(labo_raw[c]) for c in selected)


def test_diff_labo_finds_no_rewording_even_at_the_lowest_threshold(kb):
    diff = kb.run("diff", "v3", "v4", "--json", "--reword-threshold", "-1").json()
    assert diff["summary"]["descriptions_reworded"] == 0 and diff["summary"]["descriptions_added"] == 0


def test_diff_reword_threshold_above_one_is_a_usage_error(kb):
    result = kb.run("diff", "v3", "v4", "--reword-threshold", "1.01")
    assert result.code == 2 and "Traceback" not in result.err


def test_diff_cupl_to_dclip_shares_101_keys_and_drops_the_5_empty_classes(kb):
    diff = kb.run("diff", "v1", "v2", "--json").json()
    assert diff["added_classes"] == {}
    assert sorted(diff["removed_classes"]) == DCLIP_EMPTY
    assert diff["summary"]["classes_modified"] == 96
    cupl, dclip = raw(kb.files, CUPL), raw(kb.files, WAFFLE)
    assert set(cupl) == set(dclip) and len(cupl) == 101
    for change in diff["modified_classes"]:
        old = {normalise_text(t) for t in cupl[change["class_name"]]}
        new = {normalise_text(t) for t in dclip[change["class_name"]]}
        reworded = change["reworded"]
        assert sorted(change["added"] + [r["new"] for r in reworded]) == sorted(new - old)
        assert sorted(change["removed"] + [r["old"] for r in reworded]) == sorted(old - new)
        assert all(r["similarity"] >= 0.9 for r in reworded)


def test_diff_dclip_to_cupl_adds_the_5_classes_back(kb):
    diff = kb.run("diff", "v2", "v1", "--json").json()
    assert sorted(diff["added_classes"]) == DCLIP_EMPTY and diff["removed_classes"] == {}
    assert all(len(texts) == len(set(texts)) > 0 for texts in diff["added_classes"].values())


def test_diff_text_is_grouped_sorted_and_ends_with_the_summary(kb):
    lines = kb.run("diff", "v1", "v2").out.strip().splitlines()
    diff = kb.run("diff", "v1", "v2", "--json").json()
    removed = [line for line in lines if line.startswith("Removed class: ")]
    assert removed == [f"Removed class: {name} (" + str(len(diff["removed_classes"][name])) + " descriptions)"
                       for name in DCLIP_EMPTY]
    modified = [line[len("Modified class: "):] for line in lines if line.startswith("Modified class: ")]
    assert modified == sorted(modified) and len(modified) == 96
    assert lines.index(removed[-1]) < lines.index(f"Modified class: {modified[0]}")
    c = diff["summary"]
    assert lines[-1] == (f"snapshot_v1 -> snapshot_v2: classes: {c['classes_added']} added, "
                         f"{c['classes_removed']} removed, {c['classes_modified']} modified; descriptions: "
                         f"{c['descriptions_added']} added, {c['descriptions_removed']} removed, "
                         f"{c['descriptions_reworded']} reworded")


def test_diff_of_a_snapshot_with_itself_prints_nothing(kb):
    for args in (("diff", "v4", "v4"), ("diff", "latest", "snapshot_v4", "--json")):
        result = kb.run(*args)
        assert (result.code, result.out.strip()) in ((0, ""), (0, "{}"))


def test_diff_without_a_parent_asks_for_two_snapshots(kb):
    result = kb.run("diff", "v1")
    assert result.code == 2 and "no parent" in result.err


# ---- show, export, verify ---------------------------------------------------------------------------
def test_show_one_class_lists_its_descriptions(kb):
    out = kb.run("show", "v4", "--class", "melanoma").out
    items = [line[4:] for line in out.splitlines() if line.startswith("  - ")]
    assert "melanoma (50)" in out and sorted(items) == sorted(raw(kb.files, LABO_SELECTED)["melanoma"])


def test_show_json_carries_manifest_and_descriptions(kb):
    shown = kb.run("show", "latest", "--json").json()
    assert shown["name"] == "snapshot_v4" and len(shown["descriptions"]) == 350 and shown["removed"] == []
    assert shown["manifest"]["content_hash"] == kb.loads[LABO_SELECTED].json()["content_hash"]


def test_export_csv_has_a_row_per_description(kb):
    rows = list(csv.reader(io.StringIO(kb.run("export", "v3", "--format", "csv").out)))
    assert rows[0] == ["class", "text", "source", "id"] and len(rows) == 3063
    assert {r[2] for r in rows[1:]} == {f"curated:{LABO_RAW}"}


def test_export_json_carries_manifest_and_provenance(kb):
    payload = kb.run("export", "v2", "--format", "json").json()
    assert payload["snapshot"] == "snapshot_v2" and len(payload["descriptions"]) == 499
    assert payload["manifest"]["parameters"]["files"] == [WAFFLE]
    assert any("crème fraiche" in d["text"] for d in payload["descriptions"])


@pytest.mark.parametrize("fmt", ["dclip", "csv"])
@pytest.mark.slow
def test_export_then_load_reproduces_the_content_hash(kb, tmp_path, fmt):
    target = tmp_path / f"cupl_export.{'json' if fmt == 'dclip' else 'csv'}"
    exported = kb.run("export", "v1", "--format", fmt, "-o", target)
    assert exported.code == 0 and exported.out == ""
    other = tmp_path / "other"
    shutil.copytree(kb.home / "cache", other / "cache")  # the text-embedding cache: no text is encoded twice
    reloaded = run_kbuild("load", target, "--model", kb.model, "--store", other, "--json")
    assert reloaded.code == 0, reloaded.err
    assert reloaded.json()["content_hash"] == kb.loads[CUPL].json()["content_hash"]
    assert reloaded.json()["total"] == 2957


def test_verify_passes_for_every_loaded_snapshot(kb):
    for ref in ("v1", "v2", "v3", "v4"):
        result = kb.run("verify", ref, "--json")
        assert result.code == 0 and result.json()["ok"] is True, result.out


def test_verify_text_says_ok_with_the_hash(kb):
    out = kb.run("verify", "v2").out.strip()
    assert out == f"snapshot_v2: OK {kb.loads[WAFFLE].json()['content_hash']}"


def test_path_reports_where_everything_lives(kb):
    paths = kb.run("path", "--json").json()
    assert paths["home"] == str(kb.home.resolve())
    assert paths["chroma"] == str((kb.home / "chroma").resolve())
    url = "http://127.0.0.1:9"
    assert kb.run("path", "--json", "--chroma-url", url).json()["chroma"] == url


# ---- commands that change a store, each on a fresh one ----------------------------------------------
def load_selected(kbuild, kb_files, *extra):
    result = kbuild("load", kb_files / LABO_SELECTED, "--json", *extra)
    assert result.code == 0, result.err
    return result.json()


def test_loading_the_same_file_twice_gives_an_empty_diff(clip_env, kbuild, kb_files):
    first, same = load_selected(kbuild, kb_files), load_selected(kbuild, kb_files)
    assert same["published"] is False and same["snapshot"] == "snapshot_v1"  # said, not published
    second = load_selected(kbuild, kb_files, "--force")
    assert first["content_hash"] == second["content_hash"] and second["snapshot"] == "snapshot_v2"
    result = kbuild("diff", "v1", "v2")
    assert (result.code, result.out) == (0, "")
    assert kbuild("diff", "v1", "v2", "--json").json() == {}


def test_tag_sets_moves_and_resolves(clip_env, kbuild, kb_files):
    load_selected(kbuild, kb_files)
    load_selected(kbuild, kb_files, "--name", "derm_second", "--force")
    assert kbuild("tag", "v1", "reviewed").out.strip() == "reviewed -> snapshot_v1"
    assert kbuild("tag", "derm_second", "reviewed").out.strip() == "reviewed -> derm_second (moved from snapshot_v1)"
    assert kbuild("show", "reviewed", "--json").json()["name"] == "derm_second"
    tags = {s["name"]: s["tags"] for s in kbuild("list", "--json").json()}
    assert tags == {"snapshot_v1": [], "derm_second": ["latest", "reviewed"]}


def test_tag_refuses_a_reference_shaped_tag(clip_env, kbuild, kb_files):
    load_selected(kbuild, kb_files)
    result = kbuild("tag", "v1", "v2")
    assert result.code == 2 and result.err.startswith("Error:")


def test_load_to_an_existing_name_is_refused_with_a_hint(clip_env, kbuild, kb_files):
    load_selected(kbuild, kb_files, "--name", "derm")
    before = store_fingerprint(clip_env)
    result = kbuild("load", kb_files / WAFFLE, "--name", "derm")
    assert result.code == 1 and "already exists" in result.err and "--name" in result.err
    assert store_fingerprint(clip_env) == before


def test_gc_removes_an_unfinished_write(clip_env, kbuild, kb_files, monkeypatch):
    load_selected(kbuild, kb_files)

    with killed_before_publish(monkeypatch):
        kbuild("load", kb_files / WAFFLE)
    assert any(n.startswith("kbuild-tmp-") for n in store_fingerprint(clip_env)["collections"])
    assert [s["name"] for s in kbuild("list", "--json").json()] == ["snapshot_v1"]
    assert kbuild("gc").out.splitlines()[0] == "removed 1 unfinished write(s)"
    assert store_fingerprint(clip_env)["collections"] == ["snapshot_v1"]
    assert kbuild("gc").out.strip() == "removed 0 unfinished write(s)"


def test_show_removed_lists_each_removal_with_its_reason(clip_env, kbuild, kb_files):
    kept = [Description("melanoma", "asymmetric dark lesion"), Description("melanoma", "irregular border")]
    gone = [RemovedRecord(Description("melanoma", "come back"), "filter", "not visual", 0.125)]
    store = SnapshotStore(clip_env)
    store.publish(SnapshotDraft(kept, np.eye(3, dtype=np.float32)[:2], "review", {}, {"model_id": "x"},
                                removed=gone, removed_embeddings=np.eye(3, dtype=np.float32)[2:]))
    out = kbuild("show", "v1", "--removed").out
    assert "- [melanoma] 'come back': filter: not visual (0.125)" in out
    assert "asymmetric" not in out


def test_verify_fails_with_one_error_line_after_tampering(clip_env, kbuild, kb_files):
    load_selected(kbuild, kb_files)
    store = SnapshotStore(clip_env)
    collection = store.client.get_collection("snapshot_v1")
    first = collection.get(limit=1, include=["documents", "embeddings"])
    collection.update(ids=first["ids"], documents=["something else entirely"], embeddings=first["embeddings"])
    result = kbuild("verify", "v1")
    assert result.code == 1 and "FAILED" in result.out
    assert re.fullmatch(r"Error: snapshot_v1 failed verification: content hash mismatch.*\n", result.err)


# ---- errors: one line, the right exit code, no traceback, store unchanged --------------------------------
def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_cases(tmp_path: Path, kb_files: Path) -> dict:
    bad_json = write(tmp_path, "broken.json", '{\n  "melanoma": ["dark"],\n  "nevus": ["round",]\n}\n')
    bad_csv = write(tmp_path, "broken.csv", "class,text\nmelanoma,dark\nnevus\n")
    good = kb_files / LABO_SELECTED
    return {
        "missing snapshot": (("show", "v99"), 1, "Unknown snapshot 'v99'.*Available: snapshot_v1, snapshot_v2"),
        "missing tag": (("export", "nosuchtag"), 1, "Unknown snapshot 'nosuchtag'.*snapshot_v4"),
        "malformed json": (("load", bad_json), 1, r"broken\.json: not valid JSON.*line 3"),
        "malformed csv": (("load", bad_csv), 1, r"broken\.csv: line 3: 1 column"),
        "unknown load format": (("load", good, "--format", "yaml"), 2, "Unknown format 'yaml'. Available: csv, cupl"),
        "unknown export format": (("export", "v1", "--format", "xml"), 2, "Available: json, csv, dclip"),
        "path-like name": (("load", good, "--name", "../escape"), 2, "looks like a path"),
        "absolute path name": (("load", good, "--name", "/abs/path"), 2, "looks like a path"),
        "ip-like name": (("load", good, "--name", "10.1.2.3"), 2, "IP address"),
        "path-like reference": (("show", "../v1"), 2, "looks like a path"),
        "unreachable server": (("list", "--chroma-url", f"http://127.0.0.1:{free_port()}"), 1,
                               "Cannot reach the Chroma server"),
        "unreachable server on load": (("load", good, "--chroma-url", f"http://127.0.0.1:{free_port()}"), 1,
                                       "Cannot reach the Chroma server"),
        "unknown clip model": (("load", good, "--model", "NoSuchModel-B-99"), 2,
                               "Unknown CLIP model 'NoSuchModel-B-99'"),
        "missing checkpoint": (("load", good, "--model", "ViT-B-32", "--pretrained", tmp_path / "none.pt"), 2,
                               "checkpoint file not found"),
        "unknown pretrained tag": (("load", good, "--model", "ViT-B-32", "--pretrained", "no-such-tag"), 1,
                                   "Could not load CLIP model ViT-B-32"),
        "unknown class": (("show", "v4", "--class", "nosuch"), 1, "Class 'nosuch' is not in snapshot_v4"),
        "existing name": (("load", good, "--name", "snapshot_v2"), 2, "reserved for automatic numbering"),
    }


ERROR_CASES = ["missing snapshot", "missing tag", "malformed json", "malformed csv", "unknown load format",
               "unknown export format", "path-like name", "absolute path name", "ip-like name", "path-like reference",
               "unreachable server", "unreachable server on load", "unknown clip model", "missing checkpoint",
               "unknown pretrained tag", "unknown class", "existing name"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_with_exit_code_and_leave_the_store_unchanged(kb, tmp_path, case):
    args, code, pattern = error_cases(tmp_path, kb.files)[case]
    if args[0] == "load" and "--model" not in args:
        args = (*args, "--model", kb.model)
    before = store_fingerprint(kb.home)
    result = kb.run(*args)
    assert result.code == code, result.err
    assert "Traceback" not in result.err and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.err
    assert re.search(pattern, lines[0]), lines[0]
    assert store_fingerprint(kb.home) == before


@pytest.mark.slow
def test_errors_in_a_real_process_print_exactly_one_stderr_line(kb, tmp_path):
    """Beyond the in-process boundary: no library warning or traceback reaches a user's terminal."""
    env = cli_env(KBUILD_STORE=str(kb.home), KPL_CLIP_MODEL=kb.model)
    bad_json = write(tmp_path, "broken.json", '{\n  "melanoma": ["dark",]\n}\n')
    for args, code in ((("show", "v99"), 1), (("load", bad_json), 1), (("load", bad_json, "--name", "../x"), 2)):
        result = run_subprocess("kbuild", *args, env=env)
        assert result.code == code and result.out == "", result.err
        assert len(result.err.splitlines()) == 1 and result.err.startswith("Error: "), result.err
