"""Issue 23, second hardening pass: data loss and wrong results (load/latest, npz identity and
vectors), the one class-name rule for every reader, and npz files checked from their headers before
anything big is read. Real Chroma stores, the real CLI boundary, no mocks."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import run_forked, run_subprocess
from kbuild.errors import InputFileError
from kbuild.inputs import read_npz
from kbuild.sources.embedded import read_embedded
from kbuild.store import SnapshotStore


def kb_npz(path: Path, classes=("cat", "dog"), texts=("whiskers", "a wet nose"), embeddings=None,
           model_id="space-a") -> Path:
    vectors = np.eye(len(texts), 8, dtype=np.float32) if embeddings is None else embeddings
    np.savez(path, classes=np.asarray(classes), texts=np.asarray(texts), embeddings=vectors,
             model_id=np.asarray(model_id))
    return path


def one_error_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert result.code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.err
    assert "Traceback" not in result.err
    return lines[0]


# ---- item 3: load A; load B; load A leaves latest on A --------------------------------------------
def test_loading_an_earlier_content_again_makes_it_latest(kbuild, clip_env, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"cat": ["whiskers", "soft fur"]}))
    b.write_text(json.dumps({"dog": ["a wet nose", "floppy ears"]}))
    assert kbuild("load", a).code == 0 and kbuild("load", b).code == 0
    third = kbuild("load", a, "--json")
    assert third.code == 0, third.err
    assert third.json()["published"] is True and third.json()["snapshot"] == "snapshot_v3"
    assert "same content as snapshot_v1" in third.err and "latest" in third.err
    store = SnapshotStore(clip_env)
    assert store.resolve("latest").content_hash == store.resolve("v1").content_hash
    # Right after, the same load again is a rerun that changes nothing: latest already holds it.
    again = kbuild("load", a, "--json")
    assert again.json()["published"] is False and again.json()["snapshot"] == "snapshot_v3"


# ---- item 4: new vectors under the same texts are new content -------------------------------------
def test_reimporting_an_npz_with_new_vectors_publishes_them(kbuild, clip_env, tmp_path):
    first = kb_npz(tmp_path / "kb.npz")
    assert kbuild("load", first).code == 0
    same = kbuild("load", first, "--json")
    assert same.json()["published"] is False
    rotated = np.roll(np.eye(2, 8, dtype=np.float32), 3, axis=1)
    second = kb_npz(tmp_path / "kb.npz", embeddings=rotated)
    again = kbuild("load", second, "--json")
    assert again.code == 0 and again.json()["published"] is True, again.err
    stored = SnapshotStore(clip_env).read("latest").embeddings
    np.testing.assert_array_equal(stored, rotated)


# ---- item 5: huge finite values are normalised, not zeroed -----------------------------------------
def test_rows_with_huge_finite_values_normalise_to_unit_rows(tmp_path):
    rows = np.zeros((2, 8), dtype=np.float32)
    rows[0, :3] = 1e20
    rows[1, 0] = 3e38
    imported = read_embedded(kb_npz(tmp_path / "kb.npz", embeddings=rows))
    norms = np.linalg.norm(imported.embeddings.astype(np.float64), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-6)
    np.testing.assert_allclose(imported.embeddings[0, :3], 1 / np.sqrt(3), rtol=1e-6)


def test_huge_float64_rows_normalise_too(tmp_path):
    rows = np.zeros((2, 8), dtype=np.float64)
    rows[0, :2] = 1e200
    rows[1, 1] = 1e-200
    imported = read_embedded(kb_npz(tmp_path / "kb.npz", embeddings=rows))
    np.testing.assert_allclose(imported.embeddings[0, :2], 1 / np.sqrt(2), rtol=1e-6)
    np.testing.assert_allclose(imported.embeddings[1], np.eye(8)[1], rtol=1e-6)


# ---- item 6: one rule for model_id in KB and features files ----------------------------------------
def test_a_one_element_model_id_means_the_same_in_both_readers(tmp_path):
    from kpl.images.features import load_features_npz

    kb = tmp_path / "kb.npz"
    np.savez(kb, classes=np.asarray(["cat", "dog"]), texts=np.asarray(["a", "b"]),
             embeddings=np.eye(2, 8, dtype=np.float32), model_id=np.asarray(["space-a"]))
    feats = tmp_path / "f.npz"
    np.savez(feats, image_features=np.eye(2, 8, dtype=np.float32), labels=np.array([0, 1]),
             class_names=np.asarray(["cat", "dog"]), model_id=np.asarray(["space-a"]))
    assert read_embedded(kb).model_id == "space-a"
    assert load_features_npz(feats).model_id == "space-a"


def test_a_model_id_of_another_shape_is_refused_by_both_readers(tmp_path):
    from kpl.images.features import load_features_npz

    feats = tmp_path / "f.npz"
    np.savez(feats, image_features=np.eye(2, 8, dtype=np.float32), labels=np.array([0, 1]),
             class_names=np.asarray(["cat", "dog"]), model_id=np.asarray(["a", "b"]))
    with pytest.raises(InputFileError, match="model_id"):
        load_features_npz(feats)
    kb = tmp_path / "kb.npz"
    np.savez(kb, classes=np.asarray(["cat", "dog"]), texts=np.asarray(["a", "b"]),
             embeddings=np.eye(2, 8, dtype=np.float32), model_id=np.asarray(["a", "b"]))
    with pytest.raises(InputFileError, match="model_id"):
        read_embedded(kb)


# ---- item 9 (npz parts) and item 18: sizes from the headers, before reading ------------------------
def lying_npz(path: Path, key: str, shape: tuple, real_rows: int = 4) -> Path:
    """An .npz whose member ``key`` declares ``shape`` in its npy header but holds a few rows only."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    body = np.zeros((real_rows, shape[1]), dtype=np.float32).tobytes()
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open(f"{key}.npy", "w") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            handle.write(body)
    return path


def test_an_npz_header_declaring_1e13_rows_is_refused_before_any_allocation(tmp_path):
    path = lying_npz(tmp_path / "kb.npz", "embeddings", (10 ** 13, 1024))
    with pytest.raises(InputFileError, match=r"declares .* but holds"):
        read_npz(path, "embeddings file")


def test_a_compressed_npz_over_the_text_cap_is_refused_from_its_header(tmp_path):
    from kbuild.sources.curated import DEFAULT_MAX_TEXTS

    rows = DEFAULT_MAX_TEXTS + 1
    path = tmp_path / "kb.npz"
    np.savez_compressed(path, classes=np.full(rows, "c"), texts=np.full(rows, "t"),
                        embeddings=np.zeros((rows, 4), dtype=np.float32), model_id=np.asarray("m"))
    with pytest.raises(InputFileError, match=r"300,001 rows, over the limit of 300,000"):
        read_embedded(path)


def test_a_features_npz_that_expands_a_thousandfold_is_refused_before_reading(tmp_path):
    from kpl.images.features import load_features_npz

    path = tmp_path / "f.npz"
    np.savez_compressed(path, image_features=np.zeros((70_000, 1024), dtype=np.float32),
                        labels=np.zeros(70_000, dtype=np.int64), class_names=np.asarray(["cat"]))
    assert path.stat().st_size < 2_000_000
    with pytest.raises(InputFileError, match=r"image_features.*expands"):
        load_features_npz(path)


def test_a_features_npz_whose_header_shapes_disagree_is_refused_before_reading(tmp_path):
    from kpl.images.features import load_features_npz

    path = tmp_path / "f.npz"
    np.savez(path, image_features=np.zeros((4, 100_000), dtype=np.float32), labels=np.zeros(4, dtype=np.int64),
             class_names=np.asarray(["cat"]))
    with pytest.raises(InputFileError, match=r"image_features.*100000 columns"):
        load_features_npz(path)


def test_a_truncated_npz_is_called_truncated_not_a_pickle_problem(tmp_path):
    path = tmp_path / "kb.npz"
    np.savez(path, embeddings=np.zeros((1000, 64), dtype=np.float32))
    data = bytearray(path.read_bytes())
    # Cut the array's data short inside the zip member, keeping the archive readable.
    start = data.index(b"\x93NUMPY")
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("embeddings.npy")
        archive.writestr(info, bytes(data[start:start + 5000]))
    with pytest.raises(InputFileError) as err:
        read_npz(path, "embeddings file")
    assert "pickle" not in str(err.value) and "truncated" in str(err.value)


def test_an_object_array_is_refused_from_its_header(tmp_path):
    path = tmp_path / "kb.npz"
    np.savez(path, texts=np.asarray(["a", None], dtype=object))
    with pytest.raises(InputFileError, match=r"texts.*pickle"):
        read_npz(path, "embeddings file")


# ---- item 13: one class-name rule for every reader ------------------------------------------------
@pytest.mark.parametrize("name, pattern", [
    ("ca\x00t", r"control character U\+0000"),
    ("ca\nt", r"control character U\+000A"),
    ("c" * 5000, r"class name of 5000 characters"),
    ("nevus\u200b", r"invisible character U\+200B"),
])
def test_npz_class_names_follow_the_rules(tmp_path, name, pattern):
    path = kb_npz(tmp_path / "kb.npz", classes=(name, "dog"))
    with pytest.raises(InputFileError, match=pattern):
        read_embedded(path)


def test_npz_class_names_are_nfc_stripped_and_case_collisions_are_said(tmp_path):
    path = kb_npz(tmp_path / "kb.npz", classes=("caf\u00e9", "cafe\u0301 ", "Nevus", "nevus"),
                  texts=("a", "b", "c", "d"))
    imported = read_embedded(path)
    assert imported.classes() == ["caf\u00e9", "Nevus", "nevus"]
    assert any("differ only in letter case" in line and "Nevus" in line for line in imported.summary_lines())


def test_trailing_spaces_do_not_make_a_second_class_in_csv_or_json(tmp_path):
    from kbuild.sources.curated import load_curated

    csv_file = tmp_path / "kb.csv"
    csv_file.write_text("class,text\nnevus,brown dots\nnevus ,a round shape\n")
    json_file = tmp_path / "kb.json"
    json_file.write_text(json.dumps({"nevus": ["brown dots"], " nevus": ["a round shape"]}))
    for path in (csv_file, json_file):
        assert {d.class_name for d in load_curated([path]).descriptions} == {"nevus"}, path


def test_zero_width_characters_in_csv_names_are_refused(tmp_path):
    from kbuild.sources.curated import load_curated

    path = tmp_path / "kb.csv"
    path.write_text("class,text\nnevus,brown dots\nnevus\u200b,a round shape\n")
    with pytest.raises(InputFileError, match=r"line 3: invisible character U\+200B"):
        load_curated([path])


def test_a_classes_file_follows_the_same_rule(tmp_path):
    from kbuild.classes_file import parse_classes_file

    path = tmp_path / "classes.txt"
    path.write_text("nevus\nmela\u200bnoma\n")
    with pytest.raises(InputFileError, match=r"line 2: invisible character U\+200B"):
        parse_classes_file(path)


# ---- items 1, 15, 16: the store's own files --------------------------------------------------------
@pytest.fixture(scope="module")
def written_once(tmp_path_factory) -> Path:
    """A store with one 3000-description snapshot (own vectors, no CLIP), enough records that Chroma
    has moved them from its log into the vector index files (600 were not). Written once per module."""
    rng = np.random.default_rng(0)
    texts = [f"trait {i}" for i in range(3000)]
    classes = [f"class {i % 6}" for i in range(3000)]
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    root = tmp_path_factory.mktemp("written")
    home = root / "store"
    # Written by another process, which flushes the vector index to disk when it exits.
    result = run_subprocess("kbuild", "load", kb_npz(root / "kb.npz", classes, texts, vectors), "--store", home)
    assert result.code == 0, result.err
    assert list_segments(home), "Chroma wrote no segment folder"
    return home


@pytest.fixture()
def written_store(written_once, tmp_path) -> Path:
    """This test's own copy of the written store (the tests damage it)."""
    import shutil

    return Path(shutil.copytree(written_once, tmp_path / "store"))


def list_segments(home: Path) -> list[Path]:
    from kbuild.store.damage import segment_dirs

    return segment_dirs(home / "chroma")


def forget_client(home: Path) -> None:
    """Drop this process's cached Chroma client for ``home`` (the next command opens the files afresh)."""
    from kbuild.store.client import _forget_broken_client

    _forget_broken_client(home / "chroma")


def test_a_blank_recreated_database_is_damage_and_gc_deletes_nothing(kbuild, written_store):
    import chromadb
    from chromadb.config import Settings

    home = written_store
    forget_client(home)
    (home / "chroma" / "chroma.sqlite3").unlink()
    chromadb.PersistentClient(path=str(home / "chroma"), settings=Settings(anonymized_telemetry=False)).heartbeat()
    forget_client(home)
    segments = list_segments(home)
    for command in (["list"], ["gc"]):
        line = one_error_line(kbuild(*command, "--store", home))
        assert "is damaged" in line and "segment folder" in line, line
    assert list_segments(home) == segments


def test_a_killed_first_write_then_gc_leaves_a_usable_store(kbuild, tmp_path, monkeypatch):
    from helpers import killed_before_publish

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    path = kb_npz(tmp_path / "kb.npz", [f"c{i % 3}" for i in range(600)], [f"t {i}" for i in range(600)], vectors)
    home = tmp_path / "store"
    with killed_before_publish(monkeypatch):
        kbuild("load", path, "--store", home)
    assert kbuild("gc", "--store", home).code == 0
    forget_client(home)
    listed = kbuild("list", "--store", home)
    assert listed.code == 0 and "No snapshots" in listed.out + listed.err, listed.err
    assert kbuild("load", path, "--store", home).code == 0


def _damage(kind: str, segment: Path) -> None:
    import shutil

    if kind == "index_metadata.pickle":
        (segment / kind).write_bytes(b"garbage garbage")
    elif kind == "header.bin":
        (segment / kind).write_bytes(b"\xff" * (segment / kind).stat().st_size)
    elif kind == "data_level0.bin":
        with open(segment / kind, "r+b") as handle:
            handle.truncate(1000)
    else:
        shutil.rmtree(segment)


@pytest.mark.parametrize("kind", ["index_metadata.pickle", "header.bin", "data_level0.bin", "segment folder"])
def test_damage_outside_the_database_is_called_damage(forks, written_store, kind):
    home = written_store
    _damage(kind, list_segments(home)[0])
    # A fresh process: this one's Chroma keeps the vector index it already loaded in memory.
    line = one_error_line(run_forked(forks, "kbuild", "verify", "v1", "--store", home))
    assert "is damaged" in line and "restore" in line, line


def test_a_damaged_text_embedding_cache_is_rebuilt(kbuild, clip_env, tmp_path):
    from kbuild.clip.text import cache_path

    path = tmp_path / "kb.json"
    path.write_text(json.dumps({"cat": ["whiskers"], "dog": ["a wet nose"]}))
    assert kbuild("load", path).code == 0
    cache_path(clip_env).write_bytes(b"\x00garbage" * 100)
    path.write_text(json.dumps({"cat": ["whiskers", "soft fur"], "dog": ["a wet nose"]}))
    result = kbuild("load", path)
    assert result.code == 0, result.err
    assert kbuild("prune", "latest").code == 0


def test_rm_while_an_export_reads_the_snapshot_is_one_line(kbuild, written_store):
    from kbuild import progress

    home = written_store

    class RemoveOnRead:
        def start(self, label, total):
            if label.startswith("reading"):
                SnapshotStore(home).remove("v1", force=True)

        def update(self, handle, done):
            pass

        def finish(self, handle):
            pass

    from kbuild.ops.inspect import export_text

    previous = progress.set_sink(RemoveOnRead())
    try:
        from kbuild.errors import SnapshotNotFound

        with pytest.raises(SnapshotNotFound, match=r"snapshot_v1 was removed while it was being read"):
            export_text(SnapshotStore(home).read("v1"), "csv")
    finally:
        progress.set_sink(previous)


# ---- item 2: the identity of a transformers folder with sharded weights -----------------------------
def sharded_hf_clip(folder: Path, seed: int) -> Path:
    """The tiny transformers CLIP saved in several safetensors shards plus their index json."""
    from hf_tiny import build_tiny_hf_clip_dir
    from transformers import CLIPModel

    build_tiny_hf_clip_dir(folder, seed=seed)
    model = CLIPModel.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="2MB")
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("model-*.safetensors"))) > 1
    return folder


@pytest.mark.slow
def test_sharded_transformers_folders_get_their_own_ids(tmp_path):
    pytest.importorskip("transformers")
    from kbuild.clip.models import ModelSpec, model_id

    a = sharded_hf_clip(tmp_path / "a" / "hfmodel", seed=0)
    b = sharded_hf_clip(tmp_path / "b" / "hfmodel", seed=1)
    id_a, id_b = (model_id(ModelSpec(f"transformers:{f}", None)) for f in (a, b))
    assert "no-weights" not in id_a and id_a != id_b
    # A stale single-file checkpoint beside the shards is not what transformers loads: it is not hashed.
    (a / "pytorch_model.bin").write_bytes(b"stale weights of an older save")
    assert model_id(ModelSpec(f"transformers:{a}", None)) == id_a
    (a / "pytorch_model.bin").write_bytes(b"other stale weights")
    assert model_id(ModelSpec(f"transformers:{a}", None)) == id_a
    # Changing one shard changes the id.
    shard = sorted(a.glob("model-*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    assert model_id(ModelSpec(f"transformers:{a}", None)) != id_a


# ---- item 14: bad shard and cache files are encoded again, with one note ----------------------------
def _shards(tmp_path, dim=4):
    from kpl.images.features import FeatureCache
    from kpl.images.shards import ShardFolder

    shards = ShardFolder(FeatureCache(tmp_path), "cd" * 32, 12, shard_size=4, dim=dim)
    for start, stop in shards.ranges:
        rows = np.eye(stop - start, dim, dtype=np.float32)
        shards.write(start, stop, rows, np.ones(stop - start, dtype=bool))
    return shards


def test_shards_that_fail_their_checks_are_missing_not_joined(tmp_path):
    shards = _shards(tmp_path)
    assert shards.missing() == []
    shards.write(0, 4, np.eye(4, 7, dtype=np.float32), np.ones(4, dtype=bool))  # another width
    np.save(shards.file(4, 8), np.zeros((4, 4), dtype=np.float32))  # a .npy under a shard's name
    shards.file(4, 8).with_suffix(".npz.npy").rename(shards.file(4, 8))
    nan = np.eye(4, 4, dtype=np.float32)
    nan[1, 1] = np.nan
    shards.write(8, 12, nan, np.ones(4, dtype=bool))
    assert shards.missing() == [(0, 4), (4, 8), (8, 12)]
    assert len(shards.rejected) == 3


def test_a_cache_entry_with_nan_rows_is_encoded_again_with_one_note(kpl, clip_env, tmp_path):
    from test_kpl_features import make_image_folder

    images = make_image_folder(tmp_path / "images", per_class=2, junk=False)
    cache = tmp_path / "cache"
    first = kpl("embed", "--data", images, "--cache-dir", cache, "--json")
    assert first.code == 0, first.err
    entry = next(cache.glob("*.npz"))
    with np.load(entry) as data:
        arrays = dict(data)
    arrays["features"][0, 0] = np.nan
    np.savez(entry, **arrays)
    second = kpl("embed", "--data", images, "--cache-dir", cache, "--json")
    assert second.code == 0, second.err
    assert second.json()["cache"]["status"] == "miss"
    notes = [line for line in second.err.splitlines() if "failed its checks" in line]
    assert len(notes) == 1 and "NaN" in notes[0], second.err
    with np.load(entry) as data:
        assert np.isfinite(data["features"]).all()
    third = kpl("embed", "--data", images, "--cache-dir", cache, "--json")
    assert third.json()["cache"]["status"] == "hit"


def test_features_class_names_follow_the_same_rule(tmp_path):
    from kpl.images.features import load_features_npz

    path = tmp_path / "f.npz"
    np.savez(path, image_features=np.eye(2, 8, dtype=np.float32), labels=np.array([0, 1]),
             class_names=np.asarray(["nevus ", "cafe\u0301"]))
    assert load_features_npz(path).class_names == ["nevus", "caf\u00e9"]
    np.savez(path, image_features=np.eye(2, 8, dtype=np.float32), labels=np.array([0, 1]),
             class_names=np.asarray(["nevus", "nevus\u200b"]))
    with pytest.raises(InputFileError, match=r"invisible character U\+200B"):
        load_features_npz(path)
