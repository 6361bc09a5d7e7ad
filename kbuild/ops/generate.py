"""``kbuild generate``: classes x prompt template -> LLM descriptions -> a new snapshot.

The LLM work (rounds, retries, the call log that doubles as a cache) lives in
``kbuild.sources.llm.generate``; this module decides what is checked before the first call, when
CLIP is loaded (only after every call succeeded, so a failed load costs no LLM call on the rerun),
and what gets published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kbuild.classes_file import ClassEntry
from kbuild.errors import KbuildError
from kbuild.sources.llm.calllog import CallLog
from kbuild.sources.llm.generate import (GenerateOptions, GenerateResult, ProgressEvent,
                                         generate_descriptions, generation_parameters, snapshot_draft)
from kbuild.sources.llm.prompts import PromptTemplate
from kbuild.ops.provenance import generated as generated_provenance
from kbuild.ops.unchanged import repeated_run, same_as_earlier
from kbuild.store import SnapshotInfo, SnapshotStore


@dataclass
class GenerateOutcome:
    """The LLM run and, when every class succeeded, the snapshot it became."""

    result: GenerateResult
    snapshot: SnapshotInfo | None
    unchanged: bool = False  # a rerun that changed nothing: ``snapshot`` is the existing one
    repeats: SnapshotInfo | None = None  # an older snapshot with this content, no longer latest

    def failure(self, total: int) -> KbuildError:
        return KbuildError(f"{len(self.result.failures)} of {total} classes failed (listed above), so no snapshot "
                           "was written; every finished call is cached, so rerunning the same command completes "
                           "the rest without paying for them again")

    def to_json(self) -> dict[str, Any]:
        head = ({"snapshot": self.snapshot.name, "published": not self.unchanged,
                 "content_hash": self.snapshot.content_hash} if self.snapshot else {})
        return {**head, **self.result.to_json()}


def generate_snapshot(store: SnapshotStore, entries: list[ClassEntry], prompt: PromptTemplate,
                      options: GenerateOptions, client, load_embedder: Callable[[], Any], template: str,
                      classes_label: str, name: str | None = None,
                      progress: Callable[[ProgressEvent], None] | None = None,
                      force: bool = False) -> GenerateOutcome:
    """Ask ``client`` for every class through the store's call log; publish only when no class failed."""
    store.check_name_free(name)
    with CallLog.for_store(store.home) as log:
        result = generate_descriptions(entries, prompt, options, log, client, progress=progress)
    if result.failures:
        return GenerateOutcome(result, None)
    embedder = load_embedder()
    parameters = generation_parameters(prompt, options, client, classes_label)
    clip = {**embedder.clip.describe(), "template": template}
    displays = {e.name: e.display for e in entries}
    existing = None if force else repeated_run(store, "generate", result.descriptions, clip, displays)
    if existing is not None:  # a rerun answered from the call log: the same snapshot again
        return GenerateOutcome(result, existing, unchanged=True)
    draft = snapshot_draft(result, embedder, template, parameters, clip)
    repeats = None if force else same_as_earlier(store, "generate", result.descriptions, clip, displays)
    if repeats is not None:
        draft.extra["same_content_as"] = repeats.name
    draft.provenance = generated_provenance(prompt, options, client, result.stats)
    return GenerateOutcome(result, store.publish(draft, name=name), repeats=repeats)
