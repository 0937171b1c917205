"""Which layers a model has: the chain of steps a deconvnet can mirror, their names, receptive fields.

`chain_of` is asked once per model, by its view (engine.model.ModelView); the functions here that need the
answer take it as `steps`."""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import VGG, AlexNet

from ..errors import ImageError, LayerError, unknown_name
from .hooks import forward_hooks, hidden_states

# Module types the explicit reverse pass mirrors exactly (exact types: a subclass may change forward).
MIRRORED = (
    nn.Conv2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Linear,
)


@dataclass(frozen=True)
class Step:
    """One module of a chain; `name` is its module path (what a user types)."""

    name: str
    module: nn.Module


def _leaves(prefix: str, module: nn.Module) -> list[Step]:
    if type(module) is not nn.Sequential:
        return [Step(prefix, module)]
    # _modules, not named_children(): a module used twice in a Sequential is two steps.
    return [s for key, child in module._modules.items() for s in _leaves(f"{prefix}.{key}".lstrip("."), child)]


def chain_of(model: nn.Module) -> list[Step] | None:
    """The model as a chain of mirrored steps, or None when its forward is not a plain chain of them."""
    if type(model) is nn.Sequential:
        steps = _leaves("", model)
    elif type(model) in (VGG, AlexNet):  # forward: features, avgpool, flatten(1), classifier
        flat = Step("flatten", nn.Flatten(1))
        steps = [
            *_leaves("features", model.features),
            *_leaves("avgpool", model.avgpool),
            flat,
            *_leaves("classifier", model.classifier),
        ]
    else:
        return None
    ok = all(type(s.module) in MIRRORED for s in steps) and all(_plain(s.module) for s in steps)
    return steps if ok and not _hooked(model) else None


def step_index(steps: list[Step], name: str) -> int:
    """Position in the chain of the step with this module path (a name `resolve` returned)."""
    return next(i for i, s in enumerate(steps) if s.name == name)


def _hooked(model: nn.Module) -> bool:
    """Forward hooks can change what a module computes; the explicit chain would not see them."""
    from torch.nn.modules import module as registry

    if registry._global_forward_hooks or registry._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _plain(m: nn.Module) -> bool:
    """Settings the explicit pass supports (others go through the autograd path)."""
    if isinstance(m, nn.Conv2d):
        return m.padding_mode == "zeros" and not isinstance(m.padding, str)
    if isinstance(m, nn.BatchNorm2d):
        return m.running_mean is not None
    return True


def vgg_aliases(steps: list[Step]) -> dict[str, str]:
    """Familiar VGG names: conv5_3 is the rectified output of that conv, pool5 the 5th max-pool, fc6-fc8."""
    aliases: dict[str, str] = {}
    block, conv, pending = 1, 0, None
    for s in steps:
        if s.name.startswith("features."):
            if isinstance(s.module, nn.Conv2d):
                conv += 1
                pending = f"conv{block}_{conv}"
            elif isinstance(s.module, nn.ReLU) and pending:
                aliases[pending], pending = s.name, None
            elif isinstance(s.module, nn.MaxPool2d):
                aliases[f"pool{block}"] = s.name
                block, conv = block + 1, 0
    linears = [i for i, s in enumerate(steps) if s.name.startswith("classifier.") and isinstance(s.module, nn.Linear)]
    for n, i in enumerate(linears, start=6):
        after = steps[i + 1] if i + 1 < len(steps) else None
        aliases[f"fc{n}"] = after.name if after is not None and isinstance(after.module, nn.ReLU) else steps[i].name
    return aliases


def layer_names(model: nn.Module, steps: list[Step] | None) -> list[str]:
    """Every name `project` accepts for this model, whose chain is `steps` (None: no chain), in forward order
    (aliases first for VGG). Called through a model's view (engine.model.ModelView.layer_names)."""
    if steps is None:
        return [name for name, _ in model.named_modules() if name]
    aliases = list(vgg_aliases(steps)) if isinstance(model, VGG) else []
    return aliases + [s.name for s in steps if s.name != "flatten"]


def resolve(model: nn.Module, steps: list[Step] | None, layer: str) -> str:
    """Module path for a layer name or alias; unknown names fail with a suggestion and the valid list."""
    if steps is not None and isinstance(model, VGG):
        layer = vgg_aliases(steps).get(layer, layer)
    known = {s.name for s in steps} - {"flatten"} if steps is not None else {n for n, _ in model.named_modules() if n}
    if steps is not None and layer not in known:
        # a container (e.g. "features") means its last step's output
        inside = [s.name for s in steps if s.name.startswith(layer + ".")]
        if inside and layer in dict(model.named_modules()):
            return inside[-1]
    if layer not in known:
        if steps is not None and isinstance(model, VGG) and re.fullmatch(r"fc[678]", layer):
            raise LayerError(
                f"layer '{layer}' needs a classifier, and this model has none (vgg16-caffe weights are "
                "conv layers only); use the torchvision weights or a state dict with a classifier, or a "
                "conv/pool layer",
                about="layer",
            )
        raise LayerError(unknown_name("layer", layer, layer_names(model, steps), fix="; see `deconvviz layers`"))
    return layer


@dataclass(frozen=True)
class ReceptiveField:
    """Input rows/cols feeding output position i: [i*stride - offset, i*stride - offset + size - 1]."""

    size: int
    stride: int
    offset: int

    def span(self, i: int, limit: int) -> tuple[int, int]:
        """Half-open input range [lo, hi) seen by output position i, clipped to [0, limit)."""
        lo = i * self.stride - self.offset
        return max(lo, 0), min(lo + self.size, limit)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def receptive_fields(steps: list[Step], upto: int) -> tuple[ReceptiveField, ReceptiveField]:
    """(rows, cols) receptive field of one output position of step `upto` (inclusive)."""
    out = []
    for axis in (0, 1):
        size, stride, offset = 1, 1, 0
        for s in steps[: upto + 1]:
            m = s.module
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                k, st, p = _pair(m.kernel_size)[axis], _pair(m.stride)[axis], _pair(m.padding)[axis]
                d = _pair(getattr(m, "dilation", 1))[axis]
                size += (d * (k - 1)) * stride
                offset += p * stride
                stride *= st
            elif not isinstance(m, (nn.ReLU, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)):
                raise LayerError(f"no receptive field past '{s.name}' ({type(m).__name__}): it mixes all positions")
        out.append(ReceptiveField(size, stride, offset))
    return out[0], out[1]


def default_layer(model: nn.Module, steps: list[Step] | None) -> str:
    """The layer shown when none is named, for a model whose chain is `steps` (None: no chain): a VGG's last conv
    layer (conv5_3 on vgg16), a chain's last convolution, else the last convolutional block's output (layer4 on a
    ResNet, features.denseblock4 on a DenseNet): going down from the model, the last child that holds a
    convolution and keeps a spatial map, until a stage of repeated blocks or a module that is not an
    nn.Sequential. Called through a model's view (engine.model.ModelView.default_layer)."""
    if steps is not None and isinstance(model, VGG):
        convs = [a for a in vgg_aliases(steps) if a.startswith("conv")]
        if convs:
            return convs[-1]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise LayerError(f"{type(model).__name__} has no convolution; name a layer (see `deconvviz layers`)")
    if steps is not None:
        return convs[-1]
    runs = module_outputs(model, native_size(model))
    spatial = {r.name for r in runs if len(r.shape) == 3 and r.shape[1] * r.shape[2] > 1}
    path, module = "", model
    while True:
        kids = [(f"{path}.{k}".lstrip("."), c) for k, c in module.named_children()]
        blocks = [(p, c) for p, c in kids if p in spatial and any(isinstance(m, nn.Conv2d) for m in c.modules())]
        blocks = [(p, c) for p, c in blocks if not p.rpartition(".")[2].startswith("aux")] or blocks  # training's
        # auxiliary heads (torchvision's segmentation models' aux_classifier) are not what the network computes
        if not blocks:
            return path or convs[-1]
        path, module = blocks[-1]
        children = list(module.children())
        if type(module) is not nn.Sequential or len({type(c) for c in children}) == 1:
            return path


def native_size(model: nn.Module) -> tuple[int, int]:
    """The input size to run a model at to learn its structure: the image size its config names (a Hugging Face
    model's `config.image_size`, which a ViT requires), else 224x224."""
    size = getattr(getattr(model, "config", None), "image_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return int(size[0]), int(size[1])
    return 224, 224


def size_advice(model: nn.Module) -> str:
    """How to fix an input size the model refused: the image size its config names (Hugging Face) or it holds
    (torchvision's ViT: `image_size`), where there is one."""
    if getattr(getattr(model, "config", None), "image_size", None) is not None:
        h, w = native_size(model)
        return f"use {h} (its config's image_size)" if h == w else f"use {h}x{w} (its config's image_size)"
    own = getattr(model, "image_size", None)
    if isinstance(own, int) and not isinstance(own, bool) and own > 0:
        return f"use {own} (its image_size)"
    return "use an input size it accepts"


@dataclass(frozen=True)
class ModuleOutput:
    """One module run in a forward pass: its path, the module, its output shape per image (() if not a
    tensor; a tuple's first tensor), how many times it ran (a projection needs a module that runs once) and the
    (H, W) grid of tokens it was told it gets (`input_dimensions`, `height` and `width`: Hugging Face's Swin and
    SegFormer blocks), None if none."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]
    runs: int
    grid: tuple[int, int] | None = None


# Arguments by which a module is told the grid of its tokens (transformers' Swin, SegFormer, ...).
_GRID_ARGS = (("input_dimensions",), ("height", "width"))


def told_grid(module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, int] | None:
    """The (H, W) grid a call of `module` names in its arguments (`input_dimensions`, or `height` and `width`),
    read by the names of its forward's parameters; None where it names none."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        return None
    for names in _GRID_ARGS:
        values = [bound.get(n) for n in names]
        if len(values) == 1 and isinstance(values[0], (tuple, list)):
            values = list(values[0])
        if len(values) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            return int(values[0]), int(values[1])
    return None


@contextlib.contextmanager
def _recording_outputs(model: nn.Module) -> Iterator[tuple[dict[str, list], dict[str, tuple]]]:
    """Forward hooks on every module that note its output shapes (a tuple's first tensor) in the order forwards
    finish, and the grids modules are told in their arguments (`told_grid`); always removed."""
    seen: dict[str, list] = {}
    grids: dict[str, tuple] = {}

    def hook(name: str):
        def record(m, args, out):
            out = hidden_states(out)
            seen.setdefault(name, []).append(tuple(out.shape[1:]) if isinstance(out, Tensor) else ())

        return record

    def told(name: str):
        def record(m, args, kwargs):
            if (grid := told_grid(m, args, kwargs)) is not None:
                grids.setdefault(name, grid)

        return record

    named = list(model.named_modules())
    told_modules = [(m, told(n)) for n, m in named if _names_grid(m)]
    with forward_hooks([(m, hook(n)) for n, m in named], pre_kwargs=told_modules):
        yield seen, grids


def _names_grid(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False
    return any(all(n in params for n in names) for names in _GRID_ARGS)


def module_outputs(model: nn.Module, size: tuple[int, int], channels: int | None = None) -> list[ModuleOutput]:
    """Every module in the order its forward finishes for one input of `size` (the model itself, path "", last),
    run on the meta device in eval mode (meta_forward): shapes only, no memory or arithmetic, and the model is left
    as it was. channels None: the first that runs, of the convolutions' input channels and 3."""
    _, (seen, grids) = meta_forward(model, size, channels, recording=_recording_outputs)
    modules = dict(model.named_modules())
    return [ModuleOutput(n, modules[n], s[0], len(s), grids.get(n)) for n, s in seen.items()]


def meta_forward(model: nn.Module, size: tuple[int, int], channels: int | None = None, *, recording=None):
    """The model's result for one input of `size`, run on a meta copy in eval mode (shapes only, no weights read or
    memory used; the model is left as it was), and what `recording(twin)`, a context manager around the run, gave
    (None without one). channels None: the first that runs, of the convolutions' input channels (declared order
    need not be run order) and 3. A model that checks its input size and refuses this one: the --size error."""
    twin = model if _on_meta(model) else _meta_copy(model)
    convs = [m.in_channels for m in twin.modules() if isinstance(m, nn.Conv2d)]
    tries = [channels] if channels is not None else list(dict.fromkeys([*convs, 3]))
    training = {m: m.training for m in twin.modules()}  # a skeleton is run as is: in eval mode, then restored
    twin.eval()
    floats = [t.dtype for t in model.parameters() if t.is_floating_point()]  # a double or half model gets its own
    try:
        for i, c in enumerate(tries):
            with recording(twin) if recording else contextlib.nullcontext() as recorded, torch.no_grad():
                try:
                    return twin(torch.zeros(1, c, *size, device="meta", dtype=floats[0] if floats else None)), recorded
                except (AssertionError, ValueError) as e:  # the model's own check of its input (a ViT's size)
                    raise ImageError(
                        f"{type(model).__name__} cannot run on a {size[0]}x{size[1]} input ({e}); {size_advice(model)}",
                        about="size",
                    ) from None
                except RuntimeError:
                    if i == len(tries) - 1:
                        raise
    finally:
        for m, mode in training.items():
            m.training = mode


def _on_meta(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy whose parameters and buffers are meta tensors (shapes only); the model is not touched."""
    memo = {id(b): torch.empty_like(b, device="meta") for b in model.buffers()}
    memo |= {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    twin = copy.deepcopy(model, memo)
    return twin.eval()


def in_channels(steps: list[Step]) -> int:
    """Channels the chain's first layer expects (3 when no layer says)."""
    for s in steps:
        if isinstance(s.module, nn.Conv2d):
            return s.module.in_channels
        if isinstance(s.module, (nn.Linear, nn.BatchNorm2d)):
            break
    return 3


# A decoder's own stages: the modules that upsample (each unpooling, upsampling and transposed convolution).
UPSAMPLING = (
    nn.MaxUnpool1d,
    nn.MaxUnpool2d,
    nn.MaxUnpool3d,
    nn.Upsample,  # and UpsamplingNearest2d, UpsamplingBilinear2d
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.PixelShuffle,
)


def stage_modules(model: nn.Module) -> list[str]:
    """Default stage boundaries of a non-chain model: its top-level children, and the children of a top-level
    nn.Sequential of mixed parts (DenseNet's dense blocks and transitions, `features.i` of torchvision's
    sequential backbones); a Sequential of repeated blocks (ResNet's layer1) stays one stage, but one of repeated
    attention blocks gives a stage after each block (a ViT's encoder layers, a Swin stage's blocks); and an
    encoder-decoder's own stages, each module that upsamples (UPSAMPLING: unpooling, upsampling, deconvolution)."""
    out = []
    for name, child in model.named_children():
        out.append(name)
        parts = list(child.named_children()) if isinstance(child, nn.Sequential) else []
        if len({type(m) for _, m in parts}) > 1:
            out.extend(f"{name}.{n}" for n, _ in parts)
        out.extend(_attention_blocks(name, child))
    out.extend(n for n, m in model.named_modules() if isinstance(m, UPSAMPLING) and n not in out)
    return out


def decoder_modules(model: nn.Module, size: tuple[int, int] = (224, 224)) -> list[str]:
    """A decoder's own stages: every module that upsamples (UPSAMPLING), in the order they run for an input of
    `size` (module_outputs; declared order where the shapes-only run cannot follow the model)."""
    found = [n for n, m in model.named_modules() if isinstance(m, UPSAMPLING)]
    if not found:
        return []
    try:
        ran = [r.name for r in module_outputs(model, size)]
    except Exception:  # noqa: BLE001 - an op the meta device lacks: the declared order
        return found
    return [n for n in dict.fromkeys(ran) if n in found] or found


def _attention_blocks(prefix: str, module: nn.Module) -> list[str]:
    """Every block of each stack of repeated attention blocks inside `module` (an nn.Sequential or nn.ModuleList
    of one block type that holds an attention: nn.MultiheadAttention, timm's and torchvision's *Attention)."""
    found = []
    for name, m in module.named_modules(prefix=prefix):
        kids = list(m.named_children())
        repeated = isinstance(m, (nn.Sequential, nn.ModuleList)) and len({type(c) for _, c in kids}) == 1
        if repeated and kids and _attends(kids[0][1]):
            found += [f"{name}.{k}" for k, _ in kids]
    return found


def _attends(block: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention") for m in block.modules())


def check_stage_modules(model: nn.Module, stages: list[str]) -> list[str]:
    """Module paths chosen as stage boundaries, checked: an unknown path is a LayerError naming the nearest."""
    known = [n for n, _ in model.named_modules() if n]
    for s in stages:
        if not isinstance(s, str) or s not in known:
            raise LayerError(unknown_name("stage module", str(s), known, fix="; give module paths such as 'layer2'"))
    return list(stages)
