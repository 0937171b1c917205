"""Receptive fields of any network: the input box each position of a layer depends on (`receptive_field`).

Chains keep their closed form (layers.py); a token or channels-last layer (a transformer's) takes the hulls'
one forward (_hulls.py, `module_fields`); any other layer the structural probe (_probe.py), which holds for any
network. The fields found are kept in the model's view (engine.model): a layer, size and channels are traced once.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from ..errors import LayerError
from ._hulls import module_fields
from ._probe import Fields, _probe
from .forward import output_shapes
from .layers import receptive_fields, step_index
from .layout import CHANNELS_LAST, TOKENS, layout_of
from .model import ModelView, view_of


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
