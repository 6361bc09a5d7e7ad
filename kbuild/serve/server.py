"""The HTTP side of ``kbuild serve``: the standard library's ThreadingHTTPServer, a route table, guards.

Guards, in the order a request meets them:
- the Host header must name this server (on loopback), so a DNS-rebinding page cannot read the store;
- state-changing requests (POST) must carry the per-server token in ``X-Kbuild-Token``, be JSON
  (a cross-site form cannot send that, nor the custom header without a CORS preflight we never grant),
  and, when the browser sends an Origin, come from this server's own origin;
- files are served only from a fixed table of bundled assets or through the reports allow-list: no
  request path is ever joined onto a folder.
Every response says ``nosniff``, refuses framing, and sends no referrer (the token lives in the URL).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import socketserver
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from kbuild import settings
from kbuild.errors import KbuildError, SnapshotNotFound, UsageError
from kbuild.serve.drafts import StaleDraft
from kbuild.serve.service import ReviewService

STATIC = Path(__file__).with_name("static")
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
MAX_BODY = 1 << 20
TOKEN_HEADER = "X-Kbuild-Token"
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


class Refused(KbuildError):
    """A request the guards turn away (HTTP 403)."""


# Domain errors -> HTTP status; any other KbuildError is the request's fault (400).
_STATUS = ((StaleDraft, HTTPStatus.CONFLICT), (Refused, HTTPStatus.FORBIDDEN), (SnapshotNotFound, HTTPStatus.NOT_FOUND))


class KbuildHTTPServer(ThreadingHTTPServer):
    # Finish in-flight requests (a save that is publishing) before the process exits on Ctrl-C.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address, service: ReviewService, token: str):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, Handler)
        self.service, self.token = service, token
        # Listed once when the server starts: the only files the app itself will ever serve.
        self.assets = {p.name: p for p in sorted(STATIC.iterdir()) if p.suffix in _TYPES}
        self.loopback = is_loopback(host)
        port = self.server_address[1]
        shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("", "0.0.0.0") else host)
        self.url = f"http://{shown}:{port}/"
        names = {"127.0.0.1", "localhost", "[::1]", shown}
        self.allowed_hosts = {f"{n}:{port}" for n in names}

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang for seconds without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class Handler(BaseHTTPRequestHandler):
    server: KbuildHTTPServer
    server_version = "kbuild-serve"
    sys_version = ""

    # ---- plumbing ------------------------------------------------------------------------
    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # Successful requests are not worth a line each; refusals and errors are (stderr, never stdout).
        if str(getattr(code, "value", code)).startswith(("4", "5")):
            self.log_message("%s %s -> %s", self.command, self.path.split("?")[0], getattr(code, "value", code))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        sys.stderr.write(f"kbuild serve: {format % args}\n")

    def _headers(self, status: int, content_type: str, length: int, csp: str = _APP_CSP) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
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
            if parts.path in routes:
                routes[parts.path](parts.query)
                return
            for prefix, route in routes.items():
                if prefix.endswith("/") and prefix != "/" and parts.path.startswith(prefix) and parts.path != prefix:
                    route(unquote(parts.path[len(prefix):]))
                    return
            raise SnapshotNotFound(f"No page {parts.path!r}")
        except KbuildError as exc:
            self._error(exc)
        except Exception as exc:  # the last line of defence: one line to the page, traceback on request
            if settings.debug():
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            self._json(500, {"error": f"unexpected {type(exc).__name__}: {first}"})

    # ---- guards --------------------------------------------------------------------------
    def _check_host(self) -> None:
        if self.server.loopback and self.headers.get("Host", "") not in self.server.allowed_hosts:
            raise Refused("Unexpected Host header: open the address printed by 'kbuild serve'")

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
            "/api/snapshots/": lambda name: self._json(200, s.snapshot(name)),
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
        self._dispatch({path: (lambda _, act=act: self._write(act)) for path, act in actions.items()})

    def _write(self, action: Callable[[dict], Any]) -> None:
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


def make_server(service: ReviewService, host: str, port: int, token: str) -> KbuildHTTPServer:
    """Bind (port 0 = any free port); the caller runs ``serve_forever`` and ``server_close``."""
    try:
        return KbuildHTTPServer((host, port), service, token)
    except OSError as exc:
        raise UsageError(f"Cannot listen on {host}:{port}: {exc.strerror or exc} "
                         "(choose another --port, or --port 0 for any free one)") from None
