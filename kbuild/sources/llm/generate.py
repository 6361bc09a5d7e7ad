"""``kbuild generate``'s core: ask a chat model for visual descriptions of every class.

Each class runs in rounds. Round 0 sends the template's system and user texts; while the class has
fewer than ``per_class`` unique descriptions, the next round replays the conversation (the unique
descriptions so far as the assistant's turn) and adds the template's follow-up asking for the rest.
Because a round's messages depend only on the template, the class and the replies before it, a
rerun rebuilds exactly the same requests and finds every finished one in the call log.

A reply that cannot be parsed is asked again up to ``max_reasks`` times; transport faults are
retried inside the client. A class that still fails is reported with its reason while the other
classes go on; classes run concurrently on a pool of ``concurrency`` threads.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Callable

from kbuild.classes_file import ClassEntry
from kbuild.descriptions import Description, normalise_text
from kbuild.errors import StopNow, UsageError
from kbuild.sources.llm.calllog import ERROR, MALFORMED, OK, CallLog, CallRecord, cache_key
from kbuild.sources.llm.client import Attempt, CallFailed, ChatClient, ChatReply, Interrupted, estimate_cost, url_host
from kbuild.sources.llm.parse import ReplyParseError, parse_reply
from kbuild.sources.llm.prompts import GENERATE_VARIABLES, PromptTemplate
from kbuild.store.manifest import SnapshotDraft, now_iso

SIBLINGS = "siblings"


@dataclass(frozen=True)
class GenerateOptions:
    """How much to ask for and how hard to try. ``variables`` are extra template values (modality)."""

    per_class: int = 50
    concurrency: int = 8
    max_rounds: int = 5
    max_reasks: int = 2
    min_per_class: int | None = None
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def minimum(self) -> int:
        return self.per_class if self.min_per_class is None else self.min_per_class

    def check(self) -> None:
        for name in ("per_class", "concurrency", "max_rounds"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_reasks < 0:
            raise UsageError("--max-reasks must be 0 or more")
        if not 1 <= self.minimum <= self.per_class:
            raise UsageError(f"--min-per-class must be between 1 and --per-class ({self.per_class})")
        taken = sorted(set(self.variables) & {*GENERATE_VARIABLES, SIBLINGS})
        if taken:
            raise UsageError(f"--var {taken[0]}=... is not allowed: kbuild generate fills '{taken[0]}' itself")


@dataclass
class CallStats:
    """Requests sent, rounds answered from the log, and the tokens the provider reported."""

    made: int = 0
    cached: int = 0
    errors: int = 0
    malformed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_missing: int = 0
    estimated_cost_usd: float | None = None

    def add_reply(self, reply: ChatReply) -> None:
        self.made += 1
        if reply.prompt_tokens is None and reply.completion_tokens is None:
            self.usage_missing += 1
        self.prompt_tokens += reply.prompt_tokens or 0
        self.completion_tokens += reply.completion_tokens or 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProgressEvent:
    """Something worth a line on stderr: a class finished or failed, a retry, a re-ask."""

    kind: str  # "done" | "failed" | "retry" | "reask" | "stopping"
    class_name: str
    message: str
    done: int = 0
    total: int = 0

    def describe(self) -> str:
        counter = f"[{self.done}/{self.total}] " if self.kind in ("done", "failed") else "  "
        return f"{counter}{self.class_name}: {self.message}"


@dataclass
class GenerateResult:
    """Descriptions of every class that succeeded (classes-file order) and why the others failed."""

    descriptions: list[Description]
    failures: dict[str, str]
    stats: CallStats
    run_id: str
    log_path: str
    classes: list[ClassEntry] = field(default_factory=list)  # the classes asked for, with display names

    def to_json(self) -> dict[str, Any]:
        return {"total": len(self.descriptions), "failures": self.failures, "stats": self.stats.to_json(),
                "run_id": self.run_id, "call_log": self.log_path}


def check_request(classes: list[ClassEntry], prompt: PromptTemplate, options: GenerateOptions) -> None:
    """Fail before any call when the options or the template's variables cannot work."""
    options.check()
    if SIBLINGS in prompt.variables and len(classes) < 2:
        raise UsageError(f"Prompt '{prompt.name}' contrasts each class with the others: "
                         "the classes file needs at least 2 classes")
    prompt.render(_values(prompt, classes, classes[0], options, options.per_class))


def _values(prompt: PromptTemplate, classes: list[ClassEntry], entry: ClassEntry, options: GenerateOptions,
            count: int) -> dict[str, str]:
    values = {**options.variables, "class_name": entry.display, "count": str(count)}
    if SIBLINGS in prompt.variables:
        values[SIBLINGS] = "; ".join(c.display for c in classes if c.name != entry.name)
    return values


def build_messages(prompt: PromptTemplate, values: dict[str, str], so_far: list[str], per_class: int) -> list[dict]:
    """Round 0: system + user. Later rounds: the same, the answers so far, and the follow-up."""
    system, user = prompt.render({**values, "count": str(per_class)})
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if so_far:
        remaining = str(per_class - len(so_far))
        messages.append({"role": "assistant", "content": json.dumps(so_far, ensure_ascii=False)})
        messages.append({"role": "user", "content": prompt.render_follow_up({**values, "count": remaining})})
    return messages


def dedup_key(text: str) -> str:
    """Two descriptions differing only in case, spacing or a final full stop are the same one."""
    return normalise_text(text).casefold().rstrip(". ")


class _Run:
    """State shared by the worker threads of one generate run."""

    def __init__(self, classes, prompt, *, options, log, client, progress, run_id):
        self.classes, self.prompt, self.options = classes, prompt, options
        self.log, self.client, self.run_id = log, client, run_id
        self.progress = progress or (lambda event: None)
        self.stats = CallStats()
        self._lock = threading.Lock()

    def notify(self, event: ProgressEvent) -> None:
        with self._lock:
            self.progress(event)

    # ---- one class -----------------------------------------------------------------------
    def run_class(self, entry: ClassEntry) -> list[str]:
        """Up to ``per_class`` unique descriptions; raises CallFailed when the class cannot finish."""
        collected: dict[str, str] = {}
        per_class = self.options.per_class
        values = _values(self.prompt, self.classes, entry, self.options, per_class)
        rounds = 0
        for round_index in range(self.options.max_rounds):
            rounds = round_index + 1
            messages = build_messages(self.prompt, values, list(collected.values()), per_class)
            for item in self._ask(entry, round_index, messages):
                collected.setdefault(dedup_key(item), item)
            if len(collected) >= per_class:
                break
        texts = list(collected.values())[:per_class]
        if len(texts) < self.options.minimum:
            raise CallFailed(f"only {len(texts)} unique descriptions of {per_class} after {rounds} rounds "
                             f"(allow more with --max-rounds, or accept fewer with --min-per-class {len(texts) or 1})")
        return texts

    def _ask(self, entry: ClassEntry, round_index: int, messages: list[dict]) -> list[str]:
        """The parsed items of one round: from the log when it has them, else from the model."""
        key = cache_key(self.client.identity(), messages, round_index)
        cached = self.log.lookup(key)
        if cached is not None:
            with self._lock:
                self.stats.cached += 1
            return cached.items
        base = CallRecord(key, self.client.identity(), class_name=entry.name, round=round_index, messages=messages,
                          outcome=OK, duration_s=0.0)
        problem = ""
        for _ in range(self.options.max_reasks + 1):
            reply = self.client.complete(messages, on_attempt=partial(self._failed_attempt, base))
            with self._lock:
                self.stats.add_reply(reply)
            try:
                items = parse_reply(reply.text)
            except ReplyParseError as err:
                problem = str(err)
                self._record(base, reply, MALFORMED, error=problem)
                self.notify(ProgressEvent("reask", entry.name, f"unusable reply ({problem}); asking again"))
                continue
            self._record(base, reply, OK, items=items)
            return items
        raise CallFailed(f"unusable reply {self.options.max_reasks + 1} times in round {round_index + 1} ({problem})")

    def _record(self, base: CallRecord, reply: ChatReply, outcome: str, items=None, error=None) -> None:
        self.log.record(self.run_id, replace(
            base, outcome=outcome, duration_s=reply.duration_s, response=reply.text, items=items,
            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens, http_status=200,
            error=error))
        if outcome == MALFORMED:
            with self._lock:
                self.stats.malformed += 1

    def _failed_attempt(self, base: CallRecord, attempt: Attempt) -> None:
        self.log.record(self.run_id, replace(base, outcome=ERROR, duration_s=attempt.duration_s,
                                             http_status=attempt.status, error=attempt.error))
        with self._lock:
            self.stats.made += 1
            self.stats.errors += 1
        if attempt.retry_in_s is not None:
            self.notify(ProgressEvent("retry", base.class_name,
                                      f"{attempt.error}; retrying in {attempt.retry_in_s:.1f} s"))

    # ---- all classes ---------------------------------------------------------------------
    def task(self, entry: ClassEntry) -> tuple[list[str] | None, str | None]:
        try:
            return self.run_class(entry), None
        except CallFailed as err:
            return None, str(err)
        except Interrupted:
            return None, "interrupted"

    def run_all(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        done: dict[str, list[str]] = {}
        failures: dict[str, str] = {}
        total = len(self.classes)
        pool = ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="kbuild-llm")
        futures = {pool.submit(self.task, entry): entry for entry in self.classes}
        try:
            for future in as_completed(futures):
                entry = futures[future]
                texts, reason = future.result()  # re-raises a fatal error from a worker
                self._finish_class(entry, texts, reason=reason, done=done, failures=failures, total=total)
        except BaseException as err:
            # Ctrl-C or a fatal error: no new requests; calls in flight finish and are logged.
            self.client.stop.set()
            if isinstance(err, KeyboardInterrupt):
                self.notify(ProgressEvent("stopping", "interrupted", "waiting for the calls in flight (at "
                                          "most the request timeout) so that they are logged; rerun the "
                                          "same command to resume, or press Ctrl-C again to stop now"))
            try:
                pool.shutdown(wait=True, cancel_futures=True)
            except KeyboardInterrupt:
                raise StopNow() from None  # the second Ctrl-C: do not wait for the calls in flight
            raise
        pool.shutdown(wait=True)
        return done, failures

    def _finish_class(self, entry, texts, reason, done, failures, total) -> None:
        if texts is None:
            failures[entry.name] = reason
            kind, message = "failed", f"FAILED: {reason}"
        else:
            done[entry.name] = texts
            kind, message = "done", f"{len(texts)} descriptions"
        self.notify(ProgressEvent(kind, entry.name, message, len(done) + len(failures), total))


def generate_descriptions(classes: list[ClassEntry], prompt: PromptTemplate, options: GenerateOptions,
                          log: CallLog, client: ChatClient,
                          progress: Callable[[ProgressEvent], None] | None = None) -> GenerateResult:
    """Ask ``client`` for descriptions of every class, through the call log (cache) ``log``.

    Returns the descriptions of the classes that finished and the reason for each that did not;
    raises ``FatalLLMError`` when the provider refuses every request and lets Ctrl-C through once
    the calls in flight are logged.
    """
    check_request(classes, prompt, options)
    run_id = log.start_run({"model": client.model, "provider": client.base_url, "prompt": prompt.name,
                            "prompt_hash": prompt.hash, "classes": len(classes), "per_class": options.per_class})
    run = _Run(classes, prompt, options=options, log=log, client=client, progress=progress, run_id=run_id)
    status = "crashed"
    try:
        done, failures = run.run_all()
        status = "incomplete" if failures else "finished"
    except (KeyboardInterrupt, StopNow):
        status = "interrupted"
        raise
    except Exception as err:
        status = f"stopped: {type(err).__name__}"
        raise
    finally:
        run.stats.estimated_cost_usd = _cost(client.model, run.stats)
        log.finish_run(run_id, status, run.stats.to_json())
    return GenerateResult(_descriptions(classes, done, prompt, client.model), failures, stats=run.stats, run_id=run_id,
                          log_path=str(log.path), classes=list(classes))


def _cost(model: str, stats: CallStats) -> float | None:
    if stats.made and stats.usage_missing == stats.made - stats.errors:
        return None  # the provider reported no usage at all
    return estimate_cost(model, stats.prompt_tokens, stats.completion_tokens)


def _descriptions(classes: list[ClassEntry], done: dict[str, list[str]], prompt: PromptTemplate,
                  model: str) -> list[Description]:
    created = now_iso()
    extra = {"prompt": prompt.name, "prompt_hash": prompt.hash}
    return [Description(entry.name, text, source=f"llm:{model}", created=created, extra=dict(extra))
            for entry in classes for text in done.get(entry.name, [])]


def generation_parameters(prompt: PromptTemplate, options: GenerateOptions, client: ChatClient,
                          classes_file: str) -> dict[str, Any]:
    """What the manifest records about the run: everything that shaped the texts, never the key."""
    return {"llm_model": client.model, "llm_host": url_host(client.base_url), "prompt": prompt.name,
            "prompt_hash": prompt.hash, "per_class": options.per_class, "temperature": client.temperature,
            "seed": client.seed, "modality": options.variables.get("modality"),
            "variables": dict(options.variables), "max_rounds": options.max_rounds,
            "min_per_class": options.minimum, "classes_file": classes_file}


def snapshot_draft(result: GenerateResult, embedder, template: str, parameters: dict[str, Any],
                   clip: dict[str, Any]) -> SnapshotDraft:
    """The snapshot to publish: descriptions, their CLIP embeddings of ``template``, provenance."""
    displays = {e.name: e.display for e in result.classes if e.display != e.name}
    embeddings = embedder.embed_descriptions(result.descriptions, template, displays)
    return SnapshotDraft(result.descriptions, embeddings, "generate", parameters, clip=clip,
                         extra={"llm_calls": result.stats.to_json(), "llm_run_id": result.run_id},
                         display_names=displays)
