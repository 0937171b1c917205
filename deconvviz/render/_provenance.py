"""What a figure's provenance records (NAME.EXT.provenance.json beside it): the command, versions, the image by its
name and checksum, the network as its spec rebuilds it, the weights, and what chose each layer's selections. It
names no path of the machine that made it: a file inside the working folder by its relative path, else its name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .. import __version__
from ..engine.deconvnet import Deconvnet, Projection
from ..images import DEFAULT_IMAGE
from ..networks.network import Network
from ..networks.weights import Weights


def _image_record(path: str | os.PathLike | None) -> dict:
    """The image's name when built in, else its path relative to the working folder (its file name when it
    lies outside it): provenance names no path of the machine that made it."""
    p = Path(path) if path is not None else DEFAULT_IMAGE
    data = p.read_bytes() if p.is_file() else b""
    if path is None:
        shown = "built-in bicycle.jpg"
    elif p.resolve().is_relative_to(Path.cwd().resolve()):
        shown = p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    else:
        shown = p.name
    return {"path": shown, "sha256": hashlib.sha256(data).hexdigest()}


def _selections(dn: Deconvnet, out: Projection) -> dict:
    sel = out.selections
    boxes = dn.receptive_field_boxes(out)
    rec = {
        "layer": sel.layer,
        "module": out.layer,
        "mode": sel.mode,
        "channels": sel.channels[0].tolist(),
        "values": [float(v) for v in sel.values[0]],
    }
    if sel.layout.kind != "planes":  # where the maps lie in the layer's output (deconvviz.layout)
        rec["feature_maps"] = {"layout": sel.layout.kind, "shape": list(sel.shape), "from": sel.layout.source}
        if sel.layout.prefix:
            rec["feature_maps"]["prefix_tokens"] = list(sel.layout.prefix)
    if len(sel.shape) == 3 and sel.layout.on_grid:
        rec["positions"] = sel.rows_cols[0].tolist()
    if boxes is not None:
        rec["receptive_fields"] = boxes[0].tolist()  # top, bottom, left, right (half-open)
    if out.score is not None:  # what a class scored: the part of the model's result, the pixels of a map
        rec["score"] = out.score.record()
    return rec


def _target_record(target: dict) -> dict:
    """What chose the selections, for the provenance: boxes in input pixels."""
    rec = {}
    for key in ("region", "exclude"):
        boxes = target[key] if key == "exclude" else [target[key]] if target[key] is not None else []
        if boxes:
            found = [
                {"name": b.name, "box": [b.x0, b.y0, b.x1, b.y1]} if b.name else [b.x0, b.y0, b.x1, b.y1] for b in boxes
            ]
            rec[key] = found if key == "exclude" else found[0]
    if target["at"] is not None:
        at = target["at"]
        rec["at"] = [at.x, at.y] if at.unit == "px" else {"fractions": [at.x, at.y]}
    if target["cls"] is not None:
        rec["class"] = int(target["cls"])
    if target.get("token") is not None:
        rec["token"] = target["token"]
    return rec


def _weights_record(weights: Weights) -> dict:
    rec = {
        "name": weights.name,
        "source": weights.source,
        "sha256": weights.sha256,
        "preprocess": weights.preprocess.name,
    }
    if weights.details:  # a Hugging Face model: its image processor's settings, model class, categories' source
        rec |= weights.details | {"categories": list(weights.categories) if weights.categories else None}
    return rec


def _shown_path(text: str) -> str:
    """A path inside the working folder relative to it, else its file name: provenance names no local path."""
    p = Path(text).expanduser()
    if not p.is_absolute():
        return text
    return p.relative_to(Path.cwd()).as_posix() if p.is_relative_to(Path.cwd()) else p.name


def _network_record(net: Network) -> dict:
    """Network.record() with the files it names (a factory file, a state dict or card) as _shown_path shows them."""
    where, colon, attr = net.spec.rpartition(":")
    spec = f"{_shown_path(where)}:{attr}" if where.endswith(".py") else net.spec
    if net.spec.startswith("hf:"):  # a save_pretrained folder by its path inside the working folder, else its name
        source, colon, overrides = net.spec[3:].partition(":")
        spec = f"hf:{_shown_path(source)}{colon}{overrides}"
    weights = _shown_path(net.weights_choice) if Path(net.weights_choice).suffix in (".pt", ".pth", ".toml") else None
    return net.record() | {"spec": spec, "weights": weights or net.weights_choice}


def _provenance(command: str, net: Network, x, *, image, size, layers: list[dict]) -> dict:
    return {
        "command": command,
        "deconvviz": __version__,
        "torch": torch.__version__.split("+")[0],
        "image": _image_record(image),
        "model": _network_record(net)["spec"],
        "network": _network_record(net),
        "weights": _weights_record(net.weights),
        "input_size": list(x.shape[-2:]),
        "size": size,
        "layers": layers,
    }


def _unit_provenance(command: str, net: Network, x, *, image, size, layer: str, rep, seed: int) -> dict:
    """The provenance of a one-unit report (sanity, ablate): the unit, its receptive field and the seed."""
    prov = _provenance(command, net, x, image=image, size=size, layers=[])
    del prov["layers"]
    unit = {"layer": layer, "module": rep.module, "channel": rep.channel, "position": list(rep.position)}
    return prov | unit | {"receptive_field": list(rep.box), "seed": seed}
