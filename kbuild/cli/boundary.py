"""The one error boundary both CLIs (``kbuild`` and ``kpl``) run through.

User errors (``KbuildError`` and its kin) become one ``Error:`` line on stderr and their exit code;
bad flags become one line and exit 2; anything else is one ``Error: unexpected ...`` line. A
traceback appears only with ``KBUILD_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from kbuild import settings
from kbuild.cli.progress import reporting
from kbuild.descriptions import visible
from kbuild.errors import KbuildError, StopNow


def run_with_boundary(typer_app: typer.Typer, prog_name: str, argv: list[str] | None = None) -> int:
    """Run a Typer app; user errors become one ``Error:`` line on stderr and an exit code."""
    settings.quiet_third_parties()
    try:
        with reporting():
            outcome = typer_app(args=argv, prog_name=prog_name, standalone_mode=False)
        return outcome if isinstance(outcome, int) else 0
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    except KbuildError as err:
        if settings.debug():
            _print_traceback()
        print_error(f"Error: {err}")
        return err.exit_code
    except StopNow:
        # Worker threads still wait on the network, and the interpreter would join them at exit: leave now.
        print("Error: interrupted twice; stopped at once (calls still in flight were not logged; "
              "rerun the same command to resume)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
    except KeyboardInterrupt:
        print("Error: interrupted; nothing half-written was published", file=sys.stderr)
        return 130
    except typer.Abort:
        print("Error: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as err:
        return _report_usage(err, prog_name)
    except Exception as err:
        return _report_unexpected(err)
    except BaseException as err:
        # A native library's panic (pyo3's PanicException, e.g. from Chroma's Rust core) derives from
        # BaseException; it still gets one line. Anything else of that kind (GeneratorExit...) goes on.
        if type(err).__name__ != "PanicException":
            raise
        return _report_unexpected(err)


def print_error(line: str) -> None:
    """The one way an error reaches the terminal: an API key or Chroma token that a server echoed into
    an exception's text is masked here, whichever code path raised it."""
    print(visible(mask_secrets(line)), file=sys.stderr)


def _print_traceback() -> None:
    """KBUILD_DEBUG's traceback, masked like the error line: a token in a URL or a header that a
    library put into a frame's message must not reach a log through the debug switch."""
    for text in traceback.format_exc().splitlines():
        print(visible(mask_secrets(text)), file=sys.stderr)


mask_secrets = settings.mask_secrets


def _report_usage(err: typer.TyperException, prog_name: str) -> int:
    """A bad flag or argument: one line naming the command to ask for help, exit 2. A group called
    without a subcommand raises the same family with the group's help as its message: print the help."""
    ctx = getattr(err, "ctx", None)
    message = err.format_message() if hasattr(err, "format_message") else str(err)
    if ctx is not None and message == ctx.get_help():
        print(message, file=sys.stderr)
        return 2
    command = ctx.command_path if ctx is not None else prog_name
    print_error(f"Error: {' '.join(message.split())} (see '{command} --help')")
    code = getattr(err, "exit_code", 2)
    return int(code) if code else 2


def _report_unexpected(err: BaseException) -> int:
    """The last line of defence: one line, never a traceback unless KBUILD_DEBUG asks for it."""
    if settings.debug():
        _print_traceback()
    first = str(err).splitlines()[0] if str(err) else ""
    print_error(f"Error: unexpected {type(err).__name__}: {first} (set {settings.ENV_DEBUG}=1 for the traceback)")
    return 1
