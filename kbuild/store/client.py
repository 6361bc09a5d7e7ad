"""Opening ChromaDB: an embedded ``PersistentClient`` under the store home, or an ``HttpClient``.

Telemetry is always off, and no collection is ever given Chroma's default embedding function (it
would download a model): callers pass ``embedding_function=None`` and their own vectors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kbuild.errors import StoreUnavailable, UsageError
from kbuild.store.damage import check_database_present, classify, native_panics_silenced
from kbuild.store.locking import store_write_lock


def _settings(token: str | None) -> Any:  # chromadb.config.Settings, imported late
    from chromadb.config import Settings

    options: dict[str, Any] = {"anonymized_telemetry": False}
    if token:
        options["chroma_client_auth_provider"] = "chromadb.auth.token_authn.TokenAuthClientProvider"
        options["chroma_client_auth_credentials"] = token
    return Settings(**options)


def open_embedded(home: Path) -> Any:  # a chromadb ClientAPI
    import chromadb

    folder = home / "chroma"
    check_database_present(folder, str(home))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Processes opening a new store at once would race on Chroma's schema migrations
        # ("table collections already exists"); a short lock of its own never waits on a writer.
        with store_write_lock(home, timeout_s=120.0, lock_name=".open.lock"), native_panics_silenced():
            client = chromadb.PersistentClient(path=str(folder), settings=_settings(None))
            client.list_collections()  # reads the database now, so damage shows here, worded once
            return client
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # BaseException: Chroma's Rust panics on a corrupt database are not Exceptions
        _forget_broken_client(folder)
        if (known := classify(exc, str(home), home)) is not None:
            raise known from exc
        if not isinstance(exc, Exception):
            raise
        if isinstance(exc, OSError):
            raise StoreUnavailable(f"Cannot open the store at {home}: {exc.strerror or exc} (pass --store PATH)") from exc
        raise StoreUnavailable(f"Cannot open the Chroma store at {folder}: {exc} (is it a kbuild store?)") from exc


def _forget_broken_client(folder: Path) -> None:
    """Chroma caches one client system per path; after a failed open that system is half-built, and a
    later open of the same path in this process would fail with an unrelated AttributeError. Only this
    path's entry is dropped: other stores open in the process keep theirs."""
    import contextlib

    from chromadb.api.shared_system_client import SharedSystemClient

    with contextlib.suppress(Exception):
        SharedSystemClient._identifier_to_system.pop(str(folder), None)
        SharedSystemClient._identifier_to_refcount.pop(str(folder), None)


def parse_url(url: str) -> tuple[str, int, bool]:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"--chroma-url {url!r} is not an http(s) URL (example: http://127.0.0.1:8000)")
    ssl = parsed.scheme == "https"
    return parsed.hostname, parsed.port or (443 if ssl else 8000), ssl


def open_server(url: str, token: str | None) -> Any:  # a chromadb ClientAPI
    import chromadb

    host, port, ssl = parse_url(url)
    try:
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=_settings(token))
        client.heartbeat()
        return client
    except Exception as exc:
        if is_auth_error(exc):
            raise refused(url, exc) from exc
        raise StoreUnavailable(
            f"Cannot reach the Chroma server at {url} ({type(exc).__name__}); start one with "
            "'chroma run --path DIR --host 127.0.0.1 --port 8000' or drop --chroma-url") from exc


def is_auth_error(exc: Exception) -> bool:
    from chromadb.errors import AuthorizationError, ChromaAuthError

    return isinstance(exc, (AuthorizationError, ChromaAuthError))


def refused(url: str, exc: Exception) -> StoreUnavailable:
    # The server's own text is left out: a server or proxy may echo the token it refused.
    return StoreUnavailable(f"The Chroma server at {url} refused access ({type(exc).__name__}); set "
                            "KBUILD_CHROMA_TOKEN to a token it accepts")
