"""Domain errors: each carries one line for the user that says what went wrong and how to fix it.

The CLI error boundary prints ``Error: <message>`` and exits with ``exit_code``; nothing else in
the code base decides how an error is shown.
"""


class KbuildError(Exception):
    """A problem the user can fix. ``str(err)`` is the one-line message."""

    exit_code = 1


class UsageError(KbuildError):
    """A bad option value or combination (exit code 2, like a bad flag)."""

    exit_code = 2


class SnapshotNotFound(KbuildError):
    """A snapshot reference that resolves to nothing."""


class InputFileError(KbuildError):
    """A malformed input file (curated source, classes file, features file, ...)."""

    def __init__(self, path, problem: str, fix: str = ""):
        where = str(path)
        message = f"{where}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)
        self.path = where


class StoreUnavailable(KbuildError):
    """The Chroma store cannot be opened or reached."""


def did_you_mean(name: str, choices) -> str:
    """``" (did you mean 'melanoma'?)"`` when one choice is one edit (insert, delete, replace,
    swap of neighbours) or a difference of case away from ``name``, else ``""``."""
    close = sorted(c for c in choices if c != name and (c.lower() == name.lower() or _one_edit(name, c)))
    return f" (did you mean '{close[0]}'?)" if close else ""


def _one_edit(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                   and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k in range(len(short)) if short[k] != long[k]), len(short))
    return short[i:] == long[i + 1:]


class StopNow(BaseException):
    """A second Ctrl-C while the first waits for work in flight: the command line exits at once, without
    waiting for the worker threads (what finished is already on disk). Not a KeyboardInterrupt, which
    Typer turns into a quiet exit code before the CLI boundary could act on it."""
