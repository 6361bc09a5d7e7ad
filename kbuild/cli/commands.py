"""What a command module exports: plain functions plus how to register them (name, examples).

Command modules list ``CommandSpec``s; only ``kbuild.cli.app`` builds Typer apps from them, so no
command module imports the app and the CLI has no import circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class CommandSpec:
    function: Callable[..., None]
    name: str | None = None       # None: the function's name, underscores as dashes
    epilog: str | None = None     # examples shown at the end of --help
