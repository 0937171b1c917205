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
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(PACKAGE.glob("*.py"))]


def _positional(call: ast.Call) -> int:
    """Positional arguments of a call; *args counts as one (its length is unknown to the reader too)."""
    return len(call.args)


def test_no_call_in_the_package_passes_more_than_five_positional_arguments():
    found = [
        f"{path.name}:{node.lineno}: {ast.unparse(node.func)}(...) with {_positional(node)} positional arguments"
        for path, tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and _positional(node) > MAX_POSITIONAL
    ]
    assert not found, "pass these by keyword:\n" + "\n".join(found)


def _public_callables() -> list[tuple[str, object]]:
    """Every public function of the package's modules (not the CLI's commands: typer calls them by keyword), and
    the public methods of their public classes; names exported from deconvviz/__init__.py are among them."""
    found = []
    for info in pkgutil.iter_modules(deconvviz.__path__):
        if info.name.startswith("_") or info.name == "cli":
            continue
        module = importlib.import_module(f"deconvviz.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                found.append((f"{info.name}.{name}", obj))
            elif inspect.isclass(obj):
                methods = [(m, f) for m, f in vars(obj).items() if not m.startswith("_") and inspect.isfunction(f)]
                found += [(f"{info.name}.{name}.{m}", f) for m, f in methods]
    return found


def test_the_public_api_takes_keywords_after_layer_and_after_at_most_three_leading_arguments():
    exported = [getattr(deconvviz, name) for name in deconvviz.__all__]
    callables = _public_callables()
    assert all(obj in {o for _, o in callables} for obj in exported if inspect.isfunction(obj))
    assert {"deconvnet.Deconvnet.project", "sanity.sanity_report", "scan.scan_folder"} <= {n for n, _ in callables}
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
    """No raise statement outside cli.py names a command-line flag such as --size or --weights: the engine says
    `size=` or "the torchvision weights" and sets `about=`, and the CLI puts the flag in front. Allowed: a flag
    inside a command line shown to the user, that is inside backticks (`deconvviz scan FOLDER --layer x`) or
    after "pip install" (pip install --force-reinstall ...)."""
    found = []
    for path, tree in _modules():
        if path.name == "cli.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = _message(node.exc)
                for shown in SHOWN_COMMANDS:
                    text = shown.sub("", text)
                found += [f"{path.name}:{node.lineno}: {m.strip()}" for m in FLAG.findall(text)]
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
