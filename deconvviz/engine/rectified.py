"""Deconvnet for any nn.Module, through autograd: the backward of every activation is replaced by a rule's.

For a network of convolutions, affine maps, max-pools, additions and concatenations joined by activations,
autograd's backward is the exact transpose of each linear step and unpools with the switches (or, with
`unpool`, a max-pool's backward is swapped for nearest, bilinear or fixed-position upsampling); only the
activation rule differs (deconvnet: ReLU on the signal, not the forward slope; see rules.py). Gates,
normalizations and attention follow the named `CONVENTIONS` under deconvnet, guided and linear (the gradient
rule is exact through everything, every attention kernel included). Anything else on the path from the input
to the layer has no rule and is refused, never silently approximated.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import ImageError, LayerError, UnsupportedModelError, out_of_memory
from . import attention
from ._batched import over_seeds
from ._ops import (
    _ACTIVATIONS,
    _GATES,
    _GATES_INPLACE,
    _INPLACE_PRODUCTS,
    _MAX_POOLS,
    _NORMS,
    _OTHER_MAX_POOLS,
    _POOLS_WITH_INDICES,
    _PRODUCT_FUNCS,
    _UNPOOLS,
    _VIEWS,
    CONVENTIONS,
    Activation,
    _Activated,
    _call,
    _circular_pad,
    _fixed_std,
    _frozen_batch_norm,
    _gated_activation,
    _unpooled,
    activation_module,
    module_activation,
    module_activation_spec,
)
from ._refusals import _depending, _no_rule, _signal_nodes, check_path
from .forward import Switches, max_pool_with_indices, overlapping
from .hooks import evaluating, forward_hooks, hidden_states, with_hidden_states
from .layers import size_advice
from .rules import RULES, Rule, get_rule


class _RectifyReLUs(TorchFunctionMode):
    """Routes every activation call (modules, F.relu, torch.relu, x.relu(), F.silu, ..., in-place forms) through
    _Activated, and, unless the rule is exact, applies the gate, normalization and attention conventions.

    It also follows values the forward computes from the signal without a gradient (comparisons such as
    `t > 0`, `.detach()`, `torch.no_grad()` blocks): an operation that mixes such a value back into the
    signal (`t * (t > 0)`) is a data-dependent gate, not a linear step, and `gated` records its node.
    `stack` holds the module paths being run (filled by `recording`); `places` gives each graph node the
    innermost one, `marks` the convention its node used.
    """

    def __init__(
        self, rule: Rule, unpool: str = "switches", *, frozen_batch_norm: bool = False, leaf: Tensor | None = None
    ):
        """unpool: how max-pools are undone (reverse.UNPOOLS); frozen_batch_norm: eval-mode BatchNorm passes only
        its input's gradient (no parameter gradients); leaf: the input, which attention's signal is told by (None:
        anything that requires a gradient)."""
        super().__init__()
        self.rule, self.unpool, self.frozen_batch_norm, self.leaf = rule, unpool, frozen_batch_norm, leaf
        self.depends: dict[int, bool] = {}  # id(grad_fn) -> does it depend on the leaf (`_depending`'s memo)
        self.kept: list = []  # the nodes `depends` was asked about: alive, so that no id is reused
        self.constants = WeakIdKeyDictionary()  # tensor -> the graph nodes its value was computed from
        self.gated: dict[int, tuple] = {}  # id(grad_fn) -> (grad_fn, source nodes)
        self.gates = WeakIdKeyDictionary()  # sigmoid-like output -> (activation it makes, its input or None, beta)
        self.scaled = WeakIdKeyDictionary()  # beta x -> (x, beta), for a gate g(beta x) of x
        self.switches = WeakIdKeyDictionary()  # the indices a max-pool returned: an unpooling fed them is linear
        self.stack: list[str] = []
        self.places: dict[int, tuple] = {}  # id(grad_fn) -> (grad_fn, module path)
        self.marks: dict[int, tuple] = {}  # id(grad_fn) -> (grad_fn, module path, convention)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is module_activation:  # an activation module whose forward is a formula (transformers' GELUs)
            return self._activate(module_activation_spec(args[1]), args, kwargs)
        if func in _ACTIVATIONS:
            out = self._activate(_ACTIVATIONS[func], args, kwargs)
            if func in _GATES or func in _GATES_INPLACE:
                self._gate(func, args, kwargs, out)
            return out
        if not self.rule.exact and func in _NORMS:
            return self._mark(_fixed_std(func, args, kwargs), "std fixed")
        if func in _PRODUCT_FUNCS and (out := self._gate_product(func, args, kwargs)) is not None:
            return out
        if not self.rule.exact and (out := self._fixed_attention(func, args, kwargs)) is not None:
            return out
        if self.unpool != "switches" and (func in _MAX_POOLS or func in _OTHER_MAX_POOLS) and torch.is_grad_enabled():
            return _unpooled(func, args, kwargs, self.unpool)
        out = _frozen_batch_norm(args, kwargs) if func is F.batch_norm and self.frozen_batch_norm else None
        out = _circular_pad(args, kwargs) if func is F.pad else out
        out = func(*args, **kwargs) if out is None else out
        if func in _PRODUCT_FUNCS and func not in _INPLACE_PRODUCTS and not kwargs and len(args) == 2:
            scale = [a for a in args if isinstance(a, numbers.Real) and not isinstance(a, bool)]
            tensor = [a for a in args if isinstance(a, Tensor)]
            if scale and tensor and isinstance(out, Tensor):  # beta x: the input of a gate g(beta x) below
                self.scaled[out] = (tensor[0], float(scale[0]))
        if func in _VIEWS and args and isinstance(args[0], Tensor) and args[0] in self.gates:
            self.gates[out] = (None, None, 1.0)  # a reshaped gate: still a gate, no longer the activation of its input
        if func in _POOLS_WITH_INDICES and isinstance(out, tuple):
            self.switches[out[1]] = True
        if func not in _SHAPE_ONLY:
            inputs = tree_flatten((args, kwargs))[0]
            if func in _UNPOOLS:  # the network's own switches are fixed, as a max-pool's are: linear given them
                inputs = [t for t in inputs if not (isinstance(t, Tensor) and t in self.switches)]
            self._follow(inputs, out)
        self._place(out)
        return out

    def _gate(self, func, args: tuple, kwargs: dict, out: Tensor) -> None:
        """Remember a sigmoid-like output as a gate: which activation it makes with its own (scaled) input."""
        x = args[0] if args else kwargs.get("input")
        x, beta = self.scaled[x] if isinstance(x, Tensor) and x in self.scaled else (x, 1.0)
        self.gates[out] = (_GATES.get(func), None if func in _GATES_INPLACE else x, beta)

    def _fixed_attention(self, func, args: tuple, kwargs: dict) -> Tensor | tuple | None:
        """Attention with its weights fixed (attention.py), or None when the call is not attention of the signal."""
        if func in attention.PRODUCTS:
            out = attention.fixed_product(func, args, kwargs, signal=self._signal, signal_node=self._depends)
        elif func is F.scaled_dot_product_attention:
            out = attention.fixed_sdpa(args, kwargs, signal=self._signal)
        elif func is F.multi_head_attention_forward:
            out = attention.fixed_multi_head_attention(func, args, kwargs, signal=self._signal)
        else:
            return None
        if out is not None:
            self._mark(out[0] if isinstance(out, tuple) else out, attention.CONVENTION)
            self._place(out)
        return out

    def _signal(self, t) -> bool:
        """Does t carry the signal (depend on the leaf)?"""
        if not isinstance(t, Tensor):
            return False
        if self.leaf is None or t is self.leaf:
            return t.requires_grad
        return t.grad_fn is not None and self._depends(t.grad_fn)

    def _depends(self, node) -> bool:
        if self.leaf is None:
            return True
        if id(node) not in self.depends:
            self.kept.append(node)
            _depending([node], self.leaf, self.depends)
        return self.depends[id(node)]

    def _activate(self, spec: Activation, args: tuple, kwargs: dict, convention: bool = True) -> Tensor:
        x, f, inplace, negative = _call(spec, args, kwargs)
        out = _Activated.apply(x, spec, f=f, inplace=inplace, negative=negative, rule=self.rule)
        if spec.kind != "relu" and not self.rule.exact and convention:
            bounds = tuple(args[1:3]) or (kwargs.get("min_val"), kwargs.get("max_val"))
            relu6 = spec.name == "Hardtanh" and bounds == (0.0, 6.0)  # nn.ReLU6 calls F.hardtanh(x, 0, 6)
            return self._mark(out, f"activation rule ({'ReLU6' if relu6 else spec.name})")
        self._place(out)
        return out

    def _gate_product(self, func, args: tuple, kwargs: dict) -> Tensor | None:
        """x * g with g a sigmoid-like gate: of x itself, the activation (SiLU, Hardswish) with its rule; from
        another branch, g fixed to its forward value (unless the rule is exact). None: not such a product."""
        if len(args) != 2 or kwargs or not all(isinstance(a, Tensor) for a in args):
            return None
        for x, g in (args, args[::-1]):
            if g not in self.gates or (func in _INPLACE_PRODUCTS and x is not args[0]):
                continue
            act, source, beta = self.gates[g]
            if act is not None and source is x:
                spec = _gated_activation(act, beta)
                if beta == 1.0:
                    return self._activate(spec, (x,), {"inplace": func in _INPLACE_PRODUCTS})
                if func in _INPLACE_PRODUCTS:
                    spec = replace(spec, always_inplace=True)
                return self._activate(spec, (x, beta), {})
            if self.rule.exact or g.grad_fn is None:
                return None
            return self._mark(func(x, g.detach()) if x is args[0] else func(g.detach(), x), "gate fixed")
        return None

    def _mark(self, out: Tensor, convention: str) -> Tensor:
        if out.grad_fn is not None:
            self.marks[id(out.grad_fn)] = (out.grad_fn, self.stack[-1] if self.stack else "", convention)
        self._place(out)
        return out

    def _place(self, out) -> None:
        if self.stack:
            for o in tree_flatten(out)[0]:
                if isinstance(o, Tensor) and o.grad_fn is not None and id(o.grad_fn) not in self.places:
                    self.places[id(o.grad_fn)] = (o.grad_fn, self.stack[-1])

    def _follow(self, inputs: list, out) -> None:
        tensors = [t for t in inputs if isinstance(t, Tensor)]
        consts = [n for t in tensors if t in self.constants for n in self.constants[t]]
        nodes = [t.grad_fn for t in tensors if t.grad_fn is not None]
        if not (consts or nodes):
            return
        for o in tree_flatten(out)[0]:
            if not isinstance(o, Tensor):
                continue
            if o.grad_fn is None:  # a value computed without a gradient: remember which nodes it came from
                self.constants[o] = (*consts, *nodes)
            elif consts:  # a graph node that such a value flows into
                self.gated[id(o.grad_fn)] = (o.grad_fn, tuple(consts))


# Calls whose result does not depend on the values of their tensor arguments (only shape, dtype, device).
_SHAPE_ONLY = {
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    Tensor.new_zeros,
    Tensor.new_ones,
    Tensor.new_empty,
    Tensor.new_full,
    Tensor.size,
    Tensor.dim,
    Tensor.numel,
}


@contextlib.contextmanager
def rectified_relus(rule: str | Rule = "deconvnet") -> Iterator[None]:
    """Every activation called in the block gets the rule's backward (default: the deconvnet's rectification),
    gates and normalizations its conventions."""
    with _RectifyReLUs(get_rule(rule)):
        yield


class _LayerReached(Exception):
    """Raised by `recording(..., stop=True)` once the layer has run: the rest of the forward is not needed."""


@contextlib.contextmanager
def recording(
    model: nn.Module,
    layer: str | None,
    *,
    boundaries: Collection[str] = (),
    stack: list[str] | None = None,
    unpools: bool = False,
    stop: bool = False,
    switches: bool = True,
) -> Iterator[dict]:
    """Hooks for one forward: the layer's outputs, module names of outputs, max-pool switches, and (into
    `stack`) the paths of the modules running. Always removed. layer None: the model's output.

    boundaries: module paths whose outputs `rec["boundaries"]` keeps, in forward order, as (path, "deconv",
    tensor); unpools: also each max-pool's input, as (path, "unpool", tensor). The model goes on with copies,
    so the kept tensors' gradients are the signal arriving there from what follows, and nothing else. switches:
    False leaves `rec["switches"]` empty (a forward whose switches are known already)."""
    found = dict(model.named_modules())
    if layer is not None and layer not in found:
        raise LayerError(f"unknown layer '{layer}'")
    layer = "" if layer is None else layer
    rec: dict = {"outputs": [], "owners": {}, "switches": {}, "boundaries": [], "identities": []}
    copies: dict[int, tuple] = {}  # id of a copy the model went on with -> (its entry in boundaries, the copy)
    stack = [] if stack is None else stack

    def enter(name):
        def pre_hook(mod, args):
            stack.append(name)

        return pre_hook

    def pool_input(name):
        def hook(mod, args):
            if args and isinstance(args[0], Tensor) and args[0].requires_grad:
                rec["boundaries"].append((name, "unpool", args[0]))
                return (args[0].clone(), *args[1:])
            return None

        return hook

    def owner(name, m):
        def hook(mod, args, whole):
            if stack and stack[-1] == name:
                stack.pop()
            out = hidden_states(whole)  # a tuple's first tensor (Hugging Face's blocks), else the output
            if isinstance(out, Tensor) and out.grad_fn is not None:
                rec["owners"].setdefault(id(out.grad_fn), f"{name} ({type(mod).__name__})")
                if args and out is args[0]:  # its input itself: identity, unless an in-place op of its own ran
                    rec["identities"].append((name, out.grad_fn, out.output_nr))
            planes = bool(args) and isinstance(args[0], Tensor) and args[0].dim() == 4
            if switches and isinstance(mod, nn.MaxPool2d) and planes:
                with torch.no_grad():
                    idx = max_pool_with_indices(mod, args[0])[1]
                key = name if name not in rec["switches"] else f"{name}#{len(rec['switches'])}"
                rec["switches"][key] = Switches(idx, tuple(args[0].shape[-2:]), overlapping(mod))
            kept = name in boundaries and isinstance(out, Tensor) and out.requires_grad
            if kept and id(out) in copies:  # a container ending with a kept part: one stage, the container's name
                i = copies[id(out)][0]
                rec["boundaries"][i] = (name, *rec["boundaries"][i][1:])
                kept = False
            elif kept:
                rec["boundaries"].append((name, "deconv", out))
            if name == layer:
                rec["outputs"].append(out)
                if stop:
                    raise _LayerReached
            if isinstance(out, Tensor) and (name == layer or name in boundaries):
                copy = out.clone()  # the model goes on with a copy: its in-place ops must not change ours
                if kept or id(out) in copies:
                    copies[id(copy)] = (copies.pop(id(out), (len(rec["boundaries"]) - 1,))[0], copy)
                return with_hidden_states(whole, copy)
            return None

        return hook

    pre = [(m, enter(n)) for n, m in found.items()]
    if unpools:
        pre += [(m, pool_input(n)) for n, m in found.items() if isinstance(m, nn.MaxPool2d)]
    # an activation module's output made again as one activation (module_activation), before anything reads it
    activations = [(m, _as_activation) for m in found.values() if activation_module(m)]
    with forward_hooks([*activations, *[(m, owner(n, m)) for n, m in found.items()]], pre=pre):
        yield rec


def _as_activation(module: nn.Module, args: tuple, out):
    """A forward hook: the output of an activation module (ACTIVATION_MODULES) computed again as one call of
    module_activation, which the rules' mode gives the activation rule; its pieces' graph is left unused."""
    if len(args) != 1 or not isinstance(args[0], Tensor) or not isinstance(out, Tensor):
        return None
    return module_activation(args[0], module)


def _rng_state(device: torch.device) -> list[Tensor]:
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def layer_output(
    model: nn.Module,
    x: Tensor,
    layer: str,
    *,
    rule: Rule,
    boundaries: Collection[str] = (),
    unpool: str = "switches",
    unpools: bool = False,
    stop: bool = False,
    switches: bool = True,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """Forward x (activations with the rule's backward, max-pools with `unpool`'s, eval mode, hooks removed
    after). Returns (input leaf, layer output, record). The caller's x is never written (the model sees a copy),
    and the RNG is left as it was. boundaries, unpools: the tensors to keep for stages (see `recording`); stop:
    end the forward at the layer (for a layer known to run once, e.g. on windows of an input already projected
    whole); switches: record the max-pools' switches; channels_last: give the model its input in channels-last
    memory order (oneDNN's faster convolutions and pools on CPU; the same numbers up to float rounding), or, for
    a model that cannot run on it (a `.view` of an activation), as it is."""
    leaf = x.detach().clone().requires_grad_(True)
    mode = _RectifyReLUs(rule, unpool, frozen_batch_norm=True, leaf=leaf)
    channels_last = channels_last and leaf.dim() == 4
    failed = None
    with torch.random.fork_rng(devices=[leaf.device] if leaf.device.type == "cuda" else []):
        before = _rng_state(leaf.device)
        hooks = {"boundaries": boundaries, "stack": mode.stack, "unpools": unpools, "stop": stop, "switches": switches}
        rec_hooks = recording(model, layer, **hooks)
        with evaluating(model), rec_hooks as rec, mode, torch.enable_grad():
            try:  # not the leaf itself: in-place ops on the model's input stay legal
                model(leaf.clone(memory_format=torch.channels_last) if channels_last else leaf.clone())
            except _LayerReached:
                pass
            except (RuntimeError, AssertionError, ValueError) as e:  # the model's own input check (ViT)
                if out_of_memory(e):
                    raise
                failed = str(e).splitlines()[0] if str(e) else type(e).__name__
        random = any(not torch.equal(a, b) for a, b in zip(before, _rng_state(leaf.device), strict=True))
    if failed is not None and channels_last:
        again = {"unpool": unpool, "unpools": unpools, "stop": stop, "switches": switches}
        return layer_output(model, x, layer, rule=rule, boundaries=boundaries, **again)
    if failed is not None:
        raise ImageError(
            f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape)} ({failed}); "
            "give input preprocessed for this model"
        )
    if random:
        raise UnsupportedModelError(
            f"{type(model).__name__}'s forward draws random numbers (dropout in training mode?); "
            "a deconvnet needs a deterministic forward pass"
        )
    outs = rec["outputs"]
    if len(outs) != 1 or not isinstance(outs[0], Tensor):
        n = len(outs)
        why = f"runs {n} times in one forward" if n > 1 else "returns no tensor" if n else "is not called in forward"
        raise LayerError(
            f"layer '{layer}' {why}; choose a module that runs once and returns a tensor (or a tuple whose first "
            "element is one)"
        )
    out = outs[0]
    if out.grad_fn is None:
        raise LayerError(f"layer '{layer}' does not depend on the input; choose a layer on the path from the input")
    on_path = check_path(out, leaf, rec["owners"], layer=layer, gated=mode.gated, rule=rule, places=mode.places)
    rec["conventions"] = _conventions(mode, on_path)
    return leaf, out, rec


def _conventions(mode: _RectifyReLUs, on_path: set[int]) -> dict[str, str]:
    """Module path -> the conventions (CONVENTIONS) its ops on the signal's path used, in forward order."""
    found: dict[str, list[str]] = {}
    for key, (_, place, convention) in mode.marks.items():
        if key in on_path and convention not in found.setdefault(place, []):
            found[place].append(convention)
    return {place: ", ".join(c) for place, c in found.items() if c}


def _grads(out: Tensor, inputs: list[Tensor], seed: Tensor) -> tuple:
    """One seed's backward, for torch.func.vmap: its batching rules run each backward op once for all seeds,
    where is_grads_batched (the older vmap) loops over the seeds in every convolution and BatchNorm."""
    grads = torch.autograd.grad(out, inputs, seed, retain_graph=True, allow_unused=True)
    return tuple(g if g is not None else seed.new_zeros(0) for g in grads)  # (0,): out does not depend on it


def project_autograd(
    x: Tensor, out: Tensor, seed: Tensor, *, stages: Sequence[Tensor] = ()
) -> tuple[Tensor, list[Tensor | None]]:
    """Input-space reconstructions for K seeds at once, in one backward. seed (K, *out.shape) -> (K, *x.shape),
    and the signal arriving at each tensor of `stages` (K, *t.shape; None where out does not depend on it)."""
    try:
        grads = over_seeds(partial(_grads, out, [x, *stages]), seed)
        return grads[0], [g if g.shape[1:] != (0,) else None for g in grads[1:]]
    except torch.utils.checkpoint.CheckpointError:
        raise UnsupportedModelError(
            "the model recomputes parts of its forward during backward (torch.utils.checkpoint), where deconvviz "
            "cannot give its ReLUs the deconvnet rule; build the model without checkpointing "
            "(e.g. densenet121(memory_efficient=False))"
        ) from None


@dataclass(frozen=True)
class Passage:
    """How each rule passes the signal through one module: rules maps a rule's name to "exact" (the gradient
    rule), "no rule: <op>", a convention (CONVENTIONS), "ReLU rule", "switches" (max-pools, and unpoolings fed
    their switches), "linear" (the exact transpose: convolutions, transposed ones, interpolation, pads, ...),
    "identity" (the module returns its input: DropPath and dropout in eval, nn.Identity), or "-" (the signal from
    the output does not pass the module)."""

    module: str
    kind: str
    rules: dict[str, str]


def rule_passes(model: nn.Module, size: tuple[int, int], rules: tuple[str, ...] = tuple(RULES)) -> list[Passage]:
    """For every module of the model (named_modules order), how each rule passes the signal from the model's
    output to an input of `size` (H, W); a container reports what happens inside it. One forward per rule."""
    p = next(model.parameters(), None)
    convs = [m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, torch.device("cpu"))
    x = torch.randn(1, convs[0] if convs else 3, *size, generator=torch.Generator().manual_seed(0))
    names = [n for n, _ in model.named_modules() if n]
    found: dict[str, dict[str, str]] = {n: {} for n in names}
    for rule in map(get_rule, rules):
        labels = _labels(model, x.to(device, dtype), rule)
        for n in names:
            inside = [lab for place, ls in labels.items() if place == n or place.startswith(n + ".") for lab in ls]
            found[n][rule.name] = _summary(inside, rule)
    modules = dict(model.named_modules())
    return [Passage(n, type(modules[n]).__name__, found[n]) for n in names]


def _labels(model: nn.Module, x: Tensor, rule: Rule) -> dict[str, list[str]]:
    """Module path -> what each graph node placed in it does with the signal, from the output down to x."""
    leaf = x.detach().requires_grad_(True)
    mode = _RectifyReLUs(rule, leaf=leaf)
    with evaluating(model), recording(model, None, stack=mode.stack) as rec, mode, torch.enable_grad():
        try:
            model(leaf.clone())
        except (AssertionError, ValueError) as e:  # the model's own check of its input size (a ViT's)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ImageError(
                f"{type(model).__name__} cannot run on a {x.shape[-2]}x{x.shape[-1]} input ({first}); "
                f"{size_advice(model)}",
                about="size",
            ) from None
    labels: dict[str, list[str]] = {}
    edges = set()  # (id(node), output number) of every tensor the signal passes, for the identities below
    for out in [t for t in tree_flatten(rec["outputs"])[0] if isinstance(t, Tensor) and t.grad_fn is not None]:
        edges.add((id(out.grad_fn), out.output_nr))
        for node, op, feeding, signal, place in _signal_nodes(out, leaf, mode.places):
            edges.update((id(n), nr) for n, nr in node.next_functions if n is not None and signal(n))
            if rule.exact:
                label = "exact"
            elif refused := _no_rule(node, op, feeding, signal=signal, gated=mode.gated, rule=rule.name):
                label = f"no rule: {refused[0]}"
            elif id(node) in mode.marks:
                label = mode.marks[id(node)][2]
            elif op == "_Activated":
                label = "ReLU rule"
            elif op.startswith(("MaxPool", "AdaptiveMaxPool", "MaxUnpool")):
                label = "switches"
            else:
                label = "linear"
            labels.setdefault(place, []).append(label)
    for name, node, nr in rec["identities"]:  # DropPath, stochastic depth, dropout in eval, nn.Identity on the path
        made_in = mode.places.get(id(node), (None, ""))[1]
        if (id(node), nr) in edges and made_in != name and not made_in.startswith(name + "."):
            labels.setdefault(name, []).append("identity")
    return labels


def _summary(labels: list[str], rule: Rule) -> str:
    if not labels:
        return "-"
    refused = sorted({lab[len("no rule: ") :] for lab in labels if lab.startswith("no rule: ")})
    if refused:
        return "no rule: " + ", ".join(refused)
    conventions = list(dict.fromkeys(lab for lab in labels if lab.startswith(tuple(CONVENTIONS))))
    if conventions:
        return ", ".join(conventions)
    return next(lab for lab in ("exact", "ReLU rule", "switches", "linear", "identity") if lab in labels)
