"""A figure's request checked before any weights are loaded: the image is read, and the layers, channels, class and
region, point or excluded boxes are checked on the architecture alone (a skeleton network: no weights, no memory).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..engine.boxes import Box
from ..engine.forward import layer_shape
from ..engine.layers import decoder_modules, meta_forward
from ..engine.model import ModelView, view_of
from ..engine.request import Request
from ..engine.scores import ClassScore
from ..engine.selection import checked_channels
from ..engine.targets import check_choice, find_region
from ..errors import LayerError, OcclusionError, SelectionError
from ..images import DEFAULT_IMAGE, check_size, load_image


def check_request(
    model: nn.Module | ModelView,
    request: Request,
    *,
    spatial: bool = False,
    class_chooses: bool = False,
    name: str = "this network",
) -> None:
    """Refuse a bad request before any weights are loaded: the image is read, and the layers, channels, class
    and region, point or excluded boxes (names from the image's sidecar) are checked on the architecture alone
    (network.skeleton_network: no weights, no memory). spatial: the layers must have receptive fields (conv,
    pool). class_chooses: cls chooses the maps (so it excludes channels), rather than naming a probability.
    name: what the messages call the network (e.g. "vgg16 with weights vgg16-caffe")."""
    r, size, view = request, 224 if request.size is None else request.size, view_of(model)
    check_size(size)
    load_image(r.image if r.image is not None else DEFAULT_IMAGE, fit=r.size)  # read as to_batch reads it
    channels = None if isinstance(r.channels, str) else r.channels
    layers = list(r.layers) if r.layers is not None else [view.default_layer()]
    check_choice(region=r.region, at=r.at, exclude=r.exclude, cls=r.cls if class_chooses else None, channels=channels)
    check_layers(
        view,
        layers,
        channels=channels,
        top=r.top,
        size=size,
        cls=r.cls,
        spatial=spatial or r.region is not None or r.at is not None,
        name=name,
        output=r.output,
        pixels=r.pixels,
        target=None if r.target_box is None else find_region(r.target_box, r.image, size, width=size, height=size),
    )
    if r.region is not None or r.at is not None:
        found = {
            "region": None if r.region is None else find_region(r.region, r.image, size, width=size, height=size),
            "at": r.at,
            "exclude": [find_region(e, r.image, size, width=size, height=size, what="exclude") for e in r.exclude],
        }
        for layer in layers:
            check_choice(view, layer, input_size=(size, size), channels=channels, **found)


def check_layers(
    model: nn.Module | ModelView,
    layers: Sequence[str] = (),
    *,
    channels: Sequence[int] | None = None,
    top: int = 9,
    size: int = 224,
    cls: int | None = None,
    spatial: bool = False,
    name: str = "this network",
    output: str | int | None = None,
    pixels: str = "all",
    target: Box | None = None,
) -> None:
    """check_request without an image: layers, channels and class checked on the architecture alone; output,
    pixels and target: how the class is scored (deconvviz.engine.scores), checked on the model's result."""
    check_size(size)
    view = view_of(model)
    for layer in layers:
        shape = layer_shape(view, layer, size=size)
        checked_channels(layer, count=shape[0], channels=channels, top=top)
        if spatial and len(shape) != 3:
            raise LayerError(
                f"layer '{layer}' mixes all positions of the image (no receptive field); choose a "
                f"convolution or pool layer, e.g. {view.default_layer()}"
            )
    if cls is None:
        if output is not None or pixels != "all" or target is not None:
            raise SelectionError("output, pixels and target say how a class is scored: give a class too", about="class")
        return
    last = [s for s in view.steps if not isinstance(s.module, (nn.Identity, nn.Dropout))][-1:] if view.is_chain else []
    if view.is_chain and not (last and isinstance(last[0].module, (nn.Linear, nn.Conv2d))):
        raise OcclusionError(
            f"a class needs a model with a classifier (class scores), and {name} has none; "
            "use weights with a classifier (torchvision, a card or a state dict)",
            about="class",
        )
    score = ClassScore(cls, output=output, pixels=pixels, target=target)
    try:
        result, _ = meta_forward(view.model, (size, size))
    except Exception:  # noqa: BLE001 - a forward the meta device cannot run: checked when the class is scored
        return
    score.logits(result)


def check_decoder(model: nn.Module | ModelView, size: int = 224) -> None:
    """Refuse the decoder-stages figure of a network with no decoder stages (engine.layers.decoder_modules), on
    the architecture alone."""
    view = view_of(model)
    if not decoder_modules(view.model, (size, size)):
        raise LayerError(
            f"{type(view.model).__name__} has no unpooling, upsampling or transposed-convolution module "
            "(nn.MaxUnpool2d, nn.Upsample, nn.ConvTranspose2d, ...), so no decoder stages to show (F.interpolate "
            "calls are not modules); use reconstruct without activations",
            about="activations",
        )
