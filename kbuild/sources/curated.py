"""Import curated knowledge-base files (DCLIP/CuPL/LaBo, KPL, CSV, JSONL) as descriptions.

``load_curated`` reads each file with a format reader (``curated_formats.FORMATS``), then applies
one set of rules to all of them, in this order, and counts every change:

1. classes outside an optional class list are an error, or dropped with ``restrict=True``;
2. each string is normalised with ``normalise_text`` (runs of whitespace -> one space, ends
   stripped); strings that change are counted as ``whitespace_fixed``;
3. strings that are empty after normalising are dropped and reported as (class, index);
4. exact duplicates are collapsed: same class and same *normalised* text. Detecting them after
   normalising matches the description id (a hash of class and normalised text), so two strings
   that differ only in whitespace can never become two descriptions with one id.
   Duplicates of texts already imported from an earlier file are counted separately;
5. classes left with no non-empty string are reported as empty and are absent from the result.

Nothing is judged on quality here (short fragments are kept); ``kbuild prune`` does that.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from kbuild.descriptions import Description, normalise_text
from kbuild.errors import InputFileError, KbuildError, UsageError
from kbuild.inputs import case_collisions, nfc
from kbuild.sources.class_names import SimilarClasses, rename_classes
from kbuild.sources.curated_formats import FORMATS, ParsedFile, get_reader, read_source

DEFAULT_MAX_BYTES = 200_000_000  # "200 MB", decimal like the message
# Texts one load may hold. Every text becomes a CLIP vector held in memory and written to Chroma;
# a 96 MB file of 1.9 M texts grew past 7.5 GB without finishing. 300 000 texts stay near 2 GB.
DEFAULT_MAX_TEXTS = 300_000
_PREVIEW = 8  # names shown inline before "... and N more"


def _preview(names: list[str]) -> str:
    shown = ", ".join(names[:_PREVIEW])
    return shown + (f", ... and {len(names) - _PREVIEW} more" if len(names) > _PREVIEW else "")


@dataclass
class FileReport:
    """What happened to one file. ``raw_count`` = kept + duplicates + cross-file duplicates
    + empty strings + texts of dropped classes."""

    path: str
    format: str
    sha256: str
    section: str | None = None
    classes: list[str] = field(default_factory=list)
    raw_count: int = 0
    kept_count: int = 0
    whitespace_fixed: int = 0
    empty_strings: list[tuple[str, int]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)
    cross_file_duplicates: dict[str, int] = field(default_factory=dict)
    dropped_classes: list[str] = field(default_factory=list)
    dropped_texts: int = 0

    @property
    def name(self) -> str:
        return Path(self.path).name

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["empty_strings"] = [list(pair) for pair in self.empty_strings]
        return data

    def summary_line(self) -> str:
        """One line such as ``f.json: 101 classes, 3030 texts -> 2957 kept; 73 exact ...``."""
        label = f"{self.name} [{self.section}]" if self.section else self.name
        parts = [f"{label}: {len(self.classes)} classes, {self.raw_count} texts -> {self.kept_count} kept"]
        counted = [
            (sum(self.duplicates.values()), "exact duplicates collapsed"),
            (sum(self.cross_file_duplicates.values()), "duplicates of earlier files collapsed"),
            (self.whitespace_fixed, "whitespace-normalised"),
            (len(self.empty_strings), "empty strings dropped"),
        ]
        parts += [f"{n} {what}" for n, what in counted if n]
        if self.empty_classes:
            parts.append(f"{len(self.empty_classes)} empty classes ({_preview(self.empty_classes)})")
        if self.dropped_classes:
            parts.append(f"{len(self.dropped_classes)} classes not in the class list dropped "
                         f"({self.dropped_texts} texts: {_preview(self.dropped_classes)})")
        return "; ".join(parts)


@dataclass
class CuratedImport:
    """The descriptions of an import plus a report per file.

    ``missing_classes``: classes of the given class list with no description in the result;
    ``dropped_classes``: classes in the files but not in the class list (``restrict=True``).
    """

    descriptions: list[Description]
    files: list[FileReport]
    created: str
    missing_classes: list[str] = field(default_factory=list)
    dropped_classes: list[str] = field(default_factory=list)
    case_collisions: list[list[str]] = field(default_factory=list)
    display_names: dict[str, str] = field(default_factory=dict)  # recorded by a kbuild export
    similar_classes: list[SimilarClasses] = field(default_factory=list)  # maybe one class under two names
    class_map: dict[str, str] = field(default_factory=dict)  # the --class-map renames applied

    def class_counts(self) -> dict[str, int]:
        """Descriptions per class, classes in first-seen order."""
        return dict(Counter(d.class_name for d in self.descriptions))

    def to_json(self, include_descriptions: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "created": self.created,
            "total_descriptions": len(self.descriptions),
            "class_counts": self.class_counts(),
            "files": [report.to_json() for report in self.files],
            "missing_classes": list(self.missing_classes),
            "dropped_classes": list(self.dropped_classes),
            "case_collisions": [list(group) for group in self.case_collisions],
            "similar_classes": [pair.to_json() for pair in self.similar_classes],
            "class_map": dict(self.class_map),
        }
        if include_descriptions:
            data["descriptions"] = [d.to_json() for d in self.descriptions]
        return data

    def summary_lines(self) -> list[str]:
        """Short human-readable lines: one per file, then totals and missing classes."""
        lines = [report.summary_line() for report in self.files]
        if len(self.files) > 1:
            lines.append(f"total: {len(self.descriptions)} descriptions in "
                         f"{len(self.class_counts())} classes")
        if self.missing_classes:
            lines.append(f"{len(self.missing_classes)} classes of the class list have no "
                         f"descriptions: {_preview(self.missing_classes)}")
        for group in self.case_collisions:
            lines.append(f"warning: classes that differ only in letter case stay separate: {' / '.join(group)} "
                         "(join them with --class-map, e.g. a JSON {\"old\": \"new\"})")
        if self.similar_classes:
            shown = "; ".join(pair.describe() for pair in self.similar_classes[:_PREVIEW])
            more = len(self.similar_classes) - _PREVIEW
            lines.append(f"warning: {len(self.similar_classes)} pairs of classes may be one class under two names: "
                         f"{shown}{f'; ... and {more} more (see --json)' if more > 0 else ''} (they stay separate; "
                         "join a pair with --class-map MAP, a JSON {\"name\": \"kept name\"} or CSV name,kept name)")
        return lines


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_unknown_classes(parsed: list[ParsedFile], allowed: set[str] | None, restrict: bool) -> None:
    """Refuse classes outside the class list unless ``restrict`` says to drop them."""
    if allowed is None or restrict:
        return
    unknown = list(dict.fromkeys(c for p in parsed for c in p.groups if c not in allowed))
    if unknown:
        files = ", ".join(p.path.name for p in parsed if any(c not in allowed for c in p.groups))
        raise KbuildError(
            f"{len(unknown)} classes in {files} are not in the class list: {_preview(unknown)} "
            "(add them to the classes file, or pass --restrict to drop them)"
        )


def _check_total_size(paths: list[Path], max_bytes: int) -> None:
    """The byte limit holds for one load, not only for each file: three 196 MB files once took 2 GB."""
    sizes = []
    for path in paths:
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            sizes.append(0)  # a missing file gets its own message when it is read
    if len(paths) > 1 and sum(sizes) > max_bytes:
        raise KbuildError(f"{len(paths)} curated files of {_megabytes(sum(sizes))} together, over the limit of "
                         f"{_megabytes(max_bytes)} per load: load them in parts as separate snapshots, then "
                         "'kbuild merge' them")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _check_text_count(parsed: list[ParsedFile], max_texts: int) -> None:
    """Refuse an import too large to embed in memory, before anything is embedded."""
    total = 0
    for item in parsed:
        total += sum(len(items) for items in item.groups.values())
        if total > max_texts:
            raise InputFileError(
                item.path, f"{total:,} texts read so far, over the limit of {max_texts:,} per load",
                "split the file and load the parts as separate snapshots, then 'kbuild merge' them")


def _check_section_used(section: str | None, parsed: list[ParsedFile]) -> None:
    if section is not None and not any(p.format == "kpl" for p in parsed):
        raise UsageError("--section applies only to kpl files, and none of the inputs is one")


class _Deduper:
    """Exact-duplicate detection over (class, normalised text), per file and across files."""

    def __init__(self) -> None:
        self.earlier: set[tuple[str, str]] = set()
        self.here: set[tuple[str, str]] = set()

    def next_file(self) -> None:
        self.earlier |= self.here
        self.here = set()

    def classify(self, key: tuple[str, str]) -> str:
        """'duplicate' (seen in this file), 'cross' (seen in an earlier file) or 'new'."""
        if key in self.here:
            return "duplicate"
        # Recorded even when it repeats an earlier file, so a file's own duplicate count
        # does not depend on the order the files were given in.
        self.here.add(key)
        return "cross" if key in self.earlier else "new"


def _clean_class(report: FileReport, class_name: str, items: list[str],
                 dedup: _Deduper, make: Any) -> list[Description]:
    """Apply normalisation, empty-string and duplicate rules to one class of one file."""
    kept: list[Description] = []
    non_empty = 0
    for index, item in enumerate(items):
        spaced = normalise_text(item)
        if not spaced:
            report.empty_strings.append((class_name, index))
            continue
        non_empty += 1
        report.whitespace_fixed += spaced != item
        text = nfc(spaced)  # one spelling per text, so NFC and NFD copies collapse as duplicates
        verdict = dedup.classify((class_name, text))
        if verdict == "new":
            kept.append(make(class_name, text))
        else:
            counts = report.duplicates if verdict == "duplicate" else report.cross_file_duplicates
            counts[class_name] = counts.get(class_name, 0) + 1
    if not non_empty:
        report.empty_classes.append(class_name)
    return kept


def _clean_file(parsed: ParsedFile, allowed: set[str] | None, dedup: _Deduper,
                created: str) -> tuple[FileReport, list[Description]]:
    """The descriptions one parsed file contributes, and the report of what was changed."""
    report = FileReport(path=str(parsed.path), format=parsed.format, sha256=parsed.sha256,
                        section=parsed.section, classes=list(parsed.groups),
                        raw_count=sum(len(items) for items in parsed.groups.values()))
    extra: dict[str, Any] = {"format": parsed.format, "file_sha256": parsed.sha256}
    if parsed.section is not None:
        extra["section"] = parsed.section
    source = f"curated:{parsed.path.name}"

    def make(class_name: str, text: str) -> Description:
        # Each description gets its own extra dict: later steps (prune) add to it.
        return Description(class_name, text, source=source, created=created, extra=dict(extra))

    kept: list[Description] = []
    for class_name, items in parsed.groups.items():
        if allowed is not None and class_name not in allowed:
            report.dropped_classes.append(class_name)
            report.dropped_texts += len(items)
            continue
        kept += _clean_class(report, class_name, items, dedup, make)
    report.kept_count = len(kept)
    dedup.next_file()
    return report, kept


@dataclass(frozen=True)
class ImportLimits:
    """How much one load may read: ``max_bytes`` per file, ``max_texts`` in all files together
    (None: ``DEFAULT_MAX_BYTES`` / ``DEFAULT_MAX_TEXTS``, read when the load runs)."""

    max_bytes: int | None = None
    max_texts: int | None = None


def load_curated(
    paths: Iterable[Path | str],
    *,
    format: str | None = None,
    section: str | None = None,
    classes: list[str] | None = None,
    restrict: bool = False,
    class_map: dict[str, str] | None = None,
    created: str | None = None,
    limits: ImportLimits = ImportLimits(),
) -> CuratedImport:
    """Read curated files into descriptions, with a report of every change made.

    ``format``: a name from ``FORMATS`` (autodetected per file when None); ``section``: the
    KPL section (``X`` or ``X_Features``); ``classes``: the class list to check against (by
    name); ``restrict``: drop classes outside it instead of refusing; ``class_map``: {name in the
    files: name to load it as}, applied first (names mapped to one join); ``created``: the ISO
    timestamp for every description (default: now, UTC); ``limits``: refuse larger files or more texts.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise UsageError("no curated files given")
    if format is not None:
        get_reader(format)  # an unknown name fails before any file is read
    max_bytes = DEFAULT_MAX_BYTES if limits.max_bytes is None else limits.max_bytes
    max_texts = DEFAULT_MAX_TEXTS if limits.max_texts is None else limits.max_texts
    _check_total_size(files, max_bytes)
    parsed: list[ParsedFile] = []
    for path in files:  # one file at a time: the text limit stops the import before the next is parsed
        item = read_source(path, format, section, max_bytes)
        if class_map:
            item.groups = rename_classes(item.groups, class_map)
            item.display_names = {class_map.get(k, k): v for k, v in item.display_names.items()}
        parsed.append(item)
        _check_text_count(parsed, max_texts)
    _check_section_used(section, parsed)
    allowed = None if classes is None else set(classes)
    _check_unknown_classes(parsed, allowed, restrict)

    created = created or _utc_now()
    dedup = _Deduper()
    result = CuratedImport(descriptions=[], files=[], created=created, class_map=dict(class_map or {}))
    for item in parsed:
        report, kept = _clean_file(item, allowed, dedup, created)
        result.files.append(report)
        result.descriptions += kept
        result.display_names.update(item.display_names)
    present = {d.class_name for d in result.descriptions}
    result.missing_classes = [c for c in (classes or []) if c not in present]
    result.dropped_classes = list(dict.fromkeys(c for r in result.files for c in r.dropped_classes))
    result.case_collisions = case_collisions(d.class_name for d in result.descriptions)
    return result


__all__ = ["CuratedImport", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_TEXTS", "FORMATS", "FileReport", "ImportLimits",
           "load_curated"]
