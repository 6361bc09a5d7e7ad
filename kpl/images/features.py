"""Image features: encode a dataset once, cache the result, and read/write ``.npz`` feature files.

The cache key is a hash of everything that determines the features: the model id (which includes
a hash of local weights), the preprocessing pipeline (its ``repr``: sizes, interpolation, mean/std),
the precision (fp16 autocast on CUDA gives slightly different numbers), and the file list with
each file's size and modification time. Labels are not part of the key, since features do not
depend on them: relabelling a manifest reuses the cache. Entries are written atomically.

Feature files (``kpl eval --features``) hold ``image_features`` (N, D) float with unit rows,
``labels`` (N,) int and ``class_names`` (C,) str, optionally ``model_id`` (the embedding space),
``paths`` and ``name_embeddings`` (C, D): class-name prompt embeddings in the same space, for the
baselines that need them when no text model is at hand (e.g. vectors from another pipeline).
Both matrices follow the one policy for embedding matrices read from files
(``kbuild.inputs.unit_rows``): NaN/inf or all-zero rows are refused, rows off unit length are
normalised and counted in ``FeatureSet.normalised``, which ``feature_notes`` tells the user.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

import numpy as np

from kbuild.errors import KbuildError
from kbuild.inputs import canonical_class_name, class_name_problem, npz_members, npz_model_id, read_npz, unit_rows
from kpl.errors import InputFileError, KplError, UsageError
from kpl.images.datasets import ImageDataset

if TYPE_CHECKING:  # torch and PIL load only when images are encoded
    import torch
    from PIL.Image import Image as PILImage

CACHE_VERSION = 1
REQUIRED_KEYS = ("image_features", "labels", "class_names")

Progress = Callable[[int, int], None]


@dataclass
class FeatureSet:
    """(N, D) float32 unit-row ``features`` with (N,) int64 ``labels`` into ``class_names``.

    ``cache`` says where they came from ({"status": hit|miss|off|file, ...}); ``encoded`` is the
    number of images this call put through the model (0 on a cache hit).
    """

    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    model_id: str | None
    paths: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    encoded: int = 0
    corrupt: list[str] = field(default_factory=list)
    name_embeddings: np.ndarray | None = None
    normalised: dict[str, int] = field(default_factory=dict)  # array -> rows a features file had off unit length

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def describe(self) -> dict[str, Any]:
        return {**self.source, "images": int(self.features.shape[0]), "dim": self.dim,
                "model_id": self.model_id, "cache": self.cache, "encoded": self.encoded,
                "corrupt": len(self.corrupt), "corrupt_files": self.corrupt[:50]}


# ------------------------------------------------------------------ feature files (.npz)
def _bad(path: Path, problem: str, fix: str = "") -> InputFileError:
    return InputFileError(path, problem, fix)


def _class_name(path: Path, name: str) -> str:
    """A class name under the one rule every reader follows (kbuild.inputs): canonical spelling, no
    control or invisible characters, so 'nevus ' here matches the knowledge base's 'nevus'."""
    problem = class_name_problem(name)
    if problem:
        raise _bad(path, f"class_names: {problem}: {name[:60]!r}", "fix the class name")
    return canonical_class_name(name)


def check_features(path: Path, features, labels, class_names) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Validate shapes and rows: float32 (N, D) unit rows, int64 (N,) labels, names, and how many rows
    had to be normalised (the one policy for embedding matrices read from files: ``kbuild.inputs.unit_rows``)."""
    features, labels, names = np.asarray(features), np.asarray(labels), np.asarray(class_names)
    if features.ndim != 2 or 0 in features.shape or not np.issubdtype(features.dtype, np.floating):
        raise _bad(path, f"image_features must be a non-empty 2-D float array (N, D), got {features.dtype} "
                   f"{features.shape}")
    n = features.shape[0]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise _bad(path, f"labels must be {n} integers (one per image row), got {labels.dtype} {labels.shape}")
    if names.ndim != 1 or names.size == 0 or names.dtype.kind not in "US":
        raise _bad(path, f"class_names must be a 1-D array of strings, got {names.dtype} {names.shape}")
    names_list = [_class_name(path, str(s)) for s in names.tolist()]
    if len(set(names_list)) != len(names_list):
        raise _bad(path, "class_names has duplicates", "give every class one name")
    if labels.min() < 0 or labels.max() >= len(names_list):
        raise _bad(path, f"labels run from {labels.min()} to {labels.max()} but there are "
                   f"{len(names_list)} class_names", "labels index class_names from 0")
    features, normalised = unit_rows(path, features, "image_features", error=InputFileError,
                                     fix="re-encode those images or drop the rows")
    return features, labels.astype(np.int64), names_list, normalised


MAX_FEATURE_DIM = 16384  # CLIP image widths are 512-1536; wider is a wrong array, refused before reading


def _check_headers(path: Path, members: dict) -> None:
    """The shapes a features file declares, checked before any array is read: a (N, D) float matrix of a
    sane width, one label per row, name_embeddings as wide as the features."""
    feats, labels = members.get("image_features"), members.get("labels")
    if feats is None or labels is None:
        return  # the missing-key error comes after reading, with the list of keys found
    if len(feats.shape) != 2 or feats.dtype.kind != "f":
        raise _bad(path, f"image_features must be a non-empty 2-D float array (N, D), got {feats.dtype} {feats.shape}")
    rows, dim = feats.shape
    if dim > MAX_FEATURE_DIM:
        raise _bad(path, f"image_features has {dim} columns (limit {MAX_FEATURE_DIM}): not CLIP image features",
                   "save one row per image, one column per feature dimension")
    if labels.shape != (rows,):
        raise _bad(path, f"labels must be {rows} integers (one per image row), got {labels.dtype} {labels.shape}")
    names = members.get("name_embeddings")
    if names is not None and (len(names.shape) != 2 or names.shape[1] != dim):
        raise _bad(path, f"name_embeddings must be (C, {dim}) floats, got {names.dtype} {names.shape}",
                   "drop the key, or save one row per class")


def load_features_npz(path: Path | str) -> FeatureSet:
    """Read and validate a features file (see the module docstring for its keys)."""
    path = Path(path).expanduser()
    data = read_npz(path, "features file", "check the path, or create one with 'kpl embed --export'", InputFileError,
                    check=lambda members: _check_headers(path, members))
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise _bad(path, f"missing key(s) {', '.join(missing)} (has: {', '.join(sorted(data)) or 'none'})",
                   "save image_features (N, D), labels (N,) and class_names (C,)")
    features, labels, names, normalised = check_features(path, data["image_features"], data["labels"],
                                                         data["class_names"])
    stored_paths = data.get("paths")
    paths = ([str(p) for p in stored_paths.tolist()]
             if stored_paths is not None and stored_paths.shape == labels.shape else None)
    name_embeddings, names_normalised = _name_embeddings(path, data.get("name_embeddings"), len(names),
                                                         features.shape[1])
    counts = {"image_features": normalised, "name_embeddings": names_normalised}
    return FeatureSet(features, labels, names, npz_model_id(path, data.get("model_id"), InputFileError), paths,
                      source={"kind": "features", "path": str(path.resolve())},
                      cache={"status": "file"}, name_embeddings=name_embeddings,
                      normalised={key: count for key, count in counts.items() if count})


def _name_embeddings(path: Path, matrix, classes: int, dim: int) -> tuple[np.ndarray | None, int]:
    """Optional (C, D) class-name embeddings, one per class_names entry, and how many rows were
    normalised (``kbuild.inputs.unit_rows``)."""
    if matrix is None:
        return None, 0
    if matrix.shape != (classes, dim) or not np.issubdtype(matrix.dtype, np.floating):
        raise _bad(path, f"name_embeddings must be (C, D) = ({classes}, {dim}) floats, one row per class_names "
                   f"entry, got {matrix.dtype} {matrix.shape}", "drop the key, or save one row per class")
    return unit_rows(path, matrix, "name_embeddings", error=InputFileError, fix="re-embed the class names")


def save_features_npz(features: FeatureSet, path: Path | str) -> Path:
    """Write a features file that ``load_features_npz`` (and ``kpl eval --features``) reads back."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"image_features": features.features.astype(np.float32), "labels": features.labels.astype(np.int64),
              "class_names": np.asarray(features.class_names, dtype=str),
              "model_id": np.asarray(features.model_id or "", dtype=str)}
    if features.paths is not None:
        arrays["paths"] = np.asarray(features.paths, dtype=str)
    if features.name_embeddings is not None:
        arrays["name_embeddings"] = features.name_embeddings.astype(np.float32)
    atomic_savez(path, arrays)
    return path


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # A killed writer must never leave a truncated file under the real name (the cache trusts it).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            # typed loosely: numpy's stub would read a key named allow_pickle as that flag (ours are array names)
            members: dict[str, Any] = arrays
            np.savez(handle, **members)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ the cache
def cache_key(model_id: str, preprocess: str, precision: str, paths: list[Path]) -> str:
    """Hex digest over the model, preprocessing, precision and (path, size, mtime) of every file."""
    digest = hashlib.sha256()
    head = {"v": CACHE_VERSION, "model_id": model_id, "preprocess": preprocess, "precision": precision}
    digest.update(json.dumps(head, sort_keys=True).encode("utf-8"))
    for path in paths:
        stat = path.stat()
        digest.update(f"\n{path}\x00{stat.st_size}\x00{stat.st_mtime_ns}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def read_entry(path: Path, keys: tuple[str, ...]) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """``keys`` of a cache or shard file, or (None, why not): anything unreadable is a reason, never
    an exception, since such a file is simply encoded again."""
    if not zipfile.is_zipfile(path):
        return None, "not an .npz file"
    try:
        npz_members(path)  # headers first: a forged or truncated one never allocates what it declares
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in keys}, None
    except KeyError as err:
        return None, f"no {err} array"
    except KbuildError as err:
        return None, str(err)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, TypeError) as err:
        return None, f"unreadable ({type(err).__name__})"


def entry_problem(features: np.ndarray, ok: np.ndarray, count: int, dim: int | None) -> str | None:
    """What makes stored features unusable for ``count`` files of a ``dim``-wide model, or None."""
    if ok.shape != (count,) or ok.dtype != bool:
        return f"ok mask {ok.dtype} {ok.shape}, expected {count} flags"
    if features.ndim != 2 or features.shape[0] != int(ok.sum()) or features.dtype.kind != "f":
        return f"features {features.dtype} {features.shape} do not match {int(ok.sum())} decoded files"
    if dim is not None and features.shape[1] != dim:
        return f"features are {features.shape[1]} wide, the model's are {dim}"
    if not np.isfinite(features).all():
        return "features hold NaN or infinite values"
    return None


class FeatureCache:
    """One ``<key>.npz`` per encoded file list under ``folder``: features of the decodable files
    and the (N,) ``ok`` mask saying which files decoded."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.rejected: str | None = None  # why the last entry read was not used

    def file(self, key: str) -> Path:
        return self.folder / f"{key[:40]}.npz"

    def get(self, key: str, count: int, dim: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """The entry's (features, ok), or None: absent, or failing its checks (``self.rejected`` says
        why; the caller encodes again and overwrites it)."""
        path = self.file(key)
        if not path.is_file():
            return None
        arrays, problem = read_entry(path, ("features", "ok"))
        if arrays is not None:
            problem = entry_problem(arrays["features"], arrays["ok"], count, dim)
        if problem is not None or arrays is None:  # read_entry gives no arrays only with a reason
            self.rejected = f"{path.name}: {problem}"
            return None
        return arrays["features"].astype(np.float32, copy=False), arrays["ok"].astype(bool)

    def put(self, key: str, features: np.ndarray, ok: np.ndarray, meta: dict[str, Any]) -> Path:
        path = self.file(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_savez(path, {"features": features.astype(np.float32), "ok": ok.astype(bool),
                                 "meta": np.asarray(json.dumps(meta, sort_keys=True))})
        except OSError as err:
            raise KplError(f"Cannot write the feature cache in {self.folder}: {err.strerror or err} "
                              "(pass --cache-dir DIR, or --no-cache)") from err
        return path


@dataclass
class CacheLookup:
    """One look in the feature cache for a dataset and an encoder, the same for every engine.

    ``hit`` is the entry's (features, ok) when it is usable; ``info`` is what metrics.json records
    (status, key, file, and why an entry was rejected or could not be written). ``cache`` is None
    with ``--no-cache``. ``save`` writes what the engine encoded, so the next run of either engine hits.
    """

    cache: FeatureCache | None
    key: str
    hit: tuple[np.ndarray, np.ndarray] | None
    info: dict[str, Any]

    def save(self, dataset: ImageDataset, clip, features: np.ndarray, ok: np.ndarray, precision: str,
             engine: str | None = None) -> bool:
        """Store an encoded dataset; False (and ``info["error"]``) when the cache cannot be written:
        the features are fine, and losing them to a cache problem is not."""
        if self.cache is None:
            return False
        meta = {"model_id": clip.model_id, "preprocess": repr(clip.preprocess), "root": str(dataset.root),
                "files": len(dataset), "precision": precision, **({"engine": engine} if engine else {})}
        try:
            self.cache.put(self.key, features, ok, meta)
        except KbuildError as err:
            self.info["error"] = str(err)
            return False
        return True


def look_up(dataset: ImageDataset, clip, cache_dir: Path | None, precision: str,
            engine: str | None = None) -> CacheLookup:
    """The cache entry of ``dataset`` encoded by ``clip`` at ``precision`` (``cache_dir`` None: no cache)."""
    key = cache_key(clip.model_id, repr(clip.preprocess), precision, dataset.paths)
    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    hit = cache.get(key, len(dataset), clip.dim) if cache is not None else None
    info: dict[str, Any] = {"status": "off" if cache is None else ("hit" if hit is not None else "miss"),
                            "key": f"sha256:{key}", **({"engine": engine} if engine else {})}
    if cache is not None:
        info["file"] = str(cache.file(key))
        if cache.rejected:
            info["rejected"] = cache.rejected
    return CacheLookup(cache, key, hit, info)


# ------------------------------------------------------------------ encoding
class ImageFiles:
    """A map-style torch dataset: (preprocessed image or a zero placeholder, index, decoded?)."""

    def __init__(self, paths: list[Path], preprocess, placeholder):
        self.paths, self.preprocess, self.placeholder = paths, preprocess, placeholder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                return self.preprocess(image.convert("RGB")), index, True
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            # Truncated, corrupt or not really an image: counted by the caller, never fatal.
            return self.placeholder, index, False


def placeholder_image(preprocess: Callable[[PILImage], torch.Tensor]) -> torch.Tensor:
    """An all-zero image as ``preprocess`` shapes it, standing in for a file that cannot be decoded."""
    from PIL import Image

    return preprocess(Image.new("RGB", (8, 8))).zero_()


def default_workers(count: int, batch_size: int, device: str = "cpu") -> int:
    """DataLoader worker processes when ``--workers`` is not given.

    On the CPU none: the model's forward already uses every core through torch's threads, and a
    decoding process beside it stalls those threads (on 2 cores, 1 worker cut the encode rate to
    60 %, while decoding in-line ran 17x faster than the model; benchmarks/bench_loader.py). On a
    GPU the main process mostly waits for the device, so workers decode the next batches meanwhile:
    one per core, up to 8. A batch or two is never worth a worker's start-up.
    """
    if device == "cpu" or count <= 2 * batch_size:
        return 0
    return max(1, min(8, os.cpu_count() or 1))


def make_loader(paths: list[Path], preprocess, batch_size: int, workers: int, pin_memory: bool = False):
    """A torch DataLoader yielding (B, 3, H, W) images, (B,) indices, (B,) decoded flags, in order."""
    from torch.utils.data import DataLoader, Dataset

    files = ImageFiles(paths, preprocess, placeholder_image(preprocess))
    # ImageFiles is a map-style dataset (__len__, __getitem__) without importing torch at module load
    return DataLoader(cast("Dataset[Any]", files), batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, prefetch_factor=4 if workers else None)


def encode_images(paths: list[Path], clip, batch_size: int = 64, workers: int | None = None,
                  progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode image files: ((N_ok, D) float32 unit rows, (N,) bool mask of decodable files)."""
    if batch_size < 1:
        raise KplError(f"batch size must be >= 1 (got {batch_size})")
    workers = default_workers(len(paths), batch_size, clip.device) if workers is None else workers
    loader = make_loader(paths, clip.preprocess, batch_size, workers, pin_memory=clip.device == "cuda")
    chunks, ok = [], np.zeros(len(paths), dtype=bool)
    done = 0
    for images, indices, decoded in loader:
        mask = decoded.numpy().astype(bool)
        if mask.any():
            chunks.append(clip.encode_image_batch(images[mask]))
        ok[indices.numpy()[mask]] = True
        done += len(indices)
        if progress:
            progress(done, len(paths))
    features = np.concatenate(chunks) if chunks else np.zeros((0, clip.dim), dtype=np.float32)
    return features.astype(np.float32, copy=False), ok


def precision_of(clip) -> str:
    """Part of the cache key: fp32, or fp16/bf16 autocast (the names keep older cache entries valid)."""
    precision = getattr(clip, "precision", None) or ("fp16" if clip.device == "cuda" else "fp32")
    return "fp32" if precision == "fp32" else f"{precision}-autocast"


def encode_dataset(dataset: ImageDataset, clip, cache_dir: Path | None, batch_size: int = 64,
                   workers: int | None = None, progress: Progress | None = None) -> FeatureSet:
    """Features of every decodable image of ``dataset``, from the cache when the key matches.

    Corrupt files are dropped (with their labels) and listed in ``FeatureSet.corrupt``.
    """
    precision = precision_of(clip)
    found = look_up(dataset, clip, cache_dir, precision)
    if found.hit is not None:
        features, ok = found.hit
        return feature_set(dataset, clip, features=features, ok=ok, cache_info=found.info, encoded=0,
                           device=clip.device, precision=precision)
    features, ok = encode_images(dataset.paths, clip, batch_size, workers, progress)
    found.save(dataset, clip, features, ok, precision)
    return feature_set(dataset, clip, features=features, ok=ok, cache_info=found.info, encoded=len(dataset),
                       device=clip.device, precision=precision)


def feature_set(dataset: ImageDataset, clip, *, features: np.ndarray, ok: np.ndarray, cache_info: dict[str, Any],
                encoded: int, device: str, precision: str) -> FeatureSet:
    """The FeatureSet of ``dataset`` from its decodable rows ``features`` and (N,) ``ok`` mask (any engine)."""
    if not ok.any():
        raise KplError(f"None of the {len(dataset)} images in {dataset.root} could be decoded (all corrupt?)")
    return FeatureSet(
        features, dataset.labels[ok], list(dataset.class_names), clip.model_id,
        [str(p) for p, good in zip(dataset.paths, ok) if good],
        source={"kind": dataset.kind, "path": str(dataset.root), "split": dataset.split, "device": device,
                "precision": precision},
        cache=cache_info, encoded=encoded,
        corrupt=[str(p) for p, good in zip(dataset.paths, ok) if not good])


@dataclass(frozen=True, kw_only=True)
class ImageRequest:
    """Where image features come from and how images are encoded: exactly one of ``data`` (images) and
    ``features`` (.npz). ``model``/``pretrained`` are already chosen (kbuild.clip.choice); ``cache_dir``
    None encodes without caching."""

    data: Path | None = None
    features: Path | None = None
    split: str | None = None
    model: str
    pretrained: str | None = None
    device: str | None = None
    batch_size: int = 64
    workers: int | None = None
    cache_dir: Path | None = None
    precision: str | None = None  # auto (fp16 on CUDA), fp32, fp16, bf16


def load_or_encode(request: ImageRequest, *, progress: Progress | None = None,
                   check_classes: Callable[[list[str]], None] | None = None,
                   encode_elsewhere: Callable[[ImageDataset, Any], FeatureSet] | None = None):
    """(FeatureSet, ImageDataset or None, image model or None): read ``request.features`` or encode ``request.data``.

    ``check_classes`` sees the dataset's class names before any model is loaded or image encoded (it
    raises to stop). ``encode_elsewhere(dataset, clip)`` replaces the in-process encoder (e.g.
    kpl.images.ray_engine's); it is passed in, so this module never imports an engine that builds on it.
    """
    from kbuild.clip.models import load_clip
    from kpl.images.datasets import load_dataset

    data, features = request.data, request.features
    if features is not None and data is None:
        loaded = load_features_npz(features)
        if check_classes is not None:
            check_classes(loaded.class_names)
        return loaded, None, None
    if data is None or features is not None:
        raise UsageError("Pass exactly one of --data DIR (images) or --features FILE.npz")
    dataset = load_dataset(data, request.split)
    if check_classes is not None:
        check_classes(dataset.class_names)
    clip = load_clip(request.model, request.pretrained, request.device, request.precision)
    if encode_elsewhere is not None:
        return encode_elsewhere(dataset, clip), dataset, clip
    encoded = encode_dataset(dataset, clip, request.cache_dir, batch_size=request.batch_size, workers=request.workers,
                             progress=progress)
    return encoded, dataset, clip


def feature_notes(features: FeatureSet, dataset: ImageDataset | None) -> list[str]:
    """What a user should hear about how the features were made: skipped files, cache trouble,
    rows of a features file that had to be normalised."""
    notes = []
    if dataset is not None and dataset.skipped:
        counts = (f"{len(files)} {reason.replace('_', ' ')}" for reason, files in sorted(dataset.skipped.items()))
        notes.append(f"skipped files: {', '.join(counts)}")
    if features.corrupt:
        notes.append(f"skipped {len(features.corrupt)} corrupt image(s), e.g. {features.corrupt[0]}")
    if features.cache.get("error"):
        notes.append(f"features not cached: {features.cache['error']}")
    if features.cache.get("rejected"):
        notes.append(f"feature cache entry failed its checks and was encoded again ({features.cache['rejected']})")
    for array, count in features.normalised.items():
        notes.append(f"{count} {array} row(s) were not unit length and were normalised")
    return notes
