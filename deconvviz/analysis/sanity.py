"""How much of a projection comes from the network: randomization tests (Adebayo et al. 2018), unit
specificity and image recovery, for every rule.

A projection that barely changes when the weights above the input are re-initialized, or that looks the
same for every unit, or that looks like the image's edges, says more about the image than about what the
network learned. Everything here runs on a deep copy of the model (never the caller's), seeded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.filters import sobel
from skimage.metrics import structural_similarity
from torch import Tensor, nn

from ..engine.deconvnet import Deconvnet, crop_boxes
from ..engine.layers import module_outputs, step_index
from ..engine.model import ModelView, view_of
from ..engine.progress import Status
from ..engine.rules import RULES, get_rule
from ..errors import LayerError, UnsupportedModelError

FieldBounds = tuple[int, int, int, int]  # a receptive field: top, bottom, left, right (half-open); not a Box


@dataclass
class Similarity:
    """Similarity of two projections inside a box: Spearman rank correlation of |r| and of r (channels
    summed), SSIM of |r| (each scaled to [0, 1] by its maximum). None where a projection is all zero."""

    spearman_abs: float | None
    spearman: float | None
    ssim: float | None


@dataclass
class SanityReport:
    """Every number of a sanity run. Cascading step i has re-initialized randomized[: i + 1] (from the
    layer down); independent step i only randomized[i]. images: rule -> (1 + steps, 3, H, W), trained first."""

    layer: str
    module: str  # the module path the layer name resolves to
    channel: int
    position: tuple[int, int]  # row, col at the layer
    box: FieldBounds  # the unit's receptive field in the input
    rules: list[str]
    randomized: list[str]  # parameterized layers, from the chosen layer down toward the input
    seed: int
    cascading: dict[str, list[Similarity]] = field(default_factory=dict)
    independent: dict[str, list[Similarity]] = field(default_factory=dict)
    specificity: dict[str, Similarity] = field(default_factory=dict)  # mean over pairs of the strongest units
    specificity_units: list[int] = field(default_factory=list)
    recovery: dict[str, Similarity] = field(default_factory=dict)  # vs the input's edge map
    images: dict[str, Tensor] = field(default_factory=dict)
    # the trained unit with the switches replaced by fixed positions (Mahendran & Vedaldi), vs the trained picture
    fixed_positions: dict[str, Similarity] = field(default_factory=dict)
    fixed_images: dict[str, Tensor] = field(default_factory=dict)  # rule -> (3, H, W)


def _maps(r: Tensor, box: FieldBounds) -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W) projection -> (signed, absolute) channel sums inside the box, float64."""
    t, b, left, right = box
    crop = r[:, t:b, left:right].double().cpu()
    return crop.sum(0).numpy(), crop.abs().sum(0).numpy()


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a.ravel(), b.ravel()).statistic)


def _ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.max() <= 0 or b.max() <= 0 or min(a.shape) < 7:
        return None
    return float(structural_similarity(a / a.max(), b / b.max(), data_range=1.0))


def similarity(r1: Tensor, r2: Tensor, box: FieldBounds) -> Similarity:
    """Similarity of two input-space projections (3, H, W) inside the box (top, bottom, left, right)."""
    (s1, a1), (s2, a2) = _maps(r1, box), _maps(r2, box)
    return Similarity(_rank_corr(a1, a2), _rank_corr(s1, s2), _ssim(a1, a2))


def edge_map(x: Tensor) -> Tensor:
    """A plain edge map of a preprocessed image (C, H, W): Sobel magnitude of the channel mean, as (3, H, W)."""
    grey = x.double().mean(0).cpu().numpy()
    return torch.from_numpy(sobel(grey)).expand(3, -1, -1)


def _mean(sims: Sequence[Similarity]) -> Similarity:
    def avg(vals):
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    return Similarity(*(avg([getattr(s, f) for s in sims]) for f in ("spearman_abs", "spearman", "ssim")))


def _forward_order(model: nn.Module | ModelView, layer: str, size: tuple[int, int]) -> list[tuple[str, nn.Module]]:
    """The modules a forward pass runs up to `layer`'s output, in the order they finish: a chain's steps, or
    on any other network every module whose forward ends before the layer's does (on the meta device, for an
    input of `size`: a ViT runs at its own size only)."""
    view = view_of(model)
    steps = view.steps
    if steps is not None:
        return [(s.name, s.module) for s in steps[: view.step_index(layer) + 1]]
    name = view.resolve(layer)
    runs = [r for r in module_outputs(view.model, size) if r.name]
    upto = next((i for i, r in enumerate(runs) if r.name == name), None)
    if upto is None:
        raise LayerError(f"layer '{layer}' does not run in a forward pass; choose a module that does")
    return [(r.name, r.module) for r in runs[: upto + 1]]


def randomizable(model: nn.Module | ModelView, layer: str, *, size: tuple[int, int] = (224, 224)) -> list[str]:
    """Module paths of the parameterized layers on the way from the input to `layer`, nearest to it first (in
    reverse order of forward execution), for an input of `size`. A layer whose parameters cannot be re-initialized
    is refused by name."""
    names, root = [], view_of(model).model
    for path, module in _forward_order(model, layer, size):
        if any(True for _ in module.parameters(recurse=False)):
            if _initializer(root, module) is None:
                raise UnsupportedModelError(
                    f"cannot randomize '{path}' ({type(module).__name__}): it has no "
                    "reset_parameters() and the model no _init_weights(module); choose a layer before it"
                )
            names.append(path)
    if not names:
        raise LayerError(f"no layer with weights between the input and '{layer}'; choose a deeper layer")
    return names[::-1]


def _initializer(root: nn.Module, module: nn.Module):
    """How `module` is re-initialized: its own reset_parameters(), else the model's own init of that module (a
    Hugging Face model's `_init_weights(module)`: embeddings and class tokens drawn anew, a layer scale back to its
    initial constant); None when there is neither."""
    if callable(getattr(module, "reset_parameters", None)):
        return module.reset_parameters
    init = getattr(root, "_init_weights", None)
    return (lambda: init(module)) if callable(init) else None


def randomized_copy(model: nn.Module, names: Sequence[str], seed: int) -> nn.Module:
    """A deep copy with the named modules re-initialized (their own reset_parameters, else the model's own
    _init_weights of the module), seeded per module, so that a module gets the same random weights in every
    cascade step that includes it."""
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for name in names:
            torch.manual_seed(seed + list(modules).index(name))
            _initializer(twin, modules[name])()
            if isinstance(modules[name], nn.modules.batchnorm._BatchNorm):
                modules[name].reset_running_stats()
    return twin


def sanity_report(
    model: nn.Module | ModelView,
    x: Tensor,
    layer: str,
    *,
    channel: int | None = None,
    rules: Sequence[str] = tuple(RULES),
    seed: int = 0,
    units: int = 8,
    progress: Status | None = None,
) -> SanityReport:
    """Randomization, specificity and recovery numbers for one unit of `layer` (the strongest activation of
    `channel`; None: of the image's strongest map). x: one preprocessed image (1, C, H, W)."""
    rules = [get_rule(r).name for r in rules]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError("sanity_report takes one image, (1, C, H, W)")
    trained = Deconvnet(model)
    view, model = trained.view, trained.model
    names = randomizable(view, layer, size=tuple(x.shape[-2:]))
    first = trained.project(x, layer, channels=None if channel is None else [channel], mode="max", top=1)
    seeded_at = pre_activation(view, first.layer)
    if len(first.selections.shape) != 3:
        raise LayerError(f"'{layer}' mixes all positions; the sanity report needs a convolution or pool layer")
    boxes = crop_boxes(trained, first)  # the receptive field (on other networks: what the projection touches)
    box = tuple(int(v) for v in boxes[0, 0])
    chan, pos, value = first.selections.channels, first.selections.positions, first.selections.values
    row, col = (int(v) for v in first.selections.rows_cols[0, 0])
    rep = SanityReport(
        layer,
        module=first.layer,
        channel=int(chan[0, 0]),
        position=(row, col),
        box=box,
        rules=rules,
        randomized=names,
        seed=seed,
    )

    def unit(net: nn.Module | ModelView, rule: str, unpool: str = "switches") -> Tensor:  # one unit, seeded alike
        dn = Deconvnet(net, rule=rule, unpool=unpool)
        return dn.project(x, seeded_at, channels=chan[0], positions=pos, values=value).images[0, 0]

    total = len(rules) * (1 + 2 * len(names))
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(f"sanity {done}/{total}: {what}")

    strongest = trained.project(x, layer, mode="max", top=units)
    others = strongest.selections.channels[0].tolist()
    rep.specificity_units = others
    edges = edge_map(x[0])
    for rule in rules:
        base = unit(view, rule)
        tick(f"{rule}, trained")
        pictures, cascade, alone = [base], [], []
        for i, name in enumerate(names):
            pictures.append(unit(randomized_copy(model, names[: i + 1], seed), rule))
            cascade.append(similarity(base, pictures[-1], box))
            tick(f"{rule}, cascading down to {name}")
        for name in names:
            alone.append(similarity(base, unit(randomized_copy(model, [name], seed), rule), box))
            tick(f"{rule}, only {name}")
        rep.images[rule] = torch.stack(pictures).cpu()
        rep.cascading[rule], rep.independent[rule] = cascade, alone
        per_unit = Deconvnet(view, rule=rule).project(x, layer, channels=others, mode="max")
        unit_boxes = crop_boxes(trained, per_unit)[0].tolist()
        pairs = [
            similarity(per_unit.images[0, i], per_unit.images[0, j], _union(unit_boxes[i], unit_boxes[j]))
            for i in range(len(others))
            for j in range(i + 1, len(others))
        ]
        rep.specificity[rule] = _mean(pairs)
        rep.recovery[rule] = similarity(base, edges.to(base), box)
        rep.fixed_images[rule] = unit(view, rule, "fixed").cpu()
        rep.fixed_positions[rule] = similarity(base, rep.fixed_images[rule].to(base), box)
    return rep


def pre_activation(model: nn.Module | ModelView, name: str) -> str:
    """The step before a ReLU (its input), else the step itself. A unit is seeded there so that a unit that a
    randomized layer below switches off still has a projection: through its own ReLU, guided backprop and the
    gradient of an inactive unit are zero whatever the network learned, which would say nothing."""
    steps = view_of(model).steps
    if steps is None:  # a graph: the autograd path seeds at a module's output, so the unit itself
        return name
    i = step_index(steps, name)
    return steps[i - 1].name if i > 0 and isinstance(steps[i].module, nn.ReLU) else name


def _union(a: Sequence[int], b: Sequence[int]) -> FieldBounds:
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def layer_label(model: nn.Module | ModelView, name: str) -> str:
    """A randomized module's VGG name where it has one: the ReLU alias of the block it feeds (conv5_3 for
    that conv, "conv5_3 bn" for its BatchNorm), else its module path."""
    view = view_of(model)
    steps = view.steps
    if steps is None:
        return name
    by_relu = {path: alias for alias, path in view.aliases.items()}
    i = step_index(steps, name)
    after = next((s.name for s in steps[i:] if isinstance(s.module, nn.ReLU)), None)
    if after not in by_relu:
        return name
    return by_relu[after] + (" bn" if isinstance(steps[i].module, nn.BatchNorm2d) else "")
