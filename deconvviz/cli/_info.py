"""The commands that only print: layers (a model's layer table) and models (the weights sets known)."""

from __future__ import annotations

from dataclasses import replace

import typer

from ._exits import _errors
from ._options import Debug, Model, ShapeSize, ShapeWeights, _Choice


def layers(
    model: Model = None,
    weights: ShapeWeights = "random",
    size: ShapeSize = 224,
    debug: Debug = False,
) -> None:
    """Every layer you can project from, with its output shape, receptive field size and stride for an input size,
    and how each rule passes it (ReLU rule, linear, switches, a named convention, or no rule)."""
    with _errors(debug):
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
        maps = any(r.maps for r in rows)  # token and channels-last layers: their maps on the grid
        head = ["name", "module", "type", "output shape", *(["feature maps"] if maps else []), "rf size", "stride"]
        body = [
            [
                r.alias,
                r.module,
                r.kind,
                "x".join(str(d) for d in r.shape),
                *([r.maps] if maps else []),
                r.rf,
                r.stride,
                *(r.columns.get(k, "") for k in extra),
            ]
            for r in rows
        ]
        numbers = {len(head) - 2, len(head) - 1}  # rf size and stride, right-aligned
        for line in _aligned([[*head, *extra], *body], numbers):
            typer.echo(line)


def _aligned(table: list[list[str]], right: set[int]) -> list[str]:
    """Rows of text cells as lines, each column as wide as its widest cell (left-aligned, or right-aligned where
    its index is in `right`), two spaces apart."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]

    def cell(i: int, text: str) -> str:
        return text.rjust(widths[i]) if i in right else text.ljust(widths[i])

    return ["  ".join(cell(i, text) for i, text in enumerate(row)).rstrip() for row in table]


def models(debug: Debug = False) -> None:
    """The weights sets deconvviz knows (one model card each in models/, and yours in $DECONVVIZ_MODELS) and
    which load offline here; and what Hugging Face models (hf:) need."""
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
        _segmentation_models()
        from ..networks.huggingface import models_line

        typer.echo(models_line(), err=True)  # beside the table, which stays one card a line


def _segmentation_models() -> None:
    """torchvision's segmentation models, named by spec: their weights are torchvision's, not a card's."""
    from ..networks.architectures import segmentation_names
    from ..networks.network import torchvision_weights_cached

    typer.echo(
        "\nsegmentation networks by spec (--model torchvision:NAME; --weights torchvision: COCO with the 21 VOC "
        "classes, downloaded once; --weights random: offline):"
    )
    specs = [f"torchvision:{n}" for n in segmentation_names()]
    wide = max(len(s) for s in specs)
    typer.echo(f"{'model':<{wide}} {'classes':<10} {'offline here':<12} output")
    for spec in specs:
        offline = "yes" if torchvision_weights_cached(spec.split(":")[1]) else "random only"
        typer.echo(f"{spec:<{wide}} {'21 (VOC)':<10} {offline:<12} {{'out': (N, 21, H, W), ...}}")
