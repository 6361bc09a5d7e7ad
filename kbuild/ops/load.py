"""``kbuild load``: curated files -> embeddings -> a new snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kbuild.classes_file import parse_class_map, parse_classes_file
from kbuild.clip.text import check_template
from kbuild.errors import KbuildError, UsageError
from kbuild.ops import provenance
from kbuild.ops.restore import BundleImport, is_bundle, restore_bundle
from kbuild.ops.unchanged import repeated_run, same_as_earlier
from kbuild.sources.class_names import similar_classes
from kbuild.sources.curated import CuratedImport, load_curated
from kbuild.sources.embedded import EmbeddedImport, is_embedded_file, read_embedded
from kbuild.store import SnapshotInfo, SnapshotStore
from kbuild.store.manifest import SnapshotDraft


@dataclass
class LoadResult:
    """``snapshot`` is the new snapshot, or with ``unchanged`` the existing one it would repeat."""

    snapshot: SnapshotInfo
    imported: CuratedImport | EmbeddedImport | BundleImport
    unchanged: bool = False
    repeats: SnapshotInfo | None = None  # an older snapshot with this content (no longer latest)

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot.name, "published": not self.unchanged,
                "content_hash": self.snapshot.content_hash,
                "total": self.snapshot.manifest["total"], "import": self.imported.to_json(),
                "same_content_as": self.repeats.name if self.repeats else None}


def load_files(store: SnapshotStore, make_embedder: Callable[[], Any], paths: list[Path], template: str,
               fmt: str | None = None, section: str | None = None, classes_file: Path | None = None,
               restrict: bool = False, name: str | None = None, force: bool = False, *,
               class_map: Path | None = None) -> LoadResult:
    """Import curated files, embed ``template.format(class, text)`` with CLIP, publish a snapshot.

    ``make_embedder()`` is called only once the files have parsed, so a malformed file is reported
    before a (possibly large) CLIP model is loaded. A rerun whose result equals the latest
    snapshot (a load of the same content, embedded the same way) publishes nothing unless ``force``.
    ``class_map``: a JSON/CSV map {name in the files: name to load it as}; classes that look like
    one class under two names are reported in ``imported.similar_classes`` (the map joins them).
    """
    store.check_name_free(name)  # a bad or taken --name fails before any file is read or embedded
    check_template(template)
    entries = parse_classes_file(classes_file) if classes_file else None
    classes = [entry.name for entry in entries] if entries else None
    displays = {e.name: e.display for e in entries or [] if e.display != e.name}
    if any(is_bundle(p) for p in paths):  # a Parquet bundle brings its vectors and its history: no CLIP
        if classes_file:
            raise UsageError("--classes does not apply to a Parquet bundle: it is restored exactly as exported "
                             "(load it, then prune or review the snapshot)")
        snapshot, bundle, unchanged = restore_bundle(store, paths, name, force)
        return LoadResult(snapshot, bundle, unchanged)
    renames = parse_class_map(class_map) if class_map else None
    if any(is_embedded_file(p) for p in paths):
        if renames:
            raise UsageError("--class-map renames classes of curated files; an embeddings file keeps its classes "
                             "(rename them in the file, or load without --class-map)")
        return _load_embedded(store, paths, classes, restrict, name, classes_file, displays, force)
    imported = load_curated(paths, format=fmt, section=section, classes=classes, restrict=restrict,
                            class_map=renames)
    if not imported.descriptions:  # before anything is embedded or written
        raise KbuildError(f"Nothing to load: no descriptions in {', '.join(r.name for r in imported.files)} "
                          "(every class is empty or was dropped; add descriptions, or check --section and --classes)")
    embedder = make_embedder()
    kept_classes = [[c for c in r.classes if c not in set(r.dropped_classes) | set(r.empty_classes)]
                    for r in imported.files]
    imported.similar_classes = similar_classes(kept_classes, embedder.embed_class_names)
    displays = {**imported.display_names, **displays}  # the classes file wins over an export's manifest
    clip = {**embedder.clip.describe(), "template": template}
    existing = None if force else repeated_run(store, "load", imported.descriptions, clip, displays)
    if existing is not None:  # checked before embedding: a rerun costs no CLIP work
        return LoadResult(existing, imported, unchanged=True)
    embeddings = embedder.embed_descriptions(imported.descriptions, template, displays)
    parameters = {"files": [Path(p).name for p in paths], "format": fmt, "section": section,
                  "classes_file": Path(classes_file).name if classes_file else None, "restrict": restrict}
    if renames:
        parameters["class_map"] = renames
    draft = SnapshotDraft(imported.descriptions, embeddings, "load", parameters, clip=clip,
                          extra={"import": imported.to_json()}, display_names=displays,
                          provenance=provenance.loaded(paths))
    return _publish(store, draft, name, imported, force)


def _publish(store: SnapshotStore, draft: SnapshotDraft, name: str | None, imported, force: bool,
             identity: dict[str, Any] | None = None) -> LoadResult:
    """Publish ``draft``, saying which older snapshot it repeats (``identity``: the clip dict to compare)."""
    repeats = None if force else same_as_earlier(store, "load", draft.descriptions, identity or draft.clip,
                                                 draft.display_names)
    if repeats is not None:
        draft.extra["same_content_as"] = repeats.name
    return LoadResult(store.publish(draft, name=name), imported, repeats=repeats)


def _load_embedded(store: SnapshotStore, paths: list[Path], classes: list[str] | None, restrict: bool,
                   name: str | None, classes_file: Path | None, displays: dict[str, str],
                   force: bool) -> LoadResult:
    """A knowledge base that brings its own vectors: stored as given, no CLIP model loaded."""
    if len(paths) != 1:
        raise UsageError("Load an embeddings file (.npz, or .jsonl with embeddings) on its own, not with other files "
                         "(load each separately, then combine them with 'kbuild merge')")
    imported = read_embedded(paths[0], classes, restrict)
    if not imported.descriptions:
        raise KbuildError(f"Nothing to load: no descriptions left in {Path(paths[0]).name} (check --classes)")
    parameters = {"files": [Path(paths[0]).name], "format": "embeddings", "section": None,
                  "classes_file": Path(classes_file).name if classes_file else None, "restrict": restrict}
    # The embedding space is named by the file; there is no model to reload and no known template.
    clip = {"model": None, "pretrained": None, "model_id": imported.model_id, "dim": imported.dim,
            "template": None, "imported": True}
    # The vectors are part of the content: kept in extra (a prune or merge child copies 'clip', not 'extra').
    identity = {**clip, "vectors_hash": imported.vectors_hash()}
    existing = None if force else repeated_run(store, "load", imported.descriptions, identity, displays)
    if existing is not None:
        return LoadResult(existing, imported, unchanged=True)
    draft = SnapshotDraft(imported.descriptions, imported.embeddings, "load", parameters, clip=clip,
                          extra={"import": imported.to_json(), "vectors_hash": identity["vectors_hash"]},
                          display_names=displays, provenance=provenance.loaded(paths))
    return _publish(store, draft, name, imported, force, identity)
