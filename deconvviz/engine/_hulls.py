"""Receptive fields of every module at once (`module_fields`, what `deconvviz layers` shows): one cheap forward in
which each position carries the hull of the input rows and columns it depends on, instead of one structural probe
(_probe.py) per module.

On the signal, every operation `_Hulls` knows combines hulls by a max: a window's maximum over the hulls it
covers (a transposed convolution's and an unpooling's: over the windows that cover a position; an interpolation's:
over its kernel's support), a sum's or product's elementwise union, a reduction's union over what it reduces,
attention's union over the tokens. An operation it does not know gives NaN, and a module reached through one gets
the probe's fields.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import ImageError
from ._probe import (
    _ACTIVATIONS,
    _INPLACE,
    _MIXED_DIMS,
    Fields,
    _centres,
    _identity_,
    _nd,
    _probe,
    _spread,
    _structural_copy,
    interpolation_weights,
)
from .hooks import evaluating, forward_hooks, hidden_states
from .layout import Layout, layouts


def module_fields(
    model: nn.Module, input_size: tuple[int, int], channels: int | None = None, *, names: Collection[str] | None = None
) -> dict[str, Fields]:
    """Receptive fields of every module with feature maps (N, C, H, W), tokens on a patch grid or (N, H, W, C), that
    runs once (names: of these modules only), from one cheap forward: each position carries the hull of the
    input rows and columns it depends on (see _Hulls), so a whole network costs about a max-pool per layer
    instead of a backward per module. Equal to the structural probe (receptive_field) wherever the forward
    uses operations _Hulls knows; a module reached through any other operation gets the probe's fields instead."""
    copy = _structural_copy(model).float()  # the hulls' own dtype, whatever the model's
    for p in copy.parameters():
        p.requires_grad_(False)  # below, requires_grad marks the signal: what depends on the input
    h_in, w_in = input_size
    convs = [m.in_channels for m in copy.modules() if isinstance(m, nn.Conv2d)]
    tries = [channels] if channels is not None else list(dict.fromkeys([*convs, 3]))
    rows, cols = torch.arange(h_in, dtype=torch.float32)[:, None], torch.arange(w_in, dtype=torch.float32)
    # (4, H, W): last row, -first row, last column, -first column each pixel depends on: all combine by max
    coords = torch.stack(
        [rows.expand(h_in, w_in), -rows.expand(h_in, w_in), cols.expand(h_in, w_in), -cols.expand(h_in, w_in)]
    )
    found = layouts(model, input_size, channels=channels)
    for k, c in enumerate(tries):
        seen: dict[str, list] = {}
        keepers = [(m, _keep_hull(n, seen, found.get(n, Layout()))) for n, m in copy.named_modules() if n]
        try:
            with forward_hooks(keepers), evaluating(copy), torch.random.fork_rng(), _Hulls(), torch.enable_grad():
                copy(coords[:, None].expand(4, c, h_in, w_in).clone().requires_grad_(True))
            break
        except RuntimeError as e:
            if k == len(tries) - 1:
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ImageError(
                    f"cannot trace the receptive fields on a {h_in}x{w_in} input ({why}); "
                    "give an input size the model accepts"
                ) from None
    out = {}
    for name, hulls in seen.items():
        if len(hulls) != 1 or hulls[0] is None or (names is not None and name not in names):
            continue
        hull = hulls[0]
        if bool(hull.isnan().any()):  # an operation _Hulls does not know: the probe, on the model itself
            out[name] = _probe(model, name, input_size, channels, found.get(name, Layout()))
            continue
        last_row, first_row = hull[0].amax(1), -hull[1].amax(1)  # (H,): union over columns
        last_col, first_col = hull[2].amax(0), -hull[3].amax(0)
        spans = [torch.stack([lo, hi + 1]).T for lo, hi in ((first_row, last_row), (first_col, last_col))]
        spans = [s.nan_to_num(0, 0, 0).long() for s in spans]  # a position depending on nothing: [0, 0)
        out[name] = Fields(spans[0], spans[1], _centres(spans[0], h_in), _centres(spans[1], w_in))
    return out


def _keep_hull(name: str, seen: dict[str, list], layout: Layout):
    def keep(m, args, out):
        out = hidden_states(out)  # a tuple's first tensor (Hugging Face's blocks), else the output
        ok = isinstance(out, Tensor) and out.requires_grad and layout.on_grid
        maps = layout.maps(out.detach()) if ok else None  # the hulls lie as the values do: tokens on their grid
        ok = ok and maps.dim() == 4
        seen.setdefault(name, []).append(_channels_hull(maps)[:, 0] if ok else None)  # (4, H, W)

    return keep


def _is_signal(t) -> bool:
    return isinstance(t, Tensor) and t.requires_grad


def _signals(args) -> list[Tensor]:
    found = []
    for a in args:
        if isinstance(a, (list, tuple)):
            found += _signals(a)
        elif _is_signal(a):
            found.append(a)
    return found


def _window_hull(x: Tensor, kernel, stride, *, padding, dilation, ceil_mode=False) -> Tensor:
    """Max over each window, padding depending on nothing (-inf): the hull of a conv's or pool's window."""
    pair = torch.nn.modules.utils._pair
    k, d, p = pair(kernel), pair(dilation), pair(padding)
    s = pair(stride) if stride not in (None, []) else k
    if any(2 * pp > kk for pp, kk in zip(p, k, strict=True)):
        x, p = F.pad(x, (p[1], p[1], p[0], p[0]), value=-math.inf), (0, 0)  # max_pool2d pads at most half
    return F.max_pool2d(x, k, s, padding=p, dilation=d, ceil_mode=ceil_mode)


def _hull_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    k = weight.shape[-2:]
    if isinstance(padding, str):  # 'valid' or 'same' (stride 1): the total padding split as torch does
        pair = torch.nn.modules.utils._pair
        total = [0, 0] if padding == "valid" else [dd * (kk - 1) for dd, kk in zip(pair(dilation), k, strict=True)]
        x = F.pad(
            x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2), value=-math.inf
        )
        padding = 0
    if groups == 1:  # every output channel sees all inputs: one hull, shared by the channels (stride 0)
        hull = _window_hull(_channels_hull(x), k, stride, padding=padding, dilation=dilation)
        return hull.expand(-1, weight.shape[0], -1, -1)
    grouped = x.unflatten(1, (groups, -1)).amax(2)  # (N, groups, H, W): a group's output sees all its inputs
    hull = _window_hull(grouped, k, stride, padding=padding, dilation=dilation)
    return hull.repeat_interleave(weight.shape[0] // groups, dim=1)


def _channels_hull(x: Tensor) -> Tensor:
    """(N, 1, H, W): the hull over a feature map's channels (read once where they are one shared hull)."""
    return x[:, :1] if x.stride(1) == 0 else x.amax(1, keepdim=True)


def _hull_linear(x, weight, bias=None):
    return x.amax(-1, keepdim=True).expand(*x.shape[:-1], weight.shape[0]).clone()


def _hull_max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    out = _window_hull(x, kernel_size, stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    if return_indices:
        geometry = {"padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}
        return out, F.max_pool2d(x.detach(), kernel_size, stride, return_indices=True, **geometry)[1]
    return out


def _hull_avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, *args, **kwargs):
    return _window_hull(x, kernel_size, stride, padding=padding, dilation=1, ceil_mode=ceil_mode)


def _hull_adaptive(x, output_size, return_indices=False):
    out = F.adaptive_max_pool2d(x, output_size)  # the same windows as the average's
    return (out, F.adaptive_max_pool2d(x.detach(), output_size, True)[1]) if return_indices else out


def _hull_over(dims_of):
    """A normalization or softmax: each position depends on everything it is normalized over."""

    def norm(x, *args, **kwargs):
        dims = dims_of(x, *args, **kwargs)
        return x.amax(dims, keepdim=True).expand_as(x) if dims else x

    return norm


def _hull_batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, *args, **kwargs):
    return x.amax(tuple(range(2, x.dim())), keepdim=True).expand_as(x) if training else x


def _hull_union(func):
    """An elementwise operation of the signal and anything else: each position depends on what its operands'
    positions depend on (a constant operand on nothing), broadcast as the operation does. In place it changes
    the first operand, which the hulls' identities may share with other tensors: a hull can only grow by that.
    Operands with one hull for all channels (stride 0) are combined once."""

    def union(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, Tensor)]
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        found = _signals(args)
        shared = all(t.dim() == 4 and t.stride(1) == 0 for t in found) and len(shape) == 4
        found = [t[:, :1] for t in found] if shared else found
        out = found[0]
        for t in found[1:]:
            out = torch.maximum(out, t)
        out = out.broadcast_to(shape)
        if func in _IN_PLACE_UNION and args[0].requires_grad and args[0].stride(1 % args[0].dim()) != 0:
            return args[0].copy_(out)
        return out

    return union


def _hull_reduce(x, dim=None, keepdim=False, *args, **kwargs):
    """A reduction over some axes (mean, sum, norm, ...): the hull over them; over the batch it is unknown."""
    if (
        dim is None
        or (isinstance(dim, int) and dim % x.dim() == 0)
        or (not isinstance(dim, int) and 0 in [d % x.dim() for d in dim])
    ):
        return _unknown(x.sum())
    return x.amax(dim, keepdim=keepdim)


def _hull_norm(x, p="fro", dim=None, keepdim=False, *args, **kwargs):
    return _hull_reduce(x, dim, keepdim)


def _hull_spread(x, dim=None, *args, **kwargs):
    """std and var: (x, dim, unbiased, keepdim) or (x, dim, correction=..., keepdim=...)."""
    return _hull_reduce(x, dim, args[1] if len(args) > 1 else kwargs.get("keepdim", False))


def _hull_max(x, *args, **kwargs):
    if args and isinstance(args[0], Tensor):
        return _hull_union(torch.maximum)(x, args[0])
    dim = args[0] if args else kwargs.get("dim")
    if dim is None:
        return _unknown(x.amax())
    keepdim = args[1] if len(args) > 1 else kwargs.get("keepdim", False)
    return torch.return_types.max((x.amax(dim, keepdim), x.detach().argmax(dim, keepdim)))


def _hull_matmul(a, b, *args, **kwargs):
    """out[..., i, j] mixes row i of a with column j of b (a vector operand: its only axis)."""
    a_rows = _hull_reduce(a, -1, True) if _is_signal(a) else None
    b_cols = _hull_reduce(b, -2 if b.dim() > 1 else -1, True) if _is_signal(b) else None
    shape = torch.matmul(a.detach(), b.detach()).shape
    parts = []
    if a_rows is not None:
        parts.append(a_rows if b.dim() > 1 else a_rows.squeeze(-1))
    if b_cols is not None:
        parts.append(b_cols if a.dim() > 1 else b_cols.squeeze(-2))
    out = parts[0] if len(parts) == 1 else torch.maximum(*parts)
    return out.broadcast_to(shape).clone()


def _hull_attention(query, key, value, attn_mask=None, *args, **kwargs):
    """scaled_dot_product_attention (..., L, E): every query position sees every key and value position; with a
    mask (which may cut some out) the hulls cannot tell."""
    out = F.scaled_dot_product_attention(query.detach(), key.detach(), value.detach(), attn_mask, *args, **kwargs)
    if attn_mask is not None or kwargs.get("is_causal"):
        return _unknown(out)
    seen = [t.amax((-2, -1), keepdim=True) for t in (key, value) if _is_signal(t)]
    own = [query.amax(-1, keepdim=True)] if _is_signal(query) else []
    hull = seen[0] if seen else own[0]
    for t in [*seen[1:], *own]:
        hull = torch.maximum(hull, t)
    return hull.broadcast_to(out.shape).clone()


def _hull_multi_head(query, key, value, embed_dim, *args, **kwargs):
    """F.multi_head_attention_forward on (L, N, E): every output position sees every position of the query, key
    and value; with a mask (which may cut some out) the hulls cannot tell."""
    hulls = [t.amax((0, -1), keepdim=True) for t in (query, key, value) if _is_signal(t)]
    hull = hulls[0]
    for t in hulls[1:]:
        hull = torch.maximum(hull, t)
    out = hull.broadcast_to((*query.shape[:-1], embed_dim)).clone()
    masks = [kwargs.get("key_padding_mask"), kwargs.get("attn_mask"), *(args[10:11] + args[12:13])]
    return (_unknown(out) if any(m is not None for m in masks) else out), None


def _hull_cat(tensors, *args, **kwargs):
    """Concatenated parts that are not the signal (a learned token, a constant map) depend on nothing."""
    parts = [t if _is_signal(t) else torch.full_like(t, -math.inf) for t in tensors]
    return torch.cat(parts, *args, **kwargs)


def _hull_stack(tensors, *args, **kwargs):
    parts = [t if _is_signal(t) else torch.full_like(t, -math.inf) for t in tensors]
    return torch.stack(parts, *args, **kwargs)


def _hull_pad(x, pad, mode="constant", value=None):
    return F.pad(x, pad, mode, -math.inf) if mode == "constant" else F.pad(x, pad, mode)


def _hull_interpolate(x, size=None, scale_factor=None, mode="nearest", *args, **kwargs):
    """An interpolation in any mode: each output position the hull of the inputs its kernel's support covers
    (nearest one, bilinear 2x2, bicubic 4x4, area and antialiasing their windows), axis by axis."""
    kwargs = dict(zip(("align_corners", "recompute_scale_factor", "antialias"), args, strict=False)) | kwargs
    shared = x.dim() == 4 and x.stride(1) == 0
    out = x[:, :1] if shared else x
    for d, w in enumerate(interpolation_weights(x, size, scale_factor, mode, **kwargs)):
        taps = w != 0  # (out, in): a contiguous run of inputs per output
        lo, hi = taps.int().argmax(1), taps.shape[1] - 1 - taps.flip(1).int().argmax(1)
        at = (lo[:, None] + torch.arange(int((hi - lo).max()) + 1, device=lo.device)).minimum(hi[:, None])
        moved = out.movedim(2 + d, -1)
        out = moved[..., at].amax(-1).movedim(-1, 2 + d)
    return out.expand(-1, x.shape[1], *out.shape[2:]) if shared else out


def _hull_unpool(dims: int):
    """max_unpool: each output the hull of every pooled position whose window covers it (any of them may have
    had its maximum there; the probe's structural unpooling)."""

    def unpool(x, indices, kernel_size, stride=None, padding=0, output_size=None):
        real = getattr(F, f"max_unpool{dims}d")(
            x.detach(), indices, kernel_size, stride=stride, padding=padding, output_size=output_size
        )
        stride = kernel_size if stride is None else stride
        window = {"kernel": kernel_size, "stride": stride, "dilation": 1, "padding": padding}
        return _spread(x, tuple(real.shape[-dims:]), **window, fill=-math.inf, combine=torch.maximum)

    return unpool


def _hull_conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """A transposed convolution: each output the hull of the inputs whose kernels reach it."""
    k = weight.shape[-2:]
    s, p, op, d = (_nd(v, 2) for v in (stride, padding, output_padding, dilation))
    geometry = zip(*(x.shape[-2:], s, p, d, k, op), strict=True)
    size = tuple((n - 1) * a - 2 * b + c * (kk - 1) + e + 1 for n, a, b, c, kk, e in geometry)
    grouped = _channels_hull(x) if groups == 1 else x.unflatten(1, (groups, -1)).amax(2)
    hull = _spread(grouped, size, kernel=k, stride=s, dilation=d, padding=p, fill=-math.inf, combine=torch.maximum)
    channels = weight.shape[1] * groups
    return hull.expand(-1, channels, -1, -1) if groups == 1 else hull.repeat_interleave(channels // groups, dim=1)


def _unknown(t: Tensor) -> Tensor:
    """The result of an operation the hulls do not model: NaN, which every later hull keeps."""
    return torch.full_like(t, math.nan, dtype=torch.float32).requires_grad_(True)


def _named(names: str, *owners) -> list:
    """The functions of these names that torch or Tensor (owners) have."""
    return [getattr(o, n) for o in owners for n in names.split() if hasattr(o, n)]


_BINARY = _named("add sub rsub mul div true_divide maximum minimum pow addcmul lerp", torch, Tensor) + _named(
    "__add__ __radd__ __sub__ __rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ __pow__", Tensor
)


_IN_PLACE_UNION = set(_named("add_ sub_ mul_ div_ __iadd__ __isub__ __imul__ __itruediv__", Tensor))


_REDUCTIONS = _named("mean sum amax amin logsumexp", torch, Tensor)


# operations that only move, copy or look at positions: the hulls move with them
_MOVING = set(
    _named(
        "view reshape flatten unflatten permute transpose contiguous squeeze unsqueeze expand expand_as repeat "
        "__getitem__ narrow chunk split unbind clone to float type_as roll flip movedim view_as reshape_as "
        "tensor_split __len__",
        torch,
        Tensor,
    )
    + _named("pixel_shuffle pixel_unshuffle channel_shuffle dropout dropout1d dropout2d alpha_dropout", F)
    + [F.feature_alpha_dropout]
)


_HULLS = {
    **dict.fromkeys([*_ACTIVATIONS, *_INPLACE], _identity_),
    **{f: _hull_union(f) for f in [*_BINARY, *_IN_PLACE_UNION]},
    **dict.fromkeys(_REDUCTIONS, _hull_reduce),
    **dict.fromkeys([torch.std, Tensor.std, torch.var, Tensor.var], _hull_spread),
    **dict.fromkeys([torch.norm, Tensor.norm], _hull_norm),
    **dict.fromkeys([torch.neg, Tensor.neg, Tensor.__neg__, Tensor.detach], _identity_),
    F.conv2d: _hull_conv,
    F.linear: _hull_linear,
    F.max_pool2d: _hull_max_pool,
    F.max_pool2d_with_indices: lambda *args, **kwargs: _hull_max_pool(*args, **(kwargs | {"return_indices": True})),
    F.max_unpool2d: _hull_unpool(2),
    F.conv_transpose2d: _hull_conv_transpose,
    F.avg_pool2d: _hull_avg_pool,
    F.adaptive_max_pool2d: _hull_adaptive,
    F.adaptive_avg_pool2d: _hull_adaptive,
    F.batch_norm: _hull_batch_norm,
    **{f: _hull_over(dims) for f, dims in _MIXED_DIMS.items()},
    torch.max: _hull_max,
    Tensor.max: _hull_max,
    torch.cat: _hull_cat,
    torch.concat: _hull_cat,
    torch.stack: _hull_stack,
    F.pad: _hull_pad,
    F.interpolate: _hull_interpolate,
    **dict.fromkeys(_named("matmul bmm __matmul__ mm", torch, Tensor), _hull_matmul),
    F.scaled_dot_product_attention: _hull_attention,
    F.multi_head_attention_forward: _hull_multi_head,
}


_FACTORIES = set(
    _named("new_zeros new_ones new_full new_empty new_tensor", Tensor)
    + _named("zeros_like ones_like empty_like full_like", torch)
)


class _Hulls(TorchFunctionMode):
    """The hulls' forward: on the signal (what requires grad), every operation becomes the max of the hulls its
    result depends on; operations it does not know give NaN (see module_fields)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _signals([*args, *kwargs.values()]) or func in _FACTORIES:  # a new tensor depends on nothing
            return func(*args, **kwargs)
        if func in _HULLS:
            return _HULLS[func](*args, **kwargs)
        out = func(*args, **kwargs)
        if func is Tensor.__setitem__:  # positions overwritten by what the hulls cannot tell apart
            args[0].copy_(_unknown(args[0]))
            return out
        if func in _MOVING:
            return out  # the hulls move with the positions
        if isinstance(out, (tuple, list)):
            return type(out)(_unknown(t) if _floating(t) else t for t in out)
        return _unknown(out) if _floating(out) else out  # else a look at the signal (its shape, a count, a test)


def _floating(t) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()
