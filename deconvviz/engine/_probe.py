"""The structural probe: the input box each position of a module depends on, for any network.

The probe runs the model once on an input of ones with every dependency counted positively: convolutions
and linear maps (transposed convolutions too) with equal positive weights (1 / fan-in, so values stay near 1),
max-pools as mean-pools over the same windows (a max-pool depends on its whole window), unpoolings spreading each
position over its window (its maximum may have come from any tap of it), interpolations with the magnitudes of
their own weights (bicubic's negative lobes included: the kernel's support), elementwise activations as the identity,
normalizations as the signal plus its mean over what they normalize, subtractions as additions and factors
that are not the signal as their magnitude. No contribution is then negative, so none cancels: the support
of a position's gradient in the probe is exactly the set of input pixels it depends on (residual and
concatenating blocks, strides, dilation and padding included). It costs one batched backward per row and
column of the module's feature maps.
"""

from __future__ import annotations

import itertools
import math
import statistics
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import ImageError, LayerError, UnsupportedModelError
from ._batched import over_seeds
from .hooks import evaluating, forward_hooks, hidden_states
from .layout import Layout


@dataclass(frozen=True)
class Fields:
    """Receptive fields of a layer's positions. rows (h, 2), cols (w, 2): the half-open input range [lo, hi) that
    row i (column j) of the layer depends on, clipped to the input; a position (i, j) depends on rows[i] x cols[j].
    centre_rows (h,), centre_cols (w,): each field's centre unclipped by the image's edge, in input pixels."""

    rows: Tensor
    cols: Tensor
    centre_rows: Tensor
    centre_cols: Tensor

    def boxes(self, rows_cols: Tensor) -> Tensor:
        """(..., 4) top, bottom, left, right (half-open) of positions rows_cols (..., 2)."""
        r, c = rows_cols[..., 0], rows_cols[..., 1]
        return torch.stack([self.rows[r, 0], self.rows[r, 1], self.cols[c, 0], self.cols[c, 1]], dim=-1)

    def whole(self, input_size: tuple[int, int]) -> bool:
        """True when every position depends on the whole input."""
        return all(
            bool((s[:, 0] == 0).all() and (s[:, 1] == n).all())
            for s, n in zip((self.rows, self.cols), input_size, strict=True)
        )

    def interior(self) -> tuple[tuple[int, int], tuple[float | None, float | None]]:
        """Size (rows, cols) of the centre position's field, clipped to the input, and the stride between
        neighbouring fields' centres: None along an axis where the fields lie on no regular grid (one position;
        windows, whose positions share a field; global fields, all centred alike)."""
        sizes = tuple(int(s[len(s) // 2, 1] - s[len(s) // 2, 0]) for s in (self.rows, self.cols))
        return sizes, (_stride(self.rows, self.centre_rows), _stride(self.cols, self.centre_cols))

    def describe(self) -> tuple[str, str]:
        """Size and stride as text: "99" and "16", or rows x cols ("99x51") where they differ; "-": no stride."""
        sizes, strides = self.interior()
        shown = ["-" if v is None else str(round(v)) if abs(v - round(v)) < 1e-6 else f"{v:g}" for v in strides]
        return _pair_text(list(sizes)), _pair_text(shown)


def _stride(spans: Tensor, centres: Tensor) -> float | None:
    """The step between neighbouring fields where they step evenly forward, else None. Read on the fields the
    image's edges do not cut, as they are (a window's positions, or an unpooling's neighbours, share a field: no
    grid); where fewer than three are uncut, on the unclipped centres."""
    lo, hi = spans[:, 0].double(), spans[:, 1].double()
    uncut = (lo > lo.min()) & (hi < hi.max())
    steps = lo[uncut].diff() if int(uncut.sum()) >= 3 else centres.double().diff()
    if len(steps) == 0 or not bool(steps[0] > 1e-6) or not torch.allclose(steps, steps[0], atol=1e-6, rtol=0):
        return None
    return float(steps[0])


def _pair_text(pair: list) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _probe(model: nn.Module, name: str, input_size: tuple[int, int], channels: int | None, layout: Layout) -> Fields:
    """The fields of module `name` by one batched backward per row and column of its feature maps (laid out in its
    output as `layout` says: tokens and channels-last maps are read on their grid)."""
    model = _structural_copy(model) if _device(model).type == "meta" else model
    h_in, w_in = input_size
    if channels is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first.in_channels if first is not None else 3
    module = dict(model.named_modules())[name]
    got: list[Tensor] = []
    keep = (module, lambda m, i, o: got.append(hidden_states(o)) if hidden_states(o) is not None else None)
    leaf = torch.ones(1, channels, h_in, w_in, dtype=torch.float64, device=_device(model), requires_grad=True)
    with forward_hooks([keep]):
        with evaluating(model), torch.random.fork_rng(), _Structural(), torch.enable_grad():
            try:
                model(leaf.clone())
            except torch.utils.checkpoint.CheckpointError:
                raise UnsupportedModelError(
                    f"cannot trace the receptive fields of '{name}': the model recomputes "
                    "parts of its forward (torch.utils.checkpoint)"
                ) from None
            except RuntimeError as e:
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ImageError(
                    f"cannot trace the receptive fields of '{name}' on a {h_in}x{w_in} input ({why}); "
                    "give an input size the model accepts"
                ) from None
    out = layout.maps(got[0], name) if len(got) == 1 and layout.on_grid else None
    if out is None or out.dim() != 4:
        raise LayerError(
            f"layer '{name}' must run once per forward and give feature maps ((N, C, H, W), tokens on a patch grid "
            "or (N, H, W, C)) for receptive fields"
        )
    h, w = out.shape[-2:]
    if out.grad_fn is None:
        raise LayerError(f"layer '{name}' does not depend on the input; choose a layer on the path from the input")
    # one seed per row (all columns and channels) and one per column: the union over the other axis
    hit = torch.cat([_support(out, leaf, _line_seeds(out, part, h)) for part in torch.arange(h + w).split(16)])
    rows = _spans(hit[:h].any(2), h_in)
    cols = _spans(hit[h:].any(1), w_in)
    if bool((rows[:, 1] <= rows[:, 0]).any() | (cols[:, 1] <= cols[:, 0]).any()):
        # the layer depends on the input, so an empty field means the trace lost the dependence (an operation it
        # does not follow, e.g. MaxViT's partitions): no field is better than a wrong one
        raise LayerError(
            f"cannot trace the receptive fields of '{name}': some positions seem to depend on no input pixel; "
            "choose an earlier layer for a region or a point"
        )
    return Fields(rows, cols, _centres(rows, h_in), _centres(cols, w_in))


def _line_seeds(out: Tensor, lines: Tensor, h: int) -> Tensor:
    """(B, *out.shape) seeds of ones on whole rows (lines < h) or columns (lines >= h: column lines - h), made a
    chunk at a time: all h + w at once would hold (h + w) copies of the layer in float64."""
    seeds = out.new_zeros(len(lines), *out.shape)
    at = torch.arange(len(lines))
    rows, cols = lines < h, lines >= h
    seeds[at[rows], :, :, lines[rows]] = 1
    seeds[at[cols], :, :, :, lines[cols] - h] = 1
    return seeds


def _support(out: Tensor, leaf: Tensor, seeds: Tensor) -> Tensor:
    """(B, H, W) bool: the input pixels each seed (B, *out.shape) reaches in the probe, in one batched backward."""

    def grad(seed):
        return torch.autograd.grad(out, leaf, seed, retain_graph=True)[0]

    return over_seeds(grad, seeds).abs().sum((1, 2)) > 0


def _structural_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of a meta-device skeleton with every parameter and buffer one: the probe reads only shapes and
    positive magnitudes, so a skeleton (checked before any weights are read) gets the fields of the real model."""
    copy = deepcopy(model).to_empty(device="cpu")
    with torch.no_grad():
        for t in (*copy.parameters(), *copy.buffers()):
            t.fill_(1)
    return copy


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _spans(hit: Tensor, limit: int) -> Tensor:
    """(n, 2) [first, last + 1) of each row of a boolean (n, limit); a position depending on nothing: [0, 0)."""
    any_ = hit.any(1)
    first = hit.int().argmax(1)
    last = limit - hit.flip(1).int().argmax(1)
    return torch.stack([first.where(any_, 0), last.where(any_, 0)], dim=1).cpu()


def _centres(spans: Tensor, limit: int) -> Tensor:
    """Field centres unclipped by the image's edge. The fields' first rows lie on a line i * stride + a where the
    edge does not cut them (lo > 0), their ends on i * stride + b (hi < limit); a side cut everywhere is taken
    from the other by the grid's mirror symmetry (the first field's start mirrors the last one's end). After an
    upsampling the fields step unevenly (an unpooling by 2: neighbours share a field, steps 0, 4, 0, 4): stride,
    a and b are then means over one period of the steps (medians of them, against a pad's or a crop's bends at
    the edges), so that neighbours sharing a field lie on either side of its centre."""
    lo, hi = spans[:, 0].double(), spans[:, 1].double()
    n, i = len(lo), torch.arange(len(lo), dtype=torch.float64)
    low, high = lo > 0, hi < limit
    runs = [(v[1:] - v[:-1])[ok[1:] & ok[:-1]] for ok, v in ((low, lo), (high, hi))]
    period = max((_period(r) for r in runs), default=1)

    def middle(t: Tensor) -> float:  # the median of the means over each period
        return float((t.unfold(0, period, 1).mean(1) if len(t) >= period else t).median())

    steps = [r for r in runs if len(r)]
    stride = statistics.median(middle(r) for r in steps) if steps else limit / n
    if stride == 0:  # no period found in an uneven grid: its mean step
        stride = float(torch.cat(steps).mean())
    a = middle((lo - i * stride)[low]) if bool(low.any()) else None
    b = middle((hi - i * stride)[high]) if bool(high.any()) else None
    if a is None and b is None:
        return (limit / 2 + (i - (n - 1) / 2) * stride).float()
    a = limit - b - (n - 1) * stride if a is None else a
    b = limit - a - (n - 1) * stride if b is None else b
    return (i * stride + (a + b) / 2).float()


def _period(steps: Tensor) -> int:
    """The shortest period (up to 8) that three quarters of a sequence of steps between fields repeat with; 1
    where none does (a regular grid has period 1)."""
    for p in range(1, 9):
        if len(steps) > p and float((steps[p:] == steps[:-p]).double().mean()) >= 0.75:
            return p
    return 1


def _weights(w: Tensor, x: Tensor, fan_dims: tuple[int, ...]) -> Tensor:
    fan = math.prod(w.shape[d] for d in fan_dims)
    return torch.full(w.shape, 1.0 / fan, dtype=x.dtype, device=x.device)


def _conv_nd(dims: int):
    def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        w = _weights(weight, x, tuple(range(1, weight.dim())))
        return getattr(F, f"conv{dims}d")(x, w, None, stride=stride, padding=padding, dilation=dilation, groups=groups)

    return conv


def _conv_transpose_nd(dims: int):
    def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
        w = _weights(weight, x, (0, *range(2, weight.dim())))
        geometry = {"stride": stride, "padding": padding, "output_padding": output_padding, "dilation": dilation}
        return getattr(F, f"conv_transpose{dims}d")(x, w, None, groups=groups, **geometry)

    return conv_transpose


def _nd(value, dims: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple, torch.Size)) else (value,) * dims


def interpolation_weights(x: Tensor, size=None, scale_factor=None, mode="nearest", **kwargs) -> list[Tensor]:
    """The (out, in) weights of an F.interpolate call along each spatial axis of x (every mode is separable: nearest,
    nearest-exact, (bi/tri)linear, bicubic, area, antialiased), from the call itself on one-hot inputs: the same
    size or scale factor along that axis, 1 along the others. float64; exactly 0 where an output ignores an input."""
    dims, found = x.dim() - 2, []
    for d in range(dims):
        n = x.shape[2 + d]
        # 4 positions, left as they are, along the other axes: torch's antialiased kernels mis-weight an axis of 1
        one = [n if e == d else 4 for e in range(dims)]
        sizes = None if size is None else [v if e == d else 4 for e, v in enumerate(_nd(size, dims))]
        factors = (
            None if scale_factor is None else [v if e == d else 1.0 for e, v in enumerate(_nd(scale_factor, dims))]
        )
        basis = torch.eye(n, dtype=torch.float64, device=x.device).reshape(
            n, 1, *[n if e == d else 1 for e in range(dims)]
        )
        out = F.interpolate(basis.expand(n, 1, *one).contiguous(), sizes, factors, mode, **kwargs)
        found.append(out[(slice(None), 0, *[slice(None) if e == d else 0 for e in range(dims)])].T)
    return found


def _interpolate(x, size=None, scale_factor=None, mode="nearest", *args, **kwargs):
    """An interpolation with the magnitudes of its weights (bicubic's negative lobes included): each output
    depends, positively, on exactly the inputs its kernel's support covers."""
    kwargs = dict(zip(("align_corners", "recompute_scale_factor", "antialias"), args, strict=False)) | kwargs
    out = x
    for d, w in enumerate(interpolation_weights(x, size, scale_factor, mode, **kwargs)):
        out = (out.movedim(2 + d, -1) @ w.abs().T.to(x.dtype)).movedim(-1, 2 + d)
    return out


def _spread(x: Tensor, size: tuple, *, kernel, stride, dilation, padding, fill: float, combine) -> Tensor:
    """Each position of x (N, C, *spatial) to every tap of its window in an output of `size` (spatial): output
    o gets x[i] wherever o = i * stride - padding + tap * dilation, combined by `combine` over the windows
    that cover o (fill where none does). The structure of an unpooling and a transposed convolution."""
    dims = len(size)
    k, st, dl, pd = (_nd(v, dims) for v in (kernel, stride, dilation, padding))
    n = x.shape[-dims:]
    full = [(m - 1) * a + b * (kk - 1) + 1 for m, a, b, kk in zip(n, st, dl, k, strict=True)]
    canvas = x.new_full((*x.shape[:-dims], *[max(f, p + o) for f, p, o in zip(full, pd, size, strict=True)]), fill)
    for taps in itertools.product(*(range(kk) for kk in k)):
        at = tuple(slice(t * b, t * b + (m - 1) * a + 1, a) for t, b, m, a in zip(taps, dl, n, st, strict=True))
        canvas = canvas.clone()
        canvas[(..., *at)] = combine(canvas[(..., *at)], x)
    return canvas[(..., *(slice(p, p + o) for p, o in zip(pd, size, strict=True)))]


def _unpool(dims: int):
    """max_unpool (1-3d) as structure: a pooled position may have come from any tap of its window, so each output
    depends on every window that covers it (whatever the switches of this input were)."""

    def unpool(x, indices, kernel_size, stride=None, padding=0, output_size=None):
        real = getattr(F, f"max_unpool{dims}d")(
            x.detach(), indices, kernel_size, stride=stride, padding=padding, output_size=output_size
        )
        stride = kernel_size if stride is None else stride
        window = {"kernel": kernel_size, "stride": stride, "dilation": 1, "padding": padding}
        return _spread(x, tuple(real.shape[-dims:]), **window, fill=0.0, combine=torch.add)

    return unpool


def _linear(x, weight, bias=None):
    return F.linear(x, _weights(weight, x, (1,)))


def _pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """A max-pool depends on its whole window: the mean over the same windows (dilation and ceil mode kept)."""
    pair = torch.nn.modules.utils._pair
    k, p, d = pair(kernel_size), pair(padding), pair(dilation)
    s = pair(stride) if stride not in (None, []) else k
    real = F.max_pool2d(
        x.detach(),
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=ceil_mode,
        return_indices=True,
    )
    h, w = real[0].shape[-2:]
    sizes = x.shape[-2:]
    need = [(n - 1) * s[a] + d[a] * (k[a] - 1) + 1 - (sizes[a] + 2 * p[a]) for a, n in enumerate((h, w))]
    padded = F.pad(x, (p[1], p[1] + max(need[1], 0), p[0], p[0] + max(need[0], 0)))
    grid = [(n - dd * (kk - 1) - 1) // ss + 1 for n, dd, kk, ss in zip(padded.shape[-2:], d, k, s, strict=True)]
    cols = F.unfold(padded if x.dim() == 4 else padded[None], k, d, 0, s)  # (N, C*kh*kw, rows*cols)
    means = cols.unflatten(1, (-1, k[0] * k[1])).mean(2).unflatten(-1, grid)[..., :h, :w]
    out = means.reshape(*x.shape[:-2], h, w)
    return (out, real[1]) if return_indices else out


def _pool_nd(dims: int):
    """A 1-d or 3-d max-pool as the mean over its windows, like _pool: a depthwise convolution of ones."""

    def pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        k, p, d = (_nd(v, dims) for v in (kernel_size, padding, dilation))
        s = _nd(stride, dims) if stride not in (None, []) else k
        real = getattr(F, f"max_pool{dims}d")(x.detach(), k, s, p, d, ceil_mode=ceil_mode, return_indices=True)
        batched = x if x.dim() == dims + 2 else x[None]
        n = real[0].shape[-dims:]
        need = [
            (m - 1) * ss + dd * (kk - 1) + 1 - (z + 2 * pp)
            for m, ss, dd, kk, z, pp in zip(*(n, s, d, k, x.shape[-dims:], p), strict=True)
        ]
        pads = [v for pp, e in zip(p[::-1], need[::-1], strict=True) for v in (pp, pp + max(e, 0))]
        ones = batched.new_ones(batched.shape[1], 1, *k) / math.prod(k)
        conv = getattr(F, f"conv{dims}d")
        out = conv(F.pad(batched, pads), ones, stride=s, dilation=d, groups=batched.shape[1])
        out = out[(..., *(slice(0, m) for m in n))].reshape(real[0].shape)
        return (out, real[1]) if return_indices else out

    return pool


def _with_indices(pool):
    return lambda *args, **kwargs: pool(*args, **(kwargs | {"return_indices": True}))


def _adaptive_max(x, output_size, return_indices=False):
    out = F.adaptive_avg_pool2d(x, output_size)
    return (out, F.adaptive_max_pool2d(x.detach(), output_size, True)[1]) if return_indices else out


def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention with uniform weights over the keys each query may see (the mask's, causal's):
    every output depends, positively, on its query and on every allowed key and value."""
    allowed = torch.ones(query.shape[-2], key.shape[-2], dtype=query.dtype, device=query.device)
    if is_causal:
        allowed = allowed.tril()
    if attn_mask is not None:
        allowed = allowed * (attn_mask if attn_mask.dtype == torch.bool else attn_mask > -math.inf).to(query.dtype)
    if enable_gqa and key.dim() > 2 and key.shape[-3] != query.shape[-3]:
        key, value = (t.repeat_interleave(query.shape[-3] // t.shape[-3], dim=-3) for t in (key, value))
    weights = allowed / allowed.sum(-1, keepdim=True).clamp_min(1)
    return weights @ (key.mean(-1, keepdim=True) + value) + query.mean(-1, keepdim=True)


def _multi_head(query, key, value, embed_dim, *args, **kwargs):
    """F.multi_head_attention_forward on (L, N, E) without masks: each output depends on its query and on every
    key and value position, through every feature."""
    if any(kwargs.get(k) is not None for k in ("key_padding_mask", "attn_mask")) or any(
        a is not None for a in args[10:11] + args[12:13]
    ):
        raise UnsupportedModelError("cannot trace receptive fields through a masked nn.MultiheadAttention")
    mixed = query.mean(-1, keepdim=True) + (key.mean(-1, keepdim=True) + value.mean(-1, keepdim=True)).mean(0)
    return mixed.expand(*query.shape[:-1], embed_dim).clone(), None


def _plus_mean(dims_of):
    def norm(x, *args, **kwargs):
        dims = dims_of(x, *args, **kwargs)
        return x + x.mean(dims, keepdim=True) if dims else x.clone()

    return norm


def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, *args, **kwargs):
    # eval mode: elementwise; batch statistics: every position of the channel
    return x + x.mean((0, *range(2, x.dim())), keepdim=True) if training or running_mean is None else x.clone()


def _identity(x, *args, **kwargs):
    return x.clone()


def _identity_(x, *args, **kwargs):
    return x


def _magnitude(t):
    """A factor that is not the signal (a parameter, a constant) counts by its magnitude."""
    return t.abs() if isinstance(t, Tensor) and t.grad_fn is None else t


_ACTIVATIONS = [
    F.relu,
    torch.relu,
    Tensor.relu,
    F.relu6,
    F.hardtanh,
    F.leaky_relu,
    F.elu,
    F.celu,
    F.selu,
    F.gelu,
    F.silu,
    F.hardswish,
    F.mish,
    F.softplus,
    F.sigmoid,
    torch.sigmoid,
    Tensor.sigmoid,
    F.hardsigmoid,
    F.tanh,
    torch.tanh,
    Tensor.tanh,
    F.prelu,
    F.threshold,
    torch.clamp,
    Tensor.clamp,
    torch.clamp_min,
    Tensor.clamp_min,
    torch.clamp_max,
    Tensor.clamp_max,
    F.logsigmoid,
    F.softsign,
    F.tanhshrink,
    torch.abs,
    Tensor.abs,
    Tensor.__abs__,
]


_INPLACE = [
    F.relu_,
    torch.relu_,
    Tensor.relu_,
    F.hardtanh_,
    F.leaky_relu_,
    F.elu_,
    Tensor.clamp_,
    Tensor.clamp_min_,
    Tensor.clamp_max_,
    torch.sigmoid_,
    Tensor.sigmoid_,
    Tensor.tanh_,
    Tensor.abs_,
]


def _softmax_dims(x, dim, *a, **k):
    return (dim,)


# Normalizations and softmaxes: the dims over which each output position mixes its input (from the call's args).
_MIXED_DIMS = {
    F.instance_norm: lambda x, *a, **k: tuple(range(2, x.dim())),
    F.layer_norm: lambda x, shape, *a, **k: tuple(range(x.dim() - len(shape), x.dim())),
    F.group_norm: lambda x, *a, **k: tuple(range(1, x.dim())),
    **dict.fromkeys([F.softmax, torch.softmax, Tensor.softmax, F.log_softmax], _softmax_dims),
}


_REPLACED = {
    **dict.fromkeys(_ACTIVATIONS, _identity),
    **dict.fromkeys(_INPLACE, _identity_),
    **{getattr(F, f"conv{d}d"): _conv_nd(d) for d in (1, 2, 3)},
    **{getattr(F, f"conv_transpose{d}d"): _conv_transpose_nd(d) for d in (1, 2, 3)},
    F.linear: _linear,
    F.max_pool2d: _pool,
    F.max_pool2d_with_indices: _with_indices(_pool),
    **{getattr(F, f"max_pool{d}d"): _pool_nd(d) for d in (1, 3)},
    **{getattr(F, f"max_pool{d}d_with_indices"): _with_indices(_pool_nd(d)) for d in (1, 3)},
    **{getattr(F, f"max_unpool{d}d"): _unpool(d) for d in (1, 2, 3)},
    F.interpolate: _interpolate,
    F.adaptive_max_pool2d: _adaptive_max,
    F.batch_norm: _batch_norm,
    F.scaled_dot_product_attention: _attention,
    F.multi_head_attention_forward: _multi_head,
    **{f: _plus_mean(dims) for f, dims in _MIXED_DIMS.items()},
    torch.sub: torch.add,
    Tensor.sub: Tensor.add,
    Tensor.__sub__: Tensor.__add__,
    Tensor.__rsub__: Tensor.__radd__,
    torch.rsub: lambda a, b, *args, **kw: torch.add(b, a),
    Tensor.sub_: Tensor.add_,
    Tensor.__isub__: Tensor.__iadd__,
    torch.neg: _identity,
    Tensor.neg: _identity,
    Tensor.__neg__: _identity,
}


_PRODUCTS = {torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__, Tensor.mul_, Tensor.__imul__}


_QUOTIENTS = {torch.div, Tensor.div, Tensor.__truediv__, torch.true_divide, Tensor.div_, Tensor.__itruediv__}


class _Structural(TorchFunctionMode):
    """The probe's forward: every dependency counted positively (see the module)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _REPLACED:
            return _REPLACED[func](*args, **kwargs)
        if func in _PRODUCTS:
            return func(*[_magnitude(a) for a in args], **kwargs)
        if func in _QUOTIENTS:  # a / b depends on b as a * b does, with no sign
            a, b = (_magnitude(t) for t in args[:2])
            return a * b if isinstance(b, Tensor) and b.grad_fn is not None else func(a, b, *args[2:], **kwargs)
        if func is Tensor.__rtruediv__:
            return _magnitude(args[1]) * args[0]
        return func(*args, **kwargs)
