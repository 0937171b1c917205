"""Seeds batched with torch.func.vmap, without torch's note that an op has no batching rule.

Where an op has no batching rule (the CPU flash attention's backward, for one), vmap runs it once per seed
itself and warns that this is slower. The result is the same, and the note names torch internals that tell a
deconvviz user nothing, so it is silenced here, around the vmap calls that deconvviz makes, and nowhere else."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import Tensor
from torch.func import vmap

# torch's text, from aten/src/ATen/functorch/BatchedFallback.cpp
_NO_BATCHING_RULE = r"There is a performance drop because we have not yet implemented the batching rule"


def over_seeds(fn: Callable, seeds: Tensor):
    """fn applied to each seed (the first axis of `seeds`), batched by vmap."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_BATCHING_RULE, category=UserWarning)
        return vmap(fn)(seeds)
