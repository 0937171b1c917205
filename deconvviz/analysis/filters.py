"""First-layer filters as colour patches (Zeiler & Fergus Fig. 6): the kernels that look at pixels directly."""

from __future__ import annotations

from torch import Tensor, nn

from ..engine.layers import Step, module_outputs, vgg_aliases
from ..engine.model import ModelView, view_of
from ..errors import LayerError
from ..preprocess import Preprocess


def first_conv_name(model: nn.Module | ModelView) -> str:
    """The name of the first convolution a forward pass runs: conv1_1 on a VGG, else its module path."""
    view = view_of(model)
    model, steps = view.model, view.steps
    if steps is not None:
        aliases = vgg_aliases(steps) if any(s.name.startswith("features.") for s in steps) else {}
        first = next((s for s in steps if isinstance(s.module, nn.Conv2d)), None)
        if first is None:
            raise LayerError(f"{type(model).__name__} has no convolution; there are no filters to draw")
        relu = next((s.name for s in steps[steps.index(first) :] if isinstance(s.module, nn.ReLU)), None)
        return next((a for a, p in aliases.items() if p == relu and a.startswith("conv")), first.name)
    first = next((r for r in module_outputs(model, (64, 64)) if isinstance(r.module, nn.Conv2d)), None)
    if first is None:
        raise LayerError(f"{type(model).__name__} has no convolution; there are no filters to draw")
    return first.name


def first_conv(model: nn.Module | ModelView, layer: str) -> Step:
    """The conv step of `layer` when it is the first layer (its filters see pixels); else a LayerError that
    says to use the scan. Works on a skeleton (network.skeleton_network), so a bad layer fails before loading."""
    view = view_of(model)
    model, steps = view.model, view.steps
    if steps is None:
        name, first = view.resolve(layer), first_conv_name(view)
        if name != first:
            raise LayerError(
                f"the filters of '{layer}' do not see pixels: only the first convolution's ('{first}') "
                "can be drawn as colour patches"
            )
        return Step(name, dict(model.named_modules())[name])
    upto = view.step_index(layer)
    convs = [s for s in steps[: upto + 1] if isinstance(s.module, nn.Conv2d)]
    mixers = [s for s in steps[:upto] if isinstance(s.module, (nn.Conv2d, nn.Linear))]
    if not convs or len(mixers) > 1 or (len(mixers) == 1 and mixers[0] is not convs[-1]):
        seen = f"{convs[-1].module.in_channels} feature maps" if convs else "feature vectors"
        raise LayerError(
            f"the filters of '{layer}' see {seen}, not colours: only the first layer's filters can be drawn as "
            f"patches; to see what '{layer}' responds to, use `deconvviz scan FOLDER --layer {layer}`"
        )
    return convs[-1]


def first_layer_filters(model: nn.Module | ModelView, layer: str, *, preprocess: Preprocess) -> tuple[str, Tensor]:
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
