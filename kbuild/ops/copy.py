"""``kbuild copy REF... --to DIR|URL [--from DIR|URL] [--all]``: move snapshots between stores.

Either side is an embedded store (a folder) or a Chroma server (an http(s) URL). Each snapshot keeps
its name, manifest (parents, created time, provenance) and tags, and is checked on arrival
(``kbuild.store.transfer.publish_exact``). Snapshots go oldest first, so parents arrive before
their children. A snapshot already in the target with the same content is skipped, which makes a
second copy copy nothing; a name the target uses for other content stops the copy before anything
is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbuild import settings
from kbuild.descriptions import content_hash
from kbuild.errors import KbuildError, StoreUnavailable, UsageError
from kbuild.store import SnapshotInfo, SnapshotStore
from kbuild.store.transfer import publish_exact, taken_names


@dataclass
class CopyResult:
    source: str
    target: str
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the target with the same content
    tags: list[str] = field(default_factory=list)  # "tag -> snapshot" set in the target
    tags_left: list[str] = field(default_factory=list)  # target tags that point elsewhere, left as they are

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.target, "copied": self.copied, "skipped": self.skipped,
                "tags": self.tags, "tags_left": self.tags_left}


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def open_endpoint(spec: str, role: str) -> SnapshotStore:
    """A store named by ``--from``/``--to``: a folder (embedded) or an http(s) URL (Chroma server)."""
    try:
        if is_url(spec):
            return SnapshotStore(settings.store_path(None), spec, settings.chroma_token())
        return SnapshotStore(Path(spec).expanduser())
    except StoreUnavailable as err:
        raise StoreUnavailable(f"copy {role} {spec}: {err}".replace(" or drop --chroma-url", "")) from err


def _same_store(a: SnapshotStore, b: SnapshotStore) -> bool:
    if a.mode == b.mode == "embedded":
        return a.home.expanduser().resolve() == b.home.expanduser().resolve()
    return a.mode == b.mode and a.location.rstrip("/") == b.location.rstrip("/")


def _selected(source: SnapshotStore, references: list[str], everything: bool) -> list[SnapshotInfo]:
    if everything and references:
        raise UsageError("Name snapshots or pass --all, not both")
    if not everything and not references:
        raise UsageError("Name the snapshots to copy (e.g. kbuild copy v1 v2 --to DIR) or pass --all")
    snapshots = source.list()
    if everything:
        if not snapshots:
            raise KbuildError(f"No snapshots in {source.location} to copy")
        return snapshots
    wanted = {source.resolve(r).name for r in references}
    return [s for s in snapshots if s.name in wanted]  # oldest first: parents before children


def _plan(target: SnapshotStore, chosen: list[SnapshotInfo]) -> tuple[list[SnapshotInfo], list[str]]:
    """(to copy, already there); a name the target holds with other content stops everything."""
    there = {s.name: s for s in target.list()}
    removed_there = taken_names(target) - set(there)
    conflicts = [s.name for s in chosen if (s.name in there and there[s.name].content_hash != s.content_hash)
                 or s.name in removed_there]
    if conflicts:
        raise KbuildError(f"{target.location} already uses the name(s) {', '.join(conflicts)} for other content "
                          "(or removed them); nothing was copied (copy into another store, or export with "
                          "'kbuild export SNAP --format parquet' and load it there under a new name)")
    skipped = [s.name for s in chosen if s.name in there]
    return [s for s in chosen if s.name not in there], skipped


def copy_snapshots(source: SnapshotStore, target: SnapshotStore, references: list[str],
                   everything: bool = False) -> CopyResult:
    """Copy the named snapshots (or all) from ``source`` to ``target``; see the module doc."""
    if _same_store(source, target):
        raise UsageError(f"--from and --to are the same store ({source.location})")
    chosen = _selected(source, references, everything)
    todo, skipped = _plan(target, chosen)
    result = CopyResult(source.location, target.location, skipped=skipped)
    for info in todo:
        kb = source.read(info.name)
        if content_hash((d.class_name, d.text) for d in kb.descriptions) != info.content_hash:
            raise KbuildError(f"{info.name} in {source.location} does not match its own content hash; run "
                              f"'kbuild verify {info.name}' there (copied so far: {', '.join(result.copied) or 'none'})")
        publish_exact(target, kb)
        result.copied.append(info.name)
    _copy_tags(source, target, {s.name for s in chosen}, result)
    return result


def _copy_tags(source: SnapshotStore, target: SnapshotStore, names: set[str], result: CopyResult) -> None:
    theirs = target.tags()
    for tag, snapshot in sorted(source.tags().items()):
        if snapshot not in names:
            continue
        if theirs.get(tag) not in (None, snapshot):
            result.tags_left.append(f"{tag} -> {theirs[tag]}")
            continue
        if theirs.get(tag) is None:
            target.tag(snapshot, tag)
        result.tags.append(f"{tag} -> {snapshot}")
