"""Boxes and points on the preprocessed input, with their unit said: pixels or fractions of the side.

Coordinates are continuous input pixels: pixel (x, y) covers [x, x+1) x [y, y+1), so Box.pixels(0, 0, 224, 224)
is a whole 224x224 input. A plain tuple is refused by the Python API, never guessed (the CLI has its own
spelling: `0,0,112,224` pixels, `frac:0.5,0,1,1` fractions).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ..errors import SelectionError

UNITS = ("px", "fraction")


@dataclass(frozen=True)
class Box:
    """A box x0 <= x < x1, y0 <= y < y1 on the preprocessed input, in pixels ("px") or fractions of the side
    ("fraction", 0 to 1); name: what it is called (a sidecar region). Make one with Box.pixels or Box.fractions.

    The unit is always said, never guessed from the numbers: Box.pixels(0, 0, 1, 1) is one pixel and
    Box.fractions(0, 0, 1, 1) the whole image. The Python API refuses plain tuples for this reason."""

    x0: float
    y0: float
    x1: float
    y1: float
    unit: str = "px"
    name: str = ""

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise SelectionError(f"a Box's unit must be 'px' or 'fraction', got {self.unit!r}", about="region")
        vals = (self.x0, self.y0, self.x1, self.y1)
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in vals):
            raise SelectionError(f"a Box needs 4 numbers x0, y0, x1, y1, got {vals!r}", about="region")

    @classmethod
    def pixels(cls, x0: float, y0: float, x1: float, y1: float, name: str = "") -> Box:
        """A box in input pixels of the preprocessed image (0, 0, 224, 224: all of a 224x224 input)."""
        return cls(x0, y0, x1, y1, unit="px", name=name)

    @classmethod
    def fractions(cls, x0: float, y0: float, x1: float, y1: float, name: str = "") -> Box:
        """A box in fractions 0 to 1 of the input's width (x) and height (y): (0.5, 0, 1, 1) is the right half."""
        return cls(x0, y0, x1, y1, unit="fraction", name=name)

    def in_pixels(self, width: int, height: int, *, what: str = "region") -> Box:
        """This box in input pixels of a width x height input; checked to lie inside it and not be empty.
        what: the argument it came from ("region", "exclude"), for the error."""
        vals = [self.x0, self.y0, self.x1, self.y1]
        if self.unit == "fraction":
            shown = ",".join(f"{v:g}" for v in vals)
            if not all(0 <= v <= 1 for v in vals):
                raise SelectionError(f"{what} fractions {shown} must lie in 0..1 of the side", about=what)
            vals = [float(v) * s for v, s in zip(vals, (width, height, width, height), strict=True)]
        box = Box.pixels(*(float(v) for v in vals), name=self.name)
        _check_inside(vals, width, height, what)
        if not (box.x0 < box.x1 and box.y0 < box.y1):
            fix = f"give x0 < x1 and y0 < y1 within the {width}x{height} input"
            raise SelectionError(f"{what} {box} is empty; {fix}", about=what)
        return box

    def holds(self, rows: Tensor, cols: Tensor) -> Tensor:
        """(h, w) whether each place (rows[i], cols[j]), in the box's unit, lies in the box: x0 <= x < x1."""
        return ((rows >= self.y0) & (rows < self.y1))[:, None] & ((cols >= self.x0) & (cols < self.x1))[None, :]

    def __str__(self) -> str:
        box = ",".join(f"{v:g}" for v in (self.x0, self.y0, self.x1, self.y1))
        box = f"frac:{box}" if self.unit == "fraction" else box
        return f"'{self.name}' ({box})" if self.name else box


@dataclass(frozen=True)
class Point:
    """A point on the preprocessed input, in pixels ("px": Point.pixels(x, y) is the centre of pixel x, y) or
    fractions of the side ("fraction": Point.fractions(0.5, 0.5) is the image's centre)."""

    x: float
    y: float
    unit: str = "px"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise SelectionError(f"a Point's unit must be 'px' or 'fraction', got {self.unit!r}", about="at")
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (self.x, self.y)):
            raise SelectionError(f"a Point needs 2 numbers x, y, got {(self.x, self.y)!r}", about="at")

    @classmethod
    def pixels(cls, x: float, y: float) -> Point:
        """Pixel x, y of the input; the point is that pixel's centre, (x + 0.5, y + 0.5) in continuous pixels."""
        return cls(x, y, unit="px")

    @classmethod
    def fractions(cls, x: float, y: float) -> Point:
        """Fractions 0 to 1 of the input's width (x) and height (y)."""
        return cls(x, y, unit="fraction")

    def in_pixels(self, width: int, height: int) -> tuple[float, float]:
        """The point in continuous input pixels (x, y) of a width x height input; checked to lie inside it."""
        if self.unit == "fraction":
            if not (0 <= self.x <= 1 and 0 <= self.y <= 1):
                shown = f"{self.x:g},{self.y:g}"
                raise SelectionError(f"point fractions {shown} must lie in 0..1 of the side", about="at")
            return float(self.x) * width, float(self.y) * height
        _check_inside([self.x, self.y], width, height, "point")
        return self.x + 0.5, self.y + 0.5

    def __str__(self) -> str:
        shown = f"{self.x:g},{self.y:g}"
        return f"frac:{shown}" if self.unit == "fraction" else shown


def _check_inside(vals: Sequence[float], width: int, height: int, what: str) -> None:
    sides = [width, height] * (len(vals) // 2)
    if not all(0 <= v <= s for v, s in zip(vals, sides, strict=True)):
        shown = ",".join(f"{v:g}" for v in vals)
        fix = f"use x in 0..{width} and y in 0..{height} (pixels), or fractions 0..1 of the side"
        raise SelectionError(f"{what} {shown} leaves the {width}x{height} input; {fix}", about=_ABOUT[what])


_ABOUT = {"region": "region", "exclude": "exclude", "point": "at"}


def region_box(box: Box, width: int, height: int, *, what: str = "region") -> Box:
    """A Box as a Box in input pixels of a width x height input; checked. A plain tuple is refused: its unit
    would be a guess. what: the argument it came from ("region", "exclude"), for the error."""
    if not isinstance(box, Box):
        raise SelectionError(
            f"{what} must be a Box, got {box!r}: say its unit with Box.pixels(x0, y0, x1, y1) or "
            "Box.fractions(x0, y0, x1, y1)",
            about=what,
        )
    return box.in_pixels(width, height, what=what)


def point(at: Point, width: int, height: int) -> tuple[float, float]:
    """A Point in continuous input pixels (x, y); checked. A plain tuple is refused: its unit would be a guess."""
    if not isinstance(at, Point):
        raise SelectionError(
            f"at must be a Point, got {at!r}: say its unit with Point.pixels(x, y) or Point.fractions(x, y)",
            about="at",
        )
    return at.in_pixels(width, height)
