"""Differences between two snapshots, grouped like ``dvc diff``.

Classes are added, removed or modified. Inside a modified class, descriptions are added, removed,
or *reworded*: a removed and an added text whose CLIP similarity is at least ``reword_threshold``,
paired greedily from the most similar pair down (each text pairs at most once). Similarity uses the
embeddings stored in the snapshots, so a diff never loads a model; when the two snapshots were
embedded by different models their vectors are not comparable and reword detection is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .store import KnowledgeBase

_MANIFEST_KEYS = ("operation", "parameters", "clip", "kbuild_version")


@dataclass
class ClassDiff:
    name: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reworded: list[tuple[str, str, float]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # removed text -> why the new snapshot dropped it

    def to_json(self) -> dict[str, Any]:
        return {"class": self.name, "added": self.added, "removed": self.removed,
                "reworded": [{"old": o, "new": n, "similarity": round(s, 4)} for o, n, s in self.reworded],
                "removal_reasons": self.reasons}


@dataclass
class SnapshotDiff:
    old: str
    new: str
    added_classes: dict[str, list[str]] = field(default_factory=dict)
    removed_classes: dict[str, list[str]] = field(default_factory=dict)
    modified: list[ClassDiff] = field(default_factory=list)
    manifest: dict[str, dict[str, Any]] = field(default_factory=dict)
    reword_detection: bool = True

    @property
    def empty(self) -> bool:
        return not (self.added_classes or self.removed_classes or self.modified or self.manifest)

    def counts(self) -> dict[str, int]:
        return {
            "classes_added": len(self.added_classes), "classes_removed": len(self.removed_classes),
            "classes_modified": len(self.modified),
            "descriptions_added": sum(map(len, self.added_classes.values())) + sum(len(c.added) for c in self.modified),
            "descriptions_removed": sum(map(len, self.removed_classes.values())) + sum(len(c.removed) for c in self.modified),
            "descriptions_reworded": sum(len(c.reworded) for c in self.modified),
        }

    def summary(self) -> str:
        c = self.counts()
        return (f"classes: {c['classes_added']} added, {c['classes_removed']} removed, {c['classes_modified']} modified; "
                f"descriptions: {c['descriptions_added']} added, {c['descriptions_removed']} removed, "
                f"{c['descriptions_reworded']} reworded")

    def to_json(self) -> dict[str, Any]:
        if self.empty:
            return {}
        return {"old": self.old, "new": self.new, "summary": self.counts(),
                "added_classes": self.added_classes, "removed_classes": self.removed_classes,
                "modified_classes": [c.to_json() for c in self.modified],
                "manifest": self.manifest, "reword_detection": self.reword_detection}


def _texts_by_class(kb: KnowledgeBase) -> dict[str, dict[str, int]]:
    """class -> {text: row} for the kept descriptions."""
    out: dict[str, dict[str, int]] = {}
    for row, d in enumerate(kb.descriptions):
        out.setdefault(d.class_name, {})[d.text] = row
    return out


def _pair_rewordings(old_vecs: np.ndarray, new_vecs: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one pairing of (old, new) rows by descending cosine similarity >= threshold."""
    sims = old_vecs @ new_vecs.T
    order = np.argsort(-sims, axis=None, kind="stable")
    used_old, used_new, pairs = set(), set(), []
    for flat in order:
        i, j = divmod(int(flat), sims.shape[1])
        if sims[i, j] < threshold:
            break
        if i not in used_old and j not in used_new:
            used_old.add(i)
            used_new.add(j)
            pairs.append((i, j, float(sims[i, j])))
    return pairs


def _class_diff(name, old_rows, new_rows, old_kb, new_kb, threshold, rewords) -> ClassDiff | None:
    removed = sorted(set(old_rows) - set(new_rows))
    added = sorted(set(new_rows) - set(old_rows))
    if not removed and not added:
        return None
    diff = ClassDiff(name)
    pairs = []
    if rewords and removed and added:
        old_vecs = old_kb.embeddings[[old_rows[t] for t in removed]]
        new_vecs = new_kb.embeddings[[new_rows[t] for t in added]]
        pairs = _pair_rewordings(old_vecs, new_vecs, threshold)
    paired_old = {i for i, _, _ in pairs}
    paired_new = {j for _, j, _ in pairs}
    diff.reworded = sorted((removed[i], added[j], s) for i, j, s in pairs)
    diff.removed = [t for i, t in enumerate(removed) if i not in paired_old]
    diff.added = [t for j, t in enumerate(added) if j not in paired_new]
    why = {r.description.text: f"{r.stage}: {r.reason}" for r in new_kb.removed if r.description.class_name == name}
    diff.reasons = {t: why[t] for t in diff.removed if t in why}
    return diff


def _manifest_changes(old: dict, new: dict) -> dict[str, dict[str, Any]]:
    return {key: {"old": old.get(key), "new": new.get(key)}
            for key in _MANIFEST_KEYS if old.get(key) != new.get(key)}


def diff_snapshots(old: KnowledgeBase, new: KnowledgeBase, reword_threshold: float = 0.9) -> SnapshotDiff:
    """Grouped differences from ``old`` to ``new`` (both read with embeddings)."""
    old_clip = old.info.manifest.get("clip", {}).get("model_id")
    rewords = old_clip == new.info.manifest.get("clip", {}).get("model_id") and old.embeddings.size > 0
    result = SnapshotDiff(old.info.name, new.info.name, reword_detection=bool(rewords))
    if old.info.content_hash == new.info.content_hash:
        result.manifest = _manifest_changes(old.info.manifest, new.info.manifest) if old.info.name != new.info.name else {}
        return result
    old_map, new_map = _texts_by_class(old), _texts_by_class(new)
    for name in sorted(set(new_map) - set(old_map)):
        result.added_classes[name] = sorted(new_map[name])
    for name in sorted(set(old_map) - set(new_map)):
        result.removed_classes[name] = sorted(old_map[name])
    for name in sorted(set(old_map) & set(new_map)):
        change = _class_diff(name, old_map[name], new_map[name], old, new, reword_threshold, rewords)
        if change:
            result.modified.append(change)
    result.manifest = _manifest_changes(old.info.manifest, new.info.manifest)
    return result
