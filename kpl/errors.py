"""kpl's error types, so ``from kpl import run_kpl`` users catch errors named for what they called.

Each derives from its ``kbuild`` counterpart as well, so one CLI error boundary (``kbuild.cli.boundary``)
prints every error of either package as one ``Error:`` line with the right exit code.
"""

from __future__ import annotations

from kbuild import errors as _kbuild


class KplError(_kbuild.KbuildError):
    """A problem with kpl's input that the user can fix. ``str(err)`` is the one-line message."""


class UsageError(KplError, _kbuild.UsageError):
    """A bad argument or option value (exit code 2)."""


class InputFileError(KplError, _kbuild.InputFileError):
    """A malformed input file: features .npz, CSV manifest, class map."""


__all__ = ["InputFileError", "KplError", "UsageError"]
