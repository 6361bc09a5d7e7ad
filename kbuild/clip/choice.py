"""Which CLIP model a command uses, decided in one place (no torch import).

Two questions, each answered once for kbuild and kpl alike:

- ``parse_model_name``: what kind of name is ``--model``? A prefix picks the library that loads it
  (``local-dir:`` an open_clip folder, ``hf-hub:`` an open_clip hub repo, ``transformers:`` a
  transformers CLIPModel); a registry name (``biomedclip``) resolves to its full spec first;
  anything else is an open_clip model name with a ``--pretrained`` tag or checkpoint file.
- ``choose_model``: flag > environment (``KPL_CLIP_MODEL`` / ``KPL_CLIP_PRETRAINED``) > the
  snapshot's own model (for work on an existing snapshot) > the default; the answer says where it
  came from, so a command can tell the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kbuild import settings
from kbuild.clip.registry import HF_HUB, LOCAL_DIR, TRANSFORMERS, resolve

Library = Literal["open_clip", "open_clip_dir", "open_clip_hub", "transformers"]
_PREFIXES: dict[str, Library] = {LOCAL_DIR: "open_clip_dir", HF_HUB: "open_clip_hub", TRANSFORMERS: "transformers"}
Source = Literal["flag", "environment", "snapshot", "default"]


@dataclass(frozen=True)
class ModelName:
    """A parsed ``--model`` value: ``spec`` is the full spec (registry names resolved), ``library`` what
    loads it, ``identifier`` the spec without its prefix (a folder, a repo id or an open_clip name)."""

    spec: str
    library: Library
    identifier: str

    @property
    def carries_weights(self) -> bool:
        """A folder or hub repo brings its own weights; an open_clip name needs ``--pretrained``."""
        return self.library != "open_clip"


def parse_model_name(model: str) -> ModelName:
    spec = resolve(model.strip())
    for prefix, library in _PREFIXES.items():
        if spec.startswith(prefix):
            return ModelName(spec, library, spec[len(prefix):].strip())
    return ModelName(spec, "open_clip", spec)


@dataclass(frozen=True)
class ModelChoice:
    """The model a command will load: ``pretrained`` None means random weights (or weights the
    model carries itself); ``source`` says which rule picked it."""

    model: str
    pretrained: str | None
    source: Source

    @property
    def name(self) -> ModelName:
        return parse_model_name(self.model)


@dataclass(frozen=True)
class ModelRequest:
    """The model a caller asks for (``--model``/``--pretrained``, or a notebook's arguments), None
    where nothing was said; ``choose`` applies the precedence when the model is about to be loaded."""

    model: str | None = None
    pretrained: str | None = None

    def choose(self, snapshot: dict | None = None) -> ModelChoice:
        return choose_model(self.model, self.pretrained, snapshot=snapshot)


def choose_model(model: str | None = None, pretrained: str | None = None,
                 snapshot: dict | None = None) -> ModelChoice:
    """Flag > environment > ``snapshot`` (a manifest's ``clip`` section) > default.

    ``--pretrained`` (flag or environment) goes with whichever model was chosen; a snapshot's model
    keeps the snapshot's own pretrained tag unless one is given.
    """
    if model not in (None, ""):
        return ModelChoice(model, settings.clip_pretrained(pretrained), "flag")
    from_env = settings.clip_override(None, pretrained)
    if from_env is not None:
        return ModelChoice(from_env[0], from_env[1], "environment")
    if snapshot and snapshot.get("model"):
        given = pretrained if pretrained is not None else settings.pretrained_from_environment()
        return ModelChoice(snapshot["model"], settings.clip_pretrained(given) if given is not None
                           else snapshot.get("pretrained"), "snapshot")
    return ModelChoice(settings.clip_model(None), settings.clip_pretrained(pretrained), "default")
