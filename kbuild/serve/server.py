"""The HTTP side of ``kbuild serve``: the standard library's ThreadingHTTPServer, a route table, guards.

Guards, in the order a request meets them:
- at most ``max_connections`` connections at once, each request due whole within ``timeout_s``; when
  full, the connection waiting longest for its request makes room, and only when all are busy does a
  newcomer get a 503 (``connections.py``); idle or half-sent requests cannot pin threads or hold up
  shutdown (idle ones are closed at once);
- the Host header must name this server: a loopback name on loopback; elsewhere an IP literal or a
  name given with ``--allow-host``, so a DNS-rebinding page cannot read the store;
- beyond loopback, reads (``/api/``, ``/reports/``) need the token too (header or ``?token=``);
- state-changing requests (POST) must carry the per-server token in ``X-Kbuild-Token``, be JSON
  (a cross-site form cannot send that, nor the custom header without a CORS preflight we never grant),
  and, when the browser sends an Origin, come from this server's own origin;
- files are served only from a fixed table of bundled assets or through the reports allow-list: no
  request path is ever joined onto a folder.
Every response, the standard library's own error replies included, says ``nosniff``, refuses framing,
and sends no referrer (the token lives in the URL). Logged request lines are escaped (``visible``).
"""

from __future__ import annotations

import contextlib
import hmac
import io
import ipaddress
import json
import socket
import socketserver
import sys
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from kbuild import settings
from kbuild.descriptions import visible
from kbuild.errors import KbuildError, SnapshotNotFound, UsageError
from kbuild.serve.connections import GONE, ConnectionTable, DeadlineReader, refuse
from kbuild.serve.drafts import StaleDraft
from kbuild.serve.service import ReviewService

STATIC = Path(__file__).with_name("static")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
MAX_BODY = 1 << 20
TOKEN_HEADER = "X-Kbuild-Token"
REQUEST_TIMEOUT_S = 30.0  # each request must arrive whole within this (idle keep-alive waits count)
MAX_CONNECTIONS = 256  # connections holding a thread; beyond, the longest-waiting one makes room
_PUBLIC_PREFIXES = ("/static/",)
_PUBLIC_PATHS = ("/", "/favicon.ico")
_APP_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Reports are self-contained pages: let them style themselves, never run script or reach the API.
_REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_SECURITY_HEADERS = (f"Content-Security-Policy: {_APP_CSP}", "X-Content-Type-Options: nosniff",
                     "X-Frame-Options: DENY", "Referrer-Policy: no-referrer", "Cache-Control: no-store")


class Refused(KbuildError):
    """A request the guards turn away (HTTP 403)."""


# Domain errors -> HTTP status; any other KbuildError is the request's fault (400).
_STATUS = ((StaleDraft, HTTPStatus.CONFLICT), (Refused, HTTPStatus.FORBIDDEN), (SnapshotNotFound, HTTPStatus.NOT_FOUND))


class KbuildHTTPServer(ThreadingHTTPServer):
    # Finish in-flight requests (a save that is publishing) before the process exits on Ctrl-C.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], service: ReviewService, token: str, *,
                 timeout_s: float = REQUEST_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
                 allowed_hosts: tuple[str, ...] = ()) -> None:
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, Handler)
        self.service, self.token = service, token
        self.timeout_s = timeout_s
        self.connections = ConnectionTable(max_connections)
        # Listed once when the server starts: the only files the app itself will ever serve.
        self.assets = {p.name: p for p in sorted(STATIC.iterdir()) if p.suffix in _TYPES}
        self.loopback = is_loopback(host)
        port = self.server_address[1]
        shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("", "0.0.0.0") else host)
        self.url = f"http://{shown}:{port}/"
        self.allowed_hosts = host_headers({"127.0.0.1", "localhost", "[::1]", shown, *allowed_hosts}, port)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang for seconds without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def host_allowed(self, host_header: str) -> bool:
        """Loopback: exactly our names. Beyond: also any IP literal with our port (a rebinding attack
        needs a DNS name, so an IP in the Host header is a browser that was pointed at us directly)."""
        if host_header in self.allowed_hosts:
            return True
        if self.loopback:
            return False
        name, _, port = host_header.rpartition(":")
        if port != str(self.server_address[1]):
            return False
        try:
            ipaddress.ip_address(name.strip("[]"))
            return True
        except ValueError:
            return False

    # ---- connections: a cap, deadlines, and a shutdown no client can hold up -------------------
    request_queue_size = 128  # a burst of connects waits in the kernel instead of being dropped

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.admit(request):
            refuse(request, _BUSY_HEAD, _BUSY_BODY)
            return
        request.settimeout(self.timeout_s)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.forget(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is routine; anything else is one masked line, not a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, GONE):
            return
        first = settings.mask_secrets(str(exc).splitlines()[0]) if str(exc) else ""
        sys.stderr.write(f"kbuild serve: unexpected {type(exc).__name__}: {visible(first)}\n")

    def mark(self, request: Any, busy: bool) -> None:
        self.connections.mark(request, busy)

    def server_close(self) -> None:
        """Stop listening, close idle connections now, let requests in progress finish (each bounded
        by the timeout), then wait for their threads."""
        socketserver.TCPServer.server_close(self)
        for conn in self.connections.idle():
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        super().server_close()


def host_headers(names: set[str], port: int) -> set[str]:
    """The Host header values that name this server; on port 80 browsers leave the port out."""
    return {f"{n}:{port}" for n in names} | (set(names) if port == 80 else set())


_BUSY_BODY = b'{"error": "too many connections; retry shortly"}'
_BUSY_HEAD = ["HTTP/1.1 503 Service Unavailable", "Content-Type: application/json; charset=utf-8",
              f"Content-Length: {len(_BUSY_BODY)}", "Connection: close", "Retry-After: 1", *_SECURITY_HEADERS]


class Handler(BaseHTTPRequestHandler):
    server: KbuildHTTPServer
    server_version = "kbuild-serve"
    sys_version = ""

    # ---- plumbing ------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.timeout_s)  # StreamRequestHandler would reset it otherwise
        self._input = DeadlineReader(self.connection, self.server.timeout_s)
        self.rfile = io.BufferedReader(self._input)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:  # request line and headers are in: from here the connection is busy, not idle
            self.server.mark(self.connection, True)
        return ok

    def handle_one_request(self) -> None:
        self._input.deadline = time.monotonic() + self.server.timeout_s  # this request's whole arrival
        try:
            super().handle_one_request()
        except GONE:
            self.close_connection = True  # a slow or vanished client: drop it, nothing worth a log line
        finally:
            self.server.mark(self.connection, False)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # Successful requests are not worth a line each; refusals and errors are (stderr, never stdout).
        if str(getattr(code, "value", code)).startswith(("4", "5")):
            command = getattr(self, "command", None) or "-"
            path = (getattr(self, "path", None) or getattr(self, "requestline", "") or "-").split("?")[0]
            self.log_message("%s %s -> %s", command, path[:200], getattr(code, "value", code))

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        if not format.startswith("Request timed out"):  # idle keep-alive connections time out routinely
            self.log_message(format, *args)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        # Request lines are the client's bytes: escaped, so they cannot move the cursor or forge lines.
        sys.stderr.write(f"kbuild serve: {visible(settings.mask_secrets(format % args))}\n")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own errors (bad request line, 414, 431, 501) as JSON with our headers.
        A malformed request line leaves the version at HTTP/0.9, which would send no status line at all."""
        if not str(getattr(self, "request_version", "")).startswith("HTTP/1."):
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        short = self.responses.get(code, ("error",))[0]
        body = settings.mask_secrets(json.dumps({"error": message or short})).encode("utf-8")
        self._headers(code, "application/json; charset=utf-8", len(body), close=True)
        if getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _headers(self, status: int, content_type: str, length: int, csp: str = _APP_CSP, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        if close:
            self.send_header("Connection", "close")
        self.end_headers()

    def _json(self, status: int, payload: Any) -> None:
        # Every reply is masked, not only the errors we word: a store error may quote a server's text,
        # and a server or proxy may echo the Authorization header it was sent.
        self._send_json(status, settings.mask_secrets(json.dumps(payload, ensure_ascii=False, default=str)).encode("utf-8"))

    def _send_json(self, status: int, body: bytes) -> None:
        self._headers(status, "application/json; charset=utf-8", len(body))
        self.wfile.write(body)

    def _file(self, path: Path, content_type: str, csp: str = _APP_CSP) -> None:
        body = path.read_bytes()
        self._headers(200, content_type, len(body), csp)
        self.wfile.write(body)

    def _error(self, exc: Exception) -> None:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), HTTPStatus.BAD_REQUEST)
        payload: dict[str, Any] = {"error": str(exc)}
        if isinstance(exc, StaleDraft):
            payload["draft"] = exc.current
        self._json(status, payload)

    def _dispatch(self, routes: dict[str, Callable[[str], None]]) -> None:
        """Exact routes get the query string; routes ending in '/' get the (unquoted) rest of the path."""
        try:
            self._check_host()
            parts = urlsplit(self.path)
            self._check_read(parts)
            if parts.path in routes:
                routes[parts.path](parts.query)
                return
            for prefix, route in routes.items():
                if prefix.endswith("/") and prefix != "/" and parts.path.startswith(prefix) and parts.path != prefix:
                    route(unquote(parts.path[len(prefix):]))
                    return
            raise SnapshotNotFound(f"No page {parts.path!r}")
        except GONE:
            self.close_connection = True  # the client left mid-reply: no error page to write
        except KbuildError as exc:
            self._error(exc)
        except Exception as exc:  # the last line of defence: one line to the page, traceback on request
            if settings.debug():  # masked and escaped like the CLI's debug traceback
                for text in traceback.format_exc().splitlines():
                    sys.stderr.write(visible(settings.mask_secrets(text)) + "\n")
            first = settings.mask_secrets(str(exc).splitlines()[0]) if str(exc) else ""
            self._json(500, {"error": f"unexpected {type(exc).__name__}: {first}"})

    # ---- guards --------------------------------------------------------------------------
    def _check_host(self) -> None:
        if not self.server.host_allowed(self.headers.get("Host", "")):
            raise Refused("Unexpected Host header: open the address printed by 'kbuild serve' "
                          "(or start it with --allow-host NAME)")

    def _check_read(self, parts: SplitResult) -> None:
        """Beyond loopback, data needs the token: anyone on the network can reach the port."""
        if self.server.loopback or self.command != "GET":
            return
        if parts.path in _PUBLIC_PATHS or parts.path.startswith(_PUBLIC_PREFIXES):
            return
        given = self.headers.get(TOKEN_HEADER, "") or (parse_qs(parts.query).get("token") or [""])[0]
        if not hmac.compare_digest(given.encode("utf-8"), self.server.token.encode("utf-8")):
            raise Refused("Missing or wrong token: open the link printed by 'kbuild serve' (it carries the token)")

    def _check_write(self) -> None:
        token = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(token.encode("utf-8"), self.server.token.encode("utf-8")):
            raise Refused("Missing or wrong token: open the link printed by 'kbuild serve' (it carries the token)")
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host", ""):
            raise Refused("Cross-origin request refused")
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            raise Refused("State-changing requests must send JSON")

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise UsageError("Content-Length required") from None
        if not 0 <= length <= MAX_BODY:
            raise UsageError(f"Request body over {MAX_BODY} bytes")
        try:
            payload = json.loads(self.rfile.read(length).decode("utf-8"))
        except ValueError as exc:
            raise UsageError(f"Request body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise UsageError("Request body must be a JSON object")
        return payload

    # ---- routes --------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (the base class's naming)
        s = self.server.service
        self._dispatch({
            "/": lambda _: self._asset("index.html"),
            "/favicon.ico": lambda _: self._asset("favicon.svg"),
            "/static/": self._asset,
            "/api/info": lambda _: self._json(200, s.info()),
            "/api/snapshots": lambda _: self._json(200, s.snapshots()),
            "/api/snapshots/": lambda name: self._send_json(200, s.snapshot_body(name)),
            "/api/compare": lambda q: self._json(200, s.compare(_arg(q, "old"), _arg(q, "new"), _threshold(q))),
            "/api/draft": lambda q: self._json(200, s.draft({"snapshot": _arg(q, "snapshot"),
                                                              "reviewer": _arg(q, "reviewer")})),
            "/api/reports": lambda _: self._json(200, s.reports()),
            "/reports/": lambda rel: self._file(s.report(rel), _TYPES[".html"], _REPORT_CSP),
        })

    def do_POST(self) -> None:  # noqa: N802
        s = self.server.service
        actions = {"/api/draft/decision": s.decide, "/api/draft/undo": s.undo,
                   "/api/draft/discard": s.discard, "/api/draft/save": s.save}
        self._dispatch({path: self._writer(act) for path, act in actions.items()})

    def _writer(self, action: Callable[[dict[str, Any]], Any]) -> Callable[[str], None]:
        """A route that runs ``action`` on the request body (the route's own argument is unused)."""
        return lambda _: self._write(action)

    def _write(self, action: Callable[[dict[str, Any]], Any]) -> None:
        self._check_write()
        self._json(200, action(self._body()))

    def _asset(self, name: str) -> None:
        path = self.server.assets.get(name)  # a table lookup: the request never names a file directly
        if path is None:
            raise SnapshotNotFound(f"No asset {name!r}")
        self._file(path, _TYPES[path.suffix])

    def _refuse_method(self) -> None:
        self._json(405, {"error": f"{self.command} is not supported"})

    do_PUT = do_DELETE = do_PATCH = _refuse_method


def _arg(query: str, name: str) -> str:
    values = parse_qs(query).get(name)
    if not values or not values[0]:
        raise UsageError(f"Missing query parameter '{name}'")
    return values[0]


def _threshold(query: str) -> float:
    raw = parse_qs(query).get("threshold", ["0.9"])[0]
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"threshold must be a number, not {raw!r}") from None
    if not -1.0 <= value <= 1.0:
        raise UsageError("threshold must lie in [-1, 1]")
    return value


def make_server(service: ReviewService, host: str, port: int, token: str, **limits: Any) -> KbuildHTTPServer:
    """Bind (port 0 = any free port); the caller runs ``serve_forever`` and ``server_close``.
    ``limits``: ``timeout_s``, ``max_connections``, ``allowed_hosts`` (see KbuildHTTPServer)."""
    try:
        return KbuildHTTPServer((host, port), service, token, **limits)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {host}:{port}: {exc.strerror or exc} "
                         "(choose another --port, or --port 0 for any free one)") from None
