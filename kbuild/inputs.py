"""Reading user input files the same way everywhere: a size check before reading, strict UTF-8
(a BOM is dropped), and JSON parsed as data with line/column errors and repeated keys refused.

Classes files, class maps, curated files, prompt templates and CSV manifests all read through here,
so every input reports size, encoding and JSON problems with the same words.
"""

from __future__ import annotations

import codecs
import json
import unicodedata
from pathlib import Path

from kbuild.errors import InputFileError


# The one set of class-name rules, for classes files, class maps and every curated format alike.
MAX_NAME_CHARS = 200


def nfc(text: str) -> str:
    """Unicode NFC: the composed form, so 'é' typed as one code point or as 'e' + accent is one name."""
    return unicodedata.normalize("NFC", text)


def class_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a class name (empty, a control character, too long), or None."""
    if not name.strip():
        return "empty class name"
    for char in name:
        if unicodedata.category(char) == "Cc":  # tabs and newlines too: they hide inside names
            return f"control character U+{ord(char):04X} in a class name"
    if len(name) > MAX_NAME_CHARS:
        return f"class name of {len(name)} characters (limit {MAX_NAME_CHARS})"
    return None


def case_collisions(names) -> list[list[str]]:
    """Groups of distinct names that differ only in letter case (``Melanoma``/``melanoma``)."""
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        groups.setdefault(name.casefold(), []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n} bytes"


def read_checked_bytes(path: Path, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path``, refusing a missing path, a directory or a file over ``max_bytes``.

    The size is checked before reading so that a huge file costs nothing.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, f"{what} not found", "check the path")
    if not path.is_file():
        raise InputFileError(path, "not a regular file", f"pass the path of a {what}")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputFileError(
            path,
            f"{what} is {_size(size)}, over the {_size(max_bytes)} limit",
            "split it into smaller files, or raise the limit if it really is this big",
        )
    return path.read_bytes()


def read_utf8(path: Path, max_bytes: int, what: str = "file") -> str:
    """The text of ``path``: size-checked, BOM stripped, strictly decoded as UTF-8."""
    return decode_utf8(Path(path), read_checked_bytes(path, max_bytes, what))


def decode_utf8(path: Path, data: bytes) -> str:
    """Decode ``data`` as UTF-8 (a leading BOM is dropped); report the first bad byte by line."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputFileError(
            path,
            f"not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {column}",
            "re-save the file with UTF-8 encoding",
        ) from None


def _reject_duplicate_keys(path: Path):
    """A json ``object_pairs_hook`` that refuses repeated keys (json keeps the last silently,
    which would lose a class's descriptions without a word)."""

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        result: dict[str, object] = {}
        for key, value in pairs:
            if key in result:
                raise InputFileError(path, f"key '{key}' appears twice in one JSON object",
                                     "merge the two entries into one")
            result[key] = value
        return result

    return hook


def load_json(path: Path, text: str) -> object:
    """Parse JSON text as data; syntax errors are reported with their line and column."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys(path))
    except json.JSONDecodeError as err:
        raise InputFileError(path, f"not valid JSON: {err.msg} at line {err.lineno}, "
                             f"column {err.colno}", "fix the JSON syntax there") from None
    except RecursionError:
        raise InputFileError(path, "JSON nested too deeply", "flatten the file") from None


def read_npz(path: Path, what: str = "file", fix_missing: str = "check the path", error=InputFileError) -> dict:
    """The arrays of an ``.npz`` file, read as data: never unpickled, every problem one ``error`` line.

    ``error`` lets a caller raise its own subclass of InputFileError (kpl raises kpl's)."""
    import zipfile

    import numpy as np  # here, not at the top: reading a classes file must not pay for numpy

    path = Path(path)
    if not path.is_file():
        raise error(path, f"{what} not found", fix_missing)
    if not zipfile.is_zipfile(path):  # np.load would otherwise try to unpickle it
        raise error(path, "not a readable .npz file (not a zip archive)", "write it with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as err:  # object arrays need pickle, which is never allowed
        raise error(path, f"cannot be read without pickle ({err})",
                    "store strings as unicode arrays, e.g. np.asarray(texts, dtype=str)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise error(path, f"not a readable .npz file ({err})", "write it with numpy.savez") from None
