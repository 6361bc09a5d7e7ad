"""``kbuild load``: import curated description files as a new snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import info, open_store, print_json
from kbuild.cli.options import ChromaUrlOpt, JsonOpt, ModelOpt, NameOpt, PretrainedOpt, StoreOpt, TemplateOpt
from kbuild.clip.choice import ModelRequest
from kbuild.descriptions import DEFAULT_TEMPLATE, visible
from kbuild.ops.load import LoadRequest, load_files
from kbuild.ops.unchanged import republished_message, unchanged_message
from kbuild.store import validate_snapshot_name


def load(
    files: Annotated[list[Path], typer.Argument(help="Curated files: JSON {class: [text]}, KPL JSON, CSV or JSONL; or one .npz with classes, texts, embeddings and model_id (your own vectors, no CLIP model loaded).")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Force a format: csv, cupl, dclip, jsonl, kbuild (an export), kpl, labo.")] = None,
    section: Annotated[Optional[str], typer.Option("--section", help="Section of a KPL-style file, e.g. Brain_Tumor_Features.")] = None,
    classes: Annotated[Optional[Path], typer.Option("--classes", help="classes.txt to check class names against.")] = None,
    restrict: Annotated[bool, typer.Option("--restrict", help="Drop classes not in --classes instead of failing.")] = False,
    class_map: Annotated[Optional[Path], typer.Option("--class-map", help="Rename classes while loading: JSON {\"name in the files\": \"name to load\"} or CSV name,new name; names mapped to one are joined (e.g. {\"eft\": \"newt\"}).")] = None,
    name: NameOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Publish even when the result equals the latest snapshot.")] = False,
    template: TemplateOpt = DEFAULT_TEMPLATE,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Import curated descriptions (DCLIP, CuPL, LaBo, KPL, CSV, JSONL) into a new snapshot."""
    if name is not None:
        validate_snapshot_name(name)  # before loading CLIP, which can take a while
    request = LoadRequest(files, template=template, format=format, section=section, classes_file=classes,
                          restrict=restrict, class_map=class_map, name=name, force=force,
                          model=ModelRequest(model, pretrained))
    result = load_files(open_store(store, chroma_url), request)
    for line in result.imported.summary_lines():
        info(line)
    if result.unchanged:
        info(unchanged_message(result.snapshot, "load changed nothing"))
    if result.repeats is not None:
        info(republished_message(result.repeats, result.snapshot))
    if json_out:
        print_json(result.to_json())
        return
    if result.unchanged:
        return
    manifest = result.snapshot.manifest
    print(visible(f"{result.snapshot.name}: {manifest['total']} descriptions in {manifest['classes']} classes "
          f"({manifest['content_hash'][:19]}...)"))


# Registered on the app by kbuild.cli.app, in this order.
COMMANDS = [
    CommandSpec(load, None, "Examples: kbuild load descriptors_food101.json | kbuild load feature_50.json --section "
                    "Brain_Tumor_Features | kbuild load kb.csv --classes classes.txt --name derm_v1"),
]
