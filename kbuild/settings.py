"""The one place that reads the environment.

Precedence, everywhere: command-line flag > environment variable > default. The CLI passes a flag's
value (or None) and these functions fill in the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import overload

ENV_STORE = "KBUILD_STORE"
ENV_CHROMA_URL = "KBUILD_CHROMA_URL"
ENV_CHROMA_TOKEN = "KBUILD_CHROMA_TOKEN"
ENV_DEBUG = "KBUILD_DEBUG"
ENV_CLIP_MODEL = "KPL_CLIP_MODEL"
ENV_CLIP_PRETRAINED = "KPL_CLIP_PRETRAINED"
ENV_OPENAI_KEY = "OPENAI_API_KEY"
ENV_OPENAI_BASE_URL = "OPENAI_BASE_URL"

DEFAULT_STORE = "kb_snapshots"
DEFAULT_CLIP_MODEL = "ViT-B-32"  # the paper used ViT-L-14-336 / openai: README "Choosing the CLIP model"
DEFAULT_CLIP_PRETRAINED = "openai"


@overload
def _pick(flag: str | None, env_name: str, default: str) -> str: ...
@overload
def _pick(flag: str | None, env_name: str, default: None) -> str | None: ...
def _pick(flag: str | None, env_name: str, default: str | None) -> str | None:
    if flag not in (None, ""):
        return flag
    value = os.environ.get(env_name)
    return value if value not in (None, "") else default


def store_path(flag: str | None = None) -> Path:
    """Local home of everything kbuild keeps: the embedded Chroma store, caches, the LLM call log."""
    return Path(_pick(flag, ENV_STORE, DEFAULT_STORE)).expanduser()


def chroma_url(flag: str | None = None) -> str | None:
    return _pick(flag, ENV_CHROMA_URL, None)


def chroma_token() -> str | None:
    return _pick(None, ENV_CHROMA_TOKEN, None)


def clip_model(flag: str | None = None) -> str:
    return _pick(flag, ENV_CLIP_MODEL, DEFAULT_CLIP_MODEL)


def clip_override(model_flag: str | None, pretrained_flag: str | None) -> tuple[str, str | None] | None:
    """(model, pretrained) when a flag or the environment names a CLIP model, else None.

    Commands that work on an existing snapshot use the snapshot's own model unless told otherwise.
    """
    model = _pick(model_flag, ENV_CLIP_MODEL, None)
    return (model, clip_pretrained(pretrained_flag)) if model else None


def pretrained_from_environment() -> str | None:
    """KPL_CLIP_PRETRAINED as set (possibly "none"), or None when unset."""
    return os.environ.get(ENV_CLIP_PRETRAINED)


def clip_pretrained(flag: str | None = None) -> str | None:
    # An explicit empty pretrained means "random weights"; only None falls back.
    value = flag if flag is not None else os.environ.get(ENV_CLIP_PRETRAINED, DEFAULT_CLIP_PRETRAINED)
    return None if value.strip().lower() in ("", "none", "random") else value


def debug() -> bool:
    return os.environ.get(ENV_DEBUG, "") not in ("", "0", "false", "no")


def openai_api_key() -> str | None:
    """The key without surrounding whitespace: one read from a file or a secret mount ends in a newline,
    which no HTTP header may carry (the request then failed as "connection failed")."""
    key = _pick(None, ENV_OPENAI_KEY, None)
    return key.strip() if key else key


def secrets() -> list[str]:
    """The credentials set in the environment (API key, Chroma token), to mask in anything shown.

    Values shorter than 8 characters are not credentials anyone could leak by accident, and masking
    them would garble messages."""
    raw = (os.environ.get(ENV_OPENAI_KEY, ""), os.environ.get(ENV_CHROMA_TOKEN, ""))
    values = [*raw, *(v.strip() for v in raw)]  # the key as sent (stripped) and as set
    return [v for v in dict.fromkeys(values) if len(v) >= 8]


def mask_secrets(text: str) -> str:
    """``text`` with every credential set in the environment replaced by ``***``."""
    for secret in secrets():
        text = text.replace(secret, "***")
    return text


def openai_base_url(flag: str | None = None) -> str | None:
    return _pick(flag, ENV_OPENAI_BASE_URL, None)


def quiet_third_parties() -> None:
    """Keep libraries offline and silent: no telemetry, no hub retries that hang for a minute."""
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


ENV_KPL_CACHE = "KPL_CACHE_DIR"


def kpl_feature_cache(flag: str | None = None, store: str | None = None) -> Path:
    """Where ``kpl`` keeps encoded image features: flag > KPL_CACHE_DIR > <store>/cache/features."""
    chosen = _pick(flag, ENV_KPL_CACHE, None)
    return Path(chosen).expanduser() if chosen else store_path(store) / "cache" / "features"


ENV_LLM_MODEL = "KBUILD_LLM_MODEL"
ENV_PROMPTS_DIR = "KBUILD_PROMPTS_DIR"
DEFAULT_LLM_MODEL = "gpt-4o-mini"


def llm_model(flag: str | None = None) -> str:
    """The chat model ``kbuild generate`` asks (not the CLIP model, which is ``--model``)."""
    return _pick(flag, ENV_LLM_MODEL, DEFAULT_LLM_MODEL)


def prompts_dir(flag: str | None = None) -> Path | None:
    """A folder of prompt templates chosen by flag or environment; None means the shipped ``prompts/``."""
    chosen = _pick(flag, ENV_PROMPTS_DIR, None)
    return Path(chosen).expanduser() if chosen else None
