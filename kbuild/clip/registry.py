"""Short names for the medical CLIP models people use, and where their weights are (no torch import).

``--model biomedclip`` is the same as ``--model hf-hub:microsoft/BiomedCLIP-...``: a name resolves
to the full model spec before anything else, so manifests, model ids and caches name the real
model, never the alias. ``kpl models`` lists this dict.
"""

from __future__ import annotations

import os
from pathlib import Path

from kbuild.errors import KbuildError

HF_HUB = "hf-hub:"
TRANSFORMERS = "transformers:"

# name -> model spec (open_clip hf-hub: or transformers:), what it is for, and the paper/card it comes from.
MODELS: dict[str, dict[str, str]] = {
    "biomedclip": {
        "model": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        "domain": "biomedical (PMC-15M figures)",
        "source": "Zhang et al., BiomedCLIP, arXiv:2303.00915; "
                  "https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    },
    "monet": {
        "model": "transformers:chanwkim/monet",
        "domain": "dermatology",
        "source": "Kim et al., Transparent medical image AI via an image-text foundation model grounded in "
                  "medical literature, Nature Medicine 2024; https://huggingface.co/chanwkim/monet "
                  "(also served as suinleelab/monet)",
    },
    "plip": {
        "model": "transformers:vinid/plip",
        "domain": "pathology",
        "source": "Huang et al., A visual-language foundation model for pathology image analysis using "
                  "medical Twitter, Nature Medicine 2023; https://huggingface.co/vinid/plip",
    },
    "pubmedclip": {
        "model": "transformers:flaviagiammarino/pubmed-clip-vit-base-patch32",
        "domain": "radiology (ROCO)",
        "source": "Eslami et al., PubMedCLIP: How Much Does CLIP Benefit Visual Question Answering in the "
                  "Medical Domain?, Findings of EACL 2023; "
                  "https://huggingface.co/flaviagiammarino/pubmed-clip-vit-base-patch32",
    },
    "whylesionclip": {
        "model": "hf-hub:yyupenn/whylesionclip",
        "domain": "dermatology (skin lesions)",
        "source": "Yang et al., A Textbook Remedy for Domain Shifts: Knowledge Priors for Medical Image "
                  "Analysis, NeurIPS 2024, arXiv:2405.14839; https://huggingface.co/yyupenn/whylesionclip",
    },
    "whyxrayclip": {
        "model": "hf-hub:yyupenn/whyxrayclip",
        "domain": "chest X-ray",
        "source": "Yang et al., A Textbook Remedy for Domain Shifts: Knowledge Priors for Medical Image "
                  "Analysis, NeurIPS 2024, arXiv:2405.14839; https://huggingface.co/yyupenn/whyxrayclip",
    },
    "quiltnet": {
        "model": "hf-hub:wisdomik/QuiltNet-B-32",
        "domain": "histopathology",
        "source": "Ikezogwo et al., Quilt-1M: One Million Image-Text Pairs for Histopathology, NeurIPS 2023 "
                  "Datasets and Benchmarks, arXiv:2306.11207; https://huggingface.co/wisdomik/QuiltNet-B-32",
    },
}


def resolve(model: str) -> str:
    """The full model spec for a registry name; anything else unchanged."""
    entry = MODELS.get(model.strip().lower()) if model else None
    return entry["model"] if entry else model


def hub_repo(model: str) -> tuple[str, str] | None:
    """(repo id, a file every such repo has) for a hub-hosted spec, or None for a folder or an open_clip name."""
    if model.startswith(HF_HUB):
        return model[len(HF_HUB):], "open_clip_config.json"
    if model.startswith(TRANSFORMERS):
        target = model[len(TRANSFORMERS):]
        if Path(target).expanduser().exists() or target.startswith((".", "/", "~")):
            return None
        return target, "config.json"
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_cached(model: str, alias: str | None = None) -> None:
    """When offline, a hub model whose files are not in the local cache fails at once, with the fix.

    Online, loading downloads as usual; offline, without this check the libraries would report a
    long chain of retries or a confusing 'cannot find the requested files'.
    """
    repo = hub_repo(model)
    if repo is None:
        return
    from huggingface_hub import try_to_load_from_cache

    repo_id, marker = repo
    if isinstance(try_to_load_from_cache(repo_id, marker), str):
        return
    if offline():
        why = "HF_HUB_OFFLINE is set"
    else:
        endpoint = _unreachable_endpoint()
        if endpoint is None:
            return  # online: the library downloads it
        why = f"{endpoint} cannot be reached"
    name = f"{alias} ({model})" if alias else model
    raise KbuildError(
        f"The weights of {name} are not in the Hugging Face cache and {why}: pre-download them "
        f"where there is network with 'huggingface-cli download {repo_id}' (same HF_HOME), "
        "or pass a local folder (transformers:DIR or local-dir:DIR)")


def _unreachable_endpoint(timeout: float = 3.0) -> str | None:
    """The hub endpoint if a TCP connection to it fails within ``timeout`` seconds, else None.

    Without this, a machine with no network spends ~30 s in the hub client's retries
    (1 + 2 + 4 + 8 + 16 s) before the same failure.
    """
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None  # through a proxy a direct connection says nothing; let the library try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return None
    except OSError:
        return endpoint


def registry_rows() -> list[dict[str, str | bool | None]]:
    """One row per registry name, for ``kpl models`` (and its --json)."""
    rows = []
    for name, entry in MODELS.items():
        kind = "transformers" if entry["model"].startswith(TRANSFORMERS) else "open_clip"
        repo = hub_repo(entry["model"])
        cached = None
        if repo is not None:
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = isinstance(try_to_load_from_cache(*repo), str)
            except ImportError:  # huggingface_hub comes with open_clip; without it we cannot tell
                cached = None
        rows.append({"name": name, "model": entry["model"], "library": kind, "domain": entry["domain"],
                     "cached": cached, "source": entry["source"]})
    return rows
