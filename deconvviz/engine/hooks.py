"""What deconvviz does to a user's model for one call, and always undoes (also on error): eval mode, and
forward hooks. Nothing of deconvviz stays attached to a model after a call; the model itself is never changed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

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


Hook = tuple[nn.Module, Callable]


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[Hook] = (), *, pre: Iterable[Hook] = ()) -> Iterator[None]:
    """Forward hooks (module, hook(module, args, output)) and forward pre-hooks (module, hook(module, args)) for
    the block, each registered in the order given; all removed afterwards, also on error (or when registering a
    later one fails)."""
    handles = []
    try:
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
