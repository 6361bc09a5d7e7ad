"""The CLIP wrapper shared by kbuild and kpl: one place that turns ``--model/--pretrained`` into a model.

Accepted forms (the same as open_clip's own):
- an open_clip model name plus a pretrained tag (``ViT-L-14-336`` / ``openai``), downloaded the usual way;
- a model name plus a checkpoint file (``--pretrained weights.pt|.safetensors``), always loaded with
  ``weights_only=True`` or safetensors, so a checkpoint cannot run code;
- ``local-dir:PATH``: open_clip's self-describing folder (``open_clip_config.json`` + weights);
- ``hf-hub:ORG/REPO`` (e.g. BiomedCLIP);
- ``transformers:ID_OR_DIR``: a transformers ``CLIPModel`` (MONET, PLIP, PubMedCLIP), see ``hf_clip``;
- a registry name (``biomedclip``, ``monet``, ...; ``registry.MODELS``), resolved to one of the above.

Every model gets a stable ``model_id`` used in provenance and as a cache key; for files it includes a
hash of the weights, so two different checkpoints never share cached embeddings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from kbuild.clip import causal
from kbuild.clip.choice import ModelName, parse_model_name
from kbuild.clip.precision import image_autocast, pick_precision
from kbuild.clip.registry import LOCAL_DIR, check_cached, resolve
from kbuild.errors import KbuildError, UsageError

if TYPE_CHECKING:  # transformers loads only for a transformers: model
    from kbuild.clip.hf_clip import HFClipModel



@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: ``model`` and ``pretrained`` as given (pretrained None = random)."""

    model: str
    pretrained: str | None

    @property
    def name(self) -> ModelName:
        """The parsed model name: which library loads it, and the folder, repo or name it points to."""
        return parse_model_name(self.model)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# Weight files a local-dir folder may hold, most preferred first (open_clip's own names, plus the
# ``.pt`` that open_clip's folder loader ignores, which is how a folder silently got random weights).
_LOCAL_DIR_PREFERRED = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                        "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "open_clip_model.pt",
                        "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth", "model.pt")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def _local_dir_weights(folder: Path) -> Path:
    """The one weights file a local-dir folder names: a preferred name if present, else the only
    weights file there. No weights, or several with none preferred, is refused: a folder must never
    fall back to random weights or to a file picked by sort order."""
    for name in _LOCAL_DIR_PREFERRED:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if len(found) == 1:
        return folder / found[0]
    if not found:
        raise UsageError(f"--model local-dir:{folder}: no weights file in the folder "
                         f"(expected open_clip_model.safetensors, or a .bin/.pth/.pt state dict)")
    raise UsageError(f"--model local-dir:{folder}: several weights files ({', '.join(found)}) and none named "
                     "open_clip_model.safetensors (keep one, or rename the one to use)")


def model_id(spec: ModelSpec) -> str:
    """Stable identity of a model for provenance and cache keys."""
    spec = _resolved(spec)
    name = spec.name
    if name.library == "transformers":
        from kbuild.clip.hf_clip import transformers_model_id

        return transformers_model_id(spec.model, file_sha256)
    if name.library == "open_clip_dir":
        folder = Path(name.identifier).expanduser()
        # The hash of the file _load_local_dir_weights reads, so the id names what was loaded.
        return f"{LOCAL_DIR}{folder.name}@sha256:{file_sha256(_local_dir_weights(folder))[:16]}"
    if name.library == "open_clip_hub":
        return spec.model
    if spec.pretrained and Path(spec.pretrained).expanduser().is_file():
        return f"{spec.model}@sha256:{file_sha256(Path(spec.pretrained).expanduser())[:16]}"
    return f"{spec.model}/{spec.pretrained or 'random'}"


def _resolved(spec: ModelSpec) -> ModelSpec:
    """A registry name replaced by its full spec (hub models carry their own weights: no pretrained)."""
    full = resolve(spec.model)
    return spec if full == spec.model else ModelSpec(full, None)


def _check_spec(spec: ModelSpec) -> None:
    name = spec.name
    if name.library == "open_clip_dir":
        folder = Path(name.identifier).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise UsageError(
                f"--model {spec.model}: no open_clip_config.json in {folder} "
                "(a local-dir model folder holds open_clip_config.json and its weights)")
        _local_dir_weights(folder)  # refuses a folder without one clear weights file
        return
    if name.library == "open_clip_hub":
        return
    import open_clip

    if spec.model not in open_clip.list_models():
        raise UsageError(
            f"Unknown CLIP model '{spec.model}' (see open_clip.list_models() and 'kpl models', or pass "
            "--model local-dir:PATH, hf-hub:ORG/REPO or transformers:ID_OR_DIR)")
    pretrained = spec.pretrained
    looks_like_file = pretrained is not None and (
        "/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")))
    if looks_like_file and pretrained is not None and not Path(pretrained).expanduser().is_file():
        raise UsageError(f"--pretrained {pretrained}: checkpoint file not found")


def _create(spec: ModelSpec, device: str):
    import open_clip

    pretrained, name = spec.pretrained, spec.name
    if name.carries_weights:
        pretrained = None  # the folder / hub repo carries its own weights
    elif pretrained and Path(pretrained).expanduser().is_file():
        pretrained = str(Path(pretrained).expanduser())
    # A local-dir folder's weights are loaded by us, strictly, from the file we named: open_clip's own
    # folder loader picks by other rules (it skips .pt), announced "Using 'other.safetensors'" while we
    # loaded model.pt, and died on a broken file we never meant to read.
    local = {"load_weights": False, "pretrained_text": False} if name.library == "open_clip_dir" else {}
    try:
        with _quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.model, pretrained=pretrained, device=device, weights_only=True, **local)
    except KbuildError:
        raise
    except Exception as exc:  # open_clip raises many types for "cannot fetch/parse weights"
        raise KbuildError(
            f"Could not load CLIP model {spec.model} ({spec.pretrained or 'random weights'}): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
            "(offline? use --model local-dir:PATH or --pretrained FILE)") from exc
    if name.library == "open_clip_dir":
        _load_local_dir_weights(model, Path(name.identifier).expanduser())
    tokenizer = open_clip.get_tokenizer(spec.model)
    model.eval()
    return model, preprocess, tokenizer


def _load_local_dir_weights(model, folder: Path) -> None:
    """Load exactly the folder's weights file into ``model``, strictly (every key must match).

    open_clip's own folder loader skips ``.pt`` files and then builds a randomly initialised model
    without an error, so ``_create`` asks it for no weights and this loads the one file we named.
    ``.pt/.bin/.pth`` go through ``torch.load(weights_only=True)``, so a pickle cannot run code."""
    import open_clip

    weights = _local_dir_weights(folder)
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True, weights_only=True)
    except Exception as exc:  # unpickling refused, missing/unexpected keys, wrong shapes, bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KbuildError(f"--model local-dir:{folder}: cannot load {weights.name} as a plain state dict "
                          f"({first[:200]}) (save the weights with safetensors, or torch.save(model.state_dict()))"
                          ) from exc


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs download failures on the root logger; we report them ourselves, once."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def pick_device(device: str | None = None) -> str:
    """``cuda`` when present, else Apple ``mps``, else ``cpu``; an explicit choice wins."""
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class ClipModel:
    """A loaded CLIP model with batched, normalised text and image encoding. Build via ``load_clip``."""

    def __init__(self, spec: ModelSpec, device: str | None = None, precision: str | None = None):
        _check_spec(spec)
        self.spec = spec
        self.device = pick_device(device)
        self.precision = pick_precision(self.device, precision)
        logging.getLogger("open_clip").setLevel(logging.ERROR)  # "no pretrained weights" is expected in tests
        self.model, self.preprocess, self.tokenizer = _create(spec, self.device)
        # Batches cut to their longest text (``causal``) where the model's text path allows it.
        self.truncated_text = causal.supports(self.model)
        self.model_id = model_id(spec)
        self.context_length = int(getattr(self.tokenizer, "context_length", 77) or 77)
        self.dim = int(self._probe_dim())

    def _probe_dim(self) -> int:
        return self.encode_texts(["probe"]).shape[1]

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(len(texts), D) float32 unit rows; texts longer than the context are truncated by the tokenizer.

        Equal (within float32 rounding) to open_clip's ``encode_text``, which is what runs when
        ``truncated_text`` is False."""
        import torch

        if self.truncated_text and len(texts):
            with torch.inference_mode():  # one tokenizer call; batches sorted and cut by length
                tokens = self.tokenizer(list(texts)).to(self.device)
                return causal.encode(self.model, tokens).cpu().numpy()
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
                chunks.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        if not chunks:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def encode_image_batch(self, images) -> np.ndarray:
        """(B, 3, H, W) preprocessed tensor -> (B, D) float32 unit rows."""
        import torch

        with torch.inference_mode():
            with image_autocast(self.device, self.precision):
                out = self.model.encode_image(images.to(self.device))
            # Normalised in float32: a half-precision norm leaves rows ~2e-3 off unit length.
            return torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy()

    def count_tokens(self, text: str) -> int:
        """Number of BPE tokens plus start/end markers, compared against the context length."""
        inner = getattr(self.tokenizer, "encode", None)
        if inner is None:
            return 0
        return len(inner(text)) + 2

    def describe(self) -> dict:
        # A local-dir/hf-hub model carries its own weights: a --pretrained default was not used.
        own_weights = self.spec.name.carries_weights
        pretrained = None if own_weights else _public_pretrained(self.spec.pretrained)
        return {"model": self.spec.model, "pretrained": pretrained,
                "model_id": self.model_id, "dim": self.dim, "context_length": self.context_length}


def _public_pretrained(pretrained: str | None) -> str | None:
    """A checkpoint is recorded by absolute path, so later work on the snapshot (prune, review) can
    reload it; ``model_id`` carries the weights' hash, which is what identifies the model."""
    if pretrained and Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser().resolve())
    return pretrained


class LazyClip:
    """A CLIP model that is named but loaded only when a text must be encoded.

    Work on an existing snapshot (prune) mostly reuses stored vectors: the model id and the token
    counts need no weights (``count_tokens`` uses the tokenizer alone where open_clip can build it
    from the name or folder); ``encode_texts``, ``dim`` and ``describe`` load the model, once.
    """

    def __init__(self, model: str, pretrained: str | None):
        self._args = (model, pretrained)
        self.spec = _resolved(ModelSpec(model, pretrained))
        self.model_id = model_id(self.spec)
        self._clip = None
        self._tokenizer = None

    @property
    def loaded(self) -> bool:
        return self._clip is not None

    def load(self):
        if self._clip is None:
            self._clip = load_clip(*self._args)
        return self._clip

    @property
    def dim(self) -> int:
        return self.load().dim

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        return self.load().encode_texts(texts, batch_size)

    def describe(self) -> dict:
        return self.load().describe()

    def count_tokens(self, text: str) -> int:
        if self._clip is None and self._tokenizer is None and self.spec.name.library != "transformers":
            with contextlib.suppress(Exception):  # any failure: the model's own tokenizer, below
                import open_clip

                _check_spec(self.spec)
                self._tokenizer = open_clip.get_tokenizer(self.spec.model)
        if self._tokenizer is None:
            return self.load().count_tokens(text)
        encode = getattr(self._tokenizer, "encode", None)  # as ClipModel.count_tokens, with its markers
        return len(encode(text)) + 2 if encode is not None else 0


@lru_cache(maxsize=4)
def load_clip(model: str, pretrained: str | None, device: str | None = None,
              precision: str | None = None) -> ClipModel | HFClipModel:
    """Load (once per process) the CLIP model named by ``--model/--pretrained`` (or a registry name)."""
    spec = _resolved(ModelSpec(model, pretrained))
    check_cached(spec.model, alias=model if spec.model != model else None, pretrained=spec.pretrained)
    if spec.name.library == "transformers":
        from kbuild.clip.hf_clip import HFClipModel

        chosen = pick_device(device)
        return HFClipModel(spec.model, chosen, model_id(spec), pick_precision(chosen, precision))
    return ClipModel(spec, device, precision)


def write_local_dir(model, config: dict, folder: Path) -> Path:
    """Save a model as an open_clip ``local-dir:`` folder (config + safetensors weights)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder
