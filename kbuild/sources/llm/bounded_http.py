"""Two bounds on one chat request that httpx's timeouts cannot give: a deadline for the whole reply and
a cap on its size.

httpx's read timeout restarts with every chunk, so a server that trickles one byte every 2 s never
trips ``--timeout 5``; and a reply is read whole into memory however large it is (two 45 MB replies
once took 1.08 GB and a 186 MB call log). Both are enforced where the bytes arrive: the network
stream under httpcore's connection pool checks, before each read, the deadline of the request this
thread is making and, after it, how many bytes that request has received. ``bounded()`` sets both for
the calls made inside it (the openai client runs a request in the calling thread).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import httpcore
import httpx

MAX_REPLY_BYTES = 4 << 20  # a chat reply of descriptions is a few kilobytes; 4 MB is far past any real one


@dataclass
class Budget:
    deadline: float
    bytes_left: int
    too_large: bool = False


_current = threading.local()


@contextlib.contextmanager
def bounded(seconds: float, max_bytes: int = MAX_REPLY_BYTES) -> Iterator[Budget]:
    """Requests made by this thread inside the block end by ``seconds`` from now and read at most
    ``max_bytes`` (headers included); ``budget.too_large`` tells afterwards whether the cap stopped one."""
    budget = Budget(time.monotonic() + seconds, max_bytes)
    previous, _current.budget = getattr(_current, "budget", None), budget
    try:
        yield budget
    finally:
        _current.budget = previous


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        budget: Budget | None = getattr(_current, "budget", None)
        if budget is not None:
            left = budget.deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ReadTimeout("the whole reply did not arrive in time")
            timeout = left if timeout is None else min(timeout, left)
        data = self._inner.read(max_bytes, timeout)
        if budget is not None:
            budget.bytes_left -= len(data)
            if budget.bytes_left < 0:
                budget.too_large = True
                raise httpcore.ReadError("reply over the size limit")
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> "_Stream":
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self):
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None) -> _Stream:
        return _Stream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None) -> _Stream:
        return _Stream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Transport(httpx.HTTPTransport):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # httpx offers no argument for the pool's network backend; the pool reads this attribute on each
        # new connection (httpcore 1.x), so setting it before the first request is enough.
        self._pool._network_backend = _Backend()


def http_client(timeout_s: float) -> httpx.Client:
    """An httpx client whose requests obey ``bounded()``; proxies from the environment still apply."""
    return httpx.Client(transport=_Transport(), timeout=timeout_s, follow_redirects=True)
