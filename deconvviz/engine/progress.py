"""The two kinds of progress callback that long computations above the engine report to (the CLI passes its one
progress display, which takes both): types only, declared once, low in the layers, for analysis, render and
site."""

from __future__ import annotations

from collections.abc import Callable

Status = Callable[[str], None]  # a line of status: "occluding: 40/196 positions"
Progress = Callable[[str, int, int], None]  # (phase, done, total): a bar per phase
