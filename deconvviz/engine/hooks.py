"""What deconvviz does to a user's model for one call, and always undoes (also on error): eval mode, and
forward hooks. Nothing of deconvviz stays attached to a model after a call; the model itself is never changed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the call; every module's `training` flag is restored exactly afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t
