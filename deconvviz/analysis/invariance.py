"""How feature vectors and the classifier change under a transform of the image (Zeiler & Fergus Fig. 5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..engine.forward import apply, module_activations
from ..engine.layers import vgg_aliases
from ..engine.model import ModelView, view_of
from ..engine.progress import Status
from ..errors import DeconvvizError

TRANSFORMS = ("shift", "scale", "rotate")
UNITS = {"shift": "pixels, down", "scale": "times", "rotate": "degrees, anticlockwise"}


@dataclass
class Invariance:
    """Distances (L, T): ||f_l(transformed) - f_l(original)||_2 per layer and amount; probabilities (T,) of the
    original image's top class (None without a classifier). images: the transformed inputs (T, 3, H, W)."""

    transform: str
    amounts: Tensor
    layers: list[str]
    distances: Tensor
    norms: Tensor  # (L,) ||f_l(original)||_2, the scale of each row of distances
    images: Tensor
    top_class: int | None
    probabilities: Tensor | None


def default_amounts(transform: str, size: int) -> Tensor:
    """Zeiler & Fergus's ranges, 0 (or 1) exactly among them: vertical shifts of whole pixels up to 60 at side
    224 (scaled with the side), scale 0.6-1.6 in steps of 0.05, a full turn in steps of 15 degrees."""
    if transform == "shift":
        return (torch.linspace(-1, 1, 25) * round(size * 60 / 224)).round() + 0.0  # + 0.0: no -0
    if transform == "scale":
        return (torch.arange(21) * 5 + 60) / 100
    if transform == "rotate":
        return torch.arange(25) * 15.0
    raise DeconvvizError(f"unknown transform '{transform}'; use {', '.join(TRANSFORMS)}")


def transformed(x: Tensor, transform: str, amount: float) -> Tensor:
    """x (N, 3, H, W) in network-input space, shifted down by `amount` pixels, scaled by `amount` or rotated by
    `amount` degrees anticlockwise about the centre (bilinear). Uncovered pixels are 0: the dataset mean colour."""
    angle, shift, scale = 0.0, [0, 0], 1.0
    if transform == "shift":
        shift = [0, float(amount)]
    elif transform == "scale":
        scale = float(amount)
    elif transform == "rotate":
        angle = -float(amount)  # torchvision's affine turns clockwise
    else:
        raise DeconvvizError(f"unknown transform '{transform}'; use {', '.join(TRANSFORMS)}")
    if shift == [0, 0] and scale == 1.0 and angle % 360 == 0:
        return x.clone()  # exactly the original (resampling would add rounding noise)
    return TF.affine(
        x,
        angle=angle,
        translate=shift,
        scale=scale,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=0.0,
    )


def has_classifier(model: nn.Module | ModelView) -> bool:
    from ..networks.network import has_classifier as scores

    return scores(model)


def default_layers(model: nn.Module | ModelView) -> list[str]:
    """A low layer (the first block's last conv: conv1_2 on vgg16), the last conv layer (conv5_3 on vgg16)
    and, with a classifier, fc7; on other networks the first convolution and the default layer."""
    view = view_of(model)
    steps = view.steps
    if steps is None or not any(s.name.startswith("features.") for s in steps):
        from .filters import first_conv_name

        return list(dict.fromkeys([first_conv_name(view), view.default_layer()]))
    low = [a for a in vgg_aliases(steps) if a.startswith("conv1_")]
    return [*low[-1:], view.default_layer()] + (["fc7"] if has_classifier(view) else [])


@torch.no_grad()
def invariance(
    model: nn.Module | ModelView,
    x: Tensor,
    transform: str,
    *,
    amounts: Sequence[float] | Tensor | None = None,
    layers: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: Status | None = None,
) -> Invariance:
    """Feature-vector distances to the original image (1, 3, H, W) over a range of a transform, per layer, and
    the probability of the original's top class where the model has a classifier."""
    view = view_of(model)
    model, steps = view.model, view.steps
    if x.dim() != 4 or x.shape[0] != 1:
        raise DeconvvizError(f"invariance takes one preprocessed image (1, 3, H, W), got {tuple(x.shape)}")
    amounts = torch.as_tensor(default_amounts(transform, x.shape[-1]) if amounts is None else amounts).float()
    layers = list(dict.fromkeys(layers)) if layers else default_layers(view)
    classify = has_classifier(view)
    if steps is None:  # any other network: one whole forward, the layers read by hooks
        taps = {layer: view.resolve(layer) for layer in layers}

        def features(batch: Tensor) -> tuple[list[Tensor], Tensor | None]:
            kept, out = module_activations(model, batch, taps, keep_output=True)
            return [kept[layer].flatten(1) for layer in layers], out.softmax(1) if classify else None

        return _sweep(
            x,
            transform,
            amounts,
            layers,
            batch_size=batch_size,
            progress=progress,
            features=features,
            classify=classify,
        )
    where = [view.step_index(layer) for layer in layers]
    upto = len(steps) - 1 if classify else max(where)

    def features(batch: Tensor) -> tuple[list[Tensor], Tensor | None]:
        out, kept = batch, {}
        for i, s in enumerate(steps[: upto + 1]):
            out = apply(s.module, out)
            if i in where:
                kept[i] = out.flatten(1)
        return [kept[i] for i in where], out.softmax(1) if classify else None

    return _sweep(
        x, transform, amounts, layers, batch_size=batch_size, progress=progress, features=features, classify=classify
    )


def _sweep(
    x: Tensor, transform: str, amounts: Tensor, layers: list[str], batch_size: int, progress, features, classify: bool
) -> Invariance:
    """The distances of every transformed copy's features (features(batch) -> per layer (B, D), probabilities)."""
    reference, probs = features(x)
    top = int(probs[0].argmax()) if classify else None
    distances, probabilities, images = [], [], []
    for start in range(0, len(amounts), batch_size):
        if progress:
            progress(f"{transform}: {start}/{len(amounts)}")
        batch = torch.cat([transformed(x, transform, float(a)) for a in amounts[start : start + batch_size]])
        feats, p = features(batch)
        distances.append(torch.stack([(f - r).norm(dim=1) for f, r in zip(feats, reference, strict=True)]))
        probabilities.append(p[:, top] if classify else batch.new_zeros(0))
        images.append(batch.cpu())
    return Invariance(
        transform,
        amounts,
        layers,
        distances=torch.cat(distances, 1).cpu(),
        norms=torch.stack([r.norm() for r in reference]).cpu(),
        images=torch.cat(images),
        top_class=top,
        probabilities=torch.cat(probabilities).cpu() if classify else None,
    )
