"""The deconvnet: one forward pass recording switches, then selected activations projected to pixel space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import DeconvvizError, ImageError, LayerError, SelectionError, UnsupportedModelError
from .forward import ForwardRecord, Switches, forward_chain
from .layers import (
    Step,
    chain_of,
    check_stage_modules,
    layer_names,
    receptive_fields,
    resolve,
    stage_modules,
    step_index,
)
from .layout import Layout, layouts
from .rectified import layer_output, project_autograd
from .reverse import WINDOWED_UNPOOLING, Stage, croppable, get_unpool, reverse_chain, reverse_cropped
from .rules import Rule, get_rule
from .selection import Selection, seeds, select
from .targets import Box, Point, choose


@dataclass
class Projection:
    """Result of `Deconvnet.project`. images: (N, K, C, H, W), one reconstruction per image and selection."""

    images: Tensor
    selections: Selection
    switches: dict[str, Switches]
    stages: list[Stage] = field(default_factory=list)  # filled with keep_stages=True, from the layer down
    layer: str = ""  # module path the projection started from
    rule: str = "deconvnet"  # how activations passed the signal back (rules.py)
    conventions: dict[str, str] = field(default_factory=dict)  # module path -> conventions used (CONVENTIONS)
    unpool: str = "switches"  # how max-pools were undone (reverse.UNPOOLS)


class Deconvnet:
    """Zeiler-Fergus deconvnet attached to a model; the model is never modified.

    Chain models (torchvision VGG and AlexNet, nn.Sequential of standard layers) are mirrored
    step by step (unpool, rectify, filter), with stages. Any other nn.Module is projected through
    autograd with the rule at every activation and the named conventions at gates and normalizations
    (rectified.CONVENTIONS); what has no rule is refused.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rule: str | Rule = "deconvnet",
        unpool: str = "switches",
        max_batch_bytes: int = 1 << 30,
        crop: bool | None = None,
    ) -> None:
        """rule: how ReLUs pass the signal back (deconvnet, guided, gradient, linear; rules.py); unpool: how
        max-pools are undone (switches, nearest, bilinear, fixed; reverse.UNPOOLS); max_batch_bytes bounds
        the memory of one chunk of selections; crop: run mode-max projections on receptive-field windows
        (None: on chains, when the window is smaller than half the image; other models: only with crop=True).
        Same result either way."""
        self.model = model
        self.rule = get_rule(rule)
        self.unpool = get_unpool(unpool)
        self.max_batch_bytes = max_batch_bytes
        self.crop = crop
        self._fields: dict = {}  # receptive fields of the last model seen, by (layer, input shape): structural

    def layouts(self, x: Tensor) -> dict[str, Layout]:
        """Module path -> how its output lays out its feature maps (layout.Layout), for inputs shaped like x
        (N, C, H, W); decided once per model and input size (layout.layouts)."""
        return layouts(self.model, tuple(x.shape[-2:]), channels=x.shape[1])

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

    def project(
        self,
        x: Tensor,
        layer: str,
        *,
        channels: Sequence[int] | None = None,
        mode: str = "max",
        top: int = 9,
        keep_stages: bool = False,
        together: bool = False,
        positions: Tensor | None = None,
        rule: str | Rule | None = None,
        values: Tensor | None = None,
        region: Box | None = None,
        at: Point | None = None,
        exclude: Sequence[Box] = (),
        cls: int | None = None,
        stages: Sequence[str] | None = None,
        unpool: str | None = None,
        token: str | int | None = None,
    ) -> Projection:
        """Project selected activations of `layer` to input space. x: (N, C, H, W) -> images (N, K, C, H, W).

        channels: feature maps to project (None: the `top` strongest for each image); mode "max" keeps
        only each map's strongest activation, "map" the whole map. together: project the K selections
        of each image jointly, as one seed (images then (N, 1, C, H, W)). positions (N, K): in mode max,
        the flat positions to keep instead of each map's strongest activation, and values (N, K) the seeds
        to put there (default: the activations). rule: how ReLUs pass the signal back, deconvnet, guided or
        gradient (None: the Deconvnet's own).
        region (a Box: Box.pixels or Box.fractions) or at (a Point): the maps strongest, and
        in each the strongest position, among the positions whose receptive-field centre lies inside
        (less those inside `exclude` boxes), or at the position nearest the point (see deconvviz.engine.targets).
        cls: the `top` maps contributing most to class `cls`'s score (gradient times activation).
        keep_stages: also return the reverse signal at stage boundaries, from the layer down to the input (chains:
        after each block of reverse steps and each unpooling; any other model: the signal arriving at the output
        of each module in `stages`, default `layers.stage_modules`, and at each max-pool's input, then the input).
        stages: module paths to use as boundaries instead (a chain given them is projected through autograd).
        unpool: how max-pools are undone, switches, nearest, bilinear or fixed (None: the Deconvnet's own).
        token: on a token layer (ViT, DeiT: (N, P + H*W, C)), one prefix token selected alone, by name ("cls",
        "dist", "reg0") or index 0..P-1; its maps are then 1x1. Without it a token layer's map c is
        tokens[:, P:, c] on the patch grid, and a channels-last layer's (Swin: (N, H, W, C)) map c is out[..., c]:
        selections and positions are on the grid (deconvviz.engine.layout).
        """
        rule = get_rule(self.rule if rule is None else rule)
        unpool = get_unpool(self.unpool if unpool is None else unpool)
        with torch.inference_mode(False):  # also inside inference_mode: some reverse steps use autograd
            layout = self._layout(x, layer, token)
            if region is not None or at is not None or cls is not None or exclude:
                if token is not None and (region is not None or at is not None):
                    raise SelectionError("a region or point chooses grid positions, and a prefix token has none")
                channels, positions = choose(
                    self.model,
                    self._input(x),
                    layer,
                    channels=channels,
                    mode=mode,
                    top=top,
                    region=region,
                    at=at,
                    exclude=exclude,
                    cls=cls,
                    positions=positions,
                    layout=layout,
                )
            boundaries = None if stages is None else check_stage_modules(self.model, list(stages))
            return self._project(
                x,
                layer,
                channels=channels,
                mode=mode,
                top=top,
                keep_stages=keep_stages,
                together=together,
                positions=positions,
                rule=rule,
                values=values,
                unpool=unpool,
                boundaries=boundaries,
                layout=layout,
            )

    def _layout(self, x, layer, token) -> Layout | None:
        """The layout of `layer`'s output (planes on a chain), with a prefix token selected alone if asked."""
        x = self._input(x)
        steps = self.steps
        name = resolve(self.model, steps, str(layer)) if isinstance(layer, (str, int)) else layer
        layout = Layout() if steps is not None or not isinstance(name, str) else self.layouts(x).get(name)
        return layout if token is None else (layout or Layout()).for_token(token, str(layer))

    def _project(
        self,
        x,
        layer,
        channels,
        mode,
        top,
        keep_stages,
        together,
        positions,
        rule,
        values,
        *,
        unpool: str = "switches",
        boundaries=None,
        layout: Layout | None = None,
    ) -> Projection:
        """The one driver of both paths: resolve, forward, select, then the reverse pass in chunks of seeds."""
        x, steps = self._input(x), self.steps if boundaries is None else None
        layer = str(layer) if isinstance(layer, int) and not isinstance(layer, bool) else layer
        if not isinstance(layer, str):
            raise LayerError(f"layer must be a name such as 'conv5_3' or a module path, got {type(layer).__name__}")
        name = resolve(self.model, steps, layer)
        if steps is None:
            kept = (stage_modules(self.model) if boundaries is None else boundaries) if keep_stages else []
            known = self.layouts(x)
            path = _AutogradPath(self.model, name, rule, kept, unpool=unpool, layouts=known)
            path.layout = layout if layout is not None else known.get(name)
        else:
            path = _ChainPath(steps, name, rule, unpool)
            if layout is not None and layout.kind != "planes":
                raise SelectionError(f"layer '{layer}' of a chain has no tokens")
        act = path.forward(x)
        chosen = {"channels": channels, "positions": positions, "values": values}
        sel = select(act, layer, mode=mode, top=top, layout=path.layout, **chosen)
        if not (keep_stages or together) and self.crop is not False and path.windows_possible():
            return self._project_windows(x, path, sel)
        windows_ok = unpool in WINDOWED_UNPOOLING
        if steps is None and not (keep_stages or together) and self.crop and sel.mode == "max" and windows_ok:
            windowed = self._project_field_windows(x, path, sel)
            if windowed is not None:
                return windowed
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
        images = torch.cat(parts).unflatten(0, (n, k))
        return Projection(
            images,
            sel,
            path.switches,
            stages=stages,
            layer=name,
            rule=rule.name,
            conventions=path.conventions,
            unpool=unpool,
        )

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
                    for j, (i, c, (t, left, bh, bw)) in enumerate(
                        zip(img[r].tolist(), chan[r].tolist(), box[r].tolist(), strict=True)
                    ):
                        if sel.mode == "max":
                            y[j, c, 0, 0] = sel.values.reshape(-1)[r[j]]
                        else:
                            y[j, c, :bh, :bw] = act[i, c, t : t + bh, left : left + bw]
                    out[r] = reverse_cropped(
                        steps,
                        record,
                        y,
                        origin=box[r, :2],
                        img=img[r],
                        rule=path.rule,
                        flips=path.flipped_filters,
                        unpooling=path.unpool,
                    )
        images = out.unflatten(0, (n, k))
        return Projection(
            images, sel, record.switches, stages=[], layer=path.name, rule=path.rule.name, unpool=path.unpool
        )

    def _project_field_windows(self, x: Tensor, path: _AutogradPath, sel: Selection) -> Projection | None:
        """Mode max on any network, on windows: each selection's forward and backward run on the crop of the input
        its activation depends on (fields.receptive_field, widened by one layer stride and aligned to it, so the
        crop's grid is the plane's). Inside the activation's cone the crop then gives the same switches and masks.
        A crop whose activation differs from the full plane's (a layer that is not translation-equivariant, such
        as an adaptive pool) takes the full-plane pass. All crops share one size, so one batched forward and backward
        run them. Only with crop=True: the first call on a layer and input size probes the receptive fields
        (fields.py), which costs more than one full-plane backward. None: no windows (fields not on a grid, or the
        model cannot be probed)."""
        from .fields import receptive_field

        if len(sel.shape) != 3 or path.layout.kind != "planes":
            return None
        (h, w), key = x.shape[-2:], (path.name, *x.shape[-3:])
        fields = self._fields.get(key) if self._fields.get("model") is self.model else None
        if fields is None:
            try:
                fields = receptive_field(self.model, path.name, input_size=(h, w), channels=x.shape[1])
            except DeconvvizError:
                return None
            self._fields = {"model": self.model, key: fields}
        n, k = sel.channels.shape
        rc = sel.rows_cols.reshape(-1, 2).cpu()
        strides = [_grid_stride(f) for f in (fields.rows, fields.cols)]
        if None in strides:
            return None
        s_r, s_c = strides
        crops = torch.stack(
            [*_field_crops(fields.rows, rc[:, 0], s_r, h), *_field_crops(fields.cols, rc[:, 1], s_c, w)], 1
        )
        top, bottom, left, right = crops.T
        area = (bottom - top) * (right - left)
        windowed = torch.ones_like(area, dtype=torch.bool)  # crop=True: every selection, as on chains
        img, chan = torch.arange(n * k) // k, sel.channels.reshape(-1).cpu()
        values = sel.values.reshape(-1)
        out = x.new_zeros(n * k, *x.shape[1:])
        full = []
        groups: dict[tuple[int, int], list[int]] = {}
        for r in torch.nonzero(windowed).flatten().tolist():
            groups.setdefault((int(bottom[r] - top[r]), int(right[r] - left[r])), []).append(r)
        for rows in groups.values():
            for part in torch.tensor(rows).split(self._chunk(int(area[rows[0]]) * x.shape[1] * x.element_size() * 64)):
                t, b, lft, rgt = crops[part].T.tolist()
                batch = torch.stack(
                    [
                        x[i, :, t0:b0, l0:r0]
                        for i, t0, b0, l0, r0 in zip(img[part].tolist(), t, b, lft, rgt, strict=True)
                    ]
                )
                cpu = batch.device.type == "cpu"  # oneDNN: channels-last convolutions and pools are faster there
                again = {"unpool": path.unpool, "stop": True, "switches": False, "channels_last": cpu}
                leaf, act, _ = layer_output(self.model, batch, path.name, rule=path.rule, **again)
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
        full += torch.nonzero(~windowed).flatten().tolist()
        with torch.no_grad():
            for r in torch.tensor(sorted(full), dtype=torch.long).split(self._chunk(path.row_bytes)) if full else []:
                r = r.to(x.device)
                out[r] = path.backward(seeds(path.layout.maps(path.out.detach()), sel, r), r // k, keep_stages=False)[0]
        images = out.unflatten(0, (n, k))
        return Projection(
            images,
            sel,
            path.switches,
            stages=[],
            layer=path.name,
            rule=path.rule.name,
            conventions=path.conventions,
            unpool=path.unpool,
        )

    def receptive_field_boxes(self, out: Projection) -> Tensor | None:
        """(N, K, 4) input box (top, bottom, left, right; half-open) of each selection's strongest
        activation, or None where the layer mixes all positions (classifier). Any network: its exact fields
        (deconvviz.engine.fields.receptive_field)."""
        if len(out.selections.shape) != 3 or not out.selections.layout.on_grid:
            return None
        if self.steps is None:
            from .fields import receptive_field

            try:
                f = receptive_field(
                    self.model, out.layer, input_size=tuple(out.images.shape[-2:]), channels=out.images.shape[-3]
                )
            except LayerError:
                return None
            return f.boxes(out.selections.rows_cols.cpu())
        steps = self.steps
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
        self.record = forward_chain(self.steps, x, len(self.steps) - 1, keep_masks=self.rule.needs_slope)
        biggest = max(torch.Size(s[1:]).numel() for s in self.record.shapes)
        self.row_bytes = biggest * x.element_size() * 4  # one seed's widest signal, with scratch
        return self.record.activation

    @property
    def switches(self) -> dict[str, Switches]:
        return self.record.switches

    conventions: dict[str, str] = {}  # a chain has ReLUs only: no conventions
    layout = Layout()  # a chain's layers are planes

    def windows_possible(self) -> bool:
        return self.record.activation.dim() == 4 and croppable(self.steps) and self.unpool in WINDOWED_UNPOOLING

    def backward(self, seed: Tensor, img: Tensor, *, keep_stages: bool) -> tuple[Tensor, list[Stage]]:
        flips = self.flipped_filters
        return reverse_chain(
            self.steps,
            self.record,
            seed,
            img=img,
            rule=self.rule,
            keep_stages=keep_stages,
            flips=flips,
            unpooling=self.unpool,
        )


class _AutogradPath:
    """Any other model: one recorded forward with the rule's activation backward (and the max-pools' by
    `unpool`), then autograd for the seeds.

    boundaries: module paths whose outputs (and each max-pool's input) give the stages, when not empty."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        rule: Rule,
        boundaries: list[str] = (),
        *,
        unpool: str = "switches",
        layouts: dict[str, Layout] | None = None,
    ) -> None:
        self.model, self.name, self.rule, self.boundaries = model, name, rule, list(boundaries)
        self.unpool, self.layouts = unpool, layouts or {}
        self.layout = self.layouts.get(name)  # the layer's: its maps are what select sees (None: undecided)

    def forward(self, x: Tensor) -> Tensor:
        kept = set(self.boundaries) - {self.name}
        self.leaf, self.out, self.record = layer_output(
            self.model, x, self.name, rule=self.rule, boundaries=kept, unpool=self.unpool, unpools=bool(self.boundaries)
        )
        self.row_bytes = x.numel() * x.element_size() * 16
        if self.boundaries:  # every kept tensor with a stage per seed
            self.row_bytes += sum(t[0].numel() * t[0].element_size() for *_, t in self.record["boundaries"])
        if self.layout is None:  # no shape-only run gave it (a model that runs on real tensors only)
            if self.out.dim() not in (2, 4):
                raise LayerError(
                    f"cannot tell how layer '{self.name}' lays out its feature maps: its {tuple(self.out.shape)} "
                    "output is not (N, C, H, W) and the model does not run on the meta device; choose a "
                    "convolution's output"
                )
            self.layout = Layout()
        return self.layout.maps(self.out.detach(), self.name)

    @property
    def switches(self) -> dict[str, Switches]:
        return self.record["switches"]

    @property
    def conventions(self) -> dict[str, str]:
        return self.record["conventions"]

    def windows_possible(self) -> bool:
        return False

    def backward(self, seed: Tensor, img: Tensor, *, keep_stages: bool) -> tuple[Tensor, list[Stage]]:
        """seed (B, C, ...) on the layer's maps for image img (B,) -> (B, C, H, W), and with keep_stages the stages
        (B, C, h, w), from the layer down: the signal arriving at each boundary the layer depends on (as feature
        maps: tokens on their grid), then the input."""
        rows = torch.arange(len(img), device=img.device)
        full = seed.new_zeros(len(img), *self.out.shape)
        full[rows, img] = self.layout.restore(seed, tuple(self.out.shape[1:]))
        kept = self.record["boundaries"] if keep_stages else []
        y, at = project_autograd(self.leaf, self.out, full, stages=[t for *_, t in kept])
        y = y[rows, img]
        if not keep_stages:
            return y, []
        stages, pools = [], sum(kind == "unpool" for _, kind, _ in kept)
        for (path, kind, _), g in reversed(list(zip(kept, at, strict=True))):
            if kind == "unpool":
                pools -= 1
            shown = Layout() if kind == "unpool" else self.layouts.get(path, Layout())
            if g is not None and shown.kind != "unknown":
                name = f"unpool{pools + 1}" if kind == "unpool" else path
                stages.append(Stage(name, kind, path, shown.maps(g[rows, img])))
        return y, [*stages, Stage("input", "deconv", "", y)]


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


def crop_boxes(dn: Deconvnet, out: Projection) -> Tensor:
    """Where to crop each projection (N, K, 4: top, bottom, left, right, half-open): its exact receptive field
    on a chain; on other networks (whose receptive fields are not computed yet) the box its projection touches,
    the smallest one holding every nonzero pixel (all of the image where none is)."""
    boxes = dn.receptive_field_boxes(out)
    if boxes is not None:
        return boxes
    touched = out.images.abs().sum(2) > 0  # (N, K, H, W)

    def span(hit: Tensor) -> tuple[Tensor, Tensor]:
        n = hit.shape[-1]
        idx = torch.arange(n, device=hit.device)
        empty = ~hit.any(-1)
        lo = torch.where(hit, idx, n).amin(-1).masked_fill(empty, 0)
        return lo, torch.where(hit, idx + 1, 0).amax(-1).masked_fill(empty, n)

    return torch.stack([*span(touched.any(-1)), *span(touched.any(-2))], -1).cpu()
