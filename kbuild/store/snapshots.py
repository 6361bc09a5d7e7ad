"""SnapshotStore: list, resolve, read, publish and tag immutable knowledge-base snapshots.

One Chroma collection per snapshot: documents are description texts, embeddings the CLIP text
embeddings we computed, metadata the class and provenance; the manifest is the collection's metadata.

Publishing is atomic: records go into a pending collection (``kbuild-tmp-...``) that no reader lists,
and only when every record is in is it renamed to its real name. Chroma refuses a rename onto an
existing name, which is what makes auto-numbering safe under concurrent writers: the loser of a
race simply takes the next number. A killed writer leaves at most a pending collection (``gc``).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Concatenate, Container, Iterator, ParamSpec, TypeVar, cast

import numpy as np

from kbuild import settings
from kbuild.descriptions import Description
from kbuild.errors import KbuildError, SnapshotNotFound, StoreUnavailable
from kbuild.progress import task
from kbuild.store import damage, names
from kbuild.store.client import is_auth_error, open_embedded, open_server, refused
from kbuild.store.locking import store_write_lock
from kbuild.store.manifest import SnapshotDraft, build_manifest, now_iso
from kbuild.store.records import REMOVED, RemovedRecord, kept_metadata, removed_metadata, to_description, to_removed

_PAGE = 5000
_WRITE_BATCH = 5000  # records per add(): Chroma's own limit is larger; this bounds one request's size
# "ip", not "cosine": Chroma re-normalises vectors stored in a cosine space, so they would not
# read back bit-identical; ours are unit rows already, where inner product is cosine similarity.
# kbuild never queries the HNSW index (it reads whole snapshots by page or by id), so the graph is
# as light as hnswlib allows to stay useful: building it is most of Chroma's CPU time in a write of
# 512-d vectors. Measured on 30 000 x 512 (benchmarks/bench_parquet.py): M 8 / ef 16 took ~9 s of
# CPU for the index alone, M 4 / ef 4 ~3 s; Chroma's default (M 16, ef 100) costs several times more.
# Snapshots written before keep their own settings: Chroma stores them with each collection.
_COLLECTION_CONFIG = {"hnsw": {"space": "ip", "ef_construction": 4, "max_neighbors": 4}}


@dataclass
class SnapshotInfo:
    """A published snapshot: its name, its manifest, and the tags pointing at it."""

    name: str
    manifest: dict[str, Any]
    tags: list[str] = field(default_factory=list)

    @property
    def created(self) -> str:
        return cast(str, self.manifest.get("created", ""))

    @property
    def content_hash(self) -> str:
        return cast(str, self.manifest.get("content_hash", ""))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "tags": sorted(self.tags), "manifest": self.manifest}


@dataclass
class KnowledgeBase:
    """A snapshot read back: kept descriptions with their (M, D) embeddings, and what was removed."""

    info: SnapshotInfo
    descriptions: list[Description]
    embeddings: np.ndarray
    removed: list[RemovedRecord] = field(default_factory=list)
    removed_embeddings: np.ndarray | None = None  # (R, D), aligned with ``removed``, when read with embeddings

    def classes(self) -> list[str]:
        return list(dict.fromkeys(d.class_name for d in self.descriptions))

    def rows_by_class(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for i, d in enumerate(self.descriptions):
            rows.setdefault(d.class_name, []).append(i)
        return rows

    def class_embeddings(self, class_names: list[str]) -> list[np.ndarray]:
        """One (M_c, D) array per requested class, in the order given (missing class -> KeyError)."""
        rows = self.rows_by_class()
        return [self.embeddings[rows[c]] for c in class_names]


_WRITES = {"publish", "tag", "remove", "gc", "gc_segments"}


_Store = TypeVar("_Store", bound="SnapshotStore")
_Args = ParamSpec("_Args")
_Result = TypeVar("_Result")


def _server_faults(
        method: Callable[Concatenate[_Store, _Args], _Result]) -> Callable[Concatenate[_Store, _Args], _Result]:
    """A Chroma server that goes away in the middle of a store call is a one-line StoreUnavailable, not a
    stack trace (the pending collection of a write in progress stays invisible: nothing is half-published)."""
    @functools.wraps(method)
    def wrapper(self: _Store, /, *args: _Args.args, **kwargs: _Args.kwargs) -> _Result:
        try:
            if self.mode == "embedded":
                with damage.native_panics_silenced():
                    return method(self, *args, **kwargs)
            return method(self, *args, **kwargs)
        except (KbuildError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # a Rust panic from Chroma on a corrupt database is a BaseException
            writing = method.__name__ in _WRITES
            if self.mode == "embedded" and (known := damage.classify(exc, self.location, self.home, writing)):
                raise known from exc
            if not isinstance(exc, Exception):
                raise
            if self.mode == "server" and is_auth_error(exc):
                raise refused(self.location, exc) from exc  # location is the URL on a server
            if self.mode != "server" or not _is_transport_error(exc):
                raise
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise StoreUnavailable(
                f"Lost the connection to the Chroma server at {self.url} ({type(exc).__name__}: {detail}); "
                "nothing half-written was published and earlier snapshots are untouched; "
                "rerun the command when the server is back") from exc
    return wrapper


def _is_transport_error(exc: Exception) -> bool:
    import httpx

    return isinstance(exc, (httpx.TransportError, ConnectionError))


def _sort_key(info: SnapshotInfo) -> tuple[str, int, str]:
    number = names.auto_number(info.name)
    return (info.created, number if number is not None else -1, info.name)


class SnapshotStore:
    """The store at ``home`` (embedded Chroma under it) or on a Chroma server at ``url``."""

    def __init__(self, home: Path, url: str | None = None, token: str | None = None):
        self.home = Path(home)
        self.url = url
        self.mode = "server" if url else "embedded"
        self.client = open_server(url, token) if url else open_embedded(self.home)

    @classmethod
    def open(cls, store: str | None = None, chroma_url: str | None = None) -> "SnapshotStore":
        """Flag > environment > default, for both the home folder and the server URL."""
        return cls(settings.store_path(store), settings.chroma_url(chroma_url), settings.chroma_token())

    @property
    def location(self) -> str:
        return self.url or str(self.home)

    # ---- reading -------------------------------------------------------------------------
    def _collections(self) -> list[Any]:
        try:
            return list(self.client.list_collections())
        except Exception as exc:
            if self.mode == "server" and (is_auth_error(exc) or _is_transport_error(exc)):
                raise  # worded by _server_faults
            if self.mode == "embedded" and (known := damage.classify(exc, self.location, self.home)) is not None:
                raise known from exc
            raise StoreUnavailable(f"Cannot list snapshots in {self.location}: {exc}") from exc

    @_server_faults
    def tags(self) -> dict[str, str]:
        """Tag name -> snapshot name, ``latest`` not included (it is derived)."""
        return {c.name[len(names.TAG_PREFIX):]: (c.metadata or {}).get("target", "")
                for c in self._collections() if c.name.startswith(names.TAG_PREFIX)}

    @_server_faults
    def list(self) -> list[SnapshotInfo]:
        """Every published snapshot, oldest first, with its tags (``latest`` on the newest)."""
        collections = self._collections()
        tags: dict[str, list[str]] = {}
        for c in collections:
            if c.name.startswith(names.TAG_PREFIX):
                tags.setdefault((c.metadata or {}).get("target", ""), []).append(c.name[len(names.TAG_PREFIX):])
        infos = [SnapshotInfo(c.name, json.loads(c.metadata["kbuild_manifest"]), sorted(tags.get(c.name, [])))
                 for c in collections if _is_snapshot(c)]
        infos.sort(key=_sort_key)
        if infos:
            infos[-1].tags = [names.LATEST, *infos[-1].tags]
        return infos

    @_server_faults
    def resolve(self, reference: str) -> SnapshotInfo:
        """``snapshot_v3`` | ``v3`` | ``latest`` | a tag -> the snapshot; unknown -> a list of what exists."""
        names.check_reference(reference)
        snapshots = self.list()
        if not snapshots:
            raise SnapshotNotFound(f"No snapshots in {self.location} yet (create one with 'kbuild load FILE' "
                                   "or 'kbuild generate --classes FILE')")
        by_name = {s.name: s for s in snapshots}
        wanted = names.resolve_auto_name(reference)
        if reference == names.LATEST:
            return snapshots[-1]
        if wanted in by_name:
            return by_name[wanted]
        tags = self.tags()
        target = tags.get(reference)
        if target in by_name:
            return by_name[target]
        if wanted in self._removed_names():
            raise SnapshotNotFound(f"Snapshot {wanted} was removed (kbuild rm) from {self.location}. "
                                   f"{names.unknown_listing(reference, [s.name for s in snapshots], sorted(tags))} "
                                   "(see 'kbuild list')")
        listing = names.unknown_listing(reference, [s.name for s in snapshots], sorted(tags))
        raise SnapshotNotFound(f"Unknown snapshot '{reference}' in {self.location}. {listing} "
                               "(see 'kbuild list')")

    def _collection(self, name: str) -> Any:
        return self.client.get_collection(name, embedding_function=None)

    def _pages(self, name: str, include: builtins.list[str]) -> Iterator[dict[str, Any]]:
        from chromadb.errors import NotFoundError

        try:
            collection = self._collection(name)
            total = collection.count()
            with task(f"reading {name}", total) as progress:
                for offset in range(0, total, _PAGE):
                    page = collection.get(limit=_PAGE, offset=offset, include=include)
                    progress.advance(len(page["ids"]))
                    yield page
        except NotFoundError as exc:  # 'kbuild rm' in another process, between resolving and reading
            raise SnapshotNotFound(f"Snapshot {name} was removed while it was being read (by 'kbuild rm'?); "
                                   "nothing was written: see 'kbuild list'") from exc

    @_server_faults
    def read(self, reference: str, embeddings: bool = True, class_name: str | None = None) -> KnowledgeBase:
        """A snapshot's kept descriptions (+ embeddings, float32) and removed records, in write order."""
        info = self.resolve(reference)
        include = ["documents", "metadatas"] + (["embeddings"] if embeddings else [])
        rows: builtins.list[tuple[int, str, dict[str, Any], Any]] = []
        for page in self._pages(info.name, include):
            vectors = page.get("embeddings") if embeddings else None
            for j, (text, meta) in enumerate(zip(page["documents"], page["metadatas"])):
                if class_name is None or meta["class"] == class_name:
                    rows.append((meta["i"], text, meta, None if vectors is None else vectors[j]))
        rows.sort(key=lambda row: row[0])
        kept = [r for r in rows if r[2].get("state") != REMOVED]
        removed = [to_removed(r[1], r[2]) for r in rows if r[2].get("state") == REMOVED]
        matrix = (np.asarray([r[3] for r in kept], dtype=np.float32) if embeddings and kept
                  else np.zeros((0, 0), dtype=np.float32))
        gone = [r for r in rows if r[2].get("state") == REMOVED]
        removed_matrix: np.ndarray | None = None
        if embeddings and class_name is None:
            removed_matrix = (np.asarray([r[3] for r in gone], dtype=np.float32) if gone
                              else np.zeros((0, matrix.shape[1] if matrix.size else 0), dtype=np.float32))
        return KnowledgeBase(info, [to_description(r[1], r[2]) for r in kept], matrix, removed, removed_matrix)

    @_server_faults
    def vectors(self, kb: KnowledgeBase, rows: builtins.list[int]) -> np.ndarray:
        """(len(rows), D) float32 embeddings of ``kb``'s kept descriptions at ``rows``, fetched by id.

        For callers that read a snapshot without embeddings and need only a few (``diff``).
        """
        from chromadb.errors import NotFoundError

        ids = [kb.descriptions[r].id for r in rows]
        found: dict[str, Any] = {}
        try:
            collection = self._collection(kb.info.name)
            for start in range(0, len(ids), _PAGE):
                page = collection.get(ids=ids[start:start + _PAGE], include=["embeddings"])
                found.update(zip(page["ids"], page["embeddings"]))
        except NotFoundError as exc:
            raise SnapshotNotFound(f"Snapshot {kb.info.name} was removed while it was being read (by 'kbuild rm'?); "
                                   "nothing was written: see 'kbuild list'") from exc
        missing = [i for i in ids if i not in found]
        if missing:
            raise KbuildError(f"{kb.info.name} has no stored vector for {len(missing)} description(s); "
                              f"run 'kbuild verify {kb.info.name}'")
        return np.asarray([found[i] for i in ids], dtype=np.float32).reshape(len(ids), -1)

    # ---- writing -------------------------------------------------------------------------
    def _lock(self) -> contextlib.AbstractContextManager[None]:
        # Embedded Chroma is one folder shared by processes: serialise writers on this machine.
        return store_write_lock(self.home) if self.mode == "embedded" else contextlib.nullcontext()

    def check_name_free(self, name: str | None) -> None:
        """Refuse an invalid or taken ``name`` now, before a command's slow work (embedding, LLM calls);
        ``publish`` checks again under the write lock."""
        if name is not None:
            names.validate_snapshot_name(name)
            self._refuse_taken(name, {s.name for s in self.list()})

    @staticmethod
    def _refuse_taken(name: str | None, existing: Container[str]) -> None:
        if name is not None and name in existing:
            raise KbuildError(f"Snapshot '{name}' already exists and snapshots are immutable "
                              "(choose another --name, or leave it out for the next version)")

    @_server_faults
    def publish(self, draft: SnapshotDraft, name: str | None = None) -> SnapshotInfo:
        """Write ``draft`` as a new snapshot (named, or the next ``snapshot_vN``) and return it."""
        if name is not None:
            names.validate_snapshot_name(name)
        ids = draft.validate()
        with self._lock():
            existing = {s.name: s for s in self.list()}
            self._refuse_taken(name, existing)
            parents = [existing[p] if p in existing else self.resolve(p) for p in draft.parents]
            manifest = build_manifest(draft, parents)
            pending = self._write_pending(draft, manifest, ids)
            try:
                final = self._claim_name(pending, name, existing, manifest)
            except Exception:
                self._drop_pending(pending.name)  # an error (not a crash) leaves nothing for gc
                raise
        return SnapshotInfo(final, manifest)

    def _drop_pending(self, pending_name: str) -> None:
        with contextlib.suppress(Exception):  # best effort: 'kbuild gc' removes what this cannot
            if self._exists(pending_name):
                self.client.delete_collection(pending_name)
                if self.mode == "embedded":  # callers hold the write lock: no other write is half-made
                    damage.drop_orphaned_segments(self.home / "chroma")

    def _write_pending(self, draft: SnapshotDraft, manifest: dict[str, Any],
                       kept_ids: builtins.list[str] | None = None) -> Any:
        """Write ``draft`` into a new pending collection (``kept_ids``: its descriptions' ids, when the
        caller has them: each one is a hash of the text, 30 000 of them cost ~0.25 s)."""
        pending_name = f"{names.PENDING_PREFIX}{int(time.time())}-{uuid.uuid4().hex[:12]}"
        collection = self.client.create_collection(
            pending_name, embedding_function=None, configuration=_COLLECTION_CONFIG,
            metadata={"kbuild_kind": "snapshot", "kbuild_manifest": json.dumps(manifest, ensure_ascii=False)})
        ids, docs, metas, vectors = _records(draft, kept_ids)
        batch = max(1, min(self.client.get_max_batch_size(), _WRITE_BATCH))
        try:
            with task("writing snapshot", len(ids)) as progress:
                for start in range(0, len(ids), batch):
                    end = start + batch
                    collection.add(ids=ids[start:end], documents=docs[start:end],
                                   metadatas=metas[start:end], embeddings=vectors[start:end])
                    progress.advance(end - start if end <= len(ids) else len(ids) - start)
        except Exception:
            self._drop_pending(pending_name)
            raise
        if collection.count() != len(ids):
            self._drop_pending(pending_name)
            raise KbuildError(f"Write to {self.location} incomplete ({collection.count()} of {len(ids)} records); "
                              "nothing was published, try again")
        return collection

    def _claim_name(self, collection: Any, name: str | None, existing: dict[str, SnapshotInfo],
                    manifest: dict[str, Any]) -> str:
        if name is not None:
            if not self._try_rename(collection, name, manifest):
                self.client.delete_collection(collection.name)
                raise KbuildError(f"Snapshot '{name}' was created by another writer meanwhile (choose another --name)")
            return name
        taken = [*existing, *self._removed_names()]
        number = 1 + max((names.auto_number(n) or 0 for n in taken), default=0)
        for candidate in range(number, number + 1000):
            if self._try_rename(collection, names.auto_name(candidate), manifest):
                return names.auto_name(candidate)
        raise KbuildError("Could not claim a snapshot number after 1000 tries (is another writer looping?)")

    def _try_rename(self, collection: Any, new_name: str, manifest: dict[str, Any]) -> bool:
        # 'created' is the moment the snapshot becomes visible, stamped in the same call as the
        # rename: 'latest' and list order then follow publication, even for overlapping server writers.
        manifest["created"] = now_iso()
        try:
            collection.modify(name=new_name, metadata={
                "kbuild_kind": "snapshot", "kbuild_manifest": json.dumps(manifest, ensure_ascii=False)})
            return True
        except Exception as exc:
            if self._exists(new_name):
                return False  # taken by a concurrent writer: try the next name
            raise StoreUnavailable(f"Could not publish snapshot '{new_name}' in {self.location}: {exc}") from exc

    def _exists(self, name: str) -> bool:
        return any(c.name == name for c in self._collections())

    @_server_faults
    def tag(self, reference: str, tag: str) -> tuple[str, str | None]:
        """Point ``tag`` at a snapshot (moving it if it exists); returns (snapshot, previous target)."""
        names.validate_tag_name(tag)
        info = self.resolve(reference)
        if tag in {s.name for s in self.list()}:
            raise KbuildError(f"'{tag}' is already a snapshot name; choose another tag")
        collection = self.client.get_or_create_collection(
            names.TAG_PREFIX + tag, embedding_function=None, metadata={"kbuild_kind": "tag", "target": info.name})
        previous = (collection.metadata or {}).get("target")
        if previous != info.name:
            collection.modify(metadata={"kbuild_kind": "tag", "target": info.name})
        return info.name, (previous if previous != info.name else None)

    @_server_faults
    def remove(self, reference: str, force: bool = False) -> tuple[SnapshotInfo, builtins.list[str], builtins.list[str]]:
        """Delete a snapshot; returns (it, the tags removed with it, its children).

        A snapshot that is tagged or is the parent of another is refused unless ``force``: a tag
        names something someone chose to keep, and a child's lineage would point at nothing.
        """
        with self._lock():
            info = self.resolve(reference)
            snapshots = self.list()
            tags = sorted(t for t, target in self.tags().items() if target == info.name)
            children = [s.name for s in snapshots
                        if any(p.get("name") == info.name for p in s.manifest.get("parents", []))]
            if not force and (tags or children):
                why = "; ".join(part for part in (
                    f"tagged {', '.join(tags)}" if tags else "",
                    f"parent of {', '.join(children)}" if children else "") if part)
                raise KbuildError(f"{info.name} is {why}; pass --force to remove it anyway"
                                  + (" (its tags go with it)" if tags else ""))
            for tag in tags:
                self.client.delete_collection(names.TAG_PREFIX + tag)
            # A marker keeps the number taken: a later write never becomes a second, different snapshot_vN.
            self.client.get_or_create_collection(names.REMOVED_PREFIX + info.name, embedding_function=None,
                                                 metadata={"kbuild_kind": "removed", "name": info.name})
            segments = self._segments_of(info.name)
            self.client.delete_collection(info.name)
            self._free_segments(segments)
        return info, tags, children

    def _segments_of(self, name: str) -> builtins.list[str]:
        """The ids of the segments (folders, for the vector index) of collection ``name``; embedded only."""
        if self.mode != "embedded":
            return []
        return damage.segment_ids_of(self.home / "chroma", str(self._collection(name).id))

    def _free_segments(self, segment_ids: builtins.list[str]) -> None:
        """Delete the folders of these segments once the database no longer names them: Chroma's
        delete_collection leaves them on disk (until 'kbuild gc' found them, a removed snapshot kept its
        space)."""
        folder = self.home / "chroma"
        gone = set(segment_ids) & {p.name for p in damage.orphaned_segments(folder)}
        for segment in gone:
            shutil.rmtree(folder / segment, ignore_errors=True)

    def compact(self) -> bool:
        """Give the space of deleted collections back to the disk (embedded stores): SQLite keeps
        freed pages until VACUUM. Best effort: a store another process is using stays as it is."""
        database = self.home / "chroma" / "chroma.sqlite3"
        if self.mode != "embedded" or not database.is_file():
            return False
        import sqlite3

        with self._lock(), contextlib.suppress(sqlite3.Error):
            connection = sqlite3.connect(database, timeout=2.0)
            try:
                connection.execute("VACUUM")
                return True
            finally:
                connection.close()
        return False

    @_server_faults
    def removed_names(self) -> builtins.list[str]:
        """Names of snapshots removed with ``kbuild rm`` (their numbers stay taken)."""
        return self._removed_names()

    def _removed_names(self) -> builtins.list[str]:
        return [c.name[len(names.REMOVED_PREFIX):] for c in self._collections()
                if c.name.startswith(names.REMOVED_PREFIX)]

    @_server_faults
    def gc(self, older_than_s: float = 3600.0) -> builtins.list[str]:
        """Delete pending collections left by killed writers; returns their names."""
        removed: builtins.list[str] = []
        with self._lock():
            for c in self._collections():
                if not c.name.startswith(names.PENDING_PREFIX):
                    continue
                started = int(c.name[len(names.PENDING_PREFIX):].split("-")[0] or 0)
                # Embedded: we hold the write lock, so no live writer owns it. Server: go by age.
                if self.mode == "embedded" or time.time() - started > older_than_s:
                    self.client.delete_collection(c.name)
                    removed.append(c.name)
        return removed

    @_server_faults
    def gc_segments(self) -> builtins.list[tuple[str, int]]:
        """Delete segment folders no collection uses any more (Chroma leaves them behind when a
        collection is deleted, ~2 MB per killed 5 000-description write); returns (name, bytes) each.
        Embedded stores only: a server owns its own disk."""
        if self.mode != "embedded":
            return []
        freed: builtins.list[tuple[str, int]] = []
        with self._lock():  # writers create segments under this lock, so none is half-made now
            for folder in damage.orphaned_segments(self.home / "chroma"):
                size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                shutil.rmtree(folder)
                freed.append((folder.name, size))
        return freed


def _is_snapshot(collection: Any) -> bool:
    meta = collection.metadata or {}
    return (meta.get("kbuild_kind") == "snapshot" and "kbuild_manifest" in meta
            and not collection.name.startswith(names.INTERNAL_PREFIX))


def _records(draft: SnapshotDraft, kept_ids: list[str] | None = None
             ) -> tuple[list[str], list[str], list[dict[str, Any]], np.ndarray]:
    ids = list(kept_ids) if kept_ids is not None else [d.id for d in draft.descriptions]
    docs = [d.text for d in draft.descriptions]
    metas = [kept_metadata(d, i) for i, d in enumerate(draft.descriptions)]
    offset = len(ids)
    for j, r in enumerate(draft.removed):
        ids.append(f"{r.description.id}-removed-{j}")
        docs.append(r.description.text)
        metas.append(removed_metadata(r, offset + j))
    vectors = draft.embeddings
    if draft.removed:
        vectors = np.concatenate([vectors, draft.removed_embeddings]).astype(np.float32)
    return ids, docs, metas, vectors
