"""Data is shown as data: class names, texts, templates and error messages are never Rich markup,
and control characters (ESC, OSC-8 hyperlinks, bidi overrides) reach the terminal escaped.

Each case was reproduced on the code before this change: ``[/bold] oops`` made ``show`` and
``prune`` fail with ``unexpected MarkupError`` (``prune`` after publishing), ``[link=...]`` was
silently rewritten, ESC went through raw, and ``KBUILD_DEBUG=1`` printed the Chroma token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbuild.descriptions import visible
from kbuild.store import SnapshotStore

REPO = Path(__file__).resolve().parents[1]

MARKUP_CLASS = "[/bold] oops"
LINK_CLASS = "[link=file:///etc/passwd]x[/link]"
EMOJI_CLASS = "cat :x:"
ESC_TEXT = "pointy ears \x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ \x1b[2J"


@pytest.fixture()
def loaded(clip_env, kbuild, tmp_path):
    kb = {MARKUP_CLASS: ["a bold claim", "broken tags"], LINK_CLASS: ["a hidden link", "more"],
          EMOJI_CLASS: [ESC_TEXT, "whiskers"]}
    path = tmp_path / "kb.json"
    path.write_text(json.dumps(kb), encoding="utf-8")
    result = kbuild("load", path, "--template", "[bold]a photo of a {}[/bold], which has {}")
    assert result.code == 0, result.err
    return clip_env


def test_show_prints_markup_like_names_and_templates_as_written(loaded, kbuild):
    result = kbuild("show", "v1")
    assert result.code == 0, result.err
    for name in (MARKUP_CLASS, LINK_CLASS, EMOJI_CLASS):
        assert name in result.out
    assert "[bold]a photo of a {}[/bold]" in result.out


def test_control_characters_are_escaped_in_show_and_list(loaded, kbuild):
    result = kbuild("show", "v1")
    assert "\x1b" not in result.out
    assert "\\x1b]8;;http://evil.example/" in result.out and "\\x1b[2J" in result.out
    removed = kbuild("show", "v1", "--removed")
    assert removed.code == 0 and "\x1b" not in removed.out


def test_prune_with_a_markup_class_name_succeeds_and_prints_its_table(loaded, kbuild):
    result = kbuild("prune", "v1", "--force")  # nothing to remove: --force publishes, then prints the summary
    assert result.code == 0, result.err
    assert MARKUP_CLASS in result.out and "v1 -> snapshot_v2" in result.out.replace("snapshot_v1", "v1")
    assert [s.name for s in SnapshotStore(loaded).list()] == ["snapshot_v1", "snapshot_v2"]


def test_diff_shows_markup_and_escapes_controls(loaded, kbuild, tmp_path):
    kb = {MARKUP_CLASS: ["a bold claim", "x \x1b[31m y"], "new [red]class": ["z"]}
    path = tmp_path / "kb2.json"
    path.write_text(json.dumps(kb), encoding="utf-8")
    assert kbuild("load", path).code == 0
    result = kbuild("diff", "v1", "v2")
    assert result.code == 0, result.err
    assert "Added class: new [red]class" in result.out and "\x1b" not in result.out
    assert "\\x1b[31m" in result.out


def test_error_lines_escape_control_characters(loaded, kbuild):
    result = kbuild("show", "v1", "--class", "\x1b[31mred\u202e")
    assert result.code == 1
    assert "\x1b" not in result.err and "\u202e" not in result.err
    assert "\\x1b[31mred\\u202e" in result.err


def test_kpl_tables_show_names_as_data(capsys):
    from kpl.cli import _print_table

    _print_table((["class", "acc"], [[MARKUP_CLASS + "\x1b[5m", "0.5"]]))
    out = capsys.readouterr().out
    assert MARKUP_CLASS + "\\x1b[5m" in out and "\x1b" not in out


def test_debug_traceback_masks_the_chroma_token(loaded, kbuild, monkeypatch):
    token = "chroma-token-do-not-print-42"
    monkeypatch.setenv("KBUILD_CHROMA_TOKEN", token)
    monkeypatch.setenv("KBUILD_DEBUG", "1")
    result = kbuild("verify", token)
    assert result.code == 1
    assert "Traceback" in result.err  # the debug switch still shows where it failed
    assert token not in result.err and "***" in result.err


@pytest.mark.parametrize("text, shown", [
    ("plain é 中", "plain é 中"), ("a\x1bb", "a\\x1bb"), ("tab\there", "tab\\x09here"),
    ("nl\n", "nl\\x0a"), ("\x9b31m", "\\x9b31m"), ("rtl\u202eabc", "rtl\\u202eabc"), ("del\x7f", "del\\x7f"),
])
def test_visible_escapes_exactly_the_control_characters(text, shown):
    assert visible(text) == shown


def test_prompt_template_texts_are_shown_escaped(kbuild, tmp_path):
    """A template is a data file too: an ESC in it is written out, not sent to the terminal."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    text = (REPO / "prompts" / "general.toml").read_text(encoding="utf-8")
    start = text.index('description = "') + len('description = "')
    (folder / "general.toml").write_text(text[:start] + "\\u001B[2J" + text[start:], encoding="utf-8")
    for args in (("prompts", "list"), ("prompts", "show", "general")):
        result = kbuild(*args, "--prompts-dir", folder)
        assert result.code == 0, result.err
        assert "\x1b" not in result.out and "\\x1b[2J" in result.out
