"""Zero-shot baselines reported next to KPL, each a linear classifier over image features X (N, D).

- ``clip``:  class-name prompt embeddings T (C, D) as proxies: logits ``X T^T``.
- ``dclip``: per class, the mean of the description scores, ``mean_j X E_c[j]`` (Menon & Vondrick).
- ``cupl``:  per class, the renormalised mean of all description embeddings as proxy (Pratt et al.).
- ``inmap``: class-name proxies, balanced Sinkhorn pseudo-labels, then vision proxies (Qian et al.).
- ``kpl``:   the ``image_ot`` stage of :func:`kpl.method.core.run_kpl`.
- ``transclip``: TransCLIP-ZS (Zanella et al., NeurIPS 2024, :mod:`kpl.peers.transclip`), transductive;
  its prototypes are the class-name prompts T when ``name_embeddings`` is given, else the
  renormalised mean of each class's description embeddings. Its "logits" are the log-scores of
  the final soft assignments (their softmax is the assignment).
- ``stata``: StatA (Zanella et al., CVPR 2025, :mod:`kpl.peers.stata`): TransCLIP with each class mean
  pulled toward its prototype, so a class absent from the batch cannot capture images; same inputs.

``run_baseline(name, X, class_embeddings=..., name_embeddings=..., **params)`` dispatches through
the ``BASELINES`` registry and returns a :class:`BaselineResult`.
"""

from __future__ import annotations

from typing import Any, Callable, overload

import numpy as np
import torch
import torch.nn.functional as F

from kpl.errors import UsageError
from kpl.method.core import KPLParams, pick_threads, run_kpl, torch_threads
from kpl.method.decision import decide
from kpl.method.ot import sinkhorn
from kpl.method.proxies import ProxyLoop, fit_vision_proxies
from kpl.method.result import MethodResult
from kpl.method.retrieval import as_matrix, prepare_inputs

# A baseline's row is the same record as a KPL stage's (kpl.method.result); the name stays for readers.
BaselineResult = MethodResult


@overload
def _numpy(t: torch.Tensor) -> np.ndarray: ...


@overload
def _numpy(t: None) -> None: ...


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy()


def _result(name: str, logits: torch.Tensor, proxies: torch.Tensor | None, params: dict[str, Any] | None = None,
            iterations: int = 0, converged: bool = True) -> BaselineResult:
    return BaselineResult(name=name, predictions=_numpy(logits.argmax(dim=1)), proxies=_numpy(proxies),
                          logits=_numpy(logits), iterations=iterations, converged=converged, params=params or {})


def _no_params(name: str, params: dict) -> None:
    if params:
        raise UsageError(f"Baseline '{name}' takes no parameters (got {', '.join(sorted(params))})")


def _need(name: str, what: str, value) -> None:
    if value is None:
        shapes = {"class_embeddings": "a list of C (M_c, D) arrays", "name_embeddings": "a (C, D) array"}
        raise UsageError(f"Baseline '{name}' needs {what} ({shapes[what]})")


def _names(image_features, name_embeddings, device):
    x = as_matrix(image_features, "image_features", device)
    t = as_matrix(name_embeddings, "name_embeddings", device)
    if t.shape[1] != x.shape[1]:
        raise UsageError(
            f"name_embeddings has dim {t.shape[1]} but image_features has dim {x.shape[1]}; "
            "encode both with the same CLIP model"
        )
    return x, t


def clip_baseline(image_features, class_embeddings=None, name_embeddings=None, device="cpu", **params):
    """Zero-shot CLIP: proxies are the (C, D) class-name prompt embeddings, transposed."""
    _need("clip", "name_embeddings", name_embeddings)
    _no_params("clip", params)
    x, t = _names(image_features, name_embeddings, device)
    return _result("clip", x @ t.T, t.T)


def dclip_baseline(image_features, class_embeddings=None, name_embeddings=None, device="cpu", **params):
    """DCLIP: logit of class c is the mean over its descriptions of the image-description cosine.

    Reported proxies are the unnormalised description means, the equivalent linear classifier.
    """
    _need("dclip", "class_embeddings", class_embeddings)
    _no_params("dclip", params)
    x, classes = prepare_inputs(image_features, class_embeddings, device)
    logits = torch.stack([(x @ e.T).mean(dim=1) for e in classes], dim=1)
    return _result("dclip", logits, torch.stack([e.mean(dim=0) for e in classes], dim=1))


def cupl_baseline(image_features, class_embeddings=None, name_embeddings=None, device="cpu", **params):
    """CuPL: proxy of class c is the renormalised mean of all its description embeddings."""
    _need("cupl", "class_embeddings", class_embeddings)
    _no_params("cupl", params)
    x, classes = prepare_inputs(image_features, class_embeddings, device)
    proxies = torch.stack([F.normalize(e.mean(dim=0), dim=0) for e in classes], dim=1)
    return _result("cupl", x @ proxies, proxies)


_INMAP_KEYS = ("tau_t", "tau_i", "alpha", "lr", "iters", "ot_iters", "gamma", "tol", "patience", "exact_iters")


def inmap_baseline(image_features, class_embeddings=None, name_embeddings=None, device="cpu", **params):
    """InMaP: class-name proxies, balanced Sinkhorn plan (rows sum to 1), then vision proxies."""
    _need("inmap", "name_embeddings", name_embeddings)
    unknown = set(params) - set(_INMAP_KEYS)
    if unknown:
        raise UsageError(f"Unknown inmap parameter(s): {', '.join(sorted(unknown))}. Available: {', '.join(_INMAP_KEYS)}")
    p = KPLParams(ot="sinkhorn", **params).validate()
    x, t = _names(image_features, name_embeddings, device)
    init = t.T.contiguous()
    plan = sinkhorn(x @ init, p.tau_t, iters=p.ot_iters, gamma=p.gamma)
    fit = fit_vision_proxies(x, plan, init, ProxyLoop.of(p))
    used = {key: getattr(p, key) for key in _INMAP_KEYS}
    decision = decide(x, fit.exact)  # float64 scores of the loop's float64 proxies, as KPL's stages
    return BaselineResult(name="inmap", predictions=_numpy(decision.predictions), proxies=_numpy(fit.proxies),
                          logits=_numpy(decision.logits), iterations=fit.iterations, converged=fit.converged,
                          float32_ties=decision.float32_ties, params=used)


def kpl_baseline(
    image_features, class_embeddings=None, name_embeddings=None, device="cpu", num_threads=None, **params
):
    """KPL's final stage (``image_ot``) as a baseline row; params are run_kpl's keywords."""
    _need("kpl", "class_embeddings", class_embeddings)
    result = run_kpl(image_features, class_embeddings, device=device, num_threads=num_threads, **params)
    stage = result.image_ot
    return BaselineResult(name="kpl", predictions=stage.predictions, proxies=stage.proxies, logits=stage.logits,
                          iterations=stage.iterations, converged=stage.converged, float32_ties=stage.float32_ties,
                          params=result.params.to_json())


def _transductive(name: str, image_features, class_embeddings, name_embeddings, device, params: dict):
    """TransCLIP or StatA with class-name prototypes (name_embeddings) or description-mean ones (class_embeddings).

    ``graph``: a precomputed ``kpl.peers.knn.knn_graph(X, neighbours)`` to share between runs on the same images.
    """
    from kpl.peers.stata import StatAParams, stata
    from kpl.peers.transclip import TransCLIPParams, assignment_updates, graph_for, transclip

    # StatAParams extends TransCLIPParams; each method takes its own settings type (hence the ``...``)
    methods: dict[str, tuple[type[TransCLIPParams], Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]]
    methods = {"transclip": (TransCLIPParams, transclip), "stata": (StatAParams, stata)}
    settings_type, method = methods[name]
    graph = params.pop("graph", None)
    if name_embeddings is None and class_embeddings is None:
        raise UsageError(f"Baseline '{name}' needs name_embeddings (a (C, D) array) "
                         "or class_embeddings (a list of C (M_c, D) arrays)")
    fields = settings_type.__dataclass_fields__
    unknown = set(params) - set(fields)
    if unknown:
        raise UsageError(f"Unknown {name} parameter(s): {', '.join(sorted(unknown))}. Available: {', '.join(fields)}")
    settings = settings_type(**params).validate()
    if name_embeddings is not None:
        x, t = _names(image_features, name_embeddings, device)
        source = "class names"
    else:
        x, classes = prepare_inputs(image_features, class_embeddings, device)
        t = torch.stack([F.normalize(e.mean(dim=0), dim=0) for e in classes])
        source = "descriptions"
    if graph is None:
        graph = graph_for(x, settings)
    _, scores, _ = method(x, t, settings, graph=graph)
    used = {**settings.to_json(), "prototypes": source}
    info = getattr(graph, "info", None)  # a plain (indices, weights) pair carries no record
    if info is not None:
        used["graph"] = info.to_json()
    return _result(name, scores, None, used, assignment_updates(settings))


def transclip_baseline(image_features, class_embeddings=None, name_embeddings=None, device="cpu", **params):
    """TransCLIP-ZS as its authors run it (kpl.peers.transclip); prototypes from names or descriptions."""
    return _transductive("transclip", image_features, class_embeddings=class_embeddings,
                         name_embeddings=name_embeddings, device=device, params=params)


def stata_baseline(image_features, class_embeddings=None, name_embeddings=None, device="cpu", **params):
    """StatA (kpl.peers.stata): TransCLIP with each class mean anchored to its prototype; names or descriptions."""
    return _transductive("stata", image_features, class_embeddings=class_embeddings, name_embeddings=name_embeddings,
                         device=device, params=params)


# The one registry of methods: `kpl eval`'s rows, --methods and run_methods follow this order.
BASELINES = {
    "clip": clip_baseline,
    "dclip": dclip_baseline,
    "cupl": cupl_baseline,
    "inmap": inmap_baseline,
    "transclip": transclip_baseline,
    "stata": stata_baseline,
    "kpl": kpl_baseline,
}
# methods that give two rows in `kpl eval`: NAME from class-name prototypes, NAME_desc from descriptions
PROTOTYPE_METHODS = ("transclip", "stata")


def run_baseline(
    name: str,
    image_features,
    class_embeddings=None,
    name_embeddings=None,
    *,
    device="cpu",
    num_threads: int | None = None,
    **params,
) -> BaselineResult:
    """Run the baseline registered as ``name`` on (N, D) image features.

    ``class_embeddings``: list of C (M_c, D) description embeddings (dclip, cupl, kpl);
    ``name_embeddings``: (C, D) class-name prompt embeddings (clip, inmap); transclip and stata take either
    (names win when both are given). ``num_threads`` as in
    :func:`kpl.run_kpl`. Hyperparameters (inmap, kpl) come as keywords.
    """
    if name not in BASELINES:
        raise UsageError(f"Unknown baseline {name!r}. Available: {', '.join(sorted(BASELINES))}")
    if name == "kpl":  # run_kpl picks its own threads
        return kpl_baseline(image_features, class_embeddings, name_embeddings, device, num_threads=num_threads, **params)
    n, d = np.shape(image_features)[:2] if np.ndim(image_features) == 2 else (0, 0)
    given = name_embeddings if name_embeddings is not None else class_embeddings
    c = len(given) if given is not None else 0
    with torch.inference_mode(), torch_threads(pick_threads(num_threads, n, d, c)):
        return BASELINES[name](image_features, class_embeddings, name_embeddings, device, **params)
