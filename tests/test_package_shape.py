"""The package's shape: imports run one way down the data flow's layers (import-linter's layers contract in
pyproject.toml) and never in a circle, lazy imports inside functions included."""

from __future__ import annotations

import ast
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


def _fixtures(tree: ast.Module) -> set[str]:
    """Names of the module-level functions decorated with pytest.fixture (called or not)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                if ast.unparse(target) in ("pytest.fixture", "fixture"):
                    found.add(node.name)
    return found


TESTS = Path(__file__).parent
BUILDERS = {"load_network", "load_vgg", "load_from_card", "skeleton", "skeleton_network", "vgg"}


def test_the_tests_mirror_the_package_and_shadow_no_fixture():
    """Test folders are named after the subpackages; no test module defines a fixture that conftest.py has (it
    would hide conftest's for that module); no module builds a network when it is imported (at collection)."""
    assert {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))} == {
        "engine",
        "networks",
        "analysis",
        "render",
        "site",
        "cli",
    }
    shared = _fixtures(ast.parse((TESTS / "conftest.py").read_text()))
    assert {"run", "runner", "random_vgg11"} <= shared
    shadowing, built = [], []
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        shadowing += [f"{path.relative_to(TESTS)}: {name}" for name in _fixtures(tree) & shared]
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign | ast.Expr):
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Call)]
                names = {ast.unparse(c.func).split(".")[-1] for c in calls}
                built += [f"{path.relative_to(TESTS)}:{node.lineno}" for _ in [0] if names & BUILDERS]
    assert not shadowing, f"fixtures that hide conftest's: {shadowing}"
    assert not built, f"networks built at import time (make them fixtures): {built}"
