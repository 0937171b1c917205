"""How each operation passes the signal back on the autograd path: the named conventions (`CONVENTIONS`), the
activations the rules apply to (as modules and functional calls, in place or not), the gates, normalizations and
max-pools with a fixed convention, and the autograd Functions whose backward carries each one. rectified.py's
torch function mode routes a model's operations here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ..errors import UnsupportedModelError
from . import attention
from .reverse import upsample
from .rules import Rule

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


# Activation modules whose forward is a formula of several ops (transformers.activations: GELU as erf or tanh
# formulas, x sigmoid(1.702 x), x tanh(softplus(x)), ...): each call is one activation of the rules, by the
# module's own function (its slope f'(x) by autograd through it), never its pieces (a tanh's rule inside a
# product of the signal with itself). By class name and the package that defines it.
ACTIVATION_MODULES = {
    "transformers.activations": (
        "GELUActivation GELUTanh NewGELUActivation FastGELUActivation QuickGELUActivation ClippedGELUActivation "
        "AccurateGELUActivation MishActivation SiLUActivation LaplaceActivation ReLUSquaredActivation "
        "SqrtSoftplusActivation XIELUActivation PytorchGELUTanh".split()
    ),
}


def activation_module(module: nn.Module) -> bool:
    """Whether `module` is one of ACTIVATION_MODULES (its class, not a subclass: one may change forward)."""
    cls = type(module)
    return cls.__name__ in ACTIVATION_MODULES.get(cls.__module__, ())


def _module_call(t: Tensor, module: nn.Module) -> Tensor:
    return module.forward(t)  # not module(t): its hooks (the one that made this call among them) ran already


def module_activation(x: Tensor, module: nn.Module) -> Tensor:
    """module(x) for an activation module (ACTIVATION_MODULES), as one call a torch function mode sees (the
    rules' mode makes it one activation); the module itself where no mode runs."""
    if torch.overrides.has_torch_function((x,)):
        return torch.overrides.handle_torch_function(module_activation, (x,), x, module)
    return module.forward(x)


def module_activation_spec(module: nn.Module) -> Activation:
    """The activation a module_activation call applies: smooth, f the module itself."""
    return Activation(type(module).__name__, "smooth", _module_call)


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


# autograd nodes (names without "Backward<n>") that are linear in the signal or the max-pool switch rule: autograd's
# backward is their exact transpose. Interpolation in every mode, and a network's own unpooling, linear given the
# switches its max-pool recorded (a gather there; rectified.py refuses indices from anywhere else).
_LINEAR = set(
    "Convolution ConvolutionBackwardOverrideable Addmm Mm Bmm Mv Matmul Linear Mul Div Add Sub Neg Cat Stack "
    "View UnsafeView Reshape ReshapeAlias Permute Transpose T Expand Squeeze Unsqueeze Slice Select Split "
    "SplitWithSizes Unbind Clone Mean Sum AvgPool2D AvgPool3D AdaptiveAvgPool2D AdaptiveAvgPool3D "
    "MaxPool2DWithIndices MaxPool3DWithIndices AdaptiveMaxPool2D NativeBatchNorm CudnnBatchNorm "
    "MiopenBatchNorm ConstantPadNd Alias AsStrided ToCopy Index "
    "IndexSelect Flip Roll Repeat Narrow ReflectionPad1D ReflectionPad2D ReflectionPad3D ReplicationPad1D "
    "ReplicationPad2D ReplicationPad3D PixelShuffle PixelUnshuffle _Activated _FixedStd "
    "_FrozenBatchNorm _Unpooled _FixedAttention".split()
)
_UPSAMPLING = set(
    "UpsampleNearest1D UpsampleNearest2D UpsampleNearest3D UpsampleNearestExact1D UpsampleNearestExact2D "
    "UpsampleNearestExact3D UpsampleLinear1D UpsampleBilinear2D UpsampleBilinear2DAa UpsampleBicubic2D "
    "UpsampleBicubic2DAa UpsampleTrilinear3D".split()
)
_UNPOOLING = {"MaxUnpool2D", "MaxUnpool3D"}  # max_unpool1d runs as 2-d
_LINEAR |= _UPSAMPLING | _UNPOOLING | {"Im2Col", "Col2Im"}  # F.unfold, F.fold: patches out, patches summed back


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


def _circular_pad(args: tuple, kwargs: dict) -> Tensor | None:
    """F.pad(mode="circular") as slices and a concatenation, the same values: its own kernel's backward is a
    CopySlices node, which cannot be told from an in-place op with no rule. None: another mode."""
    names = ("input", "pad", "mode", "value")
    given = dict(zip(names, args, strict=False)) | kwargs
    x, pad = given["input"], list(given["pad"])
    if given.get("mode", "constant") != "circular" or min(pad, default=0) < 0:
        return None
    for i in range(len(pad) // 2):
        dim, left, right = x.dim() - 1 - i, pad[2 * i], pad[2 * i + 1]
        wrapped = [x.narrow(dim, x.shape[dim] - left, left)] if left else []
        x = torch.cat([*wrapped, x, *([x.narrow(dim, 0, right)] if right else [])], dim)
    return x


# Max-pools that return their switches (the indices of each maximum), and the unpoolings a network feeds them to.
_POOLS_WITH_INDICES = {
    F.max_pool1d_with_indices,
    F.max_pool2d_with_indices,
    F.max_pool3d_with_indices,
    F.adaptive_max_pool1d_with_indices,
    F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool3d_with_indices,
    F.fractional_max_pool2d_with_indices,
    F.fractional_max_pool3d_with_indices,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}


_UNPOOLS = {F.max_unpool1d, F.max_unpool2d, F.max_unpool3d}


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
