"""Forward pass that records the max-pooling switches (where each maximum came from)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ImageError, LayerError, out_of_memory
from .hooks import forward_hooks, hidden_states
from .layers import Step, in_channels, module_outputs, step_index
from .layout import layout_of
from .model import ModelView, view_of


@dataclass
class Switches:
    """Where each pooled maximum came from: flat index into the pool's input plane. indices (N, C, Ho, Wo)."""

    indices: Tensor
    input_size: tuple[int, int]
    overlapping: bool = False  # two windows can pick the same input position: unpooling must add up


@dataclass
class ForwardRecord:
    """Output of the last step run, input shape of every step (shapes[i] feeds step i), the switches, and
    where each ReLU let its input through (bool (N, C, ...), recorded only for rules that need it)."""

    activation: Tensor
    shapes: list[torch.Size]
    switches: dict[str, Switches]
    masks: dict[str, Tensor] = field(default_factory=dict)


def max_pool_with_indices(m: nn.MaxPool2d, x: Tensor) -> tuple[Tensor, Tensor]:
    return F.max_pool2d(
        x,
        m.kernel_size,
        stride=m.stride,
        padding=m.padding,
        dilation=m.dilation,
        ceil_mode=m.ceil_mode,
        return_indices=True,
    )


def overlapping(m: nn.MaxPool2d) -> bool:
    """True when two pooling windows can share an input position."""
    k, s, d = (torch.nn.modules.utils._pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.dilation))
    return any(dd * (kk - 1) + 1 > ss for kk, ss, dd in zip(k, s, d, strict=True))


def apply(m: nn.Module, x: Tensor) -> Tensor:
    """One step with eval-mode semantics, functionally: no hooks, no in-place, no state updates."""
    if isinstance(m, nn.Conv2d):
        return F.conv2d(
            x, m.weight, bias=m.bias, stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups
        )
    if isinstance(m, nn.ReLU):
        return F.relu(x)
    if isinstance(m, nn.BatchNorm2d):
        return F.batch_norm(
            x, m.running_mean, m.running_var, weight=m.weight, bias=m.bias, training=False, momentum=0.0, eps=m.eps
        )
    if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return x
    if isinstance(m, nn.AvgPool2d):
        return F.avg_pool2d(
            x,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            ceil_mode=m.ceil_mode,
            count_include_pad=m.count_include_pad,
            divisor_override=m.divisor_override,
        )
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return F.adaptive_avg_pool2d(x, m.output_size)
    if isinstance(m, nn.Flatten):
        return x.flatten(m.start_dim, m.end_dim)
    if isinstance(m, nn.Linear):
        return F.linear(x, m.weight, m.bias)
    if isinstance(m, nn.MaxPool2d):
        return max_pool_with_indices(m, x)[0]
    raise TypeError(f"no forward rule for {type(m).__name__}")  # a chain (layers.chain_of) has only mirrored types


def _layout(x: Tensor) -> torch.memory_format:
    """Channels-last for feature maps (the reverse pass's layout on CPU), else as is."""
    return torch.channels_last if x.dim() == 4 else torch.contiguous_format


@torch.no_grad()
def forward_chain(steps: list[Step], x: Tensor, upto: int, *, keep_masks: bool = False) -> ForwardRecord:
    """Run steps[0..upto] on x (N, C, H, W), recording every max-pool's switches (and ReLU masks if asked)."""
    shapes, switches, masks = [], {}, {}
    for s in steps[: upto + 1]:
        shapes.append(x.shape)
        wanted = s.module.in_channels if isinstance(s.module, nn.Conv2d) else None
        if wanted is not None and (x.dim() != 4 or x.shape[1] != wanted):
            raise ImageError(
                f"'{s.name}' expects {wanted} input channels, got a {tuple(x.shape)} tensor; "
                "give images preprocessed for this model (deconvviz.to_batch)"
            )
        try:
            if isinstance(s.module, nn.MaxPool2d):
                x, idx = max_pool_with_indices(s.module, x)
                switches[s.name] = Switches(idx, tuple(shapes[-1][-2:]), overlapping(s.module))
            else:
                x = apply(s.module, x)
                if keep_masks and isinstance(s.module, nn.ReLU):  # laid out as the reverse signal will be
                    masks[s.name] = (x > 0).contiguous(memory_format=_layout(x))
        except RuntimeError as e:
            if out_of_memory(e):
                raise
            why = f"{type(s.module).__name__}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            raise ImageError(
                f"input {tuple(shapes[0][-2:])} does not fit '{s.name}' ({why}); use a larger size, "
                "or images preprocessed for this model",
                about="size",
            ) from None
        if x.numel() == 0:
            raise ImageError(
                f"input {tuple(shapes[0][-2:])} is too small: '{s.name}' has an empty output; use a larger size",
                about="size",
            )
    shapes.append(x.shape)
    return ForwardRecord(x, shapes, switches, masks)


@torch.no_grad()
def module_activations(model: nn.Module, x: Tensor, taps: dict[str, str], *, keep_output: bool = False):
    """One forward pass of any network, keeping the output of each tapped module ({layer name: module path});
    the hooks are removed after the pass, also on error. keep_output: also return the model's output."""
    kept: dict[str, Tensor] = {}
    modules = dict(model.named_modules())

    def keep(path: str):
        def hook(m, args, out):
            out = hidden_states(out)  # a tuple's first tensor (Hugging Face's blocks), else the output
            kept[path] = out.detach().clone()  # later in-place steps (a residual's +=) must not change it

        return hook

    with forward_hooks([(modules[path], keep(path)) for path in set(taps.values())]):
        out = model(x)
    found = {name: kept[path] for name, path in taps.items()}
    return (found, out) if keep_output else found


def output_shapes(model: nn.Module, steps: list[Step], size: tuple[int, int]) -> list[tuple[int, ...]]:
    """Per-image output shape of every step for an input of `size`. Runs on the meta device: shapes only,
    no memory or arithmetic, whatever the size."""
    meta = [Step(s.name, _on_meta(s.module)) for s in steps]
    x = torch.zeros(1, in_channels(steps), *size, device="meta")
    return [tuple(t[1:]) for t in forward_chain(meta, x, len(steps) - 1).shapes[1:]]


def layer_shape(model: nn.Module | ModelView, layer: str, *, size: int) -> tuple[int, ...]:
    """Feature maps' shape per image (C, *spatial) of a layer (a name `resolve` knows) for a square input of `size`,
    on the meta device: a token layer's (C, H, W) on its patch grid, a channels-last layer's (C, H, W)
    (deconvviz.engine.layout). A module that does not run exactly once with a tensor output cannot be projected from."""
    view = view_of(model)
    model, steps, name = view.model, view.steps, view.resolve(layer)
    if steps is not None:
        return output_shapes(model, steps, (size, size))[step_index(steps, name)]
    found = next((r for r in module_outputs(model, (size, size)) if r.name == name), None)
    if found is None or found.runs != 1 or not found.shape:
        why = "does not run" if found is None else f"runs {found.runs} times" if found.runs != 1 else "is no tensor"
        raise LayerError(
            f"layer '{layer}' {why} in a forward pass; choose a module that runs once and returns "
            "a tensor (see `deconvviz layers`)",
            about="layer",
        )
    layout = layout_of(model, name, (size, size))
    layout.check(layer)
    return layout.map_shape(found.shape)


def _on_meta(m: nn.Module) -> nn.Module:
    """A shallow copy of a leaf module whose parameters and buffers are shape-only meta tensors."""
    twin = copy.copy(m)
    twin._parameters = {k: None if v is None else torch.empty_like(v, device="meta") for k, v in m._parameters.items()}
    twin._buffers = {k: None if v is None else torch.empty_like(v, device="meta") for k, v in m._buffers.items()}
    return twin
