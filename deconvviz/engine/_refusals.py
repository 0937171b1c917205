"""What has no rule is refused, never silently approximated: a walk of the autograd graph from the layer's output
back to the input (`check_path`) that names the first operation on the signal's path that neither a rule, a
convention nor linearity covers, with the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from torch import Tensor

from ..errors import UnsupportedModelError
from . import attention
from ._ops import (
    _LINEAR,
    _PRODUCTS,
    _UNPOOLING,
)
from .rules import RULES, Rule


def _op(node) -> str:
    return re.sub(r"Backward\d*$", "", type(node).__name__)


def _depending(roots: list, x: Tensor, memo: dict[int, bool]) -> None:
    """Fill memo[id(node)]: does the node's value depend on the leaf x? Iterative (deep graphs), shared memo."""
    stack = [(n, False) for n in roots if n is not None]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            if type(node).__name__ == "AccumulateGrad":
                memo[id(node)] = node.variable is x
            else:
                memo[id(node)] = any(memo.get(id(n), False) for n, _ in node.next_functions if n is not None)
        elif id(node) not in memo:
            memo[id(node)] = False  # a graph is acyclic: final once its children are done
            stack.append((node, True))
            stack.extend((n, False) for n, _ in node.next_functions if n is not None and id(n) not in memo)


def _signal_nodes(out: Tensor, x: Tensor, places: dict | None = None) -> Iterator[tuple]:
    """Every graph node between x and out whose value depends on x, once: (node, op, nodes feeding it signal,
    signal, place), with signal(node) telling whether a node depends on x, and place the module path it was
    made in (`_RectifyReLUs.places`; a node made inside a composite call, e.g. attention, takes the place of
    the node it feeds)."""
    memo: dict[int, bool] = {}
    _depending([out.grad_fn], x, memo)
    places = places or {}

    def signal(node) -> bool:
        if node is not None and id(node) not in memo:
            _depending([node], x, memo)
        return node is not None and memo[id(node)]

    stack, seen, inherited = [out.grad_fn], set(), {}
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or not signal(node):
            continue
        seen.add(id(node))
        feeding = [n for n, _ in node.next_functions if signal(n)]
        place = places[id(node)][1] if id(node) in places else inherited.get(id(node), "")
        for n in feeding:
            inherited.setdefault(id(n), place)
        yield node, _op(node), feeding, signal, place
        stack.extend(feeding)


def check_path(
    out: Tensor,
    x: Tensor,
    owners: dict[int, str],
    layer: str,
    *,
    gated: dict | None = None,
    rule: Rule = RULES["deconvnet"],
    places: dict | None = None,
) -> set[int]:
    """Refuse any op between x and out that the rule cannot mirror (none for the exact gradient rule); returns
    the ids of the nodes on the signal's path. owners: grad_fn id -> module; gated: nodes fed by values computed
    from the signal without a gradient (`_RectifyReLUs.gated`); places: grad_fn id -> (node, module path)."""
    seen = set()
    for node, op, feeding, signal, place in _signal_nodes(out, x, places):
        seen.add(id(node))
        if rule.exact:
            continue
        where = owners.get(id(node)) or (f"{place} ({op.lower()})" if place else "")
        what = f"'{where}'" if where else f"an operation ({op.lower()})"
        if op in ("Relu", "Threshold"):
            raise UnsupportedModelError(
                f"{what} between the input and '{layer}' is a ReLU that deconvviz cannot "
                "intercept (scripted or custom kernel); use nn.ReLU or F.relu, or the "
                "exact rule='gradient'",
                about="rule",
            )
        if refused := _no_rule(node, op, feeding, signal=signal, gated=gated or {}, rule=rule.name):
            why = refused[1]
            raise UnsupportedModelError(
                f"cannot project '{layer}' through {what}: {why}; choose a layer before it, "
                "or rule='gradient', exact through every op",
                about="rule",
            )
    return seen


def _no_rule(node, op: str, feeding: list, signal, gated: dict, rule: str = "deconvnet") -> tuple[str, str] | None:
    """Why the rule has no way through this graph node on the signal's path, (in a word, in a sentence), or
    None when it has one."""
    if op in ("Softmax", "SafeSoftmax", "LogSoftmax"):
        return op.lower(), (
            f"it takes a {op.lower()} of the signal outside attention (its output multiplies no other "
            f"input-dependent signal), which has no {rule} rule"
        )
    if attention.KERNELS.match(op):  # a fused attention kernel: linear where only its values carry the signal
        if all(n is node.next_functions[2][0] for n in feeding):
            return None
        return "attention weights of the signal", (
            f"its attention kernel ({op}) has weights computed from the signal where deconvviz cannot fix them "
            f"(values that carry no signal, or a call made inside another function), which has no {rule} rule"
        )
    if op not in _LINEAR and op != "AccumulateGrad":
        return op.lower(), (
            f"{op} has no {rule} rule (only convolutions and transposed ones, linear maps, pools, unpooling "
            "with a max-pool's switches, interpolation, pads and crops, BatchNorm, LayerNorm, GroupNorm, sums, "
            "elementwise activations, gated products and attention)"
        )
    if op == "Div" and len(node.next_functions) > 1 and signal(node.next_functions[1][0]):
        return "division by a signal", f"it divides by an input-dependent signal, which has no {rule} rule"
    if op in _PRODUCTS and len(feeding) > 1:
        return "product of two signals", (
            f"it multiplies two input-dependent signals with no sigmoid gate, which has no {rule} rule"
        )
    if op.endswith("BatchNorm") and getattr(node, "_saved_training", False):
        return "batch statistics", (
            "it normalizes with the batch's own statistics (BatchNorm without running "
            f"statistics, InstanceNorm), which has no {rule} rule"
        )
    if op in _UNPOOLING and id(node) in gated and any(signal(n) for n in gated[id(node)][1]):
        return "unpooling at computed indices", (
            "it unpools at indices computed from the input that are not the switches a max-pool of the network "
            f"returned (return_indices=True), which has no {rule} rule"
        )
    if id(node) in gated and any(signal(n) for n in gated[id(node)][1]):
        return "data-dependent mask", (
            "it mixes in a value computed from the input without a gradient (a mask such "
            f"as t > 0, .detach(), torch.no_grad()): a data-dependent gate with no {rule} "
            "rule; use nn.ReLU or F.relu"
        )
    return None
