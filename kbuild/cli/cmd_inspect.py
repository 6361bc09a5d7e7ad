"""Inspection commands: list, show, diff, tag, export, verify, gc, path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import info, open_store, print_json
from kbuild.cli.options import ChromaUrlOpt, JsonOpt, StoreOpt
from kbuild.cli.render import console, line, print_diff, snapshots_table
from kbuild.descriptions import visible
from kbuild.diff import diff_stored
from kbuild.errors import KbuildError, SnapshotNotFound, UsageError, did_you_mean
from kbuild.ops.export import export_hf, export_parquet
from kbuild.ops.inspect import EXPORT_FORMATS, export_text, remove_snapshot, verify
from kbuild.ops.provenance import summary_lines
from kbuild.store.transfer import lineage

BUNDLE_FORMATS = ("parquet", "hf")
ALL_FORMATS = (*EXPORT_FORMATS, *BUNDLE_FORMATS)
SnapArg = Annotated[str, typer.Argument(help="Snapshot: snapshot_v3, v3, latest or a tag.")]


def list_(store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False) -> None:
    """List snapshots, oldest first, with tags and provenance."""
    kb_store = open_store(store, chroma_url)
    snapshots = kb_store.list()
    if json_out:
        print_json([s.to_json() for s in snapshots])
    elif not snapshots:
        info(f"No snapshots in {kb_store.location} yet (create one with 'kbuild load FILE')")
    else:
        console.print(snapshots_table(snapshots))


def show(
    snapshot: SnapArg,
    class_name: Annotated[Optional[str], typer.Option("--class", help="Only this class.")] = None,
    removed: Annotated[bool, typer.Option("--removed", help="List removed descriptions and why.")] = False,
    store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Show a snapshot's manifest and descriptions."""
    kb = open_store(store, chroma_url).read(snapshot, embeddings=False, class_name=class_name)
    if class_name and not kb.descriptions and not kb.removed:
        hint = did_you_mean(class_name, kb.info.manifest.get("counts", {}))
        raise KbuildError(f"Class '{class_name}' is not in {kb.info.name}{hint} (see 'kbuild show {kb.info.name}')")
    if json_out:
        print_json({**kb.info.to_json(), "descriptions": [d.to_json() for d in kb.descriptions],
                    "removed": [r.to_json() for r in kb.removed]})
        return
    m = kb.info.manifest
    console.print(line((kb.info.name, "bold"), f"  {m['operation']}  {m['created'][:19]}  {m['content_hash']}"))
    console.print(line(f"parents: {', '.join(p['name'] for p in m['parents']) or '-'}   "
                       f"clip: {m['clip'].get('model_id')}   template: {m['clip'].get('template')!r}"))
    for text in summary_lines(m):
        console.print(line(text))
    if removed:
        for r in kb.removed:
            console.print(line(f"- [{r.description.class_name}] {r.description.text!r}: {r.explain()}"))
        return
    shown = m.get("display_names") or {}
    for name, rows in kb.rows_by_class().items():
        label = f"{shown[name]} ({name})" if name in shown else name
        console.print(line((label, "bold"), f" ({len(rows)})"))
        for row in rows:
            console.print(line(f"  - {kb.descriptions[row].text}"))


def diff(
    old: SnapArg,
    new: Annotated[Optional[str], typer.Argument(help="Second snapshot \\[default: compare OLD with its parent].")] = None,
    reword_threshold: Annotated[float, typer.Option("--reword-threshold", min=-1.0, max=1.0,
                                                    help="CLIP similarity from which a removed+added pair is a rewording.")] = 0.9,
    similarity_model: Annotated[Optional[str], typer.Option("--similarity-model", help="Find rewordings with this sentence-transformers model (minilm: the offline one of the similarity extra) instead of the stored CLIP vectors.")] = None,
    store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Show what changed between two snapshots (classes, descriptions, rewordings, manifest)."""
    kb_store = open_store(store, chroma_url)
    if new is None:
        child = kb_store.resolve(old)
        parents = child.manifest.get("parents", [])
        if not parents:
            raise UsageError(f"{child.name} has no parent; name two snapshots: kbuild diff A B")
        old, new = parents[0]["name"], child.name
        if old in kb_store.removed_names():
            raise SnapshotNotFound(f"{child.name}'s parent {old} was removed (kbuild rm), so there is nothing to "
                                   f"compare it with by default; name two snapshots: kbuild diff A {child.name}")
    similarity = None
    if similarity_model:
        from kbuild.clip.sentence import sentence_embedder

        similarity = sentence_embedder(similarity_model)
    result = diff_stored(kb_store, old, new, reword_threshold, similarity)
    if json_out:
        print_json(result.to_json())
    else:
        print_diff(result)


def tag(snapshot: SnapArg, tag_name: Annotated[str, typer.Argument(metavar="TAG", help="Tag to set or move.")],
        store: StoreOpt = None, chroma_url: ChromaUrlOpt = None) -> None:
    """Point a tag at a snapshot (tags can move; snapshots never change)."""
    target, previous = open_store(store, chroma_url).tag(snapshot, tag_name)
    moved = f" (moved from {previous})" if previous else ""
    print(visible(f"{tag_name} -> {target}{moved}"))


def export(
    snapshot: SnapArg,
    dest: Annotated[Optional[Path], typer.Argument(help="Where to write (same as --output); required for parquet and hf.")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help=f"One of: {', '.join(ALL_FORMATS)} (parquet: one file with vectors and history; hf: a dataset folder for the Hub).")] = "json",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write to this file (a folder for hf) instead of stdout.")] = None,
    license: Annotated[str, typer.Option("--license", help="License field of the hf dataset card (e.g. cc-by-4.0).")] = "other",
    store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Export a snapshot: JSON (with provenance and lineage), CSV, plain {class: \\[text]}, a Parquet bundle with
    vectors and history, or a Hugging Face dataset folder."""
    if format not in ALL_FORMATS:
        raise UsageError(f"Unknown export format '{format}'. Available: {', '.join(ALL_FORMATS)}")
    if dest is not None and output is not None:
        raise UsageError("Give the destination once: as an argument or with --output")
    output = output or dest
    kb_store = open_store(store, chroma_url)
    if format in BUNDLE_FORMATS:
        if output is None:
            raise UsageError(f"--format {format} writes a {'file' if format == 'parquet' else 'folder'}: "
                             f"name it, e.g. kbuild export {snapshot} --format {format} "
                             + ("kb.parquet" if format == "parquet" else "kb_dataset/"))
        result = (export_parquet(kb_store, snapshot, output) if format == "parquet"
                  else export_hf(kb_store, snapshot, output, license))
        if json_out:
            print_json(result.to_json())
        else:
            print(visible(f"{result.snapshot}: {result.rows} rows ({result.content_hash[:19]}...) -> {result.path}"))
        return
    kb = kb_store.read(snapshot, embeddings=False)
    text = export_text(kb, format, lineage(kb_store, kb.info), terminal=output is None and sys.stdout.isatty())
    if output is None:
        print(text, end="")
        return
    output.write_text(text, encoding="utf-8")
    info(f"wrote {output}")


def verify_(snapshot: SnapArg, store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False) -> None:
    """Recompute a snapshot's content hash and check it against its manifest."""
    result = verify(open_store(store, chroma_url).read(snapshot))
    if json_out:
        print_json(result.to_json())
    else:
        print(visible(f"{result.name}: {'OK' if result.ok else 'FAILED'} {result.recomputed}"))
    if not result.ok:
        raise KbuildError(f"{result.name} failed verification: {'; '.join(result.problems)}")


def rm(snapshot: SnapArg,
       force: Annotated[bool, typer.Option("--force", help="Remove it even when it is tagged (the tags go too) or has children.")] = False,
       store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False) -> None:
    """Delete a snapshot and free its disk (refused for a tagged snapshot or a parent unless --force)."""
    result = remove_snapshot(open_store(store, chroma_url), snapshot, force)
    if json_out:
        print_json(result.to_json())
        return
    freed = "" if result.freed_bytes is None else f", {result.freed_bytes / 1e6:.1f} MB freed"
    print(f"removed {result.name}{freed}")
    if result.tags:
        info(f"tags removed with it: {', '.join(result.tags)}")
    if result.children:
        info(f"its children keep their content; their lineage now names a removed parent: {', '.join(result.children)}")


def gc(store: StoreOpt = None, chroma_url: ChromaUrlOpt = None) -> None:
    """Delete pending collections left behind by killed writes and the segment folders no snapshot uses
    (published snapshots are never touched)."""
    kb_store = open_store(store, chroma_url)
    removed = kb_store.gc()
    freed = kb_store.gc_segments()
    print(f"removed {len(removed)} unfinished write(s)")
    if freed:
        print(f"freed {len(freed)} orphaned segment folder(s), {sum(size for _, size in freed) / 1e6:.1f} MB")


def path(store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False) -> None:
    """Show where kbuild keeps its store, caches and LLM call log."""
    from kbuild import settings

    home = settings.store_path(store)
    url = settings.chroma_url(chroma_url)
    payload = {"home": str(home.resolve()), "chroma": url or str((home / "chroma").resolve()),
               "cache": str((home / "cache").resolve()), "llm_log": str((home / "llm" / "calls.sqlite").resolve())}
    if json_out:
        print_json(payload)
    else:
        for key, value in payload.items():
            print(visible(f"{key}: {value}"))


# Registered on the app by kbuild.cli.app, in this order.
COMMANDS = [
    CommandSpec(list_, "list", "Example: kbuild list --json | jq '.[].name'"),
    CommandSpec(show, None, "Examples: kbuild show latest | kbuild show v2 --class melanoma --removed"),
    CommandSpec(diff, None, "Examples: kbuild diff v1 v2 | kbuild diff latest (against its parent) | kbuild diff v1 v2 --json"),
    CommandSpec(tag, None, "Example: kbuild tag v3 reviewed"),
    CommandSpec(export, None, "Examples: kbuild export v2 --format dclip -o kb.json | kbuild export latest --format csv | "
                "kbuild export v2 --format parquet kb.parquet | kbuild export v2 --format hf kb_dataset/"),
    CommandSpec(verify_, "verify", "Example: kbuild verify snapshot_v2"),
    CommandSpec(rm, None, "Examples: kbuild rm v3 | kbuild rm old_draft --force"),
    CommandSpec(gc, None, "Example: kbuild gc"),
    CommandSpec(path, None, "Example: kbuild path"),
]
