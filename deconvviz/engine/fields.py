"""Receptive fields of any network: the input box each position of a layer depends on, by a structural probe.

The probe runs the model once on an input of ones with every dependency counted positively: convolutions
and linear maps with equal positive weights (1 / fan-in, so values stay near 1), max-pools as mean-pools
over the same windows (a max-pool depends on its whole window), elementwise activations as the identity,
normalizations as the signal plus its mean over what they normalize, subtractions as additions and factors
that are not the signal as their magnitude. No contribution is then negative, so none cancels: the support
of a position's gradient in the probe is exactly the set of input pixels it depends on (residual and
concatenating blocks, strides, dilation and padding included). Chains keep their closed form (layers.py).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import ImageError, LayerError, UnsupportedModelError
from .forward import output_shapes
from .hooks import evaluating, forward_hooks
from .layers import receptive_fields, step_index
from .layout import CHANNELS_LAST, TOKENS, Layout, layout_of, layouts
from .model import ModelView, view_of


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
        neighbouring fields' centres (None along an axis of one position)."""
        sizes = tuple(int(s[len(s) // 2, 1] - s[len(s) // 2, 0]) for s in (self.rows, self.cols))
        strides = tuple(float(c[1] - c[0]) if len(c) > 1 else None for c in (self.centre_rows, self.centre_cols))
        return sizes, strides

    def describe(self) -> tuple[str, str]:
        """Size and stride as text: "99" and "16", or rows x cols ("99x51") where they differ; "-": no stride."""
        sizes, strides = self.interior()
        shown = ["-" if v is None else str(round(v)) if abs(v - round(v)) < 1e-6 else f"{v:g}" for v in strides]
        return _pair_text(list(sizes)), _pair_text(shown)


def _pair_text(pair: list) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def receptive_field(
    model: nn.Module | ModelView, layer: str, *, input_size: tuple[int, int], channels: int | None = None
) -> Fields:
    """The input box every position of `layer` depends on, for an input of input_size (H, W) (channels: the
    model's input channels, default the first convolution's). Chains: their closed form; any other model: the
    structural probe (see the module), or, on a token or channels-last layer (a transformer's), the hulls of
    module_fields (the probe's fields where they know every operation, as for attention). A layer that mixes
    all positions has every field the whole input. Given a model's view (engine.model), the fields are kept in
    it: the same layer, size and channels are not traced twice."""
    view = view_of(model)
    name = view.resolve(layer)
    key = (name, tuple(input_size), channels)
    if key not in view.fields:
        view.fields[key] = _receptive_field(view, name, tuple(input_size), channels)
    return view.fields[key]


def _receptive_field(view: ModelView, name: str, input_size: tuple[int, int], channels: int | None) -> Fields:
    model, steps = view.model, view.steps
    h_in, w_in = input_size
    if steps is not None:
        upto = step_index(steps, name)
        try:
            fr, fc = receptive_fields(steps, upto)
        except LayerError:
            fr = fc = None
        shape = output_shapes(model, steps[: upto + 1], input_size)[upto]
        if fr is not None and len(shape) == 4:
            h, w = shape[-2:]
            spans = [torch.tensor([f.span(i, n) for i in range(m)]) for f, m, n in ((fr, h, h_in), (fc, w, w_in))]
            centres = [torch.arange(m) * f.stride - f.offset + f.size / 2 for f, m in ((fr, h), (fc, w))]
            return Fields(spans[0], spans[1], centres[0], centres[1])
    layout = layout_of(model, name, input_size, channels=channels)
    if layout.kind in (TOKENS, CHANNELS_LAST):  # a transformer: one cheap forward, where a probe costs h + w backwards
        found = module_fields(model, input_size, channels, names={name}).get(name)
        if found is not None:
            return found
    return _probe(model, name, input_size, channels, layout)


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
    keep = (module, lambda m, i, o: got.append(o) if isinstance(o, Tensor) else None)
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

    return torch.func.vmap(grad)(seeds).abs().sum((1, 2)) > 0


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
    from the other by the grid's mirror symmetry (the first field's start mirrors the last one's end)."""
    lo, hi = spans[:, 0].double(), spans[:, 1].double()
    n, i = len(lo), torch.arange(len(lo), dtype=torch.float64)
    low, high = lo > 0, hi < limit
    steps = [d for ok, v in ((low, lo), (high, hi)) for d in (v[1:] - v[:-1])[ok[1:] & ok[:-1]].tolist()]
    stride = float(torch.tensor(steps).median()) if steps else limit / n
    a = float((lo - i * stride)[low].median()) if bool(low.any()) else None
    b = float((hi - i * stride)[high].median()) if bool(high.any()) else None
    if a is None and b is None:
        return (limit / 2 + (i - (n - 1) / 2) * stride).float()
    a = limit - b - (n - 1) * stride if a is None else a
    b = limit - a - (n - 1) * stride if b is None else b
    return (i * stride + (a + b) / 2).float()


def _weights(w: Tensor, x: Tensor, fan_dims: tuple[int, ...]) -> Tensor:
    fan = math.prod(w.shape[d] for d in fan_dims)
    return torch.full(w.shape, 1.0 / fan, dtype=x.dtype, device=x.device)


def _conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(
        x, _weights(weight, x, (1, 2, 3)), bias=None, stride=stride, padding=padding, dilation=dilation, groups=groups
    )


def _conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return F.conv_transpose2d(
        x,
        _weights(weight, x, (0, 2, 3)),
        bias=None,
        stride=stride,
        padding=padding,
        output_padding=output_padding,
        groups=groups,
        dilation=dilation,
    )


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
    F.conv2d: _conv,
    F.conv_transpose2d: _conv_transpose,
    F.linear: _linear,
    F.max_pool2d: _pool,
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


def module_fields(
    model: nn.Module, input_size: tuple[int, int], channels: int | None = None, *, names: Collection[str] | None = None
) -> dict[str, Fields]:
    """Receptive fields of every module with feature maps (N, C, H, W), tokens on a patch grid or (N, H, W, C), that
    runs once (names: of these modules only), from one cheap forward: each position carries the hull of the
    input rows and columns it depends on (see _Hulls), so a whole network costs about a max-pool per layer
    instead of a backward per module. Equal to the structural probe (receptive_field) wherever the forward
    uses operations _Hulls knows; a module reached through any other operation gets the probe's fields instead."""
    copy = _structural_copy(model)
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
    """Nearest neighbours move positions; any other interpolation mixes neighbours: unknown here."""
    out = F.interpolate(x, size, scale_factor, mode, *args, **kwargs)
    return out if mode in ("nearest", "nearest-exact") else _unknown(out)


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
