"""Curated-file import: the four real files in ../shared/datasets/kb, then small made-up cases."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from kbuild.descriptions import normalise_text
from kbuild.errors import InputFileError, KbuildError, UsageError
from kbuild.sources.curated import ImportLimits, load_curated

LABO_RAW = "LaBo__HAM10000_class2concepts.json"
LABO_SELECTED = "LaBo__HAM10000_selected_concepts.json"
DCLIP_FOOD = "WaffleCLIP__descriptors_food101.json"
CUPL_FOOD = "CuPL__food_prompts_full.json"
HAM_CLASSES = ["actinic keratoses", "basal cell carcinoma", "benign keratosis-like lesions",
               "dermatofibroma", "melanocytic nevi", "melanoma", "vascular lesions"]
EMPTY_DCLIP = ["donuts", "french fries", "fried calamari", "mussels", "oysters"]


@pytest.fixture(scope="module")
def kb(kb_files) -> Path:
    return kb_files


def texts_by_class(result) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for d in result.descriptions:
        grouped.setdefault(d.class_name, []).append(d.text)
    return grouped


def check_accounting(result) -> None:
    """Every raw string is kept or counted under exactly one reason."""
    for r in result.files:
        removed = (sum(r.duplicates.values()) + sum(r.cross_file_duplicates.values())
                   + len(r.empty_strings) + r.dropped_texts)
        assert r.raw_count == r.kept_count + removed, r.summary_line()
    assert sum(r.kept_count for r in result.files) == len(result.descriptions)
    assert len({d.id for d in result.descriptions}) == len(result.descriptions)


# --- real files ---------------------------------------------------------------------------

def test_labo_raw_has_7_classes_and_one_in_class_duplicate(kb):
    result = load_curated([kb / LABO_RAW])
    (report,) = result.files
    assert report.format == "dclip"
    assert report.classes == HAM_CLASSES
    assert report.raw_count == 3063
    assert report.duplicates == {"melanocytic nevi": 1}
    assert report.kept_count == 3062
    assert texts_by_class(result)["melanocytic nevi"].count("develop into skin lesions") == 1
    assert report.sha256 == "3e433a22e1e4686899740b35def21488bde23d28dbe5ff1513bb8e7192a0ed84"
    check_accounting(result)


def test_labo_selected_is_50_per_class_and_a_subset_of_raw(kb):
    raw = texts_by_class(load_curated([kb / LABO_RAW]))
    selected = texts_by_class(load_curated([kb / LABO_SELECTED], format="labo"))
    assert list(selected) == HAM_CLASSES
    for name, texts in selected.items():
        assert len(texts) == 50, name
        assert set(texts) <= set(raw[name]), name  # same class's raw list, not another's
    owners = Counter(text for texts in selected.values() for text in set(texts))
    assert max(owners.values()) == 1  # no phrase shared across classes


def test_labo_raw_then_selected_collapses_every_selected_item_across_files(kb):
    result = load_curated([kb / LABO_RAW, kb / LABO_SELECTED])
    raw_report, selected_report = result.files
    assert selected_report.kept_count == 0
    assert selected_report.cross_file_duplicates == {name: 50 for name in HAM_CLASSES}
    assert selected_report.duplicates == {}
    assert len(result.descriptions) == 3062
    check_accounting(result)


def test_dclip_and_cupl_food101_share_the_same_101_class_keys(kb):
    dclip = load_curated([kb / DCLIP_FOOD]).files[0]
    cupl = load_curated([kb / CUPL_FOOD]).files[0]
    assert len(dclip.classes) == len(cupl.classes) == 101
    assert set(dclip.classes) == set(cupl.classes)


def test_dclip_empty_classes_are_reported_and_absent(kb):
    result = load_curated([kb / DCLIP_FOOD])
    (report,) = result.files
    assert report.raw_count == report.kept_count == 499
    assert report.empty_classes == EMPTY_DCLIP
    assert not set(EMPTY_DCLIP) & set(result.class_counts())
    assert len(result.class_counts()) == 96
    assert "5 empty classes (donuts, french fries" in result.summary_lines()[0]


def test_dclip_non_ascii_survives_as_utf8(kb):
    result = load_curated([kb / DCLIP_FOOD])
    texts = [d.text for d in result.descriptions]
    assert "a dollop of sour cream or crème fraiche" in texts
    dumped = json.dumps(result.to_json(include_descriptions=True), ensure_ascii=False)
    assert "crème fraiche" in dumped.encode("utf-8").decode("utf-8")


def test_cupl_duplicates_whitespace_and_short_fragments(kb):
    raw = json.loads((kb / CUPL_FOOD).read_text(encoding="utf-8"))
    result = load_curated([kb / CUPL_FOOD], format="cupl")
    (report,) = result.files
    assert report.raw_count == 3030
    assert sum(report.duplicates.values()) == 73
    assert report.kept_count == 2957
    # SOURCES.md counts 66 strings with whitespace at the ends; normalise_text also collapses
    # the inner newlines of two more (bullet lists under 'cup cakes' and 'garlic bread').
    edge = [t for texts in raw.values() for t in texts if t != t.strip()]
    inner = [(c, t) for c, texts in raw.items() for t in texts
             if t == t.strip() and re.search(r"\s{2,}|[\n\t]", t)]
    assert len(edge) == 66
    assert [c for c, _ in inner] == ["cup cakes", "garlic bread"]
    assert report.whitespace_fixed == 68
    # Short fragments such as "." are kept (pruning is a later, separate step).
    short = {(c, normalise_text(t)) for c, texts in raw.items() for t in texts if len(t.strip()) < 5}
    kept = {(d.class_name, d.text) for d in result.descriptions}
    assert short and short <= kept
    check_accounting(result)


def test_cupl_duplicates_are_the_same_before_and_after_normalising(kb):
    """The documented choice (dedup after normalising) gives SOURCES.md's 73 on this file."""
    raw = json.loads((kb / CUPL_FOOD).read_text(encoding="utf-8"))
    before = sum(len(t) - len(set(t)) for t in raw.values())
    after = sum(len(t) - len({normalise_text(x) for x in t}) for t in raw.values())
    assert before == after == 73


def test_descriptions_carry_provenance(kb):
    result = load_curated([kb / DCLIP_FOOD, kb / CUPL_FOOD], created="2025-01-02T03:04:05+00:00")
    first, last = result.descriptions[0], result.descriptions[-1]
    assert first.source == f"curated:{DCLIP_FOOD}"
    assert last.source == f"curated:{CUPL_FOOD}"
    assert first.extra == {"format": "dclip", "file_sha256":
                           "b7393ceb850bd4f0d4a06ef3a30bb81cb41fd3a43e2a0adccf9e95a903a65d91"}
    assert last.extra["file_sha256"] == "67cb17f323b7f0726e4b152224365fda289658ff92b0d14ee264910a16af96dc"
    assert {d.created for d in result.descriptions} == {"2025-01-02T03:04:05+00:00"}
    assert len(result.descriptions) == 499 + 2957
    check_accounting(result)


def test_default_created_is_one_utc_timestamp(kb):
    result = load_curated([kb / LABO_SELECTED])
    stamps = {d.created for d in result.descriptions}
    assert stamps == {result.created}
    assert result.created.endswith("+00:00")


def test_class_list_check_on_real_file(kb):
    wanted = HAM_CLASSES[:-1] + ["not a lesion"]
    with pytest.raises(KbuildError, match="vascular lesions.*--restrict"):
        load_curated([kb / LABO_SELECTED], classes=wanted)
    result = load_curated([kb / LABO_SELECTED], classes=wanted, restrict=True)
    assert result.dropped_classes == ["vascular lesions"]
    assert result.files[0].dropped_texts == 50
    assert result.missing_classes == ["not a lesion"]
    assert "vascular lesions" not in result.class_counts()
    check_accounting(result)


# --- small made-up files ------------------------------------------------------------------

def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def kpl_file(tmp_path: Path, sections: dict) -> Path:
    body = {name: {c: [{"feature": t} for t in texts] for c, texts in classes.items()}
            for name, classes in sections.items()}
    return write(tmp_path / "kpl.json", json.dumps(body))


def test_kpl_single_section_is_used_automatically(tmp_path):
    path = kpl_file(tmp_path, {"HAM_Features": {"melanoma": ["dark", " dark "], "nevus": ["round"]}})
    result = load_curated([path])
    (report,) = result.files
    assert (report.format, report.section) == ("kpl", "HAM_Features")
    assert [(d.class_name, d.text) for d in result.descriptions] == [("melanoma", "dark"), ("nevus", "round")]
    assert report.duplicates == {"melanoma": 1}
    assert result.descriptions[0].extra["section"] == "HAM_Features"


def test_kpl_several_sections_need_a_choice(tmp_path):
    path = kpl_file(tmp_path, {"A_Features": {"x": ["one"]}, "B_Features": {"y": ["two"]}})
    with pytest.raises(KbuildError, match=r"A_Features, B_Features.*--section"):
        load_curated([path])
    with pytest.raises(KbuildError, match="no section 'B' \\(did you mean 'B_Features'\\?\\); available: A_Features, B_Features"):
        load_curated([path], section="B")  # exact names only: no quiet suffix match
    assert load_curated([path], section="B_Features").files[0].section == "B_Features"
    assert load_curated([path], section="A_Features").descriptions[0].text == "one"
    with pytest.raises(KbuildError, match="no section 'C'"):
        load_curated([path], section="C")


def test_kpl_item_without_feature_names_class_and_index(tmp_path):
    path = write(tmp_path / "k.json", json.dumps({"S_Features": {"x": [{"feature": "a"}, {"text": "b"}]}}))
    with pytest.raises(InputFileError, match=r"class 'x', index 1"):
        load_curated([path])


def test_section_for_non_kpl_inputs_is_a_usage_error(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"x": ["a"]}))
    with pytest.raises(UsageError, match="--section"):
        load_curated([path], section="A")


def test_csv_with_aliases_and_extra_columns(tmp_path):
    path = write(tmp_path / "kb.csv", 'id,Label,Description\n1,cat,"has  whiskers"\n\n2,dog,barks\n3,cat,\n')
    result = load_curated([path])
    (report,) = result.files
    assert report.format == "csv"
    assert [(d.class_name, d.text) for d in result.descriptions] == [("cat", "has whiskers"), ("dog", "barks")]
    assert report.whitespace_fixed == 1
    assert report.empty_strings == [("cat", 1)]


def test_csv_bad_row_reports_its_line(tmp_path):
    path = write(tmp_path / "kb.csv", 'class,text\ncat,"a\nmultiline"\ndog,barks\nbird\n')
    with pytest.raises(InputFileError, match=r"kb\.csv: line 5: 1 column"):
        load_curated([path])


def test_csv_without_text_column(tmp_path):
    path = write(tmp_path / "kb.csv", "class,words\ncat,x\n")
    with pytest.raises(InputFileError, match="no text column"):
        load_curated([path])


def test_jsonl_reads_and_reports_bad_line(tmp_path):
    good = write(tmp_path / "a.jsonl", '{"class": "cat", "text": "fur"}\n\n{"label": "dog", "description": "tail"}\n')
    assert [d.class_name for d in load_curated([good]).descriptions] == ["cat", "dog"]
    bad = write(tmp_path / "b.jsonl", '{"class": "cat", "text": "fur"}\n{"class": "dog", "text": }\n')
    with pytest.raises(InputFileError, match=r"b\.jsonl: line 2: not valid JSON"):
        load_curated([bad])
    number = write(tmp_path / "c.jsonl", '{"class": "cat", "text": 3}\n')
    with pytest.raises(InputFileError, match=r"line 1: class 'cat': text is a number"):
        load_curated([number])


def test_non_string_item_names_file_class_and_index(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"cat": ["fur", "whiskers", 7]}))
    with pytest.raises(InputFileError, match=r"d\.json: class 'cat', index 2: expected a string, found a number"):
        load_curated([path])


def test_class_value_must_be_a_list(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"cat": ["fur"], "dog": "barks"}))
    with pytest.raises(InputFileError, match="not a known curated shape"):
        load_curated([path])
    with pytest.raises(InputFileError, match=r"class 'dog': expected a list of strings, found a string"):
        load_curated([path], format="dclip")


def test_broken_json_reports_line_and_column(tmp_path):
    path = write(tmp_path / "d.json", '{\n  "cat": ["fur",\n  "dog": ["tail"]\n}\n')
    with pytest.raises(InputFileError, match=r"d\.json: not valid JSON: .* at line 3, column 8"):
        load_curated([path])


def test_repeated_class_key_is_refused(tmp_path):
    path = write(tmp_path / "d.json", '{"cat": ["fur"], "cat": ["tail"]}')
    with pytest.raises(InputFileError, match="'cat' appears twice"):
        load_curated([path])


def test_non_utf8_file_is_refused(tmp_path):
    path = write(tmp_path / "d.json", '{"cat": ["cr\xe8me"]}'.encode("latin-1"))
    with pytest.raises(InputFileError, match=r"d\.json: not UTF-8 text: byte 0xe8 at line 1"):
        load_curated([path])


def test_bom_is_accepted(tmp_path):
    path = write(tmp_path / "d.json", b"\xef\xbb\xbf" + json.dumps({"cat": ["fur"]}).encode())
    assert load_curated([path]).descriptions[0].text == "fur"


def test_unknown_format_lists_the_available_ones(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"cat": ["fur"]}))
    with pytest.raises(UsageError) as err:
        load_curated([path], format="yaml")
    assert str(err.value) == "Unknown format 'yaml'. Available: csv, cupl, dclip, jsonl, kbuild, kpl, labo"
    assert err.value.exit_code == 2


def test_empty_strings_and_whitespace_only_class(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"cat": ["fur", "  ", ""], "dog": ["\n\t"], "eel": []}))
    result = load_curated([path])
    (report,) = result.files
    assert report.empty_strings == [("cat", 1), ("cat", 2), ("dog", 0)]
    assert report.empty_classes == ["dog", "eel"]
    assert result.class_counts() == {"cat": 1}


def test_classes_matched_by_name_not_position(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"dog": ["barks"], "cat": ["fur"]}))
    result = load_curated([path], classes=["cat", "dog", "eel"])
    assert {(d.class_name, d.text) for d in result.descriptions} == {("cat", "fur"), ("dog", "barks")}
    assert result.missing_classes == ["eel"]
    assert "1 classes of the class list have no descriptions: eel" in result.summary_lines()


def test_unknown_classes_are_an_error_unless_restricted(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"cat": ["fur"], "dog": ["barks"]}))
    with pytest.raises(KbuildError, match=r"1 classes in d\.json are not in the class list: dog"):
        load_curated([path], classes=["cat"])
    result = load_curated([path], classes=["cat"], restrict=True)
    assert result.dropped_classes == ["dog"] and result.class_counts() == {"cat": 1}


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"cat": ["x" * 2000]}))
    with pytest.raises(InputFileError, match=r"is \d+ bytes, over the 1000 bytes limit"):
        load_curated([path], limits=ImportLimits(max_bytes=1000))


def test_missing_file_and_no_files(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_curated([tmp_path / "nope.json"])
    with pytest.raises(UsageError):
        load_curated([])


def test_autodetect_without_extension(tmp_path):
    lists = write(tmp_path / "a.txt", json.dumps({"cat": ["fur"]}))
    lines = write(tmp_path / "b.txt", '{"class": "cat", "text": "fur"}\n{"class": "dog", "text": "tail"}\n')
    table = write(tmp_path / "c.txt", "class,text\ncat,fur\n")
    formats = [r.format for r in load_curated([lists, lines, table]).files]
    assert formats == ["dclip", "jsonl", "csv"]


def test_to_json_round_trips(tmp_path):
    path = write(tmp_path / "d.json", json.dumps({"cat": ["fur", "fur", ""]}))
    data = json.loads(json.dumps(load_curated([path]).to_json()))
    assert data["files"][0]["duplicates"] == {"cat": 1}
    assert data["files"][0]["empty_strings"] == [["cat", 2]]
    assert data["total_descriptions"] == 1
