"""Reading user input files the same way everywhere: a size check before reading, strict UTF-8
(a BOM is dropped), and JSON parsed as data with line/column errors and repeated keys refused.

Classes files, class maps, curated files, prompt templates and CSV manifests all read through here,
so every input reports size, encoding and JSON problems with the same words.
"""

from __future__ import annotations

import codecs
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable

from kbuild.errors import InputFileError

if TYPE_CHECKING:  # numpy and zipfile are imported lazily: reading a classes file must not pay for them
    from zipfile import ZipInfo

    import numpy as np


# The one set of class-name rules, for classes files, class maps and every curated format alike.
MAX_NAME_CHARS = 200


def nfc(text: str) -> str:
    """Unicode NFC: the composed form, so 'é' typed as one code point or as 'e' + accent is one name."""
    return unicodedata.normalize("NFC", text)


def canonical_class_name(name: str) -> str:
    """The one spelling of a class name every reader keys on: NFC, surrounding whitespace removed
    (``nevus `` and ``nevus`` are one class, not two that look the same)."""
    return nfc(name).strip()


def class_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a class name (empty, a control or invisible character, too
    long), or None. Checked on its canonical spelling, so surrounding spaces are no problem."""
    name = canonical_class_name(name)
    if not name:
        return "empty class name"
    for char in name:
        if unicodedata.category(char) == "Cc":  # tabs and newlines too: they hide inside names
            return f"control character U+{ord(char):04X} in a class name"
        if unicodedata.category(char) == "Cf":  # zero-width and direction marks: a second, invisible class
            return f"invisible character U+{ord(char):04X} in a class name"
    if len(name) > MAX_NAME_CHARS:
        return f"class name of {len(name)} characters (limit {MAX_NAME_CHARS})"
    return None


def case_collisions(names: Iterable[str]) -> list[list[str]]:
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


def _reject_duplicate_keys(path: Path) -> Callable[[list[tuple[str, object]]], dict[str, object]]:
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


# ---- .npz files: checked from their npy headers before any array is read --------------------------
# Deflate cannot shrink data more than ~1032x: a member claiming more is damaged or forged.
_DEFLATE_MAX_RATIO = 1100
# A numeric member this large that shrank over 100x is mostly one repeated value (a zip bomb),
# not vectors: real embeddings compress a few percent at most.
_BOMB_BYTES, _BOMB_RATIO = 256 << 20, 100


@dataclass(frozen=True)
class NpyMember:
    """What one array of an ``.npz`` declares in its npy header, and what the zip holds for it."""

    key: str
    shape: tuple[int, ...]
    dtype: Any
    declared_bytes: int
    stored_bytes: int  # uncompressed size of the member, header included
    compressed_bytes: int
    header_bytes: int

    def describe(self) -> str:
        return f"{self.key} {self.shape} {self.dtype}"


def _read_header(handle: IO[bytes]) -> tuple[tuple[int, ...], bool, Any]:
    import numpy as np

    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(handle)
    # 3.0: 2.0 with a UTF-8 header; numpy's stubs leave out the private reader that handles it
    header: tuple[tuple[int, ...], bool, Any] = np.lib.format._read_array_header(  # type: ignore[attr-defined]
        handle, version)
    return header


def npz_members(path: Path, error: type[InputFileError] = InputFileError) -> dict[str, NpyMember]:
    """Every array of the ``.npz`` at ``path`` as its header declares it, nothing else read.

    Refuses members whose data cannot match their header (truncated, or a header declaring more
    rows than the file could ever hold), and arrays of Python objects (they need pickle)."""
    import zipfile

    members: dict[str, NpyMember] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            with archive.open(info) as handle:
                try:
                    shape, _fortran, dtype = _read_header(handle)
                except (ValueError, EOFError) as err:
                    raise error(path, f"array '{key}' has an unreadable npy header ({err})",
                                "write the file again with numpy.savez") from None
                header = handle.tell()
            members[key] = _member(path, key, (shape, dtype, header), info, error)
    return members


def _member(path: Path, key: str, head: tuple[tuple[int, ...], Any, int], info: ZipInfo,
            error: type[InputFileError]) -> NpyMember:
    import math

    shape, dtype, header = head
    if dtype.hasobject:
        raise error(path, f"array '{key}' holds Python objects, which cannot be read without pickle",
                    "store strings as unicode arrays, e.g. np.asarray(texts, dtype=str)")
    declared = math.prod(shape) * dtype.itemsize
    member = NpyMember(key, tuple(shape), dtype=dtype, declared_bytes=declared, stored_bytes=info.file_size,
                       compressed_bytes=info.compress_size, header_bytes=header)
    limit = info.compress_size * (_DEFLATE_MAX_RATIO if info.compress_type else 1) + header
    if header + declared != info.file_size or info.file_size > limit:
        raise error(path, f"array '{key}' declares {shape} {dtype} ({_size(declared)}) but holds "
                    f"{_size(max(info.file_size - header, 0))}: the file is truncated or damaged",
                    "write it again with numpy.savez")
    if (dtype.kind in "fiucb" and declared > _BOMB_BYTES
            and declared > _BOMB_RATIO * max(info.compress_size, 1)):
        raise error(path, f"array '{key}' {shape} expands {declared // max(info.compress_size, 1):,}x from "
                    f"{_size(info.compress_size)} to {_size(declared)}: it is mostly one repeated value, "
                    "not vectors", "check how the file was made")
    return member


def _memory_bytes() -> int:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def read_npz(path: Path, what: str = "file", fix_missing: str = "check the path",
             error: type[InputFileError] = InputFileError,
             check: Callable[[dict[str, NpyMember]], None] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, read as data: never unpickled, every problem one ``error`` line.

    Before any array is read, every member's npy header is checked (``npz_members``), the total must
    fit in this machine's memory, and ``check(members)`` (the caller's own limits: rows, widths)
    may refuse the file. ``error`` lets a caller raise its own subclass of InputFileError."""
    import zipfile

    import numpy as np  # here, not at the top: reading a classes file must not pay for numpy

    path = Path(path)
    if not path.is_file():
        raise error(path, f"{what} not found", fix_missing)
    if not zipfile.is_zipfile(path):  # np.load would otherwise try to unpickle it
        raise error(path, "not a readable .npz file (not a zip archive)", "write it with numpy.savez")
    try:
        members = npz_members(path, error)
        total = sum(m.declared_bytes for m in members.values())
        if total > _memory_bytes() // 2:
            raise error(path, f"{what} declares {_size(total)} of arrays, more than half this machine's "
                        f"memory ({_size(_memory_bytes())})", "split it into smaller files")
        if check is not None:
            check(members)
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except ValueError as err:  # object arrays need pickle, which is never allowed
        if "pickle" not in str(err):
            raise error(path, f"{what} is truncated or damaged ({err})", "write it again with numpy.savez") from None
        raise error(path, f"cannot be read without pickle ({err})",
                    "store strings as unicode arrays, e.g. np.asarray(texts, dtype=str)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise error(path, f"not a readable .npz file ({err})", "write it with numpy.savez") from None


def npz_model_id(path: Path, value: np.ndarray | None, error: type[InputFileError] = InputFileError) -> str | None:
    """The one rule for an ``.npz``'s ``model_id`` (knowledge bases and features files alike): a
    string, stored as a scalar or as an array of one; empty means none. Any other shape is refused,
    never read as "no model_id" (that would evaluate in another embedding space)."""
    if value is None:
        return None
    if value.size != 1 or value.ndim > 1 or value.dtype.kind not in "US":
        raise error(path, f"model_id must be one string naming the embedding space, got {value.dtype} {value.shape}",
                    "e.g. model_id=np.asarray('ViT-B-16/openai')")
    text = value.reshape(()).item()
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return text.strip() or None


# ---- embedding matrices read from files: one policy for every reader -------------------------------
# Vectors kept in float16 and read back are unit to ~5e-4; a row further off than this was never
# normalised (or was scaled on purpose) and is normalised here, and counted.
UNIT_TOLERANCE = 1e-3
# Rows are checked in blocks of about this many values, so a million image features never need a
# float64 copy of their own size.
_CHECK_BLOCK_VALUES = 1 << 22


def unit_rows(path: Path | str, matrix: Any, what: str, *, error: type[InputFileError] = InputFileError,
              fix: str = "re-embed those rows or drop them") -> tuple[Any, int]:
    """The one policy for an embedding matrix read from a file: ((rows, D) float32, rows normalised).

    Used for knowledge-base vectors (``kbuild load`` of an embeddings file), image features and
    class-name embeddings (``kpl eval --features``), and the vectors of a Parquet bundle:

    - a row with NaN/inf or all zeros has no direction: the file is refused with one ``error`` line
      naming ``path``, the array ``what``, how many rows and the first bad one;
    - a row within ``UNIT_TOLERANCE`` (1e-3) of unit length is kept bit for bit (as float32):
      renormalising rows that are unit to float16 rounding moves KPL's OT pseudo-labels on real
      data (PH2: 78.5% -> 75.5%) and breaks parity with the source;
    - any other row is normalised (its norm taken from the row scaled by its largest entry, in
      float64, so 1e20 or 1e200 do not overflow) and counted, so the reader can say how many.

    The caller checks the shape it expects first; ``matrix`` is never written into. The KPL math
    (``kpl.method.retrieval.as_matrix``) keeps its own, stricter rule on top of this one.
    """
    import numpy as np

    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise error(path, f"{what} must be a 2-D float array (rows, D), got {matrix.dtype} {matrix.shape}", fix)
    rows = matrix.shape[0]
    nonfinite = np.zeros(rows, dtype=bool)
    scale, scaled_norm = np.zeros(rows), np.zeros(rows)
    step = max(1, _CHECK_BLOCK_VALUES // max(matrix.shape[1], 1))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for start in range(0, rows, step):
            block = matrix[start:start + step]
            nonfinite[start:start + step] = ~np.isfinite(block).all(axis=1)
            wide = block.astype(np.float64)
            top = np.abs(wide).max(axis=1, initial=0.0)
            scale[start:start + step] = top
            scaled_norm[start:start + step] = np.linalg.norm(wide / top[:, None], axis=1)
    _refuse(path, what, bad=nonfinite, problem="NaN/inf in {} row(s)", error=error, fix=fix)
    _refuse(path, what, bad=scale == 0, problem="{} all-zero row(s)", error=error, fix=fix)
    with np.errstate(over="ignore"):
        norms = scale * scaled_norm
        result = matrix.astype(np.float32, copy=False)
    off = ~(np.abs(norms - 1.0) <= UNIT_TOLERANCE)
    if off.any():
        if result is matrix:
            result = result.copy()
        result[off] = (matrix[off].astype(np.float64) / scale[off, None] / scaled_norm[off, None]).astype(np.float32)
    return result, int(off.sum())


def _refuse(path: Path | str, what: str, bad: Any, problem: str, error: type[InputFileError], fix: str) -> None:
    """One ``error`` line when any of the (rows,) flags ``bad`` is set: how many, and the first."""
    import numpy as np

    if bad.any():
        raise error(path, f"{what} has {problem.format(int(bad.sum()))}, first row {int(np.argmax(bad))}", fix)
