"""What deconvviz does to a user's model for one call, and always undoes (also on error): eval mode, and
forward hooks. Nothing of deconvviz stays attached to a model after a call; the model itself is never changed.
A module's output is read as one tensor (`hidden_states`): a tuple's first (Hugging Face's blocks return
(hidden_states, attentions, ...)), and a hook that hands on a copy puts it back in the same place."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from torch import Tensor, nn


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
def forward_hooks(
    hooks: Iterable[Hook] = (), *, pre: Iterable[Hook] = (), pre_kwargs: Iterable[Hook] = ()
) -> Iterator[None]:
    """Forward hooks (module, hook(module, args, output)) and forward pre-hooks (module, hook(module, args)), or
    with the keyword arguments too (pre_kwargs: hook(module, args, kwargs)), for the block, each registered in the
    order given; all removed afterwards, also on error (or when registering a later one fails)."""
    handles = []
    try:
        for module, hook in pre:
            handles.append(module.register_forward_pre_hook(hook))
        for module, hook in pre_kwargs:
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        for module, hook in hooks:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def hidden_states(out) -> Tensor | None:
    """A module's output as one tensor: the tensor itself, or the first element of a tuple or list, or the first
    value of a transformers ModelOutput (Hugging Face's hidden states); None when there is no such tensor."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if _model_output(out) and len(out) and isinstance(first := next(iter(out.values())), Tensor):
        return first
    return None


def with_hidden_states(out, t: Tensor):
    """`out` with its tensor (the one `hidden_states` reads) replaced by t; what a forward hook returns to hand on
    a copy."""
    if isinstance(out, Tensor):
        return t
    if isinstance(out, (tuple, list)):
        return type(out)((t, *out[1:])) if type(out) in (tuple, list) else out.__class__(t, *out[1:])
    copy = type(out)(**out)  # a ModelOutput: its first value replaced
    copy[next(iter(out.keys()))] = t
    return copy


def _model_output(out) -> bool:
    """Whether out is a transformers ModelOutput (an ordered dict of tensors), told without importing it."""
    return isinstance(out, dict) and any(c.__name__ == "ModelOutput" for c in type(out).__mro__)
