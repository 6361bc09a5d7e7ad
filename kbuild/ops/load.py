"""``kbuild load``: curated files -> embeddings -> a new snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from kbuild.classes_file import parse_class_map, parse_classes_file
from kbuild.clip.choice import ModelRequest
from kbuild.clip.text import check_template
from kbuild.descriptions import DEFAULT_TEMPLATE
from kbuild.errors import KbuildError, UsageError
from kbuild.ops import provenance
from kbuild.ops.embedding import new_snapshot_embedder
from kbuild.ops.restore import BundleImport, is_bundle, restore_bundle
from kbuild.ops.unchanged import repeated_run, same_as_earlier
from kbuild.sources.class_names import similar_classes
from kbuild.sources.curated import CuratedImport, load_curated
from kbuild.sources.embedded import EmbeddedImport, is_embedded_file, read_embedded
from kbuild.store import SnapshotInfo, SnapshotStore
from kbuild.store.manifest import SnapshotDraft


@dataclass(frozen=True)
class LoadRequest:
    """What ``kbuild load`` is asked to do (the CLI builds one from its flags; a notebook, by hand).

    ``files``: curated files, one embeddings file, or Parquet bundles; ``format``/``section``: how to
    read them; ``classes_file`` (+ ``restrict``): the class list to check against (or drop the rest);
    ``class_map``: a JSON/CSV file {name in the files: name to load it as}; ``name``: the snapshot's
    name (None: the next version); ``force``: publish even when nothing changed; ``template``: how
    descriptions are rendered for CLIP; ``model``: which CLIP model embeds them.
    """

    files: Sequence[Path]
    template: str = DEFAULT_TEMPLATE
    format: str | None = None
    section: str | None = None
    classes_file: Path | None = None
    restrict: bool = False
    class_map: Path | None = None
    name: str | None = None
    force: bool = False
    model: ModelRequest = field(default_factory=ModelRequest)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(Path(p) for p in self.files))


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


def load_files(store: SnapshotStore, request: LoadRequest) -> LoadResult:
    """Import curated files, embed ``template.format(class, text)`` with CLIP, publish a snapshot.

    The CLIP model is loaded only once the files have parsed, so a malformed file is reported
    before a (possibly large) model is loaded; a bundle or an embeddings file loads none. A rerun
    whose result equals the latest snapshot (a load of the same content, embedded the same way)
    publishes nothing unless ``request.force``. Classes that look like one class under two names
    are reported in ``imported.similar_classes`` (``request.class_map`` joins them).
    """
    paths, name, template = list(request.files), request.name, request.template
    store.check_name_free(name)  # a bad or taken --name fails before any file is read or embedded
    check_template(template)
    entries = parse_classes_file(request.classes_file) if request.classes_file else None
    classes = [entry.name for entry in entries] if entries else None
    displays = {e.name: e.display for e in entries or [] if e.display != e.name}
    if any(is_bundle(p) for p in paths):  # a Parquet bundle brings its vectors and its history: no CLIP
        if request.classes_file:
            raise UsageError("--classes does not apply to a Parquet bundle: it is restored exactly as exported "
                             "(load it, then prune or review the snapshot)")
        snapshot, bundle, unchanged = restore_bundle(store, paths, name, request.force)
        return LoadResult(snapshot, bundle, unchanged)
    renames = parse_class_map(request.class_map) if request.class_map else None
    if any(is_embedded_file(p) for p in paths):
        if renames:
            raise UsageError("--class-map renames classes of curated files; an embeddings file keeps its classes "
                             "(rename them in the file, or load without --class-map)")
        return _load_embedded(store, request, classes, displays)
    imported = load_curated(paths, format=request.format, section=request.section, classes=classes,
                            restrict=request.restrict, class_map=renames)
    if not imported.descriptions:  # before anything is embedded or written
        raise KbuildError(f"Nothing to load: no descriptions in {', '.join(r.name for r in imported.files)} "
                          "(every class is empty or was dropped; add descriptions, or check --section and --classes)")
    embedder = new_snapshot_embedder(store, request.model)
    kept_classes = [[c for c in r.classes if c not in set(r.dropped_classes) | set(r.empty_classes)]
                    for r in imported.files]
    imported.similar_classes = similar_classes(kept_classes, embedder.embed_class_names)
    displays = {**imported.display_names, **displays}  # the classes file wins over an export's manifest
    clip = {**embedder.clip.describe(), "template": template}
    existing = None if request.force else repeated_run(store, "load", imported.descriptions, clip, displays)
    if existing is not None:  # checked before embedding: a rerun costs no CLIP work
        return LoadResult(existing, imported, unchanged=True)
    embeddings = embedder.embed_descriptions(imported.descriptions, template, displays)
    parameters = _parameters(request, request.format, request.section)
    if renames:
        parameters["class_map"] = renames
    draft = SnapshotDraft(imported.descriptions, embeddings, "load", parameters, clip=clip,
                          extra={"import": imported.to_json()}, display_names=displays,
                          provenance=provenance.loaded(paths))
    return _publish(store, draft, imported, request)


def _parameters(request: LoadRequest, fmt: str | None, section: str | None) -> dict[str, Any]:
    """The manifest's record of how the snapshot was loaded (file names, not paths)."""
    classes_file = request.classes_file
    return {"files": [p.name for p in request.files], "format": fmt, "section": section,
            "classes_file": Path(classes_file).name if classes_file else None, "restrict": request.restrict}


def _publish(store: SnapshotStore, draft: SnapshotDraft, imported, request: LoadRequest,
             identity: dict[str, Any] | None = None) -> LoadResult:
    """Publish ``draft``, saying which older snapshot it repeats (``identity``: the clip dict to compare)."""
    repeats = None if request.force else same_as_earlier(store, "load", draft.descriptions,
                                                         identity or draft.clip, draft.display_names)
    if repeats is not None:
        draft.extra["same_content_as"] = repeats.name
    return LoadResult(store.publish(draft, name=request.name), imported, repeats=repeats)


def _load_embedded(store: SnapshotStore, request: LoadRequest, classes: list[str] | None,
                   displays: dict[str, str]) -> LoadResult:
    """A knowledge base that brings its own vectors: stored as given, no CLIP model loaded."""
    paths, force = list(request.files), request.force
    if len(paths) != 1:
        raise UsageError("Load an embeddings file (.npz, or .jsonl with embeddings) on its own, not with other files "
                         "(load each separately, then combine them with 'kbuild merge')")
    imported = read_embedded(paths[0], classes, request.restrict)
    if not imported.descriptions:
        raise KbuildError(f"Nothing to load: no descriptions left in {Path(paths[0]).name} (check --classes)")
    parameters = _parameters(request, "embeddings", None)
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
    return _publish(store, draft, imported, request, identity)
