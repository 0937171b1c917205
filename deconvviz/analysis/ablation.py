"""What makes a deconvnet picture: Mahendran & Vedaldi's ablation (ECCV 2016, Fig. 3) of one unit.

Three binary choices of the reverse pass give eight variants: rectify the signal at each ReLU or not, keep
the forward ReLU mask or not (the rules deconvnet, guided, gradient, linear) and unpool with the switches or
to a fixed position of each window. Nearest and bilinear upsampling (with the deconvnet rule) come as two
more. Each picture is compared with the deconvnet's own (switches), with the same variant through randomized
weights, and with the input's edge map: does the structure survive without the switches, or without the
weights? Everything runs on the caller's model or on seeded deep copies of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..engine.deconvnet import Deconvnet
from ..engine.model import ModelView
from ..engine.progress import Status
from ..engine.reverse import UNPOOLS
from ..engine.rules import RULES
from ..errors import LayerError
from .sanity import Similarity, edge_map, pre_activation, randomizable, randomized_copy, similarity


@dataclass(frozen=True)
class Variant:
    """One reverse pass: a ReLU rule (rules.RULES) and an unpooling (reverse.UNPOOLS)."""

    rule: str
    unpool: str

    @property
    def name(self) -> str:
        return f"{self.rule}+{self.unpool}"

    @property
    def title(self) -> str:
        return f"{RULES[self.rule].title}\n{UNPOOLS[self.unpool]}"


# Mahendran & Vedaldi's eight (rule x {switches, fixed}), then resampling without switches
VARIANTS: tuple[Variant, ...] = (
    *(
        Variant(rule, unpool)
        for rule in ("deconvnet", "guided", "gradient", "linear")
        for unpool in ("switches", "fixed")
    ),
    Variant("deconvnet", "nearest"),
    Variant("deconvnet", "bilinear"),
)
REFERENCE = VARIANTS[0]  # the deconvnet with switches: Zeiler & Fergus


@dataclass
class AblationReport:
    """The unit, and per variant (in `variants` order) its picture through the trained and the randomized weights
    and its similarity (inside the unit's receptive field `box`) to the deconvnet's, to its own randomized
    picture and to the input's edge map. images, randomized_images: (V, 3, H, W)."""

    layer: str
    module: str
    channel: int
    position: tuple[int, int]  # row, col at the layer
    box: tuple[int, int, int, int]  # the unit's receptive field: top, bottom, left, right (half-open)
    seed: int
    randomized: list[str]  # every parameterized layer from the unit down to the input, re-initialized
    variants: list[Variant]
    images: Tensor
    randomized_images: Tensor
    vs_reference: list[Similarity] = field(default_factory=list)
    vs_randomized: list[Similarity] = field(default_factory=list)
    vs_edges: list[Similarity] = field(default_factory=list)


def ablation_report(
    model: nn.Module | ModelView,
    x: Tensor,
    layer: str,
    *,
    channel: int | None = None,
    seed: int = 0,
    variants: tuple[Variant, ...] = VARIANTS,
    progress: Status | None = None,
) -> AblationReport:
    """Every variant's picture of one unit of `layer`: the strongest activation of `channel` (None: of the image's
    strongest map). x: one preprocessed image (1, C, H, W). The randomized pictures seed the same unit, with its
    trained value, at its pre-activation in a copy whose layers up to it are re-initialized (sanity's)."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError("ablation_report takes one image, (1, C, H, W)")
    trained = Deconvnet(model)
    view, model = trained.view, trained.model
    names = randomizable(view, layer, size=tuple(x.shape[-2:]))
    first = trained.project(x, layer, channels=None if channel is None else [channel], mode="max", top=1)
    boxes = trained.receptive_field_boxes(first)
    if boxes is None:
        raise LayerError(f"'{layer}' mixes all positions; the ablation needs a convolution or pool layer")
    box = tuple(int(v) for v in boxes[0, 0])
    sel = first.selections
    seeded_at = pre_activation(view, first.layer)
    random_net = randomized_copy(model, names, seed)

    def picture(net: nn.Module | ModelView, v: Variant) -> Tensor:  # the unit, seeded alike, in either network
        dn = Deconvnet(net, rule=v.rule, unpool=v.unpool)
        return dn.project(x, seeded_at, channels=sel.channels[0], positions=sel.positions, values=sel.values)

    pictures, random_pictures = [], []
    for i, v in enumerate(variants):
        if progress:
            progress(f"ablation {i + 1}/{len(variants)}: {v.name}")
        pictures.append(picture(view, v).images[0, 0].cpu())
        random_pictures.append(picture(random_net, v).images[0, 0].cpu())
    row, col = (int(v) for v in sel.rows_cols[0, 0])
    rep = AblationReport(
        layer,
        module=first.layer,
        channel=int(sel.channels[0, 0]),
        position=(row, col),
        box=box,
        seed=seed,
        randomized=names,
        variants=list(variants),
        images=torch.stack(pictures),
        randomized_images=torch.stack(random_pictures),
    )
    if REFERENCE in variants:
        reference = rep.images[list(variants).index(REFERENCE)]
    else:
        reference = picture(model, REFERENCE).images[0, 0].cpu()
    edges = edge_map(x[0].cpu()).to(reference)
    for pic, rand in zip(rep.images, rep.randomized_images, strict=True):
        rep.vs_reference.append(similarity(pic, reference, box))
        rep.vs_randomized.append(similarity(pic, rand, box))
        rep.vs_edges.append(similarity(pic, edges, box))
    return rep
