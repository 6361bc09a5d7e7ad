"""The ``kpl`` command line: thin commands over ``kpl.evaluate`` and ``kpl.results.report``.

Data (tables, ``--json``) goes to stdout; progress, notes and errors go to stderr, so
``kpl eval ... --json | jq`` always works. Errors pass through kbuild's single error boundary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kbuild.cli.kit import ENV_KPL_CACHE, ChromaUrlOpt, JsonOpt, ModelOpt, PretrainedOpt, StoreOpt, run_with_boundary, visible
from kpl.errors import UsageError
from kpl.images.shards import DEFAULT_SHARD_SIZE
from kpl.params import DEFAULT_KNN_RECALL, KPLParams

app = typer.Typer(
    name="kpl",
    help="Training-free CLIP classification with a knowledge-base snapshot (KPL) and its baselines.\n\n"
         "Example: kpl eval --kb latest --data images/ --out results/",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)
console = Console(highlight=False, markup=False, emoji=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
_D = KPLParams()

# ------------------------------------------------------------------ options
KbOpt = Annotated[str, typer.Option("--kb", help="Snapshot: snapshot_v3, v3, latest or a tag; or a Parquet bundle FILE.parquet (kbuild export --format parquet), read without a store.")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Images: an ImageFolder DIR/<class>/*.jpg, or a CSV manifest (path,label).")]
FeaturesOpt = Annotated[Optional[Path], typer.Option(
    "--features", help="Precomputed features .npz (image_features, labels, class_names[, model_id, "
                       "name_embeddings]); with the snapshot's model_id no CLIP model is loaded.")]
SplitOpt = Annotated[Optional[str], typer.Option("--split", help="Use DIR/<split>/<class>/ (e.g. val).")]
ClassMapOpt = Annotated[Optional[Path], typer.Option(
    "--class-map", help="JSON {folder: kb class} or CSV folder,class mapping dataset classes to snapshot classes.")]
TemplateOpt = Annotated[Optional[str], typer.Option(
    "--template", help="Description template (class name, description) \\[default: the snapshot's]; "
                       "another one re-embeds the descriptions.")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="cuda, mps or cpu for image encoding \\[default: auto]; an explicit cuda also runs KPL and the "
                     "baselines on the GPU.")]
PrecisionOpt = Annotated[str, typer.Option(
    "--precision", help="auto, fp32, fp16 or bf16: image encoding (autocast) and KPL's proxy loop. auto = fp16 "
                        "encoding on CUDA, fp32 elsewhere and for the loop (half changes some predictions).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="DataLoader worker processes \\[default: 0 on CPU, one per core (up to 8) on a GPU].")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", envvar=ENV_KPL_CACHE, show_envvar=True,
    help="Feature cache folder \\[default: <store>/cache/features].")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Encode the images even if cached; cache nothing.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Write metrics.json, plots, CSV and report.html here.")]
MethodsOpt = Annotated[Optional[str], typer.Option(
    "--methods", help="Comma list of clip, dclip, cupl, inmap, transclip, stata, kpl \\[default: all].")]
KnnOpt = Annotated[str, typer.Option(
    "--knn", help="TransCLIP's neighbour graph: auto (exact below 200 000 images, else faiss), exact or faiss "
                  "(approximate; needs kpl-toolkit\\[scale]).")]
KnnRecallOpt = Annotated[float, typer.Option(
    "--knn-recall", help="Recall an approximate graph must reach, measured on 1000 sampled images (0-1].")]
OtOpt = Annotated[str, typer.Option("--ot", help="Pseudo-labels: greenkhorn, sinkhorn or none.")]
TauTOpt = Annotated[float, typer.Option("--tau-t", help="Text-logit temperature.")]
TauIOpt = Annotated[float, typer.Option("--tau-i", help="Vision-proxy temperature.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Plan rows above this confidence become one-hot.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Vision-proxy step size.")]
ItersOpt = Annotated[int, typer.Option("--iters", help="Vision-proxy iterations (at most).")]
GammaOpt = Annotated[float, typer.Option("--gamma", help="Class-prior exponent of the OT target (0 = uniform).")]
ExactOpt = Annotated[bool, typer.Option("--exact-iters", help="Run all --iters, no early stop (for audits).")]
PriorOpt = Annotated[str, typer.Option(
    "--prior", help="KPL's class shares: uniform (the paper's: every class equally frequent) or auto (estimated "
                    "from the batch without labels; eval then shows kpl and kpl_auto rows). See README.")]
KOpt = Annotated[str, typer.Option(
    "--k", help="Descriptions kept per class, or auto: chosen without labels from k = 1..30 (see README).")]
EngineOpt = Annotated[str, typer.Option(
    "--engine", help="Image encoding: local (this process) or ray (a Ray cluster; needs kpl-toolkit\\[distributed]).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address",
    help="With --engine ray, on a node of a running cluster: auto or HEAD_IP:6379 \\[default: start a local one].")]
RayActorsOpt = Annotated[Optional[int], typer.Option(
    "--ray-actors", help="With --engine ray: encoder actors \\[default: one per GPU; on CPUs one per 4 cores].")]
ShardSizeOpt = Annotated[int, typer.Option(
    "--shard-size",
    help="With --engine ray: images per resumable shard (a killed run re-encodes only the missing shards).")]


def _info(message: str) -> None:
    print(visible(message), file=sys.stderr, flush=True)


def _progress():
    """A (done, total) callback: a live line on a terminal, a few lines in a log."""
    state = {"last": 0.0}
    live = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - state["last"] < (0.2 if live else 5.0):
            return
        state["last"] = now
        end = "\n" if done >= total or not live else ""
        print(f"{chr(13) if live else ''}encoding images: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return report


def _graph_settings(knn: str, knn_recall: float):
    """TransCLIP's settings with the chosen kNN graph, checked before anything is loaded."""
    from kpl.peers.transclip import TransCLIPParams

    return TransCLIPParams(knn=knn, knn_recall=knn_recall).validate()


def _engine(options: Mapping[str, Any]):
    from kpl.images.ray_engine import EngineSpec

    return EngineSpec(name=options["engine"], address=options["ray_address"], actors=options["ray_actors"],
                      shard_size=options["shard_size"]).validate()


def _request(options: Mapping[str, Any]):
    """The one request object of eval, compare, sweep and embed (``kpl.evaluate.Inputs``), from a command's
    options (``ctx.params``: the names of its signature), checked before any snapshot is read or image
    encoded. An option a command does not offer (embed has no --features) is None."""
    from kpl.evaluate import Inputs

    engine = _engine(options)
    batch_size, workers, precision = options["batch_size"], options["workers"], options["precision"]
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1 (got {batch_size})")
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be >= 0 (got {workers})")
    _check_precision(precision)
    return Inputs(data=options.get("data"), features=options.get("features"), split=options.get("split"),
                  class_map=options.get("class_map"), model=options.get("model"), pretrained=options.get("pretrained"),
                  template=options.get("template"), device=options.get("device"), batch_size=batch_size,
                  workers=workers, cache_dir=options.get("cache_dir"), use_cache=not options["no_cache"],
                  store=options.get("store"), chroma_url=options.get("chroma_url"), precision=precision, engine=engine)


def _kpl_params(options: Mapping[str, Any]) -> tuple[KPLParams, bool]:
    """eval's and compare's KPL settings, checked, and whether ``--k auto`` asked KPL to choose k."""
    k, auto_k = _parse_k(options["k"])
    params = KPLParams(k=k, ot=options["ot"], tau_t=options["tau_t"], tau_i=options["tau_i"], alpha=options["alpha"],
                       lr=options["lr"], iters=options["iters"], gamma=options["gamma"],
                       exact_iters=options["exact_iters"],
                       precision=_loop_precision(options["precision"], options["device"]), prior=options["prior"])
    return params.validate(), auto_k


def _check_precision(precision: str) -> None:
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise UsageError(f"--precision must be auto, fp32, fp16 or bf16 (got {precision!r})")


def _loop_precision(precision: str, device: str | None) -> str:
    """KPL's proxy-loop precision: fp32 unless asked for by name.

    Unlike image encoding, auto never picks half precision here: on synthetic data (bench_kpl
    --quick) the fp16 loop changed 11 % of image_ot predictions and bf16 70 %, so it is opt-in.
    """
    _check_precision(precision)
    return "fp32" if precision == "auto" else precision


def _open(inputs, kb_refs: list[str]):
    from kpl.evaluate import open_session

    session = open_session(inputs, kb_refs, log=_info, progress=_progress())
    fs = session.features
    _info(f"features: {fs.features.shape[0]} images x {fs.dim} ({fs.cache.get('status')}, {fs.encoded} encoded)")
    return session


def _say_chosen_k(record: dict | None, where: str) -> None:
    """One stderr line naming the k that ``--k auto`` chose (the table alone does not say it)."""
    if record:
        low, high = record["range"]
        agreement = record["mean_agreement"].get(str(record["chosen_k"]))
        _info(f"k auto ({where}): chose k={record['chosen_k']} of {low}..{high} ({record['rule']}, mean agreement "
              f"{agreement:.3f} with the other k)")


def _print_table(table, title: str | None = None) -> None:
    headers, rows = table
    rich_table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for i, header in enumerate(headers):
        rich_table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        rich_table.add_row(*(Text(visible(str(cell))) for cell in row))  # names are data: no markup, controls escaped
    console.print(rich_table)


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False, default=str))


def _emit(result, options: Mapping[str, Any], table, title: str, writer) -> None:
    """Write ``--out``'s files with ``writer``, then print ``result`` as JSON (``--json``) or as ``table``."""
    if options["out"] is not None:
        for path in writer(result, options["out"]):
            _info(f"wrote {path}")
    if options["json_out"]:
        _print_json(result.to_json())
    else:
        _print_table(table, title)


# ------------------------------------------------------------------ commands
@app.command("eval", epilog="Examples: kpl eval --kb latest --data derm/ --split val --out results/ | "
                    "kpl eval --kb v2 --features feats.npz --methods clip,kpl --json")
def eval_(
    ctx: typer.Context, kb: KbOpt, data: DataOpt = None, features: FeaturesOpt = None, split: SplitOpt = None,
    class_map: ClassMapOpt = None, model: ModelOpt = None, pretrained: PretrainedOpt = None,
    template: TemplateOpt = None, k: KOpt = str(_D.k),
    ot: OtOpt = _D.ot, tau_t: TauTOpt = _D.tau_t, tau_i: TauIOpt = _D.tau_i, alpha: AlphaOpt = _D.alpha,
    lr: LrOpt = _D.lr, iters: ItersOpt = _D.iters, gamma: GammaOpt = _D.gamma, exact_iters: ExactOpt = False,
    prior: PriorOpt = _D.prior,
    methods: MethodsOpt = None, knn: KnnOpt = "auto", knn_recall: KnnRecallOpt = DEFAULT_KNN_RECALL,
    batch_size: BatchOpt = 64, workers: WorkersOpt = None, device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    cache_dir: CacheDirOpt = None, no_cache: NoCacheOpt = False, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, ray_actors: RayActorsOpt = None, shard_size: ShardSizeOpt = DEFAULT_SHARD_SIZE,
    out: OutOpt = None,
    store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Run KPL and the baselines (clip, dclip, cupl, inmap, transclip, stata) on a dataset with a snapshot's descriptions."""
    from kpl.evaluate import evaluate
    from kpl.results.report import eval_table, write_eval_outputs

    params, auto_k = _kpl_params(ctx.params)
    chosen = _parse_methods(methods)
    graph = _graph_settings(knn, knn_recall)
    result = evaluate(_open(_request(ctx.params), [kb]), params, chosen, auto_k=auto_k, transclip=graph)
    _say_chosen_k(result.k_auto, result.knowledge.kb.info.name)
    for method, why in result.skipped.items():
        _info(f"skipped {method}: {why}")
    title = f"{result.knowledge.kb.info.name} on {result.session.features.features.shape[0]} images"
    _emit(result, ctx.params, eval_table(result), title, write_eval_outputs)


def _parse_methods(text: str | None) -> tuple[str, ...]:
    """``"clip,kpl"`` -> ("clip", "kpl"); empty means all, in the table's order."""
    from kpl.evaluate import METHODS

    if not text or text.strip() == "all":
        return METHODS
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UsageError(f"Unknown method(s) {', '.join(unknown) or repr(text)}. Available: {', '.join(METHODS)}")
    return tuple(m for m in METHODS if m in names)


def _parse_k(text: str) -> tuple[int, bool]:
    """``--k`` of eval/compare: (k, False) for an integer, (default k, True) for ``auto``."""
    from kpl.method.auto_k import is_auto

    if is_auto(text):
        return _D.k, True
    try:
        return int(text.strip()), False
    except ValueError:
        raise UsageError(f"--k: {text!r} is not an integer or 'auto' (write e.g. --k 8 or --k auto)") from None


MAX_SWEEP_KS = 1000  # one KPL run each: more is a typo (1-200000000 once took 15 GB before any work)


def _parse_ks(text: str) -> list:
    """``--k`` of sweep: a comma list of integers, ranges ``1-30`` or ``1..30``, and ``auto``; at most
    ``MAX_SWEEP_KS`` values, checked before a range is expanded."""
    from kpl.method.auto_k import is_auto

    values: list = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if is_auto(part):
            values.append("auto")
            continue
        bounds = part.split("..") if ".." in part else part.split("-") if "-" in part.lstrip("-") else None
        if bounds is None:
            values.extend(_parse_list(part, int, "--k"))
            continue
        try:
            low, high = (int(b) for b in bounds)
        except ValueError:
            raise UsageError(f"--k: {part!r} is not a range of integers (write e.g. --k 1-30 or --k 1..30)") from None
        if low > high:
            raise UsageError(f"--k: the range {part!r} is empty (start {low} > end {high}); write e.g. --k {high}-{low}")
        if high - low + 1 > MAX_SWEEP_KS:
            raise UsageError(f"--k: the range {part!r} has {high - low + 1} values, a sweep runs at most "
                             f"{MAX_SWEEP_KS} (narrow it, e.g. --k 1-30,40,50)")
        values.extend(range(low, high + 1))
        if len(values) > MAX_SWEEP_KS:
            raise UsageError(f"--k: {text!r} lists more than {MAX_SWEEP_KS} values, the most a sweep runs "
                             "(narrow it, e.g. --k 1-30,40,50)")
    if not values:
        raise UsageError("--k needs at least one value (e.g. --k 1-30,auto)")
    return list(dict.fromkeys(values))


def _parse_list(text: str, kind, option: str) -> list:
    """``"1,2,4"`` -> [1, 2, 4] for a comma-list option, with a one-line error for a bad value."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            values.append(kind(part))
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not a valid {kind.__name__} (write e.g. {option} 1,2,4)") from None
    if not values:
        raise UsageError(f"{option} needs at least one value")
    return list(dict.fromkeys(values))


@app.command(epilog="Example: kpl sweep --kb latest --data derm/ --k 1,2,4,8,16,32,50 --tau-t 0.01,0.02 --out sweep/")
def sweep(
    ctx: typer.Context, kb: KbOpt, data: DataOpt = None, features: FeaturesOpt = None, split: SplitOpt = None,
    class_map: ClassMapOpt = None, model: ModelOpt = None, pretrained: PretrainedOpt = None,
    template: TemplateOpt = None,
    k: Annotated[str, typer.Option("--k", help="Comma list of k, ranges (1-30 or 1..30) and auto.")] = "1,2,4,8,16,32",
    ot: Annotated[str, typer.Option("--ot", help="Comma list of OT methods.")] = _D.ot,
    tau_t: Annotated[str, typer.Option("--tau-t", help="Comma list of text temperatures.")] = str(_D.tau_t),
    tau_i: Annotated[str, typer.Option("--tau-i", help="Comma list of vision temperatures.")] = str(_D.tau_i),
    alpha: Annotated[str, typer.Option("--alpha", help="Comma list of alphas.")] = str(_D.alpha),
    lr: LrOpt = _D.lr, iters: ItersOpt = _D.iters, gamma: GammaOpt = _D.gamma, exact_iters: ExactOpt = False,
    prior: PriorOpt = _D.prior,
    batch_size: BatchOpt = 64, workers: WorkersOpt = None, device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    cache_dir: CacheDirOpt = None, no_cache: NoCacheOpt = False, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, ray_actors: RayActorsOpt = None, shard_size: ShardSizeOpt = DEFAULT_SHARD_SIZE,
    out: OutOpt = None,
    store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Run KPL for many settings over one feature cache: a table and a balanced-accuracy-vs-k plot."""
    from kpl.evaluate import sweep as run_sweep
    from kpl.results.report import sweep_table, write_sweep_outputs

    ks = _parse_ks(k)
    grid = {"ot": _parse_list(ot, str, "--ot"), "tau_t": _parse_list(tau_t, float, "--tau-t"),
            "tau_i": _parse_list(tau_i, float, "--tau-i"), "alpha": _parse_list(alpha, float, "--alpha")}
    base = KPLParams(k=next((v for v in ks if v != "auto"), _D.k), lr=lr, iters=iters, gamma=gamma,
                     exact_iters=exact_iters, precision=_loop_precision(precision, device), prior=prior)
    for key, values in grid.items():  # fail on a bad value before any image is encoded
        for value in values:
            KPLParams(**{**base.to_json(), key: value}).validate()
    for value in ks:
        if value != "auto":
            KPLParams(**{**base.to_json(), "k": value}).validate()
    result = run_sweep(_open(_request(ctx.params), [kb]), base, ks, grid)
    for row in result.rows:
        if "chosen_k" in row:
            setting = ", ".join(f"{key}={row[key]}" for key in ("tau_t", "tau_i", "alpha", "ot") if len(grid[key]) > 1)
            _info(f"k auto ({result.snapshot['name']}{': ' + setting if setting else ''}): chose k={row['chosen_k']}")
    _emit(result, ctx.params, sweep_table(result), f"sweep of {result.snapshot['name']}", write_sweep_outputs)


@app.command(epilog="Example: kpl compare --kb v1 --kb v2 --data derm/ --out compare/")
def compare(
    ctx: typer.Context,
    kb: Annotated[list[str], typer.Option("--kb", help="Snapshots to compare (repeat: --kb v1 --kb v2).")],
    data: DataOpt = None, features: FeaturesOpt = None, split: SplitOpt = None,
    class_map: ClassMapOpt = None, model: ModelOpt = None, pretrained: PretrainedOpt = None,
    template: TemplateOpt = None, k: KOpt = str(_D.k),
    ot: OtOpt = _D.ot, tau_t: TauTOpt = _D.tau_t, tau_i: TauIOpt = _D.tau_i, alpha: AlphaOpt = _D.alpha,
    lr: LrOpt = _D.lr, iters: ItersOpt = _D.iters, gamma: GammaOpt = _D.gamma, exact_iters: ExactOpt = False,
    prior: PriorOpt = _D.prior,
    methods: MethodsOpt = None, knn: KnnOpt = "auto", knn_recall: KnnRecallOpt = DEFAULT_KNN_RECALL,
    batch_size: BatchOpt = 64, workers: WorkersOpt = None, device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    cache_dir: CacheDirOpt = None, no_cache: NoCacheOpt = False, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, ray_actors: RayActorsOpt = None, shard_size: ShardSizeOpt = DEFAULT_SHARD_SIZE,
    out: OutOpt = None,
    store: StoreOpt = None, chroma_url: ChromaUrlOpt = None, json_out: JsonOpt = False,
) -> None:
    """Evaluate two or more snapshots on the same features, side by side, with their differences."""
    from kpl.evaluate import compare as run_compare
    from kpl.results.report import compare_table, write_compare_outputs

    if len(kb) < 2:
        raise UsageError("compare needs at least two snapshots: --kb A --kb B")
    params, auto_k = _kpl_params(ctx.params)
    chosen = _parse_methods(methods)
    graph = _graph_settings(knn, knn_recall)
    result = run_compare(_open(_request(ctx.params), list(kb)), params, chosen, auto_k=auto_k, transclip=graph)
    for each in result.results:
        _say_chosen_k(each.k_auto, each.knowledge.kb.info.name)
    _emit(result, ctx.params, compare_table(result), "compare", write_compare_outputs)
    if not json_out:
        for diff in result.diffs:
            console.print(Text(visible(f"{diff['old']} -> {diff['new']}: {diff['summary']}")))


@app.command(epilog="Example: kpl embed --data derm/ --split val --export derm_val.npz")
def embed(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", help="Images: an ImageFolder DIR or a CSV manifest.")],
    split: SplitOpt = None, model: ModelOpt = None, pretrained: PretrainedOpt = None,
    export: Annotated[Optional[Path], typer.Option("--export", help="Also write the features to this .npz.")] = None,
    batch_size: BatchOpt = 64, workers: WorkersOpt = None, device: DeviceOpt = None,
    precision: PrecisionOpt = "auto",
    cache_dir: CacheDirOpt = None, no_cache: NoCacheOpt = False, engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None, ray_actors: RayActorsOpt = None, shard_size: ShardSizeOpt = DEFAULT_SHARD_SIZE,
    store: StoreOpt = None, json_out: JsonOpt = False,
) -> None:
    """Encode a dataset's images into the feature cache (and optionally export them as .npz)."""
    from kpl.evaluate import load_image_features
    from kpl.images.features import feature_notes, save_features_npz

    fs, dataset, _clip = load_image_features(_request(ctx.params), _progress())
    for message in feature_notes(fs, dataset):
        _info(message)
    summary = {**fs.describe(), "dataset": dataset.describe() if dataset else None}
    if export is not None:
        summary["export"] = str(save_features_npz(fs, export))
        _info(f"wrote {export}")
    if json_out:
        _print_json(summary)
        return
    print(f"{fs.features.shape[0]} images x {fs.dim} from {fs.source.get('path')}: cache {fs.cache['status']}, "
          f"{fs.encoded} encoded, {len(fs.corrupt)} corrupt, "
          f"{sum(summary['dataset']['skipped'].values()) if dataset else 0} skipped")


@app.command(epilog="Example: kpl models | kpl eval --kb latest --data derm/ --model monet")
def models(json_out: JsonOpt = False) -> None:
    """List general CLIP models and the medical ones --model accepts by name, with their sources and whether they are cached locally."""
    from kbuild.clip.registry import general_rows, registry_rows

    rows = general_rows() + registry_rows()
    if json_out:
        _print_json(rows)
        return
    cached: dict[bool | None, str] = {True: "yes", False: "no", None: "?"}
    _print_table((["name", "model", "library", "domain", "cached"],
                  [[r["name"], r["model"], r["library"], r["domain"], cached[r["cached"]]] for r in rows]))
    for r in rows:
        console.print(f"{r['name']}: {r['source']}", markup=False)
    _info("use any of them as --model NAME; offline, pre-download with 'huggingface-cli download ORG/REPO'")


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_with_boundary(app, "kpl", argv))
