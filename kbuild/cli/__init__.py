"""The ``kbuild`` command line: thin commands over the core modules, assembled in ``app.py``.

Nothing is imported here eagerly: ``kpl`` uses ``kbuild.cli.boundary`` and ``kbuild.cli.options``
without paying for every kbuild command module.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """The ``kbuild`` console script."""
    from kbuild.cli.app import main as run

    run(argv)


def __getattr__(name: str):
    if name == "app":
        from kbuild.cli.app import app

        return app
    raise AttributeError(f"module 'kbuild.cli' has no attribute {name!r}")
