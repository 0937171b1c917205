"""Reverse pass of the deconvnet: unpool with the switches, rectify, filter with transposed filters.

Unpooling can also be done without the switches, to see what they contribute (Mahendran & Vedaldi 2016):
`nearest` (every position of a window gets the pooled value), `bilinear` (the pooled map resized) and
`fixed` (the value at one fixed position of each window); see `UNPOOLS` and `upsample`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SelectionError, unknown_name
from .forward import ForwardRecord, Switches, apply
from .layers import Step
from .rules import Rule


@dataclass
class Stage:
    """The reconstruction after one reverse step block: `deconv5` (14x14), `unpool4` (28x28), ...

    tensor: (N, K, C, H, W) in a Projection ((B, C, H, W) for a chunk of rows inside the reverse pass), the
    signal as it enters the next reverse step (before its ReLU rule).
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
    (h, w), lead = switches.input_size, y.is_contiguous(memory_format=torch.channels_last) and c > 1
    if lead:  # channels-last: scatter along positions of (B, H*W, C) views, no layout copies
        out = y.new_zeros(b, h * w, c)
        out.scatter_add_(1, idx.permute(0, 2, 3, 1).reshape(b, -1, c), y.permute(0, 2, 3, 1).reshape(b, -1, c))
        return out.view(b, h, w, c).permute(0, 3, 1, 2)
    out = y.new_zeros(b, c, h * w)
    return out.scatter_add_(2, idx.reshape(b, c, -1), y.reshape(b, c, -1)).view(b, c, h, w)


UNPOOLS: dict[str, str] = {
    "switches": "switches",  # Zeiler & Fergus: each value back where its maximum was
    "nearest": "nearest",  # every position of the window (nearest-neighbour upsampling)
    "bilinear": "bilinear",  # the pooled map resized bilinearly, half-pixel centres
    "fixed": "fixed position",  # Mahendran & Vedaldi: offset (k - 1) // 2 of each window
}  # name -> title for figures


def get_unpool(unpool: str) -> str:
    """The name of an unpooling choice (UNPOOLS); an unknown name is a SelectionError naming the valid ones."""
    if isinstance(unpool, str) and unpool in UNPOOLS:
        return unpool
    fix = "; e.g. unpool='nearest'"
    raise SelectionError(unknown_name("unpool", str(unpool), list(UNPOOLS), fix=fix), about="unpool")


def spread(y: Tensor, pool: nn.MaxPool2d, fixed: bool = False) -> Tensor:
    """Each pooled value to every position of its window (fixed: to tap (k - 1) // 2 only), overlaps added.

    y (B, C, Ho, Wo) -> (B, C, (Ho - 1) * s + d * (k - 1) + 1, ...): the plane the windows cover, starting at
    -padding (and, with ceil_mode, running past the input). F.fold is the adjoint of unfold: it sums.
    """
    pair = torch.nn.modules.utils._pair
    (kh, kw), s, d = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size), pair(pool.dilation)
    b, c, ho, wo = y.shape
    if fixed:
        taps = y.new_zeros(b, c, kh * kw, ho * wo)
        taps[:, :, (kh - 1) // 2 * kw + (kw - 1) // 2] = y.reshape(b, c, -1)
    else:
        taps = y.reshape(b, c, 1, ho * wo).expand(b, c, kh * kw, ho * wo)
    size = tuple((n - 1) * ss + dd * (k - 1) + 1 for n, ss, dd, k in zip((ho, wo), s, d, (kh, kw), strict=True))
    return F.fold(taps.reshape(b, c * kh * kw, ho * wo), size, (kh, kw), dilation=d, stride=s)


def upsample(y: Tensor, pool: nn.MaxPool2d, input_size: tuple[int, int], *, how: str) -> Tensor:
    """Unpool without the switches. y (B, C, Ho, Wo) -> (B, C, *input_size) of the pool's input plane.

    nearest: the adjoint of sum pooling (avg pool times window size, zero padding), windows overlapping add;
    fixed: the value at offset (k - 1) // 2 of each window (a position in the padding gets nothing);
    bilinear: F.interpolate to input_size, align_corners=False (the pool's geometry plays no part).
    """
    if how == "bilinear":
        return F.interpolate(y, size=tuple(input_size), mode="bilinear", align_corners=False)
    plane = spread(y, pool, fixed=how == "fixed")
    (p, q), (h, w) = torch.nn.modules.utils._pair(pool.padding), input_size
    return F.pad(plane, (-q, q + w - plane.shape[3], -p, p + h - plane.shape[2]))  # negative: cropped


def relu_masks(record: ForwardRecord, name: str, img: Tensor) -> Tensor:
    """The forward mask of ReLU step `name` for each row's image: (B, C, ...) bool."""
    mask = record.masks[name]
    return mask[img] if mask.shape[0] > 1 else mask.expand(len(img), *mask.shape[1:])


def flipped(m: nn.Conv2d) -> Tensor | None:
    """Filters of the stride-1 convolution that equals this conv's transpose: (in, out) swapped, taps
    flipped. None where that identity does not apply (strides, groups, padding beyond the kernel)."""
    k, p, d = m.kernel_size, m.padding, m.dilation
    if m.groups != 1 or m.stride != (1, 1) or any(pp > dd * (kk - 1) for kk, pp, dd in zip(k, p, d, strict=True)):
        return None
    return m.weight.detach().transpose(0, 1).flip(2, 3).contiguous(memory_format=torch.channels_last)


def filter_(m: nn.Module, y: Tensor, in_shape: torch.Size, *, flips: dict | None = None) -> Tensor:
    """Transpose of the linear part of an affine step (biases unused). in_shape: the step's input shape.

    flips caches `flipped` filters: a forward convolution (channels-last) runs faster than the
    transposed one on CPU backends, and gives the same numbers up to float rounding.
    """
    in_shape = (y.shape[0], *in_shape[1:])
    if isinstance(m, nn.Conv2d):
        w = flips.setdefault(m, flipped(m)) if flips is not None else None
        if w is None:
            return torch.nn.grad.conv2d_input(
                in_shape, m.weight, y, stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups
            )
        pad = tuple(d * (k - 1) - p for k, p, d in zip(m.kernel_size, m.padding, m.dilation, strict=True))
        return F.conv2d(
            y.contiguous(memory_format=torch.channels_last), w, bias=None, stride=1, padding=pad, dilation=m.dilation
        )
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


def reverse_chain(
    steps: list[Step],
    record: ForwardRecord,
    y: Tensor,
    *,
    img: Tensor,
    rule: Rule,
    keep_stages: bool = False,
    flips: dict | None = None,
    unpooling: str = "switches",
) -> tuple[Tensor, list[Stage]]:
    """Project y (B, ...) at the output of steps[-1] back to the input. img (B,) says whose switches and masks;
    each ReLU passes the signal by `rule`, each max-pool is undone by `unpooling` (UNPOOLS).

    Returns the input-space reconstruction (B, C, H, W) and, if asked, the stages of these rows (B, C, h, w).
    """
    stages, pending, has_conv = [], None, False
    pool_number = sum(isinstance(s.module, nn.MaxPool2d) for s in steps)

    def flush(block: int) -> None:
        if keep_stages and pending is not None:
            stages.append(Stage(f"{'deconv' if has_conv else 'block'}{block}", "deconv", pending, y))

    for i in reversed(range(len(steps))):
        s = steps[i]
        if isinstance(s.module, nn.MaxPool2d):
            flush(pool_number + 1)
            if unpooling == "switches":
                y = unpool(y, record.switches[s.name], img)
            else:
                y = upsample(y, s.module, record.shapes[i][-2:], how=unpooling)
            if keep_stages:
                stages.append(Stage(f"unpool{pool_number}", "unpool", s.name, y))
            pool_number, pending, has_conv = pool_number - 1, None, False
            continue
        if isinstance(s.module, nn.ReLU):
            y = rule.backward(y, relu_masks(record, s.name, img) if rule.needs_slope else None)
        elif not isinstance(s.module, (nn.Dropout, nn.Dropout2d, nn.Identity)):
            y = filter_(s.module, y, record.shapes[i], flips=flips)
        has_conv |= isinstance(s.module, nn.Conv2d)
        pending = s.name
    flush(1)
    return y, stages


WINDOWED_UNPOOLING = ("switches", "nearest", "fixed")  # unpooling that keeps to the windows

_LOCAL = (nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)


def croppable(steps: list[Step]) -> bool:
    """True when every step is local (convolutions, max-pools, elementwise): a single activation's
    reconstruction then lives in its receptive field, and the reverse pass can run on windows."""
    return all(isinstance(s.module, _LOCAL) for s in steps)


def _geometry(m: nn.Module, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    pair = torch.nn.modules.utils._pair
    k, s, p, d = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding), pair(m.dilation)
    return tuple(torch.tensor(v, device=device) for v in (k, s, p, d))


def _inside(origin: Tensor, size: tuple[int, int], limit: tuple[int, int]) -> Tensor:
    """(B, 1, h, w) mask of window positions that lie inside the plane [0, limit)."""
    rows = origin[:, 0, None] + torch.arange(size[0], device=origin.device)
    cols = origin[:, 1, None] + torch.arange(size[1], device=origin.device)
    ok_r, ok_c = (rows >= 0) & (rows < limit[0]), (cols >= 0) & (cols < limit[1])
    return (ok_r[:, :, None] & ok_c[:, None, :])[:, None]


def reverse_cropped(
    steps: list[Step],
    record: ForwardRecord,
    y: Tensor,
    *,
    origin: Tensor,
    img: Tensor,
    rule: Rule,
    flips: dict | None = None,
    unpooling: str = "switches",
) -> Tensor:
    """Reverse pass on windows that follow the receptive field of one activation per row.

    y (B, C, 1, 1): the selected activation at `origin` (B, 2) of steps[-1]'s output. Each conv or
    pool widens the window by its kernel; positions outside the plane are padding and are zeroed.
    Same result as `reverse_chain` on the full planes (up to float rounding), far less work.
    unpooling: switches, nearest or fixed (these stay inside the window); bilinear resizes the whole
    plane, beyond any window, and takes the full-plane path (see WINDOWED_UNPOOLING).
    """
    for i in reversed(range(len(steps))):
        m, plane = steps[i].module, tuple(record.shapes[i][-2:])
        if isinstance(m, nn.ReLU):
            y = rule.backward(
                y, _window(record.masks[steps[i].name], img, origin, y.shape[1:]) if rule.needs_slope else None
            )
        elif isinstance(m, nn.BatchNorm2d):
            y = filter_(m, y, y.shape)
        elif isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p, d = _geometry(m, origin.device)
            size = tuple(int(v) for v in (torch.tensor(y.shape[-2:], device=origin.device) - 1) * s + d * (k - 1) + 1)
            start = origin * s - p
            if isinstance(m, nn.Conv2d):
                w = flips.setdefault(m, flipped(m)) if flips is not None else flipped(m)
                if w is not None:
                    y = F.conv2d(
                        y.contiguous(memory_format=torch.channels_last),
                        w,
                        bias=None,
                        stride=1,
                        padding=tuple(int(v) for v in d * (k - 1)),
                        dilation=m.dilation,
                    )
                else:
                    y = F.conv_transpose2d(
                        y,
                        m.weight,
                        bias=None,
                        stride=m.stride,
                        padding=0,
                        output_padding=0,
                        groups=m.groups,
                        dilation=m.dilation,
                    )
            elif unpooling == "switches":
                y = _unpool_window(y, record.switches[steps[i].name], img, origin=origin, start=start, size=size)
            else:
                y = spread(y, m, fixed=unpooling == "fixed")  # the window's plane: (B, C, *size) at `start`
            y = y * _inside(start, size, plane)
            origin = start
    h, w = record.shapes[0][-2:]
    out = y.new_zeros(y.shape[0], y.shape[1], h, w)
    for b, (r, c) in enumerate(origin.tolist()):
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + y.shape[2], h), min(c + y.shape[3], w)
        out[b, :, r0:r1, c0:c1] = y[b, :, r0 - r : r1 - r, c0 - c : c1 - c]
    return out


def _window(t: Tensor, img: Tensor, origin: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Windows of t (N, C, H, W): shape (C, h, w) at `origin` (B, 2) of image img (B,); positions outside
    the plane repeat the edge (the signal there is zero). Returns (B, C, h, w)."""
    c, h, w = shape
    rows = (origin[:, 0, None] + torch.arange(h, device=t.device)).clamp(0, t.shape[2] - 1)
    cols = (origin[:, 1, None] + torch.arange(w, device=t.device)).clamp(0, t.shape[3] - 1)
    n = img if t.shape[0] > 1 else torch.zeros_like(img)
    return t[
        n[:, None, None, None],
        torch.arange(c, device=t.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def _unpool_window(y: Tensor, sw: Switches, img: Tensor, origin: Tensor, start: Tensor, size: tuple) -> Tensor:
    """`unpool` on windows: y (B, C, h, w) at `origin` of the pooled plane -> (B, C, *size) at `start`."""
    b, c, h, w = y.shape
    ho, wo = sw.indices.shape[-2:]
    rows = (origin[:, 0, None] + torch.arange(h, device=y.device)).clamp(0, ho - 1)
    cols = (origin[:, 1, None] + torch.arange(w, device=y.device)).clamp(0, wo - 1)
    idx = sw.indices[
        img[:, None, None, None],
        torch.arange(c, device=y.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    r = idx // sw.input_size[1] - start[:, 0, None, None, None]
    q = idx % sw.input_size[1] - start[:, 1, None, None, None]
    # positions outside the plane carry zeros; clamping only keeps their (zero) adds inside the window
    local = (r * size[1] + q).clamp(0, size[0] * size[1] - 1)
    out = y.new_zeros(b, c, size[0] * size[1])
    return out.scatter_add_(2, local.reshape(b, c, -1), y.reshape(b, c, -1)).view(b, c, *size)
