"""Files ``kpl`` writes under ``--out DIR``, and the tables the terminal and the HTML report share.

- eval: ``metrics.json`` (the result's JSON form, self-describing), ``confusion_matrix.png`` (KPL's
  final stage), ``predictions.csv`` (one row per image, one column per method), ``report.html``;
- sweep: ``sweep.json``, ``sweep.csv``, ``accuracy_vs_k.png``, ``report.html``;
- compare: ``compare.json``, ``report.html``.

Tables are plain (headers, rows of strings) so the CLI (rich) and the HTML page render the same
numbers. Plots use matplotlib's object API with the Agg canvas: no global backend state, no display.
The HTML page is one self-contained file: every text is escaped and images are embedded as data URIs.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Table = tuple[list[str], list[list[str]]]
# The records drawn here (kpl.evaluate's EvalResult, SweepResult, CompareResult, MethodRun) live above
# this module: naming their types would point an import up, so they are read as Any.
Result = Any
FINAL = "kpl.image_ot"


def pct(value: float | None) -> str:
    """A rate in [0, 1] as a percentage with two decimals, like the paper's tables."""
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def write_json(payload: Any, path: Path) -> Path:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ tables
def eval_table(result: Result) -> Table:
    """Rows: every method run, in table order (skipped methods are in the notes, with the reason).

    Top-1, balanced accuracy and AUROC carry their bootstrap 95 % interval, e.g. ``78.00 [72.5, 83.5]``."""
    headers = ["method", "top-1", "balanced acc", "macro-F1", "AUROC", "iters", "seconds"]
    rows = [[name, with_ci(r.metrics.accuracy, _ci(r, "accuracy")),
             with_ci(r.metrics.balanced_accuracy, _ci(r, "balanced_accuracy")), pct(r.metrics.macro_f1),
             with_ci(_auroc(r), _ci(r, "auroc")), str(r.iterations or "-"), f"{r.seconds:.2f}"]
            for name, r in result.runs.items()]
    return headers, rows


def _ci(run: Result, metric: str) -> list[float] | None:
    return (getattr(run, "ci", None) or {}).get(metric)


def with_ci(value: float | None, interval: list[float] | None) -> str:
    """A percentage and, when known, its 95 % interval with one decimal: ``78.00 [72.5, 83.5]``."""
    if interval is None or value is None or not np.isfinite(value):
        return pct(value)
    return f"{pct(value)} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _auroc(run: Result) -> float | None:
    """Binary AUROC for two classes, else the macro one-vs-rest AUROC."""
    ranking = getattr(run, "ranking", None) or {}
    value = ranking.get("auroc")
    return value if value is not None else ranking.get("macro_auroc_ovr")


def _varying(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    return [key for key in keys if len({row[key] for row in rows}) > 1]


def sweep_table(result: Result) -> Table:
    """Rows: one per (k, setting); only the parameters that vary get a column.

    Per stage top-1 and balanced accuracy; a k "auto" row shows the k it chose, e.g. ``auto (24)``.
    """
    params = ["k", *_varying(result.rows, ("tau_t", "tau_i", "alpha", "ot"))]
    stages = ("text", "image", "image_ot")
    headers = params + list(stages) + [f"{stage} bal" for stage in stages] + ["macro-F1"]
    rows = [[_k_cell(row) if key == "k" else str(row[key]) for key in params]
            + [pct(row[f"{stage}_accuracy"]) for stage in stages]
            + [pct(row[f"{stage}_balanced_accuracy"]) for stage in stages]
            + [pct(row["image_ot_macro_f1"])] for row in result.rows]
    return headers, rows


def _k_cell(row: dict[str, Any]) -> str:
    return f"{row['k']} ({row['chosen_k']})" if "chosen_k" in row else str(row["k"])


COMPARED = (("top-1", lambda run: run.metrics.accuracy), ("bal.acc", lambda run: run.metrics.balanced_accuracy),
            ("AUROC", lambda run: _auroc(run)))


def compare_table(result: Result) -> Table:
    """Rows: per method, one row per snapshot with top-1, balanced accuracy and AUROC, and on every
    snapshot after the first the change of each of the three against the first (a top-1 gain can
    hide a balanced-accuracy loss on an imbalanced set). One row per snapshot keeps the table
    narrow however many snapshots are compared."""
    names = [r.knowledge.kb.info.name for r in result.results]
    headers = (["method", "snapshot"] + [what for what, _ in COMPARED]
               + [f"delta {what}" for what, _ in COMPARED])
    methods = list(dict.fromkeys(m for r in result.results for m in r.runs))
    rows = []
    for method in methods:
        runs = [r.runs.get(method) for r in result.results]
        for i, (name, run) in enumerate(zip(names, runs)):
            cells = [method, name] + [pct(get(run)) if run else "-" for _, get in COMPARED]
            cells += [_delta(runs[0], run, get) if i else "" for _, get in COMPARED]
            rows.append(cells)
    return headers, rows


def _delta(first: Result, last: Result, get: Callable[[Result], float | None]) -> str:
    """``last - first`` in percentage points, ``-`` when either is missing."""
    if first is None or last is None:
        return "-"
    a, b = get(first), get(last)
    if a is None or b is None or not (np.isfinite(a) and np.isfinite(b)):
        return "-"
    return f"{100 * (b - a):+.2f}"


# ------------------------------------------------------------------ plots
def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def row_normalised(confusion: np.ndarray) -> np.ndarray:
    """(C, C) share of each true class (row) given each prediction; rows without images stay 0."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    shares: np.ndarray = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    return shares


def plot_confusion(confusion: np.ndarray, class_names: list[str], title: str, path: Path) -> Path:
    """``confusion_figure`` saved as a PNG at ``path``."""
    confusion_figure(confusion, class_names, title).savefig(path)
    return path


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str) -> Figure:
    """(C, C) counts, rows true and columns predicted, drawn row-normalised (each row is the share of
    that class's images, so a small class is as visible as a large one; its diagonal is the class's
    recall); percentages written in the cells up to 25 classes."""
    c = len(class_names)
    shares = row_normalised(confusion)
    size = min(4 + 0.35 * c, 18)
    figure = _figure(size + 1, size)
    ax = figure.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ticks = np.arange(c)
    ax.set_xticks(ticks, class_names if c <= 60 else [""] * c, rotation=90, fontsize=8)
    ax.set_yticks(ticks, class_names if c <= 60 else [""] * c, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if c <= 25:
        for (i, j), share in np.ndenumerate(shares):
            ax.text(j, i, f"{100 * share:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if share > 0.5 else "black")
    return figure


def plot_accuracy_vs_k(result: Result, path: Path) -> Path:
    """``accuracy_vs_k_figure`` saved as a PNG at ``path``."""
    accuracy_vs_k_figure(result).savefig(path)
    return path


def accuracy_vs_k_figure(result: Result) -> Figure:
    """Balanced accuracy of KPL's final stage per setting; with a single setting also the text and
    image stages. A k "auto" row is drawn as a star at the k it chose; a dotted line marks chance
    (1 / classes), below which a setting does worse than guessing."""
    figure = _figure(7, 4.5)
    ax = figure.add_subplot()
    varying = _varying(result.rows, ("tau_t", "tau_i", "alpha", "ot"))
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    fixed = [row for row in result.rows if "chosen_k" not in row]
    for row in fixed:
        groups.setdefault(tuple(row[key] for key in varying), []).append(row)
    stages = ("text", "image", "image_ot") if len(groups) == 1 else ("image_ot",)
    for setting, rows in groups.items():
        rows = sorted(rows, key=lambda r: r["k"])
        label = ", ".join(f"{key}={value}" for key, value in zip(varying, setting))
        for stage in stages:
            ax.plot([r["k"] for r in rows], [100 * r[f"{stage}_balanced_accuracy"] for r in rows], marker="o",
                    linestyle="-" if stage == "image_ot" else "--", label=f"{stage} {label}".strip())
    for row in result.rows:
        if "chosen_k" in row:
            label = ", ".join(f"{key}={row[key]}" for key in varying)
            ax.plot([row["chosen_k"]], [100 * row["image_ot_balanced_accuracy"]], marker="*", markersize=14,
                    linestyle="none", label=f"auto: k={row['chosen_k']} {label}".strip())
    ks = sorted({row["chosen_k"] if "chosen_k" in row else row["k"] for row in result.rows})
    if len(ks) <= 12:  # a few k, often powers of two: one labelled tick each
        if ks[0] > 0 and ks[-1] / ks[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
    else:  # a dense range (e.g. 1-30): a linear axis with matplotlib's integer ticks
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    chance = getattr(result, "chance", None)
    if chance:
        ax.axhline(100 * chance, color="grey", linestyle=":", linewidth=1, label=f"chance ({100 * chance:.1f})")
    ax.set_xlabel("k (descriptions kept per class)")
    ax.set_ylabel("balanced accuracy (%)")
    ax.set_title(f"KPL balanced accuracy vs k ({result.snapshot['name']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figure


# ------------------------------------------------------------------ CSV
def write_predictions_csv(result: Result, path: Path) -> Path:
    """index, path, true label, the predicted class name of every method, then every method's
    score for every class (columns ``score:METHOD:CLASS``: its logit; TransCLIP's log-assignment)."""
    fs = result.session.features
    names = fs.class_names
    scored = [(name, r.scores) for name, r in result.runs.items() if getattr(r, "scores", None) is not None]
    score_headers = [f"score:{name}:{cls}" for name, _ in scored for cls in names]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "path", "label", *result.runs, *score_headers])
        for i, label in enumerate(fs.labels):
            path_cell = fs.paths[i] if fs.paths else ""
            writer.writerow([i, path_cell, names[label], *(names[r.predictions[i]] for r in result.runs.values()),
                             *(f"{float(v):.6g}" for _, scores in scored for v in scores[i])])
    return path


def write_table_csv(table: Table, path: Path) -> Path:
    headers, rows = table
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------ HTML
_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child,th:first-child"
          "{text-align:left}th{background:#f3f3f3}code{background:#f6f6f6}img{max-width:100%}")


def _html_table(table: Table) -> str:
    headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"></p>'


def _html_facts(facts: dict[str, Any]) -> str:
    items = "".join(f"<li><b>{html.escape(str(k))}</b>: <code>{html.escape(str(v))}</code></li>"
                    for k, v in facts.items())
    return f"<ul>{items}</ul>"


def _html_list(title: str, items: list[str]) -> str:
    if not items:
        return ""
    return f"<h2>{html.escape(title)}</h2><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def write_html(path: Path, title: str, facts: dict[str, Any], sections: list[str]) -> Path:
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{_html_facts(facts)}"
            + "".join(sections) + "</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


def _eval_facts(payload: dict[str, Any]) -> dict[str, Any]:
    snap, features = payload["snapshot"], payload["features"]
    return {"snapshot": f"{snap['name']} ({snap['content_hash']})", "image features": payload["model"]["image_features"],
            "descriptions": payload["model"]["descriptions"], "template": payload["model"]["template"],
            "data": f"{features.get('path')} ({features['images']} images, {len(payload['classes']['names'])} classes)",
            "k": f"auto ({payload['params']['k']})" if payload.get("k_auto") else payload["params"]["k"], "ot": payload["params"]["ot"], "created": payload["created"],
            **_ci_and_environment_facts(payload)}


def _ci_and_environment_facts(payload: dict[str, Any]) -> dict[str, str]:
    """How the intervals were made and what the numbers were computed on (from metrics.json)."""
    facts = {}
    ci = next((r.get("ci95") for r in payload.get("results", {}).values() if r.get("ci95")), None)
    if ci:
        facts["intervals"] = (f"[low, high]: percentile bootstrap {100 * ci['level']:.0f} %, {ci['resamples']} "
                              f"resamples of the images, seed {ci['seed']}")
    env = payload.get("environment")
    if env:
        versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
        cpu = env["cpu"]
        facts["software"] = f"Python {env['python']}, {versions}"
        facts["hardware"] = (f"{cpu['model']} ({cpu['cores']} cores; {' '.join(cpu['simd']) or 'no SIMD flags read'})"
                             + (f"; GPU {env['gpu']['name']}" if env.get("gpu") else ""))
    return facts


# ------------------------------------------------------------------ writers per command
def write_eval_outputs(result: Result, out: Path) -> list[Path]:
    """metrics.json, confusion_matrix.png, predictions.csv and report.html under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = result.to_json()
    written = [write_json(payload, out / "metrics.json"), write_predictions_csv(result, out / "predictions.csv")]
    sections = [_html_table(eval_table(result))]
    if result.runs:
        name = FINAL if FINAL in result.runs else next(iter(result.runs))
        run = result.runs[name]
        shown = payload["classes"].get("display_names", {})  # "melanoma", not the folder code "mel"
        png = plot_confusion(run.metrics.confusion, [shown.get(c, c) for c in result.session.features.class_names],
                             f"{name} on {payload['snapshot']['name']}: balanced accuracy "
                             f"{with_ci(run.metrics.balanced_accuracy, _ci(run, 'balanced_accuracy'))}%",
                             out / "confusion_matrix.png")
        written.append(png)
        sections.append(f"<h2>Confusion matrix ({html.escape(name)}, row-normalised)</h2>" + _html_image(png))
    sections.append(_html_list("Notes", payload["notes"]))
    for cls, texts in payload["selected_descriptions"].items():
        sections.append(_html_list(f"Selected descriptions: {cls}", texts))
    written.append(write_html(out / "report.html", "kpl eval", _eval_facts(payload), sections))
    return written


def write_sweep_outputs(result: Result, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = sweep_table(result)
    png = plot_accuracy_vs_k(result, out / "accuracy_vs_k.png")
    facts = {"snapshot": f"{result.snapshot['name']} ({result.snapshot['content_hash']})",
             "features": result.features.get("path"), "grid": json.dumps({k: v for k, v in result.grid.items() if k != "base"})}
    sections = [_html_table(table), _html_image(png), _html_list("Notes", result.notes)]
    return [write_json(result.to_json(), out / "sweep.json"), write_table_csv(table, out / "sweep.csv"), png,
            write_html(out / "report.html", "kpl sweep", facts, sections)]


def write_compare_outputs(result: Result, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = compare_table(result)
    facts = {r.knowledge.kb.info.name: r.knowledge.kb.info.content_hash for r in result.results}
    diffs = [f"{d['old']} -> {d['new']}: {d['summary']}" for d in result.diffs]
    sections = [_html_table(table), _html_list("Differences", diffs)]
    return [write_json(result.to_json(), out / "compare.json"), write_table_csv(table, out / "compare.csv"),
            write_html(out / "report.html", "kpl compare", facts, sections)]
