"""Knowledge bases that travel: Parquet bundles, ``kbuild copy`` between stores, provenance, the
Hugging Face dataset folder and ``kpl eval --kb FILE.parquet``.

One module-scoped embedded store A holds a snapshot of every kind (load with display names,
prune with removed records, generate through the fake LLM server over real HTTP, merge), and a
``chroma run`` server plays the team's store.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
from llm_server import FakeLLMServer

from helpers import run_kbuild, start_chroma_server, stop_process, store_fingerprint
from kbuild.clip.models import load_clip
from kbuild.store import SnapshotStore
from kbuild.store.transfer import kb_digest, lineage

KEY = "sk-travel-SECRET-5b1e0c"
KB = {"melanoma": ["irregular borders", "several colours", "irregular borders."],
      "nevus": ["round and symmetric", "one even brown colour", "a smooth edge"]}
CLASSES = "melanoma\nnevus: melanocytic nevus\n"


def ok(*args):
    result = run_kbuild(*args)
    assert result.code == 0, result.err
    return result


@pytest.fixture(scope="module")
def store_a(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("travel")
    home = root / "A"
    (root / "kb.json").write_text(json.dumps(KB), encoding="utf-8")
    (root / "classes.txt").write_text(CLASSES, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch, FakeLLMServer(["melanoma", "melanocytic nevus"], per_reply=4,
                                                              api_key=KEY) as llm:
        patch.setenv("KPL_CLIP_MODEL", tiny_model)
        patch.setenv("KBUILD_STORE", str(home))
        patch.setenv("OPENAI_API_KEY", KEY)
        patch.delenv("KBUILD_CHROMA_URL", raising=False)
        ok("load", root / "kb.json", "--classes", root / "classes.txt")                     # v1
        ok("prune", "v1", "--dedup-threshold", "0.5")                                        # v2
        made = ok("generate", "--classes", root / "classes.txt", "--base-url", llm.url, "--per-class", "4",
                  "--timeout", "2", "--concurrency", "1")                                   # v3
        assert made.out.startswith("snapshot_v3"), made.err
        ok("merge", "v2", "v3")                                                              # v4
        ok("tag", "v2", "reviewed")
        llm_host = llm.url.split("/")[2]
    store = SnapshotStore(home)
    assert [s.manifest["operation"] for s in store.list()] == ["load", "prune", "generate", "merge"]
    assert store.read("v2").removed, "the prune must remove something for the round trip to cover it"
    return SimpleNamespace(root=root, home=home, store=store, llm_host=llm_host, model=tiny_model)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_chroma_server(tmp_path_factory.mktemp("travel_server"))
    try:
        yield url
    finally:
        stop_process(proc)


def same_snapshot(a, b) -> None:
    """Same texts, classes, provenance of each text, removed records and vectors bit for bit."""
    assert a.info.content_hash == b.info.content_hash
    assert [d.to_json() for d in a.descriptions] == [d.to_json() for d in b.descriptions]
    assert [r.to_json() for r in a.removed] == [r.to_json() for r in b.removed]
    assert np.array_equal(a.embeddings, b.embeddings) and kb_digest(a) == kb_digest(b)
    for key in ("clip", "display_names", "counts", "embedding_dim", "removed_by_stage"):
        assert a.info.manifest.get(key) == b.info.manifest.get(key), key


# ---- Parquet bundles ---------------------------------------------------------------------------------

def test_every_snapshot_round_trips_through_parquet_without_an_encoder(store_a, tmp_path):
    misses = load_clip.cache_info().misses
    for info in store_a.store.list():
        bundle = tmp_path / f"{info.name}.parquet"
        ok("export", info.name, "--format", "parquet", bundle, "--store", store_a.home)
        home = tmp_path / f"B_{info.name}"
        loaded = json.loads(ok("load", bundle, "--store", home, "--json", "--model", "no-such-model").out)
        assert loaded["content_hash"] == info.content_hash
        target = SnapshotStore(home)
        restored = target.read(loaded["snapshot"])
        same_snapshot(store_a.store.read(info.name), restored)
        provenance = restored.info.manifest["provenance"]
        assert provenance["kind"] == "bundle" and provenance["original"]["snapshot"] == info.name
        assert provenance["original"]["provenance"] == info.manifest.get("provenance")
        assert provenance["lineage"] == lineage(store_a.store, info)
        assert provenance["files"][0]["sha256"] == "sha256:" + hashlib.sha256(bundle.read_bytes()).hexdigest()
        assert run_kbuild("verify", loaded["snapshot"], "--store", home).code == 0
        again = json.loads(ok("load", bundle, "--store", home, "--json").out)
        assert again["published"] is False  # a second load of the same bundle publishes nothing
    assert load_clip.cache_info().misses == misses  # no CLIP model was loaded by any of it


@pytest.mark.slow
def test_round_trip_in_server_mode(store_a, server, tmp_path):
    for info in store_a.store.list():
        first = tmp_path / f"{info.name}.parquet"
        ok("export", info.name, "--format", "parquet", first, "--store", store_a.home)
        name = f"rt-{info.name.replace('_', '-')}"
        loaded = json.loads(ok("load", first, "--chroma-url", server, "--name", name, "--json", "--force").out)
        assert loaded["content_hash"] == info.content_hash
        back = tmp_path / f"{name}.parquet"
        ok("export", name, "--format", "parquet", back, "--chroma-url", server)
        home = tmp_path / f"C_{info.name}"
        reloaded = json.loads(ok("load", back, "--store", home, "--json").out)
        same_snapshot(store_a.store.read(info.name), SnapshotStore(home).read(reloaded["snapshot"]))


def test_the_bundle_reads_as_it_is_in_pyarrow_pandas_and_datasets(store_a, tmp_path):
    import datasets
    import pandas
    import pyarrow.parquet as pq

    bundle = tmp_path / "kb.parquet"
    ok("export", "v2", "--format", "parquet", bundle, "--store", store_a.home)
    kb = store_a.store.read("v2")
    table = pq.read_table(bundle)
    assert table.num_rows == len(kb.descriptions) + len(kb.removed)
    meta = json.loads(table.schema.metadata[b"kbuild"])
    assert meta["content_hash"] == kb.info.content_hash and meta["manifest"]["operation"] == "prune"
    assert meta["model_id"] == kb.info.manifest["clip"]["model_id"]
    assert [a["name"] for a in meta["lineage"]] == ["snapshot_v1"]
    frame = pandas.read_parquet(bundle)
    removed = frame[frame.state == "removed"]
    assert len(removed) == len(kb.removed) and removed.removed_related.notna().all()
    assert set(frame.display_name) == {"melanoma", "melanocytic nevus"}
    rows = datasets.Dataset.from_parquet(str(bundle))
    assert np.array_equal(np.asarray(rows.filter(lambda r: r["state"] == "kept")["vector"], dtype=np.float32),
                          kb.embeddings)


def test_the_bundle_reads_as_it_is_in_duckdb(store_a, tmp_path):
    """DuckDB's own Parquet reader (no pyarrow in between): rows, vectors and the kbuild metadata."""
    import duckdb

    bundle = tmp_path / "kb.parquet"
    ok("export", "v2", "--format", "parquet", bundle, "--store", store_a.home)
    kb = store_a.store.read("v2")
    dim = kb.info.manifest["embedding_dim"]
    with duckdb.connect() as db:
        file = f"read_parquet('{bundle}', file_row_number = true)"
        states = dict(db.execute(f"SELECT state, count(*) FROM {file} GROUP BY state").fetchall())
        assert states == {"kept": len(kb.descriptions), "removed": len(kb.removed)}
        assert db.execute(f"SELECT DISTINCT len(vector) FROM {file}").fetchall() == [(dim,)]
        kept = db.execute(f"SELECT class, text, vector FROM {file} WHERE state = 'kept' "
                          "ORDER BY file_row_number").fetchall()
        assert [(c, t) for c, t, _ in kept] == [(d.class_name, d.text) for d in kb.descriptions]
        assert np.array_equal(np.asarray([v for _, _, v in kept], dtype=np.float32), kb.embeddings)
        counts = dict(db.execute(f"SELECT class, count(*) FROM {file} WHERE state = 'kept' GROUP BY class").fetchall())
        assert counts == kb.info.manifest["counts"]
        partners = db.execute(f"SELECT removed_reason, removed_related FROM {file} WHERE state = 'removed'").fetchall()
        assert [p for _, p in partners] == [r.related for r in kb.removed] and all(reason for reason, _ in partners)
        (raw,) = db.execute("SELECT value FROM parquet_kv_metadata(?) WHERE key = 'kbuild'", [str(bundle)]).fetchone()
    meta = json.loads(raw)
    assert meta["content_hash"] == kb.info.content_hash and meta["embedding_dim"] == dim
    assert meta["rows"] == len(kb.descriptions) + len(kb.removed) and meta["manifest"]["operation"] == "prune"


def test_hf_dataset_folder_loads_offline_with_datasets_and_with_kbuild(store_a, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    folder = tmp_path / "derm_kb"
    ok("export", "v4", "--format", "hf", folder, "--license", "cc-by-4.0", "--store", store_a.home)
    kb = store_a.store.read("v4")
    loaded = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].num_rows == len(kb.descriptions) + len(kb.removed)
    assert sorted(set(loaded["train"]["class"])) == sorted(kb.classes())
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: cc-by-4.0\n")
    for needed in ("| nevus | melanocytic nevus |", kb.info.content_hash, "datasets.load_dataset", "kbuild load",
                   kb.info.manifest["clip"]["model_id"], "snapshot_v3: generate"):
        assert needed in card, needed
    restored = json.loads(ok("load", folder / "data" / "train-00000-of-00001.parquet",
                             "--store", tmp_path / "D", "--json").out)
    assert restored["content_hash"] == kb.info.content_hash
    whole = json.loads(ok("load", folder, "--store", tmp_path / "E", "--json").out)  # the folder itself loads too
    assert whole["content_hash"] == kb.info.content_hash
    refused = run_kbuild("export", "v4", "--format", "hf", folder, "--store", store_a.home)
    assert refused.code == 1 and "not an empty folder" in refused.err  # an existing dataset is never overwritten


# ---- copy ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_copy_embedded_to_server_to_embedded_keeps_hashes_lineage_and_tags(store_a, tmp_path):
    proc, url = start_chroma_server(tmp_path / "team")
    try:
        names = [s.name for s in store_a.store.list()]
        first = json.loads(ok("copy", "--all", "--from", store_a.home, "--to", url, "--json").out)
        assert first["copied"] == names and first["tags"] == ["reviewed -> snapshot_v2"]
        again = json.loads(ok("copy", "--all", "--from", store_a.home, "--to", url, "--json").out)
        assert again["copied"] == [] and again["skipped"] == names  # idempotent
        home = tmp_path / "laptop"
        ok("copy", *names, "--from", url, "--to", home)
        for source, there, back in zip(store_a.store.list(), SnapshotStore(tmp_path, url).list(),
                                       SnapshotStore(home).list()):
            assert source.manifest == there.manifest == back.manifest  # parents, created, provenance: verbatim
            assert source.tags == back.tags
            same_snapshot(store_a.store.read(source.name), SnapshotStore(home).read(back.name))
        assert SnapshotStore(home).resolve("reviewed").name == "snapshot_v2"
    finally:
        stop_process(proc)


def test_a_killed_copy_leaves_nothing_visible(store_a, tmp_path, monkeypatch):
    from kbuild.store import transfer

    class Killed(BaseException):
        pass

    def killed(*_args, **_kwargs):
        raise Killed()

    home = tmp_path / "target"
    ok("copy", "v1", "--from", store_a.home, "--to", home)
    before = store_fingerprint(home)
    with monkeypatch.context() as patch:  # killed after the records are in, before the name is claimed
        patch.setattr(transfer, "_check_arrival", killed)
        patch.setattr(SnapshotStore, "_drop_pending", lambda *a: None)  # a real kill cleans nothing up
        with pytest.raises(Killed):
            run_kbuild("copy", "v2", "--from", store_a.home, "--to", home)
    after = store_fingerprint(home)
    assert after["snapshots"] == before["snapshots"]
    assert [c for c in after["collections"] if c not in before["collections"]][0].startswith("kbuild-tmp-")
    assert "removed 1 unfinished write" in ok("gc", "--store", home).out
    ok("copy", "v2", "--from", store_a.home, "--to", home)  # the rerun completes it
    assert [s.name for s in SnapshotStore(home).list()] == ["snapshot_v1", "snapshot_v2"]


def test_copy_refuses_a_name_the_target_uses_for_other_content(store_a, tmp_path):
    home = tmp_path / "other"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"cat": ["whiskers"]}), encoding="utf-8")
    ok("load", other, "--store", home, "--model", store_a.model)
    before = store_fingerprint(home)
    result = run_kbuild("copy", "--all", "--from", store_a.home, "--to", home)
    assert result.code == 1 and result.err.count("\n") == 1 and "snapshot_v1" in result.err
    assert "nothing was copied" in result.err and store_fingerprint(home) == before


# ---- provenance ------------------------------------------------------------------------------------

def test_generated_snapshots_record_prompt_llm_sampling_and_calls_never_the_key(store_a, tmp_path):
    from kbuild.sources.llm.prompts import load_prompt

    info = store_a.store.resolve("v3")
    p = info.manifest["provenance"]
    prompt = load_prompt(info.manifest["parameters"]["prompt"])
    assert p["kind"] == "generated" and p["prompt"]["system"] == prompt.system and p["prompt"]["user"] == prompt.user
    assert p["prompt"]["hash"] == prompt.hash and p["llm"]["host"] == store_a.llm_host
    assert p["sampling"]["per_class"] == 4 and "temperature" in p["sampling"]
    assert p["calls"]["calls"] >= 2 and p["calls"]["prompt_tokens"] > 0 and "cache_hits" in p["calls"]
    bundle = tmp_path / "gen.parquet"
    ok("export", "v4", "--format", "parquet", bundle, "--store", store_a.home)
    exported = ok("export", "v4", "--format", "json", "--store", store_a.home).out
    shown = ok("show", "v3", "--store", store_a.home).out
    for text in (json.dumps(info.manifest), exported, shown, bundle.read_bytes().decode("latin-1")):
        assert KEY not in text
    payload = json.loads(exported)  # the merge's json export carries its ancestors' provenance
    generated = next(a for a in payload["lineage"] if a["name"] == "snapshot_v3")
    assert generated["provenance"]["prompt"]["system"] == prompt.system
    assert "made by:" in shown and "llm calls:" in shown and "from the call log" in shown


def test_loaded_snapshots_record_each_file_name_and_sha256_in_show_json_and_serve(store_a):
    from kbuild.serve.service import ReviewService

    p = store_a.store.resolve("v1").manifest["provenance"]
    files = {f["name"]: f["sha256"] for f in p["files"]}
    for name in ("kb.json",):
        assert files[name] == "sha256:" + hashlib.sha256((store_a.root / name).read_bytes()).hexdigest()
    assert f"source: kb.json {files['kb.json'][:19]}" in ok("show", "v1", "--store", store_a.home).out
    assert json.loads(ok("export", "v1", "--store", store_a.home).out)["manifest"]["provenance"] == p
    page = ReviewService(store_a.store).snapshot("v2")
    assert page["lineage"][0]["provenance"] == p and page["manifest"]["operation"] == "prune"


# ---- kpl eval on a bundle --------------------------------------------------------------------------

def test_kpl_eval_reads_a_bundle_without_a_store(kbuild, kpl, shared_dir, tmp_path, monkeypatch):
    from test_own_embeddings import ph2_files

    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "store"))
    for name in ("KPL_CLIP_MODEL", "KPL_CLIP_PRETRAINED", "KBUILD_CHROMA_URL"):
        monkeypatch.delenv(name, raising=False)
    kb, feats, _ = ph2_files(shared_dir, tmp_path)
    assert kbuild("load", kb).code == 0
    bundle = tmp_path / "ph2.parquet"
    assert kbuild("export", "latest", "--format", "parquet", bundle).code == 0
    from_store = kpl("eval", "--kb", "latest", "--features", feats, "--json", "--iters", "50")
    assert from_store.code == 0, from_store.err
    monkeypatch.setenv("KBUILD_STORE", str(tmp_path / "nowhere"))
    from_file = kpl("eval", "--kb", bundle, "--features", feats, "--json", "--iters", "50")
    assert from_file.code == 0, from_file.err
    metrics = ("accuracy", "balanced_accuracy", "macro_f1")
    table = {row: {k: v[k] for k in metrics} for row, v in json.loads(from_file.out)["results"].items()}
    assert table == {row: {k: v[k] for k in metrics} for row, v in json.loads(from_store.out)["results"].items()}
    assert not (tmp_path / "nowhere").exists()  # no store was opened (or created) for the bundle
