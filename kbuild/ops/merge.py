"""``kbuild merge A B``: the union of two snapshots, deduplicated by description id.

The child keeps A's CLIP model and template. B's vectors are reused when B was embedded the same
way; otherwise B's new descriptions are re-embedded with A's model (cached), so one snapshot never
mixes embedding spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kbuild.clip.choice import ModelRequest
from kbuild.errors import UsageError
from kbuild.ops.embedding import parent_embedder
from kbuild.store import SnapshotInfo, SnapshotStore
from kbuild.store.manifest import SnapshotDraft, display_names


@dataclass
class MergeResult:
    snapshot: SnapshotInfo
    from_first: int
    from_second: int
    shared: int
    reembedded: int

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot.name, "content_hash": self.snapshot.content_hash,
                "total": self.snapshot.manifest["total"], "from_first": self.from_first,
                "from_second": self.from_second, "shared": self.shared, "reembedded": self.reembedded}


def _same_space(a: dict, b: dict) -> bool:
    return a.get("model_id") == b.get("model_id") and a.get("template") == b.get("template")


def merge_snapshots(store: SnapshotStore, first: str, second: str, *, name: str | None = None,
                    model: ModelRequest | None = None) -> MergeResult:
    """Publish A ∪ B. A CLIP model is loaded only when B's new descriptions must be re-embedded:
    ``model`` when it names one (or the environment does), else A's own."""
    store.check_name_free(name)
    a, b = store.read(first), store.read(second)
    if a.info.name == b.info.name:
        raise UsageError(f"merge needs two different snapshots, got {a.info.name} twice")
    seen = {d.id for d in a.descriptions}
    new_rows = [i for i, d in enumerate(b.descriptions) if d.id not in seen]
    new_descriptions = [b.descriptions[i] for i in new_rows]
    clip_a = a.info.manifest.get("clip", {})
    displays = {**display_names(b.info.manifest), **display_names(a.info.manifest)}  # A's names win
    if _same_space(clip_a, b.info.manifest.get("clip", {})) or not new_rows:
        new_vectors = b.embeddings[new_rows] if new_rows else np.zeros((0, a.embeddings.shape[1]), np.float32)
        reembedded = 0
    else:
        embedder = parent_embedder(store, model or ModelRequest(), clip_a)
        new_vectors = embedder.embed_descriptions(new_descriptions, clip_a["template"], displays)
        reembedded = len(new_rows)
    draft = SnapshotDraft(a.descriptions + new_descriptions, np.concatenate([a.embeddings, new_vectors]),
                          "merge", {"first": a.info.name, "second": b.info.name}, clip_a,
                          parents=[a.info.name, b.info.name], display_names=displays)
    published = store.publish(draft, name=name)
    return MergeResult(published, len(a.descriptions), len(new_rows), len(b.descriptions) - len(new_rows), reembedded)
