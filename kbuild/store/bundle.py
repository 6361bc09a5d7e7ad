"""A snapshot as one Parquet file (a "bundle"): every description with its vector, and the snapshot's
record in the file's key-value metadata, so that it travels without its store.

Columns, one row per description (kept rows first, in write order, then the removed ones):
``id``, ``class`` (the class key), ``display_name``, ``text``, ``vector`` (fixed-size list of float32,
the stored CLIP text embedding), ``source``, ``created``, ``extra`` (JSON), ``state`` (kept | removed),
and for removed rows ``removed_stage``, ``removed_reason``, ``removed_score``, ``removed_related``
(the partner text) and ``removed_related_classes``. Plain columns, so pyarrow, pandas, DuckDB and
Hugging Face ``datasets`` read the file as it is.

The metadata key ``kbuild`` holds JSON: the snapshot's name, manifest and lineage, its model id,
content hash, and the digest of the vectors (``transfer.vectors_digest``). Reading checks all of
them against the rows, so a truncated file, an edited text or a changed vector is one clear error
before anything is published. The vectors then follow the one policy for embedding matrices read
from files (``kbuild.inputs.unit_rows``): NaN/inf or all-zero rows are refused, rows off unit length
normalised and counted in ``Bundle.normalised_rows``.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kbuild.descriptions import Description, content_hash
from kbuild.errors import InputFileError, KbuildError
from kbuild.inputs import unit_rows
from kbuild.store.records import KEPT, REMOVED, RemovedRecord
from kbuild.store.snapshots import KnowledgeBase, SnapshotInfo
from kbuild.store.transfer import kb_digest, vectors_digest

BUNDLE_VERSION = 1
METADATA_KEY = b"kbuild"
SUFFIXES = (".parquet",)
DATASET_FILE = "data/train-00000-of-00001.parquet"  # where a dataset folder (export --format hf) keeps its bundle
_RE_EXPORT = "export it again with 'kbuild export SNAPSHOT --format parquet'"
_COLUMNS = ("id", "class", "display_name", "text", "vector", "source", "created", "extra", "state",
            "removed_stage", "removed_reason", "removed_score", "removed_related", "removed_related_classes")


def arrow() -> Any:  # the pyarrow module, imported late
    """pyarrow, or one line saying how to install it (it comes with the ``travel`` extra)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule is what we use)
    except ImportError as err:  # pragma: no cover - the test environment has it
        raise KbuildError("Parquet needs pyarrow: pip install 'kpl-toolkit[travel]'") from err
    return pyarrow


def is_bundle(path: Path | str) -> bool:
    """A ``.parquet`` file, or a dataset folder written by ``kbuild export --format hf``."""
    path = Path(path).expanduser()
    return path.suffix.lower() in SUFFIXES or (path.is_dir() and (path / DATASET_FILE).is_file())


def _bundle_file(path: Path) -> Path:
    return path / DATASET_FILE if path.is_dir() else path


@dataclass
class Bundle:
    """A bundle read back and checked: the knowledge base, its recorded lineage, and the file's sha256."""

    kb: KnowledgeBase
    lineage: list[dict[str, Any]]
    path: str
    sha256: str
    size: int
    meta: dict[str, Any] = field(default_factory=dict)
    normalised_rows: int = 0  # vectors off unit length, normalised on reading (kbuild.inputs.unit_rows)

    def file_record(self) -> dict[str, Any]:
        return {"name": Path(self.path).name, "sha256": self.sha256, "bytes": self.size}


def bundle_metadata(kb: KnowledgeBase, lineage: list[dict[str, Any]]) -> dict[str, Any]:
    m = kb.info.manifest
    return {"bundle_version": BUNDLE_VERSION, "snapshot": kb.info.name, "content_hash": kb.info.content_hash,
            "model_id": (m.get("clip") or {}).get("model_id"), "embedding_dim": m.get("embedding_dim"),
            "vectors_hash": kb_digest(kb), "rows": len(kb.descriptions) + len(kb.removed),
            "manifest": m, "lineage": lineage}


def bundle_table(kb: KnowledgeBase, lineage: list[dict[str, Any]]) -> Any:
    """The bundle as a ``pyarrow.Table`` (schema metadata included)."""
    pa = arrow()
    if kb.removed and kb.removed_embeddings is None:
        raise KbuildError("internal: a bundle needs the removed descriptions' vectors (read with embeddings)")
    shown = kb.info.manifest.get("display_names") or {}
    records = [(d, KEPT, None) for d in kb.descriptions] + [(r.description, REMOVED, r) for r in kb.removed]
    dim = int(kb.info.manifest.get("embedding_dim") or kb.embeddings.shape[1])
    vectors = np.concatenate([kb.embeddings.reshape(-1, dim)]
                             + ([kb.removed_embeddings.reshape(-1, dim)]
                                if kb.removed and kb.removed_embeddings is not None else [])).astype("<f4")
    columns = {
        "id": [d.id for d, _, _ in records],
        "class": [d.class_name for d, _, _ in records],
        "display_name": [shown.get(d.class_name, d.class_name) for d, _, _ in records],
        "text": [d.text for d, _, _ in records],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        "source": [d.source for d, _, _ in records],
        "created": [d.created for d, _, _ in records],
        "extra": [json.dumps(d.extra, ensure_ascii=False, sort_keys=True) if d.extra else None for d, _, _ in records],
        "state": [state for _, state, _ in records],
        "removed_stage": [r.stage if r else None for _, _, r in records],
        "removed_reason": [r.reason if r else None for _, _, r in records],
        "removed_score": pa.array([r.score if r else None for _, _, r in records], pa.float64()),
        "removed_related": [r.related if r else None for _, _, r in records],
        "removed_related_classes": pa.array([list(r.related_classes) if r else None for _, _, r in records],
                                            pa.list_(pa.string())),
    }
    table = pa.table(columns)
    meta = json.dumps(bundle_metadata(kb, lineage), ensure_ascii=False)
    return table.replace_schema_metadata({METADATA_KEY: meta.encode("utf-8")})


def write_bundle(kb: KnowledgeBase, lineage: list[dict[str, Any]], path: Path | str) -> Path:
    """Write the bundle to ``path`` atomically: a hidden temporary file renamed into place when complete."""
    pa = arrow()
    path = Path(path)
    table = bundle_table(kb, lineage)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        pa.parquet.write_table(table, temporary, compression="zstd")
        os.replace(temporary, path)
    except OSError as err:
        raise KbuildError(f"Cannot write {path}: {err.strerror or err} (choose another --output)") from err
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return f"sha256:{digest.hexdigest()}", size


def _open_table(path: Path) -> tuple[Any, dict[str, Any]]:
    pa = arrow()
    if not path.is_file():
        raise InputFileError(path, "no such file", "check the path")
    try:
        # ParquetFile, not read_table: read_table imports pyarrow.dataset, ~1 s before any byte is read.
        table = pa.parquet.ParquetFile(path).read()
    except (pa.ArrowException, OSError, ValueError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputFileError(path, f"not a readable Parquet file, truncated or damaged ({detail})", _RE_EXPORT) from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise InputFileError(path, "has no kbuild metadata, so it is not a kbuild bundle",
                             "bundles are written by 'kbuild export SNAPSHOT --format parquet'")
    try:
        meta = json.loads(raw.decode("utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("manifest"), dict):
            raise ValueError("not an object with a manifest")
    except ValueError as err:
        raise InputFileError(path, f"its kbuild metadata is not valid ({err})", _RE_EXPORT) from None
    if meta.get("bundle_version", 0) > BUNDLE_VERSION:
        raise InputFileError(path, f"bundle version {meta.get('bundle_version')} is newer than this kbuild reads "
                             f"({BUNDLE_VERSION})", "upgrade kbuild")
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise InputFileError(path, f"missing column(s) {', '.join(missing)}", _RE_EXPORT)
    return table, meta


def _vectors(path: Path, table: Any, dim: int) -> np.ndarray:
    """(rows, dim) float32 from the ``vector`` column, with a clear error for a row of another length."""
    pa = arrow()
    column = table.column("vector").combine_chunks()
    if column.null_count:
        raise InputFileError(path, f"{column.null_count} row(s) have no vector", _RE_EXPORT)
    if not (pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type)
            or pa.types.is_large_list(column.type)):
        raise InputFileError(path, f"column vector has type {column.type}, not a list of floats", _RE_EXPORT)
    # Lengths from the offsets (pyarrow.compute would import pandas: ~1 s for nothing).
    lengths = (np.full(len(column), column.type.list_size) if pa.types.is_fixed_size_list(column.type)
               else np.diff(column.offsets.to_numpy()))
    wrong = np.flatnonzero(lengths != dim)
    if wrong.size:
        raise InputFileError(path, f"row {int(wrong[0])} has a {int(lengths[wrong[0]])}-d vector but the snapshot's "
                             f"embedding_dim is {dim} ({wrong.size} row(s) differ)",
                             "every vector must come from the snapshot's model; " + _RE_EXPORT)
    values = column.flatten() if not pa.types.is_fixed_size_list(column.type) else column.values
    if values.null_count or not pa.types.is_floating(values.type):
        raise InputFileError(path, "column vector holds missing or non-float values", _RE_EXPORT)
    # Straight from the Arrow buffer: Array.to_numpy would import pandas (~1 s) on the way.
    width = values.type.bit_width // 8
    flat = np.frombuffer(values.buffers()[1], dtype=f"<f{width}", count=len(values), offset=values.offset * width)
    return flat.astype(np.float32).reshape(len(column), dim)


def _records(table: Any) -> list[dict[str, Any]]:
    # Column by column: Table.to_pylist would import pandas (~1 s) on the way.
    wanted = [c for c in _COLUMNS if c != "vector"]
    columns = [table.column(c).combine_chunks().to_pylist() for c in wanted]
    return [dict(zip(wanted, values)) for values in zip(*columns)]


def _description(row: dict[str, Any]) -> Description:
    extra = json.loads(row["extra"]) if row.get("extra") else {}
    return Description(row["class"], row["text"], source=row.get("source") or "", created=row.get("created") or "",
                       extra=extra)


def _removed(row: dict[str, Any]) -> RemovedRecord:
    return RemovedRecord(_description(row), row.get("removed_stage") or "", reason=row.get("removed_reason") or "",
                         score=row.get("removed_score"), related=row.get("removed_related"),
                         related_classes=list(row.get("removed_related_classes") or []))


def read_bundle(path: Path | str) -> Bundle:
    """Read and check a bundle: every row, the content hash and the vector digest (see module doc)."""
    path = _bundle_file(Path(path).expanduser())
    table, meta = _open_table(path)
    manifest = meta["manifest"]
    dim = int(manifest.get("embedding_dim") or 0)
    rows = _records(table)
    bad = next((i for i, r in enumerate(rows) if not r.get("class") or not r.get("text") or
                r.get("state") not in (KEPT, REMOVED)), None)
    if bad is not None:
        raise InputFileError(path, f"row {bad} has no class, no text or an unknown state", _RE_EXPORT)
    try:
        kept_rows = [i for i, r in enumerate(rows) if r["state"] == KEPT]
        gone_rows = [i for i, r in enumerate(rows) if r["state"] == REMOVED]
        descriptions = [_description(rows[i]) for i in kept_rows]
        removed = [_removed(rows[i]) for i in gone_rows]
    except (ValueError, TypeError) as err:
        raise InputFileError(path, f"a row's extra or removal fields are not valid ({err})", _RE_EXPORT) from None
    raw = _vectors(path, table, dim)
    vectors, normalised = unit_rows(path, raw, "column vector", fix=_RE_EXPORT)
    _check_hashes(path, meta, descriptions, raw[kept_rows], raw[gone_rows])  # the file's own vectors, as written
    name = str(meta.get("snapshot") or path.stem)
    kb = KnowledgeBase(SnapshotInfo(name, manifest), descriptions, vectors[kept_rows], removed, vectors[gone_rows])
    sha, size = _sha256(path)
    return Bundle(kb, list(meta.get("lineage") or []), path=str(path), sha256=sha, size=size, meta=meta,
                  normalised_rows=normalised)


def _check_hashes(path: Path, meta: dict[str, Any], descriptions: list[Description], kept: np.ndarray, gone: np.ndarray) -> None:
    manifest = meta["manifest"]
    recorded = manifest.get("content_hash")
    recomputed = content_hash((d.class_name, d.text) for d in descriptions)
    if recorded != recomputed or meta.get("content_hash") != recorded:
        raise InputFileError(path, f"content hash mismatch: the file records {str(recorded)[:19]}..., its rows give "
                             f"{recomputed[:19]}... (a text or class was changed after export)", _RE_EXPORT)
    if manifest.get("total") != len(descriptions):
        raise InputFileError(path, f"{len(descriptions)} kept rows but the manifest says {manifest.get('total')}",
                             _RE_EXPORT)
    digest = vectors_digest(kept, gone if len(gone) else None)
    if digest != meta.get("vectors_hash"):
        raise InputFileError(path, f"vector hash mismatch: the file records {str(meta.get('vectors_hash'))[:19]}..., "
                             f"its vectors give {digest[:19]}... (a vector was changed after export)", _RE_EXPORT)
