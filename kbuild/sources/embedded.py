"""Knowledge bases that bring their own embeddings: descriptions with vectors from another pipeline.

An ``.npz`` file holds
- ``classes`` (M,) str: the class of each description,
- ``texts`` (M,) str: the description text,
- ``embeddings`` (M, D) float: one vector per description,
- ``model_id``: a scalar string naming the embedding space (e.g. ``ViT-B-16/openai``).

The same as JSONL (``.jsonl``), one description per line:
``{"class": "nevus", "text": "...", "embedding": [0.01, ...], "model_id": "ViT-B-16/openai"}``;
a JSONL file is read this way when its first record has an ``embedding`` (otherwise it is a curated
file of class/text records), and every line names the same ``model_id``.

No CLIP model is involved: the vectors are stored as given (rows further than 1e-3 from unit
length are normalised, and said so: the one policy of ``kbuild.inputs.unit_rows``), and the
snapshot records ``model_id`` as its embedding space, so ``kpl eval --features`` can check that
the image features live in the same one.

Checks, each one line naming the file and the fix: missing keys, shapes, lengths that disagree,
NaN/inf or all-zero rows, empty texts. Exact duplicates (same class, same normalised text) keep
their first vector and are counted, like curated files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from kbuild.descriptions import Description, normalise_text
from kbuild.errors import InputFileError, UsageError
from kbuild.inputs import canonical_class_name, case_collisions, class_name_problem, npz_model_id, read_npz, unit_rows

if TYPE_CHECKING:
    import numpy.typing as npt

EMBEDDED_SUFFIXES = (".npz",)
REQUIRED_KEYS = ("classes", "texts", "embeddings", "model_id")


@dataclass
class EmbeddedImport:
    """Descriptions with their (M, D) unit-row vectors, the space they live in, and what was fixed."""

    path: str
    model_id: str
    descriptions: list[Description]
    embeddings: np.ndarray
    normalised_rows: int = 0
    duplicates: int = 0
    dropped_classes: list[str] = field(default_factory=list)
    dropped_texts: int = 0
    case_collisions: list[list[str]] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def classes(self) -> list[str]:
        return list(dict.fromkeys(d.class_name for d in self.descriptions))

    def vectors_hash(self) -> str:
        """The stored vectors' identity: two imports of the same texts with other vectors differ."""
        matrix = np.ascontiguousarray(self.embeddings, dtype="<f4")
        return "sha256:" + hashlib.sha256(f"{matrix.shape}".encode() + matrix.tobytes()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "format": "embeddings-" + Path(self.path).suffix.lower().lstrip("."),
                "model_id": self.model_id, "dim": self.dim,
                "classes": self.classes(), "kept_count": len(self.descriptions),
                "normalised_rows": self.normalised_rows, "duplicates": self.duplicates,
                "dropped_classes": self.dropped_classes, "dropped_texts": self.dropped_texts,
                "case_collisions": self.case_collisions}

    def summary_lines(self) -> list[str]:
        name = Path(self.path).name
        line = (f"{name}: {len(self.classes())} classes, {len(self.descriptions)} descriptions with their own "
                f"{self.dim}-d embeddings ({self.model_id}); no CLIP model loaded")
        notes = []
        if self.normalised_rows:
            notes.append(f"{self.normalised_rows} rows were not unit length and were normalised")
        if self.duplicates:
            notes.append(f"{self.duplicates} exact duplicates collapsed (first vector kept)")
        if self.dropped_classes:
            notes.append(f"{len(self.dropped_classes)} classes not in --classes dropped ({self.dropped_texts} texts)")
        for group in self.case_collisions:  # the same words as curated imports
            notes.append(f"warning: classes that differ only in letter case stay separate: {' / '.join(group)} "
                         "(rename one to merge them)")
        return [line] + [f"{name}: {note}" for note in notes]


MAX_JSONL_BYTES = 2_000_000_000  # vectors as text are large: ~10 bytes a number


def is_embedded_file(path: Path) -> bool:
    """An .npz, or a .jsonl whose first record carries an ``embedding``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in EMBEDDED_SUFFIXES:
        return True
    if suffix != ".jsonl" or not path.is_file():
        return False
    with open(path, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    first = json.loads(raw.decode("utf-8-sig"))
                except (UnicodeDecodeError, ValueError):
                    return False  # the curated reader reports it properly
                return isinstance(first, dict) and "embedding" in first
    return False


def _read_jsonl(path: Path) -> dict[str, np.ndarray]:
    """The JSONL form as the arrays of the .npz form (checked by the same code afterwards)."""
    from kbuild.inputs import read_utf8

    classes: list[str] = []
    texts: list[str] = []
    vectors: list[list[float]] = []
    spaces: set[str] = set()
    for number, line in enumerate(read_utf8(path, MAX_JSONL_BYTES, "embeddings file").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise InputFileError(path, f"line {number} is not JSON ({err})", "one JSON object per line") from None
        if not isinstance(record, dict) or not {"class", "text", "embedding", "model_id"} <= set(record):
            raise InputFileError(path, f"line {number} needs class, text, embedding and model_id",
                                 'e.g. {"class": "c", "text": "t", "embedding": [...], "model_id": "m"}')
        vector = record["embedding"]
        if not isinstance(vector, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in vector):
            raise InputFileError(path, f"line {number}: embedding must be a list of numbers")
        if vectors and len(vector) != len(vectors[0]):
            raise InputFileError(path, f"line {number}: embedding has {len(vector)} numbers, the first line "
                                 f"{len(vectors[0])}", "every vector comes from the same model")
        classes.append(str(record["class"]))
        texts.append(str(record["text"]))
        vectors.append(vector)
        spaces.add(str(record["model_id"]))
    if len(spaces) > 1:
        raise InputFileError(path, f"lines name {len(spaces)} different model_id values "
                             f"({', '.join(sorted(spaces)[:3])})", "one file holds one embedding space")
    if not vectors:
        raise InputFileError(path, "no records", "one JSON object per line")
    return {"classes": np.asarray(classes, dtype=str), "texts": np.asarray(texts, dtype=str),
            "embeddings": np.asarray(vectors, dtype=np.float64), "model_id": np.asarray(spaces.pop())}


def _strings(path: Path, data: dict[str, np.ndarray], key: str) -> list[str]:
    values = data[key]
    if values.ndim != 1 or values.dtype.kind not in "US":
        raise InputFileError(path, f"{key} must be a 1-D array of strings, got {values.dtype} {values.shape}",
                             f"save {key}=np.asarray(list_of_str, dtype=str)")
    return [str(v) for v in values.tolist()]


def _class_names(path: Path, data: dict[str, np.ndarray]) -> list[str]:
    """The classes column under the one class-name rule every reader follows (kbuild.inputs)."""
    names = []
    for row, raw in enumerate(_strings(path, data, "classes")):
        problem = class_name_problem(raw)
        if problem:
            shown = raw if len(raw) <= 60 else raw[:60] + "..."
            raise InputFileError(path, f"classes, row {row}: {problem}: {shown!r}", "fix the class name")
        names.append(canonical_class_name(raw))
    return names


def _check_rows(path: Path, members: dict[str, Any]) -> None:
    """Refuse, from the npy headers alone, a file over the text cap that curated files have too.

    ``members`` maps a key to anything with a ``shape``: an NpyMember, or JSONL's row count."""
    from kbuild.sources.curated import DEFAULT_MAX_TEXTS

    for key in ("classes", "texts", "embeddings"):
        member = members.get(key)
        if member is not None and member.shape and member.shape[0] > DEFAULT_MAX_TEXTS:
            raise InputFileError(path, f"{key} has {member.shape[0]:,} rows, over the limit of {DEFAULT_MAX_TEXTS:,} "
                                 "per load", "split the file and load the parts separately, then 'kbuild merge' them")


def check_embeddings(path: Path, embeddings: npt.ArrayLike, rows: int) -> tuple[np.ndarray, int]:
    """(M, D) float32 unit rows and how many rows had to be normalised; one clear error otherwise.

    The rows follow the one policy for embedding matrices read from files (``kbuild.inputs.unit_rows``)."""
    matrix = np.asarray(embeddings)
    if matrix.ndim != 2 or 0 in matrix.shape or not np.issubdtype(matrix.dtype, np.floating):
        raise InputFileError(path, f"embeddings must be a non-empty 2-D float array (M, D), got {matrix.dtype} "
                             f"{matrix.shape}", "one row per description")
    if matrix.shape[0] != rows:
        raise InputFileError(path, f"embeddings has {matrix.shape[0]} rows but there are {rows} texts",
                             "classes, texts and embeddings need one entry per description, in the same order")
    return unit_rows(path, matrix, "embeddings", fix="re-embed those descriptions or drop them")


def read_embedded(path: Path | str, classes: list[str] | None = None, restrict: bool = False) -> EmbeddedImport:
    """Read and check one embeddings file; ``classes``/``restrict`` as for curated files."""
    path = Path(path).expanduser()
    data = (_read_jsonl(path) if path.suffix.lower() == ".jsonl"
            else read_npz(path, "embeddings file", check=lambda members: _check_rows(path, members)))
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise InputFileError(path, f"missing key(s) {', '.join(missing)} (has: {', '.join(sorted(data)) or 'none'})",
                             "an embeddings file holds classes (M,), texts (M,), embeddings (M, D) and model_id")
    model_id = npz_model_id(path, data["model_id"])
    if model_id is None:
        raise InputFileError(path, "model_id must be a non-empty string naming the embedding space",
                             "e.g. model_id=np.asarray('ViT-B-16/openai')")
    class_names, texts = _class_names(path, data), _strings(path, data, "texts")
    _check_rows(path, {"texts": SimpleNamespace(shape=(len(texts),))})  # JSONL has no header to check first
    if len(class_names) != len(texts):
        raise InputFileError(path, f"classes has {len(class_names)} entries but texts has {len(texts)}",
                             "one class per text, in the same order")
    matrix, normalised = check_embeddings(path, data["embeddings"], len(texts))
    empty = [i for i, (c, t) in enumerate(zip(class_names, texts)) if not normalise_text(c) or not normalise_text(t)]
    if empty:
        raise InputFileError(path, f"{len(empty)} description(s) have an empty class or text, first row {empty[0]}",
                             "drop those rows")
    dropped: list[str] = []
    if classes is not None:
        allowed = set(classes)
        unknown = list(dict.fromkeys(c for c in class_names if c not in allowed))
        if unknown and not restrict:
            raise UsageError(f"{path}: {len(unknown)} class(es) not in --classes: {', '.join(unknown[:8])} "
                             "(fix the names, or pass --restrict to drop them)")
        dropped = unknown
    keep, seen, duplicates, dropped_texts = [], set(), 0, 0
    for i, (c, t) in enumerate(zip(class_names, texts)):
        if c in dropped:
            dropped_texts += 1
            continue
        key = (c, normalise_text(t))
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        keep.append(i)
    source = f"imported:{path.name}"
    descriptions = [Description(class_names[i], normalise_text(texts[i]), source=source) for i in keep]
    return EmbeddedImport(str(path), model_id, descriptions=descriptions, embeddings=matrix[keep],
                          normalised_rows=normalised, duplicates=duplicates, dropped_classes=dropped,
                          dropped_texts=dropped_texts,
                          case_collisions=case_collisions(d.class_name for d in descriptions))
