"""Short names for the medical CLIP models people use, and where their weights are (no torch import).

``--model biomedclip`` is the same as ``--model hf-hub:microsoft/BiomedCLIP-...``: a name resolves
to the full model spec before anything else, so manifests, model ids and caches name the real
model, never the alias. ``kpl models`` lists this dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

from kbuild.errors import KbuildError

# The --model prefixes, defined once (kbuild.clip.choice.parse_model_name reads them).
LOCAL_DIR = "local-dir:"
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


def open_clip_weights(model: str, pretrained: str | None) -> tuple[str, tuple[str, ...]] | None:
    """(hub repo, the files any one of which holds the weights) for an open_clip name + pretrained tag
    (``ViT-B-32`` / ``openai``), or None: a checkpoint file, random weights, or a tag open_clip does
    not fetch from the hub. Reads open_clip's table of pretrained tags; downloads nothing."""
    if not pretrained or model.startswith((HF_HUB, TRANSFORMERS, LOCAL_DIR)) or Path(pretrained).expanduser().is_file():
        return None
    try:
        from open_clip.pretrained import get_pretrained_cfg
    except ImportError:
        return None
    hub = get_pretrained_cfg(model, pretrained).get("hf_hub", "")
    if not hub:
        return None
    repo_id, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    # open_clip first looks for a safetensors twin of the file, as in its _get_safe_alternatives
    twin = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else \
        (filename[:-4] + ".safetensors" if filename.endswith((".bin", ".pth")) else None)
    return repo_id, tuple(name for name in (twin, filename) if name)


def hub_cache_dir() -> str:
    """The Hugging Face hub cache folder in use (HF_HUB_CACHE / HF_HOME / the default)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")


def is_cached(repo_id: str, files: tuple[str, ...]) -> bool | None:
    """Whether one of ``files`` of ``repo_id`` is in the local hub cache (None: cannot tell)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # huggingface_hub comes with open_clip; without it we cannot tell
        return None
    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in files)


def check_cached(model: str, alias: str | None = None, pretrained: str | None = None) -> None:
    """When the hub cannot be reached, a model whose weights are not in the local cache fails at
    once (well under 5 s), in one line that names the cache and the way out.

    Online, loading downloads as usual; offline, without this check the libraries would report a
    long chain of retries (about a minute) or a confusing 'cannot find the requested files'.
    Covers hub models (``hf-hub:``, ``transformers:``) and open_clip pretrained tags (``openai``,
    ``laion2b_...``), which open_clip also fetches from the hub.
    """
    repo = hub_repo(model)
    tagged = None if repo else open_clip_weights(model, pretrained)
    files: tuple[str, ...]
    if repo is not None:
        repo_id, files = repo[0], (repo[1],)
    elif tagged is not None:
        repo_id, files = tagged
    else:
        return
    if is_cached(repo_id, files) is not False:
        return
    if offline():
        why = "HF_HUB_OFFLINE is set"
    else:
        endpoint = _unreachable_endpoint()
        if endpoint is None:
            return  # online: the library downloads it
        why = f"{endpoint} cannot be reached"
    if tagged:
        raise KbuildError(
            f"The weights of {model} / {pretrained} are not in the Hugging Face cache ({hub_cache_dir()}) and "
            f"{why}: pre-download them where there is network with 'huggingface-cli download {repo_id}' "
            "(same HF_HOME), or pass the weights yourself: --pretrained FILE or --model local-dir:DIR")
    name = f"{alias} ({model})" if alias else model
    raise KbuildError(
        f"The weights of {name} are not in the Hugging Face cache ({hub_cache_dir()}) and {why}: pre-download "
        f"them where there is network with 'huggingface-cli download {repo_id}' (same HF_HOME), "
        "or pass a local folder (transformers:DIR or local-dir:DIR)")


def _unreachable_endpoint(timeout: float = 3.0) -> str | None:
    """The hub endpoint if a TCP connection to it fails within ``timeout`` seconds, else None.

    Without this, a machine with no network spends ~30 s in the hub client's retries
    (1 + 2 + 4 + 8 + 16 s) before the same failure.
    """
    import contextlib
    import socket
    import threading
    from urllib.parse import urlsplit

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None  # through a proxy a direct connection says nothing; let the library try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    reached: list[bool] = []
    done = threading.Event()

    def connect() -> None:
        with contextlib.suppress(OSError), socket.create_connection((parts.hostname or "", port), timeout=timeout):
            reached.append(True)
        done.set()

    # In a thread: the name lookup before the connection is not bound by ``timeout`` and can hang.
    threading.Thread(target=connect, daemon=True).start()
    done.wait(timeout)
    return None if reached else endpoint


# General CLIP models (open_clip name + pretrained tag) listed by ``models`` with their cache state,
# and the hub repo open_clip fetches each from (kept here so listing them imports no torch;
# a test checks them against open_clip's own table).
GENERAL: dict[str, dict[str, str]] = {
    "ViT-B-32/openai": {"repo": "timm/vit_base_patch32_clip_224.openai",
                        "domain": "general (the default: ~0.6 GB, fast on a CPU laptop)"},
    "ViT-B-16/openai": {"repo": "timm/vit_base_patch16_clip_224.openai", "domain": "general"},
    "ViT-L-14/openai": {"repo": "timm/vit_large_patch14_clip_224.openai", "domain": "general"},
    "ViT-L-14-336/openai": {"repo": "timm/vit_large_patch14_clip_336.openai",
                            "domain": "general (the KPL paper's model: ~1.7 GB, for a GPU)"},
}
class ModelRow(TypedDict):
    """One line of ``kbuild models`` / ``kpl models`` (and their --json)."""

    name: str
    model: str
    library: str
    domain: str
    cached: bool | None  # None: cannot tell (no huggingface_hub, or not a hub model)
    source: str


_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_OPENAI_SOURCE = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"


def general_rows() -> list[ModelRow]:
    """One row per general open_clip model in ``GENERAL``: use as --model NAME --pretrained TAG."""
    rows: list[ModelRow] = []
    for key, entry in GENERAL.items():
        name, tag = key.split("/")
        rows.append({"name": name, "model": f"{name} --pretrained {tag}", "library": "open_clip",
                     "domain": entry["domain"], "cached": is_cached(entry["repo"], _OPEN_CLIP_FILES),
                     "source": f"{_OPENAI_SOURCE}; https://huggingface.co/{entry['repo']}"})
    return rows


def registry_rows() -> list[ModelRow]:
    """One row per registry name, for ``kpl models`` (and its --json)."""
    rows: list[ModelRow] = []
    for name, entry in MODELS.items():
        kind = "transformers" if entry["model"].startswith(TRANSFORMERS) else "open_clip"
        repo = hub_repo(entry["model"])
        cached = None if repo is None else is_cached(repo[0], (repo[1],))
        rows.append({"name": name, "model": entry["model"], "library": kind, "domain": entry["domain"],
                     "cached": cached, "source": entry["source"]})
    return rows
