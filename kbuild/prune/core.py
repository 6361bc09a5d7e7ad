"""``kbuild prune`` as a pure function: descriptions + text embeddings in, kept + removed out.

KPL picks each class's top-k descriptions by similarity to the images, so generic text that fits
every class wins everywhere and pulls the class proxies together, and duplicates waste k slots.
The stages run in this order, each reported separately: sanitise, overlong, exact,
near_duplicate, cross_class, margin, max_per_class (the math is in ``prune_stages``).

Similarity is measured on whatever rows the caller passes: ``kbuild prune`` passes the
snapshot's stored (templated) vectors, or an ``embed`` callable on the bare texts
(``--similarity-model``). Everything runs in one canonical order (class, normalised text, ...), so
the result does not depend on the order the descriptions were stored in.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from string import Formatter
from typing import Any, Callable

import numpy as np

from kbuild.descriptions import DEFAULT_TEMPLATE, Description, RemovedRecord
from kbuild.errors import KbuildError, UsageError
from kbuild.progress import Task, task
from kbuild.prune.similarity import unit_rows
from kbuild.prune.stages import cross_class, low_margin, max_per_class, near_duplicates, restore_minimum
from kbuild.prune.text import FIX_TRUNCATED, Drop, Item, canonical_items, exact_duplicates, overlong, sanitise

STAGES = ("sanitise", "overlong", "exact", "near_duplicate", "cross_class", "margin", "max_per_class")
Embedder = Callable[[list[str]], np.ndarray]
_SCORE_DIGITS = 6
# The near-duplicate cosine depends on what is compared. Stored vectors embed the templated text
# ("a photo of a melanoma, which has ..."), whose shared prefix lifts every pair of a class: on real
# CLIP ViT-B/16 sentences (the shared PH2 knowledge base) distinct concepts reach 0.95-0.97 there and
# paraphrases 0.97-0.985. Bare texts (--similarity-model) keep the classic 0.95.
DEDUP_THRESHOLD_STORED = 0.975
DEDUP_THRESHOLD_BARE = 0.95


def default_dedup_threshold(stored_vectors: bool) -> float:
    """The near-duplicate threshold for the space prune compares in (see above)."""
    return DEDUP_THRESHOLD_STORED if stored_vectors else DEDUP_THRESHOLD_BARE


@dataclass
class PruneParams:
    """Every stage's switch and threshold; ``None`` turns a threshold-driven stage off.

    ``min_chars`` is 3, not 5: curated bases hold real 3-4 letter descriptors ("red", "fur",
    "eggs" in DCLIP, "dark" in LaBo's own selection); punctuation-only fragments go regardless.
    ``min_margin`` is off by default: CLIP text-text cosines crowd into a narrow band whose width
    depends on the model, so no one margin is right for every model, and for fine-grained classes
    (melanoma vs nevus) a valid description can sit closer to the neighbour's name.

    ``min_per_class``: a class that the cross-class or margin stage would leave with fewer texts
    than this gets its most central removed texts back (a shared text is then kept in every class
    that needs it): a class without descriptions cannot be classified, and short-descriptor bases
    (DCLIP: "a black bill" in dozens of birds) lose whole classes to ``cross_class=drop``.
    ``allow_empty`` turns that off; starved classes are reported either way.
    """

    min_chars: int = 3
    max_tokens: int = 77
    overlong: str = "truncate"
    dedup_threshold: float | None = 0.95
    cross_class: str = "drop"
    cross_class_threshold: float | None = 0.98
    min_margin: float | None = None
    margin_reference: str = "name"
    max_per_class: int | None = None
    min_per_class: int = 3
    allow_empty: bool = False

    def validate(self) -> "PruneParams":
        """Raise UsageError (one line, naming the flag) for any value out of range; return self."""
        _check_count("min_chars", self.min_chars, 0)
        _check_count("max_tokens", self.max_tokens, 1)
        _check_choice("overlong", self.overlong, ("truncate", "drop"))
        _check_choice("cross_class", self.cross_class, ("drop", "best", "off"))
        _check_choice("margin_reference", self.margin_reference, ("name", "centroid"))
        for name in ("dedup_threshold", "cross_class_threshold", "min_margin"):
            _check_similarity(name, getattr(self, name))
        if self.max_per_class is not None:
            _check_count("max_per_class", self.max_per_class, 1)
        _check_count("min_per_class", self.min_per_class, 0)
        if self.max_per_class is not None and self.min_per_class > self.max_per_class:
            raise UsageError(f"--min-per-class ({self.min_per_class}) must not exceed --max-per-class "
                             f"({self.max_per_class})")
        return self

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def needs_references(self) -> bool:
        """Whether a stage compares texts with class references (names or centroids)."""
        return self.min_margin is not None or self.cross_class == "best"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{_flag(name)} must be a whole number >= {low} (got {value!r})")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{_flag(name)} must be one of {', '.join(choices)} (got {value!r})")


def _check_similarity(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
        raise UsageError(f"{_flag(name)} must be a cosine similarity between -1 and 1 (got {value!r})")


class Removal(RemovedRecord):
    """One removed description (as it was given), the stage and reason, its score, and what it
    collided with: the kept text it duplicates, or the other class(es) and their text. It is the
    store's removed record, so a child snapshot keeps it as is, with the same JSON."""


@dataclass
class ClassReport:
    """Counts for one class: before, kept, removed by stage, and repairs that removed nothing."""

    before: int = 0
    kept: int = 0
    removed: dict[str, int] = field(default_factory=lambda: {stage: 0 for stage in STAGES})
    fixed: dict[str, int] = field(default_factory=dict)
    restored: int = 0  # removed texts put back to keep the class at its minimum

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TABLE_COLUMNS = ("class", "before", *STAGES, "fixed", "restored", "kept")


@dataclass
class PruneResult:
    """What prune kept (new Description objects, with ``extra["prune"]`` scores) and removed."""

    kept: list[Description]
    removed: list[Removal]
    params: PruneParams
    per_class: dict[str, ClassReport]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage; not in JSON

    def totals(self) -> ClassReport:
        total = ClassReport()
        for report in self.per_class.values():
            total.before += report.before
            total.kept += report.kept
            total.restored += report.restored
            for stage, n in report.removed.items():
                total.removed[stage] += n
            for reason, n in report.fixed.items():
                total.fixed[reason] = total.fixed.get(reason, 0) + n
        return total

    def removed_by(self, stage: str) -> list[Removal]:
        return [r for r in self.removed if r.stage == stage]

    def starved_classes(self) -> dict[str, int]:
        """class -> kept, for classes prune left below ``min_per_class`` (never below what they
        started with: a class given 2 texts is not starved by keeping both)."""
        floor = max(self.params.min_per_class, 1)
        return {name: r.kept for name, r in self.per_class.items() if r.kept < min(floor, r.before)}

    def emptied_classes(self) -> list[str]:
        return [name for name, r in self.per_class.items() if r.before and not r.kept]

    def to_json(self) -> dict[str, Any]:
        return {"params": self.params.to_json(), "stages": list(STAGES), "skipped": self.skipped,
                "notes": self.notes, "totals": self.totals().to_json(),
                "emptied_classes": self.emptied_classes(), "starved_classes": self.starved_classes(),
                "per_class": {name: report.to_json() for name, report in self.per_class.items()},
                "removed": [r.to_json() for r in self.removed]}

    def table_rows(self) -> list[list[Any]]:
        """One row per class in ``TABLE_COLUMNS`` order, then a ``total`` row."""
        reports = [*self.per_class.items(), ("total", self.totals())]
        return [[name, r.before, *(r.removed[s] for s in STAGES), sum(r.fixed.values()), r.restored, r.kept]
                for name, r in reports]


def prune_descriptions(descriptions: list[Description], text_embeddings: np.ndarray | Embedder,
                       params: PruneParams | None = None, *,
                       name_embeddings: dict[str, np.ndarray] | None = None,
                       token_count: Callable[[str], int] | None = None,
                       template: str = DEFAULT_TEMPLATE,
                       display_names: dict[str, str] | None = None) -> PruneResult:
    """Run every enabled stage over ``descriptions`` and report what each one removed.

    ``text_embeddings`` is either (M, D) rows aligned with ``descriptions``, each embedding the
    description's text alone, or ``embed(texts) -> (len(texts), D)``, called once on the
    sanitised texts. ``name_embeddings`` maps class -> (D,) name-prompt embedding (needed with
    ``margin_reference="name"`` when the margin stage or ``cross_class="best"`` runs).
    ``token_count(prompt)`` counts CLIP tokens including start/end; without it the over-long
    stage is skipped. ``template`` has two ``{}``: class name, then description; the class name
    filled in is its ``display_names`` entry when it has one (what CLIP will see).
    """
    params = (params or PruneParams()).validate()
    _check_template(template)
    if params.needs_references() and params.margin_reference == "name" and name_embeddings is None:
        raise UsageError("--margin-reference name needs class-name embeddings; pass them, "
                         "or use --margin-reference centroid")
    with task("pruning (stages)", len(STAGES)) as progress:
        run = _Run(params, progress)
        return _prune(descriptions, text_embeddings, params=params, name_embeddings=name_embeddings,
                      token_count=token_count, template=template, run=run, display_names=display_names)


def _prune(descriptions: list[Description], text_embeddings: np.ndarray | Embedder, *, params: PruneParams,
           name_embeddings: dict[str, np.ndarray] | None, token_count: Callable[[str], int] | None, template: str,
           run: _Run, display_names: dict[str, str] | None) -> PruneResult:
    items = canonical_items(descriptions)
    items = run.text_stage("sanitise", sanitise, items, params.min_chars)
    if token_count is None:
        run.skipped["overlong"] = "no token counter given"
    else:
        items = run.text_stage("overlong", overlong, items, token_count=token_count, template=template,
                               max_tokens=params.max_tokens, mode=params.overlong, display_names=display_names)
    items = run.text_stage("exact", exact_duplicates, items)
    if items:
        x = _embed(items, text_embeddings, len(descriptions), run)
        items = _vector_stages(items, x, params, name_embeddings, run)
    if not params.allow_empty and params.min_per_class > 0:
        restored = restore_minimum(items, run.drops, params.min_per_class)
        items = sorted(items + restored, key=lambda item: item.order)
    return run.result(descriptions, items)


def _check_template(template: str) -> None:
    try:
        fields = [name for _, name, _, _ in Formatter().parse(template) if name is not None]
        template.format("class", "description")
    except (IndexError, KeyError, ValueError):
        fields = []
    if len(fields) != 2:
        raise UsageError(f"template {template!r} must have two {{}} fields: class name, then description")


def _vector_stages(items: list[Item], x: np.ndarray, params: PruneParams,
                   name_embeddings: dict[str, np.ndarray] | None, run: "_Run") -> list[Item]:
    classes = sorted({item.class_name for item in items})
    names = _name_matrix(classes, name_embeddings, x.shape[1], params)
    pool, pool_x = items, x
    alive = np.ones(len(pool), dtype=bool)
    if params.dedup_threshold is None:
        run.skipped["near_duplicate"] = "dedup_threshold is None"
    else:
        alive = run.vector_stage("near_duplicate", near_duplicates, pool, pool_x, params.dedup_threshold)
    if params.cross_class == "off":
        run.skipped["cross_class"] = "cross_class is off"
    else:
        alive = run.vector_stage("cross_class", cross_class, pool, pool_x, alive=alive, mode=params.cross_class,
                                 threshold=params.cross_class_threshold, classes=classes, names=names)
    items = [pool[i] for i in np.flatnonzero(alive)]
    if (params.min_margin is not None or params.max_per_class is not None) and items:
        x = pool_x[alive]  # a compact copy only when a later stage needs the rows
    else:
        x = pool_x[:0]  # no later stage reads the rows: an empty view, no copy
    if params.min_margin is None:
        run.skipped["margin"] = "min_margin is None"
    elif items:
        keep = run.vector_stage("margin", low_margin, items, x, min_margin=params.min_margin, names=names,
                                classes=classes)
        items, x = [items[i] for i in np.flatnonzero(keep)], x[keep]
    if params.max_per_class is None:
        run.skipped["max_per_class"] = "max_per_class is None"
    elif items:
        keep = run.vector_stage("max_per_class", max_per_class, items, x, params.max_per_class)
        items = [items[i] for i in np.flatnonzero(keep)]
    return items


def _embed(items: list[Item], source: np.ndarray | Embedder, n_descriptions: int, run: "_Run") -> np.ndarray:
    """(len(items), D) unit rows for the items, from cached rows or the embed callable."""
    started = time.perf_counter()
    if callable(source):
        texts = sorted({item.text for item in items})
        rows = _checked_matrix(source(texts), len(texts), "embed(texts)")
        index = {text: i for i, text in enumerate(texts)}
        x = rows[[index[item.text] for item in items]]
    else:
        rows = np.asarray(source)
        if rows.ndim != 2 or rows.shape[0] != n_descriptions:
            raise KbuildError(f"text_embeddings has shape {rows.shape}, expected ({n_descriptions}, D): "
                              "one row per description, in the same order")
        x = _checked_matrix(rows[[item.row for item in items]], len(items), "text_embeddings")
        truncated = sum(FIX_TRUNCATED in item.fixes for item in items)
        if truncated:
            run.notes.append(f"{truncated} truncated texts keep the embedding of their full text "
                             "(pass an embed callable to re-embed them)")
    run.seconds["embed"] = time.perf_counter() - started
    return unit_rows(x, inplace=True)  # x is already a fresh gathered copy: spare a second one


def _checked_matrix(value: Any, n_rows: int, what: str) -> np.ndarray:
    """(n_rows, D) float32 rows, all finite and non-zero, or a one-line KbuildError."""
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] != n_rows:
        raise KbuildError(f"{what} has shape {array.shape}, expected ({n_rows}, D): one row per text")
    bad = ~np.isfinite(array).all(axis=1) | ~array.any(axis=1)
    if bad.any():
        raise KbuildError(f"{what}: {int(bad.sum())} rows are zero or not finite; re-embed those texts")
    return array


def _name_matrix(classes: list[str], names: dict[str, np.ndarray] | None, dim: int,
                 params: PruneParams) -> np.ndarray | None:
    """(C, D) unit name embeddings in ``classes`` order, when a stage needs them, else None."""
    if not params.needs_references() or params.margin_reference != "name":
        return None
    assert names is not None  # prune_descriptions refuses a name reference without name embeddings
    missing = [c for c in classes if c not in names]
    if missing:
        raise KbuildError(f"no name embedding for {len(missing)} classes (first: {missing[0]!r}); "
                          "embed every class name")
    matrix = _checked_matrix(np.stack([np.asarray(names[c], dtype=np.float32).reshape(-1) for c in classes]),
                             len(classes), "name_embeddings")
    if matrix.shape[1] != dim:
        raise KbuildError(f"name embeddings have dimension {matrix.shape[1]}, text embeddings {dim}; "
                          "use the same CLIP model for both")
    return unit_rows(matrix)


class _Run:
    """Bookkeeping for one prune: removals by stage, skipped stages, notes, timings."""

    def __init__(self, params: PruneParams, progress: Task | None = None) -> None:
        self.params = params
        self.progress = progress
        self.drops: dict[str, list[Drop]] = {stage: [] for stage in STAGES}
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self.seconds: dict[str, float] = {}
        self.all_items: list[Item] = []

    def text_stage(self, stage: str, fn: Callable[..., tuple[list[Item], list[Drop]]], items: list[Item],
                   *args: Any, **options: Any) -> list[Item]:
        if stage == "sanitise":
            self.all_items = items
        started = time.perf_counter()
        kept, drops = fn(items, *args, **options)
        self.seconds[stage] = time.perf_counter() - started
        self.drops[stage] = drops
        self._advance()
        return kept

    def vector_stage(self, stage: str, fn: Callable[..., tuple[np.ndarray, list[Drop]]], items: list[Item],
                     x: np.ndarray, *args: Any, **options: Any) -> np.ndarray:
        started = time.perf_counter()
        keep, drops = fn(items, x, *args, **options)
        self.seconds[stage] = time.perf_counter() - started
        self.drops[stage] = drops
        self._advance()
        return keep

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.advance()

    def result(self, descriptions: list[Description], kept_items: list[Item]) -> PruneResult:
        if self.progress is not None:  # skipped stages count as done
            self.progress.advance(len(STAGES) - self.progress.done)
        per_class = {name: ClassReport() for name in sorted({d.class_name for d in descriptions})}
        for d in descriptions:
            per_class[d.class_name].before += 1
        for item in self.all_items:
            for fix in item.fixes:
                fixed = per_class[item.class_name].fixed
                fixed[fix] = fixed.get(fix, 0) + 1
        removed = []
        for stage in STAGES:
            for drop in sorted(self.drops[stage], key=lambda d: d.item.order):
                per_class[drop.item.class_name].removed[stage] += 1
                removed.append(Removal(drop.item.original, stage, reason=drop.reason, score=_round(drop.score),
                                       related=drop.related, related_classes=list(drop.related_classes)))
        for item in kept_items:
            per_class[item.class_name].kept += 1
            per_class[item.class_name].restored += item.restored is not None
        kept = [_kept_description(item) for item in kept_items]
        return PruneResult(kept, removed, params=self.params, per_class=per_class, skipped=self.skipped,
                           notes=self.notes, seconds=self.seconds)


def _round(score: float | None) -> float | None:
    return None if score is None else round(float(score), _SCORE_DIGITS)


def _kept_description(item: Item) -> Description:
    """A copy of the original with the repaired text and ``extra["prune"]`` scores and fixes."""
    record: dict[str, Any] = {name: _round(value) for name, value in sorted(item.scores.items())}
    if item.fixes:
        record["fixes"] = list(item.fixes)
    if item.restored:
        record["restored"] = item.restored
    if FIX_TRUNCATED in item.fixes:
        record["original_text"] = item.original.text
    extra = {**item.original.extra, "prune": record}
    return dataclasses.replace(item.original, text=item.text, extra=extra)
