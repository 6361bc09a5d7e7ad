"""Inputs: one spelling per name and text (Unicode NFC), case-only twins warned about, one set of
class-name rules for every input format, and a cap on the texts one load may embed.

Reproduced before this change: NFC ``café`` and NFD ``café`` became two classes (and two
descriptions); ``Melanoma``/``melanoma`` became two classes without a word; a curated file of
1.9 M texts grew past 7.5 GB of memory without finishing.
"""

from __future__ import annotations

import json

import pytest

from helpers import store_fingerprint
from kbuild.classes_file import parse_classes_text
from kbuild.errors import InputFileError
from kbuild.sources.curated import load_curated
from kbuild.store import SnapshotStore
from kpl import KPLParams

NFC, NFD = "caf\u00e9", "cafe\u0301"


def _write(path, payload):
    path.write_text(json.dumps(payload, ensure_ascii=True), encoding="utf-8")  # \u escapes keep NFD intact
    return path


def test_nfc_and_nfd_class_names_are_one_class(tmp_path, clip_env, kbuild):
    kb = _write(tmp_path / "kb.json", {NFC: ["a counter"], NFD: ["an espresso machine"], "bar": ["stools"]})
    result = kbuild("load", kb, "--json")
    assert result.code == 0, result.err
    stored = SnapshotStore(clip_env).read("v1", embeddings=False)
    assert sorted(stored.rows_by_class()) == ["bar", NFC]
    assert len(stored.rows_by_class()[NFC]) == 2


def test_nfc_and_nfd_texts_are_one_description(tmp_path):
    kb = _write(tmp_path / "kb.json", {"cat": [f"{NFC} coloured fur", f"{NFD} coloured fur"]})
    imported = load_curated([kb])
    assert [d.text for d in imported.descriptions] == [f"{NFC} coloured fur"]
    assert imported.files[0].duplicates == {"cat": 1}


def test_a_classes_file_sees_nfd_and_nfc_as_the_same_class(tmp_path):
    with pytest.raises(InputFileError, match="line 2: duplicate class"):
        parse_classes_text(tmp_path / "c.txt", f"{NFC}\n{NFD}\n")


def test_case_only_twins_are_loaded_with_a_warning(tmp_path, clip_env, kbuild):
    kb = _write(tmp_path / "kb.json", {"Melanoma": ["dark patch"], "melanoma": ["irregular border"]})
    result = kbuild("load", kb)
    assert result.code == 0, result.err
    warning = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert warning and "Melanoma / melanoma" in warning[0]
    imported = json.loads(kbuild("load", kb, "--json").out)["import"]
    assert imported["case_collisions"] == [["Melanoma", "melanoma"]]


def test_too_many_texts_are_refused_before_embedding(tmp_path, clip_env, kbuild, monkeypatch):
    """The 96 MB / 1.9 M-text case, scaled down: the cap is lowered instead of writing 96 MB."""
    import kbuild.sources.curated as curated

    assert kbuild("load", _write(tmp_path / "ok.json", {"cat": ["whiskers"]})).code == 0
    before = store_fingerprint(clip_env)
    monkeypatch.setattr(curated, "DEFAULT_MAX_TEXTS", 10)
    big = _write(tmp_path / "big.json", {f"class{i}": [f"text {j}" for j in range(4)] for i in range(3)})
    result = kbuild("load", big)
    assert result.code == 1
    assert result.err.count("\n") == 1 and "12 texts read so far, over the limit of 10 per load" in result.err
    assert "big.json" in result.err and "split the file" in result.err
    assert store_fingerprint(clip_env) == before


def test_the_default_text_cap_is_below_the_reported_blow_up():
    from kbuild.sources.curated import DEFAULT_MAX_TEXTS

    assert DEFAULT_MAX_TEXTS < 1_900_000


@pytest.mark.parametrize("alpha", [-1.0, 1.5, float("nan")])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(Exception, match=r"alpha must lie in \[0, 1\]"):
        KPLParams(alpha=alpha).validate()


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_alpha_inside_zero_one_is_accepted(alpha):
    assert KPLParams(alpha=alpha).validate().alpha == alpha
