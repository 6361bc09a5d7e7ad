"""Evaluation reports (``report.html`` files written by ``kpl eval --out DIR``) under one results folder.

Requests name a report by its path relative to the folder. Nothing from the request is trusted: the
path must be one of the reports found by walking the folder (so no ``..``, absolute path or odd name
can reach the file system), and the resolved file must still lie inside the folder (a symlink pointing
out of it is refused).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from kbuild.errors import KbuildError, SnapshotNotFound

REPORT_NAME = "report.html"
_MAX_REPORTS = 2000


class ReportNotFound(SnapshotNotFound):
    """Unknown report path (HTTP 404); subclassing the not-found error keeps one status mapping."""


def find_reports(root: Path) -> list[dict]:
    """Every ``report.html`` under ``root``, newest first: {path (relative, '/'-separated), modified, size}."""
    root = root.resolve()
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # skip .git, caches
        if REPORT_NAME in files:
            path = Path(folder) / REPORT_NAME
            if _inside(root, path):
                stat = path.stat()
                found.append({"path": path.relative_to(root).as_posix(), "size": stat.st_size,
                              "modified": datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat(timespec="seconds")})
        if len(found) >= _MAX_REPORTS:
            break
    found.sort(key=lambda r: (r["modified"], r["path"]), reverse=True)
    return found


def _inside(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root) and path.resolve().is_file()
    except OSError:
        return False


def report_file(root: Path, relative: str) -> Path:
    """The report file a request names, or ReportNotFound; only paths ``find_reports`` lists qualify."""
    if not relative or "\x00" in relative or relative.startswith("/") or ".." in relative.split("/"):
        raise ReportNotFound(f"No report '{relative}' under the results folder")
    listed = {r["path"] for r in find_reports(root)}
    if relative not in listed:
        raise ReportNotFound(f"No report '{relative}' under the results folder (see the Reports page)")
    path = (root.resolve() / relative).resolve()
    if not _inside(root.resolve(), path):
        raise KbuildError("Report path escapes the results folder")
    return path
