"""``kbuild serve``: browse, compare and review snapshots in a local web app."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import info, open_store
from kbuild.cli.options import ChromaUrlOpt, SnapshotModelOpt, SnapshotPretrainedOpt, StoreOpt
from kbuild.errors import UsageError


def _stop_on_sigterm():
    """A service manager (or a test) stops us with SIGTERM: leave the same clean way as Ctrl-C.

    Returns the previous handler, to put back when serving ends (None off the main thread).
    """
    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def serve(
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback exposes the store to the network.")] = "127.0.0.1",
    allow_host: Annotated[Optional[list[str]], typer.Option("--allow-host", help="Host name browsers may use to reach a server bound beyond loopback (repeatable); IP addresses are always accepted.")] = None,
    results: Annotated[Optional[Path], typer.Option("--results", help="Folder of 'kpl eval --out' results whose report.html files to list.")] = None,
    model: SnapshotModelOpt = None,
    pretrained: SnapshotPretrainedOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
) -> None:
    """Browse, compare and review snapshots in a local web app; a saved review becomes a new snapshot."""
    from kbuild.serve import ServeOptions, is_loopback, open_server

    if results is not None and not results.is_dir():
        raise UsageError(f"--results {results}: not a folder (point it at a 'kpl eval --out' folder)")
    kb_store = open_store(store, chroma_url)
    # --model/--pretrained only matter for edited or added texts; by default they use each snapshot's model.
    server = open_server(kb_store, host, port, ServeOptions(results, model, pretrained),
                         allowed_hosts=tuple(allow_host or ()))
    if not is_loopback(host):
        info(f"warning: listening on {host}: anyone who can reach this address can try the server; every read "
             "and review needs the token in the printed link")
    print(f"kbuild serve: {server.url}?token={server.token}  (store {kb_store.location}; Ctrl-C to stop)", flush=True)
    previous = _stop_on_sigterm()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()  # waits for requests in flight, so a save under way still lands
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    info("kbuild serve: stopped")


# Registered on the app by kbuild.cli.app, in this order.
COMMANDS = [
    CommandSpec(serve, None, "Examples: kbuild serve | kbuild serve --port 9000 --results results/ | "
                    "kbuild serve --chroma-url http://127.0.0.1:8000"),
]
