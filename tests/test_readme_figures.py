"""The README cannot drift: every console example and results table is a figure that
docs/figures.py regenerates; the checked ones are rerun here and must match within tolerance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _figures():
    spec = importlib.util.spec_from_file_location("readme_figures", REPO / "docs" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_figures"] = module
    spec.loader.exec_module(module)
    return module


figures = _figures()


def test_every_console_block_of_the_readme_is_a_figure():
    """A ```console block or a results table outside the markers would be typed in by hand."""
    lines = (REPO / "README.md").read_text().splitlines()
    inside, loose = None, []
    for number, line in enumerate(lines, 1):
        if figures.BEGIN.match(line):
            inside = line
        elif line == figures.END:
            inside = None
        elif line.startswith("```console") and inside is None:
            loose.append(number)
    assert not loose, f"console blocks without a figure marker at README lines {loose}"


def test_every_figure_has_a_producer_and_appears_once():
    text = (REPO / "README.md").read_text()
    documented = figures.read_blocks(text)
    assert set(documented) <= set(figures.FIGURES)
    assert set(figures.FIGURES) <= set(documented), "a figure nobody shows: drop it or show it"
    for name in documented:
        assert text.count(f"<!-- figure: {name} -->") == 1, name


def test_drift_names_a_moved_number_and_a_changed_shape():
    figure = figures.Figure("t", "s", tolerance=0.05)
    assert figures.drift(figure, "acc 71.00 at 2026-11-25 15:21", "acc 71.04 at 2027-01-01 09:00") == []
    moved = figures.drift(figure, "acc 71.00", "acc 70.00")
    assert len(moved) == 1 and "71.00 -> 70.00" in moved[0]
    assert "shape changed" in figures.drift(figure, "kept 9 of 11", "removed 9 of 11")[0]
    assert "lines documented" in figures.drift(figure, "a\nb", "a")[0]


def test_write_then_read_is_the_identity():
    text = (REPO / "README.md").read_text()
    documented = figures.read_blocks(text)
    expected = text if text.endswith("\n") else text + "\n"
    assert figures.write_blocks(text, documented) == expected


@pytest.mark.slow
def test_the_checked_figures_reproduce(shared_dir):
    """Regenerates the figures marked checked (tiny model, PH2 features) and compares them."""
    checked = [n for n, f in figures.FIGURES.items() if f.checked]
    documented = figures.read_blocks((REPO / "README.md").read_text())
    fresh = figures.regenerate(checked)
    problems = [p for n in checked for p in figures.drift(figures.FIGURES[n], documented[n], fresh[n])]
    assert not problems, "README figures drifted; run `make docs` and review the diff:\n" + "\n".join(problems)


def test_progress_lines_never_count():
    """How many progress lines a run prints depends on its speed: they are not part of the comparison."""
    figure = figures.Figure("t", "s", drop_progress=False)
    documented = "embedding texts: 1024/2957 (35%), 9 s left\nembedding texts: 2957/2957 (100%), done in 13 s\nsnapshot_v6"
    assert figures.drift(figure, documented, "embedding texts: 2957/2957 (100%), done in 3 s\nsnapshot_v6") == []
