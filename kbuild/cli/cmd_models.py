"""``kbuild models``: the CLIP models --model accepts by name, and which are in the local cache."""

from __future__ import annotations

from rich.table import Table

from kbuild import settings
from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import info, print_json
from kbuild.cli.options import JsonOpt
from kbuild.cli.render import console, data

_CACHED: dict[bool | None, str] = {True: "yes", False: "no", None: "?"}


def models(json_out: JsonOpt = False) -> None:
    """List the CLIP models --model names (open_clip's general ones, the medical registry) and whether
    their weights are in the local Hugging Face cache (offline, only cached ones load)."""
    from kbuild.clip.registry import general_rows, hub_cache_dir, registry_rows

    rows = general_rows() + registry_rows()
    if json_out:
        print_json(rows)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("name", "model", "library", "domain", "cached"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(data(row[c]) for c in ("name", "model", "library", "domain")), _CACHED[row["cached"]])
    console.print(table)
    info(f"default: {settings.clip_model()} / {settings.clip_pretrained()} (--model/--pretrained, or "
         f"{settings.ENV_CLIP_MODEL}/{settings.ENV_CLIP_PRETRAINED}); cache: {hub_cache_dir()}; without network "
         "use --model local-dir:DIR or --pretrained FILE")


# Registered on the app by kbuild.cli.app, in this order.
COMMANDS = [CommandSpec(models, None, "Examples: kbuild models | kbuild models --json")]
