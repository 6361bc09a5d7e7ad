"""The layering of docs/ARCHITECTURE.md, checked on the source: no import circle, arrows point down.

Imports are read with ``ast`` (module level and inside functions alike), so a lazy import that
would close a circle is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("kbuild", "kpl")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a.b import c`` counts a.b.c when c is a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_in_kbuild_or_kpl():
    graph = _graph()
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_kbuild_never_imports_kpl():
    offenders = sorted(n for n, deps in _graph().items() if n.startswith("kbuild") and any(d.startswith("kpl") for d in deps))
    assert not offenders, offenders


@pytest.mark.parametrize("package", PACKAGES)
def test_only_the_cli_modules_import_typer(package):
    offenders = []
    for name, path in _modules().items():
        if name.startswith(("kbuild.cli", "kpl.cli")) or not name.startswith(package):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "typer" or n.startswith("typer.") for n in names):
                offenders.append(name)
    assert not offenders, f"core modules importing typer: {offenders}"


def test_command_modules_never_import_the_app():
    graph = _graph()
    commands = [n for n in graph if n.startswith("kbuild.cli.cmd_")]
    assert commands, "no command modules found: the layout moved?"
    assert all("kbuild.cli.app" not in graph[n] for n in commands)


def test_layers_point_down():
    """Lower layers never import higher ones (docs/ARCHITECTURE.md, "What may import what")."""
    layers = [
        ("kbuild.cli", "kbuild.serve"),
        ("kbuild.ops",),
        ("kbuild.sources", "kbuild.prune", "kbuild.diff", "kbuild.classes_file"),
        ("kbuild.store", "kbuild.clip", "kbuild.inputs"),
        ("kbuild.descriptions", "kbuild.errors", "kbuild.settings", "kbuild.progress"),
    ]

    def layer_of(module: str) -> int | None:
        for index, prefixes in enumerate(layers):
            if any(module == p or module.startswith(p + ".") for p in prefixes):
                return index
        return None

    upward = []
    for name, deps in _graph().items():
        here = layer_of(name)
        for dep in deps:
            there = layer_of(dep)
            if here is not None and there is not None and there < here:
                upward.append(f"{name} -> {dep}")
    assert not upward, f"imports pointing up a layer: {sorted(upward)}"


# kpl reads kbuild through this surface only (docs/ARCHITECTURE.md, "Two packages"); the package root
# ``kbuild`` itself holds only the toolkit's version.
KPL_MAY_IMPORT = ("kbuild.store", "kbuild.clip", "kbuild.classes_file", "kbuild.inputs", "kbuild.errors",
                  "kbuild.progress", "kbuild.diff", "kbuild.cli.kit")


def test_kpl_reads_kbuild_through_its_narrow_surface():
    graph = _graph()
    outside = sorted(f"{name} -> {dep}" for name, deps in graph.items() if name.startswith("kpl")
                      for dep in deps if dep.startswith("kbuild") and dep != "kbuild"
                     and not any(dep == p or dep.startswith(p + ".") for p in KPL_MAY_IMPORT))
    assert not outside, f"kpl imports kbuild outside its surface: {outside}"


def test_prune_is_pure_functions_on_arrays():
    """prune/ never reaches the store, a model or the network: it works on descriptions and vectors."""
    graph = _graph()
    reaching = sorted(f"{name} -> {dep}" for name, deps in graph.items() if name.startswith("kbuild.prune")
                      for dep in deps if dep.startswith(("kbuild.store", "kbuild.clip", "kbuild.sources")))
    assert not reaching, reaching


# ------------------------------------------------------------------ how options travel
# A function takes at most MAX_PARAMETERS values (more travel as one options object, e.g. kpl.evaluate.Inputs,
# kbuild.ops.prune.PruneRequest), and one taking more than KEYWORDS_PAST takes the rest by keyword only; a call
# passes at most MAX_POSITIONAL values by position (the rest by name). Typer command functions are exempt:
# their signatures are the command lines' options.
MAX_PARAMETERS = 8
KEYWORDS_PAST = 6
MAX_POSITIONAL = 5


def _typer_aliases(trees: dict[str, ast.Module]) -> set[str]:
    """Names bound to ``Annotated[..., typer.Option(...)]`` (or Argument) anywhere in the packages."""
    aliases = set()
    for tree in trees.values():
        for node in tree.body:
            if isinstance(node, ast.Assign) and "typer." in ast.unparse(node.value):
                aliases.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return aliases


def _is_typer_command(function: ast.FunctionDef | ast.AsyncFunctionDef, aliases: set[str]) -> bool:
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "command":
            return True
    arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
    defaults = function.args.defaults + [d for d in function.args.kw_defaults if d is not None]
    annotations = [ast.unparse(a.annotation) for a in arguments if a.annotation is not None]
    return (any("typer." in text or text in aliases for text in annotations)
            or any("typer." in ast.unparse(d) for d in defaults))


def _positional_parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    names = [a.arg for a in function.args.posonlyargs + function.args.args]
    return len(names) - (1 if names and names[0] in ("self", "cls") else 0)


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return _positional_parameters(function) + len(function.args.kwonlyargs)


def _option_violations() -> set[str]:
    trees = {str(path.relative_to(REPO)): ast.parse(path.read_text(), str(path))
             for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}
    aliases = _typer_aliases(trees)
    found = set()
    for where, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count, positional = _parameters(node), _positional_parameters(node)
                if _is_typer_command(node, aliases):
                    continue
                if count > MAX_PARAMETERS:
                    found.add(f"{where}: def {node.name} takes {count} parameters")
                elif count > KEYWORDS_PAST and positional > KEYWORDS_PAST:
                    found.add(f"{where}: def {node.name} takes {count} parameters, {positional} by position")
            elif isinstance(node, ast.Call) and len(node.args) > MAX_POSITIONAL:
                name = ast.unparse(node.func).rsplit(".", 1)[-1]
                found.add(f"{where}: {name}(...) passes {len(node.args)} positionally")
    return found


def test_options_travel_as_objects_or_keywords():
    """No function outside the Typer signatures takes more than 8 parameters, nor more than 6 by position; no
    call passes more than 5 positionally (docs/ARCHITECTURE.md, "How options travel")."""
    found = _option_violations()
    assert not found, "\n".join(sorted(found))


def test_the_option_rules_catch_what_they_name():
    """The checker itself: a wide function and a long positional call are found, a Typer command is not."""
    source = ("import typer\nfrom typing import Annotated\n"
              "XOpt = Annotated[int, typer.Option('--x')]\n"
              "def wide(a, b, c, d, e, f, g, h, i): pass\n"
              "def command(a: XOpt, b: XOpt, c: XOpt, d: XOpt, e: XOpt, f: XOpt, g: XOpt, h: XOpt, i: XOpt): pass\n"
              "def method(self, a, b, c, d, e, f, g, h): pass\n"
              "def narrow(a, b, *, c, d, e, f, g, h): pass\n"
              "wide(1, 2, 3, 4, 5, 6, g=7, h=8, i=9)\n")
    tree = ast.parse(source)
    aliases = _typer_aliases({"m.py": tree})
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert aliases == {"XOpt"}
    assert _parameters(functions["wide"]) == 9 and not _is_typer_command(functions["wide"], aliases)
    assert _is_typer_command(functions["command"], aliases)
    assert _parameters(functions["method"]) == 8 and _positional_parameters(functions["method"]) == 8
    assert _parameters(functions["narrow"]) == 8 and _positional_parameters(functions["narrow"]) == 2
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call))
    assert len(call.args) == 6
