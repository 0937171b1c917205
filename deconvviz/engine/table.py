"""The layer table `deconvviz layers` prints: one row per layer a projection can start from, with its output
shape and receptive field. It joins the forward pass (shapes) and the receptive fields, which import neither it."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .fields import module_fields
from .forward import output_shapes
from .layers import module_outputs, receptive_fields, vgg_aliases
from .layout import PLANES, UNKNOWN, layouts
from .model import ModelView, view_of


@dataclass(frozen=True)
class LayerRow:
    """One layer a projection can start from: its VGG name (or ""), module path, type, output shape per image,
    and receptive field size and stride ("all" once every position is mixed; "?" for outputs that are not maps).
    `columns` is where more per-layer facts go (e.g. how each rule passes the module), by column title."""

    alias: str
    module: str
    kind: str
    shape: tuple
    rf: str
    stride: str
    columns: dict[str, str] = field(default_factory=dict)
    maps: str = (
        ""  # where the output is not (C, H, W): its feature maps and how they lie ("768x4x4 tokens 1+4x4 (cls)")
    )


def layer_table(model: nn.Module | ModelView, size: tuple[int, int]) -> list[LayerRow]:
    """One row per layer: every step of a chain model, or every module of any other network that runs once
    and returns a tensor (the modules a projection can start from), in the order their forwards finish."""
    view = view_of(model)
    model, steps = view.model, view.steps
    if steps is None:
        outputs = [r for r in module_outputs(model, size) if r.name and r.runs == 1 and r.shape]
        found = layouts(model, size)
        fields = module_fields(model, size) if any(len(r.shape) in (2, 3) for r in outputs) else {}
        return [
            LayerRow(
                "",
                r.name,
                type(r.module).__name__,
                r.shape,
                *_field_of(r, fields, size),
                maps=_maps_text(found.get(r.name), r.shape),
            )
            for r in outputs
        ]
    shapes, alias = output_shapes(model, steps, size), {v: k for k, v in vgg_aliases(steps).items()}
    rows, mixed = [], False
    for i, s in enumerate(steps):
        mixed = mixed or isinstance(s.module, (nn.Linear, nn.AdaptiveAvgPool2d, nn.Flatten))
        field_ = None if mixed else receptive_fields(steps, i)[0]
        rf = ("all", "-") if field_ is None else (str(field_.size), str(field_.stride))
        if s.name != "flatten":
            rows.append(LayerRow(alias.get(s.name, ""), s.name, type(s.module).__name__, shapes[i], *rf))
    return rows


def _maps_text(layout, shape: tuple) -> str:
    """A layer's feature maps in words where its output is not planes: "768x4x4 tokens 1+4x4 (cls)", "96x16x16
    channels-last 16x16", or why it has none ("no maps: windows?")."""
    if layout is None or layout.kind == PLANES:
        return ""
    if layout.kind == UNKNOWN:
        return "not a map (see project)"
    return "x".join(map(str, layout.map_shape(shape))) + " " + layout.describe(shape)


def _field_of(out, fields: dict, size: tuple[int, int]) -> tuple[str, str]:
    """Receptive field size and stride (input pixels) of a module of a non-chain network, at its centre position
    (an interior one: fields clip at the image's edge); rows x cols where they differ. "all" for class scores,
    pooled vectors and maps whose every position sees the whole input; "?" for outputs that are not maps."""
    if len(out.shape) == 1:
        return "all", "-"
    f = fields.get(out.name)  # token and channels-last layers: on their grid
    if f is None:
        return "?", "?"
    return ("all", "-") if f.whole(size) else f.describe()
