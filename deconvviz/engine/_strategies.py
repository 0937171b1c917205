"""The three ways to run a projection's seeds back to the input, once a path (`_paths`) has run the forward pass.

- `FullPlane`: every seed on the whole plane, in chunks; the only one that keeps stages or joins the selections.
- `ChainWindows`: on a chain of local steps, each seed on a window that follows its receptive field down.
- `FieldWindows`: on any local network, mode max, each selection's forward and backward on a crop of the input.

All three have one shape: `run(x, path, sel)` with the batch x (N, C, H, W), the path after its forward and the
selection, returns a `Reconstruction` (images (N, K, C, H, W), stages), or None where it cannot run this
projection (then the next strategy does). The windows give the full plane's numbers up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from ._paths import AutogradPath, ChainPath, Path
from .fields import Fields
from .layers import receptive_fields
from .rectified import layer_output
from .reverse import Stage, reverse_cropped
from .selection import Selection, seeds

# Memory of one selection on windows, for sizing chunks against Deconvnet(max_batch_bytes=...), in multiples of a
# size known before the pass (allowances: a chunk a little too big only costs memory, never numbers):
# - a chain's window: the largest window's area at the input times the most channels of any step, sixteen times:
#   the window at each step is no larger than at the input, and a step holds its incoming window, its output,
#   the ReLU mask's window, the unpooling's scatter target and the padding mask at once, with room to spare;
WINDOW_SIGNALS_PER_SEED = 16
# - a crop of the input (any network): the crop's input bytes, sixty-four times: the crop runs forward to the
#   layer and back through autograd, which holds every activation on the way (wider than the input's few
#   channels) and their gradients.
CROP_INPUTS_PER_SEED = 64


@dataclass
class Reconstruction:
    """What a strategy returns: images (N, K, C, H, W) in input space (K = 1 when the selections went together),
    and the stages (`Stage`, each (N, K, C, h, w)), from the layer down; empty unless asked for."""

    images: Tensor
    stages: list[Stage] = field(default_factory=list)


class Strategy(Protocol):
    def run(self, x: Tensor, path: Path, sel: Selection) -> Reconstruction | None: ...


def rows_per_chunk(max_batch_bytes: int, per_row: int) -> int:
    """How many selections (rows) of `per_row` bytes each one chunk holds under `max_batch_bytes` (at least one)."""
    return max(1, max_batch_bytes // max(per_row, 1))


@dataclass
class FullPlane:
    """Every seed on the whole plane, chunk by chunk. together: the K selections of an image as one seed."""

    max_batch_bytes: int
    keep_stages: bool = False
    together: bool = False

    def run(self, x: Tensor, path: Path, sel: Selection) -> Reconstruction:
        n, k = sel.channels.shape
        parts, stage_parts = [], []
        every = torch.arange(n if self.together else n * k, device=x.device)
        with torch.no_grad():
            for rows in every.split(rows_per_chunk(self.max_batch_bytes, path.row_bytes)):
                seed, img = _seeds(path.maps, sel, rows, self.together)
                y, stages = path.backward(seed, img, keep_stages=self.keep_stages)
                parts.append(y)
                stage_parts.append(stages)
        k = 1 if self.together else k
        stages = [
            Stage(s.name, s.kind, s.step, torch.cat([part[j].tensor for part in stage_parts]).unflatten(0, (n, k)))
            for j, s in enumerate(stage_parts[0])
        ]
        return Reconstruction(torch.cat(parts).unflatten(0, (n, k)), stages)


def _plane_rows(out: Tensor, path: Path, sel: Selection, rows: Tensor, max_batch_bytes: int) -> None:
    """The full-plane pass for some selections (rows of N*K) of a windowed strategy, written into out (N*K, ...)."""
    k = sel.channels.shape[1]
    with torch.no_grad():
        for r in rows.split(rows_per_chunk(max_batch_bytes, path.row_bytes)) if len(rows) else []:
            out[r] = path.backward(seeds(path.maps, sel, r), r // k, keep_stages=False)[0]


@dataclass
class ChainWindows:
    """A chain of local steps (`ChainPath.windows_possible`): selections whose seeds are concentrated (mode max:
    one activation; mode map: a map whose nonzero values fill a small box) are projected on windows that follow
    the receptive field of that box down the chain. every: all selections on windows (Deconvnet(crop=True)), else
    only those whose window covers less than half the image; the others take the full-plane pass."""

    max_batch_bytes: int
    every: bool = False

    def run(self, x: Tensor, path: ChainPath, sel: Selection) -> Reconstruction:
        n, k = sel.channels.shape
        record, steps = path.record, path.steps
        act, (h, w) = path.maps, record.shapes[0][-2:]
        img, chan = torch.arange(n * k, device=x.device) // k, sel.channels.reshape(-1)
        box = _seed_boxes(act, sel, img, chan)  # (N*K, 4): top, left, height, width at the layer
        rows, cols = receptive_fields(steps, len(steps) - 1)
        reach = ((box[:, 2] - 1) * rows.stride + rows.size).clamp(max=h) * (
            (box[:, 3] - 1) * cols.stride + cols.size
        ).clamp(max=w)
        windowed = torch.ones_like(reach, dtype=torch.bool) if self.every else reach < 0.5 * h * w
        out = x.new_zeros(n * k, x.shape[1], h, w)
        _plane_rows(out, path, sel, torch.nonzero(~windowed).flatten(), self.max_batch_bytes)
        small = torch.nonzero(windowed).flatten()
        small = small[reach[small].argsort(stable=True)]  # similar windows share a chunk
        if len(small):
            widest = max(s[1] for s in record.shapes[: len(steps)])  # channels
            per_sel = int(reach[small].max()) * widest * x.element_size() * WINDOW_SIGNALS_PER_SEED
            with torch.no_grad():
                for r in small.split(rows_per_chunk(self.max_batch_bytes, per_sel)):
                    out[r] = self._windows(path, sel, r, box=box, img=img, chan=chan)
        return Reconstruction(out.unflatten(0, (n, k)))

    @staticmethod
    def _windows(path: ChainPath, sel: Selection, r: Tensor, *, box: Tensor, img: Tensor, chan: Tensor) -> Tensor:
        """Selections r (of N*K) seeded on their boxes at the layer and taken down on windows: (B, C, H, W)."""
        act = path.maps
        hh, ww = int(box[r, 2].max()), int(box[r, 3].max())
        y = act.new_zeros(len(r), act.shape[1], hh, ww)
        for j, (i, c, (t, left, bh, bw)) in enumerate(
            zip(img[r].tolist(), chan[r].tolist(), box[r].tolist(), strict=True)
        ):
            if sel.mode == "max":
                y[j, c, 0, 0] = sel.values.reshape(-1)[r[j]]
            else:
                y[j, c, :bh, :bw] = act[i, c, t : t + bh, left : left + bw]
        return reverse_cropped(
            path.steps,
            path.record,
            y,
            origin=box[r, :2],
            img=img[r],
            rule=path.rule,
            flips=path.flipped_filters,
            unpooling=path.unpool,
        )


@dataclass
class FieldWindows:
    """Mode max on any network, on windows: each selection's forward and backward run on the crop of the input
    its activation depends on (fields.receptive_field, widened by one layer stride and aligned to it, so the
    crop's grid is the plane's). Inside the activation's cone the crop then gives the same switches and masks.
    A crop whose activation differs from the full plane's (a layer that is not translation-equivariant, such
    as an adaptive pool) takes the full-plane pass. All crops share one size, so one batched forward and backward
    run them. fields(path, x): the layer's receptive fields for inputs like x (None: not known); the first call on
    a layer and input size probes them (fields.py), which costs more than one full-plane backward. `run` gives
    None (no windows) where the fields are not known or not on a grid."""

    max_batch_bytes: int
    fields: Callable[[AutogradPath, Tensor], Fields | None]

    def run(self, x: Tensor, path: AutogradPath, sel: Selection) -> Reconstruction | None:
        if len(sel.shape) != 3 or path.layout.kind != "planes":
            return None
        fields = self.fields(path, x)
        if fields is None:
            return None
        strides = [_grid_stride(f) for f in (fields.rows, fields.cols)]
        if None in strides:
            return None
        (h, w), (s_r, s_c) = x.shape[-2:], strides
        n, k = sel.channels.shape
        rc = sel.rows_cols.reshape(-1, 2).cpu()
        crops = torch.stack(
            [*_field_crops(fields.rows, rc[:, 0], s_r, h), *_field_crops(fields.cols, rc[:, 1], s_c, w)], 1
        )
        top, bottom, left, right = crops.T
        area = (bottom - top) * (right - left)
        img, chan = torch.arange(n * k) // k, sel.channels.reshape(-1).cpu()
        values = sel.values.reshape(-1)
        out = x.new_zeros(n * k, *x.shape[1:])
        full = []
        groups: dict[tuple[int, int], list[int]] = {}  # every selection (as on chains with crop=True), by crop size
        for r in range(n * k):
            groups.setdefault((int(bottom[r] - top[r]), int(right[r] - left[r])), []).append(r)
        for rows in groups.values():
            per_sel = int(area[rows[0]]) * x.shape[1] * x.element_size() * CROP_INPUTS_PER_SEED
            for part in torch.tensor(rows).split(rows_per_chunk(self.max_batch_bytes, per_sel)):
                t, b, lft, rgt = crops[part].T.tolist()
                batch = torch.stack(
                    [
                        x[i, :, t0:b0, l0:r0]
                        for i, t0, b0, l0, r0 in zip(img[part].tolist(), t, b, lft, rgt, strict=True)
                    ]
                )
                cpu = batch.device.type == "cpu"  # oneDNN: channels-last convolutions and pools are faster there
                again = {"unpool": path.unpool, "stop": True, "switches": False, "channels_last": cpu}
                leaf, act, _ = layer_output(path.model, batch, path.name, rule=path.rule, **again)
                at_r, at_c = rc[part, 0] - crops[part, 0] // s_r, rc[part, 1] - crops[part, 2] // s_c
                inside = (at_r < act.shape[-2]) & (at_c < act.shape[-1])
                b_idx = torch.arange(len(part))
                got = act.detach()[
                    b_idx, chan[part], at_r.clamp(max=act.shape[-2] - 1), at_c.clamp(max=act.shape[-1] - 1)
                ]
                want = path.out.detach()[img[part], chan[part], rc[part, 0], rc[part, 1]]
                same = inside.to(got.device) & ((got - want).abs() <= 1e-5 * want.abs().clamp_min(1e-30))
                seed = torch.zeros_like(act)
                ok = b_idx[same.cpu()]
                seed[ok, chan[part][ok], at_r[ok], at_c[ok]] = values[part][ok.to(values.device)]
                (g,) = torch.autograd.grad(act, leaf, seed)
                for j, row in enumerate(part.tolist()):
                    if bool(same[j]):
                        out[row, :, t[j] : b[j], lft[j] : rgt[j]] = g[j]
                    else:
                        full.append(row)
        _plane_rows(out, path, sel, torch.tensor(sorted(full), dtype=torch.long, device=x.device), self.max_batch_bytes)
        return Reconstruction(out.unflatten(0, (n, k)))


def _field_crops(spans: Tensor, at: Tensor, stride: int, n: int) -> tuple[Tensor, Tensor]:
    """Along one axis of n input pixels, the range [lo, hi) of each unit's crop (positions `at` of a layer whose
    fields are `spans` (m, 2), on a grid of `stride`): its field widened by one stride and aligned to it, then
    grown to one common size for all units, inward at the image's edge, so that one batched pass runs every crop.
    A crop that would lose its alignment there (a side that is not a multiple of the stride) keeps its own size."""
    lo = ((spans[at, 0] - stride) // stride * stride).clamp_min(0)
    hi = (spans[at, 1] + stride).clamp(max=n)
    size = min(n, -(-int((hi - lo).max()) // stride) * stride)
    common = lo.clamp(max=(n - size) // stride * stride)
    fits = common + size >= hi
    return torch.where(fits, common, lo), torch.where(fits, common + size, hi)


def _grid_stride(spans: Tensor) -> int | None:
    """The whole-number step between consecutive fields' starts away from the edges (1 for a single position);
    None where the fields do not follow a regular grid."""
    lo = spans[:, 0]
    steps = (lo[1:] - lo[:-1])[lo[:-1] > 0]
    if len(spans) == 1:
        return 1
    if len(steps) == 0:
        return None
    step = int(steps.max())
    return step if step > 0 and bool((steps == step).all()) else None


def _seed_boxes(act: Tensor, sel: Selection, img: Tensor, chan: Tensor) -> Tensor:
    """(B, 4) top, left, height, width of each selection's seed at the layer: the strongest activation
    (mode max), or the bounding box of the map's nonzero values (mode map; an all-zero map: 1x1 at 0)."""
    if sel.mode == "max":
        rc = sel.rows_cols.reshape(-1, 2)
        return torch.cat([rc, torch.ones_like(rc)], dim=1)
    nz = act[img, chan] != 0  # (B, H, W)
    out = []
    for m in (nz.any(2), nz.any(1)):  # rows, then columns
        first = m.int().argmax(1)
        last = m.shape[1] - 1 - m.flip(1).int().argmax(1)
        out.append((first, (last - first + 1).where(m.any(1), torch.ones_like(first))))
    (top, hh), (left, ww) = out
    return torch.stack([top, left, hh, ww], dim=1)


def _seeds(act: Tensor, sel: Selection, rows: Tensor, together: bool) -> tuple[Tensor, Tensor]:
    """Seeds for selection rows (of N*K), or for images (rows of N) with all K selections summed."""
    if not together:
        return seeds(act, sel, rows), rows // sel.channels.shape[1]
    k = sel.channels.shape[1]
    per_sel = seeds(act, sel, (rows[:, None] * k + torch.arange(k, device=rows.device)).flatten())
    return per_sel.unflatten(0, (len(rows), k)).sum(1), rows
