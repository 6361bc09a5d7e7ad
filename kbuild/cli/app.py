"""The ``kbuild`` app: one Typer app, command modules register on it, one error boundary in ``main``."""

from __future__ import annotations

import sys
import traceback

import typer

from .. import settings
from ..errors import KbuildError

app = typer.Typer(
    name="kbuild",
    help="Build, version and inspect knowledge bases of visual class descriptions.\n\n"
         "Example: kbuild load descriptors.json && kbuild list && kbuild diff v1 v2",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _register_commands() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from . import cmd_inspect, cmd_load  # noqa: F401
    for optional in ("cmd_prune", "cmd_generate", "cmd_serve"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{optional}":
                raise


def run_with_boundary(typer_app: typer.Typer, prog_name: str, argv: list[str] | None = None) -> int:
    """Run a Typer app; user errors become one ``Error:`` line on stderr and an exit code."""
    settings.quiet_third_parties()
    try:
        typer_app(args=argv, prog_name=prog_name)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    except KbuildError as err:
        if settings.debug():
            traceback.print_exc()
        print(f"Error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("Error: interrupted; nothing half-written was published", file=sys.stderr)
        return 130
    except Exception as err:  # the last line of defence: never a traceback unless asked for
        if settings.debug():
            traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else ""
        print(f"Error: unexpected {type(err).__name__}: {first} (set {settings.ENV_DEBUG}=1 for the traceback)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    _register_commands()
    sys.exit(run_with_boundary(app, "kbuild", argv))
