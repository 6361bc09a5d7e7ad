"""Terminal renderings of result objects (tables and grouped diffs). Data goes to stdout.

Data is always text: the console has markup and emoji codes switched off (a class named
``[/bold]`` or ``:x:`` prints as written), styles are applied with ``Text`` objects, and every
piece of data passes through ``visible`` so control characters (ESC, OSC-8 links) are shown
escaped instead of acting on the terminal."""

from __future__ import annotations

import sys
from typing import Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kbuild.descriptions import visible
from kbuild.diff import SnapshotDiff
from kbuild.store.snapshots import SnapshotInfo

console = Console(highlight=False, markup=False, emoji=False, soft_wrap=True,
                  width=None if sys.stdout.isatty() else 200)


def data(value: object, style: str | None = None) -> Text:
    """A piece of data as rich ``Text``: never markup, control characters escaped."""
    return Text(visible(str(value)), style=style or "")


def line(*parts: object | tuple[object, str | None]) -> Text:
    """One output line from ``(text, style)`` pairs and plain strings, every part taken as data."""
    out = Text()
    for part in parts:
        text, style = part if isinstance(part, tuple) else (part, None)
        out.append(visible(str(text)), style=style)
    return out


def _short_time(iso: str) -> str:
    return iso[:19].replace("T", " ") if iso else ""


def snapshots_table(snapshots: Iterable[SnapshotInfo]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("name", "tags", "op", "parent", "classes", "texts", "removed", "created", "from", "model"):
        table.add_column(column, no_wrap=column in ("name", "tags", "created"), overflow="fold")
    for s in snapshots:
        m = s.manifest
        parents = ",".join(p["name"] for p in m.get("parents", []))
        params = m.get("parameters", {})
        origin = ", ".join(params.get("files") or []) or params.get("llm_model") or ""
        cells = (s.name, ",".join(s.tags), m.get("operation", ""), parents, m.get("classes", ""),
                 m.get("total", ""), m.get("removed_total", 0), _short_time(m.get("created", ""))[:16],
                 origin, m.get("clip", {}).get("model_id", ""))
        table.add_row(*(data(cell) for cell in cells))
    return table


def print_diff(diff: SnapshotDiff) -> None:
    """``dvc diff``-style: grouped, sorted, one summary line; nothing at all when nothing differs."""
    if diff.empty:
        return
    out = console.print
    for name, texts in diff.added_classes.items():
        out(data(f"Added class: {name} ({len(texts)} descriptions)", "green"))
    for name, texts in diff.removed_classes.items():
        out(data(f"Removed class: {name} ({len(texts)} descriptions)", "red"))
    for change in diff.modified:
        out(data(f"Modified class: {change.name}", "yellow"))
        for text in change.added:
            out(data(f"    added:    {text}", "green"))
        for text in change.removed:
            reason = change.reasons.get(text)
            out(data(f"    removed:  {text}" + (f"  [{reason}]" if reason else ""), "red"))
        for old, new, sim in change.reworded:
            out(data(f"    reworded: {old}  ->  {new}  (similarity {sim:.3f})", "cyan"))
    for key, entry in diff.manifest.items():
        if key != "parameters":
            out(data(f"Manifest {key}: {entry['old']} -> {entry['new']}"))
        elif "operation" in diff.manifest:  # another command's parameters: listing them all is noise
            out(data(f"Manifest parameters differ ({', '.join(entry['changed'])}; see --json)"))
        else:
            names = ", ".join(f"{k}: {entry['old'].get(k)!r} -> {entry['new'].get(k)!r}" for k in entry["changed"])
            out(data(f"Manifest parameters changed: {names}"))
    if not diff.reword_detection:
        out(data("(reword detection skipped: the snapshots were embedded with different CLIP models)"))
    out(data(f"{diff.old} -> {diff.new}: {diff.summary()}", "bold"))
