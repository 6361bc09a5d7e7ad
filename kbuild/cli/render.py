"""Terminal renderings of result objects (tables and grouped diffs). Data goes to stdout."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kbuild.diff import SnapshotDiff

console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def _short_time(iso: str) -> str:
    return iso[:19].replace("T", " ") if iso else ""


def snapshots_table(snapshots) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("name", "tags", "op", "parent", "classes", "texts", "removed", "created", "from", "model"):
        table.add_column(column, no_wrap=column in ("name", "tags", "created"), overflow="fold")
    for s in snapshots:
        m = s.manifest
        parents = ",".join(p["name"] for p in m.get("parents", []))
        params = m.get("parameters", {})
        origin = ", ".join(params.get("files") or []) or params.get("llm_model") or ""
        table.add_row(s.name, ",".join(s.tags), m.get("operation", ""), parents, str(m.get("classes", "")),
                      str(m.get("total", "")), str(m.get("removed_total", 0)), _short_time(m.get("created", ""))[:16],
                      Text(origin), Text(str(m.get("clip", {}).get("model_id", ""))))
    return table


def print_diff(diff: SnapshotDiff) -> None:
    """``dvc diff``-style: grouped, sorted, one summary line; nothing at all when nothing differs."""
    if diff.empty:
        return
    out = console.print
    for name, texts in diff.added_classes.items():
        out(Text(f"Added class: {name} ({len(texts)} descriptions)", style="green"))
    for name, texts in diff.removed_classes.items():
        out(Text(f"Removed class: {name} ({len(texts)} descriptions)", style="red"))
    for change in diff.modified:
        out(Text(f"Modified class: {change.name}", style="yellow"))
        for text in change.added:
            out(Text(f"    added:    {text}", style="green"))
        for text in change.removed:
            reason = change.reasons.get(text)
            out(Text(f"    removed:  {text}" + (f"  [{reason}]" if reason else ""), style="red"))
        for old, new, sim in change.reworded:
            out(Text(f"    reworded: {old}  ->  {new}  (similarity {sim:.3f})", style="cyan"))
    for key, change in diff.manifest.items():
        if key != "parameters":
            out(Text(f"Manifest {key}: {change['old']} -> {change['new']}"))
        elif "operation" in diff.manifest:  # another command's parameters: listing them all is noise
            out(Text(f"Manifest parameters differ ({', '.join(change['changed'])}; see --json)"))
        else:
            names = ", ".join(f"{k}: {change['old'].get(k)!r} -> {change['new'].get(k)!r}" for k in change["changed"])
            out(Text(f"Manifest parameters changed: {names}"))
    if not diff.reword_detection:
        out(Text("(reword detection skipped: the snapshots were embedded with different CLIP models)"))
    out(Text(f"{diff.old} -> {diff.new}: {diff.summary()}", style="bold"))
