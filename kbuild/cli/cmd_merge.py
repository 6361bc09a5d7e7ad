"""``kbuild merge``: union of two snapshots into a new one."""

from __future__ import annotations

from typing import Annotated

import typer

from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import open_store, print_json
from kbuild.cli.options import ChromaUrlOpt, JsonOpt, NameOpt, SnapshotModelOpt, SnapshotPretrainedOpt, StoreOpt
from kbuild.clip.choice import ModelRequest
from kbuild.descriptions import visible
from kbuild.ops.merge import merge_snapshots


def merge(
    first: Annotated[str, typer.Argument(help="First snapshot (its CLIP model and template are kept).")],
    second: Annotated[str, typer.Argument(help="Second snapshot.")],
    name: NameOpt = None,
    model: SnapshotModelOpt = None,
    pretrained: SnapshotPretrainedOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Merge two snapshots (union, duplicates by id dropped) into a new snapshot."""
    result = merge_snapshots(open_store(store, chroma_url), first, second, name=name,
                             model=ModelRequest(model, pretrained))
    if json_out:
        print_json(result.to_json())
        return
    print(visible(f"{result.snapshot.name}: {result.snapshot.manifest['total']} descriptions "
          f"({result.from_first} from {first}, {result.from_second} new from {second}, {result.shared} shared)"))


# Registered on the app by kbuild.cli.app, in this order.
COMMANDS = [
    CommandSpec(merge, None, "Example: kbuild merge v2 v3 --name derm_combined"),
]
