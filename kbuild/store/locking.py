"""A cross-process write lock for an embedded store (``fcntl.flock`` on a file under the home).

The kernel releases it when the holder dies, so a killed writer never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from pathlib import Path
from typing import Iterator

from kbuild.errors import KbuildError


@contextlib.contextmanager
def store_write_lock(home: Path, timeout_s: float = 600.0, lock_name: str = ".write.lock") -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / lock_name, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KbuildError(f"Another kbuild process has been writing to {home} for over "
                                      f"{int(timeout_s)} s; try again when it finishes") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
