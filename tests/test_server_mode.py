"""Server mode: the same commands against a real ``chroma run`` on 127.0.0.1 give the same results
as the embedded store (same snapshot names, content hashes, diffs, exports, vectors)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from helpers import cli_env, finish_forked, run_kbuild, write_class_lists
from kbuild.store import SnapshotStore

pytestmark = pytest.mark.server

CUPL = "CuPL__food_prompts_full.json"
WAFFLE = "WaffleCLIP__descriptors_food101.json"


@pytest.fixture(scope="module")
def both(tmp_path_factory, chroma_url, kb_files, tiny_model):
    """CuPL then WaffleCLIP loaded into an embedded store and into the server, sharing one
    text-embedding cache (under the same home), so the second load encodes nothing."""
    home = tmp_path_factory.mktemp("server_mode") / "home"

    def embedded(*args):
        return run_kbuild(*args, "--store", home)

    def server(*args):
        return run_kbuild(*args, "--store", home, "--chroma-url", chroma_url)

    for run in (embedded, server):
        for name in (CUPL, WAFFLE):
            result = run("load", kb_files / name, "--model", tiny_model, "--json")
            assert result.code == 0, result.err
    return SimpleNamespace(home=home, url=chroma_url, embedded=embedded, server=server)


def names_and_hashes(result):
    return [(s["name"], s["manifest"]["content_hash"]) for s in result.json()]


def test_server_list_matches_embedded(both):
    on_server = names_and_hashes(both.server("list", "--json"))
    assert [name for name, _ in on_server] == ["snapshot_v1", "snapshot_v2"]
    assert on_server == names_and_hashes(both.embedded("list", "--json"))


def test_server_stores_nothing_in_the_local_chroma_folder(both):
    collections = SnapshotStore(both.home).client.list_collections()
    assert sorted(c.name for c in collections) == ["snapshot_v1", "snapshot_v2"]  # only the embedded loads


def test_server_diff_matches_embedded(both):
    for extra in ((), ("--json",)):
        on_server = both.server("diff", "v1", "v2", *extra)
        assert on_server.code == 0
        assert on_server.out == both.embedded("diff", "v1", "v2", *extra).out
    assert on_server.json()["summary"]["classes_removed"] == 5


def test_server_reads_back_bit_identical_vectors(both):
    remote = SnapshotStore(both.home, both.url).read("v2")
    local = SnapshotStore(both.home).read("v2")
    assert [d.text for d in remote.descriptions] == [d.text for d in local.descriptions]
    assert remote.embeddings.tobytes() == local.embeddings.tobytes()


def test_server_export_matches_embedded(both):
    for fmt in ("dclip", "csv"):
        assert both.server("export", "v1", "--format", fmt).out == both.embedded("export", "v1", "--format", fmt).out


def test_server_verify_passes(both):
    for ref in ("v1", "v2"):
        result = both.server("verify", ref, "--json")
        assert result.code == 0 and result.json()["ok"] is True


def test_server_tag_moves_like_embedded(both):
    assert both.server("tag", "v1", "team-pick").out.strip() == "team-pick -> snapshot_v1"
    assert both.server("tag", "v2", "team-pick").out.strip() == "team-pick -> snapshot_v2 (moved from snapshot_v1)"
    assert both.server("show", "team-pick", "--json").json()["name"] == "snapshot_v2"
    assert "team-pick" not in str(both.embedded("list", "--json").json())


def test_server_missing_snapshot_lists_what_exists(both):
    result = both.server("show", "v9")
    assert result.code == 1 and result.err.count("\n") == 1
    assert "Unknown snapshot 'v9'" in result.err and "snapshot_v1, snapshot_v2" in result.err


def test_server_gc_never_touches_published_snapshots(both):
    before = names_and_hashes(both.server("list", "--json"))
    assert both.server("gc").out.strip() == "removed 0 unfinished write(s)"
    assert names_and_hashes(both.server("list", "--json")) == before


def test_latest_is_the_last_published_even_when_server_writers_overlap(tmp_path, chroma_url, both, monkeypatch):
    from kbuild.descriptions import Description
    from kbuild.store.manifest import SnapshotDraft

    def draft(word):
        texts = [Description("overlap", f"{word} trait {i}") for i in range(3)]
        return SnapshotDraft(texts, np.eye(4, dtype=np.float32)[:3], "load", {}, {"model_id": "x"})

    slow, fast = SnapshotStore(tmp_path, chroma_url), SnapshotStore(tmp_path, chroma_url)
    claim = SnapshotStore._claim_name

    def overlapped(self, *args):
        if self is slow:  # another writer starts after this one and finishes first
            monkeypatch.setattr(SnapshotStore, "_claim_name", claim)
            fast.publish(draft("fast"))
        return claim(self, *args)

    monkeypatch.setattr(SnapshotStore, "_claim_name", overlapped)
    last = slow.publish(draft("slow"))
    listed = [s.name for s in slow.list()]
    assert listed[-1] == last.name == slow.resolve("latest").name
    numbers = [int(n.rsplit("_v", 1)[1]) for n in listed if n.startswith("snapshot_v")]
    assert numbers == sorted(numbers)


@pytest.mark.slow
def test_four_processes_writing_to_one_server_each_get_their_own_version(forks, tmp_path, chroma_url, tiny_model, both):
    files = [write_class_lists(tmp_path / f"team{k}.json", classes=2, per_class=6, prefix=f"team{k}") for k in range(4)]
    before = {s.name for s in SnapshotStore(tmp_path, chroma_url).list()}
    env = cli_env(KBUILD_STORE=str(tmp_path / "home"), KBUILD_CHROMA_URL=chroma_url, KPL_CLIP_MODEL=tiny_model)
    results = finish_forked(forks, [forks.run("kbuild", "load", f, "--json", env=env) for f in files])
    assert all(r.code == 0 for r in results), [r.err for r in results]
    published = {r.json()["snapshot"]: r.json()["content_hash"] for r in results}
    assert len(published) == 4 and not set(published) & before
    store = SnapshotStore(tmp_path, chroma_url)
    listed = {s.name: s.content_hash for s in store.list()}
    assert {name: listed[name] for name in published} == published
    assert not [c.name for c in store.client.list_collections() if c.name.startswith("kbuild-tmp-")]
    assert all(np.isfinite(store.read(name).embeddings).all() for name in published)
