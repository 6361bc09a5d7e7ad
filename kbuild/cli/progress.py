"""Progress on stderr for the command line: a rich bar on a terminal, plain lines otherwise.

Plain lines go out at most every ``PLAIN_EVERY_S`` seconds (and once at the end when the task ran
that long), so a log or CI output gets ``embedding texts: 4096/28200 (15%), 41 s left`` without a
line per batch, and short tasks print nothing.

Progress goes to a duplicate of file descriptor 2 taken when the command starts: while a store call
runs, ``kbuild.store.damage`` points fd 2 at a spool (to drop Chroma's Rust panic text) and hands the
rest back afterwards, which held every progress line (and a terminal's bar) until the call ended.
"""

from __future__ import annotations

import io
import os
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, TextIO, cast

from kbuild import progress

if TYPE_CHECKING:  # rich loads only when a bar is drawn
    from rich.progress import TaskID

PLAIN_EVERY_S = 2.0


class PlainSink:
    def __init__(self, stream: TextIO | None = None, every: float | None = None) -> None:
        self.stream, self.every = stream, PLAIN_EVERY_S if every is None else every

    def start(self, label: str, total: int | None) -> dict[str, Any]:
        now = time.monotonic()
        return {"label": label, "total": total, "start": now, "last": now, "done": 0, "said": False}

    # handles are typed ``object`` as ``progress.Sink`` says; each is the dict ``start`` returned
    def update(self, handle: object, done: int) -> None:
        h = cast("dict[str, Any]", handle)
        h["done"] = done
        now = time.monotonic()
        if now - h["last"] >= self.every and done != h["total"]:  # the end has its own line
            h["last"], h["said"] = now, True
            self._say(h, now)

    def close(self) -> None:
        pass

    def finish(self, handle: object) -> None:
        h = cast("dict[str, Any]", handle)
        # a task that reported, or ran long enough to, says it ended; a quick one stays silent
        if h["said"] or time.monotonic() - h["start"] >= self.every:
            self._say(h, time.monotonic(), final=True)

    def _say(self, h: dict[str, Any], now: float, final: bool = False) -> None:
        done, total, elapsed = h["done"], h["total"], now - h["start"]
        line = f"{h['label']}: {done}" + (f"/{total} ({100 * done / total:.0f}%)" if total else "")
        if final:
            line += f", done in {elapsed:.0f} s"
        elif total and done:
            line += f", {elapsed * (total - done) / done:.0f} s left"
        print(line, file=self.stream or sys.stderr, flush=True)


class RichSink:
    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=stream or sys.stderr),
                            transient=True)
        self.open = 0

    def start(self, label: str, total: int | None) -> TaskID:
        if not self.open:
            self.bar.start()
        self.open += 1
        return self.bar.add_task(label, total=total)

    def update(self, handle: object, done: int) -> None:
        self.bar.update(cast("TaskID", handle), completed=done)

    def close(self) -> None:
        if self.open:
            self.open = 0
            self.bar.stop()

    def finish(self, handle: object) -> None:
        self.bar.remove_task(cast("TaskID", handle))
        self.open -= 1
        if not self.open:
            self.bar.stop()


def _own_stderr() -> TextIO | None:
    """A private handle on the real stderr (a duplicate of fd 2), or None where ``sys.stderr`` is not fd 2
    (a test's or a notebook's capture: progress then goes wherever ``sys.stderr`` goes)."""
    try:
        if sys.stderr.fileno() != 2:
            return None
        sys.stderr.flush()
        return os.fdopen(os.dup(2), "w", encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace",
                         buffering=1)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


@contextmanager
def reporting() -> Iterator[None]:
    """Report progress on stderr for the duration of one command, as it happens."""
    own = _own_stderr()
    stream = own or sys.stderr
    sink = RichSink(stream) if stream.isatty() else PlainSink(stream)
    previous = progress.set_sink(sink)
    try:
        yield
    finally:
        sink.close()  # a task an error interrupted must not leave a bar on the terminal
        progress.set_sink(previous)
        if own is not None:
            own.close()
