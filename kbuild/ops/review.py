"""A human review of a snapshot, applied as a child snapshot (what ``kbuild serve`` saves).

A review never changes its parent. Each decision names one description of the parent by
(class, text) and accepts, rejects or edits it, or adds a new description. Applying the decisions:

- rejected descriptions become removed records (stage ``review``, reason ``rejected by <who>: <comment>``);
- an edit replaces the text in place (so the description gets a new id), an addition is appended;
- accepted descriptions stay, with who accepted them in their ``extra``.

The child stores embeddings like every snapshot, with the parent's CLIP model and template: unchanged
descriptions keep the parent's vectors bit for bit and only edited or added texts are encoded, exactly
as ``kbuild prune`` does (the same helper). The manifest's ``extra.review`` lists every decision
(who, when, action, class, old, new, comment), so the snapshot says who changed what.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from kbuild.clip import text as clip_text
from kbuild.clip.text import TextEmbedder, templated_embeddings
from kbuild.descriptions import DEFAULT_TEMPLATE, Description, normalise_text
from kbuild.errors import KbuildError
from kbuild.store import KnowledgeBase, RemovedRecord, SnapshotInfo, SnapshotStore
from kbuild.store.manifest import SnapshotDraft, display_names, now_iso

ACTIONS = ("accept", "reject", "edit", "add")
STAGE = "review"
MAX_TEXT = 10_000
MAX_NAME = 100
# 'class' and 'old' name what is already stored, which a curated file may have made longer than a
# reviewer may type: they are bounded only by the request size, and must match a stored description.
MAX_STORED = 1 << 20


class ReviewError(KbuildError):
    """A decision that cannot apply to its snapshot (unknown description, empty or duplicate text...)."""


@dataclass
class Decision:
    """One reviewer's decision on one description (``old``) or a new one (``new`` for edit/add)."""

    action: str
    class_name: str
    who: str
    when: str
    old: str | None = None
    new: str | None = None
    comment: str = ""

    @property
    def key(self) -> str:
        """Decisions on the same parent description replace each other; additions are keyed by their text."""
        if self.action == "add":
            return f"add\n{self.class_name}\n{self.new}"
        return f"row\n{self.class_name}\n{self.old}"

    def to_json(self) -> dict[str, Any]:
        return {"who": self.who, "when": self.when, "action": self.action, "class": self.class_name,
                "old": self.old, "new": self.new, "comment": self.comment}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "Decision":
        """A decision from untrusted JSON (a browser, a draft file): types checked, texts normalised."""
        if not isinstance(payload, dict):
            raise ReviewError("A decision must be a JSON object")
        action = _field(payload, "action", 20)
        if action not in ACTIONS:
            raise ReviewError(f"Unknown review action '{action}'. Available: {', '.join(ACTIONS)}")
        # Existing descriptions are named exactly as stored; only texts the reviewer typed are normalised.
        exact = action != "add"
        decision = cls(action=action, class_name=_field(payload, "class", MAX_STORED, exact=exact),
                       who=_field(payload, "who", MAX_NAME), when=_field(payload, "when", 64, required=False),
                       old=_field(payload, "old", MAX_STORED, required=exact, exact=True) or None,
                       new=_field(payload, "new", MAX_TEXT, required=action in ("edit", "add")) or None,
                       comment=_field(payload, "comment", MAX_TEXT, required=False))
        if action in ("accept", "reject"):
            decision.new = None
        if action == "add":
            decision.old = None
        if action == "edit" and decision.new == decision.old:
            raise ReviewError("The edited text is the same as the original (after whitespace is normalised)")
        return decision


def _field(payload: dict[str, Any], name: str, limit: int, required: bool = True, exact: bool = False) -> str:
    value = payload.get(name)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ReviewError(f"Decision field '{name}' must be a string")
    value = value if exact else normalise_text(value)
    if required and not value.strip():
        raise ReviewError(f"Decision field '{name}' is empty")
    if len(value) > limit:
        raise ReviewError(f"Decision field '{name}' is longer than {limit} characters")
    return value


def check_decision(parent: KnowledgeBase, decision: Decision) -> Decision:
    """Refuse a decision that names no description of ``parent`` or adds one it already has."""
    existing = {(d.class_name, d.text) for d in parent.descriptions}
    if decision.action != "add" and (decision.class_name, decision.old) not in existing:
        raise ReviewError(f"No description {decision.old!r} in class '{decision.class_name}' of {parent.info.name}")
    if decision.new is not None and (decision.class_name, decision.new) in existing:
        raise ReviewError(f"Class '{decision.class_name}' of {parent.info.name} already has {decision.new!r}")
    return decision


def rejection_reason(decision: Decision) -> str:
    return f"rejected by {decision.who}: {decision.comment}" if decision.comment else f"rejected by {decision.who}"


def _note(decision: Decision, **more: Any) -> dict[str, Any]:
    return {"action": decision.action, "by": decision.who, "when": decision.when,
            "comment": decision.comment, **more}


def _reviewed(d: Description, decision: Decision) -> Description:
    if decision.action == "accept":
        return Description(d.class_name, d.text, d.source, d.created, {**d.extra, "review": _note(decision)})
    # An edited text is the reviewer's, so its provenance says so and keeps where the original came from.
    note = _note(decision, original_text=d.text, original_source=d.source)
    return Description(d.class_name, decision.new or "", f"review:{decision.who}", decision.when, {"review": note})


def _added(decision: Decision) -> Description:
    return Description(decision.class_name, decision.new or "", f"review:{decision.who}", decision.when,
                       {"review": _note(decision)})


def _apply(parent: KnowledgeBase, decisions: list[Decision]) -> tuple[list[Description], list[RemovedRecord]]:
    """The child's kept descriptions (parent order, additions last) and its removed records."""
    by_text: dict[tuple[str, str | None], Decision] = {}
    for decision in decisions:
        check_decision(parent, decision)
        if decision.action != "add":
            if (decision.class_name, decision.old) in by_text:
                raise ReviewError(f"Two decisions for {decision.old!r} in class '{decision.class_name}'")
            by_text[(decision.class_name, decision.old)] = decision
    kept, removed = [], []
    for d in parent.descriptions:
        found = by_text.get((d.class_name, d.text))
        if found is None:
            kept.append(d)
        elif found.action == "reject":
            removed.append(RemovedRecord(d, STAGE, rejection_reason(found)))
        else:
            kept.append(_reviewed(d, found))
    kept += [_added(x) for x in decisions if x.action == "add"]
    seen: set[str] = set()
    for d in kept:
        if d.id in seen:
            raise ReviewError(f"The review would give class '{d.class_name}' the text {d.text!r} twice")
        seen.add(d.id)
    return kept, removed


def apply_review(parent: KnowledgeBase, decisions: list[Decision],
                 embedder: Callable[[], TextEmbedder]) -> SnapshotDraft:
    """The child snapshot of ``parent`` (read with embeddings) that ``decisions`` describe.

    ``embedder`` is called only when a text needs encoding (an edit or an addition), so a review that
    only accepts or rejects never loads a model. Its vectors are (M, D) like the parent's.
    """
    if not decisions:
        raise ReviewError("Nothing to save: the review has no decisions yet")
    kept, removed = _apply(parent, decisions)
    parent_vectors = {d.id: v for d, v in zip(parent.descriptions, parent.embeddings)}
    clip_info = dict(parent.info.manifest.get("clip", {}))
    template = clip_info.get("template") or DEFAULT_TEMPLATE
    reuse, model = True, None
    if any(d.id not in parent_vectors for d in kept):
        model = embedder()
        reuse = model.model_id == clip_info.get("model_id")
        if not reuse:  # another model was asked for: every vector must come from it, or KPL mixes spaces
            clip_info = {**model.clip.describe(), "template": template}
    displays = display_names(parent.info.manifest)
    kept_vectors = (templated_embeddings(model, parent_vectors, descriptions=kept, template=template, reuse=reuse,
                                         display_names=displays) if model is not None
                    else np.stack([parent_vectors[d.id] for d in kept]).astype(np.float32))
    removed_descs = [r.description for r in removed]
    removed_vectors = None
    if removed:
        removed_vectors = (templated_embeddings(model, parent_vectors, descriptions=removed_descs, template=template,
                                                reuse=reuse, display_names=displays)
                           if model is not None else np.stack([parent_vectors[d.id] for d in removed_descs]))
    counts = Counter(x.action for x in decisions)
    parameters = {"reviewers": sorted({x.who for x in decisions}),
                  "decisions": {a: counts[a] for a in ACTIONS if counts[a]}}
    return SnapshotDraft(kept, kept_vectors, STAGE, parameters, clip_info, parents=[parent.info.name],
                         removed=removed, removed_embeddings=removed_vectors,
                         extra={"review": [x.to_json() for x in decisions]}, display_names=displays)


def snapshot_embedder(store: SnapshotStore, info: SnapshotInfo, model: str | None = None,
                      pretrained: str | None = None) -> TextEmbedder:
    """The parent snapshot's own CLIP model unless a flag or the environment names another."""
    return clip_text.snapshot_embedder(store.home, info.manifest.get("clip", {}), model, pretrained)


def review_snapshot(store: SnapshotStore, reference: str, decisions: list[Decision], *, model: str | None = None,
                    pretrained: str | None = None, name: str | None = None,
                    draft_key: str | None = None) -> SnapshotInfo:
    """Read ``reference``, apply ``decisions`` and publish the child through the store's atomic publish.

    ``draft_key`` names the saved draft and its version (``extra.review_draft``): when a snapshot
    already carries it, that save published before it was interrupted, and it is returned as is."""
    if draft_key is not None:
        # typed here: the store's methods pass through an untyped fault-translating decorator
        done: SnapshotInfo | None = next((s for s in store.list() if (s.manifest.get("extra") or {}).get("review_draft") == draft_key),
                    None)
        if done is not None:
            return done
    parent = store.read(reference)
    draft = apply_review(parent, decisions, lambda: snapshot_embedder(store, parent.info, model, pretrained))
    if draft_key is not None:
        draft.extra["review_draft"] = draft_key
    published: SnapshotInfo = store.publish(draft, name=name)
    return published


def stamp(payload: dict[str, Any], who: str) -> Decision:
    """A decision from a browser: the server, not the client, says when it was made."""
    return Decision.from_json({**payload, "who": who, "when": now_iso()})
