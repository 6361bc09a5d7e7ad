"""Every ``kbuild export`` format loads back with ``kbuild load`` to the same content hash."""

from __future__ import annotations

import pytest

from kbuild.ops.inspect import EXPORT_FORMATS

pytestmark = pytest.mark.usefixtures("clip_env")
FORMATS = (*EXPORT_FORMATS, "parquet")  # the bundle too (with vectors: tests/test_travel.py checks the rest)
SUFFIX = {"csv": "csv", "parquet": "parquet"}


@pytest.fixture()
def loaded(kbuild, kb_files):
    """LaBo's HAM10000 selection (350 concepts), then a prune of it: a loaded and a derived snapshot."""
    first = kbuild("load", kb_files / "LaBo__HAM10000_selected_concepts.json", "--json")
    assert first.code == 0, first.err
    pruned = kbuild("prune", "v1", "--max-per-class", "20", "--json")
    assert pruned.code == 0, pruned.err
    return {"snapshot_v1": first.json()["content_hash"], "snapshot_v2": pruned.json()["content_hash"]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_loads_back_to_the_same_content(kbuild, loaded, tmp_path, fmt):
    for name, content_hash in loaded.items():
        out = tmp_path / f"{name}.{SUFFIX.get(fmt, 'json')}"
        assert kbuild("export", name, "--format", fmt, "-o", out).code == 0
        back = kbuild("load", out, "--json", "--force")  # --force: its content is already in the store
        assert back.code == 0, back.err
        assert back.json()["content_hash"] == content_hash, (fmt, name)
        imported = back.json()["import"]
        seen = imported["format"] if fmt == "parquet" else imported["files"][0]["format"]
        assert seen == {"json": "kbuild", "csv": "csv", "dclip": "dclip", "parquet": "parquet"}[fmt]


def test_export_formats_are_all_tested():
    assert set(EXPORT_FORMATS) == {"json", "csv", "dclip"}
