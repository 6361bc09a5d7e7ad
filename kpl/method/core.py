"""KPL end to end: retrieval -> text proxies -> pseudo-labels -> vision proxies.

``run_kpl`` composes the steps of docs/ALGORITHM.md into three stages that share the text
logits ``L = X W_t``:

- ``text``:     predictions ``argmax(X W_t)``;
- ``image``:    vision proxies fitted to ``softmax(L / tau_t)``;
- ``image_ot``: vision proxies fitted to an OT plan of L (Greenkhorn by default): KPL's result.

All math runs in float32 torch (CPU by default); results come back as numpy arrays.
``run_kpl_many`` runs several k over one input, sharing the work that does not depend on k.
``k="auto"`` chooses k without labels (kpl.method.auto_k): the result is the chosen k's, with the
choice recorded in ``KPLResult.auto``. ``prior="auto"`` (kpl.method.prior) drops the paper's
equal-class assumption: its ``image_ot`` is a StatA-like stage on the text stage, its means anchored at
the text proxies; ``prior="uniform"`` (the default) is the paper's KPL, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, cast

import numpy as np
import torch

from kbuild.progress import task
from kpl.errors import KplError, UsageError
from kpl.method.auto_k import auto_range, choose_k, is_auto
from kpl.method.decision import decide
from kpl.method.ot import get_ot_method
from kpl.method.prior import anchored_stage, batch_graph, effective_dimensions
from kpl.method.proxies import ProxyFit, ProxyLoop, fit_vision_proxies
from kpl.method.result import MethodResult
from kpl.method.retrieval import check_k, description_scores, prepare_inputs, select_top_k, text_proxies
from kpl.params import KPLParams

# Below this many multiply-adds per (N, D) x (D, C) product, splitting a product across threads
# costs more in fork/join than it saves, and on a busy machine a second thread that waits for a
# core stalls every iteration (measured on a loaded 2-core machine: PH2, 200 x 512 x 2, took
# 0.4 s on one thread and 1.6-9.7 s on two).
SMALL_WORK = 4_000_000
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # one per kpl.params.PRECISIONS



@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` intra-op threads (None: leave torch's setting)."""
    previous = torch.get_num_threads()
    if num_threads is None or num_threads == previous:
        yield
        return
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def pick_threads(num_threads: int | None, n: int, d: int, c: int) -> int | None:
    """An explicit thread count as given; else 1 for small problems, None (torch's setting) otherwise."""
    if num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise UsageError(f"num_threads must be an integer >= 1 (got {num_threads!r})")
        return num_threads
    return 1 if n * d * c < SMALL_WORK else None


# One stage's output is the record every method returns (kpl.method.result): (N,) predictions, (D, C)
# proxies, (N, C) logits centred per image, where its loop stopped, and float32_ties (always counted here).
StageResult = MethodResult


@dataclass
class KPLResult:
    """Everything ``run_kpl`` computes. ``plan`` (N, C) is the OT plan behind ``image_ot`` (prior="auto":
    the anchored stage's soft assignments, kpl.method.prior).

    ``auto`` is None for a fixed k; for ``k="auto"`` it records the rule, the k range compared,
    the chosen k (also ``params.k``) and each k's mean agreement.
    """

    params: KPLParams
    text: StageResult
    image: StageResult
    image_ot: StageResult
    selected: list[np.ndarray]
    plan: np.ndarray
    auto: dict[str, Any] | None = None
    prior: dict[str, Any] | None = None  # prior="auto": the anchored stage's anchor, text trust, class shares
    stages: ClassVar[tuple[str, ...]] = ("text", "image", "image_ot")

    def stage(self, name: str) -> StageResult:
        """The stage called ``name`` (one of ``stages``)."""
        if name not in self.stages:
            raise UsageError(f"Unknown stage {name!r}. Available: {', '.join(self.stages)}")
        return cast(StageResult, getattr(self, name))

    def to_json(self, arrays: bool = False) -> dict[str, Any]:
        """JSON-ready dict; the plan only with ``arrays=True``."""
        out: dict[str, Any] = {
            "params": self.params.to_json(),
            "selected": [s.tolist() for s in self.selected],
            **{name: getattr(self, name).to_json(arrays) for name in self.stages},
        }
        if self.auto is not None:
            out["auto"] = self.auto
        if self.prior is not None:
            out["prior"] = self.prior
        if arrays:
            out["plan"] = self.plan.tolist()
        return out


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _stage(name: str, x: torch.Tensor, proxies: torch.Tensor, fit: ProxyFit | None = None) -> StageResult:
    """A stage's result; predictions from float64 scores of the loop's float64 proxies when there are some."""
    decision = decide(x, fit.exact if fit is not None and fit.exact is not None else proxies)
    iterations, converged = (fit.iterations, fit.converged) if fit is not None else (0, True)
    return StageResult(name=name, predictions=_numpy(decision.predictions), proxies=_numpy(proxies),
                       logits=_numpy(decision.logits), iterations=iterations, converged=converged,
                       float32_ties=decision.float32_ties)


def _fit(x: torch.Tensor, plan: torch.Tensor, init: torch.Tensor, p: KPLParams) -> ProxyFit:
    dtype = DTYPES[p.precision]
    return fit_vision_proxies(x, plan, init, ProxyLoop.of(p, compute_dtype=None if dtype == torch.float32 else dtype))


Stages = tuple[StageResult, StageResult, StageResult, np.ndarray, "dict[str, Any] | None"]
Graph = tuple[np.ndarray, np.ndarray]


def _stages_from_text(x: torch.Tensor, w_text: torch.Tensor, p: KPLParams, *, graph: Graph | None = None,
                      dimensions: float | None = None) -> Stages:
    """(text, image, image_ot, plan, prior record or None) for one set of text proxies.

    ``graph``, ``dimensions``: the batch's kNN graph and effective dimensions for prior="auto" (shared by
    every k), computed here when None.
    """
    logits = x @ w_text
    soft = torch.softmax(logits / p.tau_t, dim=1)
    if p.prior == "auto":
        return _auto_stages(x, w_text, soft=soft, p=p, graph=graph, dimensions=dimensions)
    # OT sums over all N images: in float32 their order (image order, CPU kernels) moved Greenkhorn's
    # plan by up to 2e-3 and flipped predictions; in float64 image order changes it by ~1e-18
    plan = get_ot_method(p.ot)(logits.to(torch.float64), p.tau_t, iters=p.ot_iters, gamma=p.gamma).to(x.dtype)
    image, image_ot = _fit(x, soft, w_text, p), _fit(x, plan, w_text, p)
    return (
        _stage("text", x, w_text),
        _stage("image", x, image.proxies, image),
        _stage("image_ot", x, image_ot.proxies, image_ot),
        _numpy(plan),
        None,
    )


# a top-2 margin of the anchored stage's float32 log-scores within this many units of their rounding
# (2**-24 relative) is a decision float32 cannot make (counted in float32_ties, as kpl.method.decision does)
SCORE_ROUNDING_UNITS = 8


def _auto_stages(x: torch.Tensor, w_text: torch.Tensor, *, soft: torch.Tensor, p: KPLParams,
                 graph: Graph | None, dimensions: float | None = None) -> Stages:
    """prior="auto" (kpl.method.prior): the text stage, the paper's image stage, and as image_ot the
    StatA-like stage anchored at the text proxies, with the batch's class shares as its prior."""
    image = _fit(x, soft, w_text, p)
    anchored = anchored_stage(x, w_text, p.tau_t, graph=graph, dimensions=dimensions)
    scores = anchored.scores
    top2 = torch.topk(scores, 2, dim=1).values if scores.shape[1] > 1 else torch.cat([scores, scores - 1], dim=1)
    rounding = SCORE_ROUNDING_UNITS * 2.0**-24 * top2.abs().sum(dim=1)
    ties = int(((top2[:, 0] - top2[:, 1]) <= rounding).sum())
    final = StageResult(name="image_ot", predictions=_numpy(scores.argmax(dim=1)),
                        proxies=_numpy(anchored.means.T.contiguous()),
                        logits=_numpy(scores - scores.mean(dim=1, keepdim=True)), iterations=assignment_steps(),
                        converged=True, float32_ties=ties)
    return (_stage("text", x, w_text), _stage("image", x, image.proxies, image), final,
            _numpy(anchored.assignments), anchored.record)


def assignment_steps() -> int:
    """How many assignment steps the anchored stage runs (TransCLIP's released schedule)."""
    from kpl.peers.transclip import TransCLIPParams, assignment_updates

    return assignment_updates(TransCLIPParams())


def _check_batch(x: torch.Tensor) -> None:
    """KPL is transductive: its proxies are fitted to the batch, which needs two images at least."""
    if x.shape[0] < 2:
        raise KplError(f"KPL needs a batch of at least 2 images (got {x.shape[0]}): it fits its proxies to the "
                       "batch; classify a single image with the text stage or the dclip baseline, or batch images")


def _params(params: KPLParams | None, overrides: dict[str, Any]) -> KPLParams:
    unknown = set(overrides) - set(KPLParams.__dataclass_fields__)
    if unknown:
        valid = ", ".join(KPLParams.__dataclass_fields__)
        raise UsageError(f"Unknown KPL parameter(s): {', '.join(sorted(unknown))}. Available: {valid}")
    base = asdict(params) if params is not None else {}
    return KPLParams(**{**base, **overrides}).validate()


def _run_with_scores(x: torch.Tensor, classes: list[torch.Tensor], scores: list[torch.Tensor],
                     p: KPLParams, *, graph: Graph | None = None, dimensions: float | None = None) -> KPLResult:
    selected = select_top_k(scores, p.k)
    text, image, image_ot, plan, prior = _stages_from_text(x, text_proxies(classes, selected), p, graph=graph, dimensions=dimensions)
    return KPLResult(params=p, text=text, image=image, image_ot=image_ot, selected=[_numpy(s) for s in selected],
                     plan=plan, prior=prior)


def run_kpl(
    image_features: Any,
    class_embeddings: Sequence[Any],
    *,
    params: KPLParams | None = None,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    auto_ks: Iterable[int] | None = None,
    **overrides: Any,
) -> KPLResult:
    """Run KPL on (N, D) image features and C per-class (M_c, D) description embeddings.

    Hyperparameters come as keywords (``k=8, ot="greenkhorn", tau_t=0.01, ...``, see KPLParams)
    or as ``params``; keywords win. ``k="auto"`` chooses k without labels among ``auto_ks``
    (default 1..min(30, largest class), see kpl.method.auto_k). ``num_threads`` None picks 1 thread for
    small problems and torch's setting otherwise. Inputs are never modified. ``prior="auto"``
    (kpl.method.prior) estimates the batch's class shares without labels instead of assuming them
    equal; what it estimated is in ``KPLResult.prior``. A batch needs at least 2 images.
    """
    auto = is_auto(overrides.get("k"))
    if auto:
        overrides = {key: value for key, value in overrides.items() if key != "k"}
    p = _params(params, overrides)
    with torch.inference_mode():
        x, classes = prepare_inputs(image_features, class_embeddings, device)
        _check_batch(x)
        with torch_threads(pick_threads(num_threads, x.shape[0], x.shape[1], len(classes))):
            if auto:
                candidates = _auto_ks(classes, auto_ks)
                return _auto_from(_run_many(x, classes, candidates, p), candidates)
            return _run_with_scores(x, classes, description_scores(x, classes), p)


def run_kpl_many(
    image_features: Any,
    class_embeddings: Sequence[Any],
    ks: Iterable[int | str],
    *,
    params: KPLParams | None = None,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    auto_ks: Iterable[int] | None = None,
    **overrides: Any,
) -> dict[int | str, KPLResult]:
    """``{k: run_kpl(..., k=k)}`` for every k, sharing input conversion and description scores.

    Values of k that select the same descriptions for every class (e.g. all k >= max M_c)
    share one computation. ``"auto"`` among ``ks`` adds the key "auto" (runs shared with the
    fixed k).
    """
    ks = list(ks)
    auto = any(is_auto(k) for k in ks)
    fixed = [check_k(k) for k in ks if not is_auto(k)]
    base = _params(params, overrides)
    with torch.inference_mode():
        x, classes = prepare_inputs(image_features, class_embeddings, device)
        _check_batch(x)
        with torch_threads(pick_threads(num_threads, x.shape[0], x.shape[1], len(classes))):
            if not auto:
                return {k: r for k, r in _run_many(x, classes, fixed, base).items()}
            candidates = _auto_ks(classes, auto_ks)
            every = _run_many(x, classes, list(dict.fromkeys(fixed + candidates)), base)
            chosen = _auto_from(every, candidates)
            return {("auto" if is_auto(k) else check_k(k)): (chosen if is_auto(k) else every[check_k(k)]) for k in ks}


def _auto_ks(classes: list[torch.Tensor], auto_ks: Iterable[int] | None) -> list[int]:
    return auto_range([int(e.shape[0]) for e in classes], auto_ks)


def _auto_from(results: dict[int, KPLResult], ks: list[int]) -> KPLResult:
    """The result of the k that kpl.method.auto_k chooses among ``ks``, with the choice recorded."""
    chosen, record = choose_k(ks, np.stack([results[k].image_ot.predictions for k in ks]))
    return replace(results[chosen], auto=record)


def _run_many(x: torch.Tensor, classes: list[torch.Tensor], ks: list[int], base: KPLParams) -> dict[int, KPLResult]:
    """The per-k part of run_kpl_many; one computation per distinct selection."""
    results: dict[int, KPLResult] = {}
    by_selection: dict[tuple[tuple[int, ...], ...], KPLResult] = {}
    scores = description_scores(x, classes)
    auto = base.prior == "auto"  # the graph and the effective dimensions depend on the images only: one for every k
    graph, dimensions = (batch_graph(x), effective_dimensions(x)) if auto else (None, None)
    with task("KPL over k", len(ks)) as progress:
        for k in ks:
            p = _params(base, {"k": k})
            key = tuple(tuple(s.tolist()) for s in select_top_k(scores, k))
            if key not in by_selection:
                by_selection[key] = _run_with_scores(x, classes, scores, p, graph=graph, dimensions=dimensions)
            shared = by_selection[key]
            results[k] = replace(shared, params=p, auto=None)
            progress.advance()
    return results


__all__ = ["KPLParams", "KPLResult", "StageResult", "run_kpl", "run_kpl_many", "torch_threads"]
