"""Differences between two snapshots, grouped like ``dvc diff``.

Classes are added, removed or modified. Inside a modified class, descriptions are added, removed,
or *reworded*: a removed and an added text whose CLIP similarity is at least ``reword_threshold``,
paired greedily from the most similar pair down (each text pairs at most once). Similarity uses the
embeddings stored in the snapshots, so a diff never loads a model; when the two snapshots were
embedded by different models their vectors are not comparable and reword detection is skipped.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from kbuild.store import KnowledgeBase

_MANIFEST_KEYS = ("operation", "parameters", "clip", "kbuild_version")


@dataclass
class ClassDiff:
    name: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reworded: list[tuple[str, str, float]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # removed text -> why the new snapshot dropped it

    def to_json(self) -> dict[str, Any]:
        return {"class_name": self.name, "added": self.added, "removed": self.removed,
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


def _changed_texts(old_rows: dict[str, int], new_rows: dict[str, int]) -> tuple[list[str], list[str]]:
    """(removed, added) texts of one class, each sorted."""
    return sorted(set(old_rows) - set(new_rows)), sorted(set(new_rows) - set(old_rows))


def _class_diff(name, removed, *, added, new_kb, threshold, old_vecs=None, new_vecs=None) -> ClassDiff:
    """``old_vecs`` (len(removed), D) and ``new_vecs`` (len(added), D) when rewordings are detected."""
    diff = ClassDiff(name)
    pairs = []
    if old_vecs is not None and new_vecs is not None:
        pairs = _pair_rewordings(old_vecs, new_vecs, threshold)
    paired_old = {i for i, _, _ in pairs}
    paired_new = {j for _, j, _ in pairs}
    diff.reworded = sorted((removed[i], added[j], s) for i, j, s in pairs)
    diff.removed = [t for i, t in enumerate(removed) if i not in paired_old]
    diff.added = [t for j, t in enumerate(added) if j not in paired_new]
    why = {r.description.text: r.explain() for r in new_kb.removed if r.description.class_name == name}
    diff.reasons = {t: why[t] for t in diff.removed if t in why}
    return diff


def _vectors_by_class(kb, text_rows, texts_by_class, fetch) -> dict[str, np.ndarray]:
    """class -> (len(texts), D) embeddings of those texts, fetched in one call for all classes."""
    rows = [text_rows[name][t] for name, texts in texts_by_class.items() for t in texts]
    if not rows:
        return {}
    matrix = np.asarray(fetch(kb, rows), dtype=np.float32)
    out, start = {}, 0
    for name, texts in texts_by_class.items():
        out[name] = matrix[start:start + len(texts)]
        start += len(texts)
    return out


def _manifest_changes(old: dict, new: dict) -> dict[str, dict[str, Any]]:
    """Changed manifest keys; ``parameters`` also lists which of its names changed."""
    changes = {key: {"old": old.get(key), "new": new.get(key)}
               for key in _MANIFEST_KEYS if old.get(key) != new.get(key)}
    if "parameters" in changes:
        before, after = changes["parameters"]["old"] or {}, changes["parameters"]["new"] or {}
        changes["parameters"] = {"old": before, "new": after,
                                 "changed": sorted(k for k in {*before, *after} if before.get(k) != after.get(k))}
    return changes


def _from_matrix(kb: KnowledgeBase, rows: list[int]) -> np.ndarray:
    return kb.embeddings[rows]


def diff_snapshots(old: KnowledgeBase, new: KnowledgeBase, reword_threshold: float = 0.9,
                   vectors: Callable[[KnowledgeBase, list[int]], np.ndarray] | None = None,
                   same_space: bool | None = None) -> SnapshotDiff:
    """Grouped differences from ``old`` to ``new``.

    Reword detection needs the embeddings of the changed rows only: by default they come from
    ``kb.embeddings`` (snapshots read with embeddings); ``vectors(kb, rows) -> (len(rows), D)`` can
    fetch just those rows instead (``SnapshotStore.vectors``), so a diff never reads every vector.
    ``same_space=True`` says ``vectors`` embeds both snapshots alike (a similarity model on the
    texts), so rewordings are found even when the snapshots' CLIP models differ.
    """
    old_clip = old.info.manifest.get("clip", {}).get("model_id")
    have_vectors = vectors is not None or old.embeddings.size > 0
    rewords = (same_space or old_clip == new.info.manifest.get("clip", {}).get("model_id")) and have_vectors
    result = SnapshotDiff(old.info.name, new.info.name, reword_detection=bool(rewords))
    if old.info.content_hash == new.info.content_hash:
        result.manifest = _manifest_changes(old.info.manifest, new.info.manifest) if old.info.name != new.info.name else {}
        return result
    old_map, new_map = _texts_by_class(old), _texts_by_class(new)
    for name in sorted(set(new_map) - set(old_map)):
        result.added_classes[name] = sorted(new_map[name])
    for name in sorted(set(old_map) - set(new_map)):
        result.removed_classes[name] = sorted(old_map[name])
    changed = {}
    for name in sorted(set(old_map) & set(new_map)):
        removed, added = _changed_texts(old_map[name], new_map[name])
        if removed or added:
            changed[name] = (removed, added)
    paired = {n: ra for n, ra in changed.items() if rewords and ra[0] and ra[1]}
    old_vecs = _vectors_by_class(old, old_map, {n: r for n, (r, _) in paired.items()}, vectors or _from_matrix)
    new_vecs = _vectors_by_class(new, new_map, {n: a for n, (_, a) in paired.items()}, vectors or _from_matrix)
    for name, (removed, added) in changed.items():
        result.modified.append(_class_diff(name, removed, added=added, new_kb=new, threshold=reword_threshold,
                                           old_vecs=old_vecs.get(name), new_vecs=new_vecs.get(name)))
    result.manifest = _manifest_changes(old.info.manifest, new.info.manifest)
    return result


def diff_stored(store, old: str, new: str, reword_threshold: float = 0.9,
                similarity: Callable[[list[str]], np.ndarray] | None = None) -> SnapshotDiff:
    """``kbuild diff OLD NEW`` on a ``SnapshotStore``: both snapshots' texts are read, and only the
    vectors of changed rows are fetched (reword detection), so two 50 000-row snapshots diff in seconds.
    ``similarity(texts)`` (a sentence model) replaces the stored CLIP vectors for reword detection."""
    # The two reads run side by side: Chroma's reads release the GIL, so this nearly halves the wait.
    with ThreadPoolExecutor(max_workers=2) as pool:
        old_kb, new_kb = pool.map(lambda ref: store.read(ref, embeddings=False), (old, new))
    if similarity is None:
        return diff_snapshots(old_kb, new_kb, reword_threshold, vectors=store.vectors)
    by_text = lambda kb, rows: similarity([kb.descriptions[r].text for r in rows])  # noqa: E731
    return diff_snapshots(old_kb, new_kb, reword_threshold, vectors=by_text, same_space=True)
