"""Bad input, both CLIs: every case exits 1 (2 for usage), prints exactly one stderr line, ``Error: ...``,
that names the problem (and, where there is one, the fix), shows no traceback, and leaves the store
exactly as it was (same collections, snapshot names, content hashes and tags).

One module-scoped store (v1 = a small bird/cat/dog knowledge base) serves every case; each case writes
its own bad file. Cases that ``test_cli_kbuild.py`` / ``test_kpl_cli.py`` already check only for
their message are repeated here only where the store check or a new variant adds something.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_kpl_features import make_image_folder

from helpers import Result, run_kbuild, store_fingerprint
from kbuild.store import SnapshotStore

PROGRESS = ("encoding images: ", "features: ")
FOUND_LATE = {"data: only corrupt images", "features: wrong dimension"}
KB = {"bird": ["feathers", "a pointed beak"], "cat": ["whiskers", "pointy ears"], "dog": ["floppy ears", "a wet nose"]}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("bad_input")
    home = root / "store"
    (root / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    result = run_kbuild("load", root / "kb.json", "--store", home, "--model", tiny_model)
    assert result.code == 0, result.err
    images = make_image_folder(root / "images", per_class=2, junk=False)
    model_id = SnapshotStore(home).resolve("v1").manifest["clip"]["model_id"]
    return SimpleNamespace(root=root, home=home, model=tiny_model, images=images, model_id=model_id)


def run(prog: str, args) -> Result:
    from kbuild.cli.app import run_with_boundary

    if prog == "kpl":
        from kpl.cli import app
    else:
        from kbuild.cli.app import app

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_with_boundary(app, prog, [str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


# ---- the files each case feeds in -------------------------------------------------------------------
def text_file(name: str, content: str | bytes):
    def make(d: Path, env) -> Path:
        path = d / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path
    return make


def sparse_file(name: str, size: int):
    """A file of ``size`` bytes that takes no disk space: the size check must refuse it before reading."""
    def make(d: Path, env) -> Path:
        path = d / name
        with open(path, "wb") as handle:
            handle.write(b'{"cat": [')
            handle.truncate(size)
        return path
    return make


def npz(name: str, features=None, labels=(0, 1, 2), names=("bird", "cat", "dog")):
    def make(d: Path, env) -> Path:
        rows = np.eye(3, 64, dtype=np.float32) if features is None else features
        # The snapshot's own model id: no note about an unnamed model comes before the error.
        np.savez(d / name, image_features=rows, labels=np.array(labels), class_names=np.array(names),
                 model_id=np.array(env.model_id))
        return d / name
    return make


def arrays_npz(name: str, **arrays):
    """An .npz of exactly these arrays (callables get the case's env, for its model id)."""
    def make(d: Path, env) -> Path:
        np.savez(d / name, **{k: v(env) if callable(v) else v for k, v in arrays.items()})
        return d / name
    return make


def kb_arrays(classes=("cat", "dog"), **override):
    arrays = {"classes": np.asarray(classes), "texts": np.asarray([f"text {i}" for i in range(len(classes))]),
              "embeddings": np.eye(len(classes), 8, dtype=np.float32), "model_id": np.asarray("space-a")}
    return {**arrays, **override}


def lying_npz(name: str, key: str, shape: tuple):
    """An .npz whose ``key`` declares ``shape`` in its npy header but holds four rows."""
    import zipfile

    def make(d: Path, env) -> Path:
        with zipfile.ZipFile(d / name, "w") as archive, archive.open(f"{key}.npy", "w") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
            handle.write(np.zeros((4, shape[1]), dtype=np.float32).tobytes())
        return d / name
    return make


def truncated_npz(name: str, key: str):
    import zipfile

    def make(d: Path, env) -> Path:
        header = io.BytesIO()
        np.lib.format.write_array(header, np.zeros((1000, 64), dtype=np.float32))
        with zipfile.ZipFile(d / name, "w") as archive:
            archive.writestr(f"{key}.npy", header.getvalue()[:5000])
        return d / name
    return make


def image_tree(kind: str):
    def make(d: Path, env) -> Path:
        root = d / kind
        if kind == "no_images":
            (root / "cat").mkdir(parents=True)
            (root / "cat" / "readme.txt").write_text("not an image")
        elif kind == "corrupt":
            (root / "cat").mkdir(parents=True)
            for i in range(2):
                (root / "cat" / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        elif kind == "unknown_class":
            make_image_folder(root, per_class=1, junk=False, classes={"cat": (200, 60, 40), "zebra": (9, 9, 9)})
        elif kind == "empty":
            root.mkdir()
        return root
    return make


def pickled(d: Path, env) -> Path:
    path = d / "kb.pkl"
    path.write_bytes(pickle.dumps({"cat": ["whiskers"]}))
    return path


def bundle(change: str):
    """v1 exported as a Parquet bundle, then damaged: ``truncated``, ``vector`` (one number changed,
    metadata kept), ``dimension`` (every vector cut to 32 of 64), ``plain`` (a parquet file kbuild did not write)."""
    def make(d: Path, env) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = d / "kb.parquet"
        assert run_kbuild("export", "v1", "--format", "parquet", path, "--store", env.home).code == 0
        table = pq.read_table(path)
        if change == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            return path
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
        if change == "vector":
            vectors[2, 5] += 0.01
        elif change == "dimension":
            vectors = np.ascontiguousarray(vectors[:, :32])
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        table = table.set_column(table.column_names.index("vector"), "vector", column)
        if change == "plain":
            table = table.select(["class", "text"]).replace_schema_metadata(None)
        pq.write_table(table.replace_schema_metadata(table.schema.metadata), path)
        return path
    return make


def free_url(d: Path, env) -> str:
    """A Chroma URL on 127.0.0.1 where nothing listens."""
    from helpers import free_port

    return f"http://127.0.0.1:{free_port()}"


# (prog, args, exit code, pattern the one line must match). Strings "{X}" in args are filled in:
# {kb} the good curated file, {data} the good image folder, {F} the case's own file.
GOOD_KB = "{kb}"
GEN = ["generate", "--classes", "{F}", "--base-url", "http://127.0.0.1:9/v1"]  # fails before any call
CASES = {
    # classes files: kbuild load --classes and kbuild generate --classes (which fails before any call)
    "classes: duplicate": ("kbuild", ["load", GOOD_KB, "--classes", "{F}"], 1,
                           r"line 3: duplicate class 'cat' \(first on line 1\)", text_file("c.txt", "cat\ndog\ncat\n")),
    "classes: BOM + CRLF, duplicate on line 3": ("kbuild", ["load", GOOD_KB, "--classes", "{F}"], 1,
                                                r"line 3: duplicate class 'bird'",
                                                text_file("c.txt", "\ufeffbird\r\ncat\r\nbird\r\n")),
    "classes: not UTF-8": ("kbuild", ["load", GOOD_KB, "--classes", "{F}"], 1, r"not UTF-8.*line 2.*UTF-8",
                           text_file("c.txt", b"cat\nd\xe9g\n")),
    "classes: empty": ("kbuild", ["load", GOOD_KB, "--classes", "{F}"], 1, "no classes found",
                       text_file("c.txt", "")),
    "classes: only comments": ("kbuild", GEN, 1,
                               "no classes found", text_file("c.txt", "# nothing\n\n")),
    "classes: very long name": ("kbuild", GEN, 1,
                                r"line 1: class name of 5000 characters \(limit",
                                text_file("c.txt", "x" * 5000 + "\n")),
    "classes: control character": ("kbuild", ["load", GOOD_KB, "--classes", "{F}"], 1, r"control character U\+0007",
                                   text_file("c.txt", "cat\nd\x07og\n")),
    "classes: empty name before colon": ("kbuild", ["load", GOOD_KB, "--classes", "{F}"], 1, "line 1",
                                         text_file("c.txt", ": a display name\n")),
    "classes: duplicate in generate": ("kbuild", GEN, 1, "duplicate class 'cat'", text_file("c.txt", "cat\ncat\n")),
    "classes: missing file": ("kbuild", ["load", GOOD_KB, "--classes", "{dir}/nope.txt"], 1, "nope.txt", None),
    "classes: curated file names an unlisted class": ("kbuild", ["load", GOOD_KB, "--classes", "{F}"], 1, "dog",
                                                      text_file("c.txt", "bird\ncat\n")),
    # curated files
    "curated: broken JSON": ("kbuild", ["load", "{F}"], 1, r"not valid JSON.*line 2",
                             text_file("kb.json", '{"cat": ["whiskers",\n ]]}')),
    "curated: top-level list": ("kbuild", ["load", "{F}"], 1, r"kb\.json: not a known curated shape",
                                text_file("kb.json", '["whiskers", "ears"]')),
    "curated: class value is a string": ("kbuild", ["load", "{F}"], 1, "not a known curated shape.*--format",
                                         text_file("kb.json", '{"cat": "whiskers"}')),
    "curated: non-string items": ("kbuild", ["load", "{F}"], 1, "cat",
                                  text_file("kb.json", '{"cat": ["whiskers", 3, null]}')),
    "curated: nested lists": ("kbuild", ["load", "{F}"], 1, "cat", text_file("kb.json", '{"cat": [["whiskers"]]}')),
    "curated: every class empty": ("kbuild", ["load", "{F}"], 1, r"Nothing to load: no descriptions in kb\.json",
                                   text_file("kb.json", '{"cat": [], "dog": ["  "]}')),
    "curated: empty file": ("kbuild", ["load", "{F}"], 1, r"kb\.json", text_file("kb.json", "")),
    "curated: not UTF-8": ("kbuild", ["load", "{F}"], 1, "UTF-8", text_file("kb.json", b'{"caf\xe9": ["x"]}')),
    "curated: huge file": ("kbuild", ["load", "{F}"], 1, r"MB", sparse_file("kb.json", 200_000_001)),
    "curated: pickle": ("kbuild", ["load", "{F}"], 1, r"kb\.pkl", pickled),
    "curated: YAML with a python tag": ("kbuild", ["load", "{F}"], 1, r"kb\.yaml",
                                        text_file("kb.yaml", "cat: !!python/object/apply:os.system ['true']\n")),
    "curated: CSV without a text column": ("kbuild", ["load", "{F}"], 1, r"kb\.csv: header",
                                           text_file("kb.csv", "class,label\ncat,x\n")),
    "curated: missing file": ("kbuild", ["load", "{dir}/nope.json"], 1, "nope.json", None),
    "curated: unknown KPL section": ("kbuild", ["load", "{F}", "--section", "Lung"], 1, "Lung",
                                     text_file("kb.json", '{"Skin_Features": {"cat": [{"feature": "fur"}]}}')),
    "curated: NUL in a class name": ("kbuild", ["load", "{F}"], 1, r"control character U\+0000 in a class name",
                                     text_file("kb.json", '{"ca\\u0000t": ["whiskers"]}')),
    "curated: newline in a class name": ("kbuild", ["load", "{F}"], 1, r"control character U\+000A",
                                         text_file("kb.json", '{"ca\\nt": ["whiskers"]}')),
    "curated: 10 000-character class name": ("kbuild", ["load", "{F}"], 1, r"class name of 10000 characters \(limit",
                                             text_file("kb.json", json.dumps({"c" * 10_000: ["whiskers"]}))),
    "curated: CSV class name with a control character": ("kbuild", ["load", "{F}"], 1, r"line 2: control character",
                                                         text_file("kb.csv", "class,text\nd\x07og,wet nose\n")),
    "curated: JSONL class name with ESC": ("kbuild", ["load", "{F}"], 1, r"line 1: control character U\+001B",
                                           text_file("kb.jsonl", '{"class": "\\u001b[31mdog", "text": "x"}\n')),
    "curated: CSV class name with a zero-width space": (
        "kbuild", ["load", "{F}"], 1, r"line 3: invisible character U\+200B in a class name",
        text_file("kb.csv", "class,text\nnevus,dots\nnevus\u200b,round\n")),
    "curated: JSON class name with a zero-width space": ("kbuild", ["load", "{F}"], 1, r"invisible character U\+200B",
                                                         text_file("kb.json", '{"nevus\\u200b": ["dots"]}')),
    "classes: zero-width character": ("kbuild", ["load", GOOD_KB, "--classes", "{F}"], 1,
                                      r"line 2: invisible character U\+200B", text_file("c.txt", "cat\nd\u200bog\n")),
    # knowledge bases with their own vectors (.npz)
    "embeddings: NUL in a class name": ("kbuild", ["load", "{F}"], 1, r"classes, row 0: control character U\+0000",
                                        arrays_npz("kb.npz", **kb_arrays(("ca\x00t", "dog")))),
    "embeddings: newline in a class name": ("kbuild", ["load", "{F}"], 1, r"control character U\+000A",
                                            arrays_npz("kb.npz", **kb_arrays(("ca\nt", "dog")))),
    "embeddings: 5000-character class name": ("kbuild", ["load", "{F}"], 1, r"class name of 5000 characters",
                                              arrays_npz("kb.npz", **kb_arrays(("c" * 5000, "dog")))),
    "embeddings: zero-width space in a class name": ("kbuild", ["load", "{F}"], 1, r"invisible character U\+200B",
                                                     arrays_npz("kb.npz", **kb_arrays(("nevus\u200b", "dog")))),
    "embeddings: header declaring 1e13 rows": ("kbuild", ["load", "{F}"], 1, r"declares .* but holds .* truncated",
                                               lying_npz("kb.npz", "embeddings", (10 ** 13, 1024))),
    "embeddings: more rows than the text cap": ("kbuild", ["load", "{F}"], 1, r"300,001 rows, over the limit",
                                                arrays_npz("kb.npz", classes=np.full(300_001, "c"),
                                                           texts=np.full(300_001, "t"), model_id=np.asarray("m"))),
    "embeddings: truncated array": ("kbuild", ["load", "{F}"], 1, r"kb\.npz: .*truncated or damaged",
                                    truncated_npz("kb.npz", "embeddings")),
    "embeddings: object array": ("kbuild", ["load", "{F}"], 1, r"texts.*without pickle",
                                 arrays_npz("kb.npz", **kb_arrays(texts=np.asarray(["a", None], dtype=object)))),
    "embeddings: model_id of two strings": ("kbuild", ["load", "{F}"], 1, r"model_id must be one string",
                                            arrays_npz("kb.npz", **kb_arrays(model_id=np.asarray(["a", "b"])))),
    # snapshot names and references
    "name: ../x": ("kbuild", ["load", GOOD_KB, "--name", "../x"], 2, "looks like a path", None),
    "name: absolute path": ("kbuild", ["load", GOOD_KB, "--name", "/tmp/x"], 2, "looks like a path", None),
    "name: too short for Chroma": ("kbuild", ["load", GOOD_KB, "--name", "ab"], 2, "not a valid snapshot name", None),
    "name: space": ("kbuild", ["load", GOOD_KB, "--name", "my kb"], 2, "not a valid snapshot name", None),
    "name: 200 characters": ("kbuild", ["load", GOOD_KB, "--name", "k" * 200], 2, "not a valid snapshot name", None),
    "name: reserved prefix": ("kbuild", ["load", GOOD_KB, "--name", "kbuild-tmp-1"], 2, "reserved", None),
    "name: reference form": ("kbuild", ["load", GOOD_KB, "--name", "v12"], 2, "reference form", None),
    "name: snapshot_vN is for automatic numbering": ("kbuild", ["load", GOOD_KB, "--name", "snapshot_v99999999999999999999"],
                                                     2, "reserved for automatic numbering", None),
    "reference: ../x": ("kbuild", ["show", "../x"], 2, "looks like a path", None),
    "reference: absolute path": ("kbuild", ["export", "/etc/passwd"], 2, "looks like a path", None),
    "reference: unknown": ("kbuild", ["verify", "v9"], 1, r"Unknown snapshot 'v9'.*snapshot_v1", None),
    "reference: unknown in kpl": ("kpl", ["eval", "--kb", "nosuch", "--data", "{data}"], 1,
                                  "Unknown snapshot 'nosuch'", None),
    "reference: path-like in kpl": ("kpl", ["eval", "--kb", "../../etc", "--data", "{data}"], 2,
                                    "looks like a path", None),
    "tag: path-like": ("kbuild", ["tag", "v1", "../up"], 2, "looks like a path", None),
    "tag: latest": ("kbuild", ["tag", "v1", "latest"], 2, "cannot be a tag", None),
    # flag values
    "flag: prune threshold above 1": ("kbuild", ["prune", "v1", "--dedup-threshold", "1.5"], 2, "dedup-threshold",
                                      None),
    "flag: prune threshold below -1": ("kbuild", ["prune", "v1", "--cross-class-threshold", "-1.01"], 2,
                                       "cross-class-threshold", None),
    "flag: prune margin outside [-1, 1]": ("kbuild", ["prune", "v1", "--min-margin", "3"], 2, "min-margin", None),
    "flag: prune negative max per class": ("kbuild", ["prune", "v1", "--max-per-class", "-2"], 2, "max-per-class",
                                           None),
    "flag: prune unknown mode": ("kbuild", ["prune", "v1", "--cross-class", "maybe"], 2, "cross-class", None),
    "flag: generate zero concurrency": ("kbuild", [*GEN, "--concurrency", "0"], 2, "concurrency",
                                        text_file("c.txt", "cat\n")),
    "flag: generate negative per-class": ("kbuild", [*GEN, "--per-class", "-5"], 2, "per-class",
                                          text_file("c.txt", "cat\n")),
    "flag: kpl negative k": ("kpl", ["eval", "--kb", "v1", "--data", "{data}", "--k", "-3"], 2, "k must be", None),
    "flag: kpl sweep k list with a negative": ("kpl", ["sweep", "--kb", "v1", "--data", "{data}", "--k", "2,-1"], 2,
                                               "k must be", None),
    "flag: kpl zero temperature": ("kpl", ["eval", "--kb", "v1", "--data", "{data}", "--tau-t", "0"], 2, "tau", None),
    "flag: kpl negative alpha": ("kpl", ["eval", "--kb", "v1", "--data", "{data}", "--alpha", "-1"], 2,
                                 r"alpha must lie in \[0, 1\]", None),
    "flag: kpl alpha above 1 in a sweep": ("kpl", ["sweep", "--kb", "v1", "--data", "{data}", "--alpha", "0.5,2"], 2,
                                           r"alpha must lie in \[0, 1\]", None),
    "flag: kpl unknown knn graph": ("kpl", ["eval", "--kb", "v1", "--data", "{data}", "--knn", "annoy"], 2,
                                    "knn must be one of auto, exact, faiss", None),
    "flag: kpl knn recall above 1": ("kpl", ["eval", "--kb", "v1", "--data", "{data}", "--knn-recall", "1.5"], 2,
                                     r"knn_recall must be a number in \(0, 1\]", None),
    "flag: kpl zero batch size": ("kpl", ["eval", "--kb", "v1", "--data", "{data}", "--batch-size", "0"], 2,
                                  "batch-size", None),
    # datasets
    "data: missing": ("kpl", ["eval", "--kb", "v1", "--data", "{dir}/nowhere"], 1, "does not exist", None),
    "data: empty folder": ("kpl", ["eval", "--kb", "v1", "--data", "{F}"], 1, "no images", image_tree("empty")),
    "data: no image files": ("kpl", ["eval", "--kb", "v1", "--data", "{F}"], 1, r"has no images \(1 non-image",
                             image_tree("no_images")),
    "data: only corrupt images": ("kpl", ["eval", "--kb", "v1", "--data", "{F}"], 1, "could be decoded",
                                  image_tree("corrupt")),
    "data: class missing from the knowledge base": ("kpl", ["eval", "--kb", "v1", "--data", "{F}"], 1, "zebra",
                                                    image_tree("unknown_class")),
    "data: missing split": ("kpl", ["eval", "--kb", "v1", "--data", "{data}", "--split", "val"], 1,
                            "No split folder 'val'", None),
    "data: bad manifest": ("kpl", ["eval", "--kb", "v1", "--data", "{F}"], 1, r"manifest\.csv",
                           text_file("manifest.csv", "path,label\nmissing.jpg\n")),
    # features files
    "features: 1-D array": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1, "2-D",
                            npz("f.npz", np.ones(64, dtype=np.float32) / 8)),
    "features: NaN rows": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1, "NaN",
                           npz("f.npz", np.where(np.eye(3, 64) == 1, np.nan, 0).astype(np.float32))),
    "features: all-zero row": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1,
                               r"f\.npz: image_features has 1 all-zero row\(s\), first row 2",
                               npz("f.npz", np.eye(3, 64, dtype=np.float32) * [[1], [1], [0]])),
    "features: labels do not match rows": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1, "labels",
                                           npz("f.npz", labels=(0, 1))),
    "features: wrong dimension": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1, "dim 32",
                                  npz("f.npz", np.eye(3, 32, dtype=np.float32))),
    "features: not an npz": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1, "npz",
                             text_file("f.npz", "image_features,labels\n")),
    "features: header declaring 1e13 rows": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1,
                                             r"image_features.*declares .* truncated",
                                             lying_npz("f.npz", "image_features", (10 ** 13, 64))),
    "features: truncated array": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1, "truncated or damaged",
                                  truncated_npz("f.npz", "image_features")),
    "features: 100 000 columns": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1, r"100000 columns \(limit",
                                  arrays_npz("f.npz", image_features=np.zeros((4, 100_000), dtype=np.float32),
                                             labels=np.zeros(4, dtype=np.int64), class_names=np.asarray(["cat"]))),
    "features: model_id of two strings": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1,
                                          r"model_id must be one string",
                                          arrays_npz("f.npz", image_features=np.eye(3, 64, dtype=np.float32),
                                                     labels=np.arange(3), model_id=np.asarray(["a", "b"]),
                                                     class_names=np.asarray(["bird", "cat", "dog"]))),
    # Parquet bundles (kbuild export --format parquet) and kbuild copy
    "bundle: truncated": ("kbuild", ["load", "{F}"], 1, r"kb\.parquet: not a readable Parquet file, truncated",
                          bundle("truncated")),
    "bundle: tampered vector": ("kbuild", ["load", "{F}"], 1, r"kb\.parquet: vector hash mismatch", bundle("vector")),
    "bundle: wrong dimension": ("kbuild", ["load", "{F}"], 1, r"row 0 has a 32-d vector but the snapshot's embedding_dim is 64",
                                bundle("dimension")),
    "bundle: not written by kbuild": ("kbuild", ["load", "{F}"], 1, "no kbuild metadata", bundle("plain")),
    "bundle: truncated in kpl": ("kpl", ["eval", "--kb", "{F}", "--data", "{data}"], 1, "not a readable Parquet file",
                                 bundle("truncated")),
    "copy: unreachable server": ("kbuild", ["copy", "v1", "--to", "{F}"], 1,
                                 r"copy to http://127\.0\.0\.1:\d+: Cannot reach the Chroma server", free_url),
    "copy: unknown snapshot": ("kbuild", ["copy", "v7", "--to", "{dir}/elsewhere"], 1, "Unknown snapshot 'v7'", None),
    "features: class not in the knowledge base": ("kpl", ["eval", "--kb", "v1", "--features", "{F}"], 1, "zebra",
                                                  npz("f.npz", names=("bird", "cat", "zebra"))),
}

def curated_set(*makers):
    """Several curated files (a.json, b.json, ...) in the case's folder; the case names them as {dir}/a.json ..."""
    def make(d: Path, env) -> Path:
        for letter, maker in zip("abcdefgh", makers):
            maker(d, env).rename(d / f"{letter}.json")
        return d / "a.json"
    return make


def many_texts(name: str, count: int):
    def make(d: Path, env) -> Path:
        path = d / name
        path.write_text(json.dumps({"cat": [f"trait number {i}" for i in range(count)]}), encoding="utf-8")
        return path
    return make


# Issue 23, bounds: each of these once ran for minutes or grew to gigabytes before a word.
CASES.update({
    "curated: three files together over the byte limit": (
        "kbuild", ["load", "{dir}/a.json", "{dir}/b.json", "{dir}/c.json"], 1,
        r"3 curated files of 450\.0 MB together, over the limit of 200\.0 MB per load",
        curated_set(sparse_file("x1", 150_000_000), sparse_file("x2", 150_000_000), sparse_file("x3", 150_000_000))),
    "curated: the text limit stops before the next file is parsed": (
        "kbuild", ["load", "{dir}/a.json", "{dir}/b.json"], 1, r"a\.json.*300,001 texts read so far",
        curated_set(many_texts("x1", 300_001), text_file("x2", "{not json"))),
    "flag: kpl sweep k range of 200 million": ("kpl", ["sweep", "--kb", "v1", "--data", "{dir}/nowhere",
                                                       "--k", "1-200000000"], 2,
                                               r"--k: the range '1-200000000' has 200000000 values", None),
    "flag: kpl embed ray address where nothing listens": (
        "kpl", ["embed", "--data", "{data}", "--engine", "ray", "--ray-address", "127.0.0.1:1"], 1,
        r"Cannot reach a Ray cluster at 127\.0\.0\.1:1 .*connection refused.*--ray-address", None),
    "flag: kpl embed ray address with an unresolvable host": (
        "kpl", ["embed", "--data", "{data}", "--engine", "ray", "--ray-address", "no-such-host.invalid:6379"], 2,
        r"--ray-address no-such-host\.invalid:6379: cannot resolve the host 'no-such-host\.invalid'", None),
    "flag: kpl embed ray address with a port over 65535": (
        "kpl", ["embed", "--data", "{data}", "--engine", "ray", "--ray-address", "127.0.0.1:70000"], 2,
        r"--ray-address 127\.0\.0\.1:70000: the port must be a number from 1 to 65535", None),
    "flag: kpl sweep k list over the cap": ("kpl", ["sweep", "--kb", "v1", "--data", "{dir}/nowhere",
                                                    "--k", "1-600,601..1200"], 2, r"--k: .* more than 1000", None),
})


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_leaves_the_store_unchanged(env, tmp_path, monkeypatch, case):
    prog, args, code, pattern, make = CASES[case]
    monkeypatch.setenv("KBUILD_STORE", str(env.home))
    monkeypatch.setenv("KPL_CLIP_MODEL", env.model)
    monkeypatch.setenv("KPL_CACHE_DIR", str(tmp_path / "features"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bad-input-test")
    monkeypatch.delenv("KBUILD_CHROMA_URL", raising=False)
    made = make(tmp_path, env) if make else None
    fill = {"{kb}": str(env.root / "kb.json"), "{data}": str(env.images), "{dir}": str(tmp_path),
            "{F}": str(made)}
    argv = [fill.get(a, a) if "{" not in a or a in fill else a.format(dir=tmp_path) for a in args]
    before = store_fingerprint(env.home)
    result = run(prog, argv)
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err
    # Progress lines may come first only where the problem shows up after the images or features are read.
    lines = [line for line in result.err.splitlines() if case not in FOUND_LATE or not line.startswith(PROGRESS)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.err
    assert re.search(pattern, lines[0]), lines[0]
    assert store_fingerprint(env.home) == before


def test_the_matrix_covers_both_clis_and_every_family():
    progs = {prog for prog, *_ in CASES.values()}
    families = {name.split(":")[0] for name in CASES}
    assert progs == {"kbuild", "kpl"} and len(CASES) >= 30
    assert families >= {"classes", "curated", "name", "reference", "flag", "data", "features", "bundle", "copy"}


def test_features_off_unit_length_are_normalised_with_a_note(env, tmp_path, monkeypatch):
    """Not bad input since issue 20: rows off unit length are normalised (``kbuild.inputs.unit_rows``),
    the run says how many, and predicts what the same features saved with unit rows predict."""
    monkeypatch.setenv("KBUILD_STORE", str(env.home))
    monkeypatch.setenv("KPL_CLIP_MODEL", env.model)
    predictions = {}
    for name, scale in (("unit", 1.0), ("scaled", 3.0)):
        features = npz(f"{name}.npz", np.eye(3, 64, dtype=np.float32) * scale)(tmp_path, env)
        result = run("kpl", ["eval", "--kb", "v1", "--features", features, "--out", tmp_path / name])
        assert result.code == 0, result.err
        noted = "3 image_features row(s) were not unit length and were normalised" in result.err
        assert noted == (scale != 1.0), result.err
        predictions[name] = (tmp_path / name / "predictions.csv").read_text()
    assert predictions["scaled"] == predictions["unit"]
