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
import re
from collections.abc import Callable, Collection, Iterator, Sequence
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
from .forward import Switches, max_pool_with_indices, overlapping
from .hooks import evaluating, forward_hooks
from .reverse import upsample
from .rules import RULES, Rule, get_rule

# What a projection does where deconvnet, guided and linear have no rule of their own (gradient is exact).
CONVENTIONS = {
    "activation rule": "deconvnet max(s, 0), guided max(s, 0) f'(x) at an activation f other than ReLU (ReLU's "
    "rules mapped onto f; zennit's ReLUDeconvNet and ReLUGuidedBackprop on f)",
    "gate fixed": "a product x g with a sigmoid-like gate g from another branch (squeeze-and-excitation) passes the "
    "signal as s g, g fixed to its forward value like the switches (Arras et al. 2017, LRP for multiplicative "
    "gates; Ali et al., ICML 2022)",
    "std fixed": "LayerNorm and GroupNorm with the standard deviation fixed to its forward value, the centring and "
    "the affine part kept (Ali et al., ICML 2022, XAI for Transformers: Better Explanations through Conservative "
    "Propagation)",
    attention.CONVENTION: "attention's weights A = softmax(q k^T / sqrt(d) + bias) fixed to their forward values, "
    "the signal back through the values only, s_v = A^T s (Ali et al., ICML 2022, the q.k softmax detached; LXT's "
    "CP-LRP)",
}


@dataclass(frozen=True)
class Activation:
    """An elementwise activation the rules know. kind: how its slope f'(x) is recorded: "relu" (bool, output
    > 0), "window" (bool, f' is 0 or 1: ReLU6, Hardtanh), "leaky" (bool x > 0; f' is 1 there, the negative
    slope elsewhere), "smooth" (float f'(x)). pure: the out-of-place function; inplace_at: position of its
    `inplace` argument (None: none); always_inplace: the in-place form (relu_, elu_, ...)."""

    name: str
    kind: str
    pure: Callable
    inplace_at: int | None = None
    always_inplace: bool = False


def _forms(name: str, kind: str, pure: Callable, inplace_at: int | None, funcs=(), inplace_funcs=()) -> dict:
    out = {f: Activation(name, kind, pure, inplace_at) for f in (pure, *funcs)}
    return out | {f: Activation(name, kind, pure, None, always_inplace=True) for f in inplace_funcs}


# func -> Activation, for modules (whose forward calls these) and functional calls alike.
_ACTIVATIONS = (
    _forms(
        "ReLU", "relu", F.relu, 1, funcs=(torch.relu, Tensor.relu), inplace_funcs=(F.relu_, torch.relu_, Tensor.relu_)
    )
    | _forms("ReLU6", "window", F.relu6, 1)
    | _forms("Hardtanh", "window", F.hardtanh, 3, inplace_funcs=(F.hardtanh_,))
    | _forms("LeakyReLU", "leaky", F.leaky_relu, 2, inplace_funcs=(F.leaky_relu_,))
    | _forms("PReLU", "leaky", F.prelu, None)
    | _forms("ELU", "smooth", F.elu, 2, inplace_funcs=(F.elu_,))
    | _forms("CELU", "smooth", F.celu, 2, funcs=(torch.celu,), inplace_funcs=(F.celu_, torch.celu_))
    | _forms("SELU", "smooth", F.selu, 1, funcs=(torch.selu,), inplace_funcs=(F.selu_, torch.selu_))
    | _forms("GELU", "smooth", F.gelu, None)
    | _forms("SiLU", "smooth", F.silu, 1)
    | _forms("Hardswish", "smooth", F.hardswish, 1)
    | _forms("Mish", "smooth", F.mish, 1)
    | _forms("Softplus", "smooth", F.softplus, None)
    | _forms("Tanh", "smooth", torch.tanh, None, funcs=(Tensor.tanh,), inplace_funcs=(torch.tanh_, Tensor.tanh_))
    | _forms(
        "Sigmoid",
        "smooth",
        torch.sigmoid,
        None,
        funcs=(Tensor.sigmoid, F.sigmoid, torch.special.expit),
        inplace_funcs=(torch.sigmoid_, Tensor.sigmoid_),
    )
    | _forms("Hardsigmoid", "smooth", F.hardsigmoid, 1)
    | _forms("LogSigmoid", "smooth", F.logsigmoid, None)
    | _forms("Softsign", "smooth", F.softsign, None)
    | _forms("Tanhshrink", "smooth", F.tanhshrink, None)
    | _forms("Softshrink", "window", F.softshrink, None)
    | _forms("Hardshrink", "window", F.hardshrink, None)
)
# Sigmoid-like gates: a product with one is a fixed gate, or (of its own input) the activation named here.
_GATES = {f: "SiLU" for f in (torch.sigmoid, Tensor.sigmoid, F.sigmoid, torch.special.expit)} | {
    F.hardsigmoid: "Hardswish"
}


def _scaled_silu(t: Tensor, beta: float) -> Tensor:
    return t * torch.sigmoid(beta * t)


def _scaled_hardswish(t: Tensor, beta: float) -> Tensor:
    return t * F.hardsigmoid(beta * t)


def _gated_activation(act: str, beta: float) -> Activation:
    """x g(beta x), g the gate of `act`: SiLU or Hardswish themselves at beta 1, else a smooth activation of its
    own (QuickGELU, x sigmoid(1.702 x), of CLIP and open_clip; SiLU-beta, the Swish of Ramachandran et al.)."""
    if beta == 1.0:
        return _ACTIVATIONS[{"SiLU": F.silu, "Hardswish": F.hardswish}[act]]
    name = "QuickGELU" if act == "SiLU" and abs(beta - 1.702) < 1e-6 else f"{act}({beta:g}x)"
    return Activation(name, "smooth", _scaled_silu if act == "SiLU" else _scaled_hardswish)


_GATES_INPLACE = {torch.sigmoid_, Tensor.sigmoid_}
_PRODUCT_FUNCS = {Tensor.__mul__, Tensor.__rmul__, Tensor.mul, torch.mul, Tensor.mul_, Tensor.__imul__}
_INPLACE_PRODUCTS = {Tensor.mul_, Tensor.__imul__}
_VIEWS = {
    Tensor.view,
    Tensor.reshape,
    Tensor.expand,
    Tensor.expand_as,
    Tensor.unsqueeze,
    Tensor.squeeze,
    Tensor.flatten,
    Tensor.contiguous,
    Tensor.permute,
    torch.reshape,
    torch.flatten,
    torch.unsqueeze,
}
_NORMS = {F.layer_norm: "layer", torch.layer_norm: "layer", F.group_norm: "group", torch.group_norm: "group"}

# autograd nodes (names without "Backward<n>") that are linear in the signal or the max-pool switch rule.
_LINEAR = set(
    "Convolution ConvolutionBackwardOverrideable Addmm Mm Bmm Mv Matmul Linear Mul Div Add Sub Neg Cat Stack "
    "View UnsafeView Reshape ReshapeAlias Permute Transpose T Expand Squeeze Unsqueeze Slice Select Split "
    "SplitWithSizes Unbind Clone Mean Sum AvgPool2D AvgPool3D AdaptiveAvgPool2D AdaptiveAvgPool3D "
    "MaxPool2DWithIndices MaxPool3DWithIndices AdaptiveMaxPool2D NativeBatchNorm CudnnBatchNorm "
    "MiopenBatchNorm ConstantPadNd UpsampleNearest2D UpsampleBilinear2D Alias AsStrided ToCopy Index "
    "IndexSelect Flip Roll Repeat Narrow ReflectionPad1D ReflectionPad2D ReflectionPad3D ReplicationPad1D "
    "ReplicationPad2D ReplicationPad3D PixelShuffle PixelUnshuffle UpsampleBicubic2D _Activated _FixedStd "
    "_FrozenBatchNorm _Unpooled _FixedAttention".split()
)
_PRODUCTS = {"Mul", "Div", "Mm", "Bmm", "Mv", "Matmul", "Addmm"}  # linear only if one operand carries no signal


def _call(spec: Activation, args: tuple, kwargs: dict) -> tuple[Tensor, Callable, bool, object]:
    """(x, f as an out-of-place function of x alone, in place?, negative slope or None) for one call."""
    args, kwargs = list(args), dict(kwargs)
    x = args.pop(0) if args else kwargs.pop("input")
    inplace = spec.always_inplace
    if spec.inplace_at is not None:
        at = spec.inplace_at - 1
        inplace = bool(args.pop(at) if len(args) > at else kwargs.pop("inplace", False))
    negative = None
    if spec.name == "LeakyReLU":
        negative = float(args[0] if args else kwargs.get("negative_slope", 0.01))
    elif spec.name == "PReLU":
        w = (args[0] if args else kwargs["weight"]).detach()
        negative = w.view(1, -1, *[1] * (x.dim() - 2)) if w.numel() > 1 and x.dim() >= 2 else w.reshape(())
    return x, lambda t: spec.pure(t, *args, **kwargs), inplace, negative


class _Activated(torch.autograd.Function):
    """An activation's forward; backward by the rule, which gets the slope f'(x) only if it needs it (booleans
    at ReLU, ReLU6, Hardtanh, LeakyReLU, PReLU; floats at smooth activations)."""

    @staticmethod
    def forward(ctx, x: Tensor, spec: Activation, f: Callable, inplace: bool, negative, rule: Rule) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
        slope, ctx.negative, ctx.rule, ctx.activation = None, None, rule, spec.name
        if spec.kind == "relu":
            out = x.clamp_min_(0) if inplace else x.clamp_min(0)
            slope = out > 0 if rule.needs_slope else None
        else:
            if rule.needs_slope and spec.kind == "leaky":
                slope, ctx.negative = x > 0, negative
            if rule.needs_slope and spec.kind in ("window", "smooth"):  # f'(x) as torch itself defines it
                with torch.enable_grad():
                    xd = x.detach().requires_grad_(True)
                    y = f(xd)
                    (slope,) = torch.autograd.grad(y, xd, torch.ones_like(y))
                y = y.detach()
                slope = slope != 0 if spec.kind == "window" else slope
            else:
                y = f(x)
            out = x.copy_(y) if inplace else y
        ctx.save_for_backward(slope)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple:
        slope = ctx.saved_tensors[0]
        if ctx.negative is not None:
            slope = torch.where(slope, 1.0, ctx.negative)
        return ctx.rule.backward(g, slope), None, None, None, None, None


class _FixedStd(torch.autograd.Function):
    """LayerNorm or GroupNorm forward; backward with the standard deviation fixed to its forward value: the
    adjoint of centring, affine scale and division by the recorded std. groups: None for LayerNorm."""

    @staticmethod
    def forward(ctx, x: Tensor, norm: Callable, dims: int, groups: int | None, weight: Tensor | None, eps: float):
        out = norm(x)
        flat = x.detach().unflatten(1, (groups, -1)).flatten(2) if groups else x.detach().flatten(-dims)
        ctx.rstd = torch.rsqrt(flat.var(-1, unbiased=False, keepdim=True) + eps)
        ctx.dims, ctx.groups, ctx.weight = dims, groups, None if weight is None else weight.detach()
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple:
        if ctx.weight is not None:
            g = g * (ctx.weight.view(-1, *[1] * (g.dim() - 2)) if ctx.groups else ctx.weight)
        # reshape, not views: this runs under vmap (is_grads_batched), which has no batching rule for them
        flat = g.reshape(g.shape[0], ctx.groups, -1) if ctx.groups else g.reshape(*g.shape[: g.dim() - ctx.dims], -1)
        flat = (flat - flat.mean(-1, keepdim=True)) * ctx.rstd
        return flat.reshape(g.shape), None, None, None, None, None


def _fixed_std(func, args: tuple, kwargs: dict) -> Tensor:
    """F.layer_norm / F.group_norm (and their torch forms) with the std fixed in the backward."""
    names = ("input", "normalized_shape" if _NORMS[func] == "layer" else "num_groups", "weight", "bias", "eps")
    bound = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    x, eps = bound["input"], float(bound.get("eps", 1e-5))
    rest = {k: v for k, v in bound.items() if k != "input"}
    groups = None if _NORMS[func] == "layer" else int(rest["num_groups"])
    shape = rest.get("normalized_shape")
    dims = len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1
    norm = F.layer_norm if groups is None else F.group_norm
    return _FixedStd.apply(x, lambda t: norm(t, **rest), dims=dims, groups=groups, weight=rest.get("weight"), eps=eps)


class _FrozenBatchNorm(torch.autograd.Function):
    """batch_norm with running statistics (eval mode) whose backward is the signal times the fixed scale, for the
    input only: autograd's own computes the affine parameters' gradients too, with layout copies per seed."""

    @staticmethod
    def forward(
        ctx, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        scale = torch.rsqrt(var + eps) * (weight if weight is not None else 1)
        ctx.save_for_backward(scale.view(-1, *[1] * (x.dim() - 2)))
        return F.batch_norm(x, mean, var, weight=weight, bias=bias, training=False, momentum=0.0, eps=eps)

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
    return _FrozenBatchNorm.apply(a["input"], a["running_mean"], var=a["running_var"], weight=w, bias=b, eps=a["eps"])


class _Unpooled(torch.autograd.Function):
    """Max-pool forward; backward by an unpooling without the switches (reverse.upsample: nearest, ...)."""

    @staticmethod
    def forward(ctx, x: Tensor, pool: nn.MaxPool2d, how: str) -> Tensor:
        ctx.pool, ctx.how, ctx.size = pool, how, tuple(x.shape[-2:])
        return F.max_pool2d(
            x,
            pool.kernel_size,
            stride=pool.stride,
            padding=pool.padding,
            dilation=pool.dilation,
            ceil_mode=pool.ceil_mode,
        )

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        if g.dim() == 3:  # an unbatched (C, H, W) input
            return upsample(g[None], ctx.pool, ctx.size, how=ctx.how)[0], None, None
        return upsample(g, ctx.pool, ctx.size, how=ctx.how), None, None


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
        self.stack: list[str] = []
        self.places: dict[int, tuple] = {}  # id(grad_fn) -> (grad_fn, module path)
        self.marks: dict[int, tuple] = {}  # id(grad_fn) -> (grad_fn, module path, convention)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
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
        out = func(*args, **kwargs) if out is None else out
        if func in _PRODUCT_FUNCS and func not in _INPLACE_PRODUCTS and not kwargs and len(args) == 2:
            scale = [a for a in args if isinstance(a, numbers.Real) and not isinstance(a, bool)]
            tensor = [a for a in args if isinstance(a, Tensor)]
            if scale and tensor and isinstance(out, Tensor):  # beta x: the input of a gate g(beta x) below
                self.scaled[out] = (tensor[0], float(scale[0]))
        if func in _VIEWS and args and isinstance(args[0], Tensor) and args[0] in self.gates:
            self.gates[out] = (None, None, 1.0)  # a reshaped gate: still a gate, no longer the activation of its input
        if func not in _SHAPE_ONLY:
            self._follow(tree_flatten((args, kwargs))[0], out)
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
            f"{op} has no {rule} rule (only convolutions, linear maps, pools, BatchNorm, LayerNorm, "
            "GroupNorm, sums, elementwise activations, gated products and attention)"
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
    if id(node) in gated and any(signal(n) for n in gated[id(node)][1]):
        return "data-dependent mask", (
            "it mixes in a value computed from the input without a gradient (a mask such "
            f"as t > 0, .detach(), torch.no_grad()): a data-dependent gate with no {rule} "
            "rule; use nn.ReLU or F.relu"
        )
    return None


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
        def hook(mod, args, out):
            if stack and stack[-1] == name:
                stack.pop()
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
                return copy
            return None

        return hook

    pre = [(m, enter(n)) for n, m in found.items()]
    if unpools:
        pre += [(m, pool_input(n)) for n, m in found.items() if isinstance(m, nn.MaxPool2d)]
    with forward_hooks([(m, owner(n, m)) for n, m in found.items()], pre=pre):
        yield rec


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
            except (RuntimeError, AssertionError) as e:  # AssertionError: the model's own input check (ViT)
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
        raise LayerError(f"layer '{layer}' {why}; choose a module that runs once and returns a tensor")
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
        grads = torch.func.vmap(partial(_grads, out, [x, *stages]))(seed)
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
    rule), "no rule: <op>", a convention (CONVENTIONS), "ReLU rule", "switches" (max-pools), "linear",
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
        model(leaf.clone())
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
            elif op.startswith(("MaxPool", "AdaptiveMaxPool")):
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
