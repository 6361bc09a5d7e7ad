"""transformers ``CLIPModel`` + ``CLIPProcessor`` behind the same interface as the open_clip models.

``--model transformers:ID_OR_DIR`` loads e.g. MONET, PLIP or PubMedCLIP, which are published as
transformers checkpoints rather than open_clip ones. The object this module builds has what the rest
of the code uses from ``models.ClipModel``: ``encode_texts``, ``encode_image_batch``, ``preprocess``
(PIL image -> (3, H, W) tensor, with a ``repr`` that names the processor settings, because the
feature cache keys on it), ``model_id``, ``dim``, ``device``, ``count_tokens`` and ``describe``.

Model ids: ``transformers:ORG/NAME`` for a hub id (as given), ``transformers:FOLDER@sha256:...`` for
a folder, with a hash of its weights so two folders never share cached embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kbuild.clip.choice import parse_model_name
from kbuild.clip.precision import image_autocast
from kbuild.clip.registry import TRANSFORMERS
from kbuild.errors import KbuildError, UsageError

# What CLIPModel.from_pretrained reads, in its own order of preference: the first present is loaded and
# any other weights in the folder are ignored, so only the first is hashed (a stale file is not).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _target(model: str) -> str:
    return parse_model_name(model).identifier


def _folder(model: str) -> Path | None:
    path = Path(_target(model)).expanduser()
    return path if path.is_dir() else None


def transformers_model_id(model: str, sha256: Callable[[Path], str]) -> str:
    """Stable identity of a transformers CLIP model (see the module docstring); ``sha256(path)`` hashes weights."""
    folder = _folder(model)
    if folder is None:
        return f"{TRANSFORMERS}{_target(model)}"
    weights = next((folder / name for name in _WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        tag = "no-weights"
    elif weights.name.endswith(".index.json"):
        tag = f"sha256:{_sharded_sha256(weights, sha256)[:16]}"
    else:
        tag = f"sha256:{sha256(weights)[:16]}"
    return f"{TRANSFORMERS}{folder.name}@{tag}"


def _sharded_sha256(index: Path, sha256: Callable[[Path], str]) -> str:
    """One digest over a sharded checkpoint: the index json and every shard its weight_map names."""
    import hashlib
    import json

    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"--model transformers:{index.parent}: {index.name} is not a readable weights index "
                         f"({type(exc).__name__}); save the model again with save_pretrained") from exc
    digest = hashlib.sha256(sha256(index).encode())
    for shard in shards:
        path = index.parent / shard
        if Path(shard).name != shard or not path.is_file():
            raise UsageError(f"--model transformers:{index.parent}: {index.name} names the shard {shard!r}, "
                             "which is not in the folder; copy the whole folder again")
        digest.update(f"\n{shard}\0{sha256(path)}".encode())
    return digest.hexdigest()


def check_transformers_spec(model: str) -> None:
    target = _target(model)
    if not target:
        raise UsageError("--model transformers: needs a hub id or a folder, e.g. transformers:vinid/plip")
    looks_local = target.startswith((".", "/", "~")) or Path(target).expanduser().exists()
    folder = _folder(model)
    if looks_local and (folder is None or not (folder / "config.json").is_file()):
        raise UsageError(f"--model {model}: no config.json in {target} (a transformers model folder is what "
                         "CLIPModel.save_pretrained and CLIPProcessor.save_pretrained write)")


class ImageProcessorTransform:
    """PIL image -> (3, H, W) float tensor through the checkpoint's own CLIPImageProcessor.

    Picklable (DataLoader workers get a copy); ``repr`` is the processor's settings, so a change of
    size, crop or normalisation changes the feature-cache key.
    """

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Any) -> Any:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        settings = json.loads(self.image_processor.to_json_string())
        return f"ImageProcessorTransform({json.dumps(settings, sort_keys=True)})"


def _features(output: Any) -> Any:
    """transformers 4.x returns the projected tensor; 5.x a model output whose pooler_output it is."""
    return output if hasattr(output, "norm") else output.pooler_output


class HFClipModel:
    """A transformers CLIP model with batched, normalised text and image encoding. Build via ``load_clip``."""

    def __init__(self, model: str, device: str, model_id: str, precision: str = "fp32") -> None:
        check_transformers_spec(model)
        folder = _folder(model)
        # A folder is recorded by absolute path, so prune or review can reload it from anywhere.
        self.spec_model = f"{TRANSFORMERS}{folder.resolve()}" if folder else model
        self.device = device
        self.precision = precision
        try:
            from transformers import CLIPModel, CLIPProcessor
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # stderr stays one line per step
            hf_logging.set_verbosity_error()

            source = str(_folder(model) or _target(model))
            self.processor = CLIPProcessor.from_pretrained(source)
            # transformers' stubs type PreTrainedModel.to's wrapper as taking a model, not a device
            self.model = CLIPModel.from_pretrained(source).to(device).eval()  # type: ignore[arg-type]
        except KbuildError:
            raise
        except Exception as exc:  # transformers raises OSError/ValueError/... for "cannot fetch or parse"
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise KbuildError(f"Could not load transformers CLIP model {_target(model)}: {first} "
                              "(a CLIPModel + CLIPProcessor folder or hub id is needed; offline, "
                              "pre-download it with 'huggingface-cli download ID')") from exc
        self.tokenizer = self.processor.tokenizer
        self.preprocess = ImageProcessorTransform(self.processor.image_processor)
        self.model_id = model_id
        self.context_length = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        self.dim = int(self.model.config.projection_dim)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(len(texts), D) float32 unit rows; texts longer than the context are truncated."""
        import torch

        chunks = []
        with torch.inference_mode():  # fp32 always: the text cache does not key on precision
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                       max_length=self.context_length, return_tensors="pt").to(self.device)
                out = _features(self.model.get_text_features(input_ids=batch["input_ids"],
                                                             attention_mask=batch["attention_mask"]))
                chunks.append(torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy())
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def encode_image_batch(self, images: Any) -> np.ndarray:
        """(B, 3, H, W) preprocessed tensor -> (B, D) float32 unit rows."""
        import torch

        with torch.inference_mode(), image_autocast(self.device, self.precision):
            out = _features(self.model.get_image_features(pixel_values=images.to(self.device)))
            return torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy()

    def count_tokens(self, text: str) -> int:
        """Tokens including start/end markers, compared against the context length."""
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    def describe(self) -> dict[str, Any]:
        return {"model": self.spec_model, "pretrained": None, "model_id": self.model_id, "dim": self.dim,
                "context_length": self.context_length}
