"""A scriptable OpenAI-compatible chat server on 127.0.0.1 for the generate tests (stdlib only).

It answers ``POST /v1/chat/completions`` like a real provider would, over real HTTP, one thread per
connection. Replies are made up from the request: the class is the earliest of the known class
names in the first user message, ``round`` is 0 for a first request and 1 for a follow-up (one that
carries earlier answers as an assistant turn), and the reply is a JSON list of ``per_reply``
descriptions of that class numbered after the ones already in the conversation, so each reply is new.

Faults are scripted with ``add_fault``: each matching request (by class, or any) consumes one use.
Every request is recorded (class, round, what was served, arrival time, Authorization header), so
tests can count calls per class and round. ``hold`` parks one request until ``release`` (to kill a
client while a call is in flight).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("429", "500", "slow", "bad_body", "malformed", "bad_json", "short", "repeat", "fenced", "numbered",
         "trickle", "huge")


@dataclass
class Fault:
    """``kind`` applied to the next ``times`` requests for ``cls`` (any class if None; times None = always)."""

    kind: str
    cls: str | None = None
    times: int | None = 1
    retry_after: str | None = None
    delay: float = 0.0
    items: int = 1


@dataclass
class Call:
    number: int
    class_name: str | None
    round: int
    served: str
    at: float
    auth: str
    body: dict = field(repr=False)

    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.body.get("messages", []) if m.get("role") == "user")


class FakeLLMServer:
    """Start with ``start()`` (or as a context manager); ``url`` is the ``--base-url`` to pass."""

    def __init__(self, classes=(), per_reply: int = 10, api_key: str | None = None, usage: bool = True):
        self.classes = list(classes)
        self.per_reply, self.api_key, self.usage = per_reply, api_key, usage
        self.faults: list[Fault] = []
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._hold: tuple[str, int] | None = None
        self.held = threading.Event()
        self._release = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # ---- control ----------------------------------------------------------------------------
    def start(self) -> "FakeLLMServer":
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def add_fault(self, kind: str, cls: str | None = None, times: int | None = 1, **kwargs) -> None:
        assert kind in KINDS, kind
        with self._lock:
            self.faults.append(Fault(kind, cls, times, **kwargs))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def hold(self, cls: str, round_index: int) -> None:
        """Park the first request for (cls, round) until ``release()``; ``held`` is set when it arrives."""
        self._hold = (cls, round_index)

    def release(self) -> None:
        self._release.set()

    # ---- what happened ------------------------------------------------------------------------
    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def count(self, cls: str | None = None, round_index: int | None = None, served: str | None = None) -> int:
        return sum(1 for c in self.calls if (cls is None or c.class_name == cls)
                   and (round_index is None or c.round == round_index) and (served is None or c.served == served))

    def counts(self) -> dict[tuple[str | None, int], int]:
        """(class, round) -> number of requests received."""
        result: dict[tuple[str | None, int], int] = {}
        for c in self.calls:
            result[(c.class_name, c.round)] = result.get((c.class_name, c.round), 0) + 1
        return result

    # ---- answering ------------------------------------------------------------------------------
    def class_of(self, body: dict) -> str | None:
        messages = body.get("messages", [])
        first_user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        found = [(first_user.find(name), -len(name), name) for name in self.classes if name in first_user]
        return min(found)[2] if found else None

    def _register(self, body: dict, auth: str) -> tuple[Call, Fault | None]:
        cls = self.class_of(body)
        round_index = int(any(m.get("role") == "assistant" for m in body.get("messages", [])))
        with self._lock:
            fault = next((f for f in self.faults if f.cls in (None, cls) and f.times != 0), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
            served = "401" if self.api_key and auth != f"Bearer {self.api_key}" else (fault.kind if fault else "ok")
            call = Call(len(self._calls) + 1, cls, round_index, served, time.monotonic(), auth, body)
            self._calls.append(call)
        return call, fault

    def must_hold(self, call: Call) -> bool:
        with self._lock:
            if self._hold is None or self._hold != (call.class_name, call.round):
                return False
            self._hold = None
        self.held.set()
        return True

    def items(self, cls: str | None, start: int, count: int) -> list[str]:
        return [f"visual trait {start + i + 1} of {cls}" for i in range(count)]

    def completion(self, call: Call, content: str) -> dict:
        body = {"id": f"chatcmpl-{call.number}", "object": "chat.completion", "created": int(time.time()),
                "model": call.body.get("model", "fake"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "logprobs": None, "finish_reason": "stop"}]}
        if self.usage:
            body["usage"] = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
        return body


def _content(fake: FakeLLMServer, call: Call, fault: Fault | None) -> str:
    """The assistant text for a request, shaped by the fault (if any)."""
    kind = fault.kind if fault else "ok"
    if kind == "malformed":
        return "I am sorry, I cannot describe that class in the requested form."
    if kind == "bad_json":
        return '["a list that never ends", "because the closing bracket is missing"'
    count = fault.items if kind == "short" else fake.per_reply
    items = fake.items(call.class_name, 0 if kind == "repeat" else _answered(call.body), count)
    if kind == "fenced":
        return "Here they are:\n```json\n" + json.dumps(items, indent=1) + "\n```"
    if kind == "numbered":
        return "\n".join(f"{i + 1}. {text}" for i, text in enumerate(items))
    return json.dumps(items)


def _answered(body: dict) -> int:
    """How many descriptions the conversation already holds (the assistant turns' JSON lists)."""
    total = 0
    for message in body.get("messages", []):
        if message.get("role") == "assistant":
            try:
                total += len(json.loads(message.get("content") or "[]"))
            except (ValueError, TypeError):
                pass
    return total


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeLLMServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        call, fault = self.fake._register(body, self.headers.get("Authorization", ""))
        if self.fake.must_hold(call):
            self.fake._release.wait(60)
        if call.served == "401":
            # Like a real provider, echo part of the refused key: the client must not repeat it.
            key = call.auth.removeprefix("Bearer ")
            return self._send(401, {"error": {"message": f"Incorrect API key provided: {key}",
                                              "type": "invalid_request_error", "code": "invalid_api_key"}})
        kind = fault.kind if fault else "ok"
        if kind == "429":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return self._send(429, {"error": {"message": "Rate limit reached", "type": "requests"}}, headers)
        if kind == "500":
            return self._send(500, {"error": {"message": "The server had an error", "type": "server_error"}})
        if kind == "bad_body":
            return self._send_raw(200, b'{"id": "chatcmpl-broken", "choices": [', {})
        if kind == "slow":
            time.sleep(fault.delay)
        if kind == "trickle":  # the headers at once, then one byte of the body every ``delay`` seconds
            return self._trickle(json.dumps(self.fake.completion(call, _content(self.fake, call, fault))).encode(),
                                 fault.delay)
        if kind == "huge":  # a reply of ``items`` characters
            return self._send(200, self.fake.completion(call, json.dumps(["w" * fault.items])))
        self._send(200, self.fake.completion(call, _content(self.fake, call, fault)))

    def _trickle(self, data: bytes, every: float) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                time.sleep(every)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), headers or {})

    def _send_raw(self, status: int, data: bytes, headers: dict) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) or was killed: nothing to answer
