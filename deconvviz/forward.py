"""Forward pass that records the max-pooling switches (where each maximum came from)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ImageError, out_of_memory
from .layers import Step


@dataclass
class Switches:
    """Where each pooled maximum came from: flat index into the pool's input plane. indices (N, C, Ho, Wo)."""

    indices: Tensor
    input_size: tuple[int, int]
    overlapping: bool = False  # two windows can pick the same input position: unpooling must add up


@dataclass
class ForwardRecord:
    """Output of the last step run, input shape of every step (shapes[i] feeds step i), the switches."""

    activation: Tensor
    shapes: list[torch.Size]
    switches: dict[str, Switches]


def _maxpool(m: nn.MaxPool2d, x: Tensor) -> tuple[Tensor, Tensor]:
    return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)


def overlapping(m: nn.MaxPool2d) -> bool:
    """True when two pooling windows can share an input position."""
    k, s, d = (torch.nn.modules.utils._pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.dilation))
    return any(dd * (kk - 1) + 1 > ss for kk, ss, dd in zip(k, s, d, strict=True))


def apply(m: nn.Module, x: Tensor) -> Tensor:
    """One step with eval-mode semantics, functionally: no hooks, no in-place, no state updates."""
    if isinstance(m, nn.Conv2d):
        return F.conv2d(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, nn.ReLU):
        return F.relu(x)
    if isinstance(m, nn.BatchNorm2d):
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return x
    if isinstance(m, nn.AvgPool2d):
        return F.avg_pool2d(x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return F.adaptive_avg_pool2d(x, m.output_size)
    if isinstance(m, nn.Flatten):
        return x.flatten(m.start_dim, m.end_dim)
    if isinstance(m, nn.Linear):
        return F.linear(x, m.weight, m.bias)
    if isinstance(m, nn.MaxPool2d):
        return _maxpool(m, x)[0]
    raise TypeError(f"no forward rule for {type(m).__name__}")  # chain_of() admits only mirrored types


@torch.no_grad()
def forward_chain(steps: list[Step], x: Tensor, upto: int) -> ForwardRecord:
    """Run steps[0..upto] on x (N, C, H, W), recording every max-pool's switches."""
    shapes, switches = [], {}
    for s in steps[: upto + 1]:
        shapes.append(x.shape)
        wanted = s.module.in_channels if isinstance(s.module, nn.Conv2d) else None
        if wanted is not None and (x.dim() != 4 or x.shape[1] != wanted):
            raise ImageError(f"'{s.name}' expects {wanted} input channels, got a {tuple(x.shape)} tensor; "
                             "give images preprocessed for this model (deconvviz.to_batch)")  # fmt: skip
        try:
            if isinstance(s.module, nn.MaxPool2d):
                x, idx = _maxpool(s.module, x)
                switches[s.name] = Switches(idx, tuple(shapes[-1][-2:]), overlapping(s.module))
            else:
                x = apply(s.module, x)
        except RuntimeError as e:
            if out_of_memory(e):
                raise
            why = f"{type(s.module).__name__}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            raise ImageError(f"input {tuple(shapes[0][-2:])} does not fit '{s.name}' ({why}); use a larger --size, "
                             "or images preprocessed for this model") from None  # fmt: skip
        if x.numel() == 0:
            raise ImageError(f"input {tuple(shapes[0][-2:])} is too small: '{s.name}' has an empty output; "
                             "use a larger --size")  # fmt: skip
    shapes.append(x.shape)
    return ForwardRecord(x, shapes, switches)
