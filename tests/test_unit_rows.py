"""Issue 20, item 3: one policy for every embedding matrix read from a file (``kbuild.inputs.unit_rows``).

NaN/inf or all-zero rows are refused with one line naming the file, the array and the first bad
row; rows within 1e-3 of unit length are kept bit for bit; other rows are normalised (overflow-safe)
and counted. The readers that use it: embeddings files (``kbuild load``), features files
(image_features, name_embeddings) and Parquet bundles.
"""

from __future__ import annotations

import numpy as np
import pytest

from kbuild import inputs
from kbuild.descriptions import Description, content_hash
from kbuild.errors import InputFileError
from kbuild.inputs import unit_rows
from kbuild.store.bundle import read_bundle, write_bundle
from kbuild.store.snapshots import KnowledgeBase, SnapshotInfo


def unit(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- the policy ---------------------------------------------------------------------------------------
def test_near_unit_rows_are_kept_bit_for_bit_and_the_others_normalised_and_counted():
    x = unit(6, 16)
    x[1] *= 1 + 9e-4  # within 1e-3: kept as given
    x[2] *= 1 - 9e-4
    x[3] *= 3.0  # off: normalised
    x[5] *= 1 + 2e-3
    given = x.copy()
    result, normalised = unit_rows("f.npz", x, "embeddings")
    assert normalised == 2 and result.dtype == np.float32
    for row in (0, 1, 2, 4):
        assert np.array_equal(result[row], given[row]), row
    np.testing.assert_allclose(np.linalg.norm(result[[3, 5]].astype(np.float64), axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(result[3], given[3] / np.linalg.norm(given[3]), atol=1e-7)
    assert np.array_equal(x, given)  # the caller's array is never written into


def test_float16_and_float64_rows_come_back_float32():
    x = unit(4, 8)
    half, n_half = unit_rows("f.npz", x.astype(np.float16), "embeddings")
    wide, n_wide = unit_rows("f.npz", x.astype(np.float64), "embeddings")
    assert half.dtype == wide.dtype == np.float32 and n_half == n_wide == 0
    assert np.array_equal(half, x.astype(np.float16).astype(np.float32)) and np.array_equal(wide, x)


def test_huge_values_normalise_without_overflow():
    rows = np.zeros((3, 8))
    rows[0, :3] = 1e20
    rows[1, :2] = 1e200  # float64 only: its square overflows even float64
    rows[2, 1] = 1e-200
    result, normalised = unit_rows("f.npz", rows, "embeddings")
    assert normalised == 3 and np.isfinite(result).all()
    np.testing.assert_allclose(result[0, :3], 1 / np.sqrt(3), rtol=1e-6)
    np.testing.assert_allclose(result[1, :2], 1 / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(result[2], np.eye(8)[1], rtol=1e-6)


@pytest.mark.parametrize("bad, fragment", [
    (lambda x: x.__setitem__((4, 2), np.nan), r"image_features has NaN/inf in 1 row\(s\), first row 4"),
    (lambda x: x.__setitem__((2, 0), np.inf), r"image_features has NaN/inf in 1 row\(s\), first row 2"),
    (lambda x: x.__setitem__(slice(3, 5), 0), r"image_features has 2 all-zero row\(s\), first row 3"),
])
def test_rows_without_a_direction_are_one_line_naming_file_array_and_row(bad, fragment):
    x = unit(6, 8)
    bad(x)
    with pytest.raises(InputFileError, match=fragment) as err:
        unit_rows("/data/f.npz", x, "image_features")
    assert str(err.value).startswith("/data/f.npz: ") and "\n" not in str(err.value)


def test_the_first_bad_row_is_found_across_row_blocks(monkeypatch):
    monkeypatch.setattr(inputs, "_CHECK_BLOCK_VALUES", 8 * 3)  # blocks of 3 rows
    x = unit(20, 8)
    x[10] *= 5
    x[17] = 0
    with pytest.raises(InputFileError, match=r"1 all-zero row\(s\), first row 17"):
        unit_rows("f.npz", x, "embeddings")
    x[17] = unit(1, 8)[0]
    result, normalised = unit_rows("f.npz", x, "embeddings")
    assert normalised == 1 and abs(np.linalg.norm(result[10]) - 1) < 1e-6


def test_a_caller_chooses_its_error_type_and_fix():
    from kpl.errors import InputFileError as KplInputFileError

    with pytest.raises(KplInputFileError, match=r"first row 0 \(re-embed the class names\)"):
        unit_rows("f.npz", np.zeros((2, 4), np.float32), "name_embeddings", error=KplInputFileError,
                  fix="re-embed the class names")


# ---- every reader follows it --------------------------------------------------------------------------
def features_file(path, image_features, **extra):
    n = len(image_features)
    np.savez(path, image_features=image_features, labels=np.arange(n) % 2, class_names=np.asarray(["a", "b"]),
             **extra)
    return path


def test_name_embeddings_name_their_first_bad_row(tmp_path):
    from kpl.errors import InputFileError as KplInputFileError
    from kpl.images.features import load_features_npz

    x = unit(4, 8)
    names = x[:2].copy()
    names[1] = 0
    path = features_file(tmp_path / "f.npz", x, name_embeddings=names)
    with pytest.raises(KplInputFileError, match=r"name_embeddings has 1 all-zero row\(s\), first row 1"):
        load_features_npz(path)


def bundle_of(tmp_path, vectors: np.ndarray):
    descriptions = [Description("cat" if i % 2 else "dog", f"text {i}") for i in range(len(vectors))]
    manifest = {"content_hash": content_hash((d.class_name, d.text) for d in descriptions),
                "total": len(descriptions), "embedding_dim": vectors.shape[1], "clip": {"model_id": "my-space"}}
    kb = KnowledgeBase(SnapshotInfo("snapshot_v1", manifest), descriptions, vectors)
    return write_bundle(kb, [], tmp_path / "kb.parquet")


def test_bundle_vectors_off_unit_are_normalised_and_counted(tmp_path):
    from kbuild.ops.restore import BundleImport

    x = unit(5, 8)
    scaled = x.copy()
    scaled[2] *= 4
    bundle = read_bundle(bundle_of(tmp_path, scaled))  # the file's hashes are of its own (scaled) vectors
    assert bundle.normalised_rows == 1
    assert np.array_equal(bundle.kb.embeddings[[0, 1, 3, 4]], x[[0, 1, 3, 4]])
    np.testing.assert_allclose(bundle.kb.embeddings[2], x[2], atol=1e-7)
    assert "kb.parquet: 1 rows were not unit length and were normalised" in BundleImport(bundle).summary_lines()


def test_bundle_with_a_zero_vector_names_its_row(tmp_path):
    x = unit(5, 8)
    x[3] = 0
    with pytest.raises(InputFileError, match=r"column vector has 1 all-zero row\(s\), first row 3"):
        read_bundle(bundle_of(tmp_path, x))
