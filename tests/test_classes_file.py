"""Classes files and class maps: the accepted variants and each refusal with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbuild.classes_file import ClassEntry, parse_class_map, parse_classes_file
from kbuild.errors import InputFileError


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_plain_names_comments_and_blank_lines(tmp_path):
    path = write(tmp_path / "classes.txt", "# skin lesions\nmelanoma\n\n  nevus  \n#basal\n")
    assert parse_classes_file(path) == [ClassEntry("melanoma", "melanoma"), ClassEntry("nevus", "nevus")]


def test_folder_and_display_names(tmp_path):
    path = write(tmp_path / "classes.txt", "mel: melanoma\nbcc:basal cell carcinoma\nakiec: type: A\nnv:\n")
    assert parse_classes_file(path) == [
        ClassEntry("mel", "melanoma"),
        ClassEntry("bcc", "basal cell carcinoma"),
        ClassEntry("akiec", "type: A"),  # split on the first colon only
        ClassEntry("nv", "nv"),
    ]


def test_bom_and_crlf(tmp_path):
    path = write(tmp_path / "classes.txt", b"\xef\xbb\xbfcr\xc3\xa8me br\xc3\xbbl\xc3\xa9e\r\ntiramisu\r\n")
    assert [e.name for e in parse_classes_file(path)] == ["crème brûlée", "tiramisu"]


def test_duplicate_names_both_line_numbers(tmp_path):
    path = write(tmp_path / "classes.txt", "cat\ndog\n\ncat: a cat\n")
    with pytest.raises(InputFileError, match=r"classes\.txt: line 4: duplicate class 'cat' \(first on line 1\)"):
        parse_classes_file(path)


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n", "\ufeff"])
def test_empty_file(tmp_path, content):
    path = write(tmp_path / "classes.txt", content)
    with pytest.raises(InputFileError, match="no classes found"):
        parse_classes_file(path)


def test_non_utf8_gives_line_of_first_bad_byte(tmp_path):
    path = write(tmp_path / "classes.txt", "cat\ndog\n".encode() + "crème\n".encode("latin-1"))
    with pytest.raises(InputFileError, match=r"not UTF-8 text: byte 0xe8 at line 3, column 3"):
        parse_classes_file(path)


@pytest.mark.parametrize("bad", ["ca\x00t", "cat\tdog", "a\x1bb", "x\x0cy"])
def test_control_characters(tmp_path, bad):
    path = write(tmp_path / "classes.txt", f"ok\n{bad}\n")
    with pytest.raises(InputFileError, match=r"line 2: control character U\+00"):
        parse_classes_file(path)


def test_very_long_names(tmp_path):
    path = write(tmp_path / "classes.txt", "ok\n" + "x" * 201 + "\n")
    with pytest.raises(InputFileError, match="line 2: class name of 201 characters"):
        parse_classes_file(path)
    assert parse_classes_file(write(tmp_path / "ok.txt", "y" * 200))[0].name == "y" * 200
    long_display = write(tmp_path / "d.txt", "short: " + "z" * 300)
    with pytest.raises(InputFileError, match="line 1"):
        parse_classes_file(long_display)


def test_empty_name_before_colon(tmp_path):
    with pytest.raises(InputFileError, match="line 1: empty class name"):
        parse_classes_file(write(tmp_path / "c.txt", ": display only\n"))


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="classes file not found"):
        parse_classes_file(tmp_path / "absent.txt")


def test_class_map_json_and_csv(tmp_path):
    as_json = write(tmp_path / "map.json", json.dumps({"mel": "melanoma", "nv": "melanocytic nevi"}))
    as_csv = write(tmp_path / "map.csv", "folder,class\r\nmel,melanoma\r\nnv , melanocytic nevi\r\n")
    expected = {"mel": "melanoma", "nv": "melanocytic nevi"}
    assert parse_class_map(as_json) == expected
    assert parse_class_map(as_csv) == expected
    headerless = write(tmp_path / "map2.csv", "mel,melanoma\n")
    assert parse_class_map(headerless) == {"mel": "melanoma"}


def test_class_map_errors(tmp_path):
    with pytest.raises(InputFileError, match="line 3: expected 2 non-empty columns"):
        parse_class_map(write(tmp_path / "a.csv", "folder,class\nmel,melanoma\nnv\n"))
    with pytest.raises(InputFileError, match=r"line 2: folder 'mel' mapped twice \(first on line 1\)"):
        parse_class_map(write(tmp_path / "b.csv", "mel,melanoma\nmel,nevus\n"))
    with pytest.raises(InputFileError, match="'mel' appears twice"):
        parse_class_map(write(tmp_path / "c.json", '{"mel": "a", "mel": "b"}'))
    with pytest.raises(InputFileError, match="does not map a folder"):
        parse_class_map(write(tmp_path / "d.json", '{"mel": 3}'))
    with pytest.raises(InputFileError, match="line 1, column 9"):
        parse_class_map(write(tmp_path / "e.json", '{"mel": }'))
