"""Deconvnet for any nn.Module, through autograd: the backward of every ReLU is replaced by a rule's.

For a network of convolutions, affine maps, max-pools, additions and concatenations joined by ReLUs,
autograd's backward is the exact transpose of each linear step and unpools with the switches (or, with
`unpool`, a max-pool's backward is swapped for nearest, bilinear or fixed-position upsampling); only
the ReLU rule differs (deconvnet: ReLU on the signal, not the forward mask; see rules.py). Anything
else on the path from the input to the layer has no such rule and is refused, never silently approximated.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from .errors import ImageError, LayerError, UnsupportedModelError, out_of_memory
from .forward import Switches, overlapping
from .reverse import upsample
from .rules import Rule, get_rule

_RELUS = {F.relu: False, torch.relu: False, Tensor.relu: False, F.relu_: True, torch.relu_: True, Tensor.relu_: True}

# autograd nodes (names without "Backward<n>") that are linear in the signal or the max-pool switch rule.
_LINEAR = set(
    "Convolution ConvolutionBackwardOverrideable Addmm Mm Bmm Mv Matmul Linear Mul Div Add Sub Neg Cat Stack "
    "View UnsafeView Reshape ReshapeAlias Permute Transpose T Expand Squeeze Unsqueeze Slice Select Split "
    "SplitWithSizes Unbind Clone Mean Sum AvgPool2D AvgPool3D AdaptiveAvgPool2D AdaptiveAvgPool3D "
    "MaxPool2DWithIndices MaxPool3DWithIndices AdaptiveMaxPool2D NativeBatchNorm CudnnBatchNorm "
    "MiopenBatchNorm ConstantPadNd UpsampleNearest2D UpsampleBilinear2D Alias AsStrided ToCopy Index "
    "IndexSelect Flip Roll Repeat Narrow ReflectionPad1D ReflectionPad2D ReflectionPad3D ReplicationPad1D "
    "ReplicationPad2D ReplicationPad3D PixelShuffle PixelUnshuffle UpsampleBicubic2D _Rectified _Unpooled".split()
)  # fmt: skip
_PRODUCTS = {"Mul", "Div", "Mm", "Bmm", "Mv", "Matmul", "Addmm"}  # linear only if one operand carries no signal


class _Rectified(torch.autograd.Function):
    """ReLU forward; backward by the rule (which keeps the forward mask, as booleans, only if it needs it)."""

    @staticmethod
    def forward(ctx, x: Tensor, inplace: bool, rule: Rule) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
        out = x.clamp_min_(0) if inplace else x.clamp_min(0)
        ctx.rule = rule
        ctx.save_for_backward(out > 0 if rule.needs_mask else None)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        return ctx.rule.relu_backward(g, ctx.saved_tensors[0]), None, None


class _Unpooled(torch.autograd.Function):
    """Max-pool forward; backward by an unpooling without the switches (reverse.upsample: nearest, ...)."""

    @staticmethod
    def forward(ctx, x: Tensor, pool: nn.MaxPool2d, how: str) -> Tensor:
        ctx.pool, ctx.how, ctx.size = pool, how, tuple(x.shape[-2:])
        return F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        if g.dim() == 3:  # an unbatched (C, H, W) input
            return upsample(g[None], ctx.pool, ctx.size, ctx.how)[0], None, None
        return upsample(g, ctx.pool, ctx.size, ctx.how), None, None


_MAX_POOLS = {F.max_pool2d, torch.max_pool2d}
_OTHER_MAX_POOLS = {
    F.max_pool2d_with_indices,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool2d_with_indices,
    F.max_pool1d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool3d,
    torch.max_pool1d,
    torch.max_pool3d,
    torch.adaptive_max_pool1d,
    F.fractional_max_pool2d,
}


def _unpooled(func, args: tuple, kwargs: dict, how: str) -> Tensor:
    """A max-pool call whose backward unpools by `how` instead of the switches (_Unpooled)."""
    if func not in _MAX_POOLS or kwargs.get("return_indices") or (len(args) > 6 and args[6]):
        name = getattr(func, "__name__", str(func))
        raise UnsupportedModelError(
            f"unpool '{how}' replaces the backward of 2-d max-pools only, and the model "
            f"calls {name} (with indices, adaptive or not 2-d); use unpool='switches'"
        )
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
    given = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k != "return_indices"}
    x = given.pop("input")
    return _Unpooled.apply(x, nn.MaxPool2d(**given), how)


class _RectifyReLUs(TorchFunctionMode):
    """Routes every ReLU call (modules, F.relu, torch.relu, x.relu(), in-place forms) through _Rectified.

    It also follows values the forward computes from the signal without a gradient (comparisons such as
    `t > 0`, `.detach()`, `torch.no_grad()` blocks): an operation that mixes such a value back into the
    signal (`t * (t > 0)`) is a data-dependent gate, not a linear step, and `gated` records its node.
    """

    def __init__(self, rule: Rule, unpool: str = "switches"):
        super().__init__()
        self.rule, self.unpool = rule, unpool  # unpool: how max-pools are undone (reverse.UNPOOLS)
        self.constants = WeakIdKeyDictionary()  # tensor -> the graph nodes its value was computed from
        self.gated: dict[int, tuple] = {}  # id(grad_fn) -> (grad_fn, source nodes)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:
            x = args[0] if args else kwargs["input"]
            inplace = _RELUS[func] or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            return _Rectified.apply(x, inplace, self.rule)
        if self.unpool != "switches" and (func in _MAX_POOLS or func in _OTHER_MAX_POOLS) and torch.is_grad_enabled():
            return _unpooled(func, args, kwargs, self.unpool)
        out = func(*args, **kwargs)
        if func not in _SHAPE_ONLY:
            self._follow(tree_flatten((args, kwargs))[0], out)
        return out

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
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, Tensor.new_zeros, Tensor.new_ones,
    Tensor.new_empty, Tensor.new_full, Tensor.size, Tensor.dim, Tensor.numel,
}  # fmt: skip


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the call; every module's `training` flag is restored exactly afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


@contextlib.contextmanager
def rectified_relus(rule: str | Rule = "deconvnet") -> Iterator[None]:
    """Every ReLU called in the block gets the rule's backward (default: the deconvnet's rectification)."""
    with _RectifyReLUs(get_rule(rule)):
        yield


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


def check_path(out: Tensor, x: Tensor, owners: dict[int, str], layer: str, gated: dict | None = None) -> None:
    """Refuse any op between x and out that the deconvnet cannot mirror. owners: grad_fn id -> module;
    gated: nodes fed by values computed from the signal without a gradient (`_RectifyReLUs.gated`)."""
    memo: dict[int, bool] = {}
    _depending([out.grad_fn], x, memo)

    def signal(node) -> bool:
        if node is not None and id(node) not in memo:
            _depending([node], x, memo)
        return node is not None and memo[id(node)]

    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or not signal(node):
            continue
        seen.add(id(node))
        op, feeding = _op(node), [n for n, _ in node.next_functions if signal(n)]
        where = owners.get(id(node), "")
        what = f"'{where}'" if where else f"an operation ({op.lower()})"
        if op in ("Relu", "Threshold"):
            raise UnsupportedModelError(f"{what} between the input and '{layer}' is a ReLU that deconvviz cannot "
                                        "intercept (scripted or custom kernel); use nn.ReLU or F.relu")  # fmt: skip
        if why := _no_rule(node, op, feeding, signal, gated or {}):
            raise UnsupportedModelError(f"cannot project '{layer}' through {what}: {why}; choose a layer before it")
        stack.extend(feeding)


def _no_rule(node, op: str, feeding: list, signal, gated: dict) -> str | None:
    """Why the deconvnet has no rule for this graph node on the signal's path, or None when it has one."""
    if op not in _LINEAR and op != "AccumulateGrad":
        return f"{op} has no deconvnet rule (only convolutions, linear maps, pools, BatchNorm, sums and ReLUs)"
    if op == "Div" and len(node.next_functions) > 1 and signal(node.next_functions[1][0]):
        return "it divides by an input-dependent signal, which has no deconvnet rule"
    if op in _PRODUCTS and len(feeding) > 1:
        return "it multiplies two input-dependent signals, which has no deconvnet rule"
    if op.endswith("BatchNorm") and getattr(node, "_saved_training", False):
        return ("it normalizes with the batch's own statistics (BatchNorm without running statistics, InstanceNorm), "
                "which has no deconvnet rule")  # fmt: skip
    if id(node) in gated and any(signal(n) for n in gated[id(node)][1]):
        return ("it mixes in a value computed from the input without a gradient (a mask such as t > 0, .detach(), "
                "torch.no_grad()): a data-dependent gate with no deconvnet rule; use nn.ReLU or F.relu")  # fmt: skip
    return None


@contextlib.contextmanager
def recording(model: nn.Module, layer: str) -> Iterator[dict]:
    """Hooks for one forward: the layer's outputs, module names of outputs, max-pool switches. Always removed."""
    found = dict(model.named_modules())
    if layer not in found:
        raise LayerError(f"unknown layer '{layer}'")
    rec: dict = {"outputs": [], "owners": {}, "switches": {}}

    def owner(name, m):
        def hook(mod, args, out):
            if isinstance(out, Tensor) and out.grad_fn is not None:
                rec["owners"].setdefault(id(out.grad_fn), f"{name} ({type(mod).__name__})")
            if isinstance(mod, nn.MaxPool2d) and args and isinstance(args[0], Tensor) and args[0].dim() == 4:
                with torch.no_grad():
                    idx = F.max_pool2d(args[0], mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                                       mod.ceil_mode, return_indices=True)[1]  # fmt: skip
                key = name if name not in rec["switches"] else f"{name}#{len(rec['switches'])}"
                rec["switches"][key] = Switches(idx, tuple(args[0].shape[-2:]), overlapping(mod))
            if name == layer:
                rec["outputs"].append(out)
                if isinstance(out, Tensor):  # the model goes on with a copy: its in-place ops must not change ours
                    return out.clone()
            return None

        return hook

    handles = [m.register_forward_hook(owner(n, m)) for n, m in found.items()]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def _rng_state(device: torch.device) -> list[Tensor]:
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def layer_output(
    model: nn.Module, x: Tensor, layer: str, rule: Rule, unpool: str = "switches"
) -> tuple[Tensor, Tensor, dict]:
    """Forward x (ReLUs with the rule's backward, max-pools with `unpool`'s, eval mode, hooks removed after).
    Returns (input leaf, layer output, record). The caller's x is never written (the model sees a copy), and the
    RNG is left as it was."""
    leaf = x.detach().clone().requires_grad_(True)
    mode = _RectifyReLUs(rule, unpool)
    with torch.random.fork_rng(devices=[leaf.device] if leaf.device.type == "cuda" else []):
        before = _rng_state(leaf.device)
        with evaluating(model), recording(model, layer) as rec, mode, torch.enable_grad():
            try:
                model(leaf.clone())  # not the leaf itself: in-place ops on the model's input stay legal
            except RuntimeError as e:
                if out_of_memory(e):
                    raise
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ImageError(f"{type(model).__name__} cannot run on an input of shape {tuple(x.shape)} ({why}); "
                                 "give input preprocessed for this model") from None  # fmt: skip
        random = any(not torch.equal(a, b) for a, b in zip(before, _rng_state(leaf.device), strict=True))
    if random:
        raise UnsupportedModelError(
            f"{type(model).__name__}'s forward draws random numbers (dropout in training mode?); "
            "a deconvnet needs a deterministic forward pass"
        )
    outs = rec["outputs"]
    if len(outs) != 1 or not isinstance(outs[0], Tensor):
        n = len(outs)
        why = f"runs {n} times in one forward" if n > 1 else "returns no tensor" if n else "is not called in forward"
        raise LayerError(f"layer '{layer}' {why}; choose a module that runs once and returns a tensor")
    out = outs[0]
    if out.grad_fn is None:
        raise LayerError(f"layer '{layer}' does not depend on the input; choose a layer on the path from the input")
    check_path(out, leaf, rec["owners"], layer, mode.gated)
    return leaf, out, rec


def project_autograd(x: Tensor, out: Tensor, seed: Tensor) -> Tensor:
    """Input-space reconstructions for K seeds at once. seed (K, *out.shape) -> (K, *x.shape)."""
    try:
        return torch.autograd.grad(out, x, seed, retain_graph=True, is_grads_batched=True)[0]
    except torch.utils.checkpoint.CheckpointError:
        raise UnsupportedModelError(
            "the model recomputes parts of its forward during backward (torch.utils.checkpoint), where deconvviz "
            "cannot give its ReLUs the deconvnet rule; build the model without checkpointing "
            "(e.g. densenet121(memory_efficient=False))"
        ) from None
