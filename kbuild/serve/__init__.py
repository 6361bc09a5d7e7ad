"""``kbuild serve``: a local web app to browse, compare and review snapshots of one store.

Standard library HTTP only (``http.server``), hand-written assets under ``static/`` (no build step,
nothing fetched from elsewhere), and the same store API as the CLI for everything it reads or writes.
"""

from __future__ import annotations

import secrets

from kbuild.serve.server import KbuildHTTPServer, is_loopback, make_server
from kbuild.serve.service import ReviewService, ServeOptions
from kbuild.store import SnapshotStore

__all__ = ["KbuildHTTPServer", "ReviewService", "ServeOptions", "is_loopback", "open_server"]


def open_server(store: SnapshotStore, host: str, port: int, options: ServeOptions | None = None,
                token: str | None = None, **limits) -> KbuildHTTPServer:
    """A bound (not yet serving) server over ``store``; ``server.url`` and ``server.token`` say how to reach it.
    ``limits``: ``timeout_s``, ``max_connections``, ``allowed_hosts`` (see ``KbuildHTTPServer``)."""
    return make_server(ReviewService(store, options), host, port, token or secrets.token_urlsafe(24), **limits)
