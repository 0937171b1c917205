"""Which activations to project: the strongest one of a feature map (mode max) or the whole map (mode map)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import DeconvvizError, SelectionError
from .layout import Layout

MODES = ("max", "map")


@dataclass
class Selection:
    """K selections per image. channels, values, positions: (N, K); positions index the flattened map.

    shape is the per-image shape of the feature maps (C, H, W), whatever the layer's own layout: for a token layer
    (N, P + H*W, C) or a channels-last one (N, H, W, C), the patch grid's; layout says how the maps lie in the
    layer's output (deconvviz.engine.layout)."""

    layer: str
    mode: str
    channels: Tensor
    values: Tensor  # the map's strongest activation (what mode max keeps)
    positions: Tensor
    shape: tuple[int, ...]  # per-image feature maps' shape (C, *spatial)
    layout: Layout = field(default_factory=Layout)  # how the maps lie in the layer's output

    @property
    def rows_cols(self) -> Tensor:
        """(N, K, 2) row and column of each map's strongest activation (spatial layers only)."""
        w = self.shape[-1] if len(self.shape) == 3 else 1
        return torch.stack([self.positions // w, self.positions % w], dim=-1)


def select(
    activation: Tensor,
    layer: str,
    *,
    channels: Sequence[int] | None = None,
    mode: str = "max",
    top: int = 9,
    positions: Tensor | None = None,
    values: Tensor | None = None,
    layout: Layout | None = None,
) -> Selection:
    """Pick channels (given, or the `top` strongest per image) of feature maps (N, C, ...) (layout: how they lie
    in the layer's output, recorded in the Selection; the maps are given as maps, Layout.maps).

    positions (N, K): flat positions to keep in mode max instead of each map's strongest (e.g. recorded
    by a dataset scan, so a near-tie cannot move the projected activation). values (N, K), with positions:
    the seed values to put there instead of the activations (e.g. the same unit seeded alike in two networks)."""
    if mode not in MODES:
        raise SelectionError(f"unknown mode '{mode}'; use 'max' (strongest activation) or 'map' (whole feature map)")
    n, c = activation.shape[:2]
    peak, where = activation.reshape(n, c, -1).max(dim=2)  # (N, C)
    if not bool(torch.isfinite(peak).all()):
        bad = int((~torch.isfinite(peak)).any(1).nonzero()[0, 0])
        raise DeconvvizError(
            f"layer '{layer}' has NaN or infinite activations (image {bad}); check the weights and the input"
        )
    if channels is None:
        chans = peak.topk(min(_check_top(top), c), dim=1).indices
    else:
        chans = _channels(channels, layer, n, c).to(activation.device)
    where, given = where.gather(1, chans), values
    if given is not None and positions is None:
        raise SelectionError("values need positions: they are the seeds put at those positions (mode max)")
    if positions is not None:
        where = torch.as_tensor(positions, device=activation.device)
        if where.shape != chans.shape or where.is_floating_point():
            raise SelectionError(
                f"positions must be whole numbers of shape (N, K) = {tuple(chans.shape)}, one per "
                f"image and feature map; got {tuple(where.shape)}"
            )
        where = where.long()
        if mode != "max" or bool(((where < 0) | (where >= activation[0, 0].numel())).any()):
            raise SelectionError(
                f"positions must index the {tuple(activation.shape[2:])} maps of '{layer}' in mode max"
            )
        values = activation.reshape(n, c, -1)[torch.arange(n, device=chans.device)[:, None], chans, where]
        if given is not None:
            values = torch.as_tensor(given, dtype=activation.dtype, device=activation.device)
            if values.shape != chans.shape or not bool(torch.isfinite(values).all()):
                raise SelectionError(f"values must be finite numbers of shape (N, K) = {tuple(chans.shape)}")
    else:
        values = peak.gather(1, chans)
    shape, layout = tuple(activation.shape[1:]), layout or Layout()
    return Selection(layer, mode=mode, channels=chans, values=values, positions=where, shape=shape, layout=layout)


def _channels(channels, layer: str, n: int, c: int) -> Tensor:
    """(N, K) channels: the same list for every image, or an (N, K) tensor of each image's own; checked."""
    per_image = isinstance(channels, Tensor) and channels.dim() == 2 and channels.shape[0] == n
    chans = channels if per_image else _channel_list(channels, layer)
    if per_image and (chans.is_floating_point() or chans.dtype == torch.bool):
        raise SelectionError(f"channels for layer '{layer}' must be whole numbers, got {chans.dtype}")
    bad = [int(i) for i in chans.flatten() if not 0 <= i < c]
    if bad or chans.numel() == 0:
        what = f"channel {bad[0]} is out of range" if bad else "no channels given"
        raise SelectionError(f"{what} for layer '{layer}' with {c} channels; use 0..{c - 1}")
    return chans.long() if per_image else chans.expand(n, -1)


def _check_top(top) -> int:
    if not isinstance(top, numbers.Integral) or isinstance(top, bool) or top < 1:
        raise SelectionError(
            f"top (how many feature maps) must be a whole number of at least 1, got {top!r}", about="top"
        )
    return int(top)


def strongest_channels(scores: Tensor, top: int) -> Tensor:
    """The `top` channels with the largest score per image (ties: the lower channel). scores (N, C) -> (N, K)."""
    k = min(_check_top(top), scores.shape[1])
    return scores.double().sort(dim=1, descending=True, stable=True).indices[:, :k]


def strongest_in_region(
    activation: Tensor, mask: Tensor, channels=None, top: int = 9, layer: str = ""
) -> tuple[Tensor, Tensor]:
    """Channels and, in each, the strongest position among those `mask` (H, W) keeps. activation (N, C, H, W).

    channels None: the `top` maps whose strongest activation inside the mask is largest. Returns channels and
    flat positions, both (N, K); maps with equal peaks: the lower channel first."""
    n, c = activation.shape[:2]
    inside = mask.to(activation.device).flatten().nonzero().flatten()  # (P,) flat positions in the region
    peak, where = activation.flatten(2)[:, :, inside].max(dim=2)  # (N, C)
    chans = strongest_channels(peak, top) if channels is None else _channels(channels, layer, n, c)
    return chans, inside[where.gather(1, chans.to(where.device))]


def checked_channels(layer: str, *, count: int, channels: Sequence[int] | Tensor | None = None, top: int = 9):
    """The channels asked for as a (K,) long tensor, or None for the `top` strongest, checked against a layer
    of `count` channels. Needs no activation, so a bad request is refused before any weights are loaded."""
    if channels is None:
        _check_top(top)
        return None
    return _channels(channels, layer, 1, count)[0]


def _channel_list(channels, layer: str) -> Tensor:
    """channels as a (K,) long tensor; anything but whole numbers is refused, never rounded."""
    try:
        chans = torch.as_tensor(channels if isinstance(channels, Tensor) else list(channels)).flatten()
    except (TypeError, ValueError, RuntimeError):
        chans = None
    if isinstance(channels, str) or chans is None or chans.is_floating_point() or chans.dtype == torch.bool:
        raise SelectionError(
            f"channels for layer '{layer}' must be a list of whole numbers such as [12, 40], got {channels!r}"
        )
    return chans.long()


def seeds(activation: Tensor, sel: Selection, rows: Tensor) -> Tensor:
    """The layer with only the selected activations kept, the rest zeroed. rows index N*K; (B, C, ...)."""
    n_img, k = sel.channels.shape
    img, kk = rows // k, rows % k
    chan = sel.channels[img, kk]
    out = activation.new_zeros(len(rows), *sel.shape)
    flat, src = out.view(len(rows), sel.shape[0], -1), activation.reshape(n_img, sel.shape[0], -1)
    b = torch.arange(len(rows), device=rows.device)
    if sel.mode == "max":
        flat[b, chan, sel.positions[img, kk]] = sel.values[img, kk]
    else:
        flat[b, chan] = src[img, chan]
    return out
