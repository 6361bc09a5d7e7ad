"""Readers for curated knowledge-base files: each turns one file into ``{class: [raw text, ...]}``.

The formats (``FORMATS``, a plain registry from name to reader):

* ``dclip`` (also ``cupl``, ``labo``): ``{"class": ["text", ...], ...}``, the shape shared by
  DCLIP/WaffleCLIP descriptors, CuPL prompts and LaBo concepts;
* ``kpl``: the KPL paper's ``{"<Name>_Features": {"class": [{"feature": "text"}, ...]}}``,
  of which one section is imported;
* ``csv``: a header with a class column and a text column (common aliases accepted);
* ``jsonl``: one ``{"class": ..., "text": ...}`` object per line;
* ``kbuild``: ``kbuild export --format json`` output (``{"snapshot", "manifest", "descriptions"}``);
  the kept descriptions are read, the removed ones are not.

Readers check structure and types only and report problems with a position (class key and
index, or line number). Whitespace, empty strings and duplicates are handled afterwards in
``curated.py``, so every format follows the same rules. Files are parsed as data only
(``json`` and ``csv`` modules).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kbuild.errors import InputFileError, KbuildError, UsageError, did_you_mean
from kbuild.inputs import canonical_class_name, class_name_problem, decode_utf8, load_json, nfc, read_checked_bytes

CLASS_COLUMNS = ("class", "class_name", "classname", "label", "category")
TEXT_COLUMNS = ("text", "description", "descriptor", "concept", "feature", "sentence", "prompt")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "a boolean", type(None): "null"}
_UNPARSED = object()


@dataclass
class SourceFile:
    """One input file, decoded; its JSON is parsed at most once (detection and reading share it)."""

    path: Path
    text: str
    sha256: str
    _json: Any = field(default=_UNPARSED, repr=False)

    def json(self) -> Any:
        if self._json is _UNPARSED:
            self._json = load_json(self.path, self.text)
        return self._json


@dataclass
class ParsedFile:
    """What a reader found: classes in file order, each with its raw strings."""

    path: Path
    format: str
    sha256: str
    groups: dict[str, list[str]]
    section: str | None = None
    display_names: dict[str, str] = field(default_factory=dict)  # from a kbuild export's manifest


# A reader gets the file and the wanted section (used by kpl only) and returns the classes
# with their raw strings, plus the section it read (None for formats without sections).
Groups = dict[str, list[str]]
Reader = Callable[[SourceFile, "str | None"], "tuple[Groups, str | None]"]


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _check_class_name(path: Path, name: str, where: str = "") -> None:
    """The classes-file rules (kbuild.inputs.class_name_problem), so every input accepts the same names."""
    problem = class_name_problem(name)
    if problem == "empty class name":
        raise InputFileError(path, f"{where}empty class name", "give every class a name")
    if problem:
        shown = name if len(name) <= 60 else name[:60] + "..."
        raise InputFileError(path, f"{where}{problem}: {shown!r}",
                             "fix the class name; descriptions belong in the list, not the name")


def _string_list(path: Path, class_name: str, items: Any, where: str = "") -> list[str]:
    """``items`` checked to be a list of strings; the error names the class key and index."""
    _check_class_name(path, class_name, where)
    if not isinstance(items, list):
        raise InputFileError(path, f"{where}class '{class_name}': expected a list of strings, "
                             f"found {_json_type(items)}", "make each class a list of strings")
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise InputFileError(path, f"{where}class '{class_name}', index {index}: expected a "
                                 f"string, found {_json_type(item)}", "make every description a string")
    return items


def read_class_lists(source: SourceFile, section: str | None) -> tuple[Groups, None]:
    """``{"class": ["text", ...]}`` (DCLIP, WaffleCLIP, CuPL, LaBo)."""
    data = source.json()
    if not isinstance(data, dict):
        raise InputFileError(source.path, f"expected a JSON object {{class: [text, ...]}}, "
                             f"found {_json_type(data)}", "check the file or pass --format")
    return {name: _string_list(source.path, name, items) for name, items in data.items()}, None


def _pick_section(path: Path, sections: list[str], wanted: str | None) -> str:
    """The section to import: the one named exactly, or the only one.

    No prefix or suffix matching: ``Skin`` must not quietly pick ``Skin_Features`` (a file may hold
    both); the error lists the sections and suggests the near miss.
    """
    listing = ", ".join(sections)
    if wanted is None:
        if len(sections) == 1:
            return sections[0]
        raise KbuildError(f"{path}: {len(sections)} sections ({listing}); "
                          "pass --section to choose one")
    if wanted in sections:
        return wanted
    near = [s for s in sections if s == f"{wanted}_Features"]
    hint = f" (did you mean '{near[0]}'?)" if near else did_you_mean(wanted, sections)
    raise KbuildError(f"{path}: no section '{wanted}'{hint}; available: {listing}; "
                      "pass --section with one of them exactly")


def _feature_texts(path: Path, class_name: str, items: Any, where: str) -> list[str]:
    """A KPL class's ``[{"feature": text}, ...]`` as plain strings."""
    _check_class_name(path, class_name, where)
    if not isinstance(items, list):
        raise InputFileError(path, f"{where}class '{class_name}': expected a list, found "
                             f"{_json_type(items)}", 'write [{"feature": "text"}, ...]')
    texts = []
    for index, item in enumerate(items):
        text = item.get("feature") if isinstance(item, dict) else None
        if not isinstance(text, str):
            found = _json_type(text if isinstance(item, dict) else item)
            raise InputFileError(path, f"{where}class '{class_name}', index {index}: expected "
                                 f'{{"feature": string}}, found {found}', "fix that item")
        texts.append(text)
    return texts


def read_kpl(source: SourceFile, section: str | None) -> tuple[Groups, str]:
    """``{"<Name>_Features": {"class": [{"feature": "text"}, ...]}}``; one section is read."""
    data = source.json()
    if not isinstance(data, dict) or not data:
        raise InputFileError(source.path, 'expected a JSON object {"<Name>_Features": {...}}',
                             "check the file or pass --format")
    chosen = _pick_section(source.path, list(data), section)
    body = data[chosen]
    where = f"section '{chosen}', "
    if not isinstance(body, dict):
        raise InputFileError(source.path, f"{where}expected an object of classes, found "
                             f"{_json_type(body)}", 'write {"class": [{"feature": "text"}]}')
    groups = {name: _feature_texts(source.path, name, items, where) for name, items in body.items()}
    return groups, chosen


def _find_column(path: Path, names: list[str], aliases: tuple[str, ...], role: str, where: str) -> int:
    """Index of the one column whose name (case-insensitive) is an alias for ``role``."""
    hits = [i for i, name in enumerate(names) if name.strip().lower() in aliases]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        problem = f"{where}no {role} column among {names} (accepted: {', '.join(aliases)})"
        raise InputFileError(path, problem, f"name one column '{aliases[0]}'")
    both = ", ".join(repr(names[i]) for i in hits)
    raise InputFileError(path, f"{where}several {role} columns ({both})", "rename all but one")


def read_csv(source: SourceFile, section: str | None) -> tuple[Groups, None]:
    """A CSV with a header naming a class column and a text column; other columns are ignored."""
    reader = csv.reader(io.StringIO(source.text, newline=""))
    groups: dict[str, list[str]] = {}
    try:
        header = next(reader, None)
        if not header:
            raise InputFileError(source.path, "empty CSV file (no header)", "add a 'class,text' header")
        class_col = _find_column(source.path, header, CLASS_COLUMNS, "class", "header: ")
        text_col = _find_column(source.path, header, TEXT_COLUMNS, "text", "header: ")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            line = reader.line_num
            if len(row) <= max(class_col, text_col):
                raise InputFileError(source.path, f"line {line}: {len(row)} column(s), expected at "
                                     f"least {max(class_col, text_col) + 1}", "fix that row")
            name = row[class_col]
            _check_class_name(source.path, name, f"line {line}: ")
            groups.setdefault(name, []).append(row[text_col])
    except csv.Error as err:
        raise InputFileError(source.path, f"line {reader.line_num}: bad CSV ({err})", "fix that row") from None
    return groups, None


def _jsonl_record(path: Path, number: int, line: str) -> tuple[str, str]:
    """One JSONL line as (class, text), or an error naming the line."""
    where = f"line {number}: "
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputFileError(path, f"{where}not valid JSON ({err.msg}, column {err.colno})",
                             'write one {"class": ..., "text": ...} object per line') from None
    if not isinstance(record, dict):
        raise InputFileError(path, f"{where}expected an object, found {_json_type(record)}",
                             'write one {"class": ..., "text": ...} object per line')
    keys = list(record)
    name = record[keys[_find_column(path, keys, CLASS_COLUMNS, "class", where)]]
    text = record[keys[_find_column(path, keys, TEXT_COLUMNS, "text", where)]]
    if not isinstance(name, str):
        raise InputFileError(path, f"{where}class is {_json_type(name)}, expected a string", "fix that line")
    _check_class_name(path, name, where)
    if not isinstance(text, str):
        raise InputFileError(path, f"{where}class '{name}': text is {_json_type(text)}, "
                             "expected a string", "fix that line")
    return name, text


def read_jsonl(source: SourceFile, section: str | None) -> tuple[Groups, None]:
    """One JSON object per line with a class key and a text key; blank lines are skipped."""
    groups: dict[str, list[str]] = {}
    for number, line in enumerate(source.text.split("\n"), start=1):
        if line.strip():
            name, text = _jsonl_record(source.path, number, line)
            groups.setdefault(name, []).append(text)
    return groups, None


def _is_kbuild_export(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("descriptions"), list) and isinstance(data.get("manifest"), dict)


def read_kbuild_export(source: SourceFile, section: str | None) -> tuple[Groups, None]:
    """``kbuild export --format json``: ``{"manifest": {...}, "descriptions": [{"class_name", "text"}]}``."""
    data = source.json()
    if not _is_kbuild_export(data):
        raise InputFileError(source.path, 'expected a kbuild export {"manifest": {...}, "descriptions": [...]}',
                             "export it again with 'kbuild export SNAP --format json'")
    groups: dict[str, list[str]] = {}
    for index, item in enumerate(data["descriptions"]):
        name = item.get("class_name") if isinstance(item, dict) else None
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(text, str):
            raise InputFileError(source.path, f"descriptions, index {index}: expected "
                                 '{"class_name": string, "text": string}', "fix that item")
        _check_class_name(source.path, name, f"descriptions, index {index}: ")
        groups.setdefault(name, []).append(text)
    return groups, None


FORMATS: dict[str, Reader] = {
    "csv": read_csv,
    "cupl": read_class_lists,
    "dclip": read_class_lists,
    "jsonl": read_jsonl,
    "kbuild": read_kbuild_export,
    "kpl": read_kpl,
    "labo": read_class_lists,
}


def get_reader(name: str) -> Reader:
    """The reader registered as ``name``; an unknown name lists what is available."""
    try:
        return FORMATS[name]
    except KeyError:
        raise UsageError(f"Unknown format '{name}'. Available: {', '.join(sorted(FORMATS))}") from None


def _json_shape(path: Path, data: Any) -> str:
    """dclip when every value is a list, kpl when every value is an object."""
    if _is_kbuild_export(data):
        return "kbuild"
    if isinstance(data, dict):
        values = list(data.values())
        if all(isinstance(v, list) for v in values):
            return "dclip"
        if all(isinstance(v, dict) for v in values):
            return "kpl"
        if _has_columns(list(data)):
            return "jsonl"  # a one-line JSONL file without the .jsonl extension
    raise InputFileError(path, "not a known curated shape: expected {class: [text, ...]} (dclip) "
                         'or {"X_Features": {class: [{"feature": text}]}} (kpl)',
                         f"pass --format ({', '.join(sorted(FORMATS))})")


def _first_line(text: str) -> str:
    return next((line for line in text.split("\n") if line.strip()), "")


def _has_columns(names: list[str]) -> bool:
    """Whether ``names`` include a class column and a text column (any accepted alias)."""
    lowered = {name.strip().lower() for name in names}
    return bool(lowered & set(CLASS_COLUMNS)) and bool(lowered & set(TEXT_COLUMNS))


def _looks_like_csv(text: str) -> bool:
    return _has_columns(next(csv.reader([_first_line(text)]), []))


def detect_format(source: SourceFile) -> str:
    """Guess the format from the extension, then from the content."""
    suffix = source.path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".json" or source.text.lstrip().startswith("{"):
        try:
            return _json_shape(source.path, source.json())
        except InputFileError:
            # Several objects, one per line, fail as a whole document but are JSONL.
            if suffix != ".json" and _first_line(source.text).strip().endswith("}"):
                return "jsonl"
            raise
    if _looks_like_csv(source.text):
        return "csv"
    raise InputFileError(source.path, "cannot tell the format of this file",
                         f"pass --format ({', '.join(sorted(FORMATS))})")


def read_source(path: Path, format: str | None, section: str | None, max_bytes: int) -> ParsedFile:
    """Read, decode and parse one curated file (format given or detected)."""
    data = read_checked_bytes(path, max_bytes, what="curated file")
    source = SourceFile(path=path, text=decode_utf8(path, data), sha256=hashlib.sha256(data).hexdigest())
    name = format or detect_format(source)
    groups, chosen = get_reader(name)(source, section)
    displays = _export_display_names(source) if name == "kbuild" else {}
    return ParsedFile(path=path, format=name, sha256=source.sha256, groups=_nfc_groups(path, groups),
                      section=chosen, display_names=displays)


def _export_display_names(source: SourceFile) -> dict[str, str]:
    """The display names an export's manifest recorded (class key -> name), strings only."""
    names = source.json()["manifest"].get("display_names") or {}
    if not isinstance(names, dict):
        return {}
    return {nfc(k): v for k, v in names.items() if isinstance(k, str) and isinstance(v, str) and v.strip()}


def _nfc_groups(path: Path, groups: Groups) -> Groups:
    """Class names in their canonical spelling (NFC, no surrounding spaces), checked by the one set of
    name rules; names that were one name in two spellings (NFC 'é' and NFD 'e' + accent, 'nevus' and
    'nevus ') become one class with both lists of texts."""
    merged: Groups = {}
    for raw_name, items in groups.items():
        _check_class_name(path, raw_name)
        merged.setdefault(canonical_class_name(raw_name), []).extend(items)
    return merged
