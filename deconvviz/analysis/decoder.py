"""A decoder's own stages, forward (Noh, Hong & Han 2015, Fig. 4): the activations of an encoder-decoder's
unpoolings, upsamplings and transposed convolutions for one image, each shown by its channel that contributes most
to a class's score (gradient times activation, the score read as `cls` reads it: deconvviz.engine.scores)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..engine.hooks import evaluating, forward_hooks
from ..engine.layers import decoder_modules
from ..engine.model import ModelView, view_of
from ..engine.scores import ClassScore, ScoreRecord
from ..errors import ImageError, LayerError


@dataclass(frozen=True)
class DecoderStage:
    """One decoder stage, forward: the module's output for the image (C, h, w), the channel that contributes most to
    the class's score there, and each channel's contribution (C,)."""

    name: str  # module path
    kind: str  # "unpooling", "upsampling" or "deconvolution"
    activation: Tensor  # (C, h, w)
    channel: int
    contributions: Tensor  # (C,) gradient times activation, summed over positions


def _kind(module: nn.Module) -> str:
    if isinstance(module, (nn.MaxUnpool1d, nn.MaxUnpool2d, nn.MaxUnpool3d)):
        return "unpooling"
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "deconvolution"
    return "upsampling"


def decoder_activations(
    model: nn.Module | ModelView, x: Tensor, *, cls: int | ClassScore, stages: list[str] | None = None
) -> tuple[list[DecoderStage], ScoreRecord]:
    """The decoder's stages (default: every unpooling, upsampling and transposed-convolution module, in the order
    they run: engine.layers.decoder_modules) for one image x (1, C, H, W), forward, with what the class scored.
    The model is not modified: eval semantics for the call, no hooks left behind."""
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ImageError(f"decoder stages take one preprocessed image (1, C, H, W), got {shape}")
    view = view_of(model)
    model = view.model
    names = decoder_modules(model, tuple(x.shape[-2:])) if stages is None else view.check_stage_modules(list(stages))
    if not names:
        raise LayerError(
            f"{type(model).__name__} has no unpooling, upsampling or transposed-convolution module (nn.MaxUnpool2d, "
            "nn.Upsample, nn.ConvTranspose2d, ...), so it has no decoder stages to show; F.interpolate calls are "
            "not modules: name the modules after them with stages=[...]"
        )
    score = cls if isinstance(cls, ClassScore) else ClassScore(cls)
    modules = dict(model.named_modules())
    got: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(m, i, o):
            if isinstance(o, Tensor):
                got.setdefault(name, o)

        return hook

    p = next(model.parameters(), None)
    x = x.detach().to(p.device, p.dtype) if p is not None else x.detach()
    with forward_hooks([(modules[n], keep(n)) for n in names]), evaluating(model), torch.enable_grad():
        result = model(x)
        target, record = score.target_for(result, tuple(x.shape[-2:]))
        ran = [n for n in names if n in got]
        grads = torch.autograd.grad(target(score.logits(result)[0]).sum(), [got[n] for n in ran], allow_unused=True)
    out = []
    for name, g in zip(ran, grads, strict=True):
        act = got[name].detach()[0]
        contributions = (g.detach()[0] * act).flatten(1).sum(1) if g is not None else torch.zeros(act.shape[0])
        channel = int(contributions.argmax())
        out.append(DecoderStage(name, _kind(modules[name]), act.cpu(), channel, contributions.cpu()))
    return out, record
