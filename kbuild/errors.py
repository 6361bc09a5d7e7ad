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
