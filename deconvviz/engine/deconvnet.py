"""The deconvnet: one forward pass recording switches, then selected activations projected to pixel space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import DeconvvizError, ImageError, LayerError, SelectionError, UnsupportedModelError
from ._paths import AutogradPath, ChainPath, Path
from ._strategies import ChainWindows, FieldWindows, FullPlane, Reconstruction, Strategy
from .fields import Fields, receptive_field
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
from .reverse import WINDOWED_UNPOOLING, Stage, get_unpool
from .rules import Rule, get_rule
from .selection import Selection, select
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
    (rectified.CONVENTIONS); what has no rule is refused. Those are the two paths (`_paths`); the seeds
    then go back on the whole plane or on receptive-field windows (`_strategies`), with the same numbers.
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
        the memory of one chunk of selections (as the allowances in _paths and _strategies estimate it);
        crop: run mode-max projections on receptive-field windows (None: on chains, when the window is smaller
        than half the image; other models: only with crop=True). Same result either way."""
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
        """The one driver of every projection: resolve, forward (on a path), select, then the first strategy
        that can run the seeds back (`_strategies`), and one `Projection` from what it gives."""
        x, steps = self._input(x), self.steps if boundaries is None else None
        layer = str(layer) if isinstance(layer, int) and not isinstance(layer, bool) else layer
        if not isinstance(layer, str):
            raise LayerError(f"layer must be a name such as 'conv5_3' or a module path, got {type(layer).__name__}")
        name = resolve(self.model, steps, layer)
        if steps is None:
            kept = (stage_modules(self.model) if boundaries is None else boundaries) if keep_stages else []
            known = self.layouts(x)
            path = AutogradPath(self.model, name, rule, kept, unpool=unpool, layouts=known)
            path.layout = layout if layout is not None else known.get(name)
        else:
            path = ChainPath(steps, name, rule, unpool)
            if layout is not None and layout.kind != "planes":
                raise SelectionError(f"layer '{layer}' of a chain has no tokens")
        act = path.forward(x)
        chosen = {"channels": channels, "positions": positions, "values": values}
        sel = select(act, layer, mode=mode, top=top, layout=path.layout, **chosen)
        strategies = self._strategies(path, sel, keep_stages=keep_stages, together=together)
        done = next(filter(None, (strategy.run(x, path, sel) for strategy in strategies)))
        return self._projection(path, sel, done)

    def _strategies(self, path: Path, sel: Selection, *, keep_stages: bool, together: bool) -> list[Strategy]:
        """The ways to run this projection, first choice first; each but the last may decline (return None).
        Windows only for one selection at a time without stages: on a chain of local steps (crop=None: the small
        windows; crop=True: all), and on any other local network in mode max with crop=True."""
        plane = FullPlane(self.max_batch_bytes, keep_stages=keep_stages, together=together)
        if keep_stages or together or self.crop is False:
            return [plane]
        if path.windows_possible():
            return [ChainWindows(self.max_batch_bytes, every=bool(self.crop))]
        field_windows = isinstance(path, AutogradPath) and self.crop and sel.mode == "max"
        if field_windows and path.unpool in WINDOWED_UNPOOLING:
            return [FieldWindows(self.max_batch_bytes, self._receptive_field), plane]
        return [plane]

    @staticmethod
    def _projection(path: Path, sel: Selection, done: Reconstruction) -> Projection:
        """The one place a `Projection` is made: a strategy's images and stages, with what the path recorded."""
        return Projection(
            done.images,
            sel,
            path.switches,
            stages=done.stages,
            layer=path.name,
            rule=path.rule.name,
            conventions=dict(path.conventions),
            unpool=path.unpool,
        )

    def _receptive_field(self, path: AutogradPath, x: Tensor) -> Fields | None:
        """The fields of the path's layer for inputs like x, kept while the model stays the same object (probing them
        costs more than a full-plane backward); None where they cannot be traced."""
        key = (path.name, *x.shape[-3:])
        fields = self._fields.get(key) if self._fields.get("model") is self.model else None
        if fields is None:
            try:
                fields = receptive_field(self.model, path.name, input_size=tuple(x.shape[-2:]), channels=x.shape[1])
            except DeconvvizError:
                return None
            self._fields = {"model": self.model, key: fields}
        return fields

    def receptive_field_boxes(self, out: Projection) -> Tensor | None:
        """(N, K, 4) input box (top, bottom, left, right; half-open) of each selection's strongest
        activation, or None where the layer mixes all positions (classifier). Any network: its exact fields
        (deconvviz.engine.fields.receptive_field)."""
        if len(out.selections.shape) != 3 or not out.selections.layout.on_grid:
            return None
        if self.steps is None:
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
