"""One exception family, with messages written for the user: what was wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class DeconvvizError(Exception):
    """Base of every error deconvviz raises on purpose; the CLI prints it as one line, exit code 2.

    `about`: the API argument the error is about ("layer", "class", "weights", ...), in API terms; the CLI
    names its own option for it (--layer, --class, --weights): the engine never names a CLI flag."""

    def __init__(self, *args, about: str | None = None):
        super().__init__(*args)
        self.about = about


class LayerError(DeconvvizError, KeyError):
    """Unknown layer name, or a layer that cannot be projected from."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SelectionError(DeconvvizError, ValueError):
    """Channels out of range, bad mode or top."""


class ImageError(DeconvvizError, ValueError):
    """Missing, unreadable or too small image."""


class OcclusionError(DeconvvizError, ValueError):
    """Occluder size or stride that does not fit, or a class map asked of a model without a classifier."""


class WeightsError(DeconvvizError, RuntimeError):
    """Weights that cannot be found, downloaded, converted or loaded."""


class UnsupportedModelError(DeconvvizError, TypeError):
    """A model or layer type the deconvnet rule cannot project through correctly."""


def unknown_name(kind: str, name: str, valid: Sequence[str], *, fix: str = "") -> str:
    """Message for an unknown name: a closest-match suggestion and the list of valid names."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'? Valid:" if close else "; valid:"
    shown = ", ".join(valid) if len(valid) <= 40 else ", ".join([*valid[:20], "...", *valid[-5:]])
    return f"unknown {kind} '{name}'{hint} {shown}{fix}"


def out_of_memory(e: BaseException) -> bool:
    """An allocation failure (CPU or CUDA): not the input's shape, so not to be reported as one."""
    text = str(e).lower()
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or "out of memory" in text
        or ("allocate" in text and "memory" in text)
    )
