"""The shape of the public API, checked on the source: no call in the package passes more than five positional
arguments (use keywords), and after `layer` the public functions take keywords only."""

from __future__ import annotations

import ast
from pathlib import Path

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
