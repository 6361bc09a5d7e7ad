"""Datasets for ``kpl``: ImageFolder (with and without a split), CSV manifests, class matching.

Scanning never decodes images, so these tests write placeholder bytes where only names matter.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kpl.errors import KplError, UsageError
from kpl.images.datasets import load_dataset, looks_like_split_layout, match_classes


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "data"
    for name in ("b.jpg", "a.PNG", "nested/c.jpeg"):
        touch(root / "zebra" / name)
    touch(root / "ant" / "1.jpg")
    touch(root / "ant" / "readme.txt")
    touch(root / "ant" / ".DS_Store")
    (root / "empty").mkdir()
    touch(root / "labels.csv")
    return root


def test_imagefolder_sorted_classes_and_skips(tree):
    ds = load_dataset(tree)
    assert ds.class_names == ["ant", "zebra"]
    assert ds.labels.tolist() == [0, 1, 1, 1]
    assert [p.name for p in ds.paths] == ["1.jpg", "a.PNG", "b.jpg", "c.jpeg"]
    assert all(p.is_absolute() for p in ds.paths)
    assert [Path(p).name for p in ds.skipped["non_image"]] == ["readme.txt"]  # hidden files are not data
    assert [Path(p).name for p in ds.skipped["outside_class_folder"]] == ["labels.csv"]
    assert ds.empty_classes == ["empty"]
    summary = ds.describe()
    assert summary["skipped"] == {"non_image": 1, "outside_class_folder": 1}
    assert summary["class_counts"] == {"ant": 1, "zebra": 3}
    json.dumps(summary)


def test_split_layout(tmp_path):
    touch(tmp_path / "val" / "cat" / "1.jpg")
    touch(tmp_path / "train" / "dog" / "1.jpg")
    ds = load_dataset(tmp_path, split="val")
    assert ds.class_names == ["cat"] and ds.split == "val"
    with pytest.raises(KplError, match="No split folder 'test'.*train, val"):
        load_dataset(tmp_path, split="test")
    assert looks_like_split_layout(load_dataset(tmp_path).class_names)


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(KplError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(KplError, match="has no images"):
        load_dataset(tmp_path)
    touch(tmp_path / "cls" / "notes.txt")
    with pytest.raises(KplError, match="1 non-image files skipped"):
        load_dataset(tmp_path)


def test_csv_manifest(tmp_path):
    touch(tmp_path / "img" / "1.jpg")
    touch(tmp_path / "img" / "2.png")
    absolute = touch(tmp_path / "elsewhere" / "3.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\nimg/1.jpg,melanoma\nimg/2.png,nevus\n\n{absolute},nevus\n"
                        "img/gone.jpg,nevus\nimg/notes.txt,nevus\n", encoding="utf-8")
    ds = load_dataset(manifest)
    assert ds.kind == "csv" and ds.class_names == ["melanoma", "nevus"]
    assert ds.labels.tolist() == [0, 1, 1]
    assert ds.paths[0] == (tmp_path / "img" / "1.jpg").resolve()
    assert {k: len(v) for k, v in ds.skipped.items()} == {"missing": 1, "non_image": 1}
    with pytest.raises(UsageError, match="--split"):
        load_dataset(manifest, split="val")


def test_csv_manifest_errors(tmp_path):
    touch(tmp_path / "1.jpg")
    bad = tmp_path / "bad.csv"
    bad.write_text("1.jpg\n", encoding="utf-8")
    with pytest.raises(KplError, match="line 1: expected 'path,label'"):
        load_dataset(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("1.jpg,a\n1.jpg,b\n", encoding="utf-8")
    with pytest.raises(KplError, match="more than once"):
        load_dataset(twice)


def test_match_classes_by_name_and_map():
    kb = ["cat", "dog", "fish"]
    assert match_classes(["cat", "dog"], kb, "v1") == ["cat", "dog"]
    assert match_classes(["kitty", "dog"], kb, "v1", {"kitty": "cat"}) == ["cat", "dog"]


def test_match_classes_errors():
    kb = ["cat", "Golden retriever"]
    with pytest.raises(KplError, match=r"without descriptions in v1: zebra\. Available classes: Golden retriever, cat"):
        match_classes(["cat", "zebra"], kb, "v1")
    with pytest.raises(KplError, match="did you mean 'Golden retriever' for 'golden_retriever'"):
        match_classes(["golden_retriever"], kb, "v1")
    with pytest.raises(KplError, match="pass --split val"):
        match_classes(["train", "val"], kb, "v1")
    with pytest.raises(KplError, match="kitty \\(mapped to lion\\)"):
        match_classes(["kitty"], kb, "v1", {"kitty": "lion"})
    with pytest.raises(KplError, match="both map to 'cat'"):
        match_classes(["cat", "kitty"], kb, "v1", {"kitty": "cat"})


def test_labels_are_int64(tree):
    assert load_dataset(tree).labels.dtype == np.int64
