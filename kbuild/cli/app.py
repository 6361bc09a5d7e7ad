"""Assembles the ``kbuild`` app: the only module that builds Typer apps from the command modules.

Command modules define plain functions and list them as ``CommandSpec``s; they never import this
module, so importing any of them (or this one) has no side effect on another. The help lists the
commands in workflow order: build, refine, inspect, review.
"""

from __future__ import annotations

import sys

import typer

from kbuild.cli import cmd_copy, cmd_generate, cmd_inspect, cmd_load, cmd_merge, cmd_models, cmd_prompts, cmd_prune, cmd_serve
from kbuild.cli.boundary import run_with_boundary
from kbuild.cli.commands import CommandSpec

_HELP = ("Build, version and inspect knowledge bases of visual class descriptions.\n\n"
         "Every command that changes knowledge (generate, load, prune, merge, a review in serve) writes a new, "
         "immutable snapshot (snapshot_v1, snapshot_v2, ...); name one as snapshot_v3, v3, latest or a tag.\n\n"
         "Example: kbuild load descriptors.json && kbuild prune && kbuild diff v1 v2")

_COMMAND_MODULES = (cmd_generate, cmd_load, cmd_prune, cmd_merge, cmd_inspect, cmd_copy, cmd_serve, cmd_models)


def _typer(**options) -> typer.Typer:
    return typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
                       context_settings={"help_option_names": ["-h", "--help"]}, **options)


def _register(target: typer.Typer, specs: list[CommandSpec]) -> None:
    for spec in specs:
        target.command(spec.name, epilog=spec.epilog)(spec.function)


def build_app() -> typer.Typer:
    """A fresh ``kbuild`` Typer app with every command registered."""
    app = _typer(name="kbuild", help=_HELP)
    for module in _COMMAND_MODULES:
        _register(app, module.COMMANDS)
    prompts = _typer(help="Prompt templates for 'kbuild generate'.")
    _register(prompts, cmd_prompts.COMMANDS)
    app.add_typer(prompts, name="prompts")
    return app


app = build_app()


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_with_boundary(app, "kbuild", argv))
