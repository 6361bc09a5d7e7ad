"""How ``kbuild serve`` keeps slow, idle and rude clients from holding it: the connection table and
the request deadline.

- Every request must arrive whole (request line, headers, body) within one deadline. A socket timeout
  alone is per recv: a client sending one byte every few seconds never trips it.
- At most ``cap`` connections hold a thread. When a new one comes and the table is full, the
  connection that has waited longest without a complete request (idle keep-alive, or trickling) is
  closed to make room; only when every connection is busy answering does the newcomer get a 503.
  So clients that trickle cannot lock out clients that send their request at once.
- A 503 is written, the socket half-closed and what the client already sent read off before the close:
  closing with unread input makes the kernel send a reset, which can destroy the 503 on its way.
- A client that hangs up mid-reply (closed tab, reset) is routine: no traceback, no log line.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

# A client going away mid-request or mid-reply: nothing to report.
GONE = (ConnectionError, TimeoutError, socket.timeout)


class DeadlineReader(io.RawIOBase):
    """The socket's input, refusing to wait past ``deadline`` (``time.monotonic()``) in total."""

    def __init__(self, sock: socket.socket, per_recv_s: float):
        self.sock, self.per_recv_s = sock, per_recv_s
        self.deadline = time.monotonic() + per_recv_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(min(left, self.per_recv_s))
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.per_recv_s)  # replies are written under the plain timeout


class ConnectionTable:
    """Open connections -> (busy answering a request, monotonic time it last started waiting)."""

    def __init__(self, cap: int):
        self.cap = cap
        self._open: dict[socket.socket, list] = {}
        self._lock = threading.Lock()

    def admit(self, request: socket.socket) -> bool:
        """Take a place for ``request``; False when every place is busy answering (send a 503)."""
        with self._lock:
            if len(self._open) >= self.cap:
                waiting = [(since, conn) for conn, (busy, since) in self._open.items() if not busy]
                if not waiting:
                    return False
                _, victim = min(waiting, key=lambda item: item[0])
                del self._open[victim]  # its thread ends when its read fails; it no longer counts
                with contextlib.suppress(OSError):
                    victim.shutdown(socket.SHUT_RDWR)
            self._open[request] = [False, time.monotonic()]
            return True

    def forget(self, request: socket.socket) -> None:
        with self._lock:
            self._open.pop(request, None)

    def mark(self, request: socket.socket, busy: bool) -> None:
        with self._lock:
            if request in self._open:
                self._open[request] = [busy, time.monotonic()]

    def idle(self) -> list[socket.socket]:
        with self._lock:
            return [conn for conn, (busy, _) in self._open.items() if not busy]

    def __len__(self) -> int:
        return len(self._open)


def refuse(request: socket.socket, head: list[str], body: bytes) -> None:
    """Write a complete reply (a 503) to a connection no thread will serve, then close it without a reset."""
    with contextlib.suppress(OSError):
        request.settimeout(1.0)
        request.sendall(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        request.shutdown(socket.SHUT_WR)
        request.setblocking(False)
        for _ in range(16):  # what already arrived (the request); never wait for more
            if not request.recv(65536):
                break
    with contextlib.suppress(OSError):
        request.close()
