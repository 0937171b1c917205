"""What one command asks of a network, as one object: the image, the layers and how to choose activations."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .boxes import Box, Point


@dataclass(frozen=True)
class Request:
    """One command's choices, passed by name from the CLI (or a script) to the figure functions.

    layers None: the network's default layer. channels: feature maps, "all" (reconstruct), or None (the `top`
    strongest). region/exclude: Boxes (Box.pixels, Box.fractions) or names from the image's sidecar; at: a Point
    (Point.pixels, Point.fractions); plain tuples are refused (their unit would be a guess). cls: choose the maps
    contributing most to this class. rule: how ReLUs pass the signal back; unpool: how pools are undone. token: on a
    token layer (ViT, DeiT), a prefix token selected alone (Deconvnet.project's token). output, pixels, target_box: how
    the class is scored (Deconvnet.project's output, pixels and target; target_box may name a sidecar region)."""

    image: str | os.PathLike | None = None  # None: the built-in bicycle
    layers: Sequence[str] | None = None
    channels: Sequence[int] | str | None = None
    top: int = 9
    mode: str | None = "max"
    region: Box | str | None = None
    at: Point | None = None
    exclude: Sequence[Box | str] = ()
    cls: int | None = None
    size: int | None = 224
    rule: str = "deconvnet"
    unpool: str = "switches"
    token: str | None = None  # a token layer's prefix token alone ("cls", "dist", "reg0", an index): as project's
    output: str | int | None = None  # with cls: the part of the model's result scored (project's output)
    pixels: str = "all"  # with cls, on a map of class scores: all, or predicted (project's pixels)
    target_box: Box | str | None = None  # with cls, on a map: only its pixels in this box (project's target)

    @property
    def layer(self) -> str | None:
        """The one layer of a single-layer command (None: the network's default)."""
        return self.layers[0] if self.layers else None

    @property
    def target(self) -> dict:
        """The region, point and excluded boxes, as keywords."""
        return {"region": self.region, "at": self.at, "exclude": tuple(self.exclude or ())}
