"""``kbuild generate``: LLM descriptions of each class -> a new snapshot (core: ``kbuild.ops.generate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kbuild import settings
from kbuild.classes_file import parse_classes_file
from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import info, open_store, print_json
from kbuild.cli.options import ChromaUrlOpt, JsonOpt, ModelOpt, NameOpt, PretrainedOpt, StoreOpt, TemplateOpt
from kbuild.clip.choice import ModelRequest
from kbuild.clip.text import check_template
from kbuild.descriptions import DEFAULT_TEMPLATE, visible
from kbuild.errors import UsageError
from kbuild.ops.generate import GenerateRequest, generate_snapshot
from kbuild.ops.unchanged import republished_message, unchanged_message
from kbuild.sources.llm.generate import GenerateOptions, GenerateResult, check_request
from kbuild.sources.llm.prompts import load_prompt
from kbuild.store import validate_snapshot_name

PromptsDirOpt = Annotated[Optional[Path], typer.Option(
    "--prompts-dir", envvar=settings.ENV_PROMPTS_DIR, show_envvar=True,
    help="Folder of prompt templates (*.toml) \\[default: the prompts/ shipped with kbuild].")]
ModalityOpt = Annotated[Optional[str], typer.Option(
    "--modality", help="Imaging modality for the medical prompt, e.g. 'chest X-ray', 'fundus photograph', "
                       "'dermoscopy', 'brain MRI', 'microscopy'.")]
VarOpt = Annotated[Optional[list[str]], typer.Option(
    "--var", help="Another template variable as NAME=VALUE (repeatable).")]


def template_variables(modality: str | None, pairs: list[str] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--var expects NAME=VALUE, got {pair!r}")
        values[name.strip()] = value.strip()
    if modality is not None:
        values["modality"] = modality
    return values


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
    force: Annotated[bool, typer.Option("--force", help="Publish even when the result equals the latest generated snapshot.")] = False,
    template: TemplateOpt = DEFAULT_TEMPLATE,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    store: StoreOpt = None,
    chroma_url: ChromaUrlOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ask an LLM for visual descriptions of each class; every call is logged and cached; write a snapshot."""
    from kbuild.sources.llm.client import ChatClient, ChatSettings, RetryPolicy, resolve_api_key

    entries = parse_classes_file(classes)
    template_ = load_prompt(prompt, settings.prompts_dir(str(prompts_dir) if prompts_dir else None))
    options = GenerateOptions(per_class=per_class, concurrency=concurrency, max_rounds=max_rounds,
                              max_reasks=max_reasks, min_per_class=min_per_class,
                              variables=template_variables(modality, var))
    request = GenerateRequest(entries, template_, options, classes_label=classes.name, template=template,
                              name=name, force=force, model=ModelRequest(model, pretrained))
    check_request(entries, template_, options)
    check_template(template)
    if name is not None:
        validate_snapshot_name(name)
    url = settings.openai_base_url(base_url)
    api_key = resolve_api_key(settings.openai_api_key(), url)
    kb_store = open_store(store, chroma_url)
    kb_store.check_name_free(name)
    chat = ChatSettings(model=settings.llm_model(llm_model), base_url=url, temperature=temperature, seed=seed,
                        timeout_s=timeout, policy=RetryPolicy(retries=retries, base_s=backoff))
    client = ChatClient(chat, api_key)
    info(f"Asking {client.model} at {client.base_url} for {per_class} descriptions of each of "
         f"{len(entries)} classes (prompt {template_.name}, {template_.hash[:15]}...)")
    outcome = generate_snapshot(kb_store, request, client, progress=lambda event: info(event.describe()))
    _print_stats(outcome.result, client.model)
    if outcome.snapshot is None:
        for class_name, reason in outcome.result.failures.items():
            info(f"failed: {class_name}: {reason}")
        raise outcome.failure(len(entries))
    if outcome.unchanged:
        info(unchanged_message(outcome.snapshot, "generate changed nothing"))
    if outcome.repeats is not None:
        info(republished_message(outcome.repeats, outcome.snapshot))
    if json_out:
        print_json(outcome.to_json())
        return
    if outcome.unchanged:
        return
    manifest = outcome.snapshot.manifest
    print(visible(f"{outcome.snapshot.name}: {manifest['total']} descriptions in {manifest['classes']} classes "
          f"({manifest['content_hash'][:19]}...)"))


def _print_stats(result: GenerateResult, model: str) -> None:
    stats = result.stats
    info(f"LLM calls: {stats.made} made, {stats.cached} taken from cache"
         f" ({stats.errors} failed attempts, {stats.malformed} unusable replies)")
    info(f"Tokens: {stats.prompt_tokens} prompt + {stats.completion_tokens} completion; {_cost_text(stats, model)}")
    info(f"Call log: {result.log_path}")


def _cost_text(stats, model: str) -> str:
    if stats.prompt_tokens == 0 and stats.completion_tokens == 0 and not stats.usage_missing:
        return "no cost (no tokens used)"  # every call failed or came from the cache: any price times 0
    if stats.estimated_cost_usd is not None:
        return f"estimated cost ${stats.estimated_cost_usd:.4f} (list prices of {model})"
    if stats.made and stats.usage_missing:
        return "cost unknown (the server reported no token usage)"
    return f"cost unknown (no price known for '{model}')"


# Registered on the app by kbuild.cli.app, in this order.
COMMANDS = [
    CommandSpec(generate, None, "Examples: kbuild generate --classes classes.txt | kbuild generate --classes derm.txt "
                    "--prompt medical --modality dermoscopy --per-class 30 | kbuild generate --classes classes.txt "
                    "--base-url http://127.0.0.1:11434/v1 --llm-model llama3.1"),
]
