"""``kbuild generate`` (LLM descriptions -> a new snapshot) and ``kbuild prompts list|show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import settings
from ..classes_file import parse_classes_file
from ..embedding import check_template
from ..errors import KbuildError, UsageError
from ..llm.calllog import CallLog
from ..llm.generate import (GenerateOptions, GenerateResult, check_request, generate_descriptions,
                            generation_parameters, snapshot_draft)
from ..prompts import list_prompts, load_prompt
from ..store import validate_snapshot_name
from .app import app
from .context import clip_provenance, info, load_embedder, open_store, print_json
from .options import ChromaUrlOpt, JsonOpt, ModelOpt, NameOpt, PretrainedOpt, StoreOpt, TemplateOpt

PromptsDirOpt = Annotated[Optional[Path], typer.Option(
    "--prompts-dir", envvar=settings.ENV_PROMPTS_DIR, show_envvar=True,
    help="Folder of prompt templates (*.toml) \\[default: the prompts/ shipped with kbuild].")]
ModalityOpt = Annotated[Optional[str], typer.Option(
    "--modality", help="Imaging modality for the medical prompt, e.g. 'chest X-ray', 'fundus photograph', "
                       "'dermoscopy', 'brain MRI', 'microscopy'.")]
VarOpt = Annotated[Optional[list[str]], typer.Option(
    "--var", help="Another template variable as NAME=VALUE (repeatable).")]

prompts_app = typer.Typer(help="Prompt templates for 'kbuild generate'.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


def _variables(modality: str | None, pairs: list[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--var expects NAME=VALUE, got {pair!r}")
        values[name.strip()] = value.strip()
    if modality is not None:
        values["modality"] = modality
    return values


@app.command(epilog="Examples: kbuild generate --classes classes.txt | kbuild generate --classes derm.txt "
                    "--prompt medical --modality dermoscopy --per-class 30 | kbuild generate --classes classes.txt "
                    "--base-url http://127.0.0.1:11434/v1 --llm-model llama3.1")
def generate(
    classes: Annotated[Path, typer.Option("--classes", help="Classes file: one class per line, "
                                          "optionally 'folder_name: display name'.")],
    prompt: Annotated[str, typer.Option("--prompt", help="Prompt template name (see 'kbuild prompts list') "
                                        "or a .toml file.")] = "general",
    llm_model: Annotated[Optional[str], typer.Option(
        "--llm-model", envvar=settings.ENV_LLM_MODEL, show_envvar=True,
        help=f"Chat model to ask \\[default: {settings.DEFAULT_LLM_MODEL}].")] = None,
    base_url: Annotated[Optional[str], typer.Option(
        "--base-url", envvar=settings.ENV_OPENAI_BASE_URL, show_envvar=True,
        help="Any OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio), e.g. "
             "http://127.0.0.1:11434/v1 \\[default: OpenAI].")] = None,
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Descriptions wanted per class.")] = 50,
    temperature: Annotated[Optional[float], typer.Option("--temperature", min=0.0, max=2.0,
                                                         help="Sampling temperature \\[default: the model's].")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Sampling seed, for providers that honour it.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64,
                                             help="Classes asked at the same time.")] = 8,
    modality: ModalityOpt = None,
    var: VarOpt = None,
    max_rounds: Annotated[int, typer.Option("--max-rounds", min=1, help="Requests per class at most "
                                            "(each asks for the descriptions still missing).")] = 5,
    max_reasks: Annotated[int, typer.Option("--max-reasks", min=0, help="Times an unusable reply is "
                                            "asked again before the class fails.")] = 2,
    min_per_class: Annotated[Optional[int], typer.Option(
        "--min-per-class", min=1, help="Accept a class with this many unique descriptions when the rounds "
                                       "run out \\[default: --per-class].")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for one reply.")] = 60.0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries of a request after HTTP 429/5xx "
                                         "or a timeout.")] = 4,
    backoff: Annotated[float, typer.Option("--backoff", min=0.0, help="First retry delay in seconds, "
                                           "doubled each retry (with jitter; Retry-After wins).")] = 1.0,
    prompts_dir: PromptsDirOpt = None,
    name: NameOpt = None,
    template: TemplateOpt = settings.DEFAULT_TEMPLATE,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ask an LLM for visual descriptions of each class; every call is logged and cached; write a snapshot."""
    from ..llm.client import ChatClient, RetryPolicy, resolve_api_key

    entries = parse_classes_file(classes)
    template_ = load_prompt(prompt, settings.prompts_dir(str(prompts_dir) if prompts_dir else None))
    options = GenerateOptions(per_class, concurrency, max_rounds, max_reasks, min_per_class,
                              _variables(modality, var))
    check_request(entries, template_, options)
    check_template(template)
    if name is not None:
        validate_snapshot_name(name)
    url = settings.openai_base_url(base_url)
    api_key = resolve_api_key(settings.openai_api_key(), url)
    kb_store = open_store(store, chroma_url)
    if name is not None and any(s.name == name for s in kb_store.list()):
        raise UsageError(f"Snapshot '{name}' already exists and snapshots are immutable (choose another --name)")
    client = ChatClient(settings.llm_model(llm_model), url, api_key, temperature=temperature, seed=seed,
                        timeout_s=timeout, policy=RetryPolicy(retries=retries, base_s=backoff))
    info(f"Asking {client.model} at {client.base_url} for {per_class} descriptions of each of "
         f"{len(entries)} classes (prompt {template_.name}, {template_.hash[:15]}...)")
    with CallLog.for_store(kb_store.home) as log:
        result = generate_descriptions(entries, template_, options, log, client,
                                       progress=lambda event: info(event.describe()))
    _print_stats(result, client.model)
    if result.failures:
        _fail(result, len(entries))
    # CLIP is loaded only now: its load time does not delay the first call, and should it fail,
    # the rerun finds every call in the log and costs nothing.
    embedder = load_embedder(kb_store, model, pretrained)
    parameters = generation_parameters(template_, options, client, classes.name)
    draft = snapshot_draft(result, embedder, template, parameters, clip_provenance(embedder, template))
    snapshot = kb_store.publish(draft, name=name)
    if json_out:
        print_json({"snapshot": snapshot.name, "content_hash": snapshot.content_hash, **result.to_json()})
        return
    manifest = snapshot.manifest
    print(f"{snapshot.name}: {manifest['total']} descriptions in {manifest['classes']} classes "
          f"({manifest['content_hash'][:19]}...)")


def _print_stats(result: GenerateResult, model: str) -> None:
    stats = result.stats
    info(f"LLM calls: {stats.made} made, {stats.cached} taken from cache"
         f" ({stats.errors} failed attempts, {stats.malformed} unusable replies)")
    info(f"Tokens: {stats.prompt_tokens} prompt + {stats.completion_tokens} completion; {_cost_text(stats, model)}")
    info(f"Call log: {result.log_path}")


def _cost_text(stats, model: str) -> str:
    if stats.estimated_cost_usd is not None:
        return f"estimated cost ${stats.estimated_cost_usd:.4f} (list prices of {model})"
    if stats.made and stats.usage_missing:
        return "cost unknown (the server reported no token usage)"
    return f"cost unknown (no price known for '{model}')"


def _fail(result: GenerateResult, total: int) -> None:
    for class_name, reason in result.failures.items():
        info(f"failed: {class_name}: {reason}")
    raise KbuildError(f"{len(result.failures)} of {total} classes failed (listed above), so no snapshot was "
                      "written; every finished call is cached, so rerunning the same command completes "
                      "the rest without paying for them again")


# ---- kbuild prompts ---------------------------------------------------------------------------

@prompts_app.command("list")
def prompts_list(prompts_dir: PromptsDirOpt = None, json_out: JsonOpt = False) -> None:
    """List the prompt templates, their variables and hashes."""
    good, bad = list_prompts(settings.prompts_dir(str(prompts_dir) if prompts_dir else None))
    for line in bad:
        info(f"skipped: {line}")
    if json_out:
        print_json([p.to_json() for p in good])
        return
    for p in good:
        variables = ", ".join(v.name + ("" if v.default is None else f"={v.default}") for v in p.variables.values())
        print(f"{p.name:<14} {p.hash[:19]}  {p.description}\n{'':<14} variables: {variables}")


@prompts_app.command("show", epilog="Example: kbuild prompts show medical --class pneumonia --modality 'chest X-ray'")
def prompts_show(
    prompt_name: Annotated[str, typer.Argument(metavar="NAME", help="Template name or .toml file.")],
    class_name: Annotated[Optional[str], typer.Option("--class", help="Render the messages for this class.")] = None,
    count: Annotated[Optional[int], typer.Option("--count", min=1, help="Descriptions asked for when rendering.")] = None,
    modality: ModalityOpt = None,
    var: VarOpt = None,
    prompts_dir: PromptsDirOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show a template; with --class, the system and user messages exactly as they would be sent."""
    p = load_prompt(prompt_name, settings.prompts_dir(str(prompts_dir) if prompts_dir else None))
    rendered = None
    if class_name is not None:
        values = {**_variables(modality, var), "class_name": class_name}
        if count is not None:
            values["count"] = str(count)
        rendered = dict(zip(("system", "user"), p.render(values)))
    if json_out:
        print_json({**p.to_json(), "rendered": rendered})
        return
    print(f"{p.name}  {p.hash}\n{p.description}\nfile: {p.path}")
    for v in p.variables.values():
        default = "required" if v.default is None else f"default {v.default}"
        examples = f"; e.g. {', '.join(v.examples)}" if v.examples else ""
        print(f"  {{{v.name}}}: {v.description} ({default}{examples})")
    print(f"output ({p.output_format}): {p.output_description}")
    for part, text in (rendered or {"system": p.system, "user": p.user, "follow_up": p.follow_up}).items():
        print(f"\n--- {part} ---\n{text}")
