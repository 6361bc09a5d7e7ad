"""The chat model behind ``kbuild generate``: langchain's ``ChatOpenAI`` with our own retry loop.

The openai client's built-in retries are switched off (``max_retries=0``) so that every attempt is
seen here: logged, bounded, interruptible, and paced by the server's ``Retry-After`` when it sends
one (429), by exponential backoff with jitter otherwise (5xx, timeouts, dropped connections).
Errors a retry cannot fix (a refused key, an unknown model) stop the whole run at once.

The API key is handed to the client and to nothing else; every text that leaves this module
(error messages, raw replies) passes through ``redact`` first.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from kbuild.errors import KbuildError, UsageError

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Sent to servers that check no key (Ollama, vLLM, llama.cpp, LM Studio) when none is set.
PLACEHOLDER_KEY = "kbuild-no-key"
# A server asking us to wait longer than this is treated as down rather than obeyed.
MAX_RETRY_AFTER_S = 300.0
_RETRYABLE_STATUS = {408, 409, 429}

# US dollars per million (input, output) tokens: public list prices when written; an estimate only.
PRICES_PER_MILLION = {
    "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40), "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40), "gpt-5-mini": (0.25, 2.00), "gpt-5": (1.25, 10.00),
}


class MissingApiKey(KbuildError):
    """No key for the default OpenAI endpoint."""


class FatalLLMError(KbuildError):
    """The provider refuses every request (bad key, unknown model): retrying or going on is pointless."""


class CallFailed(Exception):
    """One request failed for good (retries exhausted, or an error a retry cannot fix)."""


class Interrupted(Exception):
    """The run is stopping (Ctrl-C or a fatal error elsewhere); no new request is sent."""


def resolve_api_key(key: str | None, base_url: str | None) -> str:
    """The key to send: the user's, a placeholder for a local server, or a one-line error."""
    if key and any(c.isspace() or not c.isprintable() for c in key):
        raise UsageError("OPENAI_API_KEY holds a line break, space or control character inside it (a key is "
                         "one line of printable characters): set it to the key alone, e.g. "
                         "export OPENAI_API_KEY=\"$(head -n1 key.txt)\"")
    if key:
        return key
    if base_url:
        return PLACEHOLDER_KEY
    raise MissingApiKey(
        "OPENAI_API_KEY is not set. Export it to use OpenAI (export OPENAI_API_KEY=sk-...), "
        "or pass --base-url http://127.0.0.1:11434/v1 for a local OpenAI-compatible server "
        "(Ollama, vLLM, llama.cpp, LM Studio), or import curated descriptions with 'kbuild load FILE'")


def public_url(url: str | None) -> str:
    """``url`` without user:password, query or fragment: safe for logs, cache keys and manifests."""
    parts = urlsplit(url or OPENAI_BASE_URL)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def url_host(url: str | None) -> str:
    return urlsplit(public_url(url)).netloc


def estimate_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Dollar estimate from list prices, or None for a model not in the table (e.g. a local one)."""
    matches = [name for name in PRICES_PER_MILLION if model == name or model.startswith(name + "-")]
    if not matches:
        return None
    price_in, price_out = PRICES_PER_MILLION[max(matches, key=len)]
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` extra attempts per request; delays ``base * 2**n`` (capped) times a jitter in [0.5, 1]."""

    retries: int = 4
    base_s: float = 1.0
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        return min(self.cap_s, self.base_s * 2 ** attempt) * rng.uniform(0.5, 1.0)


@dataclass
class Attempt:
    """One HTTP request and how it ended; ``outcome`` is ``ok`` or ``error``."""

    outcome: str
    duration_s: float
    status: int | None = None
    error: str = ""
    retry_in_s: float | None = None


@dataclass
class ChatReply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    duration_s: float
    finish_reason: str | None = None
    attempts: list[Attempt] = field(default_factory=list)


def redact(text: str, secret: str | None) -> str:
    if not text or not secret or secret == PLACEHOLDER_KEY:
        return text
    return text.replace(secret, "***")


@dataclass(frozen=True, kw_only=True)
class ChatSettings:
    """Which chat model at which endpoint (None: OpenAI's), its sampling settings, and how long and how
    often to try; ``kbuild generate`` builds it from its options."""

    model: str
    base_url: str | None = None
    temperature: float | None = None
    seed: int | None = None
    timeout_s: float = 60.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)


class ChatClient:
    """One chat model at one endpoint with fixed sampling settings; thread-safe."""

    def __init__(self, settings: ChatSettings, api_key: str, *, stop: threading.Event | None = None,
                 rng: random.Random | None = None) -> None:
        from langchain_openai import ChatOpenAI  # slow import: only when generating
        from pydantic import SecretStr

        from kbuild.sources.llm.bounded_http import bounded, http_client

        model, base_url, temperature, seed = settings.model, settings.base_url, settings.temperature, settings.seed
        timeout_s = settings.timeout_s
        self.model, self.temperature, self.seed = model, temperature, seed
        self.base_url = public_url(base_url)
        self.policy, self.timeout_s = settings.policy, timeout_s
        self.stop = stop or threading.Event()
        self._rng, self._rng_lock = rng or random.Random(), threading.Lock()
        self._secret = api_key
        self._bounded = bounded
        # The caller's URL (which may carry credentials) goes to the client only.
        self._llm = ChatOpenAI(model=model, base_url=base_url or OPENAI_BASE_URL, api_key=SecretStr(api_key),
                               temperature=temperature, seed=seed, timeout=timeout_s, max_retries=0,
                               http_client=http_client(timeout_s))

    def identity(self) -> dict:
        """What, besides the messages, decides a reply: part of every cache key."""
        return {"provider": self.base_url, "model": self.model, "temperature": self.temperature, "seed": self.seed}

    def redact(self, text: str) -> str:
        return redact(text, self._secret)

    def complete(self, messages: list[dict], on_attempt: Callable[[Attempt], None] | None = None) -> ChatReply:
        """Send ``messages`` until a reply arrives; each failed attempt is reported to ``on_attempt``."""
        attempts: list[Attempt] = []
        for number in range(self.policy.retries + 1):
            self._check_stop()
            started = time.monotonic()
            try:
                with self._bounded(self.timeout_s) as budget:  # the whole reply, not each read, within --timeout
                    message = self._llm.invoke([(m["role"], m["content"]) for m in messages])
            except Exception as exc:  # noqa: BLE001 - classified right below; unknown ones re-raised
                attempt = (self._too_large(time.monotonic() - started) if budget.too_large else
                           self._failed_attempt(exc, time.monotonic() - started, number))
                attempts.append(attempt)
                if on_attempt:
                    on_attempt(attempt)
                if attempt.retry_in_s is None:
                    raise CallFailed(f"{attempt.error} after {len(attempts)} attempt(s)") from None
                self._sleep(attempt.retry_in_s)
                continue
            return self._reply(message, time.monotonic() - started, attempts)
        raise AssertionError("unreachable")

    def _reply(self, message, duration: float, attempts: list[Attempt]) -> ChatReply:
        usage = getattr(message, "usage_metadata", None) or {}
        content = message.content if isinstance(message.content, str) else json.dumps(message.content)
        attempts.append(Attempt("ok", duration, 200))
        return ChatReply(self.redact(content), usage.get("input_tokens"), completion_tokens=usage.get("output_tokens"),
                         duration_s=duration, finish_reason=(message.response_metadata or {}).get("finish_reason"),
                         attempts=attempts)

    @staticmethod
    def _too_large(duration: float) -> Attempt:
        """A reply past ``MAX_REPLY_BYTES`` was cut off unread: asking again would bring the same."""
        from kbuild.sources.llm.bounded_http import MAX_REPLY_BYTES

        return Attempt("error", duration, 200, f"reply over {MAX_REPLY_BYTES >> 20} MB (the limit for one reply)")

    def _failed_attempt(self, exc: Exception, duration: float, number: int) -> Attempt:
        """Classify an exception: retry (with a delay), give up on this request, or stop the run."""
        status, kind, retryable, retry_after = classify(exc)
        error = self.redact(f"{kind}: {_first_line(exc)}" if kind != "timeout" else
                            f"timeout after {self.timeout_s:g} s")
        if status in (401, 403, 404):
            self.stop.set()  # before raising, so no other worker sends another doomed request
            raise FatalLLMError(self._fatal_message(status, error)) from None
        last = number >= self.policy.retries
        with self._rng_lock:
            delay = None if (last or not retryable) else self.policy.delay(number, retry_after, self._rng)
        return Attempt("error", duration, status, error, delay)

    def _fatal_message(self, status: int, error: str) -> str:
        where = url_host(self.base_url)
        if status == 404:
            return (f"{where} does not know the model '{self.model}' ({error}); choose another --llm-model")
        return (f"{where} refused the API key (HTTP {status}: {error}); check OPENAI_API_KEY, or pass "
                "--base-url for a server that needs no key")

    def _sleep(self, seconds: float) -> None:
        # Event.wait instead of time.sleep: Ctrl-C (which sets ``stop``) ends the wait at once.
        if self.stop.wait(seconds):
            raise Interrupted()

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Interrupted()


def classify(exc: Exception) -> tuple[int | None, str, bool, float | None]:
    """(HTTP status or None, short kind, retryable?, Retry-After seconds or None) for an exception."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return None, "timeout", True, None
    if isinstance(exc, openai.APIConnectionError):
        return None, "connection failed", True, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in _RETRYABLE_STATUS or status >= 500
        return status, f"HTTP {status}", retryable, retry_after_seconds(exc.response.headers)
    if isinstance(exc, (json.JSONDecodeError, openai.APIResponseValidationError)):
        return None, "unreadable response body", True, None
    # Anything else (a library error on an odd reply) fails this request, not the whole run.
    return None, f"unexpected {type(exc).__name__}", False, None


def retry_after_seconds(headers) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, ``Retry-After`` in seconds or as a date."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    # openai prefixes "Error code: 429 - "; the status is already in our own prefix.
    return re.sub(r"^Error code: \d+ - ", "", text.splitlines()[0])[:300]
