"""SnapshotStore against a real embedded Chroma: publish, resolve, read back, immutability, tags,
names, verify, gc of pending collections, and concurrent writers in separate processes."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import cli_env, finish_forked, write_class_lists
from kbuild.descriptions import Description, content_hash
from kbuild.errors import KbuildError, SnapshotNotFound, UsageError
from kbuild.ops.inspect import verify
from kbuild.store import RemovedRecord, SnapshotStore
from kbuild.store.manifest import SnapshotDraft
from kbuild.store.names import PENDING_PREFIX

CLIP = {"model": "test", "pretrained": None, "model_id": "test/random", "template": "{} {}"}


class SimulatedCrash(BaseException):
    """Stands in for a kill: not an ``Exception``, so no cleanup handler runs."""


def unit_rows(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def make_draft(classes: int = 3, per_class: int = 4, dim: int = 16, seed: int = 0, tag: str = "",
               parents: list[str] | None = None, removed: int = 0) -> SnapshotDraft:
    # Classes interleave so write order differs from sorted order: read-back order is tested.
    descriptions = [Description(f"class {c}", f"trait {i} of class {c}{tag}", source="test:synthetic")
                    for i in range(per_class) for c in reversed(range(classes))]
    gone = [RemovedRecord(Description("class 0", f"dropped {j}{tag}"), "filter", "too short", 0.25 + j, None)
            for j in range(removed)]
    return SnapshotDraft(descriptions, unit_rows(len(descriptions), dim, seed), "load", {"files": ["x.json"]},
                         CLIP, parents=parents or [], removed=gone,
                         removed_embeddings=unit_rows(removed, dim, seed + 1) if removed else None)


@pytest.fixture()
def store(tmp_path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "store")


def collection_names(store: SnapshotStore) -> list[str]:
    return sorted(c.name for c in store.client.list_collections())


def pending(store: SnapshotStore) -> list[str]:
    return [n for n in collection_names(store) if n.startswith(PENDING_PREFIX)]


# ---- publish / list / resolve ---------------------------------------------------------------
def test_publish_numbers_snapshots_in_order(store):
    names = [store.publish(make_draft(tag=str(k))).name for k in range(3)]
    assert names == ["snapshot_v1", "snapshot_v2", "snapshot_v3"]
    assert [s.name for s in store.list()] == names


def test_resolve_accepts_full_name_short_form_latest_and_tag(store):
    for k in range(3):
        store.publish(make_draft(tag=str(k)))
    store.tag("v2", "reviewed")
    assert store.resolve("snapshot_v3").name == "snapshot_v3"
    assert store.resolve("v1").name == "snapshot_v1"
    assert store.resolve("latest").name == "snapshot_v3"
    assert store.resolve("reviewed").name == "snapshot_v2"


def test_latest_is_the_newest_snapshot_even_with_a_custom_name(store):
    store.publish(make_draft(tag="a"))
    store.publish(make_draft(tag="b"), name="derm_reviewed")
    assert store.resolve("latest").name == "derm_reviewed"
    assert store.list()[-1].tags[0] == "latest"
    store.publish(make_draft(tag="c"))
    assert store.resolve("latest").name == "snapshot_v2"


def test_manifest_describes_the_snapshot(store):
    first = store.publish(make_draft(tag="a"))
    draft = make_draft(tag="b", parents=["v1"], removed=2)
    m = store.publish(draft).manifest
    assert m["parents"] == [{"name": "snapshot_v1", "content_hash": first.content_hash}]
    assert m["operation"] == "load" and m["clip"]["model_id"] == "test/random"
    assert m["counts"] == {"class 0": 4, "class 1": 4, "class 2": 4} and m["total"] == 12
    assert m["removed_total"] == 2 and m["embedding_dim"] == 16
    assert m["content_hash"] == content_hash((d.class_name, d.text) for d in draft.descriptions)
    assert m["content_hash"].startswith("sha256:")


# ---- read back --------------------------------------------------------------------------------
def test_read_returns_texts_in_write_order_and_bit_identical_float32_embeddings(store):
    draft = make_draft(classes=4, per_class=30, dim=32)
    store.publish(draft)
    kb = store.read("v1")
    assert [(d.class_name, d.text, d.source) for d in kb.descriptions] == \
        [(d.class_name, d.text, d.source) for d in draft.descriptions]
    assert kb.embeddings.dtype == np.float32
    assert kb.embeddings.tobytes() == draft.embeddings.tobytes()


def test_read_spans_several_pages_in_order(store, monkeypatch):
    import kbuild.store.snapshots as snapshots

    monkeypatch.setattr(snapshots, "_PAGE", 7)
    draft = make_draft(classes=5, per_class=9, dim=8)
    store.publish(draft)
    kb = store.read("latest")
    assert [d.text for d in kb.descriptions] == [d.text for d in draft.descriptions]
    assert np.array_equal(kb.embeddings, draft.embeddings)


def test_read_keeps_removed_records_apart_with_their_reasons(store):
    store.publish(make_draft(removed=2))
    kb = store.read("v1")
    assert len(kb.descriptions) == 12 and kb.embeddings.shape == (12, 16)
    assert [(r.description.text, r.stage, r.reason, r.score) for r in kb.removed] == \
        [("dropped 0", "filter", "too short", 0.25), ("dropped 1", "filter", "too short", 1.25)]


def test_read_one_class_only(store):
    store.publish(make_draft())
    kb = store.read("v1", class_name="class 1")
    assert {d.class_name for d in kb.descriptions} == {"class 1"} and len(kb.descriptions) == 4
    assert kb.embeddings.shape == (4, 16)


# ---- immutability and tags ----------------------------------------------------------------------
def test_publishing_to_an_existing_name_is_refused_and_changes_nothing(store):
    original = store.publish(make_draft(tag="a"), name="derm_v1")
    before = collection_names(store)
    with pytest.raises(KbuildError, match="already exists.*immutable.*--name"):
        store.publish(make_draft(tag="b"), name="derm_v1")
    assert collection_names(store) == before
    kb = store.read("derm_v1")
    assert kb.info.content_hash == original.content_hash
    assert verify(kb).ok


def test_tag_moves_and_reports_where_it_was(store):
    store.publish(make_draft(tag="a"))
    store.publish(make_draft(tag="b"))
    assert store.tag("v1", "good") == ("snapshot_v1", None)
    assert store.tag("v2", "good") == ("snapshot_v2", "snapshot_v1")
    assert store.resolve("good").name == "snapshot_v2"
    assert {s.name: s.tags for s in store.list()} == {"snapshot_v1": [], "snapshot_v2": ["latest", "good"]}


def test_tag_names_that_read_as_references_are_refused(store):
    store.publish(make_draft())
    for bad in ("latest", "v2", "snapshot_v9", "../up", "kbuild-tag-x"):
        with pytest.raises(UsageError):
            store.tag("v1", bad)
    assert store.tags() == {}


# ---- names ------------------------------------------------------------------------------------
BAD_NAMES = ["../x", "/abs/path", "a", "kbuild-tmp-x", "kbuild-tag-x", "..", "a..b", "has space", "-dash-",
             "ends.", "v3", "latest", "10.0.0.1", "x" * 129, "~home", "back\\slash", ""]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_or_path_like_snapshot_names_are_usage_errors(store, bad):
    store.publish(make_draft())
    before = collection_names(store)
    with pytest.raises(UsageError):
        store.publish(make_draft(tag="new"), name=bad)
    assert collection_names(store) == before


@pytest.mark.parametrize("bad", ["../x", "/abs/path", "a", "kbuild-tmp-x", "10.0.0.1"])
def test_invalid_references_are_usage_errors(store, bad):
    store.publish(make_draft())
    with pytest.raises(UsageError):
        store.resolve(bad)


def test_unknown_snapshot_lists_what_exists(store):
    store.publish(make_draft(tag="a"))
    store.publish(make_draft(tag="b"), name="derm_v1")
    with pytest.raises(SnapshotNotFound, match="Unknown snapshot 'v7'.*snapshot_v1, derm_v1"):
        store.resolve("v7")


def test_empty_store_says_how_to_create_a_snapshot(store):
    with pytest.raises(SnapshotNotFound, match="No snapshots.*kbuild load"):
        store.resolve("latest")


# ---- verify -----------------------------------------------------------------------------------
def test_verify_passes_on_a_fresh_snapshot(store):
    store.publish(make_draft(removed=1))
    result = verify(store.read("v1"))
    assert result.ok and result.recomputed == result.content_hash


def test_verify_detects_a_document_changed_directly_in_chroma(store):
    draft = make_draft()
    store.publish(draft)
    victim = draft.descriptions[3]
    store.client.get_collection("snapshot_v1").update(ids=[victim.id], documents=[victim.text + " (edited)"],
                                                      embeddings=[draft.embeddings[3]])
    result = verify(store.read("v1"))
    assert not result.ok
    assert any("content hash mismatch" in p for p in result.problems)


def test_verify_detects_a_record_deleted_directly_in_chroma(store):
    draft = make_draft()
    store.publish(draft)
    store.client.get_collection("snapshot_v1").delete(ids=[draft.descriptions[0].id])
    problems = verify(store.read("v1")).problems
    assert any("11 descriptions stored, manifest says 12" in p for p in problems)


def test_verify_detects_an_embedding_replaced_by_a_non_unit_vector(store):
    draft = make_draft()
    store.publish(draft)
    store.client.get_collection("snapshot_v1").update(ids=[draft.descriptions[0].id],
                                                      embeddings=[draft.embeddings[0] * 3])
    assert "embeddings are not unit vectors" in verify(store.read("v1")).problems


# ---- pending collections and gc -----------------------------------------------------------------
def crash_during_rename(monkeypatch):
    def crash(*_args, **_kwargs):
        raise SimulatedCrash()

    monkeypatch.setattr(SnapshotStore, "_claim_name", crash)


def test_readers_never_see_a_pending_collection(store, monkeypatch):
    store.publish(make_draft(tag="a"))
    crash_during_rename(monkeypatch)
    with pytest.raises(SimulatedCrash):
        store.publish(make_draft(tag="b"))
    (left,) = pending(store)
    assert [s.name for s in store.list()] == ["snapshot_v1"]
    assert store.resolve("latest").name == "snapshot_v1"
    with pytest.raises(UsageError, match="reserved"):
        store.resolve(left)


def test_gc_removes_a_pending_collection_left_behind(store, monkeypatch):
    store.publish(make_draft(tag="a"))
    with monkeypatch.context() as patch:
        crash_during_rename(patch)
        with pytest.raises(SimulatedCrash):
            store.publish(make_draft(tag="b"))
    left = pending(store)
    assert len(left) == 1
    assert store.gc() == left
    assert pending(store) == []
    assert [s.name for s in store.list()] == ["snapshot_v1"] and verify(store.read("v1")).ok
    assert store.publish(make_draft(tag="b")).name == "snapshot_v2"


def test_a_failed_publish_cleans_up_its_pending_collection(store, monkeypatch):
    def fail(*_args, **_kwargs):
        raise RuntimeError("server went away")

    monkeypatch.setattr(SnapshotStore, "_claim_name", fail)
    with pytest.raises(RuntimeError):
        store.publish(make_draft())
    assert collection_names(store) == []


def test_a_name_chroma_rejects_is_refused_before_anything_is_written(store):
    with pytest.raises(UsageError, match="IP address"):
        store.publish(make_draft(), name="192.168.0.1")
    assert collection_names(store) == []


# ---- concurrent writers -------------------------------------------------------------------------
@pytest.mark.slow
def test_four_processes_loading_at_once_each_get_their_own_version(forks, tmp_path, tiny_model):
    home = tmp_path / "store"
    files = [write_class_lists(tmp_path / f"kb{k}.json", classes=3, per_class=5, prefix=f"src{k}") for k in range(4)]
    env = cli_env(KBUILD_STORE=str(home), KPL_CLIP_MODEL=tiny_model)
    results = finish_forked(forks, [forks.run("kbuild", "load", f, "--json", env=env) for f in files])
    assert all(r.code == 0 for r in results), [r.err for r in results]
    published = {r.json()["snapshot"]: r.json()["content_hash"] for r in results}
    assert sorted(published) == ["snapshot_v1", "snapshot_v2", "snapshot_v3", "snapshot_v4"]
    store = SnapshotStore(home)
    listed = {s.name: s for s in store.list()}
    assert {n: s.content_hash for n, s in listed.items()} == published
    assert sorted(s.manifest["parameters"]["files"][0] for s in listed.values()) == [f.name for f in files]
    assert all(verify(store.read(name)).ok for name in listed)
    assert pending(store) == []


# ---- diff straight from the store ---------------------------------------------------------------
def test_diff_from_the_store_fetching_only_changed_vectors_equals_the_full_read_diff(store):
    from kbuild.diff import diff_snapshots, diff_stored

    base = make_draft(classes=4, per_class=12, dim=32)
    changed = list(base.descriptions)
    vectors = base.embeddings.copy()
    for row in (0, 5, 9):  # reworded: same class, new text, nearly the same vector
        d = changed[row]
        changed[row] = Description(d.class_name, d.text + " (reworded)")
        vectors[row] = vectors[row] + 0.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keep = [r for r in range(len(changed)) if r not in (2, 7)]  # two removed outright
    child = SnapshotDraft([changed[r] for r in keep], vectors[keep], "review", {}, CLIP, parents=["v1"])
    store.publish(base)
    store.publish(child)
    expected = diff_snapshots(store.read("v1"), store.read("v2")).to_json()
    got = diff_stored(store, "v1", "v2").to_json()
    assert got == expected
    assert got["summary"]["descriptions_reworded"] == 3 and got["summary"]["descriptions_removed"] == 2
