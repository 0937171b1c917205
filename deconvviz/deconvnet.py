"""The deconvnet: one forward pass recording switches, then selected activations projected to pixel space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import ImageError, LayerError, UnsupportedModelError
from .forward import ForwardRecord, Switches, forward_chain
from .layers import Step, chain_of, layer_names, receptive_fields, resolve, step_index
from .rectified import layer_output, project_autograd
from .reverse import WINDOWED_UNPOOLING, Stage, croppable, get_unpool, reverse_chain, reverse_cropped
from .rules import Rule, get_rule
from .selection import Selection, seeds, select
from .targets import Box, choose


@dataclass
class Projection:
    """Result of `Deconvnet.project`. images: (N, K, C, H, W), one reconstruction per image and selection."""

    images: Tensor
    selections: Selection
    switches: dict[str, Switches]
    stages: list[Stage] = field(default_factory=list)  # filled with keep_stages=True on chain models
    layer: str = ""  # module path the projection started from
    rule: str = "deconvnet"  # how ReLUs passed the signal back (rules.py)
    unpool: str = "switches"  # how max-pools were undone (reverse.UNPOOLS)


class Deconvnet:
    """Zeiler-Fergus deconvnet attached to a model; the model is never modified.

    Chain models (torchvision VGG and AlexNet, nn.Sequential of standard layers) are mirrored
    step by step (unpool, rectify, filter), with stages. Any other nn.Module is projected through
    autograd with the deconvnet ReLU rule; what has no such rule is refused.
    """

    def __init__(self, model: nn.Module, *, rule: str | Rule = "deconvnet", unpool: str = "switches",
                 max_batch_bytes: int = 1 << 30, crop: bool | None = None) -> None:  # fmt: skip
        """rule: how ReLUs pass the signal back (deconvnet, guided, gradient, linear; rules.py); unpool: how
        max-pools are undone (switches, nearest, bilinear, fixed; reverse.UNPOOLS); max_batch_bytes bounds
        the memory of one chunk of selections; crop: run mode-max projections on receptive-field windows
        (None: when the window is smaller than half the image; same result)."""
        self.model = model
        self.rule = get_rule(rule)
        self.unpool = get_unpool(unpool)
        self.max_batch_bytes = max_batch_bytes
        self.crop = crop

    @property
    def steps(self) -> list[Step] | None:
        """The model as a chain of mirrored steps (None: projected through autograd), read anew on every
        use, so a model changed after the Deconvnet was made is projected as it is now."""
        return chain_of(self.model)

    def layers(self) -> list[str]:
        """Every layer name `project` accepts, in forward order."""
        return layer_names(self.model)

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ImageError(f"expected a preprocessed batch (N, C, H, W), got {shape}; use deconvviz.to_batch")
        if x.is_inference():  # made under torch.inference_mode(): a normal copy, so autograd steps can use it
            x = x.clone()
        p = next(self.model.parameters(), None)
        return x.to(self.device, p.dtype if p is not None and p.is_floating_point() else x.dtype)

    def forward(self, x: Tensor) -> ForwardRecord:
        """One forward pass through the whole chain, recording every max-pool's switches.

        Returns the output, each step's input shape and `switches` (module path -> Switches)."""
        steps = self.steps
        if steps is None:
            raise UnsupportedModelError(
                f"{type(self.model).__name__} is not a chain of layers; its switches come with "
                "project(...).switches, recorded by hooks on its nn.MaxPool2d modules"
            )
        with torch.inference_mode(False):
            return forward_chain(steps, self._input(x), len(steps) - 1)

    def _chunk(self, per_selection: int) -> int:
        return max(1, self.max_batch_bytes // max(per_selection, 1))

    def project(self, x: Tensor, layer: str, channels: Sequence[int] | None = None, mode: str = "max",
                top: int = 9, keep_stages: bool = False, together: bool = False,
                positions: Tensor | None = None, rule: str | Rule | None = None, values: Tensor | None = None,
                *, region: Box | None = None, at: Sequence[float] | None = None, exclude: Sequence[Box] = (),
                cls: int | None = None, unpool: str | None = None) -> Projection:  # fmt: skip
        """Project selected activations of `layer` to input space. x: (N, C, H, W) -> images (N, K, C, H, W).

        channels: feature maps to project (None: the `top` strongest for each image); mode "max" keeps
        only each map's strongest activation, "map" the whole map. together: project the K selections
        of each image jointly, as one seed (images then (N, 1, C, H, W)). positions (N, K): in mode max,
        the flat positions to keep instead of each map's strongest activation, and values (N, K) the seeds
        to put there (default: the activations). rule: how ReLUs pass the signal back, deconvnet, guided or
        gradient (None: the Deconvnet's own).
        region (x0, y0, x1, y1; input pixels, or fractions as floats) or at (x, y): the maps strongest, and
        in each the strongest position, among the positions whose receptive-field centre lies inside
        (less those inside `exclude` boxes), or at the position nearest the point (see deconvviz.targets).
        cls: the `top` maps contributing most to class `cls`'s score (gradient times activation).
        unpool: how max-pools are undone, switches, nearest, bilinear or fixed (None: the Deconvnet's own).
        """
        rule = get_rule(self.rule if rule is None else rule)
        unpool = get_unpool(self.unpool if unpool is None else unpool)
        with torch.inference_mode(False):  # also inside inference_mode: some reverse steps use autograd
            if region is not None or at is not None or cls is not None or exclude:
                channels, positions = choose(self.model, self._input(x), layer, channels, mode, top, region=region,
                                             at=at, exclude=exclude, cls=cls, positions=positions)  # fmt: skip
            return self._project(x, layer, channels, mode, top, keep_stages, together, positions, rule, values, unpool)

    def _project(
        self, x, layer, channels, mode, top, keep_stages, together, positions, rule, values, unpool
    ) -> Projection:
        """The one driver of both paths: resolve, forward, select, then the reverse pass in chunks of seeds."""
        x, steps = self._input(x), self.steps
        layer = str(layer) if isinstance(layer, int) and not isinstance(layer, bool) else layer
        if not isinstance(layer, str):
            raise LayerError(f"layer must be a name such as 'conv5_3' or a module path, got {type(layer).__name__}")
        name = resolve(self.model, steps, layer)
        path = _AutogradPath(self.model, name, rule, unpool) if steps is None else _ChainPath(steps, name, rule, unpool)
        act = path.forward(x)
        sel = select(act, layer, channels, mode, top, positions, values)
        if not (keep_stages or together) and self.crop is not False and path.windows_possible():
            return self._project_windows(x, path, sel)
        n, k = sel.channels.shape
        parts, stage_parts = [], []
        with torch.no_grad():
            for rows in torch.arange(n if together else n * k, device=x.device).split(self._chunk(path.row_bytes)):
                seed, img = _seeds(act, sel, rows, together)
                y, stages = path.backward(seed, img, keep_stages=keep_stages)
                parts.append(y)
                stage_parts.append(stages)
        k = 1 if together else k
        stages = [
            Stage(s.name, s.kind, s.step, torch.cat([part[j].tensor for part in stage_parts]).unflatten(0, (n, k)))
            for j, s in enumerate(stage_parts[0])
        ]
        return Projection(torch.cat(parts).unflatten(0, (n, k)), sel, path.switches, stages, name, rule.name, unpool)

    def _project_windows(self, x: Tensor, path: _ChainPath, sel: Selection) -> Projection:
        """Selections whose seeds are concentrated (mode max: one activation; mode map: a map whose nonzero
        values fill a small box) are projected on windows that follow the receptive field of that box;
        the others take the full-plane pass. Same numbers either way, up to float rounding."""
        n, k = sel.channels.shape
        record, steps = path.record, path.steps
        act, (h, w) = record.activation, record.shapes[0][-2:]
        img, chan = torch.arange(n * k, device=x.device) // k, sel.channels.reshape(-1)
        box = _seed_boxes(act, sel, img, chan)  # (N*K, 4): top, left, height, width at the layer
        rows, cols = receptive_fields(steps, len(steps) - 1)
        reach = ((box[:, 2] - 1) * rows.stride + rows.size).clamp(max=h) * (
            (box[:, 3] - 1) * cols.stride + cols.size
        ).clamp(max=w)
        windowed = torch.ones_like(reach, dtype=torch.bool) if self.crop else reach < 0.5 * h * w
        out = x.new_zeros(n * k, x.shape[1], h, w)
        with torch.no_grad():
            full = torch.nonzero(~windowed).flatten()
            for r in full.split(self._chunk(path.row_bytes)) if len(full) else []:
                out[r] = path.backward(seeds(act, sel, r), r // k, keep_stages=False)[0]
            small = torch.nonzero(windowed).flatten()
            small = small[reach[small].argsort(stable=True)]  # similar windows share a chunk
            if len(small):
                per_sel = (
                    int(reach[small].max()) * max(s[1] for s in record.shapes[: len(steps)]) * x.element_size() * 16
                )
                for r in small.split(self._chunk(per_sel)):
                    hh, ww = int(box[r, 2].max()), int(box[r, 3].max())
                    y = act.new_zeros(len(r), act.shape[1], hh, ww)
                    for j, (i, c, (t, left, bh, bw)) in enumerate(zip(img[r].tolist(), chan[r].tolist(),
                                                                      box[r].tolist(), strict=True)):  # fmt: skip
                        if sel.mode == "max":
                            y[j, c, 0, 0] = sel.values.reshape(-1)[r[j]]
                        else:
                            y[j, c, :bh, :bw] = act[i, c, t : t + bh, left : left + bw]
                    rows = (steps, record, y, box[r, :2], img[r], path.rule, path.flipped_filters)
                    out[r] = reverse_cropped(*rows, unpooling=path.unpool)
        return Projection(out.unflatten(0, (n, k)), sel, record.switches, [], path.name, path.rule.name, path.unpool)

    def receptive_field_boxes(self, out: Projection) -> Tensor | None:
        """(N, K, 4) input box (top, bottom, left, right; half-open) of each selection's strongest
        activation, or None where the layer mixes all positions (classifier) or the model is no chain."""
        steps = self.steps
        if steps is None or len(out.selections.shape) != 3:
            return None
        upto = step_index(steps, out.layer)
        try:
            rows, cols = receptive_fields(steps, upto)
        except LayerError:
            return None
        h, w = out.images.shape[-2:]
        rc = out.selections.rows_cols.tolist()
        boxes = [[(*rows.span(r, h), *cols.span(c, w)) for r, c in per_image] for per_image in rc]
        return torch.tensor(boxes, dtype=torch.long)


class _ChainPath:
    """A chain mirrored step by step: the forward records switches (and ReLU masks if the rule needs them),
    the reverse pass unpools (by `unpool`), passes ReLUs by the rule and filters with the transposed filters."""

    def __init__(self, steps: list[Step], name: str, rule: Rule, unpool: str = "switches") -> None:
        self.steps, self.name, self.rule, self.unpool = steps[: step_index(steps, name) + 1], name, rule, unpool
        self.flipped_filters: dict = {}  # conv -> its transpose as a forward conv's filters, made once per call

    def forward(self, x: Tensor) -> Tensor:
        self.record = forward_chain(self.steps, x, len(self.steps) - 1, keep_masks=self.rule.needs_mask)
        biggest = max(torch.Size(s[1:]).numel() for s in self.record.shapes)
        self.row_bytes = biggest * x.element_size() * 4  # one seed's widest signal, with scratch
        return self.record.activation

    @property
    def switches(self) -> dict[str, Switches]:
        return self.record.switches

    def windows_possible(self) -> bool:
        return self.record.activation.dim() == 4 and croppable(self.steps) and self.unpool in WINDOWED_UNPOOLING

    def backward(self, seed: Tensor, img: Tensor, *, keep_stages: bool) -> tuple[Tensor, list[Stage]]:
        flips = self.flipped_filters
        return reverse_chain(self.steps, self.record, seed, img, self.rule, keep_stages, flips, self.unpool)


class _AutogradPath:
    """Any other model: one recorded forward with the rule's ReLU backward (and the max-pools' by `unpool`),
    then autograd for the seeds."""

    def __init__(self, model: nn.Module, name: str, rule: Rule, unpool: str = "switches") -> None:
        self.model, self.name, self.rule, self.unpool = model, name, rule, unpool

    def forward(self, x: Tensor) -> Tensor:
        self.leaf, self.out, self.record = layer_output(self.model, x, self.name, self.rule, self.unpool)
        self.row_bytes = x.numel() * x.element_size() * 16
        return self.out.detach()

    @property
    def switches(self) -> dict[str, Switches]:
        return self.record["switches"]

    def windows_possible(self) -> bool:
        return False

    def backward(self, seed: Tensor, img: Tensor, *, keep_stages: bool) -> tuple[Tensor, list[Stage]]:
        """seed (B, ...) for image img (B,) -> (B, C, H, W); no stages (the model is one piece)."""
        rows = torch.arange(len(img), device=img.device)
        full = seed.new_zeros(len(img), *self.out.shape)
        full[rows, img] = seed
        return project_autograd(self.leaf, self.out, full)[rows, img], []


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
