"""``kbuild prune``: read a snapshot, run the pure prune stages, publish the child snapshot.

Similarity is measured on the vectors the snapshot already stores (the templated texts KPL
retrieves with), so a snapshot whose texts all have vectors prunes without any encoder, whether
CLIP built it or its vectors were imported. An encoder loads only for texts that need a new vector
(a text cut to fit the token limit), for class-name references when a stage compares with them,
or when ``similarity`` asks for another space (a sentence model, or CLIP on the bare texts, which
is served from the embedding cache first). The child reuses the parent's vector for every text
that did not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from kbuild.clip.choice import ModelRequest
from kbuild.clip.text import TextEmbedder, snapshot_embedder, templated_embeddings
from kbuild.descriptions import DEFAULT_TEMPLATE, RemovedRecord
from kbuild.errors import KbuildError, UsageError
from kbuild.ops.unchanged import repeated_prune, same_content
from kbuild.prune.core import PruneParams, PruneResult, prune_descriptions
from kbuild.store import SnapshotInfo, SnapshotStore
from kbuild.store.manifest import SnapshotDraft, display_names


@dataclass(frozen=True, kw_only=True)
class PruneRequest:
    """What ``kbuild prune`` is asked to do (the CLI builds one from its flags; a notebook, by hand).

    ``reference``: the snapshot to prune (``v3``, ``latest``, a tag); ``name``: the child's name (None:
    the next version); ``force``: publish even when nothing was removed; ``model``: the CLIP model for
    texts that need a new vector (flag > environment > the snapshot's own); ``similarity_model``: compare
    texts in another space than the stored vectors: ``clip`` (that model on the bare texts) or a
    sentence-transformers model (None: the stored vectors).
    """

    reference: str
    params: PruneParams = field(default_factory=PruneParams)
    name: str | None = None
    force: bool = False
    model: ModelRequest = field(default_factory=ModelRequest)
    similarity_model: str | None = None


@dataclass
class PruneOutcome:
    parent: SnapshotInfo
    snapshot: SnapshotInfo
    result: PruneResult
    reembedded: bool
    unchanged: bool = False  # nothing published: ``snapshot`` is the parent (nothing removed) or an earlier
    # prune of the same parent that kept the same texts
    embedder: TextEmbedder | None = None  # the texts' encoder (its model loaded only if a text needed it)

    def to_json(self) -> dict[str, Any]:
        return {"parent": self.parent.name, "snapshot": self.snapshot.name, "published": not self.unchanged,
                "content_hash": self.snapshot.content_hash, "reembedded": self.reembedded,
                **self.result.to_json()}


def prune_snapshot(store: SnapshotStore, request: PruneRequest) -> PruneOutcome:
    """Prune the snapshot ``request.reference`` (resolved once, here) and publish the result as its child;
    a prune that changes nothing (same content, same embedding model) publishes nothing unless ``force``.

    The embedder (None for imported vectors with no model named) encodes only what has no vector, its
    model loaded on the first such text; a similarity model replaces the stored vectors by another
    space on the bare texts."""
    params, name, force = request.params.validate(), request.name, request.force
    store.check_name_free(name)  # before any reading or embedding
    kb = store.read(request.reference)
    clip_info = dict(kb.info.manifest.get("clip", {}))
    embedder = snapshot_embedder(store.home, clip_info, request.model.model, request.model.pretrained,
                                 required=False)  # loads nothing yet
    similarity = similarity_of(request.similarity_model, embedder, clip_info)
    similarity_name = request.similarity_model
    template = clip_info.get("template") or DEFAULT_TEMPLATE
    reuse = embedder is None or clip_info.get("model_id") == embedder.model_id
    classes = kb.classes()
    displays = display_names(kb.info.manifest)
    names = _name_references(params, embedder, similarity, [displays.get(c, c) for c in classes], classes)
    vectors = similarity or _stored_vectors(kb)
    result = prune_descriptions(kb.descriptions, vectors, params, name_embeddings=names,
                                token_count=embedder.clip.count_tokens if embedder else None, template=template,
                                display_names=displays)
    if embedder is None and "overlong" in result.skipped:
        result.skipped["overlong"] = "imported vectors name no CLIP tokenizer"
    if not force and reuse and same_content(kb.info, result.kept, clip_info, displays):
        return PruneOutcome(kb.info, kb.info, result, reembedded=False, unchanged=True, embedder=embedder)
    # reuse is False only with an embedder (see above); the test says so to the type checker too
    child_clip = clip_info if reuse or embedder is None else {"model_id": embedder.model_id, "template": template}
    earlier = None if force else repeated_prune(store, kb.info.name, result.kept, child_clip, displays)
    if earlier is not None:  # this prune of the same parent ran before: its child is that snapshot
        return PruneOutcome(kb.info, earlier, result, reembedded=False, unchanged=True, embedder=embedder)
    parent_vectors = {d.id: v for d, v in zip(kb.descriptions, kb.embeddings)}
    kept_vectors = templated_embeddings(embedder, parent_vectors, descriptions=result.kept, template=template,
                                        reuse=reuse, display_names=displays)
    removed: list[RemovedRecord] = list(result.removed)
    removed_vectors = templated_embeddings(embedder, parent_vectors, descriptions=[r.description for r in removed],
                                           template=template, reuse=reuse, display_names=displays)
    if not reuse and embedder is not None:
        clip_info = {**embedder.clip.describe(), "template": template}
    parameters = {**params.to_json(), "similarity_model": similarity_name or f"stored:{clip_info.get('model_id')}"}
    draft = SnapshotDraft(result.kept, kept_vectors, "prune", parameters, clip_info, parents=[kb.info.name],
                          removed=removed, removed_embeddings=removed_vectors if removed else None,
                          extra={"per_class": result.to_json().get("per_class", {})}, display_names=displays)
    return PruneOutcome(kb.info, store.publish(draft, name=name), result, reembedded=not reuse, embedder=embedder)


def similarity_of(similarity_model: str | None, embedder: TextEmbedder | None,
                  clip: dict[str, Any]) -> Callable[[list[str]], np.ndarray] | None:
    """What texts are compared in: None (the stored vectors), the snapshot's CLIP on the bare texts
    (``clip``, its manifest section; served from the embedding cache first), or a sentence-transformers model."""
    if not similarity_model:
        return None
    if similarity_model == "clip":
        if embedder is None:
            raise UsageError(f"--similarity-model clip: this snapshot's vectors are imported "
                             f"({clip.get('model_id')}) and name no CLIP model: pass --model, or leave "
                             "--similarity-model out to compare the stored vectors")
        return lambda texts: embedder.embed_texts(texts)
    from kbuild.clip.sentence import sentence_embedder

    return sentence_embedder(similarity_model)


def _stored_vectors(kb) -> np.ndarray:
    """The snapshot's own (M, D) vectors, one per description; a snapshot without them cannot be
    pruned on them."""
    vectors = np.asarray(kb.embeddings, dtype=np.float32)
    if kb.descriptions and (vectors.ndim != 2 or vectors.shape[0] != len(kb.descriptions)):
        raise KbuildError(f"{kb.info.name} has {vectors.shape[0] if vectors.ndim else 0} vectors for "
                          f"{len(kb.descriptions)} texts: check it with 'kbuild verify {kb.info.name}'")
    return vectors


def _name_references(params: PruneParams, embedder: TextEmbedder | None, similarity, shown: list[str],
                     classes: list[str]) -> dict[str, np.ndarray] | None:
    """class -> name-prompt vector, only when a stage compares texts with class names (else None,
    and no encoder is needed). Names live in the space the texts are compared in."""
    if not params.needs_references() or params.margin_reference != "name":
        return None
    if similarity is not None:
        return dict(zip(classes, similarity(shown)))
    if embedder is None:
        raise UsageError("--margin-reference name compares texts with class-name prompts, which this snapshot's "
                         "imported vectors cannot embed: pass --margin-reference centroid, or --model for that space")
    return dict(zip(classes, embedder.embed_class_names(shown)))
