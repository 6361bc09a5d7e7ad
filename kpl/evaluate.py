"""Evaluation glue: a snapshot and a dataset (or a features file) in, metrics of KPL and the baselines out.

The steps, each a small function usable from a notebook:

1. ``open_session``: resolve the snapshots first (an unknown name fails before any image is read),
   then get image features: a features file, or the dataset encoded through the feature cache.
2. ``prepare_knowledge``: match dataset classes to knowledge-base classes, take each class's
   (M_c, D) description embeddings from the snapshot, or re-embed them (text cache) when the
   snapshot was embedded by another model or template than the features; class-name prompt
   embeddings for ``clip``/``inmap`` come from the features' model when it can be loaded.
3. ``evaluate`` / ``sweep`` / ``compare``: run the methods and compute metrics.

KPL math runs on the CPU in float32 (where its parity with the paper was checked) unless
``--device cuda`` is given explicitly; then on the GPU. The proxy loop's products run in the
precision ``KPLParams.precision`` names: fp32 unless ``--precision fp16|bf16`` asks for half.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from kbuild import __version__
from kbuild.classes_file import parse_class_map
from kbuild.clip.choice import choose_model
from kbuild.clip.text import DEFAULT_TEMPLATE, NAME_TEMPLATE
from kbuild.diff import diff_snapshots
from kbuild.errors import KbuildError
from kbuild.store import KnowledgeBase, SnapshotStore, feature_cache_dir, home_folder
from kbuild.store.bundle import is_bundle, read_bundle
from kbuild.store.manifest import display_name, display_names
from kpl import KPLParams, compute_metrics, run_baseline, run_kpl, run_kpl_many
from kpl.errors import KplError
from kpl.images.datasets import ImageDataset, match_classes
from kpl.images.features import FeatureSet, ImageRequest, Progress, feature_notes, load_or_encode
from kpl.method.decision import RESOLUTION_RULE
from kpl.peers.baselines import BASELINES, PROTOTYPE_METHODS
from kpl.results.bootstrap import confidence_intervals
from kpl.results.environment import environment
from kpl.results.ranking import ranking_metrics

METHODS = tuple(BASELINES)  # the registry's order is the table's
# transclip and stata give two rows each: with class-name prototypes (needs a text model) and with description ones
PROTOTYPE_ROWS = {m: {m: "name_embeddings", f"{m}_desc": "class_embeddings"} for m in PROTOTYPE_METHODS}
NAME_METHODS = ("clip", "inmap", *PROTOTYPE_METHODS)  # methods that need class-name prompt embeddings
KPL_STAGES = ("text", "image", "image_ot")
SWEEP_KEYS = ("tau_t", "tau_i", "alpha", "ot")
_INMAP_KEYS = ("tau_t", "tau_i", "alpha", "lr", "iters", "ot_iters", "gamma", "tol", "patience", "exact_iters")

if TYPE_CHECKING:
    from kpl.images.ray_engine import EngineSpec

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """The request of ``kpl eval``, ``compare``, ``sweep`` and ``embed`` (kpl.cli builds it in one place):
    exactly one of ``data`` (images) and ``features`` (.npz), plus how. ``model``/``pretrained`` are the
    flags as given; ``image_request`` resolves them (flag > environment > snapshot > default)."""

    data: Path | None = None
    features: Path | None = None
    split: str | None = None
    class_map: Path | None = None
    model: str | None = None
    pretrained: str | None = None
    template: str | None = None
    device: str | None = None
    batch_size: int = 64
    workers: int | None = None
    cache_dir: Path | None = None
    use_cache: bool = True
    store: str | None = None
    chroma_url: str | None = None
    precision: str | None = None  # image encoding: auto (fp16 on CUDA), fp32, fp16, bf16
    engine: EngineSpec | None = None  # None: encode in this process


@dataclass
class Session:
    """An open store, the snapshots asked for, the image features, and the image model if loaded."""

    inputs: Inputs
    store: SnapshotStore | None  # None when every --kb is a Parquet bundle
    kbs: list[KnowledgeBase]
    features: FeatureSet
    dataset: ImageDataset | None = None
    clip: Any = None
    notes: list[str] = field(default_factory=list)
    log: Log = _stderr
    graphs: dict = field(default_factory=dict)  # TransCLIP's kNN graph per (method, recall): one per session

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            self.log(message)

    def knn_graph(self, settings):
        """The images' kNN graph for TransCLIP ``settings``, built once and shared by every snapshot
        compared on them (at a million images the graph is the slow part); approximate ones are noted."""
        from kpl.method.retrieval import as_matrix
        from kpl.peers.transclip import graph_for

        key = (settings.knn, settings.knn_recall, settings.neighbours)
        if key not in self.graphs:
            graph = graph_for(as_matrix(self.features.features, "image_features"), settings)
            if graph.info.method != "exact":
                self.note(graph.info.describe())
            self.graphs[key] = graph
        return self.graphs[key]


def image_request(inputs: Inputs, snapshot: dict | None = None) -> ImageRequest:
    """What ``load_or_encode`` needs from ``inputs``, with the image model chosen: --model > KPL_CLIP_MODEL >
    ``snapshot``'s own model (a manifest's ``clip``) > default, so images and descriptions share a space
    unless the user says otherwise."""
    cache_dir = (inputs.cache_dir or feature_cache_dir(inputs.store)) if inputs.use_cache else None
    choice = choose_model(inputs.model, inputs.pretrained, snapshot=snapshot)
    return ImageRequest(data=inputs.data, features=inputs.features, split=inputs.split, model=choice.model,
                        pretrained=choice.pretrained, device=inputs.device, batch_size=inputs.batch_size,
                        workers=inputs.workers, cache_dir=cache_dir, precision=inputs.precision)


def load_image_features(inputs: Inputs, progress: Progress | None = None,
                        check_classes: Callable[[list[str]], None] | None = None, snapshot: dict | None = None):
    """(FeatureSet, ImageDataset or None, image model or None) from ``--features`` or ``--data``
    (the image model as ``image_request`` chooses it)."""
    request = image_request(inputs, snapshot)
    return load_or_encode(request, progress=progress, check_classes=check_classes,
                          encode_elsewhere=_ray_encoder(inputs.engine, request, progress))


def _ray_encoder(engine: EngineSpec | None, request: ImageRequest, progress: Progress | None):
    """The encoder that runs on Ray when ``--engine ray`` asks for it; None: encode in this process."""
    if engine is None or engine.name != "ray":
        return None
    from kpl.images.ray_engine import encode_dataset_ray

    def encode(dataset, clip):
        return encode_dataset_ray(dataset, clip, request, engine, progress)

    return encode


def open_session(inputs: Inputs, kb_refs: list[str], log: Log = _stderr, progress: Progress | None = None) -> Session:
    """Read the snapshots first (a bad name fails before any image is encoded), then the image features.

    Dataset classes are matched to every snapshot's classes before encoding too: a class without
    descriptions is reported at once, not after encoding the whole dataset.
    """
    # A Parquet bundle (kbuild export --format parquet) is read as it is: no store is opened for it.
    store = None if all(is_bundle(ref) for ref in kb_refs) else SnapshotStore.open(inputs.store, inputs.chroma_url)
    kbs = [read_bundle(ref).kb if store is None or is_bundle(ref) else store.read(ref) for ref in kb_refs]
    class_map = parse_class_map(inputs.class_map) if inputs.class_map else None

    def check_classes(class_names: list[str]) -> None:
        for kb in kbs:
            match_classes(class_names, kb.classes(), kb.info.name, class_map)

    features, dataset, clip = load_image_features(inputs, progress, check_classes,
                                                  snapshot=_kb_clip(kbs[0]) if kbs else None)
    session = Session(inputs, store, kbs=kbs, features=features, dataset=dataset, clip=clip, log=log)
    for message in feature_notes(features, dataset):
        session.note(message)
    return session


# ------------------------------------------------------------------ knowledge
@dataclass
class Knowledge:
    """One snapshot lined up with the dataset: ``class_embeddings[c]`` (M_c, D) for dataset class c."""

    kb: KnowledgeBase
    kb_classes: list[str]
    class_embeddings: list[np.ndarray]
    name_embeddings: np.ndarray | None
    template: str | None
    text_source: str
    ignored_classes: list[str]


def _kb_clip(kb: KnowledgeBase) -> dict:
    return kb.info.manifest.get("clip") or {}


def _features_model_id(session: Session, kb: KnowledgeBase) -> str:
    if session.features.model_id:
        return session.features.model_id
    kb_id = _kb_clip(kb).get("model_id", "unknown")
    session.note(f"{session.inputs.features} names no model_id; assuming it was encoded with {kb_id}, "
                 f"the model of {kb.info.name}")
    return kb_id


def _load_matching(session: Session, specs: list[tuple[str, str | None]], model_id: str) -> tuple[Any, list[str]]:
    """The first loadable model among ``specs`` whose id is ``model_id``; else (None, why not).

    Ids are computed before loading, so a model that could not match is never loaded.
    """
    from kbuild.clip.models import ModelSpec, load_clip
    from kbuild.clip.models import model_id as spec_id

    if session.clip is not None and session.clip.model_id == model_id:
        return session.clip, []
    problems = []
    for model, pretrained in dict.fromkeys(specs):
        if spec_id(ModelSpec(model, pretrained)) != model_id:
            problems.append(f"--model {model} is not {model_id}")
            continue
        try:
            clip = load_clip(model, pretrained, session.inputs.device)
        except KbuildError as err:
            problems.append(str(err))
            continue
        if clip.model_id == model_id:
            return clip, problems
    return None, problems


def _specs(session: Session, kb: KnowledgeBase) -> list[tuple[str, str | None]]:
    """Candidate text models: the snapshot's own, then the evaluation's --model/--pretrained."""
    clip, flags = _kb_clip(kb), session.inputs
    own = [(clip["model"], clip.get("pretrained"))] if clip.get("model") else []
    choice = choose_model(flags.model, flags.pretrained)
    return own + [(choice.model, choice.pretrained)]


def _embedder(session: Session, clip):
    from kbuild.clip.text import TextEmbedder, cache_path

    return TextEmbedder(clip, cache_path(session.store.home if session.store else home_folder(session.inputs.store)))


def _description_embeddings(session: Session, kb: KnowledgeBase, kb_classes: list[str], model_id: str,
                            template: str) -> tuple[list[np.ndarray], str]:
    """Stored (M_c, D) embeddings when model and template agree, else re-embedded (and said so)."""
    kb_clip = _kb_clip(kb)
    kb_template = kb_clip.get("template")
    if kb_clip.get("imported"):
        return _imported_embeddings(session, kb, kb_classes, model_id)
    if kb_clip.get("model_id") == model_id and template == kb_template:
        return kb.class_embeddings(kb_classes), f"stored ({model_id})"
    clip, problems = _load_matching(session, _specs(session, kb), model_id)
    if clip is None:
        raise KplError(f"{kb.info.name} was embedded with {kb_clip.get('model_id')} but the image features "
                          f"come from {model_id}; pass --model/--pretrained for {model_id} to re-embed its "
                          f"descriptions ({'; '.join(dict.fromkeys(problems))})")
    rows = kb.rows_by_class()
    embedder = _embedder(session, clip)
    displays = display_names(kb.info.manifest)
    embeddings = [embedder.embed_descriptions([kb.descriptions[i] for i in rows[c]], template, displays)
                  for c in kb_classes]
    session.note(f"{kb.info.name} was embedded with {kb_clip.get('model_id')} (template {kb_template!r}); "
                 f"re-embedded its descriptions with {model_id} (template {template!r}; text cache "
                 f"{embedder.cache.hits} hits, {embedder.cache.misses} encoded)")
    return embeddings, f"re-embedded ({model_id})"


def _imported_embeddings(session: Session, kb: KnowledgeBase, kb_classes: list[str],
                         model_id: str) -> tuple[list[np.ndarray], str]:
    """A snapshot that brought its own vectors: usable only in its own space, and never re-embedded."""
    space = _kb_clip(kb).get("model_id")
    if space != model_id:
        raise KplError(f"{kb.info.name} holds imported embeddings in space {space!r} but the image features are "
                       f"in {model_id!r}: use features from the same model (their model_id must be {space!r})")
    if session.inputs.template:
        session.note(f"--template ignored: {kb.info.name} holds imported embeddings, which cannot be re-templated")
    return kb.class_embeddings(kb_classes), f"stored, imported ({model_id})"


def _name_embeddings(session: Session, kb: KnowledgeBase, kb_classes: list[str], model_id: str) -> np.ndarray | None:
    given = session.features.name_embeddings
    if given is not None:  # rows follow the features' class_names, which kb_classes is lined up with
        session.note(f"class-name embeddings for clip, inmap, transclip and stata: name_embeddings of {session.inputs.features}")
        return given
    if _kb_clip(kb).get("imported") and not _kb_clip(kb).get("model"):
        session.note(f"skipping clip, inmap, transclip and stata (class names): {kb.info.name} holds imported embeddings and the features file "
                     "has no name_embeddings (add name_embeddings (C, D), one row per class_names entry)")
        return None
    clip, problems = _load_matching(session, _specs(session, kb), model_id)
    if clip is None:
        session.note(f"skipping clip, inmap, transclip and stata (class names): no text model for {model_id} could be loaded "
                     f"({problems[0] if problems else 'no candidate'})")
        return None
    # "a photo of a melanoma.", not "a photo of a mel.": the manifest's display names, if any
    shown = [display_name(kb.info.manifest, c) for c in kb_classes]
    return _embedder(session, clip).embed_class_names(shown, NAME_TEMPLATE)


def prepare_knowledge(session: Session, kb: KnowledgeBase, need_names: bool = True) -> Knowledge:
    """Line ``kb`` up with the session's dataset classes and image-feature space."""
    features = session.features
    class_map = parse_class_map(session.inputs.class_map) if session.inputs.class_map else None
    kb_classes = match_classes(features.class_names, kb.classes(), kb.info.name, class_map)
    ignored = [c for c in kb.classes() if c not in set(kb_classes)]
    if ignored:
        session.note(f"{kb.info.name}: {len(ignored)} knowledge-base class(es) not in the dataset, ignored: "
                     f"{', '.join(ignored[:10])}{' ...' if len(ignored) > 10 else ''}")
    model_id = _features_model_id(session, kb)
    template = session.inputs.template or _kb_clip(kb).get("template") or DEFAULT_TEMPLATE
    if _kb_clip(kb).get("imported"):
        template = None  # imported vectors: whatever text the other pipeline embedded
    embeddings, source = _description_embeddings(session, kb, kb_classes, model_id, template)
    dims = {e.shape[1] for e in embeddings}
    if dims != {features.dim}:
        raise KplError(f"The image features have dim {features.dim} but {kb.info.name}'s description "
                          f"embeddings have dim {', '.join(map(str, sorted(dims)))}: they come from different "
                          "models (pass the features' --model, or features encoded with the snapshot's model)")
    names = _name_embeddings(session, kb, kb_classes, model_id) if need_names else None
    return Knowledge(kb, kb_classes, class_embeddings=embeddings, name_embeddings=names, template=template,
                     text_source=source, ignored_classes=ignored)


# ------------------------------------------------------------------ running the methods
@dataclass
class MethodRun:
    """One table row: (N,) predictions, their metrics, and what it took."""

    name: str
    predictions: np.ndarray
    metrics: Any
    seconds: float
    iterations: int = 0
    converged: bool = True
    params: dict = field(default_factory=dict)
    scores: np.ndarray | None = None
    ranking: dict = field(default_factory=dict)
    ci: dict = field(default_factory=dict)  # bootstrap 95 % intervals (kpl.results.bootstrap)
    float32_ties: int | None = None  # predictions float32 scores cannot decide (kpl.method.decision)

    def to_json(self) -> dict[str, Any]:
        m = self.metrics.to_json()
        m["per_class_recall"] = dict(zip(m.pop("class_names"), m["per_class_recall"]))
        ties = {} if self.float32_ties is None else {"float32_ties": self.float32_ties}
        return {**m, **self.ranking, "ci95": self.ci, "iterations": self.iterations, "converged": self.converged, **ties,
                "seconds": round(self.seconds, 4), "params": self.params}


def _metrics(features: FeatureSet, predictions: np.ndarray):
    return compute_metrics(features.labels, predictions, class_names=features.class_names)


def _row(features: FeatureSet, name: str, *, predictions, scores, seconds, iterations, converged, params) -> MethodRun:
    """A table row with its metrics, including AUROC from the method's (N, C) scores, and bootstrap
    95 % intervals of top-1, balanced accuracy and AUROC."""
    return MethodRun(name, predictions, metrics=_metrics(features, predictions), seconds=seconds, iterations=iterations,
                     converged=converged, params=params, scores=scores,
                     ranking=ranking_metrics(features.labels, scores, features.class_names),
                     ci=confidence_intervals(features.labels, predictions, scores))


def float32_resolution(runs: dict[str, MethodRun]) -> dict[str, Any]:
    """metrics.json's record of the predictions float32 cannot decide: the rule and a count per row."""
    return {"rule": RESOLUTION_RULE, "scores": "float64",
            "undecided_in_float32": {name: r.float32_ties for name, r in runs.items() if r.float32_ties is not None}}


def note_float32_ties(session: Session, runs: dict[str, MethodRun]) -> None:
    """One note (console and metrics.json) per row with predictions that float32 scores cannot decide."""
    for name, r in runs.items():
        if r.float32_ties:
            session.note(f"{name}: {r.float32_ties} of {len(r.predictions)} predictions are within float32 "
                         f"resolution of their scores (top-2 margin at rounding level); decided here from float64 "
                         f"scores, float32 scores (as in the paper's code) can flip them. See float32_resolution "
                         f"in metrics.json")


def math_device(session: Session) -> str:
    """Where KPL and the baselines run: the GPU only when asked for by name (--device cuda[:N])."""
    device = session.inputs.device or "cpu"
    return device if device.startswith("cuda") else "cpu"


def run_methods(features: FeatureSet, knowledge: Knowledge, params: KPLParams, methods: tuple[str, ...], *,
                auto_k: bool = False, device: str = "cpu", transclip: Any = None, graph: Callable | None = None):
    """({row name: MethodRun}, {skipped method: why}, the KPL result or None).

    ``auto_k``: KPL chooses k without labels (kpl.method.auto_k); its rows carry the chosen k.
    ``transclip``: TransCLIPParams for transclip and stata (default: the authors', kNN graph "auto");
    ``graph(settings)``: where the kNN graph comes from (default: built here).
    """
    runs: dict[str, MethodRun] = {}
    skipped: dict[str, str] = {}
    kpl_result = None
    x = features.features
    inmap = {key: getattr(params, key) for key in _INMAP_KEYS}
    for method in methods:
        start = time.perf_counter()
        if method == "kpl":
            # --prior auto shows both: the paper's rows (kpl.*) and the label-free prior's (kpl_auto.*)
            priors = ("uniform", "auto") if params.prior == "auto" else (params.prior,)
            for prior in priors:
                start = time.perf_counter()
                result = _run_kpl(x, knowledge, replace(params, prior=prior), device, auto_k)
                runs.update(_kpl_rows(features, result, "kpl_auto" if prior == "auto" else "kpl",
                                      (time.perf_counter() - start) / len(KPL_STAGES)))
                kpl_result = result if kpl_result is None else kpl_result
            continue
        if method in PROTOTYPE_ROWS:
            from kpl.method.retrieval import as_matrix
            from kpl.peers.transclip import TransCLIPParams, graph_for

            settings = (transclip or TransCLIPParams()).validate()  # stata: the same graph and settings
            shared = (graph(settings) if graph is not None
                      else graph_for(as_matrix(x, "image_features"), settings))  # shared by both rows
            rows = PROTOTYPE_ROWS[method]
            graph_share = (time.perf_counter() - start) / len(rows)  # each row is charged half
            for row, source in rows.items():
                given = getattr(knowledge, source)
                if given is None:
                    skipped[row] = "no text model to embed class-name prompts"
                    continue
                start = time.perf_counter()
                r = run_baseline(method, x, **{source: given}, graph=shared, **settings.to_json())
                runs[row] = _row(features, row, predictions=r.predictions, scores=r.logits,
                                 seconds=time.perf_counter() - start + graph_share, iterations=r.iterations,
                                 converged=r.converged, params=r.params)
            continue
        if method in ("clip", "inmap") and knowledge.name_embeddings is None:
            skipped[method] = "no text model to embed class-name prompts"
            continue
        extra = inmap if method == "inmap" else {}
        r = run_baseline(method, x, class_embeddings=knowledge.class_embeddings,
                         name_embeddings=knowledge.name_embeddings, device=device, **extra)
        runs[method] = replace(_row(features, method, predictions=r.predictions, scores=r.logits,
                                    seconds=time.perf_counter() - start, iterations=r.iterations, converged=r.converged,
                                    params=r.params), float32_ties=r.float32_ties)
    return runs, skipped, kpl_result


def _run_kpl(x, knowledge: Knowledge, params: KPLParams, device: str, auto_k: bool):
    if auto_k:
        return run_kpl(x, knowledge.class_embeddings, params=params, device=device, k="auto")
    return run_kpl(x, knowledge.class_embeddings, params=params, device=device)


def note_prior_graphs(session: Session, runs: dict[str, MethodRun]) -> None:
    """prior="auto" runs on the batch's kNN graph: an approximate one is noted, as TransCLIP's is."""
    from kpl.peers.knn import GraphInfo

    for run in runs.values():
        graph = (run.params.get("prior_record") or {}).get("graph")
        if graph and graph.get("method") != "exact":
            session.note(f"kpl_auto: {GraphInfo.from_json(graph).describe()}")  # one note for all of its stages: notes are unique


def _kpl_rows(features: FeatureSet, result, prefix: str, share: float) -> dict[str, MethodRun]:
    """One row per KPL stage, ``prefix.stage``; an auto prior's record (anchor, text trust, class shares) in its params."""
    used = result.params.to_json()
    if result.prior is not None:
        used["prior_record"] = result.prior
    rows = {}
    for stage in KPL_STAGES:
        s = result.stage(stage)
        rows[f"{prefix}.{stage}"] = replace(_row(features, f"{prefix}.{stage}", predictions=s.predictions,
                                                 scores=s.logits, seconds=share, iterations=s.iterations,
                                                 converged=s.converged, params=used), float32_ties=s.float32_ties)
    return rows


def _selected_texts(knowledge: Knowledge, kpl_result) -> dict[str, list[str]]:
    if kpl_result is None:
        return {}
    rows = knowledge.kb.rows_by_class()
    return {c: [knowledge.kb.descriptions[rows[c][int(i)]].text for i in idx]
            for c, idx in zip(knowledge.kb_classes, kpl_result.selected)}


@dataclass
class EvalResult:
    """Everything ``kpl eval`` reports; ``to_json`` is ``metrics.json`` and ``--json``."""

    session: Session
    knowledge: Knowledge
    params: KPLParams
    methods: tuple[str, ...]
    runs: dict[str, MethodRun]
    skipped: dict[str, str]
    selected: dict[str, list[str]]
    created: str = ""
    k_auto: dict | None = None

    def to_json(self) -> dict[str, Any]:
        kb, fs = self.knowledge.kb, self.session.features
        short = {c: self.knowledge.kb_classes[i] for i, c in enumerate(fs.class_names)}
        return {
            "tool": "kpl eval", "version": __version__, "created": self.created,
            "snapshot": {"name": kb.info.name, "content_hash": kb.info.content_hash, "clip": _kb_clip(kb),
                         "descriptions": len(kb.descriptions)},
            "model": {"image_features": fs.model_id, "descriptions": self.knowledge.text_source,
                      "template": self.knowledge.template, "name_template": NAME_TEMPLATE},
            "dataset": (self.session.dataset.describe() if self.session.dataset
                        else {**fs.source, "classes": fs.class_names}),
            "features": fs.describe(),
            "skipped_files": {**(self.session.dataset.describe()["skipped"] if self.session.dataset else {}),
                              "corrupt": len(fs.corrupt)},
            "classes": {"names": fs.class_names, "kb_classes": short, "ignored_kb_classes": self.knowledge.ignored_classes,
                        "display_names": {c: display_name(kb.info.manifest, k) for c, k in short.items()},
                        "class_map": str(self.session.inputs.class_map) if self.session.inputs.class_map else None},
            "params": {**self.params.to_json(), "k_mode": "auto" if self.k_auto else "fixed",
                       "methods": list(self.methods), "device": math_device(self.session)},
            "k_auto": self.k_auto,
            "results": {name: run.to_json() for name, run in self.runs.items()},
            "float32_resolution": float32_resolution(self.runs),
            "skipped_methods": self.skipped,
            "selected_descriptions": self.selected,
            "notes": list(self.session.notes),
            "environment": environment(math_device(self.session)),
        }


def evaluate(session: Session, params: KPLParams, methods: tuple[str, ...] = METHODS, kb_index: int = 0,
             auto_k: bool = False, transclip: Any = None) -> EvalResult:
    """Run ``methods`` on the session's features with snapshot ``kb_index``; metrics per row.

    ``auto_k``: KPL picks k without labels; ``params.k`` of the result is the chosen k and
    ``k_auto`` the record of the choice. ``transclip``: TransCLIPParams (kNN graph method, recall).
    """
    params = params.validate()
    need_names = any(m in NAME_METHODS for m in methods)
    knowledge = prepare_knowledge(session, session.kbs[kb_index], need_names)
    short = {c: len(e) for c, e in zip(knowledge.kb_classes, knowledge.class_embeddings) if len(e) < params.k}
    if short and "kpl" in methods and not auto_k:
        session.note(f"k={params.k} exceeds the descriptions of {len(short)} class(es), which use all of theirs: "
                     + ", ".join(f"{c} ({n})" for c, n in list(short.items())[:5]))
    runs, skipped, kpl_result = run_methods(session.features, knowledge, params=params, methods=methods, auto_k=auto_k,
                                            device=math_device(session), transclip=transclip, graph=session.knn_graph)
    if kpl_result is not None:  # the chosen k; the prior asked for (auto runs both)
        params = replace(kpl_result.params, prior=params.prior)
    note_float32_ties(session, runs)
    note_prior_graphs(session, runs)
    return EvalResult(session, knowledge, params=params, methods=methods, runs=runs, skipped=skipped,
                      selected=_selected_texts(knowledge, kpl_result),
                      created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      k_auto=kpl_result.auto if kpl_result is not None else None)


# ------------------------------------------------------------------ sweep and compare

@dataclass
class SweepResult:
    """One row per setting: accuracy and balanced accuracy of each KPL stage, macro-F1 of image_ot.

    A row of k "auto" carries the k it chose in ``chosen_k``.
    """

    snapshot: dict[str, Any]
    grid: dict[str, Any]
    rows: list[dict[str, Any]]
    features: dict[str, Any]
    notes: list[str]
    chance: float | None = None  # balanced accuracy of guessing: 1 / (classes in the labels)

    def to_json(self) -> dict[str, Any]:
        return {"tool": "kpl sweep", "version": __version__, "snapshot": self.snapshot, "grid": self.grid,
                "features": self.features, "rows": self.rows, "notes": self.notes,
                "chance_balanced_accuracy": self.chance}


def sweep(session: Session, base: KPLParams, ks: list[int | str], grid: dict[str, list]) -> SweepResult:
    """KPL for every k in ``ks`` (ints, or "auto") times every combination of the ``grid`` values."""
    knowledge = prepare_knowledge(session, session.kbs[0], need_names=False)
    fs, rows = session.features, []
    keys = [key for key in SWEEP_KEYS if grid.get(key)]
    for combo in itertools.product(*(grid[key] for key in keys)):
        params = replace(base, **dict(zip(keys, combo))).validate()
        start = time.perf_counter()
        results = run_kpl_many(fs.features, knowledge.class_embeddings, ks, params=params, device=math_device(session))
        seconds = (time.perf_counter() - start) / len(ks)
        for k, result in results.items():
            row = {"k": k, **{key: getattr(params, key) for key in SWEEP_KEYS}, "prior": params.prior}
            if result.auto is not None:
                row["chosen_k"] = result.auto["chosen_k"]
            for stage in KPL_STAGES:
                m = _metrics(fs, result.stage(stage).predictions)
                row[f"{stage}_accuracy"], row[f"{stage}_balanced_accuracy"] = m.accuracy, m.balanced_accuracy
            final = _metrics(fs, result.image_ot.predictions)
            row.update(image_ot_macro_f1=final.macro_f1, seconds=round(seconds, 4))
            rows.append(row)
    kb = knowledge.kb
    return SweepResult({"name": kb.info.name, "content_hash": kb.info.content_hash},
                       {"k": list(ks), **{key: grid[key] for key in keys}, "base": base.to_json()}, rows=rows,
                       features=fs.describe(), notes=list(session.notes),
                       chance=1.0 / max(len(np.unique(fs.labels)), 1))


@dataclass
class CompareResult:
    """Several snapshots on the same features: one EvalResult each, and the diff of neighbours."""

    results: list[EvalResult]
    diffs: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"tool": "kpl compare", "version": __version__,
                "snapshots": [r.to_json() for r in self.results], "diffs": self.diffs, "deltas": self.deltas()}

    def deltas(self) -> dict[str, dict[str, dict[str, float | None]]]:
        """``{snapshot: {method: {metric: value - first snapshot's}}}`` for every snapshot after the first,
        for top-1, balanced accuracy and AUROC (binary, else macro one-vs-rest); None where either lacks it."""
        first, out = self.results[0], {}
        for result in self.results[1:]:
            rows = {}
            for method, run in result.runs.items():
                base = first.runs.get(method)
                rows[method] = {key: _difference(get(base), get(run)) if base is not None else None
                                for key, get in _COMPARED.items()}
            out[result.knowledge.kb.info.name] = rows
        return out


def _auroc_of(run: MethodRun) -> float | None:
    value = run.ranking.get("auroc")
    return value if value is not None else run.ranking.get("macro_auroc_ovr")


_COMPARED = {"accuracy": lambda run: run.metrics.accuracy,
             "balanced_accuracy": lambda run: run.metrics.balanced_accuracy, "auroc": _auroc_of}


def _difference(old: float | None, new: float | None) -> float | None:
    return None if old is None or new is None else float(new - old)


def compare(session: Session, params: KPLParams, methods: tuple[str, ...] = METHODS,
            auto_k: bool = False, transclip: Any = None) -> CompareResult:
    """``evaluate`` each of the session's snapshots; diff each against the one before it."""
    results = [evaluate(session, params, methods=methods, kb_index=i, auto_k=auto_k, transclip=transclip)
               for i in range(len(session.kbs))]
    diffs = []
    for old, new in zip(session.kbs, session.kbs[1:]):
        d = diff_snapshots(old, new)
        diffs.append({"old": old.info.name, "new": new.info.name, "summary": d.summary(), "counts": d.counts()})
    return CompareResult(results, diffs)
