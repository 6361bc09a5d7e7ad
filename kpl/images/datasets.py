"""Image datasets for evaluation: an ImageFolder tree or a CSV manifest, as a list of labelled files.

Layouts (the same as torchvision's ImageFolder and the paper code's loaders):

- ``DIR/<class>/**/*.jpg``, or ``DIR/<split>/<class>/...`` with ``split="val"``;
- a CSV manifest with ``path,label`` rows (a header row is optional); relative paths are resolved
  against the manifest's folder.

Scanning never opens an image: files whose extension is not an image's are skipped and counted
here; files that turn out to be corrupt are found (and counted) when they are decoded, in
``kpl.images.features``. Classes are sorted by name, so label indices do not depend on the file system.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kbuild.inputs import read_utf8
from kpl.errors import KplError, UsageError

# torchvision's IMG_EXTENSIONS, all formats PIL decodes without plugins.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test", "dev"})
MANIFEST_MAX_BYTES = 512 * 1024 * 1024
_PATH_HEADERS = {"path", "file", "filename", "image", "filepath"}


@dataclass
class ImageDataset:
    """Labelled image files. ``paths`` (N,) absolute, ``labels`` (N,) int64 into ``class_names``.

    ``skipped`` maps a reason (``non_image``, ``missing``) to the files skipped for it;
    ``empty_classes`` are class folders without a single image (left out of ``class_names``).
    """

    root: Path
    kind: str
    split: str | None
    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    skipped: dict[str, list[str]] = field(default_factory=dict)
    empty_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts)}

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for reports (no per-file lists beyond the skipped ones)."""
        return {
            "root": str(self.root), "kind": self.kind, "split": self.split, "images": len(self.paths),
            "classes": self.class_names, "class_counts": self.class_counts(),
            "skipped": {reason: len(files) for reason, files in sorted(self.skipped.items())},
            "skipped_files": {reason: files[:50] for reason, files in sorted(self.skipped.items())},
            "empty_classes": self.empty_classes,
        }


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def load_dataset(path: Path | str, split: str | None = None) -> ImageDataset:
    """Scan an ImageFolder tree (optionally its ``split`` subfolder) or read a CSV manifest."""
    path = Path(path).expanduser()
    if not path.exists():
        raise KplError(f"Dataset path {path} does not exist (pass --data DIR or --data manifest.csv)")
    if path.is_file():
        if split:
            raise UsageError("--split applies to ImageFolder trees, not to a CSV manifest")
        return _from_manifest(path)
    return _from_folder(_split_root(path, split), split)


def _split_root(path: Path, split: str | None) -> Path:
    if not split:
        return path
    root = path / split
    if not root.is_dir():
        present = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise KplError(f"No split folder '{split}' in {path} (folders there: {', '.join(present) or 'none'})")
    return root


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _from_folder(root: Path, split: str | None) -> ImageDataset:
    """ImageFolder: each visible sub-folder of ``root`` is a class; its files (recursively) its images."""
    folders = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    skipped: dict[str, list[str]] = {}
    loose = [str(p) for p in root.iterdir() if p.is_file() and _visible(p)]
    if loose:
        skipped["outside_class_folder"] = sorted(loose)
    files_by_class: dict[str, list[Path]] = {}
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p))
        images = [p for p in files if is_image_file(p)]
        skipped.setdefault("non_image", []).extend(str(p) for p in files if not is_image_file(p))
        files_by_class[folder.name] = images
    skipped = {reason: files for reason, files in skipped.items() if files}
    return _assemble(root, "imagefolder", split, files_by_class, skipped)


def _assemble(root, kind, split, files_by_class: dict[str, list[Path]], skipped) -> ImageDataset:
    class_names = sorted(name for name, files in files_by_class.items() if files)
    empty = sorted(name for name, files in files_by_class.items() if not files)
    if not class_names:
        hint = f" ({len(skipped.get('non_image', []))} non-image files skipped)" if skipped.get("non_image") else ""
        layout = "path,label rows" if kind == "csv" else "DIR/<class>/<image> folders"
        raise KplError(f"Dataset {root} has no images{hint}; expected {layout}")
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        paths.extend(p.resolve() for p in files_by_class[name])
        labels.extend([index] * len(files_by_class[name]))
    return ImageDataset(root.resolve(), kind, split=split, paths=paths, labels=np.asarray(labels, dtype=np.int64),
                        class_names=class_names, skipped=skipped, empty_classes=empty)


def _manifest_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line, path, label) for every non-blank row; an optional header row is dropped."""
    text = read_utf8(path, MANIFEST_MAX_BYTES, what="CSV manifest")
    rows: list[tuple[int, str, str]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for index, row in enumerate(reader):
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if index == 0 and cells[0].lower() in _PATH_HEADERS:
                continue
            if len(cells) < 2 or not cells[0] or not cells[1]:
                raise KplError(f"{path}: line {reader.line_num}: expected 'path,label', got {row!r}")
            rows.append((reader.line_num, cells[0], cells[1]))
    except csv.Error as err:
        raise KplError(f"{path}: line {reader.line_num}: bad CSV ({err})") from None
    return rows


def _from_manifest(path: Path) -> ImageDataset:
    """CSV manifest ``path,label``: relative paths are relative to the manifest's folder."""
    base = path.resolve().parent
    files_by_class: dict[str, list[Path]] = {}
    skipped: dict[str, list[str]] = {}
    seen: Counter[Path] = Counter()
    for _line, file, label in _manifest_rows(path):
        image = Path(file).expanduser()
        image = image if image.is_absolute() else base / image
        if not is_image_file(image):
            skipped.setdefault("non_image", []).append(str(image))
        elif not image.is_file():
            skipped.setdefault("missing", []).append(str(image))
        else:
            seen[image] += 1
            files_by_class.setdefault(label, []).append(image)
    twice = [str(p) for p, n in seen.items() if n > 1]
    if twice:
        raise KplError(f"{path}: {len(twice)} image(s) listed more than once, e.g. {twice[0]} (keep one row each)")
    return _assemble(path.resolve(), "csv", None, files_by_class, skipped)


def looks_like_split_layout(class_names: list[str]) -> bool:
    """True when every 'class' is a split name (train/val/test): the user probably forgot ``--split``."""
    return bool(class_names) and all(name.lower() in SPLIT_NAMES for name in class_names)


def match_classes(dataset_classes: list[str], kb_classes: list[str], kb_name: str,
                  class_map: dict[str, str] | None = None) -> list[str]:
    """The knowledge-base class of each dataset class: the same name, or ``class_map[folder]``.

    A dataset class without descriptions is an error naming it and listing the snapshot's classes;
    two folders mapped onto one class are an error too (their proxies would be identical).
    """
    mapping = class_map or {}
    wanted = [mapping.get(name, name) for name in dataset_classes]
    available = set(kb_classes)
    missing = [(folder, target) for folder, target in zip(dataset_classes, wanted) if target not in available]
    if missing:
        shown = ", ".join(folder if folder == target else f"{folder} (mapped to {target})" for folder, target in missing)
        listed = ", ".join(sorted(kb_classes)[:30]) + (" ..." if len(kb_classes) > 30 else "")
        hint = ("; this looks like a split layout: pass --split val" if looks_like_split_layout(dataset_classes)
                else _near_miss_hint(missing, kb_classes) or "; map folders to classes with --class-map FILE")
        raise KplError(f"Dataset classes without descriptions in {kb_name}: {shown}. "
                          f"Available classes: {listed}{hint}")
    owners: dict[str, str] = {}
    for folder, target in zip(dataset_classes, wanted):
        if target in owners:
            raise KplError(f"Dataset classes '{owners[target]}' and '{folder}' both map to '{target}' "
                              "(fix --class-map: each knowledge-base class can stand for one dataset class)")
        owners[target] = folder
    return wanted


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _near_miss_hint(missing: list[tuple[str, str]], kb_classes: list[str]) -> str:
    """Suggest a --class-map when names differ only by case, spaces or punctuation."""
    by_squash = {_squash(name): name for name in kb_classes}
    pairs = [(folder, by_squash[_squash(target)]) for folder, target in missing if _squash(target) in by_squash]
    if not pairs:
        return ""
    folder, kb_class = pairs[0]
    return f"; did you mean '{kb_class}' for '{folder}'? map it with --class-map FILE ({folder},{kb_class})"
