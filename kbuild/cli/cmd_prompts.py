"""``kbuild prompts list|show``: the prompt templates ``kbuild generate`` can use."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kbuild import settings
from kbuild.cli.cmd_generate import ModalityOpt, PromptsDirOpt, VarOpt, template_variables
from kbuild.cli.commands import CommandSpec
from kbuild.cli.context import info, print_json
from kbuild.cli.options import JsonOpt
from kbuild.descriptions import visible
from kbuild.sources.llm.prompts import list_prompts, load_prompt


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
        _say(f"{p.name:<14} {p.hash[:19]}  {p.description}\n{'':<14} variables: {variables}")


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
        values = {**template_variables(modality, var), "class_name": class_name}
        if count is not None:
            values["count"] = str(count)
        rendered = dict(zip(("system", "user"), p.render(values)))
    if json_out:
        print_json({**p.to_json(), "rendered": rendered})
        return
    _say(f"{p.name}  {p.hash}\n{p.description}\nfile: {p.path}")
    for v in p.variables.values():
        default = "required" if v.default is None else f"default {v.default}"
        examples = f"; e.g. {', '.join(v.examples)}" if v.examples else ""
        _say(f"  {{{v.name}}}: {v.description} ({default}{examples})")
    _say(f"output ({p.output_format}): {p.output_description}")
    for part, text in (rendered or {"system": p.system, "user": p.user, "follow_up": p.follow_up}).items():
        _say(f"\n--- {part} ---\n{text}")


def _say(text: str) -> None:
    """Template texts are data from a file: control characters shown escaped, line breaks kept."""
    print("\n".join(visible(line) for line in text.split("\n")))


# Registered on the 'prompts' group by kbuild.cli.app, in this order.
COMMANDS = [
    CommandSpec(prompts_list, "list", None),
    CommandSpec(prompts_show, "show", "Example: kbuild prompts show medical --class pneumonia --modality 'chest X-ray'"),
]
