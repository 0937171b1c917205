"""The shape of the public API, checked on the source: no call in the package passes more than five positional
arguments (use keywords), and after `layer` (or, without one, after at most three leading arguments such as
model, image, layer) the public functions and methods take keywords only."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
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
