"""Deconvnet for any nn.Module, through autograd: the backward of every ReLU is replaced by rectification.

For a network of convolutions, affine maps, max-pools, additions and concatenations joined by ReLUs,
autograd's backward is the exact transpose of each linear step and unpools with the switches; only
the ReLU rule differs (deconvnet: ReLU on the signal, not the forward mask). Anything else on the
path from the input to the layer has no deconvnet rule and is refused, never silently approximated.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .errors import LayerError, UnsupportedModelError
from .forward import Switches, overlapping

_RELUS = {F.relu: False, torch.relu: False, Tensor.relu: False, F.relu_: True, torch.relu_: True, Tensor.relu_: True}

# autograd nodes (names without "Backward<n>") that are linear in the signal or the max-pool switch rule.
_LINEAR = set(
    "Convolution ConvolutionBackwardOverrideable Addmm Mm Bmm Mv Matmul Linear Mul Div Add Sub Neg Cat Stack "
    "View UnsafeView Reshape ReshapeAlias Permute Transpose T Expand Squeeze Unsqueeze Slice Select Split "
    "SplitWithSizes Unbind Clone Mean Sum AvgPool2D AvgPool3D AdaptiveAvgPool2D AdaptiveAvgPool3D "
    "MaxPool2DWithIndices MaxPool3DWithIndices AdaptiveMaxPool2D NativeBatchNorm CudnnBatchNorm "
    "MiopenBatchNorm ConstantPadNd UpsampleNearest2D UpsampleBilinear2D Alias AsStrided ToCopy Index "
    "IndexSelect Flip Roll Repeat Narrow _Rectified".split()
)  # fmt: skip
_PRODUCTS = {"Mul", "Div", "Mm", "Bmm", "Mv", "Matmul", "Addmm"}  # linear only if one operand carries no signal


class _Rectified(torch.autograd.Function):
    """ReLU forward; deconvnet backward: rectify the incoming signal."""

    @staticmethod
    def forward(ctx, x: Tensor, inplace: bool) -> Tensor:
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_min_(0)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        return g.clamp_min(0), None


class _RectifyReLUs(TorchFunctionMode):
    """Routes every ReLU call (modules, F.relu, torch.relu, x.relu(), in-place forms) through _Rectified."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:
            x = args[0] if args else kwargs["input"]
            return _Rectified.apply(x, _RELUS[func] or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False)))
        return func(*args, **kwargs)


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
def rectified_relus() -> Iterator[None]:
    with _RectifyReLUs():
        yield


def _op(node) -> str:
    return re.sub(r"Backward\d*$", "", type(node).__name__)


def check_path(out: Tensor, x: Tensor, owners: dict[int, str], layer: str) -> None:
    """Refuse any op between x and out that the deconvnet cannot mirror. owners: grad_fn id -> module."""
    memo: dict[int, bool] = {}

    def signal(node) -> bool:  # does this node depend on the input?
        if node is None:
            return False
        key = id(node)
        if key not in memo:
            memo[key] = False
            if type(node).__name__ == "AccumulateGrad":
                memo[key] = node.variable is x
            else:
                memo[key] = any(signal(n) for n, _ in node.next_functions)
        return memo[key]

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
        if op not in _LINEAR and op != "AccumulateGrad":
            raise UnsupportedModelError(f"cannot project '{layer}' through {what}: {op} has no deconvnet rule "
                                        "(only convolutions, linear maps, pools, BatchNorm, sums and ReLUs); "
                                        "choose a layer before it")  # fmt: skip
        if op in _PRODUCTS and len(feeding) > 1:
            raise UnsupportedModelError(
                f"cannot project '{layer}' through {what}: it multiplies two input-dependent signals, "
                "which has no deconvnet rule; choose a layer before it"
            )
        stack.extend(feeding)


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

        return hook

    handles = [m.register_forward_hook(owner(n, m)) for n, m in found.items()]
    try:
        yield rec
    finally:
        for h in handles:
            h.remove()


def layer_output(model: nn.Module, x: Tensor, layer: str) -> tuple[Tensor, Tensor, dict]:
    """Forward x (ReLUs rectified, eval mode, hooks removed after). Returns (input leaf, layer output, record)."""
    x = x.detach().requires_grad_(True)
    with evaluating(model), recording(model, layer) as rec, rectified_relus(), torch.enable_grad():
        model(x)
    outs = rec["outputs"]
    if len(outs) != 1 or not isinstance(outs[0], Tensor):
        n = len(outs)
        why = f"runs {n} times in one forward" if n > 1 else "returns no tensor" if n else "is not called in forward"
        raise LayerError(f"layer '{layer}' {why}; choose a module that runs once and returns a tensor")
    out = outs[0]
    if out.grad_fn is None:
        raise LayerError(f"layer '{layer}' does not depend on the input; choose a layer on the path from the input")
    check_path(out, x, rec["owners"], layer)
    return x, out, rec


def project_autograd(x: Tensor, out: Tensor, seed: Tensor) -> Tensor:
    """Input-space reconstructions for K seeds at once. seed (K, *out.shape) -> (K, *x.shape)."""
    return torch.autograd.grad(out, x, seed, retain_graph=True, is_grads_batched=True)[0]
