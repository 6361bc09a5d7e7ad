"""The embedding prune stages: near duplicates, cross-class collisions, low margin, max per class.

Each text i of class c has a unit embedding x_i of the description text alone (not templated).

* Near duplicates: rank class c's texts by ``x_i . centroid_c`` (centroid = normalised mean of
  the class's rows), then greedily keep a text unless ``x_i . x_j >= t_dup`` for an already kept
  j, so each group keeps its most central member.
* Cross-class collisions: pairs from different classes whose text is identical or whose
  ``x_i . x_j >= t_cross``. ``drop`` removes every such text; ``best`` links colliding texts into
  groups and keeps a group only in the class of its member with the highest fit to its own class.
* Low margin: ``m_i = fit(i, c) - max_{k != c} fit(i, k)``; the text goes when ``m_i < -min_margin``.
  fit is the cosine to a class reference: its name-prompt embedding, or its centroid, which
  leaves x_i out for the text's own class: ``cos(x_i, S_c - x_i)`` with S_c the sum of the rows.
* Max per class: maximal marginal relevance with relevance ``x_i . centroid_c``.

Stages take items contiguous by class (the canonical order) and an aligned (n, D) matrix, and
return a keep mask (n,) plus the ``Drop`` records of what they removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kbuild.prune.similarity import BLOCK, greedy_suppress, mmr_order, normalise_vector, pairs_above
from kbuild.prune.text import Drop, Item

MMR_RELEVANCE_WEIGHT = 0.5  # equal weight to representativeness and to novelty


def class_spans(items: list[Item]) -> list[tuple[str, int, int]]:
    """(class, start, stop) of each run of one class in the (class-sorted) items."""
    spans: list[tuple[str, int, int]] = []
    for i, item in enumerate(items):
        if spans and spans[-1][0] == item.class_name:
            spans[-1] = (item.class_name, spans[-1][1], i + 1)
        else:
            spans.append((item.class_name, i, i + 1))
    return spans


def _labels(items: list[Item], classes: list[str]) -> np.ndarray:
    index = {name: k for k, name in enumerate(classes)}
    return np.array([index[item.class_name] for item in items], dtype=np.int64)


def _centroid_similarity(xc: np.ndarray) -> np.ndarray:
    """(m,) cosine of each of (m, D) rows to their normalised mean."""
    similarity: np.ndarray = xc @ normalise_vector(xc.sum(axis=0))
    return similarity


# --- near duplicates -------------------------------------------------------------------------

def near_duplicates(items: list[Item], x: np.ndarray, threshold: float) -> tuple[np.ndarray, list[Drop]]:
    """Greedy within-class suppression at ``threshold``, most central texts first."""
    keep = np.ones(len(items), dtype=bool)
    drops: list[Drop] = []
    for _, start, stop in class_spans(items):
        relevance = _centroid_similarity(x[start:stop])
        order = np.lexsort((np.arange(stop - start), -relevance))
        by, sim = greedy_suppress(x[start:stop][order], threshold)
        for pos, local in enumerate(order):
            item = items[start + local]
            item.scores["centroid_similarity"] = float(relevance[local])
            if by[pos] >= 0:
                keeper = items[start + order[by[pos]]]
                drops.append(Drop(item, "near duplicate", float(sim[pos]), keeper.text))
                keep[start + local] = False
    return keep, drops


# --- class fit (shared by cross-class "best" and the margin stage) --------------------------

def class_fit(x: np.ndarray, labels: np.ndarray, n_classes: int, names: np.ndarray | None,
              block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit of each of (n, D) rows to its own class and to the best other class.

    ``names`` (C, D) unit rows selects name references; None selects centroids (own one
    leave-one-out). Returns own (n,), best other (n,) (-inf with one class) and its class (n,).
    """
    if names is not None:
        refs, norms, counts = names, np.ones(n_classes, dtype=np.float32), None
    else:
        refs = _class_sums(x, labels, n_classes)
        norms = np.maximum(np.linalg.norm(refs, axis=1), 1e-12).astype(np.float32)
        counts = np.bincount(labels, minlength=n_classes)
    own, other, other_class = (np.empty(len(x), dtype=np.float32), np.empty(len(x), dtype=np.float32),
                               np.empty(len(x), dtype=np.int64))
    for start in range(0, len(x), block):
        rows, lab = slice(start, start + block), labels[start:start + block]
        g = x[rows] @ refs.T
        own[rows] = _own_fit(g, lab, norms, counts)
        g = g / norms
        g[np.arange(len(lab)), lab] = -np.inf
        other_class[rows] = g.argmax(axis=1)
        other[rows] = g[np.arange(len(lab)), other_class[rows]]
    return own, other, other_class


def _class_sums(x: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) sum of each class's rows of (n, D) x (zero for a class without rows)."""
    if np.any(np.diff(labels) < 0):  # reduceat needs each class's rows together
        order = np.argsort(labels, kind="stable")
        x, labels = x[order], labels[order]
    sums = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    if len(labels):
        present, starts = np.unique(labels, return_index=True)
        sums[present] = np.add.reduceat(x, starts, axis=0)
    return sums


def _own_fit(g: np.ndarray, lab: np.ndarray, norms: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    """Cosine to the own reference; for centroids, to the class sum without the row itself."""
    dot: np.ndarray = g[np.arange(len(lab)), lab]
    if counts is None:
        return dot
    rest = np.sqrt(np.maximum(norms[lab] ** 2 - 2 * dot + 1, 1e-12))
    # A class with one text has no other texts to compare with: its only text fits it fully.
    return np.where(counts[lab] > 1, (dot - 1) / rest, 1.0).astype(np.float32)


# --- cross-class collisions -----------------------------------------------------------------

def cross_class(pool: list[Item], x: np.ndarray, *, alive: np.ndarray, mode: str, threshold: float | None,
                classes: list[str], names: np.ndarray | None) -> tuple[np.ndarray, list[Drop]]:
    """Texts of ``pool`` identical or near-identical (>= threshold) to a text of another class.

    ``pool`` is every text that reached the embedding stages (so a copy already removed as a
    near duplicate still counts as evidence); only rows with ``alive`` (n,) can be removed.
    ``classes`` lists every class of the pool; ``names`` (C, D) rows follow it (or None).
    """
    labels = _labels(pool, classes)
    text_ids = _text_ids(pool)
    exact_other = _exact_partner_class(pool, labels, text_ids)
    best_sim, best_partner, links = _near_partners(x, labels, text_ids, threshold, collect_links=mode == "best")
    found = _Collisions(pool, classes, labels=labels, exact_other=exact_other, best_sim=best_sim, best_partner=best_partner)
    if mode == "drop":
        return _drop_all(found, alive)
    links.extend(_exact_links(text_ids, labels))
    return _keep_best(found, x, alive, links, names)


@dataclass(frozen=True)
class _Collisions:
    """The cross-class evidence for a pool of n texts: each row's class (``labels``), the first
    other class holding its identical text (``exact_other``, -1 for none), and its most similar
    text of another class above the threshold (``best_partner``, -1 for none; ``best_sim``)."""

    pool: list[Item]
    classes: list[str]
    labels: np.ndarray
    exact_other: np.ndarray
    best_sim: np.ndarray
    best_partner: np.ndarray


def _text_ids(items: list[Item]) -> np.ndarray:
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(item.text, len(ids)) for item in items], dtype=np.int64)


def _exact_partner_class(pool: list[Item], labels: np.ndarray, text_ids: np.ndarray) -> np.ndarray:
    """(n,) the first other class (sorted) holding the identical text, or -1."""
    holders: dict[int, list[int]] = {}
    for t, lab in zip(text_ids.tolist(), labels.tolist()):
        holders.setdefault(t, []).append(lab)
    out = np.full(len(pool), -1, dtype=np.int64)
    for i, (t, lab) in enumerate(zip(text_ids.tolist(), labels.tolist())):
        others = [k for k in holders[t] if k != lab]
        if others:
            out[i] = min(others)
    return out


def _exact_links(text_ids: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.lexsort((labels, text_ids))
    same = text_ids[order][1:] == text_ids[order][:-1]
    return [(order[:-1][same], order[1:][same])]


def _near_partners(x: np.ndarray, labels: np.ndarray, text_ids: np.ndarray, threshold: float | None,
                   collect_links: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Per row, the most similar row of another class with a different text (sim >= threshold)."""
    best_sim = np.full(len(x), -np.inf, dtype=np.float32)
    best_partner = np.full(len(x), -1, dtype=np.int64)
    links: list[tuple[np.ndarray, np.ndarray]] = []
    if threshold is None:
        return best_sim, best_partner, links
    for i, j, s in pairs_above(x, threshold):
        keep = (labels[i] != labels[j]) & (text_ids[i] != text_ids[j])
        i, j, s = i[keep], j[keep], s[keep]
        if collect_links:
            links.append((i, j))
        _update_best(best_sim, best_partner, np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([s, s]))
    return best_sim, best_partner, links


def _update_best(best_sim: np.ndarray, best_partner: np.ndarray, a: np.ndarray, b: np.ndarray,
                 s: np.ndarray) -> None:
    """Fold pairs (a -> b with similarity s) into each a's best partner; ties go to the lower b."""
    if a.size == 0:
        return
    order = np.lexsort((b, -s, a))
    a, b, s = a[order], b[order], s[order]
    first = np.r_[True, a[1:] != a[:-1]]
    a, b, s = a[first], b[first], s[first]
    better = (s > best_sim[a]) | ((s == best_sim[a]) & (b < best_partner[a]))
    best_sim[a[better]], best_partner[a[better]] = s[better], b[better]


Collision = tuple[str, float, str, tuple[str, ...]]


def _collision(i: int | np.intp, found: _Collisions, holders: dict[str, list[int]]) -> Collision | None:
    """(reason, score, partner text, other classes) of row i's collision, the identical-text one
    first, or None. An identical text names every other class that holds it."""
    pool, classes, labels = found.pool, found.classes, found.labels
    exact_other, best_sim, best_partner = found.exact_other, found.best_sim, found.best_partner
    if exact_other[i] >= 0:
        others = tuple(classes[k] for k in holders[pool[i].text] if k != labels[i])
        return "identical text in another class", 1.0, pool[i].text, others
    if best_partner[i] >= 0:
        j = best_partner[i]
        return "near-identical text in another class", float(best_sim[i]), pool[j].text, (classes[labels[j]],)
    return None


def _holders(pool: list[Item], labels: np.ndarray) -> dict[str, list[int]]:
    """text -> the sorted class indices holding it."""
    out: dict[str, set[int]] = {}
    for item, lab in zip(pool, labels.tolist()):
        out.setdefault(item.text, set()).add(lab)
    return {text: sorted(ks) for text, ks in out.items()}


def _drop_all(found: _Collisions, alive: np.ndarray) -> tuple[np.ndarray, list[Drop]]:
    pool = found.pool
    keep = alive.copy()
    drops: list[Drop] = []
    holders = _holders(pool, found.labels)
    for i in np.flatnonzero(alive):
        hit = _collision(i, found, holders)
        if hit:
            drops.append(Drop(pool[i], *hit))
            keep[i] = False
    return keep, drops


def _keep_best(found: _Collisions, x: np.ndarray, alive: np.ndarray, links: list[tuple[np.ndarray, np.ndarray]],
               names: np.ndarray | None) -> tuple[np.ndarray, list[Drop]]:
    """Each collision group stays only in the class of its alive member that fits its class best."""
    pool, classes, labels = found.pool, found.classes, found.labels
    group = _components(len(pool), links)
    alive_idx = np.flatnonzero(alive)
    own, _, _ = class_fit(x[alive_idx], labels[alive_idx], len(classes), names)
    fit = np.full(len(pool), -np.inf, dtype=np.float32)
    fit[alive_idx] = own
    winner: dict[int, int] = {}
    for i in alive_idx[np.lexsort((alive_idx, -fit[alive_idx]))]:  # best fit first, then index
        winner.setdefault(group[i], i)
    keep, drops = alive.copy(), []
    holders = _holders(pool, labels)
    for i in alive_idx:
        hit = _collision(i, found, holders)
        w = winner[group[i]]
        if hit is None and labels[w] == labels[i]:
            continue
        if labels[w] == labels[i]:
            pool[i].scores["cross_class_fit"] = float(fit[i])
            continue
        reason, score = hit[:2] if hit else ("linked to a text in another class", None)
        drops.append(Drop(pool[i], f"{reason}; kept only where it fits best", score, pool[w].text,
                          (classes[labels[w]],)))
        keep[i] = False
    return keep, drops


def _components(n: int, links: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(n,) connected-component label of each node (the smallest node index in it)."""
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in links:
        for a, b in zip(i.tolist(), j.tolist()):
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(a) for a in range(n)])


# --- low margin ------------------------------------------------------------------------------

def low_margin(items: list[Item], x: np.ndarray, min_margin: float, names: np.ndarray | None,
               classes: list[str]) -> tuple[np.ndarray, list[Drop]]:
    """Remove texts that fit another class better than their own by more than ``min_margin``."""
    labels = _labels(items, classes)
    own, other, other_class = class_fit(x, labels, len(classes), names)
    margin = own - other
    keep = margin >= -min_margin
    drops = []
    for i, item in enumerate(items):
        if np.isfinite(margin[i]):
            item.scores["margin"] = float(margin[i])
        if not keep[i]:
            drops.append(Drop(item, "closer to another class than to its own", float(margin[i]),
                              None, (classes[other_class[i]],)))
    return keep, drops


# --- max per class ---------------------------------------------------------------------------

def max_per_class(items: list[Item], x: np.ndarray, limit: int) -> tuple[np.ndarray, list[Drop]]:
    """Keep at most ``limit`` texts per class, chosen by maximal marginal relevance."""
    keep = np.ones(len(items), dtype=bool)
    drops: list[Drop] = []
    for _, start, stop in class_spans(items):
        if stop - start <= limit:
            continue
        xc = x[start:stop]
        relevance = _centroid_similarity(xc)
        chosen, scores = mmr_order(xc, relevance, limit, MMR_RELEVANCE_WEIGHT)
        for rank, (local, score) in enumerate(zip(chosen.tolist(), scores.tolist()), start=1):
            items[start + local].scores.update(mmr_rank=float(rank), mmr_score=score)
        left = np.setdiff1d(np.arange(stop - start), chosen)
        similar = xc[left] @ xc[chosen].T
        closest = chosen[similar.argmax(axis=1)] if len(left) else chosen[:0]
        redundancy = similar.max(axis=1) if len(left) else np.zeros(0, dtype=np.float32)
        left_score = MMR_RELEVANCE_WEIGHT * relevance[left] - (1 - MMR_RELEVANCE_WEIGHT) * redundancy
        for local, score, twin in zip(left.tolist(), left_score.tolist(), closest.tolist()):
            # the partner is the chosen text it is most similar to: what covers it in the class
            drops.append(Drop(items[start + local], f"not among the {limit} chosen for coverage and diversity (MMR)",
                              float(score), items[start + twin].text))
            keep[start + local] = False
    return keep, drops


# --- a class's minimum -----------------------------------------------------------------------

# Stages whose removals can be undone to keep a class usable: they remove texts for being shared
# or ambiguous, not for being broken (sanitise, over-long) or redundant within the class (exact,
# near duplicate, which always keep one copy).
RESTORABLE = ("cross_class", "margin")


def restore_minimum(kept: list[Item], drops: dict[str, list[Drop]], minimum: int) -> list[Item]:
    """Put back removed texts into each class that the restorable stages left below ``minimum``.

    A class gets back at most ``minimum - kept`` texts, its most central ones first (cosine to
    its centroid, measured by the near-duplicate stage; canonical order breaks ties), so a text
    shared by many classes is kept in every class that needs it. The chosen drops are taken out
    of ``drops`` and marked on the item. Returns the restored items.
    """
    counts: dict[str, int] = {}
    for item in kept:
        counts[item.class_name] = counts.get(item.class_name, 0) + 1
    candidates: dict[str, list[tuple[str, Drop]]] = {}
    for stage in RESTORABLE:
        for drop in drops.get(stage, []):
            candidates.setdefault(drop.item.class_name, []).append((stage, drop))
    restored: list[Item] = []
    for class_name, pool in sorted(candidates.items()):
        need = minimum - counts.get(class_name, 0)
        if need <= 0:
            continue
        pool.sort(key=lambda sd: (-sd[1].item.scores.get("centroid_similarity", 0.0), sd[1].item.order))
        for stage, drop in pool[:need]:
            drop.item.restored = (f"restored so '{class_name}' keeps {minimum} descriptions "
                                  f"(was {stage}: {drop.reason})")
            restored.append(drop.item)
    back = {id(item) for item in restored}
    for stage in RESTORABLE:
        if stage in drops:
            drops[stage] = [drop for drop in drops[stage] if id(drop.item) not in back]
    return restored
