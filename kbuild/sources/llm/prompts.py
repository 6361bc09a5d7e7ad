"""Prompt templates for ``kbuild generate``: validated TOML data files in ``prompts/``.

A template file holds ``name`` (equal to the file name), ``description``, ``system`` and ``user``
texts, an optional ``follow_up`` text (sent when a class needs another round), the declared
``[variables.NAME]`` (``description``, optional ``default`` and ``examples``) and ``[output]``
(``format`` and ``description`` of what the model must answer). Texts use ``{name}`` placeholders
and ``{{`` / ``}}`` for literal braces; every placeholder must be declared and every declared
variable used, so a typo fails when the file is loaded, not after an LLM bill.

The hash that goes into provenance is taken over the file's canonical content (the parsed data as
sorted, compact JSON), so comments and layout do not change it but any change of wording does.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kbuild.errors import InputFileError, KbuildError, UsageError
from kbuild.inputs import read_utf8

PROMPT_SUFFIX = ".toml"
PROMPT_MAX_BYTES = 1024 * 1024
OUTPUT_FORMATS = ("json_list",)
DEFAULT_FOLLOW_UP = ("Write {count} more descriptions of {class_name} in the same style, none repeating or "
                     "rewording the ones above. Reply with only a JSON list of {count} strings.")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_VARIABLE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
# A literal brace pair, a placeholder, or a stray brace (reported as an error).
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_TOP_KEYS = {"name": True, "description": True, "system": True, "user": True, "follow_up": False,
             "variables": True, "output": True}
_VARIABLE_KEYS = {"description", "default", "examples"}
_OUTPUT_KEYS = {"format", "description"}
# Variables with a dedicated `kbuild generate` option, named in the missing-value message.
_FLAGS = {"modality": "--modality"}
# Every template must declare these: generate fills them for each class and round.
GENERATE_VARIABLES = ("class_name", "count")


def default_prompts_dir() -> Path:
    """The shipped templates: ``kbuild/prompts/`` inside an installed wheel (setup.py copies them
    there), else the checkout's top-level ``prompts/`` (source tree and editable installs)."""
    package = Path(__file__).resolve().parents[2]
    packaged = package / "prompts"
    return packaged if packaged.is_dir() else package.parent / "prompts"


@dataclass(frozen=True)
class Variable:
    """A declared template variable; ``default`` None means the caller must supply a value."""

    name: str
    description: str
    default: str | None = None
    examples: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "default": self.default,
                "examples": list(self.examples), "required": self.default is None}


@dataclass(frozen=True)
class PromptTemplate:
    """A validated prompt template. ``hash`` is ``sha256:<hex>`` of the canonical content."""

    name: str
    description: str
    system: str
    user: str
    follow_up: str
    variables: dict[str, Variable]
    output_format: str
    output_description: str
    path: Path
    hash: str
    placeholders: frozenset[str] = field(default_factory=frozenset)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "hash": self.hash, "path": str(self.path),
                "system": self.system, "user": self.user, "follow_up": self.follow_up,
                "variables": [v.to_json() for v in self.variables.values()],
                "output": {"format": self.output_format, "description": self.output_description}}

    def required(self) -> list[str]:
        return [v.name for v in self.variables.values() if v.default is None]

    def values_for(self, given: Mapping[str, Any]) -> dict[str, str]:
        """Defaults overlaid with ``given``; unknown or missing (empty) variables are one-line errors."""
        unknown = sorted(set(given) - set(self.variables))
        if unknown:
            raise UsageError(f"Prompt '{self.name}' has no variable '{unknown[0]}' "
                             f"(its variables: {', '.join(self.variables)})")
        values = {n: v.default for n, v in self.variables.items() if v.default is not None}
        values.update({n: str(v) for n, v in given.items() if v is not None})
        for variable in self.variables.values():
            if not str(values.get(variable.name) or "").strip():
                raise UsageError(self._missing_message(variable))
        return values

    def _missing_message(self, variable: Variable) -> str:
        hint = f" (e.g. {', '.join(variable.examples)})" if variable.examples else ""
        flag = _FLAGS.get(variable.name, f"--var {variable.name}=VALUE")
        return f"Prompt '{self.name}' needs a value for '{variable.name}': {variable.description}{hint}; pass {flag}"

    def render(self, given: Mapping[str, Any]) -> tuple[str, str]:
        """The (system, user) texts with every placeholder filled in."""
        values = self.values_for(given)
        return substitute(self.system, values), substitute(self.user, values)

    def render_follow_up(self, given: Mapping[str, Any]) -> str:
        return substitute(self.follow_up, self.values_for(given))


def placeholders(text: str, where: str = "text") -> set[str]:
    """Names used as ``{name}`` in ``text``; a stray or malformed brace raises ValueError."""
    found: set[str] = set()
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        inner = match.group(1)
        if inner is None:
            raise ValueError(f"{where}: stray '{token}' at character {match.start() + 1} "
                             f"(write '{token * 2}' for a literal brace)")
        if not _VARIABLE.match(inner):
            raise ValueError(f"{where}: '{{{inner}}}' is not a variable name (use lower-case letters, "
                             "digits and '_'; write '{{' for a literal brace)")
        found.add(inner)
    return found


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Fill ``{name}`` placeholders from ``values`` (KeyError if one is absent); ``{{``/``}}`` become braces."""

    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    return _TOKEN.sub(replace, text)


def canonical_hash(data: Mapping[str, Any]) -> str:
    payload = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ---- reading and validating a file ------------------------------------------------------------

def load_prompt_file(path: Path | str) -> PromptTemplate:
    """Read and validate one template file; any problem is one ``InputFileError`` line."""
    path = Path(path)
    text = read_utf8(path, PROMPT_MAX_BYTES, what="prompt template")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputFileError(path, f"not valid TOML: {err}", "fix the syntax there") from None
    try:
        return _build(path, data)
    except ValueError as err:
        raise InputFileError(path, str(err), "see the shipped prompts/general.toml for the layout") from None


def _build(path: Path, data: dict[str, Any]) -> PromptTemplate:
    _check_keys(data, _TOP_KEYS, "the file")
    name = _text(data, "name", "the file")
    if not _NAME.match(name) or name != path.stem:
        raise ValueError(f"name '{name}' must equal the file name '{path.stem}' "
                         "(lower-case letters, digits, '-' and '_')")
    variables = _variables(data["variables"])
    for needed in GENERATE_VARIABLES:
        if needed not in variables:
            raise ValueError(f"[variables.{needed}] is missing (kbuild generate fills in "
                             f"{' and '.join('{' + v + '}' for v in GENERATE_VARIABLES)})")
    texts = {key: _text(data, key, "the file") for key in ("system", "user")}
    texts["follow_up"] = _text(data, "follow_up", "the file") if "follow_up" in data else DEFAULT_FOLLOW_UP
    used = _check_placeholders(texts, variables)
    output = _output(data["output"])
    return PromptTemplate(name=name, description=_text(data, "description", "the file"),
                          system=texts["system"].strip(), user=texts["user"].strip(),
                          follow_up=texts["follow_up"].strip(), variables=variables,
                          output_format=output[0], output_description=output[1], path=path,
                          hash=canonical_hash(data), placeholders=frozenset(used))


def _check_keys(table: Any, allowed: Mapping[str, bool] | set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}' in {where} (allowed: {', '.join(sorted(allowed))})")
    if isinstance(allowed, dict):
        missing = [key for key, needed in allowed.items() if needed and key not in table]
        if missing:
            raise ValueError(f"missing key '{missing[0]}' in {where}")


def _text(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' in {where} must be a non-empty string")
    return value


def _variables(table: Any) -> dict[str, Variable]:
    if not isinstance(table, dict) or not table:
        raise ValueError("[variables] must declare at least one variable, e.g. [variables.class_name]")
    result: dict[str, Variable] = {}
    for name, spec in table.items():
        where = f"[variables.{name}]"
        if not _VARIABLE.match(name):
            raise ValueError(f"{where}: variable names use lower-case letters, digits and '_'")
        _check_keys(spec, _VARIABLE_KEYS, where)
        result[name] = Variable(name, _text(spec, "description", where), _default(spec, where),
                                _examples(spec, where))
    return result


def _default(spec: dict[str, Any], where: str) -> str | None:
    if "default" not in spec:
        return None
    value = spec["default"]
    # bool is an int subclass; a true/false default is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise ValueError(f"{where}: 'default' must be a non-empty string or a number")
    return str(value)


def _examples(spec: dict[str, Any], where: str) -> tuple[str, ...]:
    value = spec.get("examples", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: 'examples' must be a list of non-empty strings")
    return tuple(value)


def _check_placeholders(texts: dict[str, str], variables: dict[str, Variable]) -> set[str]:
    used: set[str] = set()
    for key, text in texts.items():
        names = placeholders(text, f"'{key}'")
        undeclared = sorted(names - set(variables))
        if undeclared:
            raise ValueError(f"'{key}' uses {{{undeclared[0]}}}, which is not declared "
                             f"(add [variables.{undeclared[0]}] or fix the spelling)")
        used |= names
    unused = sorted(set(variables) - used)
    if unused:
        raise ValueError(f"variable '{unused[0]}' is declared but never used in system, user or follow_up")
    return used


def _output(table: Any) -> tuple[str, str]:
    _check_keys(table, {"format": True, "description": True}, "[output]")
    fmt = _text(table, "format", "[output]")
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"[output] format '{fmt}' is not supported (available: {', '.join(OUTPUT_FORMATS)})")
    return fmt, _text(table, "description", "[output]")


# ---- finding templates ------------------------------------------------------------------------

def prompts_folder(folder: Path | str | None = None) -> Path:
    """The folder to read: the one given, else the shipped ``prompts/``; a missing folder is an error."""
    chosen = Path(folder) if folder is not None else default_prompts_dir()
    if not chosen.is_dir():
        raise KbuildError(f"Prompts folder {chosen} does not exist (pass --prompts-dir with a folder of "
                          f"*{PROMPT_SUFFIX} templates)")
    return chosen


def prompt_files(folder: Path | str | None = None) -> list[Path]:
    return sorted(prompts_folder(folder).glob(f"*{PROMPT_SUFFIX}"))


def load_prompt(reference: str, folder: Path | str | None = None) -> PromptTemplate:
    """A template by name (``general``) from the prompts folder, or by path (``./mine.toml``)."""
    if reference.endswith(PROMPT_SUFFIX) or "/" in reference or "\\" in reference:
        return load_prompt_file(reference)
    files = {p.stem: p for p in prompt_files(folder)}
    if not _NAME.match(reference) or reference not in files:
        available = ", ".join(sorted(files)) or "none"
        raise UsageError(f"Unknown prompt '{reference}'. Available: {available} (see 'kbuild prompts list')")
    return load_prompt_file(files[reference])


def list_prompts(folder: Path | str | None = None) -> tuple[list[PromptTemplate], list[str]]:
    """Every valid template in the folder, and one error line per file that does not load."""
    good, bad = [], []
    for path in prompt_files(folder):
        try:
            good.append(load_prompt_file(path))
        except KbuildError as err:
            bad.append(str(err))
    return good, bad
