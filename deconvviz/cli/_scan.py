"""The commands over many images or many pages: scan (a folder's strongest images per feature map, resumable,
shared out under torchrun), site (a static site of a finished scan) and explore (a static site of one image)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..engine.request import Request
from ..errors import DeconvvizError
from ._exits import _errors
from ._options import (
    OUTPUTS,
    CheckpointEvery,
    Debug,
    Device,
    ExploreLayers,
    ExploreTop,
    Folder,
    Image,
    LayerOpt,
    MaxMemory,
    Model,
    PerPosition,
    Quiet,
    RuleChoice,
    RuleOpt,
    RunFolder,
    ScanBatch,
    ScanChannels,
    ScanLayers,
    ScanOut,
    ScanTop,
    SiteOut,
    Size,
    UnpoolChoice,
    UnpoolOpt,
    WeightsOpt,
    Workers,
    _channels,
    _check_size,
    _Choice,
    _layer_names,
)
from ._progress import Progress


def scan(
    folder: Folder,
    layer: LayerOpt = None,
    layers: ScanLayers = None,
    channels: ScanChannels = None,
    top: ScanTop = 9,
    out: ScanOut = None,
    batch_size: ScanBatch = 32,
    workers: Workers = None,
    checkpoint_every: CheckpointEvery = 1000,
    max_memory: MaxMemory = 4.0,
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
        from ..render import figures, scan_figures

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
            with Progress(quiet, rate={"scanning": "images", "projecting": "images", "drawing": "maps"}) as bar:
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
                    draw=scan_figures,
                )
        if result.written and not quiet:
            typer.echo(f"wrote {out / 'report.json'} and {len(result.written) - 1} figures and projections in {out}")


def _wrote_site(summary) -> None:
    """The line site and explore end with: what was written, and the page to open."""
    typer.echo(
        f"wrote {summary.pages} pages ({summary.files} files, {summary.bytes / 1e6:.1f} MB); "
        f"open {summary.out / 'index.html'}"
    )


def site(
    run: RunFolder,
    out: SiteOut = Path("site"),
    device: Device = "auto",
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """A static HTML site of a finished scan: index, a page per layer (sortable, filterable unit tiles) and a page
    per unit (LAYER/unit-C.html: top-k projections beside their patches, stages, previous/next). Opens from file://."""
    with _errors(debug):
        from ..site import scan_site

        with Progress(quiet) as bar:
            summary = scan_site(run, out, device=device, progress=bar, verbose=not quiet)
        if not quiet:
            _wrote_site(summary)


def explore(
    image: Image = None,
    out: SiteOut = Path("explore"),
    layers: ExploreLayers = None,
    top: ExploreTop = 9,
    per_position: PerPosition = 5,
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
        from ..site import explore_site

        _check_size(size)
        names = _layer_names(None, layers)
        choice = _Choice(model, weights, device)
        figures.check_request(choice.view, Request(image, names or [], top=top, size=size), spatial=True)
        owned(out, SITE_MARKER, what="site")
        with locked(out):  # a second run into `out` is refused before the network loads
            network = load_network(choice.spec, weights, device, verbose=not quiet)
            with Progress(quiet) as bar:
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
        if not quiet:
            _wrote_site(summary)
