"""Image features: encoding through a DataLoader, the feature cache, and .npz feature files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kpl.errors import InputFileError, KplError
from kpl.images.datasets import load_dataset
from kpl.images.features import FeatureSet, cache_key, encode_dataset, encode_images, load_features_npz, save_features_npz

COLORS = {"bird": (40, 60, 200), "cat": (200, 60, 40), "dog": (60, 180, 60)}


def make_image_folder(root: Path, per_class: int = 6, size: int = 32, seed: int = 0,
                      classes: dict | None = None, junk: bool = True) -> Path:
    """Small coloured JPEGs in ``root/<class>/``, plus (with ``junk``) a text file and a corrupt .jpg."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, color in (classes or COLORS).items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.jpg", quality=90)
    if junk:
        first, second = list(classes or COLORS)[:2]
        (root / first / "notes.txt").write_text("not an image")
        (root / second / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


@pytest.fixture(scope="module")
def tiny_clip(tiny_model):
    from kbuild.clip.models import load_clip

    return load_clip(tiny_model, None)


@pytest.fixture()
def images(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images")


def test_encode_skips_corrupt_and_caches(images, tiny_clip, tmp_path):
    ds = load_dataset(images)
    assert len(ds) == 19 and ds.skipped == {"non_image": [str(images / "bird" / "notes.txt")]}
    first = encode_dataset(ds, tiny_clip, tmp_path / "cache")
    assert first.cache["status"] == "miss" and first.encoded == 19
    assert first.features.shape == (18, 64) and first.features.dtype == np.float32
    assert np.allclose(np.linalg.norm(first.features, axis=1), 1, atol=1e-5)
    assert [Path(p).name for p in first.corrupt] == ["broken.jpg"]
    assert len(first.labels) == 18 and len(first.paths) == 18
    second = encode_dataset(load_dataset(images), tiny_clip, tmp_path / "cache")
    assert second.cache["status"] == "hit" and second.encoded == 0
    assert np.array_equal(first.features, second.features) and second.corrupt == first.corrupt


def test_cache_key_follows_files_model_and_preprocessing(images, tiny_clip, tmp_path):
    ds = load_dataset(images)
    key = cache_key("m", "pre", "fp32", ds.paths)
    assert cache_key("m", "pre", "fp32", ds.paths) == key
    assert cache_key("other", "pre", "fp32", ds.paths) != key
    assert cache_key("m", "pre2", "fp32", ds.paths) != key
    assert cache_key("m", "pre", "fp32", ds.paths[1:]) != key
    stat = ds.paths[0].stat()
    os.utime(ds.paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache_key("m", "pre", "fp32", ds.paths) != key
    encode_dataset(ds, tiny_clip, tmp_path / "cache")
    again = encode_dataset(load_dataset(images), tiny_clip, tmp_path / "cache")
    assert again.cache["status"] == "hit"
    (images / "cat" / "new.png").write_bytes((images / "cat" / "000.jpg").read_bytes())
    assert encode_dataset(load_dataset(images), tiny_clip, tmp_path / "cache").cache["status"] == "miss"


def test_worker_processes_keep_order(images, tiny_clip):
    paths = load_dataset(images).paths
    serial, ok0 = encode_images(paths, tiny_clip, batch_size=4, workers=0)
    parallel, ok2 = encode_images(paths, tiny_clip, batch_size=4, workers=2)
    assert np.array_equal(ok0, ok2)
    assert np.allclose(serial, parallel, atol=1e-6)


def test_no_decodable_images_is_an_error(tmp_path, tiny_clip):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(KplError, match="could be decoded"):
        encode_dataset(load_dataset(tmp_path), tiny_clip, None)


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_npz_round_trip(tmp_path):
    fs = FeatureSet(unit_rows(5, 8), np.array([0, 1, 1, 0, 2]), ["a", "b", "c"], "ViT-B-32/openai",
                    [f"/x/{i}.jpg" for i in range(5)])
    back = load_features_npz(save_features_npz(fs, tmp_path / "f.npz"))
    assert np.array_equal(back.features, fs.features) and back.labels.tolist() == [0, 1, 1, 0, 2]
    assert back.class_names == ["a", "b", "c"] and back.model_id == "ViT-B-32/openai"
    assert back.paths == fs.paths and back.cache == {"status": "file"}


def write(tmp_path, name="f.npz", **arrays) -> Path:
    base = {"image_features": unit_rows(4, 8), "labels": np.array([0, 1, 0, 1]), "class_names": np.array(["a", "b"])}
    base.update(arrays)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"labels": None}, "missing key\\(s\\) labels"),
    ({"image_features": np.ones(8, dtype=np.float32)}, "must be a non-empty 2-D float array"),
    ({"labels": np.array([0, 1, 0])}, "labels must be 4 integers"),
    ({"labels": np.array([0.0, 1, 0, 1])}, "labels must be 4 integers"),
    ({"labels": np.array([0, 1, 0, 2])}, "there are 2 class_names"),
    ({"class_names": np.array(["a", "a"])}, "duplicates"),
    ({"image_features": np.full((4, 8), np.nan, dtype=np.float32)}, "NaN/inf in 4 row"),
    ({"image_features": unit_rows(4, 8) * [[1], [0], [1], [0]]}, r"image_features has 2 all-zero row\(s\), first row 1"),
    ({"class_names": np.array(["a", "b"], dtype=object)}, "without pickle"),
])
def test_npz_errors(tmp_path, arrays, message):
    path = write(tmp_path, **arrays)
    with pytest.raises(InputFileError, match=message) as err:
        load_features_npz(path)
    assert str(path) in str(err.value)


def test_npz_rows_off_unit_length_are_normalised_and_noted(tmp_path):
    """Issue 20: a features file follows the one policy for embedding matrices (kbuild.inputs.unit_rows):
    rows off unit length are normalised and counted, the others kept bit for bit."""
    from kpl.images.features import feature_notes

    x = unit_rows(4, 8)
    scaled = x * np.array([[3], [1], [1], [0.5]], dtype=np.float32)
    fs = load_features_npz(write(tmp_path, image_features=scaled, name_embeddings=unit_rows(2, 8, seed=1) * 2))
    np.testing.assert_allclose(fs.features, x, atol=1e-7)
    assert np.array_equal(fs.features[1:3], x[1:3])
    assert fs.normalised == {"image_features": 2, "name_embeddings": 2}
    assert feature_notes(fs, None) == ["2 image_features row(s) were not unit length and were normalised",
                                       "2 name_embeddings row(s) were not unit length and were normalised"]
    unit = load_features_npz(write(tmp_path, "unit.npz", image_features=x))
    assert unit.normalised == {} and feature_notes(unit, None) == [] and np.array_equal(unit.features, x)


def test_npz_not_a_file(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_features_npz(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_text("hello")
    with pytest.raises(InputFileError, match="not a readable .npz"):
        load_features_npz(tmp_path / "junk.npz")


def test_unwritable_cache_keeps_the_features(images, tiny_clip, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    fs = encode_dataset(load_dataset(images), tiny_clip, blocker)
    assert fs.features.shape == (18, 64) and fs.cache["status"] == "miss"
    assert "Cannot write the feature cache" in fs.cache["error"] and "--no-cache" in fs.cache["error"]
