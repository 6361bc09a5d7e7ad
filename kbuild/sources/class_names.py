"""Classes that look like one class under two names, and joining them with a class map.

Loading DCLIP's and CuPL's ImageNet files together gives 1002 classes: two ImageNet classes are
spelled differently by the two sources (eft / newt). Such a pair splits one class's descriptions
in two, and nothing fails. ``similar_classes`` reports the likely pairs so the user can join
them with ``kbuild load --class-map`` (``rename_classes`` applies the map before anything else):

- plural: the same name once the last word is made singular and case, ``_`` and ``-`` are
  ignored (``Golden Retrievers`` / ``golden_retriever``); names equal up to case alone are
  already reported by the import (``CuratedImport.case_collisions``);
- similar name: across two files, a class only the first file has and a class only the second
  has whose name prompts (``a photo of a {}.``) are each other's nearest neighbour, with cosine
  >= ``SIMILAR_NAME_THRESHOLD``. Only the classes the files do not share are compared, so two
  files of the same dataset give a handful of candidates and no encoder work for the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

# Cosine of the name prompts for a mutual-nearest pair to be reported. Among the classes two files
# do not share, a pair this close is worth a look; the rule only warns, it never joins anything.
SIMILAR_NAME_THRESHOLD = 0.85
_SEPARATORS = re.compile(r"[\s_\-]+")


@dataclass(frozen=True)
class SimilarClasses:
    """Two class names that may be one class: the rule that matched and, for names, the cosine."""

    first: str
    second: str
    rule: str  # "plural" or "similar name"
    score: float | None = None

    def to_json(self) -> dict:
        return {"classes": [self.first, self.second], "rule": self.rule, "score": self.score}

    def describe(self) -> str:
        return f"{self.first} / {self.second} ({self.rule}" + (f" {self.score:.2f})" if self.score is not None else ")")


def singular_key(name: str) -> str:
    """``Golden_Retrievers`` -> ``golden retriever``: case-folded, separators as one space, the last
    word singular by English's regular endings (``-ies`` -> ``-y``, ``-ches``/``-shes``/``-xes``/
    ``-ses``/``-zes`` -> drop ``es``, else a final ``s`` that is not ``ss``/``us``/``is``)."""
    words = _SEPARATORS.sub(" ", name.casefold()).strip().split(" ")
    last = words[-1]
    if len(last) > 4 and last.endswith("ies"):
        last = last[:-3] + "y"
    elif len(last) > 4 and last.endswith(("ches", "shes", "xes", "ses", "zes")):
        last = last[:-2]
    elif len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        last = last[:-1]
    return " ".join(words[:-1] + [last])


def _plural_pairs(names: Sequence[str]) -> list[SimilarClasses]:
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        groups.setdefault(singular_key(name), []).append(name)
    pairs = []
    for group in groups.values():
        for other in group[1:]:
            if other.casefold() != group[0].casefold():  # case alone is the import's own warning
                pairs.append(SimilarClasses(group[0], other, "plural"))
    return pairs


def _nearest_pairs(left: list[str], right: list[str], vectors: dict[str, np.ndarray],
                   threshold: float) -> list[SimilarClasses]:
    """Mutual nearest neighbours between ``left`` and ``right`` by cosine of their unit vectors."""
    sims = np.stack([vectors[n] for n in left]) @ np.stack([vectors[n] for n in right]).T
    best_right, best_left = sims.argmax(axis=1), sims.argmax(axis=0)
    return [SimilarClasses(left[i], right[j], "similar name", round(float(sims[i, j]), 4))
            for i, j in enumerate(best_right) if best_left[j] == i and sims[i, j] >= threshold]


def similar_classes(classes_per_file: Sequence[Sequence[str]],
                    name_vectors: Callable[[list[str]], np.ndarray] | None = None,
                    threshold: float = SIMILAR_NAME_THRESHOLD) -> list[SimilarClasses]:
    """Pairs of class names that may be one class, plural rule first, then similar names.

    ``classes_per_file``: each file's class names; ``name_vectors(names)``: (n, D) unit vectors
    of the names (None: the similar-name rule is skipped). Vectors are asked for only for the
    classes some file lacks, and only when there are two files or more."""
    every = [n for names in classes_per_file for n in names]
    pairs = _plural_pairs(every)
    seen = {frozenset((p.first, p.second)) for p in pairs}
    seen |= {frozenset(g) for g in _case_groups(every)}
    files = [list(dict.fromkeys(names)) for names in classes_per_file]
    if name_vectors is None or len(files) < 2:
        return pairs
    sets = [set(names) for names in files]
    paired = {n for pair in seen for n in pair}  # already reported: not compared again
    alone = [[n for n in names if n not in paired and not all(n in other for other in sets)] for names in files]
    wanted = list(dict.fromkeys(n for names in alone for n in names))
    if not wanted or sum(1 for names in alone if names) < 2:
        return pairs
    matrix = np.asarray(name_vectors(wanted), dtype=np.float64)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    vectors = dict(zip(wanted, matrix))
    for a in range(len(files)):
        for b in range(a + 1, len(files)):
            left = [n for n in alone[a] if n not in sets[b]]
            right = [n for n in alone[b] if n not in sets[a]]
            if left and right:
                for pair in _nearest_pairs(left, right, vectors, threshold):
                    if frozenset((pair.first, pair.second)) not in seen:
                        seen.add(frozenset((pair.first, pair.second)))
                        pairs.append(pair)
    return pairs


def _case_groups(names: Sequence[str]) -> list[tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        groups.setdefault(name.casefold(), []).append(name)
    return [tuple(g[:2]) for g in groups.values() if len(g) > 1]


def rename_classes(groups: dict[str, list[str]], class_map: dict[str, str]) -> dict[str, list[str]]:
    """``groups`` with every class renamed by ``class_map``; classes mapped to one name are joined
    (texts in file order, the joined class where its first member was)."""
    out: dict[str, list[str]] = {}
    for name, items in groups.items():
        out.setdefault(class_map.get(name, name), []).extend(items)
    return out


__all__ = ["SIMILAR_NAME_THRESHOLD", "SimilarClasses", "rename_classes", "similar_classes", "singular_key"]
