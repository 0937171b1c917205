"""The package's shape: imports run one way down the data flow's layers (import-linter's layers contract in
pyproject.toml) and never in a circle, lazy imports inside functions included."""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).parents[1]
PACKAGE = "deconvviz"


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract["layers"]


def test_every_subpackage_and_top_level_module_has_a_layer():
    parts = {f"{PACKAGE}.{p.name}" for p in (ROOT / PACKAGE).iterdir() if (p / "__init__.py").is_file()}
    parts |= {f"{PACKAGE}.{p.stem}" for p in (ROOT / PACKAGE).glob("*.py") if not p.name.startswith("__")}
    assert parts == set(_layers())


def test_imports_run_one_way_down_the_layers(capsys):
    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): every import circle."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle_and_only_circles():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert circles(edges) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle():
    """Module to module, lazy imports included. Not counted: a module importing a package it lies in (a
    package's __init__ imports its modules; `from .. import __version__` reads the top one)."""
    graph = grimp.build_graph(PACKAGE)
    edges = {
        m: {t for t in graph.find_modules_directly_imported_by(m) if not m.startswith(t + ".")}
        for m in graph.modules
        if m.split(".")[0] == PACKAGE
    }
    assert len(edges) > 30
    assert circles(edges) == []
