"""``kbuild export --format parquet|hf``: a snapshot with its vectors and history, ready to share.

``parquet`` writes one bundle file (``kbuild.store.bundle``). ``hf`` writes a dataset folder the
Hugging Face tools read as it is: ``data/train-00000-of-00001.parquet`` (the same bundle) and a
``README.md`` dataset card whose YAML header names the split and features, and whose text lists the
classes with their counts, how the texts were made, the model, the license, and how to load the
folder with ``datasets`` and with ``kbuild load``. Both are written atomically: a killed export
leaves no half file under the real name.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbuild.errors import KbuildError
from kbuild.ops.provenance import summary_lines
from kbuild.store import KnowledgeBase, SnapshotStore
from kbuild.store.bundle import DATASET_FILE, write_bundle
from kbuild.store.transfer import lineage

HF_DATA_FILE = DATASET_FILE
DEFAULT_LICENSE = "other"


@dataclass
class ExportResult:
    snapshot: str
    content_hash: str
    path: str
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "content_hash": self.content_hash, "path": self.path, "rows": self.rows}


def export_parquet(store: SnapshotStore, reference: str, path: Path) -> ExportResult:
    """One bundle file at ``path`` with every description, its vector, and the snapshot's record."""
    kb = store.read(reference)
    write_bundle(kb, lineage(store, kb.info), path)
    return ExportResult(kb.info.name, kb.info.content_hash, str(path), len(kb.descriptions) + len(kb.removed))


def export_hf(store: SnapshotStore, reference: str, folder: Path, license: str = DEFAULT_LICENSE) -> ExportResult:
    """A dataset folder (bundle + README.md card) at ``folder``, which must not exist or be empty."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise KbuildError(f"{folder} already exists and is not an empty folder (choose a new folder for the dataset)")
    kb = store.read(reference)
    history = lineage(store, kb.info)
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        (staging / "data").mkdir(parents=True)
        write_bundle(kb, history, staging / HF_DATA_FILE)
        (staging / "README.md").write_text(dataset_card(kb, history, license), encoding="utf-8")
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(staging, folder)
    except OSError as err:
        raise KbuildError(f"Cannot write {folder}: {err.strerror or err} (choose another folder)") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(kb.info.name, kb.info.content_hash, str(folder), len(kb.descriptions) + len(kb.removed))


def _yaml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def dataset_card(kb: KnowledgeBase, history: list[dict[str, Any]], license: str = DEFAULT_LICENSE) -> str:
    """The README.md of a dataset folder: YAML header for the Hub, then a card for people."""
    m = kb.info.manifest
    clip = m.get("clip") or {}
    shown = m.get("display_names") or {}
    dim = m.get("embedding_dim")
    header = "\n".join([
        "---", f"license: {license}", "pretty_name: " + _yaml_string(f"{kb.info.name} knowledge base"),
        "tags:", "- kbuild", "- clip", "- zero-shot-classification", "configs:", "- config_name: default",
        "  data_files:", "  - split: train", f"    path: {HF_DATA_FILE}", "---", ""])
    rows = [f"| {c} | {shown.get(c, c)} | {n} |" for c, n in (m.get("counts") or {}).items()]
    made = summary_lines(m) or [f"{m.get('operation')} of {', '.join(p['name'] for p in m.get('parents', [])) or '-'}"]
    ancestors = [f"- {a['name']}: {a.get('operation', 'not in the exporting store')} "
                 f"{str(a.get('content_hash'))[:19]}..." + ("" if not summary_lines(a) else f" ({summary_lines(a)[0]})")
                 for a in history]
    body = [
        f"# {kb.info.name}", "",
        f"A knowledge base of visual class descriptions written by kbuild: {m.get('total')} descriptions of "
        f"{m.get('classes')} classes, each with its {dim}-d CLIP text embedding"
        + (f", and {m.get('removed_total')} removed descriptions with the reason and partner" if m.get("removed_total") else "")
        + ".", "",
        f"- content hash: `{m.get('content_hash')}`",
        f"- model: `{clip.get('model_id')}`" + (f", template `{clip.get('template')}`" if clip.get("template") else ""),
        f"- license: {license}", f"- kbuild {m.get('kbuild_version')}, {m.get('operation')} at {m.get('created')}", "",
        "## How it was made", "", *[f"- {line.strip()}" for line in made],
        *(["", "Lineage (nearest first):", "", *ancestors] if ancestors else []), "",
        "## Classes", "", "| class | display name | descriptions |", "|---|---|---|", *rows, "",
        "## Columns", "",
        "`id`, `class` (key), `display_name`, `text`, `vector` (float32, the stored embedding), `source`, `created`, "
        "`extra` (JSON), `state` (`kept` or `removed`), and for removed rows `removed_stage`, `removed_reason`, "
        "`removed_score`, `removed_related` (partner text), `removed_related_classes`. The full manifest and lineage "
        "are in the Parquet file's key-value metadata under `kbuild`.", "",
        "## Loading", "", "```python", "import datasets", "",
        "kb = datasets.load_dataset(\"PATH_OR_REPO\")[\"train\"]",
        "kept = kb.filter(lambda row: row[\"state\"] == \"kept\")", "```", "",
        "Into a kbuild store (same content hash, the stored vectors, no CLIP model loaded):", "",
        "```bash", "kbuild load PATH            # the folder, or the Parquet file in it",
        "kpl eval --kb PATH/" + HF_DATA_FILE + " --features feats.npz",
        "```", ""]
    return header + "\n".join(body)
