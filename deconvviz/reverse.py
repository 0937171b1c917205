"""Reverse pass of the deconvnet: unpool with the switches, rectify, filter with transposed filters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .forward import ForwardRecord, Switches, apply
from .layers import Step


@dataclass
class Stage:
    """The reconstruction after one reverse step block: `deconv5` (14x14), `unpool4` (28x28), ...

    tensor: (N, K, C, H, W), the signal as it enters the next reverse step (before rectification).
    """

    name: str
    kind: str  # "deconv" (after a block of filtering) or "unpool"
    step: str  # module path of the last forward step this stage has undone
    tensor: Tensor

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape[3:])


def unpool(y: Tensor, switches: Switches, img: Tensor) -> Tensor:
    """Put each value back where its maximum came from. y (B, C, Ho, Wo) -> (B, C, H, W).

    A scatter-add, not max_unpool2d: with overlapping windows one input position can be the
    maximum of several windows, and the adjoint must add their contributions, not keep the last.
    """
    b, c = y.shape[:2]
    idx = switches.indices[img] if switches.indices.shape[0] > 1 else switches.indices.expand(b, -1, -1, -1)
    out = y.new_zeros(b, c, switches.input_size[0] * switches.input_size[1])
    return out.scatter_add_(2, idx.reshape(b, c, -1), y.reshape(b, c, -1)).view(b, c, *switches.input_size)


def rectify(y: Tensor) -> Tensor:
    """ReLU on the reconstruction (not the forward pass's mask)."""
    return y.clamp_min(0)


def filter_(m: nn.Module, y: Tensor, in_shape: torch.Size) -> Tensor:
    """Transpose of the linear part of an affine step (biases unused). in_shape: the step's input shape."""
    in_shape = (y.shape[0], *in_shape[1:])
    if isinstance(m, nn.Conv2d):
        return torch.nn.grad.conv2d_input(in_shape, m.weight, y, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, nn.Linear):
        return y @ m.weight
    if isinstance(m, nn.BatchNorm2d):
        scale = torch.rsqrt(m.running_var + m.eps)
        scale = scale * m.weight if m.weight is not None else scale
        return y * scale.view(-1, 1, 1)
    if isinstance(m, nn.Flatten):
        return y.reshape(in_shape)
    # average pools: exact adjoint through autograd of the (linear) forward
    with torch.enable_grad():
        z = y.new_zeros(in_shape, requires_grad=True)
        return torch.autograd.grad(apply(m, z), z, y)[0]


def reverse_chain(steps: list[Step], record: ForwardRecord, y: Tensor, img: Tensor,
                  keep_stages: bool = False) -> tuple[Tensor, list[tuple[str, str, str, Tensor]]]:  # fmt: skip
    """Project y (B, ...) at the output of steps[-1] back to the input. img (B,) says whose switches.

    Returns the input-space reconstruction (B, C, H, W) and, if asked, (name, kind, step, tensor) stages.
    """
    stages, pending, has_conv = [], None, False
    pool_number = sum(isinstance(s.module, nn.MaxPool2d) for s in steps)

    def flush(block: int) -> None:
        if keep_stages and pending is not None:
            stages.append((f"{'deconv' if has_conv else 'block'}{block}", "deconv", pending, y))

    for i in reversed(range(len(steps))):
        s = steps[i]
        if isinstance(s.module, nn.MaxPool2d):
            flush(pool_number + 1)
            y = unpool(y, record.switches[s.name], img)
            if keep_stages:
                stages.append((f"unpool{pool_number}", "unpool", s.name, y))
            pool_number, pending, has_conv = pool_number - 1, None, False
            continue
        if isinstance(s.module, nn.ReLU):
            y = rectify(y)
        elif not isinstance(s.module, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            y = filter_(s.module, y, record.shapes[i])
        has_conv |= isinstance(s.module, nn.Conv2d)
        pending = s.name
    flush(1)
    return y, stages
