"""``kbuild prune``: read a snapshot, run the pure prune stages, publish the child snapshot.

Similarity is measured on the bare description texts (embedded once, then served from the
embedding cache); the child stores templated embeddings like every snapshot, reusing the
parent's vectors for every text that did not change, so a prune never re-encodes what it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from kbuild.clip.text import TextEmbedder, templated_embeddings
from kbuild.descriptions import DEFAULT_TEMPLATE
from kbuild.ops.unchanged import repeated_prune, same_content
from kbuild.prune.core import PruneParams, PruneResult, prune_descriptions
from kbuild.store import SnapshotInfo, SnapshotStore
from kbuild.store.manifest import SnapshotDraft, display_names


@dataclass
class PruneOutcome:
    parent: SnapshotInfo
    snapshot: SnapshotInfo
    result: PruneResult
    reembedded: bool
    unchanged: bool = False  # nothing published: ``snapshot`` is the parent (nothing removed) or an earlier
    # prune of the same parent that kept the same texts

    def to_json(self) -> dict[str, Any]:
        return {"parent": self.parent.name, "snapshot": self.snapshot.name, "published": not self.unchanged,
                "content_hash": self.snapshot.content_hash, "reembedded": self.reembedded,
                **self.result.to_json()}


def prune_snapshot(store: SnapshotStore, embedder: TextEmbedder, reference: str, params: PruneParams,
                   name: str | None = None, similarity: Callable[[list[str]], np.ndarray] | None = None,
                   similarity_name: str | None = None, force: bool = False) -> PruneOutcome:
    """Prune the snapshot ``reference`` and publish the result as its child; a prune that changes
    nothing (same content, same embedding model) publishes nothing unless ``force``."""
    params.validate()
    store.check_name_free(name)  # before any reading or embedding
    kb = store.read(reference)
    clip_info = dict(kb.info.manifest.get("clip", {}))
    template = clip_info.get("template") or DEFAULT_TEMPLATE
    reuse = clip_info.get("model_id") == embedder.model_id
    embed_bare = similarity or (lambda texts: embedder.embed_texts(texts))
    classes = kb.classes()
    displays = display_names(kb.info.manifest)
    shown = [displays.get(c, c) for c in classes]
    # Class references must live in the same space as the texts they are compared with.
    name_vectors = embedder.embed_class_names(shown) if similarity is None else similarity(shown)
    names = dict(zip(classes, name_vectors))
    result = prune_descriptions(kb.descriptions, embed_bare, params, name_embeddings=names,
                                token_count=embedder.clip.count_tokens, template=template, display_names=displays)
    if not force and reuse and same_content(kb.info, result.kept, clip_info, displays):
        return PruneOutcome(kb.info, kb.info, result, reembedded=False, unchanged=True)
    child_clip = clip_info if reuse else {"model_id": embedder.model_id, "template": template}
    earlier = None if force else repeated_prune(store, kb.info.name, result.kept, child_clip, displays)
    if earlier is not None:  # this prune ran before: its child is that snapshot
        return PruneOutcome(kb.info, earlier, result, reembedded=False, unchanged=True)
    parent_vectors = {d.id: v for d, v in zip(kb.descriptions, kb.embeddings)}
    kept_vectors = templated_embeddings(embedder, parent_vectors, result.kept, template, reuse, displays)
    removed = result.removed
    removed_vectors = templated_embeddings(embedder, parent_vectors, [r.description for r in removed], template,
                                           reuse, displays)
    if not reuse:
        clip_info = {**embedder.clip.describe(), "template": template}
    parameters = {**params.to_json(), "similarity_model": similarity_name or clip_info.get("model_id")}
    draft = SnapshotDraft(result.kept, kept_vectors, "prune", parameters, clip_info, parents=[kb.info.name],
                          removed=removed, removed_embeddings=removed_vectors if removed else None,
                          extra={"per_class": result.to_json().get("per_class", {})}, display_names=displays)
    return PruneOutcome(kb.info, store.publish(draft, name=name), result, reembedded=not reuse)
