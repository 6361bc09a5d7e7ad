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
         "Every command that changes knowledge (generate, load, prune, merge, a review in serve) writes a new, "
         "immutable snapshot (snapshot_v1, snapshot_v2, ...); name one as snapshot_v3, v3, latest or a tag.\n\n"
         "Example: kbuild load descriptors.json && kbuild prune && kbuild diff v1 v2",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _register_commands() -> None:
    # Imported for their side effect of adding commands to ``app``; the order is the help's order,
    # which follows the workflow: build, refine, inspect, review.
    from . import cmd_generate, cmd_load, cmd_prune, cmd_merge, cmd_inspect, cmd_serve  # noqa: F401


def run_with_boundary(typer_app: typer.Typer, prog_name: str, argv: list[str] | None = None) -> int:
    """Run a Typer app; user errors become one ``Error:`` line on stderr and an exit code."""
    settings.quiet_third_parties()
    try:
        outcome = typer_app(args=argv, prog_name=prog_name, standalone_mode=False)
        return outcome if isinstance(outcome, int) else 0
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    except KbuildError as err:
        if settings.debug():
            traceback.print_exc()
        _print_error(f"Error: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        print("Error: interrupted; nothing half-written was published", file=sys.stderr)
        return 130
    except Exception as err:
        if _is_usage_problem(err):
            return _report_usage(err, prog_name)
        return _report_unexpected(err)
    return 0


def _print_error(line: str) -> None:
    """The one way an error reaches the terminal: an API key or Chroma token that a server echoed into
    an exception's text is masked here, whichever code path raised it."""
    for secret in settings.secrets():
        line = line.replace(secret, "***")
    print(line, file=sys.stderr)


def _is_usage_problem(err: Exception) -> bool:
    # Typer's (vendored click) parameter errors carry an exit code and a formatted message;
    # we recognise them by shape so this module never imports click.
    return hasattr(err, "exit_code") and hasattr(err, "format_message")


def _report_usage(err, prog_name: str) -> int:
    if type(err).__name__ == "NoArgsIsHelpError":
        print(err.ctx.get_help(), file=sys.stderr)
        return 2
    if type(err).__name__ == "Abort":
        print("Error: aborted", file=sys.stderr)
        return 1
    message = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    command = ctx.command_path if ctx is not None else prog_name
    _print_error(f"Error: {message} (see '{command} --help')")
    return int(err.exit_code) if err.exit_code else 2


def _report_unexpected(err: Exception) -> int:
    """The last line of defence: one line, never a traceback unless KBUILD_DEBUG asks for it."""
    if settings.debug():
        traceback.print_exc()
    first = str(err).splitlines()[0] if str(err) else ""
    _print_error(f"Error: unexpected {type(err).__name__}: {first} (set {settings.ENV_DEBUG}=1 for the traceback)")
    return 1


def main(argv: list[str] | None = None) -> None:
    _register_commands()
    sys.exit(run_with_boundary(app, "kbuild", argv))
