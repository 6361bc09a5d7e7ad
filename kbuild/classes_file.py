"""Classes files (the class list ``kbuild generate`` works from) and class maps (``kpl --class-map``).

A classes file is UTF-8 text with one class per line, optionally ``folder_name: display name``.
Lines starting with ``#`` are comments, blank lines are ignored, a UTF-8 byte-order mark and
Windows line endings are accepted. Everything else that is likely a mistake (duplicates, control
characters, absurdly long names, a file in another encoding) is refused with the line number,
because a silently mangled class list costs an LLM bill or a wrong evaluation later.

Files are read through ``kbuild.inputs`` (size check, strict UTF-8, JSON as data).
"""

from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from kbuild.errors import InputFileError
from kbuild.inputs import MAX_NAME_CHARS, class_name_problem, load_json, nfc, read_utf8

# Generous: a classes file of 100k long names is still far below this.
CLASSES_FILE_MAX_BYTES = 50 * 1024 * 1024

_CLASS_MAP_HEADERS = {"folder", "folder_name", "dir", "directory", "dataset_class"}


@dataclass(frozen=True)
class ClassEntry:
    """One class: ``name`` is the key used everywhere (e.g. the image folder), ``display``
    the human-readable name (the same as ``name`` unless the line said ``name: display``)."""

    name: str
    display: str


def _control_char(text: str) -> str | None:
    """The first control character in ``text`` (tabs included: they hide inside names)."""
    for char in text:
        if unicodedata.category(char) == "Cc":
            return char
    return None


def _entry_from_line(path: Path, number: int, line: str) -> ClassEntry:
    """Parse one non-comment, non-blank line into a ClassEntry, or raise with its line number."""
    bad = _control_char(line)
    if bad is not None:
        raise InputFileError(
            path, f"line {number}: control character U+{ord(bad):04X} in a class name",
            "remove it; use one class per line",
        )
    line = nfc(line)
    # 'folder: display' splits on the first colon only, so displays may contain colons.
    name, sep, display = line.partition(":")
    name, display = name.strip(), display.strip()
    if sep and not name:
        raise InputFileError(path, f"line {number}: empty class name before ':'",
                             "write 'folder_name: display name'")
    display = display or name
    for value in (name, display):
        problem = class_name_problem(value)  # the rule every reader follows (invisible characters too)
        if problem and problem.startswith("invisible"):
            raise InputFileError(path, f"line {number}: {problem}", "remove it; it would make a second, "
                                 "invisible class")
        if len(value) > MAX_NAME_CHARS:
            raise InputFileError(
                path, f"line {number}: class name of {len(value)} characters "
                f"(limit {MAX_NAME_CHARS})", "shorten it; descriptions belong in the knowledge base",
            )
    return ClassEntry(name=name, display=display)


def parse_classes_text(path: Path, text: str) -> list[ClassEntry]:
    """Parse the decoded text of a classes file (see the module docstring for the format)."""
    entries: list[ClassEntry] = []
    first_line: dict[str, int] = {}
    # split('\n') rather than splitlines(): the latter also splits on form feeds and
    # other separators, which would shift line numbers and hide control characters.
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        entry = _entry_from_line(path, number, stripped)
        if entry.name in first_line:
            raise InputFileError(
                path, f"line {number}: duplicate class '{entry.name}' "
                f"(first on line {first_line[entry.name]})", "remove one of the two lines",
            )
        first_line[entry.name] = number
        entries.append(entry)
    if not entries:
        raise InputFileError(path, "no classes found", "write one class name per line")
    return entries


def parse_classes_file(path: Path | str, max_bytes: int = CLASSES_FILE_MAX_BYTES) -> list[ClassEntry]:
    """Read a classes file: one ``ClassEntry`` per class, in file order."""
    path = Path(path)
    return parse_classes_text(path, read_utf8(path, max_bytes, what="classes file"))


def _class_map_from_json(path: Path, text: str) -> dict[str, str]:
    data = load_json(path, text)
    if not isinstance(data, dict):
        raise InputFileError(path, "a class map must be a JSON object",
                             'write {"folder": "knowledge-base class", ...}')
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip() or not key.strip():
            raise InputFileError(path, f"entry '{key}' does not map a folder to a class name",
                                 'write {"folder": "knowledge-base class", ...}')
    return data


def _class_map_from_csv(path: Path, text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    first_line: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for index, row in enumerate(reader):
            if not row or all(not cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if index == 0 and cells[0].lower() in _CLASS_MAP_HEADERS:
                continue  # an optional header row
            line = reader.line_num
            if len(cells) != 2 or not all(cells):
                raise InputFileError(path, f"line {line}: expected 2 non-empty columns "
                                     f"(folder,class), found {len(cells)}", "fix that row")
            folder, kb_class = cells
            if folder in first_line:
                raise InputFileError(path, f"line {line}: folder '{folder}' mapped twice "
                                     f"(first on line {first_line[folder]})", "keep one mapping")
            first_line[folder] = line
            result[folder] = kb_class
    except csv.Error as err:
        raise InputFileError(path, f"line {reader.line_num}: bad CSV ({err})", "fix that row") from None
    return result


def parse_class_map(path: Path | str, max_bytes: int = CLASSES_FILE_MAX_BYTES) -> dict[str, str]:
    """Read a folder -> knowledge-base class map: JSON ``{"folder": "class"}`` or a
    two-column CSV ``folder,class`` (an optional header row starting with ``folder`` is skipped).

    The format follows the extension; any other extension is sniffed (``{`` means JSON).
    """
    path = Path(path)
    text = nfc(read_utf8(path, max_bytes, what="class map"))
    suffix = path.suffix.lower()
    is_json = suffix == ".json" or (suffix != ".csv" and text.lstrip().startswith("{"))
    mapping = _class_map_from_json(path, text) if is_json else _class_map_from_csv(path, text)
    if not mapping:
        raise InputFileError(path, "the class map is empty", "add one folder,class pair per line")
    return mapping
