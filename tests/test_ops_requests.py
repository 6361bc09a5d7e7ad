"""kbuild's writing ops called as a notebook would: one request object, the model asked for by name.

The ops load their own CLIP model (``ModelRequest``), and only where they first need vectors: a
malformed file or a taken name is reported while the named model was never touched.
"""

from __future__ import annotations

import json

import pytest

from kbuild import settings
from kbuild.clip.choice import ModelRequest
from kbuild.errors import InputFileError, KbuildError
from kbuild.ops.load import LoadRequest, load_files
from kbuild.ops.merge import merge_snapshots
from kbuild.store import SnapshotStore

NO_MODEL = ModelRequest("no-such-model-anywhere", "none")  # loading it would fail


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.delenv(settings.ENV_CLIP_MODEL, raising=False)  # only the request names a model
    monkeypatch.delenv(settings.ENV_CLIP_PRETRAINED, raising=False)
    return SnapshotStore(tmp_path / "store")


def write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_load_request_embeds_with_the_model_it_names(store, tmp_path, tiny_model):
    kb = write(tmp_path / "kb.json", {"cat": ["whiskers", "soft fur"], "dog": ["a wet nose"]})
    result = load_files(store, LoadRequest([kb], name="pets", model=ModelRequest(tiny_model, "none")))
    clip = result.snapshot.manifest["clip"]
    assert result.snapshot.name == "pets" and result.snapshot.manifest["total"] == 3
    assert clip["model"] == tiny_model and clip["pretrained"] is None
    assert result.snapshot.manifest["parameters"]["files"] == ["kb.json"]


def test_no_model_is_loaded_before_the_files_parse_and_the_name_is_free(store, tmp_path, tiny_model):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputFileError, match="bad.json"):
        load_files(store, LoadRequest([bad], model=NO_MODEL))
    good = write(tmp_path / "kb.json", {"cat": ["whiskers"]})
    load_files(store, LoadRequest([good], name="taken", model=ModelRequest(tiny_model, "none")))
    with pytest.raises(KbuildError, match="'taken' already exists"):
        load_files(store, LoadRequest([good], name="taken", model=NO_MODEL))


def test_merge_loads_a_model_only_to_reembed(store, tmp_path, tiny_model):
    tiny = ModelRequest(tiny_model, "none")
    load_files(store, LoadRequest([write(tmp_path / "a.json", {"cat": ["whiskers"]})], name="kb_a", model=tiny))
    load_files(store, LoadRequest([write(tmp_path / "b.json", {"dog": ["a wet nose"]})], name="kb_b", model=tiny))
    same_space = merge_snapshots(store, "kb_a", "kb_b", name="kb_ab", model=NO_MODEL)  # B's vectors reused
    assert (same_space.reembedded, same_space.snapshot.manifest["total"]) == (0, 2)
    other = "an image of a {}: {}"
    load_files(store, LoadRequest([write(tmp_path / "c.json", {"eel": ["long"]})], name="kb_c", template=other,
                                  model=tiny))
    with pytest.raises(KbuildError, match="no-such-model-anywhere"):
        merge_snapshots(store, "kb_a", "kb_c", model=NO_MODEL)  # a different template: re-embedding needs the model
    merged = merge_snapshots(store, "kb_a", "kb_c", name="kb_ac", model=tiny)
    assert merged.reembedded == 1 and merged.snapshot.manifest["clip"]["template"] != other


def test_prune_request_prunes_on_stored_vectors_without_loading_a_model(store, tmp_path, tiny_model):
    from kbuild.ops.prune import PruneRequest, prune_snapshot

    kb = write(tmp_path / "kb.json", {"cat": ["whiskers", "whiskers", "soft fur"], "dog": ["a wet nose"]})
    load_files(store, LoadRequest([kb], name="pets", model=ModelRequest(tiny_model, "none")))
    outcome = prune_snapshot(store, PruneRequest(reference="latest", name="pets_pruned", force=True))
    assert (outcome.parent.name, outcome.snapshot.name) == ("pets", "pets_pruned")
    assert [p["name"] for p in outcome.snapshot.manifest["parents"]] == ["pets"]
    assert outcome.embedder is not None and not outcome.embedder.clip.loaded  # the snapshot's model, named only
    with pytest.raises(KbuildError, match="'pets_pruned' already exists"):
        prune_snapshot(store, PruneRequest(reference="pets", name="pets_pruned", model=NO_MODEL))
