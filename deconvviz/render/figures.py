"""What the CLI's commands make: a figure and its provenance, from a model, an image and a layer.

One function per figure a command writes, in one module on purpose (about 620 lines): each reads its request the
same way (the image through to_batch, region, point, class and how it is scored through `_target`, the title's
words through `_target_words`) and ends in the same provenance; a module per figure would scatter those few
shared steps that keep the figures' titles and records alike. Request checks live in _checks, the records in
_provenance, the drawing in draw."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from matplotlib.figure import Figure

from .. import __version__
from ..analysis.ablation import REFERENCE, ablation_report
from ..analysis.decoder import decoder_activations
from ..analysis.filters import first_conv_name, first_layer_filters
from ..analysis.invariance import UNITS
from ..analysis.invariance import invariance as invariance_sweep
from ..analysis.occlusion import occlusion_maps
from ..analysis.sanity import edge_map, layer_label, sanity_report
from ..engine.deconvnet import Deconvnet, crop_boxes
from ..engine.forward import layer_shape
from ..engine.layers import receptive_fields, step_index
from ..engine.progress import Status
from ..engine.request import Request
from ..engine.reverse import UNPOOLS, Stage
from ..engine.rules import RULES
from ..engine.scores import ClassScore, ScoreRecord
from ..engine.targets import find_region
from ..errors import LayerError, SelectionError
from ..images import DEFAULT_IMAGE, to_batch, to_display
from ..networks.network import Network
from ..outputs import check_beside, forget_old_provenance, provenance_path
from ._checks import check_decoder as check_decoder
from ._checks import check_layers as check_layers  # the CLI checks a request here before loading weights
from ._checks import check_request as check_request
from ._provenance import _network_record, _provenance, _selections, _target_record, _unit_provenance, _weights_record
from .draw import (
    STAGE_VIEW,
    AblationPanel,
    GridRow,
    ablation_figure,
    compare_figure,
    decoder_figure,
    filter_grid,
    invariance_figure,
    layer_grid,
    occlusion_figure,
    reconstruction_figure,
    sanity_figure,
    save,
)

# What `reconstruct` shows of the built-in photo when nothing is chosen: the conv5_3 map strongest on the
# bicycle where the dog is not (the dog sits inside the bicycle's box), projected whole, so the last panel
# shows the bicycle's frame and wheels (the image's strongest map overall responds to the dog's face).
BUILT_IN = {"region": "bicycle", "exclude": ("dog",), "mode": "map"}
COMPARED = ("deconvnet", "guided", "gradient")  # compare's rules (Springenberg et al.); linear is ablate's


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


def _target(
    x: torch.Tensor,
    *,
    image,
    size: int | None,
    region=None,
    at=None,
    exclude=(),
    cls=None,
    token=None,
    scoring: Request | None = None,
) -> dict:
    """project's keywords for a region (a name from the image's sidecar, or a Box), point (a Point), class or a
    token layer's prefix token; scoring: the request whose output, pixels and target_box say how the class is
    scored (with cls only)."""
    h, w = x.shape[-2:]
    out = {
        "region": None if region is None else find_region(region, image, size, width=w, height=h),
        "at": at,
        "cls": cls,
        "token": token,
    }
    if cls is not None and scoring is not None:
        box = scoring.target_box
        out |= {"output": scoring.output, "pixels": scoring.pixels}
        out["target"] = None if box is None else find_region(box, image, size, width=w, height=h, what="target")
    return out | {"exclude": [find_region(e, image, size, width=w, height=h, what="exclude") for e in exclude or ()]}


def _target_words(target: dict, score: ScoreRecord | None = None) -> str:
    """The selection rule for a figure's title, e.g. "strongest on 'bicycle' outside 'dog'"; score: what a class
    scored (Projection.score), e.g. "class 2 summed over all 4096 pixels (64x64) of output 'out'"."""
    scored = score.words() if score is not None else f"class {target['cls']}"
    words = f"contributing most to {scored}" if target["cls"] is not None else ""
    if target["region"] is not None:
        words += f"{', ' if words else ''}strongest on {target['region']}"
        words += "".join(f" outside {e}" for e in target["exclude"])
    elif target["at"] is not None:
        at = target["at"]
        where = f"{at.x:g}, {at.y:g}" if at.unit == "px" else f"{at.x:g}, {at.y:g} (fractions)"
        words += f"{', ' if words else ''}strongest at x, y = {where}"
    if target.get("token") is not None:
        words += f"{', ' if words else ''}of the {target['token']} token"
    return words


def _dense(res) -> bool:
    """Whether an occlusion's class was scored over the pixels of a map (its title then says which)."""
    return res.score is not None and res.score.kind == "map"


def visualize(net: Network, request: Request, *, progress: Status | None = None) -> tuple[Figure, dict]:
    """Layer grid: per layer (None: the last conv layer), the selected feature maps' projections beside
    their image patches. request.rule: how ReLUs pass the signal back (deconvnet, guided, gradient). region (a
    sidecar name or a box), at, exclude, cls: as `Deconvnet.project`."""
    weights, model_name, image, layers = net.weights, net.name, request.image, request.layers
    top, channels, mode, size, rule = request.top, request.channels, request.mode, request.size, request.rule
    region, at, exclude, cls = request.region, request.at, request.exclude, request.cls
    layers = list(dict.fromkeys(layers)) if layers is not None else [net.view.default_layer()]
    if not layers:
        raise LayerError("no layers given; name one or more, e.g. conv1_2,conv3_3,conv5_3")
    dn = Deconvnet(net.view, rule=rule, unpool=request.unpool)
    x = to_batch(image if image is not None else DEFAULT_IMAGE, weights.preprocess, size, device=dn.device)
    rows, records = [], []
    target = _target(
        x, image=image, size=size, region=region, at=at, exclude=exclude, cls=cls, token=request.token, scoring=request
    )
    for layer in layers:
        if progress:
            progress(f"projecting {layer}")
        out = dn.project(x, layer, channels=channels, mode=mode, top=top, **target)
        boxes = crop_boxes(dn, out) if mode == "max" else None
        sel = out.selections
        rows.append(
            GridRow(
                layer,
                reconstructions=out.images[0].cpu(),
                boxes=None if boxes is None else boxes[0],
                channels=sel.channels[0].tolist(),
                values=sel.values[0].tolist(),
                field=_field(dn, out.layer),
            )
        )
        records.append(_selections(dn, out) | _target_record(target))
    picture = to_display(x[0].cpu(), weights.preprocess)
    what = "strongest activation" if mode == "max" else "whole feature map"
    title = f"{model_name} ({weights.name}), {what} of each feature map, projected to pixels ({dn.rule.title}"
    title += ")" if dn.unpool == "switches" else f", unpooled: {UNPOOLS[dn.unpool]})"
    title += f"\nmaps {_target_words(target, out.score)}" if _target_words(target) else ""
    fig = layer_grid(picture, rows, weights.preprocess, title=title)
    prov = _provenance("visualize", net, x, image=image, size=size, layers=records)
    return fig, prov | {"rule": dn.rule.name, "unpool": dn.unpool}


def reconstruct(
    net: Network, request: Request, *, stage_view: str = STAGE_VIEW, progress: Status | None = None
) -> tuple[Figure, dict]:
    """Layer-by-layer reconstruction: the input, then every stage of the reverse journey to pixels.

    layer None: the last conv layer. channels None: the strongest feature map; "all": every one; several
    channels are projected together, as one seed. rule: deconvnet, guided or gradient. region, at, exclude,
    cls: as `Deconvnet.project`. With nothing chosen on the built-in photo: the map strongest on its bicycle
    outside the dog, whole (BUILT_IN).
    mode None: "max", or the built-in choice's. stage_view: how the intermediate stages are drawn (render).
    """
    weights, model_name, image, layer = net.weights, net.name, request.image, request.layer
    channels, mode, size, rule = request.channels, request.mode, request.size, request.rule
    region, at, exclude, cls = request.region, request.at, request.exclude, request.cls
    layer = layer or net.view.default_layer()
    # the built-in choice needs receptive-field centres, known here for chains only (targets.centres)
    plain = image is None and channels is None and region is None and at is None and cls is None and not exclude
    if plain and net.view.is_chain:
        region, exclude, mode = BUILT_IN["region"], BUILT_IN["exclude"], mode or BUILT_IN["mode"]
    mode = mode or "max"
    dn = Deconvnet(net.view, rule=rule, unpool=request.unpool)
    x = to_batch(image if image is not None else DEFAULT_IMAGE, weights.preprocess, size, device=dn.device)
    if channels == "all":
        channels = range(layer_shape(dn.view, layer, size=x.shape[-1])[0])
    if progress:
        progress(f"projecting {layer}")
    target = _target(
        x, image=image, size=size, region=region, at=at, exclude=exclude, cls=cls, token=request.token, scoring=request
    )
    out = dn.project(x, layer, channels=channels, mode=mode, top=1, keep_stages=True, together=True, **target)
    stages = [Stage(s.name, s.kind, s.step, s.tensor[0, 0].cpu()) for s in out.stages]
    if not stages:  # the autograd path (a network that is no chain) has no stages yet: the reconstruction alone
        stages = [Stage("pixels", "deconv", out.layer, out.images[0, 0].cpu())]
    chans = out.selections.channels[0].tolist()
    shown = f"feature map {chans[0]}" if len(chans) == 1 else f"{len(chans)} feature maps together"
    title = (
        f"{model_name} ({weights.name}): {layer}, {shown} ({'strongest activation' if mode == 'max' else 'whole map'})"
    )
    title += "" if dn.rule.name == "deconvnet" else f", {dn.rule.title}"
    title += "" if dn.unpool == "switches" else f", unpooled: {UNPOOLS[dn.unpool]}"
    title += f"\nthe map {_target_words(target, out.score)}" if _target_words(target) else ""
    picture = to_display(x[0].cpu(), weights.preprocess)
    fig = reconstruction_figure(picture, stages, weights.preprocess, title=title, stage_view=stage_view)
    chosen = _selections(dn, out) | _target_record(target)
    prov = _provenance("reconstruct", net, x, image=image, size=size, layers=[chosen])
    prov["rule"] = dn.rule.name
    prov["unpool"] = dn.unpool
    prov["stage_view"] = stage_view
    prov["stages"] = [{"name": s.name, "kind": s.kind, "size": list(s.size), "undoes": s.step} for s in out.stages]
    return fig, prov


def decoder(net: Network, request: Request, *, progress: Status | None = None) -> tuple[Figure, dict]:
    """An encoder-decoder's stages forward for one image and one class (Noh et al. Fig. 4 as Noh made it): each
    unpooling, upsampling and deconvolution's activation, its channel contributing most to request.cls's score,
    beside the projection of the same class from request.layer (default: the last decoder stage), whole maps unless
    request.mode says max. The class is scored as `Deconvnet.project` scores it (output, pixels, target_box)."""
    weights, image, size = net.weights, request.image, request.size
    if request.cls is None:
        raise SelectionError("a decoder's stages are shown for a class: give cls", about="class")
    dn = Deconvnet(net.view, rule=request.rule, unpool=request.unpool)
    x = to_batch(image if image is not None else DEFAULT_IMAGE, weights.preprocess, size, device=dn.device)
    target = _target(x, image=image, size=size, cls=request.cls, token=request.token, scoring=request)
    score = ClassScore(request.cls, output=target["output"], pixels=target["pixels"], target=target["target"])
    if progress:
        progress("running the decoder")
    stages, record = decoder_activations(dn.view, x, cls=score)
    layer = request.layer or stages[-1].name
    mode = request.mode or "map"
    if progress:
        progress(f"projecting {layer}")
    out = dn.project(x, layer, mode=mode, top=1, **target)
    channel = int(out.selections.channels[0, 0])
    projected = f"{layer} map {channel} projected\n({dn.rule.title})"
    title = f"{net.name} ({weights.name}): the decoder's stages for {record.words()}"
    title += f"\nforward, and {layer} map {channel} ({'whole' if mode == 'map' else 'strongest activation'}) projected"
    picture = to_display(x[0].cpu(), weights.preprocess)
    fig = decoder_figure(
        picture, stages, out.images[0, 0].cpu(), preprocess=weights.preprocess, title=title, projected=projected
    )
    prov = _provenance("reconstruct", net, x, image=image, size=size, layers=[_selections(dn, out)])
    prov |= {"rule": dn.rule.name, "unpool": dn.unpool, "activations": True, "score": record.record()}
    prov["decoder_stages"] = [
        {"name": s.name, "kind": s.kind, "size": list(s.activation.shape), "channel": s.channel} for s in stages
    ]
    return fig, prov


def occlusion(
    net: Network,
    request: Request,
    *,
    channel: int | None = None,
    occluder: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    progress: Status | None = None,
) -> tuple[Figure, dict]:
    """Occlusion sensitivity (ZF Fig. 7) of one feature map (default: the image's strongest) and, with cls, a class.

    The occluder is the dataset mean colour of the weights' preprocessing; size and stride as `occlusion_maps`.
    layer None: the last conv layer. rule: how the projection panel passes ReLUs (deconvnet, guided, gradient).
    region, at, exclude: watch the map strongest there (`Deconvnet.project`). occluder: the square's side.
    """
    weights, model_name, image, layer = net.weights, net.name, request.image, request.layer
    cls, size, image_size, rule = request.cls, occluder, request.size, request.rule
    region, at, exclude = request.region, request.at, request.exclude
    layer = layer or net.view.default_layer()
    dn = Deconvnet(net.view, rule=rule)
    x = to_batch(image if image is not None else DEFAULT_IMAGE, weights.preprocess, image_size, device=dn.device)
    if progress:
        progress(f"projecting {layer}")
    target = _target(x, image=image, size=image_size, region=region, at=at, exclude=exclude)
    out = dn.project(x, layer, channels=None if channel is None else [channel], mode="max", top=1, **target)
    channel = int(out.selections.channels[0, 0])
    scoring = _target(x, image=image, size=image_size, cls=cls, scoring=request)  # output, pixels, target box
    res = occlusion_maps(
        dn.view,
        x,
        layer,
        channel=channel,
        size=size,
        stride=stride,
        cls=cls,
        output=scoring.get("output"),
        pixels=scoring.get("pixels", "all"),
        target=scoring.get("target"),
        grey=weights.preprocess,
        batch_size=batch_size,
        progress=progress,
    )
    name = None
    if cls is not None:
        name = weights.categories[cls] if weights.categories and cls < len(weights.categories) else f"class {cls}"
    title = f"{model_name} ({weights.name}): occluding the image, watching {layer} map {channel}"
    title += f" and p({name})" if name else ""
    title += f"\np({name}) averaged over {res.score.pixel_words()}, chosen unoccluded" if _dense(res) else ""
    title += "" if dn.rule.name == "deconvnet" else f"; {dn.rule.title} projection"
    picture = to_display(x[0].cpu(), weights.preprocess)
    strongest = float(out.selections.values[0, 0])
    fig = occlusion_figure(
        picture,
        res,
        out.images[0, 0].cpu(),
        strongest=strongest,
        preprocess=weights.preprocess,
        title=title,
        class_name=name,
    )
    prov = _provenance("occlusion", net, x, image=image, size=image_size, layers=[_selections(dn, out)])
    del prov["layers"]

    def summary(m: torch.Tensor, baseline: float) -> dict:
        i, j = divmod(int(m.argmin()), m.shape[1])
        return {
            "unoccluded": baseline,
            "min": float(m.min()),
            "argmin": [int(res.rows[i]), int(res.cols[j])],
            "max": float(m.max()),
            "map": m.tolist(),
        }

    prov |= {
        "layer": layer,
        "module": res.layer,
        "channel": channel,
        "occluder": {
            "size": res.size,
            "stride": res.stride,
            "grey": [round(float(g), 6) for g in res.grey],
            "positions": {"rows": res.rows.tolist(), "cols": res.cols.tolist()},
        },
        "activation": summary(res.activation, res.baseline_activation),
        "projection": _selections(dn, out) | {"channel": channel, "rule": dn.rule.name} | _target_record(target),
    }
    if cls is not None:
        prov["class"] = {"index": cls, "name": name} | summary(res.probability, res.baseline_probability)
        prov["class"]["score"] = res.score.record()
    return fig, prov


def write(
    fig: Figure, provenance: dict, out: str | os.PathLike, *, dpi: int = 150, tables: dict[str, str] | None = None
) -> tuple[Path, ...]:
    """Figure at `out`, its provenance JSON beside it (`NAME.EXT.provenance.json`: each format its own), and any
    tables ({suffix: text}, e.g. {".csv": ...}) named after it (`NAME.csv`): all written, or none. A file beside
    it that deconvviz did not write is never replaced (outputs.check_beside); this figure's old-named record
    (`NAME.provenance.json`) is removed once the new one is in place."""
    out = Path(out)
    meta = provenance_path(out)
    extra = {out.with_suffix(suffix): body.encode() for suffix, body in (tables or {}).items()}
    check_beside(out, extra)
    text = json.dumps({**provenance, "figure": out.name}, indent=2, allow_nan=False) + "\n"
    save(fig, out, dpi=dpi, also={meta: text.encode()} | extra)
    forget_old_provenance(out)
    return out, meta, *extra


def compare(net: Network, request: Request, *, progress: Status | None = None) -> tuple[Figure, dict]:
    """Deconvnet, guided backprop and gradient side by side (Springenberg et al.): the selected feature maps'
    strongest activations (default: the `top` strongest maps; region, at, exclude, cls: as `Deconvnet.project`),
    each projected by every rule, all unpooled by request.unpool; the first rule's selections are the others'."""
    weights, model_name, image, layer = net.weights, net.name, request.image, request.layer
    top, channels, size, cls = request.top, request.channels, request.size, request.cls
    region, at, exclude = request.region, request.at, request.exclude
    layer = layer or net.view.default_layer()
    dn = Deconvnet(net.view, unpool=request.unpool)
    x = to_batch(image if image is not None else DEFAULT_IMAGE, weights.preprocess, size, device=dn.device)
    target = _target(
        x, image=image, size=size, region=region, at=at, exclude=exclude, cls=cls, token=request.token, scoring=request
    )
    outs, chosen = {}, {"channels": channels, "top": top, **target}
    for rule in (RULES[r] for r in COMPARED):
        if progress:
            progress(f"projecting {layer} ({rule.title})")
        outs[rule.title] = out = dn.project(x, layer, mode="max", rule=rule, **chosen)
        chosen = {"channels": out.selections.channels[0], "positions": out.selections.positions}
    first = next(iter(outs.values()))
    if len(first.selections.shape) != 3:
        raise LayerError(f"'{layer}' mixes all positions: no receptive field to crop; choose a conv or pool layer")
    boxes = crop_boxes(dn, first)
    sel = first.selections
    title = f"{model_name} ({weights.name}), {layer}: the same activations projected by three rules"
    title += "" if dn.unpool == "switches" else f" (unpooled: {UNPOOLS[dn.unpool]})"
    title += f"\nmaps {_target_words(target, first.score)}" if _target_words(target) else ""
    fig = compare_figure(
        to_display(x[0].cpu(), weights.preprocess),
        {k: o.images[0].cpu() for k, o in outs.items()},
        boxes[0],
        channels=sel.channels[0].tolist(),
        values=sel.values[0].tolist(),
        field=_field(dn, first.layer),
        preprocess=weights.preprocess,
        title=title,
    )
    prov = _provenance(
        "compare", net, x, image=image, size=size, layers=[_selections(dn, first) | _target_record(target)]
    )
    prov["rules"] = list(COMPARED)
    prov["unpool"] = dn.unpool
    return fig, prov


def sanity(
    net: Network,
    request: Request,
    *,
    channel: int | None = None,
    rules: Sequence[str] = tuple(RULES),
    seed: int = 0,
    progress: Status | None = None,
) -> tuple[Figure, dict, str]:
    """The sanity report of one unit (sanity.py): figure, provenance with every number, and the numbers as CSV."""
    weights, model_name, image, layer = net.weights, net.name, request.image, request.layer
    size = request.size
    layer = layer or net.view.default_layer()
    device = Deconvnet(net.view).device
    x = to_batch(image if image is not None else DEFAULT_IMAGE, weights.preprocess, size, device=device)
    rep = sanity_report(net.view, x, layer, channel=channel, rules=rules, seed=seed, progress=progress)
    labels = [layer_label(net.view, n) for n in rep.randomized]
    titles = {r: RULES[r].title for r in rep.rules}
    fig = sanity_figure(
        to_display(x[0].cpu(), weights.preprocess),
        {titles[r]: rep.images[r] for r in rep.rules},
        rep.box,
        columns=labels,
        scores={titles[r]: [s.spearman_abs for s in rep.cascading[r]] for r in rep.rules},
        ssim={titles[r]: [s.ssim for s in rep.cascading[r]] for r in rep.rules},
        preprocess=weights.preprocess,
        title=f"{model_name} ({weights.name}), {layer} map {rep.channel} at {rep.position}: how much of each picture "
        f"comes from the trained weights (seed {seed})",
        fixed={titles[r]: (rep.fixed_images[r], rep.fixed_positions[r].spearman_abs) for r in rep.rules},
    )
    rows = [("rule", "test", "randomized", "spearman_abs", "spearman", "ssim")]
    for r in rep.rules:
        for test, sims in (("cascading", rep.cascading[r]), ("independent", rep.independent[r])):
            rows += [(r, test, lab, *_numbers(s)) for lab, s in zip(labels, sims, strict=True)]
        rows += [(r, "specificity", "", *_numbers(rep.specificity[r])), (r, "recovery", "", *_numbers(rep.recovery[r]))]
        rows.append((r, "fixed_positions", "", *_numbers(rep.fixed_positions[r])))
    csv = "".join(",".join("" if v is None else str(v) for v in row) + "\n" for row in rows)
    prov = _unit_provenance("sanity", net, x, image=image, size=size, layer=layer, rep=rep, seed=seed)
    prov |= {
        "rules": rep.rules,
        "randomized": labels,
        "seeded_at": "the unit's pre-activation (the step before its ReLU), with its trained value",
        "specificity_units": rep.specificity_units,
        "similarity": "inside the receptive field; Spearman of |r| and r summed over colour channels, SSIM of |r|",
        "results": {
            r: {
                "cascading": [asdict(s) for s in rep.cascading[r]],
                "independent": [asdict(s) for s in rep.independent[r]],
                "specificity": asdict(rep.specificity[r]),
                "recovery": asdict(rep.recovery[r]),
                "fixed_positions": asdict(rep.fixed_positions[r]),
            }
            for r in rep.rules
        },
    }
    return fig, prov, csv


def ablate(
    net: Network, request: Request, *, channel: int | None = None, seed: int = 0, progress: Status | None = None
) -> tuple[Figure, dict, str]:
    """Mahendran & Vedaldi's ablation of one unit (ablation.py): figure, provenance with every number, and CSV.
    request.layer None: pool5 where the network has one (VGG), else its default layer."""
    weights, model_name, image, size = net.weights, net.name, request.image, request.size
    layer = request.layer or ("pool5" if "pool5" in net.layer_names else net.default_layer)
    device = Deconvnet(net.view).device
    x = to_batch(image if image is not None else DEFAULT_IMAGE, weights.preprocess, size, device=device)
    rep = ablation_report(net.view, x, layer, channel=channel, seed=seed, progress=progress)

    def words(s, what: str) -> str:
        return f"{what} ρ {_shown(s.spearman_abs)} S {_shown(s.ssim)}"

    panels = []
    for i, v in enumerate(rep.variants):
        above = words(rep.vs_reference[i], "vs ZF") + "\n" + words(rep.vs_edges[i], "edges")
        below = words(rep.vs_randomized[i], "vs trained")
        panels.append(AblationPanel(v.title, rep.images[i], rep.randomized_images[i], above, below))
    note = (
        "ρ: Spearman rank correlation of |r|, S: SSIM of |r| (colour channels summed, each scaled to its maximum), "
        "inside the unit's receptive field; vs ZF: against the deconvnet with switches (Zeiler & Fergus), edges: "
        "against the input's Sobel edge map, vs trained: the same variant through the trained weights. Randomized: "
        f"every layer up to {layer} re-initialized (seed {seed}), the unit seeded with its trained value. "
        "Projections: mid-grey = 0, contrast: 99.9th percentile of |r| per panel"
    )
    title = (
        f"{model_name} ({weights.name}), {layer} map {rep.channel} at {rep.position}: what makes the picture, "
        "the ReLU rule or the switches? (Mahendran & Vedaldi 2016, Fig. 3)"
    )
    edges = edge_map(x[0].cpu())
    fig = ablation_figure(
        to_display(x[0].cpu(), weights.preprocess),
        edges / edges.max().clamp_min(1e-12),
        panels,
        box=rep.box,
        preprocess=weights.preprocess,
        title=title,
        note=note,
    )
    comparisons = {"reference": rep.vs_reference, "randomized": rep.vs_randomized, "edges": rep.vs_edges}
    rows = [("variant", "rule", "unpool", "against", "spearman_abs", "spearman", "ssim")]
    for i, v in enumerate(rep.variants):
        rows += [(v.name, v.rule, v.unpool, against, *_numbers(sims[i])) for against, sims in comparisons.items()]
    csv = "".join(",".join("" if val is None else str(val) for val in row) + "\n" for row in rows)
    prov = _unit_provenance("ablate", net, x, image=image, size=size, layer=layer, rep=rep, seed=seed)
    prov |= {
        "randomized": rep.randomized,
        "reference": REFERENCE.name,
        "similarity": "inside the receptive field; Spearman of |r| and r summed over colour channels, SSIM of |r|",
        "against": {
            "reference": f"the {REFERENCE.name} picture through the trained weights",
            "randomized": "the same variant through weights re-initialized up to the layer (seeded), the "
            "unit seeded at its pre-activation with its trained value",
            "edges": "the Sobel edge map of the input's channel mean",
        },
        "variants": [
            {
                "name": v.name,
                "rule": v.rule,
                "unpool": v.unpool,
                **{against: asdict(sims[i]) for against, sims in comparisons.items()},
            }
            for i, v in enumerate(rep.variants)
        ],
    }
    return fig, prov, csv


def _shown(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _numbers(s) -> tuple:
    return tuple(None if v is None else round(v, 6) for v in (s.spearman_abs, s.spearman, s.ssim))


def filters(net: Network, *, layer: str | None = None) -> tuple[Figure, dict]:
    """First-layer filters as colour patches (ZF Fig. 6), in RGB image terms (filters.first_layer_filters).
    layer None: the first convolution, whatever its name."""
    weights, model_name = net.weights, net.name
    layer = layer or first_conv_name(net.view)
    module, templates = first_layer_filters(net.view, layer, preprocess=weights.preprocess)
    k, _, kh, kw = templates.shape
    undone = "BGR order and 0-255 scale" if weights.preprocess.bgr else "per-channel std"
    title = (
        f"{model_name} ({weights.name}): the {k} filters of {layer} ({kh}x{kw}) as RGB templates (the weights' "
        f"{undone} undone);\neach scaled to its own largest |weight|, mid-grey = 0"
    )
    prov = {
        "command": "filters",
        "deconvviz": __version__,
        "torch": torch.__version__.split("+")[0],
        "model": _network_record(net)["spec"],
        "network": _network_record(net),
        "weights": _weights_record(weights),
        "layer": layer,
        "module": module,
        "filters": k,
        "kernel": [kh, kw],
        "normalization": "each filter: 0.5 + w / (2 max|w|)",
        "largest_abs_weight": [round(float(v), 6) for v in templates.abs().flatten(1).amax(1)],
    }
    return filter_grid(templates, title), prov


def invariance(
    net: Network, request: Request, *, transform: str = "rotate", progress: Status | None = None
) -> tuple[Figure, dict]:
    """ZF Fig. 5: distances of feature vectors to the original's over a range of `transform`, per layer, and the
    probability of the image's top class where the weights have a classifier."""
    model, weights, model_name, image = net.module, net.weights, net.name, request.image
    layers, size = request.layers, request.size
    x = to_batch(
        image if image is not None else DEFAULT_IMAGE,
        weights.preprocess,
        size,
        device=next(model.parameters()).device,
    )
    res = invariance_sweep(net.view, x, transform, layers=layers, progress=progress)
    picks = sorted({round(i * (len(res.amounts) - 1) / 4) for i in range(5)})
    unit = UNITS[transform]
    thumbs = [
        (f"{float(res.amounts[i]):g} {unit.split(',')[0]}", to_display(res.images[i], weights.preprocess))
        for i in picks
    ]
    curves = [
        (f"{layer} (|f(x)| = {float(n):.3g})", d, "|f(T x) - f(x)|")
        for layer, d, n in zip(res.layers, res.distances, res.norms, strict=True)
    ]
    name = None
    if res.top_class is not None:
        cats = weights.categories
        name = cats[res.top_class] if cats and res.top_class < len(cats) else f"class {res.top_class}"
        curves.append((f"p({name})", res.probabilities, "probability"))
    title = f"{model_name} ({weights.name}): feature vectors of the image under {transform} (Zeiler & Fergus Fig. 5)"
    fig = invariance_figure(thumbs, res.amounts, f"{transform} ({unit})", curves=curves, title=title)
    prov = _provenance("invariance", net, x, image=image, size=size, layers=[])
    del prov["layers"]
    prov |= {
        "transform": transform,
        "unit": unit,
        "fill": "dataset mean colour (network input 0)",
        "amounts": [round(float(a), 6) for a in res.amounts],
        "distances": {layer: [float(v) for v in d] for layer, d in zip(res.layers, res.distances, strict=True)},
        "norms": {layer: float(n) for layer, n in zip(res.layers, res.norms, strict=True)},
    }
    if res.top_class is not None:
        prov["class"] = {"index": res.top_class, "name": name, "probabilities": res.probabilities.tolist()}
    return fig, prov
