"""Progress of long work (embedding texts, writing and reading snapshots, pruning), for whoever listens.

Core code says what it is doing with ``with task("embedding texts", total) as t: ... t.advance(n)``
and never prints. The command line installs a sink (``kbuild.cli.progress``): a rich bar on a
terminal, plain periodic lines with counts and an ETA on stderr otherwise. Without a sink (a
notebook, the server, library use) reporting costs one attribute lookup.
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    def start(self, label: str, total: int | None) -> object: ...
    def update(self, handle: object, done: int) -> None: ...
    def finish(self, handle: object) -> None: ...


_sink: Sink | None = None
MIN_TOTAL = 1  # a task smaller than this is not worth reporting


def set_sink(sink: Sink | None) -> Sink | None:
    """Install ``sink`` (None: report nothing); returns the previous one, to restore it."""
    global _sink
    previous, _sink = _sink, sink
    return previous


class Task:
    """One reported piece of work: ``advance(n)`` as it goes; closing it reports the end."""

    def __init__(self, label: str, total: int | None):
        self.label, self.total, self.done = label, total, 0
        self._sink = _sink
        self._handle = self._sink.start(label, total) if self._sink is not None else None

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._sink is not None:
            self._sink.update(self._handle, self.done)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.finish(self._handle)
            self._sink = None

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def task(label: str, total: int | None = None) -> Task:
    """A reported task of ``total`` steps (None: unknown)."""
    return Task(label, total)
