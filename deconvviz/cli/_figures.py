"""The commands that write one figure and its provenance: visualize, reconstruct, occlusion, compare, sanity,
ablate, filters and invariance. Each checks its arguments on the network's skeleton before the weights load,
then hands one `Request` to `render.figures` and writes what comes back (`_figure`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import typer

from ..engine.request import Request
from ..errors import DeconvvizError
from ._exits import _errors
from ._options import (
    OUTPUTS,
    AblateLayer,
    AblateOut,
    ActivationsOpt,
    AtOpt,
    Channels,
    ClassOpt,
    CompareOut,
    CompareTop,
    Debug,
    Device,
    Dpi,
    ExcludeOpt,
    FiltersLayer,
    FiltersOut,
    GridLayers,
    Image,
    InvarianceLayers,
    InvarianceOut,
    LayerOpt,
    Mode,
    ModeChoice,
    Model,
    OccluderSize,
    OcclusionBatch,
    OcclusionClass,
    OcclusionOut,
    OutputOpt,
    PixelsChoice,
    PixelsOpt,
    Quiet,
    ReconstructChannels,
    ReconstructMode,
    ReconstructOut,
    RegionOpt,
    RuleChoice,
    RuleOpt,
    SanityOut,
    SanityRules,
    Seed,
    Size,
    StageView,
    StageViewOpt,
    Stride,
    TargetBoxOpt,
    TokenOpt,
    Top,
    Transform,
    TransformChoice,
    UnitChannel,
    UnpoolChoice,
    UnpoolOpt,
    VisualizeOut,
    WatchedChannel,
    WeightsOpt,
    _channels,
    _check_size,
    _Choice,
    _layer_names,
    _scoring,
    _targets,
)
from ._progress import Progress


@dataclass(frozen=True)
class _Output:
    """Where a figure goes: --out (None: default(provenance)), its resolution, and whether to be quiet."""

    out: Path | None
    default: object  # provenance -> Path
    dpi: int = 150
    quiet: bool = False
    table_suffixes: tuple[str, ...] = ()  # the tables written beside the figure (.csv)

    @property
    def tables(self) -> list[Path]:
        return [self.out.with_suffix(s) for s in self.table_suffixes] if self.out is not None else []


def _figure(choice: _Choice, request, output: _Output, make) -> None:
    """Load the network, make (figure, provenance, *tables) with make(net, status), write them atomically."""
    out, image, dpi, quiet = output.out, request.image, output.dpi, output.quiet
    from ..outputs import check_beside, check_target, check_writable, provenance_path
    from ..render import figures
    from ..render.draw import check_dpi, figure_format

    if out is not None:  # bad arguments fail before any work
        figure_format(out)
        for target in (out, provenance_path(out)):
            check_target(target)
            check_writable(target)
            if image is not None and target.exists() and target.resolve() == Path(image).resolve():
                raise DeconvvizError(f"--out '{out}' would overwrite the input image; choose another --out")
        check_beside(out, output.tables)
    check_dpi(dpi)
    _check_size(request.size)
    with Progress(quiet) as status:
        net = choice.load(quiet, status)
        fig, prov, *tables = make(net, status)
        status("writing figure")
        paths = figures.write(fig, prov, out or output.default(prov), dpi=dpi, tables=tables[0] if tables else None)
    if not quiet:
        for p in paths:
            typer.echo(f"wrote {p}")


def visualize(
    image: Image = None,
    layer: LayerOpt = None,
    layers: GridLayers = None,
    top: Top = 9,
    channels: Channels = None,
    mode: Mode = ModeChoice.max,
    rule: RuleOpt = RuleChoice.deconvnet,
    unpool: UnpoolOpt = UnpoolChoice.switches,
    region: RegionOpt = None,
    at: AtOpt = None,
    exclude: ExcludeOpt = None,
    class_: ClassOpt = None,
    output: OutputOpt = None,
    pixels: PixelsOpt = PixelsChoice.all,
    target_box: TargetBoxOpt = None,
    token: TokenOpt = None,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: VisualizeOut = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Grid of feature maps of a layer: each projection to pixels beside its image patch (ZF Fig. 2)."""
    with _errors(debug):
        from ..render import figures

        names = _layer_names(layer, layers)
        if (channels or "").strip().lower() == "all":
            raise DeconvvizError(
                "visualize draws a grid, too small for every map: give --top N or --channels 12,40 "
                "(all maps together: deconvviz reconstruct --channels all)"
            )
        choice = _Choice(model, weights, device)
        names = names or [choice.default_layer]
        request = Request(
            image,
            names,
            _channels(channels),
            top,
            mode.value,
            cls=class_,
            size=size,
            rule=rule.value,
            unpool=unpool.value,
            token=token,
            **_targets(region, at, exclude),
            **_scoring(output, pixels, target_box),
        )
        figures.check_request(choice.view, request, name=choice.name, class_chooses=True)
        default = OUTPUTS / f"visualize-{'_'.join(names)}.png"
        _figure(
            choice,
            request,
            _Output(out, lambda _: default, dpi, quiet),
            lambda net, status: figures.visualize(net, request, progress=status),
        )


def reconstruct(
    image: Image = None,
    layer: LayerOpt = None,
    channels: ReconstructChannels = None,
    mode: ReconstructMode = None,
    rule: RuleOpt = RuleChoice.deconvnet,
    unpool: UnpoolOpt = UnpoolChoice.switches,
    region: RegionOpt = None,
    at: AtOpt = None,
    exclude: ExcludeOpt = None,
    class_: ClassOpt = None,
    output: OutputOpt = None,
    pixels: PixelsOpt = PixelsChoice.all,
    target_box: TargetBoxOpt = None,
    token: TokenOpt = None,
    stage_view: StageViewOpt = StageView.channel,
    activations: ActivationsOpt = False,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: ReconstructOut = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Layer-by-layer reconstruction: the input, then each unpooling and deconv stage down to pixels."""
    with _errors(debug):
        from ..render import figures

        every = (channels or "").strip().lower() == "all"
        choice = _Choice(model, weights, device)
        name = layer or choice.default_layer
        request = Request(
            image,
            None if activations and layer is None else [name],  # --activations: the last decoder stage
            "all" if every else _channels(channels),
            1,
            mode and mode.value,
            cls=class_,
            size=size,
            rule=rule.value,
            unpool=unpool.value,
            token=token,
            **_targets(region, at, exclude),
            **_scoring(output, pixels, target_box),
        )
        figures.check_request(choice.view, request, name=choice.name, class_chooses=True)
        if activations:
            if class_ is None:
                raise DeconvvizError("--activations shows a decoder's stages for a class: give --class too")
            figures.check_decoder(choice.view, size)

        def make(net, status):
            if activations:
                return figures.decoder(net, request, progress=status)
            return figures.reconstruct(net, request, stage_view=stage_view.value, progress=status)

        default = OUTPUTS / f"reconstruct-{'decoder' if activations else name}.png"
        _figure(choice, request, _Output(out, lambda _: default, dpi, quiet), make)


def occlusion(
    image: Image = None,
    layer: LayerOpt = None,
    channel: WatchedChannel = None,
    class_: OcclusionClass = None,
    output: OutputOpt = None,
    pixels: PixelsOpt = PixelsChoice.all,
    target_box: TargetBoxOpt = None,
    occluder_size: OccluderSize = None,
    stride: Stride = None,
    batch_size: OcclusionBatch = 32,
    rule: RuleOpt = RuleChoice.deconvnet,
    region: RegionOpt = None,
    at: AtOpt = None,
    exclude: ExcludeOpt = None,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: OcclusionOut = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Slide a grey square over the image: a feature map's total activation and a class's probability at each
    position, beside the map's strongest activation projected to pixels (ZF Fig. 7)."""
    with _errors(debug):
        from ..render import figures

        choice = _Choice(model, weights, device)
        name = layer or choice.default_layer
        request = Request(
            image,
            [name],
            None if channel is None else [channel],
            1,
            cls=class_,
            size=size,
            rule=rule.value,
            **_targets(region, at, exclude),
            **_scoring(output, pixels, target_box),
        )
        figures.check_request(choice.view, request, name=choice.name, spatial=True)

        def make(net, status):
            return figures.occlusion(
                net,
                request,
                channel=channel,
                occluder=occluder_size,
                stride=stride,
                batch_size=batch_size,
                progress=status,
            )

        default = lambda prov: OUTPUTS / f"occlusion-{name}-c{prov['channel']}.png"  # noqa: E731
        _figure(choice, request, _Output(out, default, dpi, quiet), make)


def compare(
    image: Image = None,
    layer: LayerOpt = None,
    top: CompareTop = 4,
    channels: Channels = None,
    unpool: UnpoolOpt = UnpoolChoice.switches,
    region: RegionOpt = None,
    at: AtOpt = None,
    exclude: ExcludeOpt = None,
    class_: ClassOpt = None,
    output: OutputOpt = None,
    pixels: PixelsOpt = PixelsChoice.all,
    target_box: TargetBoxOpt = None,
    token: TokenOpt = None,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: CompareOut = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Deconvnet, guided backprop and gradient side by side: each selected activation projected by every rule."""
    with _errors(debug):
        from ..render import figures

        choice = _Choice(model, weights, device)
        name = layer or choice.default_layer
        request = Request(
            image,
            [name],
            _channels(channels),
            top,
            cls=class_,
            size=size,
            unpool=unpool.value,
            token=token,
            **_targets(region, at, exclude),
            **_scoring(output, pixels, target_box),
        )
        figures.check_request(choice.view, request, name=choice.name, spatial=True, class_chooses=True)
        _figure(
            choice,
            request,
            _Output(out, lambda _: OUTPUTS / f"compare-{name}.png", dpi, quiet),
            lambda net, status: figures.compare(net, request, progress=status),
        )


def _unit_report(choice: _Choice, request: Request, report, output: _Output) -> None:
    """sanity and ablate: one unit's figure, its .provenance.json and a .csv, all checked before the weights
    load. report(net, request, progress=...) -> (figure, provenance, csv)."""
    from ..outputs import check_target
    from ..render import figures

    figures.check_request(choice.view, request, name=choice.name, spatial=True)
    output = replace(output, table_suffixes=(".csv",))
    for table in output.tables:
        check_target(table)

    def make(net, status):
        fig, prov, csv = report(net, request, progress=status)
        return fig, prov, {".csv": csv}

    _figure(choice, request, output, make)


def sanity(
    image: Image = None,
    layer: LayerOpt = None,
    channel: UnitChannel = None,
    rules: SanityRules = "deconvnet,guided,gradient",
    seed: Seed = 0,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: SanityOut = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """How much of a picture comes from the network: the same unit projected after re-initializing the weights
    from the layer down (cascading) and one layer at a time (independent), unit specificity and image recovery."""
    with _errors(debug):
        from ..engine.rules import get_rule
        from ..render import figures

        chosen = list(dict.fromkeys(get_rule(r.strip()).name for r in rules.split(",") if r.strip()))
        if not chosen:
            raise DeconvvizError(f"--rules '{rules}' names no rule; give e.g. deconvnet,guided,gradient")
        choice = _Choice(model, weights, device)
        name = layer or choice.default_layer
        request = Request(image, [name], None if channel is None else [channel], 1, size=size)
        report = partial(figures.sanity, channel=channel, rules=chosen, seed=seed)
        _unit_report(choice, request, report, _Output(out, lambda _: OUTPUTS / f"sanity-{name}.png", dpi, quiet))


def ablate(
    image: Image = None,
    layer: AblateLayer = None,
    channel: UnitChannel = None,
    seed: Seed = 0,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: AblateOut = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """What makes a deconvnet picture (Mahendran & Vedaldi 2016): one unit drawn by every ReLU rule with the switches
    and with fixed positions, and by nearest and bilinear upsampling, through trained and randomized weights."""
    with _errors(debug):
        from ..render import figures

        choice = _Choice(model, weights, device)
        name = layer or ("pool5" if "pool5" in choice.view.layer_names() else choice.default_layer)
        request = Request(image, [name], None if channel is None else [channel], 1, size=size)
        report = partial(figures.ablate, channel=channel, seed=seed)
        _unit_report(choice, request, report, _Output(out, lambda _: OUTPUTS / f"ablate-{name}.png", dpi, quiet))


def filters(
    layer: FiltersLayer = None,
    model: Model = None,
    weights: WeightsOpt = "auto",
    out: FiltersOut = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """The first layer's filters as colour patches, in RGB image terms (ZF Fig. 6)."""
    with _errors(debug):
        from ..analysis.filters import first_conv, first_conv_name
        from ..render import figures

        choice = _Choice(model, weights, "cpu")
        layer = layer or first_conv_name(choice.view)
        first_conv(choice.view, layer)
        _figure(
            choice,
            Request(),
            _Output(out, lambda _: OUTPUTS / f"filters-{layer}.png", dpi, quiet),
            lambda net, status: figures.filters(net, layer=layer),
        )


def invariance(
    image: Image = None,
    transform: Transform = TransformChoice.rotate,
    layers: InvarianceLayers = None,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: InvarianceOut = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """How far feature vectors move, and the top class's probability, as the image is shifted, scaled or rotated
    (ZF Fig. 5)."""
    with _errors(debug):
        from ..render import figures

        choice = _Choice(model, weights, device)
        request = Request(image, _layer_names(None, layers), top=1, size=size)
        figures.check_request(choice.view, Request(image, request.layers or [], top=1, size=size))
        default = OUTPUTS / f"invariance-{transform.value}.png"
        _figure(
            choice,
            request,
            _Output(out, lambda _: default, dpi, quiet),
            lambda net, status: figures.invariance(net, request, transform=transform.value, progress=status),
        )
