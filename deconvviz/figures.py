"""What the CLI's commands make: a figure and its provenance, from a model, an image and a layer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from . import __version__
from .deconvnet import Deconvnet, Projection
from .errors import LayerError
from .forward import output_shapes
from .images import DEFAULT_IMAGE, load_image, to_batch, to_display
from .layers import default_layer, receptive_fields, resolve, step_index
from .occlusion import occlusion_maps
from .render import GridRow, layer_grid, occlusion_figure, reconstruction_figure, save
from .weights import Weights

Progress = Callable[[str], None]


def _image_record(path: str | os.PathLike | None) -> dict:
    p = Path(path) if path is not None else DEFAULT_IMAGE
    data = p.read_bytes() if p.is_file() else b""
    return {"path": "built-in bicycle.jpg" if path is None else str(path), "sha256": hashlib.sha256(data).hexdigest()}


def _selections(dn: Deconvnet, out: Projection) -> dict:
    sel = out.selections
    boxes = dn.receptive_field_boxes(out)
    rec = {"layer": sel.layer, "module": out.layer, "mode": sel.mode, "channels": sel.channels[0].tolist(),
           "values": [float(v) for v in sel.values[0]]}  # fmt: skip
    if len(sel.shape) == 3:
        rec["positions"] = sel.rows_cols[0].tolist()
    if boxes is not None:
        rec["receptive_fields"] = boxes[0].tolist()  # top, bottom, left, right (half-open)
    return rec


def _field(dn: Deconvnet, module: str) -> tuple[int, int] | None:
    """Receptive field (rows, cols) in pixels of one position of a chain model's layer; None: all positions."""
    steps = dn.steps
    if steps is None:
        return None
    try:
        rows, cols = receptive_fields(steps, step_index(steps, module))
    except LayerError:  # a classifier layer: every position
        return None
    return rows.size, cols.size


def _provenance(command: str, image, model_name: str, weights: Weights, size, x, layers: list[dict]) -> dict:
    return {
        "command": command,
        "deconvviz": __version__,
        "torch": torch.__version__.split("+")[0],
        "image": _image_record(image),
        "model": model_name,
        "weights": {"name": weights.name, "source": weights.source, "preprocess": weights.preprocess.name},
        "input_size": list(x.shape[-2:]),
        "size": size,
        "layers": layers,
    }


def visualize(model: nn.Module, weights: Weights, image=None, layers: Sequence[str] | None = None, top: int = 9,
              channels: Sequence[int] | None = None, mode: str = "max", size: int | None = 224,
              model_name: str = "vgg16", progress: Progress | None = None,
              rule: str = "deconvnet") -> tuple[Figure, dict]:  # fmt: skip
    """Layer grid: per layer (None: the last conv layer), the selected feature maps' projections beside
    their image patches. rule: how ReLUs pass the signal back (deconvnet, guided, gradient)."""
    layers = list(dict.fromkeys(layers)) if layers is not None else [default_layer(model)]
    if not layers:
        raise LayerError("no layers given; name one or more, e.g. conv1_2,conv3_3,conv5_3")
    dn = Deconvnet(model, rule=rule)
    x = to_batch(load_image(image if image is not None else DEFAULT_IMAGE), weights.preprocess, size, device=dn.device)
    rows, records = [], []
    for layer in layers:
        if progress:
            progress(f"projecting {layer}")
        out = dn.project(x, layer, channels=channels, mode=mode, top=top)
        boxes = dn.receptive_field_boxes(out) if mode == "max" else None
        sel = out.selections
        rows.append(GridRow(layer, out.images[0].cpu(), None if boxes is None else boxes[0], sel.channels[0].tolist(),
                            sel.values[0].tolist(), _field(dn, out.layer)))  # fmt: skip
        records.append(_selections(dn, out))
    picture = to_display(x[0].cpu(), weights.preprocess)
    what = "strongest activation" if mode == "max" else "whole feature map"
    title = f"{model_name} ({weights.name}), {what} of each feature map, projected to pixels ({dn.rule.title})"
    fig = layer_grid(picture, rows, weights.preprocess, title)
    return fig, _provenance("visualize", image, model_name, weights, size, x, records) | {"rule": dn.rule.name}


def reconstruct(model: nn.Module, weights: Weights, image=None, layer: str | None = None,
                channels: Sequence[int] | str | None = None, mode: str = "max", size: int | None = 224,
                model_name: str = "vgg16", progress: Progress | None = None,
                rule: str = "deconvnet") -> tuple[Figure, dict]:  # fmt: skip
    """Layer-by-layer reconstruction: the input, then every stage of the reverse journey to pixels.

    layer None: the last conv layer. channels None: the strongest feature map; "all": every one; several
    channels are projected together, as one seed. rule: deconvnet, guided or gradient.
    """
    layer = layer or default_layer(model)
    dn = Deconvnet(model, rule=rule)
    x = to_batch(load_image(image if image is not None else DEFAULT_IMAGE), weights.preprocess, size, device=dn.device)
    if channels == "all":
        steps = dn.steps
        shape = output_shapes(model, steps, tuple(x.shape[-2:]))[step_index(steps, resolve(model, steps, layer))]
        channels = range(shape[0])
    if progress:
        progress(f"projecting {layer}")
    out = dn.project(x, layer, channels=channels, mode=mode, top=1, keep_stages=True, together=True)
    stages = [type(s)(s.name, s.kind, s.step, s.tensor[0, 0].cpu()) for s in out.stages]
    chans = out.selections.channels[0].tolist()
    shown = f"feature map {chans[0]}" if len(chans) == 1 else f"{len(chans)} feature maps together"
    title = (
        f"{model_name} ({weights.name}): {layer}, {shown} ({'strongest activation' if mode == 'max' else 'whole map'})"
    )
    title += "" if dn.rule.name == "deconvnet" else f", {dn.rule.title}"
    fig = reconstruction_figure(to_display(x[0].cpu(), weights.preprocess), stages, weights.preprocess, title)
    prov = _provenance("reconstruct", image, model_name, weights, size, x, [_selections(dn, out)])
    prov["rule"] = dn.rule.name
    prov["stages"] = [{"name": s.name, "kind": s.kind, "size": list(s.size), "undoes": s.step} for s in out.stages]
    return fig, prov


def occlusion(model: nn.Module, weights: Weights, image=None, layer: str | None = None, channel: int | None = None,
              cls: int | None = None, size: int | None = None, stride: int | None = None, image_size: int | None = 224,
              model_name: str = "vgg16", batch_size: int = 32,
              progress: Progress | None = None, rule: str = "deconvnet") -> tuple[Figure, dict]:  # fmt: skip
    """Occlusion sensitivity (ZF Fig. 7) of one feature map (default: the image's strongest) and, with cls, a class.

    The occluder is the dataset mean colour of the weights' preprocessing; size and stride as `occlusion_maps`.
    layer None: the last conv layer. rule: how the projection panel passes ReLUs (deconvnet, guided, gradient).
    """
    layer = layer or default_layer(model)
    dn = Deconvnet(model, rule=rule)
    x = to_batch(load_image(image if image is not None else DEFAULT_IMAGE), weights.preprocess, image_size,
                 device=dn.device)  # fmt: skip
    if progress:
        progress(f"projecting {layer}")
    out = dn.project(x, layer, channels=None if channel is None else [channel], mode="max", top=1)
    channel = int(out.selections.channels[0, 0])
    res = occlusion_maps(model, x, layer, channel, size, stride, cls, weights.preprocess, batch_size, progress)
    name = None
    if cls is not None:
        name = weights.categories[cls] if weights.categories and cls < len(weights.categories) else f"class {cls}"
    title = f"{model_name} ({weights.name}): occluding the image, watching {layer} map {channel}"
    title += f" and p({name})" if name else ""
    title += "" if dn.rule.name == "deconvnet" else f"; {dn.rule.title} projection"
    picture = to_display(x[0].cpu(), weights.preprocess)
    strongest = float(out.selections.values[0, 0])
    fig = occlusion_figure(picture, res, out.images[0, 0].cpu(), strongest, weights.preprocess, title, name)
    prov = _provenance("occlusion", image, model_name, weights, image_size, x, [_selections(dn, out)])
    del prov["layers"]

    def summary(m: torch.Tensor, baseline: float) -> dict:
        i, j = divmod(int(m.argmin()), m.shape[1])
        return {"unoccluded": baseline, "min": float(m.min()), "argmin": [int(res.rows[i]), int(res.cols[j])],
                "max": float(m.max()), "map": m.tolist()}  # fmt: skip

    prov |= {
        "layer": layer, "module": res.layer, "channel": channel,
        "occluder": {"size": res.size, "stride": res.stride, "grey": [round(float(g), 6) for g in res.grey],
                     "positions": {"rows": res.rows.tolist(), "cols": res.cols.tolist()}},
        "activation": summary(res.activation, res.baseline_activation),
        "projection": _selections(dn, out) | {"channel": channel, "rule": dn.rule.name},
    }  # fmt: skip
    if cls is not None:
        prov["class"] = {"index": cls, "name": name} | summary(res.probability, res.baseline_probability)
    return fig, prov


def write(fig: Figure, provenance: dict, out: str | os.PathLike, dpi: int = 150) -> tuple[Path, Path]:
    """Figure at `out` and its provenance JSON beside it (same name, .json): both written, or neither."""
    out = Path(out)
    meta = out.with_suffix(".json")
    text = json.dumps({**provenance, "figure": out.name}, indent=2, allow_nan=False) + "\n"
    save(fig, out, dpi, also={meta: text.encode()})
    return out, meta
