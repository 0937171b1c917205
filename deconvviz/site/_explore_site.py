"""The site of one image explored layer by layer (`explore_site`): per layer, the strongest units' projections and
patches, and for each feature-map position the units strongest there (explore.js).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..analysis.scan import activations
from ..engine.deconvnet import Deconvnet
from ..engine.fields import Fields, receptive_field
from ..engine.forward import module_activations
from ..engine.hooks import evaluating
from ..engine.layers import module_outputs, step_index
from ..engine.layout import Layout, layouts
from ..engine.progress import Progress
from ..errors import DeconvvizError, LayerError
from ..images import check_size, load_image, to_batch, to_display
from ..networks.network import Network
from ..networks.weights import Weights
from ..render.draw import pattern_rgb
from ._common import (
    Link,
    Nav,
    Picture,
    SiteSummary,
    Tile,
    _folder_name,
    _SiteFolder,
    render_page,
)

PER_POSITION = 5  # explore: units kept per feature-map position, the strongest there

# ------------------------------------------------------------------------------------------- the explore site


@dataclass
class _DrawnUnit:
    """A unit of an explored layer: its projection and patch, its strongest activation in the image and where."""

    projection: Picture
    patch: Picture
    value: float
    row: int
    col: int


@dataclass
class _LayerView:
    """One layer of an explored image: its activation (C, H, W), receptive field and the units drawn."""

    layer: str
    activation: Tensor
    rf: Fields
    strongest: list[int]  # the top maps, strongest first
    drawn: dict[int, _DrawnUnit]
    positions: dict  # the units strongest at each position, for the page's JavaScript (explore.js)


@dataclass
class _Explore:
    """What every step of an explore site's build reads."""

    site: _SiteFolder
    dn: Deconvnet
    x: Tensor  # the image as network input (1, 3, size, size)
    picture: np.ndarray  # the image as shown (size, size, 3)
    weights: Weights
    model: str
    top: int
    per_position: int
    progress: Progress | None

    @property
    def size(self) -> int:
        return self.x.shape[-1]


def explore_site(
    image: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    layers: Sequence[str] | None = None,
    top: int = 9,
    per_position: int = PER_POSITION,
    network: Network,
    size: int = 224,
    progress: Progress | None = None,
    verbose: bool = True,
) -> SiteSummary:
    """A static site of one image: per layer its `top` strongest maps projected to pixels, and a picture where a
    click lists the units strongest at that position (the `per_position` strongest, precomputed)."""
    from ..images import DEFAULT_IMAGE

    check_size(size)
    for what, about, v in (("top", "top", top), ("units per position", "per_position", per_position)):
        if v < 1:
            raise DeconvvizError(f"{what} must be at least 1, got {v}", about=about)
    path = Path(image) if image is not None else Path(DEFAULT_IMAGE)
    if not path.is_file():
        raise DeconvvizError(f"'{path}' is not an image file; give the path of an image")
    load_image(path, fit=size)  # unreadable: fails before any work (read as to_batch reads it)
    with _SiteFolder(out, "explore") as site:
        net, info, model = network.module, network.weights, network.spec
        x = to_batch(path, info.preprocess, size)
        dn = Deconvnet(net)
        names = list(layers) if layers else _explore_layers(dn, size)
        fields = {}
        for n in names:
            dn.view.resolve(n)  # an unknown name: its own message
            try:
                fields[n] = receptive_field(dn.view, n, input_size=(size, size))
            except LayerError:
                raise DeconvvizError(
                    f"layer '{n}' has no feature-map positions to click; explore takes conv and pool layers"
                ) from None
        for name in ("site.css", "explore.js", "arrows.js"):
            site.static(name)
        ex = _Explore(
            site,
            dn,
            x.to(dn.device),
            picture=to_display(x[0], info.preprocess),
            weights=info,
            model=model,
            top=top,
            per_position=per_position,
            progress=progress,
        )
        site.picture("image.jpg", ex.picture, side=size)
        views = [_explore_layer(ex, n, fields[n]) for n in names]
        for i, v in enumerate(views):
            site.page(f"{_folder_name(v.layer)}/index.html", _explore_page(ex, views, i))
        site.page("index.html", _explore_index(ex, views, path))
        summary = site.finish()
    return summary


def strongest_units(activation: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per position of an activation (C, H, W) the k strongest units with a positive activation, strongest first.
    Returns units and values (k, H, W); -1 and 0 where fewer than k units are positive."""
    values, units = activation.topk(min(k, activation.shape[0]), dim=0)
    units = torch.where(values > 0, units, -1)
    return units, values.clamp_min(0)


def _explore_layers(dn: Deconvnet, size: int) -> list[str]:
    """The layers explored when none are named: a VGG's conv layers (conv1_1 ... conv5_3); any other network's
    stage outputs (stage_modules: ResNet's conv1, layer1-layer4, DenseNet's blocks and transitions, a ViT's patch
    embedding and blocks) that hold a convolution or follow one and give a feature map of more than one position."""
    if dn.steps is not None:
        convs = [n for n in dn.layers() if re.fullmatch(r"conv\d+_\d+", n)]
        if convs:
            return convs
    outputs = {r.name: r for r in module_outputs(dn.model, (size, size))}
    modules = dict(dn.model.named_modules())
    laid = layouts(dn.model, (size, size))

    def maps(name: str) -> bool:  # token and channels-last layers count by their maps on the grid
        r, lay = outputs.get(name), laid.get(name)
        shape = lay.map_shape(r.shape) if r is not None and lay is not None and lay.kind != "unknown" else ()
        return r is not None and r.runs == 1 and len(shape) == 3 and shape[1] * shape[2] > 1

    stages = [n for n in dn.view.stage_modules() if maps(n)]
    follows = {n for n in stages if laid[n].kind in ("tokens", "channels-last")}  # on a patch embedding's grid
    found = {n for n in stages if any(isinstance(m, nn.Conv2d) for m in modules[n].modules())} | follows
    if found:
        return [n for n in outputs if n in found]  # in the order the forward reaches them
    return [n for n in dn.layers() if maps(n) and isinstance(modules[n], nn.Conv2d)]


def _explore_layer(ex: _Explore, layer: str, rf: Fields) -> _LayerView:
    """Project a layer's strongest maps and every unit listed at some position; the positions' data for its page."""
    dn, x, site = ex.dn, ex.x, ex.site
    act = _activation(dn, x, layer)[0]  # (C, H, W)
    peak = act.flatten(1).max(1).values
    strongest = peak.argsort(descending=True, stable=True)[: min(ex.top, act.shape[0])].tolist()
    units, values = strongest_units(act, ex.per_position)
    listed = sorted(set(strongest) | set(units[units >= 0].unique().tolist()))
    folder, size, drawn = _folder_name(layer), x.shape[-1], {}
    for n in range(0, len(listed), 32):
        part = listed[n : n + 32]
        out = dn.project(x, layer, channels=part, mode="max")
        rc = out.selections.rows_cols[0].tolist()
        for j, c in enumerate(part):
            r, col = rc[j]
            t, b = rf.rows[r].tolist()
            left, right = rf.cols[col].tolist()
            crop = pattern_rgb(out.images[0, j, :, t:b, left:right].cpu(), ex.weights.preprocess)
            proj = site.picture(f"{folder}/unit-{c}.jpg", crop)
            patch = site.picture(f"{folder}/patch-{c}.jpg", ex.picture[t:b, left:right])
            drawn[c] = _DrawnUnit(proj, patch, float(peak[c]), r, col)
        if ex.progress:
            ex.progress(f"{layer}: projecting units", min(n + 32, len(listed)), len(listed))
    h, w = act.shape[-2:]
    data = {
        "layer": layer,
        "size": size,
        "h": h,
        "w": w,
        "k": units.shape[0],
        "rows": rf.rows.tolist(),  # the input rows [top, bottom) each row of positions sees, and columns
        "cols": rf.cols.tolist(),
        "centres": [[round(float(v), 3) for v in c] for c in (rf.centre_rows, rf.centre_cols)],
        "units": units.permute(1, 2, 0).flatten().tolist(),  # position-major: (row * w + col) * k + rank
        "values": [float(f"{v:.4g}") for v in values.permute(1, 2, 0).flatten().tolist()],
        "maps": {str(c): {"value": float(f"{d.value:.4g}"), "row": d.row, "col": d.col} for c, d in drawn.items()},
    }
    return _LayerView(layer, activation=act, rf=rf, strongest=strongest, drawn=drawn, positions=data)


@torch.no_grad()
def _activation(dn: Deconvnet, x: Tensor, layer: str) -> Tensor:
    """A layer's activation (1, C, H, W) for x, on the CPU: a chain's steps, or any network's module output."""
    view = dn.view
    path = view.resolve(layer)
    if view.steps is not None:
        return activations(view.steps, x, {"layer": step_index(view.steps, path)})["layer"].cpu()
    with evaluating(dn.model):
        act = module_activations(dn.model, x, {"layer": path})["layer"]
    return (dn.layouts(x).get(path) or Layout()).maps(act, layer).cpu()  # tokens: their maps on the grid


def _explore_page(ex: _Explore, views: list[_LayerView], i: int) -> str:
    v = views[i]
    h, w = v.activation.shape[-2:]
    tiles = []
    for c in v.strongest:
        d = v.drawn[c]
        tiles.append(Tile(c, d.value, d.projection, d.patch, f"max {d.value:.4g} at ({d.row}, {d.col})", missing=""))
    prev = Link(views[i - 1].layer, f"../{_folder_name(views[i - 1].layer)}/index.html") if i > 0 else None
    nxt = Link(views[i + 1].layer, f"../{_folder_name(views[i + 1].layer)}/index.html") if i + 1 < len(views) else None
    return render_page(
        "explore_layer.html.j2",
        title=f"{v.layer} · deconvviz explore",
        root="../",
        crumbs=[Link("image", "../index.html"), Link(v.layer)],
        nav=Nav(prev, Link("image", "../index.html"), nxt),
        layer=v.layer,
        units=v.activation.shape[0],
        h=h,
        w=w,
        shown=max(ex.size, 336),
        per_position=ex.per_position,
        field=_field_text(v.rf),
        tiles=tiles,
        positions=v.positions,
    )


def _field_text(rf: Fields) -> str:
    """The centre position's field, for a page: "99×99 pixels, stride 16"."""
    (h, w), strides = rf.interior()
    stride = rf.describe()[1].replace("x", "×")
    return f"{h}×{w} pixels" + ("" if all(s is None for s in strides) else f", stride {stride}")


def _explore_index(ex: _Explore, views: list[_LayerView], path: Path) -> str:
    info, size = ex.weights, ex.size
    rows = [
        ("image", str(path)),
        ("model", ex.model),
        ("weights", f"{info.name} ({info.source or 'no file'})"),
        ("preprocessing", info.preprocess.name),
        ("input size", f"{size} x {size}"),
        ("made by", f"deconvviz {__version__}"),
    ]
    strips = []
    for v in views:
        h, w = v.activation.shape[-2:]
        maps = [(c, v.drawn[c].projection) for c in v.strongest]
        href = f"{_folder_name(v.layer)}/index.html"
        strips.append(dict(layer=v.layer, href=href, units=v.activation.shape[0], h=h, w=w, maps=maps))
    return render_page(
        "explore_index.html.j2",
        title=f"explore {path.name} · deconvviz",
        root="",
        crumbs=[Link("image")],
        nav=Nav(None, None, Link(views[0].layer, f"{_folder_name(views[0].layer)}/index.html")) if views else None,
        image=path.name,
        size=size,
        rows=rows,
        views=strips,
    )
