"""First-layer filters as colour patches (Zeiler & Fergus Fig. 6): the kernels that look at pixels directly."""

from __future__ import annotations

from torch import Tensor, nn

from .errors import LayerError
from .layers import Step, chain_of, resolve, step_index
from .preprocess import Preprocess


def first_conv(model: nn.Module, layer: str) -> Step:
    """The conv step of `layer` when it is the first layer (its filters see pixels); else a LayerError that
    says to use the scan. Works on a skeleton (weights.skeleton), so a bad --layer fails before loading."""
    steps = chain_of(model)
    if steps is None:
        raise LayerError(f"{type(model).__name__} is not a chain of layers; filters are drawn for VGG-like models")
    upto = step_index(steps, resolve(model, steps, layer))
    convs = [s for s in steps[: upto + 1] if isinstance(s.module, nn.Conv2d)]
    mixers = [s for s in steps[:upto] if isinstance(s.module, (nn.Conv2d, nn.Linear))]
    if not convs or len(mixers) > 1 or (len(mixers) == 1 and mixers[0] is not convs[-1]):
        seen = f"{convs[-1].module.in_channels} feature maps" if convs else "feature vectors"
        raise LayerError(
            f"the filters of '{layer}' see {seen}, not colours: only the first layer's filters can be drawn as "
            f"patches; to see what '{layer}' responds to, use `deconvviz scan FOLDER --layer {layer}`"
        )
    return convs[-1]


def first_layer_filters(model: nn.Module, layer: str, preprocess: Preprocess) -> tuple[str, Tensor]:
    """The conv module path of `layer` and its filters as RGB image templates. Returns (K, 3, kh, kw).

    A filter w answers an image with sum_c w_c * (pixel_c * scale - mean_c) / std_c in the weights' own
    channel order (BGR for vgg16-caffe): as a template on RGB pixels in [0, 1] it is w_c * scale / std_c,
    channels put back in RGB order. Only the first conv layer sees colours; deeper filters see feature maps.
    """
    conv = first_conv(model, layer)
    weight = conv.module.weight.detach().float().cpu()
    std = weight.new_tensor(preprocess.std).view(1, 3, 1, 1)
    templates = weight * preprocess.scale / std
    return conv.name, templates.flip(1) if preprocess.bgr else templates
