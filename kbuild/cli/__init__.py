"""The ``kbuild`` command line: thin commands over the core modules (see ``app.py``)."""

from kbuild.cli.app import app, main

__all__ = ["app", "main"]
