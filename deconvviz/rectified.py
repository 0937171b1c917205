"""Deconvnet for any nn.Module, through autograd: the backward of every ReLU is replaced by a rule's.

For a network of convolutions, affine maps, max-pools, additions and concatenations joined by ReLUs,
autograd's backward is the exact transpose of each linear step and unpools with the switches; only
the ReLU rule differs (deconvnet: ReLU on the signal, not the forward mask; see rules.py). Anything
else on the path from the input to the layer has no such rule and is refused, never silently approximated.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterator, Sequence
from functools import partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from .errors import ImageError, LayerError, UnsupportedModelError, out_of_memory
from .forward import Switches, overlapping
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
    "ReplicationPad2D ReplicationPad3D PixelShuffle PixelUnshuffle UpsampleBicubic2D _Rectified "
    "_FrozenBatchNorm".split()
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


class _FrozenBatchNorm(torch.autograd.Function):
    """batch_norm with running statistics (eval mode) whose backward is the signal times the fixed scale, for the
    input only: autograd's own computes the affine parameters' gradients too, with layout copies per seed."""

    @staticmethod
    def forward(
        ctx, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        scale = torch.rsqrt(var + eps) * (weight if weight is not None else 1)
        ctx.save_for_backward(scale.view(-1, *[1] * (x.dim() - 2)))
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx, g: Tensor):
        return g * ctx.saved_tensors[0], None, None, None, None, None


def _frozen_batch_norm(args: tuple, kwargs: dict) -> Tensor | None:
    """An eval-mode F.batch_norm call as _FrozenBatchNorm, or None for one with batch statistics."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    a = {"weight": None, "bias": None, "training": False, "eps": 1e-5, **dict(zip(names, args, strict=False)), **kwargs}
    if a["training"] or a["running_mean"] is None or a["running_var"] is None or not a["input"].requires_grad:
        return None
    w, b = (t.detach() if t is not None else None for t in (a["weight"], a["bias"]))
    return _FrozenBatchNorm.apply(a["input"], a["running_mean"], a["running_var"], w, b, a["eps"])


class _RectifyReLUs(TorchFunctionMode):
    """Routes every ReLU call (modules, F.relu, torch.relu, x.relu(), in-place forms) through _Rectified.

    It also follows values the forward computes from the signal without a gradient (comparisons such as
    `t > 0`, `.detach()`, `torch.no_grad()` blocks): an operation that mixes such a value back into the
    signal (`t * (t > 0)`) is a data-dependent gate, not a linear step, and `gated` records its node.
    """

    def __init__(self, rule: Rule, *, frozen_batch_norm: bool = False):
        """frozen_batch_norm: eval-mode BatchNorm passes only its input's gradient (no parameter gradients)."""
        super().__init__()
        self.rule, self.frozen_batch_norm = rule, frozen_batch_norm
        self.constants = WeakIdKeyDictionary()  # tensor -> the graph nodes its value was computed from
        self.gated: dict[int, tuple] = {}  # id(grad_fn) -> (grad_fn, source nodes)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:
            x = args[0] if args else kwargs["input"]
            inplace = _RELUS[func] or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            return _Rectified.apply(x, inplace, self.rule)
        out = _frozen_batch_norm(args, kwargs) if func is F.batch_norm and self.frozen_batch_norm else None
        out = func(*args, **kwargs) if out is None else out
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


class _LayerReached(Exception):
    """Raised by `recording(..., stop=True)` once the layer has run: the rest of the forward is not needed."""


@contextlib.contextmanager
def recording(
    model: nn.Module, layer: str, boundaries: Collection[str] = (), *, unpools: bool = False, stop: bool = False
) -> Iterator[dict]:
    """Hooks for one forward: the layer's outputs, module names of outputs, max-pool switches. Always removed.

    boundaries: module paths whose outputs `rec["boundaries"]` keeps, in forward order, as (path, "deconv",
    tensor); unpools: also each max-pool's input, as (path, "unpool", tensor). The model goes on with copies,
    so the kept tensors' gradients are the signal arriving there from what follows, and nothing else."""
    found = dict(model.named_modules())
    if layer not in found:
        raise LayerError(f"unknown layer '{layer}'")
    rec: dict = {"outputs": [], "owners": {}, "switches": {}, "boundaries": []}
    copies: dict[int, tuple] = {}  # id of a copy the model went on with -> (its entry in boundaries, the copy)

    def pool_input(name):
        def hook(mod, args):
            if args and isinstance(args[0], Tensor) and args[0].requires_grad:
                rec["boundaries"].append((name, "unpool", args[0]))
                return (args[0].clone(), *args[1:])
            return None

        return hook

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
                return copy
            return None

        return hook

    handles = [m.register_forward_hook(owner(n, m)) for n, m in found.items()]
    if unpools:
        handles += [m.register_forward_pre_hook(pool_input(n)) for n, m in found.items() if isinstance(m, nn.MaxPool2d)]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def _rng_state(device: torch.device) -> list[Tensor]:
    return [torch.get_rng_state()] + ([torch.cuda.get_rng_state(device)] if device.type == "cuda" else [])


def layer_output(
    model: nn.Module,
    x: Tensor,
    layer: str,
    rule: Rule,
    boundaries: Collection[str] = (),
    *,
    unpools: bool = False,
    stop: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """Forward x (ReLUs with the rule's backward, eval mode, hooks removed after). Returns (input leaf, layer
    output, record). The caller's x is never written (the model sees a copy), and the RNG is left as it was.
    boundaries, unpools: the tensors to keep for stages (see `recording`); stop: end the forward at the layer
    (for a layer known to run once, e.g. on windows of an input already projected whole)."""
    leaf = x.detach().clone().requires_grad_(True)
    mode = _RectifyReLUs(rule, frozen_batch_norm=True)
    with torch.random.fork_rng(devices=[leaf.device] if leaf.device.type == "cuda" else []):
        before = _rng_state(leaf.device)
        rec_hooks = recording(model, layer, boundaries, unpools=unpools, stop=stop)
        with evaluating(model), rec_hooks as rec, mode, torch.enable_grad():
            try:
                model(leaf.clone())  # not the leaf itself: in-place ops on the model's input stay legal
            except _LayerReached:
                pass
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


def _grads(out: Tensor, inputs: list[Tensor], seed: Tensor) -> tuple:
    """One seed's backward, for torch.func.vmap: its batching rules run each backward op once for all seeds,
    where is_grads_batched (the older vmap) loops over the seeds in every convolution and BatchNorm."""
    grads = torch.autograd.grad(out, inputs, seed, retain_graph=True, allow_unused=True)
    return tuple(g if g is not None else seed.new_zeros(0) for g in grads)  # (0,): out does not depend on it


def project_autograd(
    x: Tensor, out: Tensor, seed: Tensor, stages: Sequence[Tensor] = ()
) -> tuple[Tensor, list[Tensor | None]]:
    """Input-space reconstructions for K seeds at once, in one backward. seed (K, *out.shape) -> (K, *x.shape),
    and the signal arriving at each tensor of `stages` (K, *t.shape; None where out does not depend on it)."""
    try:
        grads = torch.func.vmap(partial(_grads, out, [x, *stages]))(seed)
        return grads[0], [g if g.shape[1:] != (0,) else None for g in grads[1:]]
    except torch.utils.checkpoint.CheckpointError:
        raise UnsupportedModelError(
            "the model recomputes parts of its forward during backward (torch.utils.checkpoint), where deconvviz "
            "cannot give its ReLUs the deconvnet rule; build the model without checkpointing "
            "(e.g. densenet121(memory_efficient=False))"
        ) from None
