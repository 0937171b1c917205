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
from .layers import Step, receptive_fields, resolve, step_index
from .layout import Layout, layouts
from .model import ModelView, view_of
from .reverse import WINDOWED_UNPOOLING, Stage, get_unpool
from .rules import Rule, get_rule
from .scores import ClassScore, ScoreRecord
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
    score: ScoreRecord | None = None  # with cls: what was scored (the part of the result, the pixels of a map)


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
        model: nn.Module | ModelView,
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
        than half the image; other models: only with crop=True). Same result either way. model may be a model's
        view (engine.model.ModelView) already made, which the Deconvnet then shares."""
        self._view = view_of(model)
        self.model = self._view.model
        self.rule = get_rule(rule)
        self.unpool = get_unpool(unpool)
        self.max_batch_bytes = max_batch_bytes
        self.crop = crop

    def layouts(self, x: Tensor) -> dict[str, Layout]:
        """Module path -> how its output lays out its feature maps (layout.Layout), for inputs shaped like x
        (N, C, H, W); decided once per model and input size (layout.layouts)."""
        return layouts(self.model, tuple(x.shape[-2:]), channels=x.shape[1])

    @property
    def view(self) -> ModelView:
        """The model resolved (engine.model.ModelView): made again when the model changed since the last use (a
        module replaced or added, a hook registered, `model` itself reassigned), so a model changed after the
        Deconvnet was made is projected as it is now; otherwise the same view, with the fields it has found."""
        if not self._view.current(self.model):
            self._view = ModelView.of(self.model)
        return self._view

    @property
    def steps(self) -> list[Step] | None:
        """The model as a chain of mirrored steps (None: projected through autograd), as the model is now."""
        return self.view.steps

    def layers(self) -> list[str]:
        """Every layer name `project` accepts, in forward order."""
        return self.view.layer_names()

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
        output: str | int | None = None,
        pixels: str = "all",
        target: Box | None = None,
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
        cls: the `top` maps contributing most to class `cls`'s score (gradient times activation). The score is
        read from the model's result (deconvviz.engine.scores): output chooses the part (None: a tensor as it is,
        `logits` of an object that has them, "out" of a dict, the first of a tuple; or a key, an index); of a
        (N, K) vector it is class cls's logit, of a (N, K, h, w) map its logits summed over the pixels chosen by
        pixels ("all", or "predicted": where cls is the argmax) and target (a Box on the input: the output pixels
        whose centres, mapped to the input, lie inside it). Projection.score records what was scored.
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
        if cls is None and (output is not None or pixels != "all" or target is not None):
            raise SelectionError("output, pixels and target say how a class is scored: give cls too", about="class")
        score = None if cls is None else ClassScore(cls, output=output, pixels=pixels, target=target)
        record = None
        view = self.view  # the model as it is now, for the whole call
        with torch.inference_mode(False):  # also inside inference_mode: some reverse steps use autograd
            layout = self._layout(view, x, layer, token)
            if region is not None or at is not None or cls is not None or exclude:
                if token is not None and (region is not None or at is not None):
                    raise SelectionError("a region or point chooses grid positions, and a prefix token has none")
                channels, positions, record = choose(
                    view,
                    self._input(x),
                    layer,
                    channels=channels,
                    mode=mode,
                    top=top,
                    region=region,
                    at=at,
                    exclude=exclude,
                    cls=score,
                    positions=positions,
                    layout=layout,
                )
            boundaries = None if stages is None else view.check_stage_modules(list(stages))
            out = self._project(
                view,
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
        out.score = record
        return out

    def _layout(self, view: ModelView, x, layer, token) -> Layout | None:
        """The layout of `layer`'s output (planes on a chain), with a prefix token selected alone if asked."""
        x = self._input(x)
        name = view.resolve(str(layer)) if isinstance(layer, (str, int)) else layer
        layout = Layout() if view.is_chain or not isinstance(name, str) else self.layouts(x).get(name)
        return layout if token is None else (layout or Layout()).for_token(token, str(layer))

    def _project(
        self,
        view: ModelView,
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
        x, steps = self._input(x), view.steps if boundaries is None else None
        layer = str(layer) if isinstance(layer, int) and not isinstance(layer, bool) else layer
        if not isinstance(layer, str):
            raise LayerError(f"layer must be a name such as 'conv5_3' or a module path, got {type(layer).__name__}")
        name = resolve(view.model, steps, layer)  # given stages, a chain too is resolved as any module
        if steps is None:
            kept = (view.stage_modules() if boundaries is None else boundaries) if keep_stages else []
            known = self.layouts(x)
            path = AutogradPath(view.model, name, rule, kept, unpool=unpool, layouts=known)
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
            return [FieldWindows(self.max_batch_bytes, self._fields_or_none), plane]
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

    def _fields_or_none(self, path: AutogradPath, x: Tensor) -> Fields | None:
        """The fields of the path's layer for inputs like x, kept in the model's view (probing them costs more than
        a full-plane backward); None where they cannot be traced."""
        try:
            return receptive_field(self.view, path.name, input_size=tuple(x.shape[-2:]), channels=x.shape[1])
        except DeconvvizError:
            return None

    def receptive_field_boxes(self, out: Projection) -> Tensor | None:
        """(N, K, 4) input box (top, bottom, left, right; half-open) of each selection's strongest
        activation, or None where the layer mixes all positions (classifier). Any network: its exact fields
        (deconvviz.engine.fields.receptive_field)."""
        if len(out.selections.shape) != 3 or not out.selections.layout.on_grid:
            return None
        view = self.view
        if view.steps is None:
            try:
                f = receptive_field(
                    view, out.layer, input_size=tuple(out.images.shape[-2:]), channels=out.images.shape[-3]
                )
            except LayerError:
                return None
            return f.boxes(out.selections.rows_cols.cpu())
        steps = view.steps
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
