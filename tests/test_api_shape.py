"""The shape of the public API, checked on the source: no call in the package passes more than five positional
arguments (use keywords), and after `layer` (or, without one, after at most three leading arguments such as
model, image, layer) the public functions and methods take keywords only."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import deconvviz

PACKAGE = Path(__file__).parents[1] / "deconvviz"
MAX_POSITIONAL = 5


def _modules() -> list[tuple[Path, ast.Module]]:
    """Every module of the package, subpackages included (paths relative to the package)."""
    paths = sorted(PACKAGE.rglob("*.py"))
    assert {p.parent.name for p in paths} >= {"engine", "networks", "analysis", "render", "site", "cli"}, paths
    return [(path.relative_to(PACKAGE), ast.parse(path.read_text(), str(path))) for path in paths]


def _in_cli(path: Path) -> bool:
    return path.parts[0] == "cli"


def _positional(call: ast.Call) -> int:
    """Positional arguments of a call; *args counts as one (its length is unknown to the reader too)."""
    return len(call.args)


def test_no_call_in_the_package_passes_more_than_five_positional_arguments():
    found = [
        f"{path}:{node.lineno}: {ast.unparse(node.func)}(...) with {_positional(node)} positional arguments"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _positional(node) > MAX_POSITIONAL
    ]
    assert not found, "pass these by keyword:\n" + "\n".join(found)


def _public_modules() -> list[str]:
    """The package's public modules, subpackages walked (not the CLI: typer calls its commands by keyword)."""
    names = [info.name for info in pkgutil.walk_packages(deconvviz.__path__, "deconvviz.")]
    public = [n for n in names if not any(part.startswith("_") for part in n.split(".")) and n != "deconvviz.cli"]
    public = [n for n in public if not n.startswith("deconvviz.cli.")]
    assert len(public) > 20 and "deconvviz.engine.deconvnet" in public, f"too few modules found: {public}"
    return public


def _public_callables() -> list[tuple[str, object]]:
    """Every public function of the package's public modules, and the public methods of their public classes;
    a subpackage's __all__ counts too (its names may live in a private module). Names exported from
    deconvviz/__init__.py are among them."""
    found, seen = [], set()
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        short = module_name.removeprefix("deconvviz.")
        for name, obj in vars(module).items():
            home = getattr(obj, "__module__", None) or ""
            exported = name in getattr(module, "__all__", ()) and home.startswith(module_name + "._")
            if name.startswith("_") or (home != module_name and not exported) or id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj):
                found.append((f"{short}.{name}", obj))
            elif inspect.isclass(obj):
                methods = [(m, f) for m, f in vars(obj).items() if not m.startswith("_") and inspect.isfunction(f)]
                found += [(f"{short}.{name}.{m}", f) for m, f in methods]
    return found


def test_the_public_api_takes_keywords_after_layer_and_after_at_most_three_leading_arguments():
    exported = [getattr(deconvviz, name) for name in deconvviz.__all__]
    callables = _public_callables()
    assert all(obj in {o for _, o in callables} for obj in exported if inspect.isfunction(obj))
    names = {n for n, _ in callables}
    assert {"engine.deconvnet.Deconvnet.project", "analysis.sanity.sanity_report", "analysis.scan.scan_folder"} <= names
    assert {"site.scan_site", "networks.network.load_network"} <= names
    wrong = []
    for name, obj in callables:
        params = [p for p in inspect.signature(obj).parameters.values() if p.name != "self"]
        positional = [p.name for p in params if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
        if "layer" in positional and positional[-1] != "layer":
            wrong.append(f"{name}: {positional[positional.index('layer') + 1 :]} after layer")
        elif "layer" not in positional and len(positional) > 3:
            wrong.append(f"{name}: {len(positional)} leading positional parameters {positional}")
    assert not wrong, "put `*` after layer (or after the leading 1-3 arguments):\n" + "\n".join(wrong)


def _message(node: ast.AST) -> str:
    """The text of every string in a raise statement, in order; {} where an f-string puts a value."""
    parts, inside = [], set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            parts.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in sub.values))
            inside |= {id(v) for v in sub.values}
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and id(sub) not in inside:
            parts.append(sub.value)
    return " ".join(parts)


SHOWN_COMMANDS = (re.compile(r"`[^`]*`"), re.compile(r"pip install[^;,)]*"))
FLAG = re.compile(r"(?:^|[\s(\"'])--[a-z][a-z-]*")


def test_engine_errors_name_api_arguments_not_cli_flags():
    """No raise statement outside cli/ names a command-line flag such as --size or --weights: the engine says
    `size=` or "the torchvision weights" and sets `about=`, and the CLI puts the flag in front. Allowed: a flag
    inside a command line shown to the user, that is inside backticks (`deconvviz scan FOLDER --layer x`) or
    after "pip install" (pip install --force-reinstall ...)."""
    found = []
    for path, tree in _modules():
        if _in_cli(path):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = _message(node.exc)
                for shown in SHOWN_COMMANDS:
                    text = shown.sub("", text)
                found += [f"{path}:{node.lineno}: {m.strip()}" for m in FLAG.findall(text)]
    assert not found, "engine errors naming CLI flags:\n" + "\n".join(found)


def test_the_flag_rule_catches_a_flag_and_allows_shown_commands():
    def flags(code: str) -> list[str]:
        text = _message(ast.parse(code).body[0].exc)
        for shown in SHOWN_COMMANDS:
            text = shown.sub("", text)
        return FLAG.findall(text)

    assert flags('raise E(f"input {n} is too small; use a larger --size")') == [" --size"]
    assert flags('raise E("--class needs a classifier")') == ["--class"]
    assert flags('raise E(f"use `deconvviz scan FOLDER --layer {x}`; or pip install --force-reinstall a")') == []
    assert flags('raise E("size=16 is too small", about="size")') == []
