"""``kbuild generate``: classes x prompt template -> LLM descriptions -> a new snapshot.

The LLM work (rounds, retries, the call log that doubles as a cache) lives in
``kbuild.sources.llm.generate``; this module decides what is checked before the first call, when
CLIP is loaded (only after every call succeeded, so a failed load costs no LLM call on the rerun),
and what gets published.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from kbuild.classes_file import ClassEntry
from kbuild.clip.choice import ModelRequest
from kbuild.descriptions import DEFAULT_TEMPLATE
from kbuild.errors import KbuildError
from kbuild.ops.embedding import new_snapshot_embedder
from kbuild.ops.provenance import generated as generated_provenance
from kbuild.ops.unchanged import repeated_run, same_as_earlier
from kbuild.sources.llm.calllog import CallLog
from kbuild.sources.llm.generate import (
    GenerateOptions,
    GenerateResult,
    ProgressEvent,
    generate_descriptions,
    generation_parameters,
    snapshot_draft,
)
from kbuild.sources.llm.prompts import PromptTemplate
from kbuild.store import SnapshotInfo, SnapshotStore


@dataclass(frozen=True)
class GenerateRequest:
    """What ``kbuild generate`` is asked to do (the CLI builds one from its flags; a notebook, by hand).

    ``entries``: the classes (from a classes file); ``prompt``: the LLM prompt template;
    ``options``: how much to ask for and how hard to try; ``classes_label``: how the manifest names
    the class list (the classes file's name); ``name``: the snapshot's name (None: the next version);
    ``force``: publish even when nothing changed; ``template``: how descriptions are rendered for
    CLIP; ``model``: which CLIP model embeds them (loaded only after every LLM call succeeded).
    """

    entries: Sequence[ClassEntry]
    prompt: PromptTemplate
    options: GenerateOptions = field(default_factory=GenerateOptions)
    classes_label: str = "classes"
    template: str = DEFAULT_TEMPLATE
    name: str | None = None
    force: bool = False
    model: ModelRequest = field(default_factory=ModelRequest)


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


def generate_snapshot(store: SnapshotStore, request: GenerateRequest, client, *,
                      progress: Callable[[ProgressEvent], None] | None = None) -> GenerateOutcome:
    """Ask ``client`` for every class through the store's call log; publish only when no class failed."""
    entries, prompt, options, template = list(request.entries), request.prompt, request.options, request.template
    store.check_name_free(request.name)
    with CallLog.for_store(store.home) as log:
        result = generate_descriptions(entries, prompt, options, log, client, progress=progress)
    if result.failures:
        return GenerateOutcome(result, None)
    embedder = new_snapshot_embedder(store, request.model)
    parameters = generation_parameters(prompt, options, client, request.classes_label)
    clip = {**embedder.clip.describe(), "template": template}
    displays = {e.name: e.display for e in entries}
    existing = None if request.force else repeated_run(store, "generate", result.descriptions, clip, displays)
    if existing is not None:  # a rerun answered from the call log: the same snapshot again
        return GenerateOutcome(result, existing, unchanged=True)
    draft = snapshot_draft(result, embedder, template, parameters, clip)
    repeats = None if request.force else same_as_earlier(store, "generate", result.descriptions, clip, displays)
    if repeats is not None:
        draft.extra["same_content_as"] = repeats.name
    draft.provenance = generated_provenance(prompt, options, client, result.stats)
    return GenerateOutcome(result, store.publish(draft, name=request.name), repeats=repeats)
