"""``kbuild copy``: snapshots from one store to another (embedded folder or Chroma server)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kbuild import settings
from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import info, print_json
from kbuild.cli.options import ChromaUrlOpt, JsonOpt, StoreOpt
from kbuild.descriptions import visible
from kbuild.ops.copy import copy_snapshots, open_endpoint


def copy(
    # required (no default), so it comes first; Typer lists arguments and options apart, so help is unchanged
    to: Annotated[str, typer.Option("--to", help="Target store: a folder (embedded) or a Chroma server URL.")],
    snapshots: Annotated[Optional[list[str]], typer.Argument(help="Snapshots to copy: snapshot_v3, v3, latest or a tag.")] = None,
    source: Annotated[Optional[str], typer.Option("--from", help="Source store: a folder or a URL \\[default: --store / --chroma-url].")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Copy every snapshot of the source.")] = False,
    store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Copy snapshots with their lineage and tags to another store, checking each content hash on arrival."""
    origin = open_endpoint(source or settings.chroma_url(chroma_url) or str(settings.store_path(store)), "from")
    for reference in snapshots or []:
        origin.resolve(reference)  # an unknown name fails before the target is opened (or created)
    target = open_endpoint(to, "to")
    result = copy_snapshots(origin, target, list(snapshots or []), everything)
    if json_out:
        print_json(result.to_json())
        return
    for tag in result.tags_left:
        info(f"tag {tag} in {result.target} left as it is (it points at another snapshot there)")
    skipped = f", {len(result.skipped)} already there" if result.skipped else ""
    print(visible(f"copied {len(result.copied)} snapshot(s) to {result.target}{skipped}: "
                  f"{', '.join(result.copied) or '-'}"))


COMMANDS = [
    CommandSpec(copy, None, "Examples: kbuild copy v2 --to http://127.0.0.1:8000 | kbuild copy --all --from "
                "http://team:8000 --to ./kb_snapshots | kbuild copy reviewed --to /mnt/backup/kb"),
]
