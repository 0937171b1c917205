"""The two ways a model goes forward and back: a chain mirrored step by step, or any network through autograd.

A path runs the forward pass once (`forward`, recording switches, and the layer's feature maps as `maps`) and
then takes seeds on those maps back to the input (`backward`), as many times as the strategies that run a
projection (`_strategies`) ask. `row_bytes` is what one seed's backward costs in memory, for chunking.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import LayerError
from .forward import Switches, forward_chain
from .layers import Step, step_index
from .layout import Layout
from .rectified import layer_output, project_autograd
from .reverse import WINDOWED_UNPOOLING, Stage, croppable, reverse_chain
from .rules import Rule

# Memory of one seed's backward, for sizing chunks of seeds against Deconvnet(max_batch_bytes=...). These are
# allowances (a chunk that is a little too big only costs memory, never numbers), in multiples of a size known
# before the backward runs:
# - a chain: the widest signal of any step (its largest per-image output), four times: a reverse step holds its
#   incoming signal, its output, the ReLU mask a rule may read and the unpooling's scatter target at once;
CHAIN_SIGNALS_PER_SEED = 4
# - autograd: the whole input batch (N, C, H, W), sixteen times: each seed gets its own gradient of the batch's
#   input (vmap batches the seeds), and autograd also holds the gradients of the activations on the way, which
#   the allowance puts at fifteen inputs' worth more.
AUTOGRAD_INPUTS_PER_SEED = 16


class ChainPath:
    """A chain mirrored step by step: the forward records switches (and ReLU masks if the rule needs them),
    the reverse pass unpools (by `unpool`), passes ReLUs by the rule and filters with the transposed filters."""

    conventions: dict[str, str] = {}  # a chain has ReLUs only: no conventions
    layout = Layout()  # a chain's layers are planes

    def __init__(self, steps: list[Step], name: str, rule: Rule, unpool: str = "switches") -> None:
        self.steps, self.name, self.rule, self.unpool = steps[: step_index(steps, name) + 1], name, rule, unpool
        self.flipped_filters: dict = {}  # conv -> its transpose as a forward conv's filters, made once per call

    def forward(self, x: Tensor) -> Tensor:
        """Run the chain up to the layer on x (N, C, H, W); returns the layer's maps (N, C, ...), also as `maps`."""
        self.record = forward_chain(self.steps, x, len(self.steps) - 1, keep_masks=self.rule.needs_slope)
        widest = max(torch.Size(s[1:]).numel() for s in self.record.shapes)
        self.row_bytes = widest * x.element_size() * CHAIN_SIGNALS_PER_SEED
        self.maps = self.record.activation
        return self.maps

    @property
    def switches(self) -> dict[str, Switches]:
        return self.record.switches

    def windows_possible(self) -> bool:
        """Whether a seed's reconstruction keeps to its receptive field (`_strategies.ChainWindows` may run it)."""
        return self.record.activation.dim() == 4 and croppable(self.steps) and self.unpool in WINDOWED_UNPOOLING

    def backward(self, seed: Tensor, img: Tensor, *, keep_stages: bool) -> tuple[Tensor, list[Stage]]:
        """seed (B, C, ...) on the layer's maps for image img (B,) -> (B, C, H, W), and the stages if asked."""
        return reverse_chain(
            self.steps,
            self.record,
            seed,
            img=img,
            rule=self.rule,
            keep_stages=keep_stages,
            flips=self.flipped_filters,
            unpooling=self.unpool,
        )


class AutogradPath:
    """Any other model: one recorded forward with the rule's activation backward (and the max-pools' by
    `unpool`), then autograd for the seeds.

    boundaries: module paths whose outputs (and each max-pool's input) give the stages, when not empty."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        rule: Rule,
        boundaries: list[str] = (),
        *,
        unpool: str = "switches",
        layouts: dict[str, Layout] | None = None,
    ) -> None:
        self.model, self.name, self.rule, self.boundaries = model, name, rule, list(boundaries)
        self.unpool, self.layouts = unpool, layouts or {}
        self.layout = self.layouts.get(name)  # the layer's: its maps are what select sees (None: undecided)

    def forward(self, x: Tensor) -> Tensor:
        """Run the model up to the layer on x (N, C, H, W); returns the layer's feature maps (N, C, ...) (tokens
        on their grid), also as `maps`."""
        kept = set(self.boundaries) - {self.name}
        self.leaf, self.out, self.record = layer_output(
            self.model, x, self.name, rule=self.rule, boundaries=kept, unpool=self.unpool, unpools=bool(self.boundaries)
        )
        self.row_bytes = x.numel() * x.element_size() * AUTOGRAD_INPUTS_PER_SEED
        if self.boundaries:  # every kept tensor with a stage per seed
            self.row_bytes += sum(t[0].numel() * t[0].element_size() for *_, t in self.record["boundaries"])
        if self.layout is None:  # no shape-only run gave it (a model that runs on real tensors only)
            if self.out.dim() not in (2, 4):
                raise LayerError(
                    f"cannot tell how layer '{self.name}' lays out its feature maps: its {tuple(self.out.shape)} "
                    "output is not (N, C, H, W) and the model does not run on the meta device; choose a "
                    "convolution's output"
                )
            self.layout = Layout()
        self.maps = self.layout.maps(self.out.detach(), self.name)
        return self.maps

    @property
    def switches(self) -> dict[str, Switches]:
        return self.record["switches"]

    @property
    def conventions(self) -> dict[str, str]:
        return self.record["conventions"]

    def windows_possible(self) -> bool:
        """Never on a chain's windows; this path's windows are crops of the input (`_strategies.FieldWindows`)."""
        return False

    def backward(self, seed: Tensor, img: Tensor, *, keep_stages: bool) -> tuple[Tensor, list[Stage]]:
        """seed (B, C, ...) on the layer's maps for image img (B,) -> (B, C, H, W), and with keep_stages the stages
        (B, C, h, w), from the layer down: the signal arriving at each boundary the layer depends on (as feature
        maps: tokens on their grid), then the input."""
        rows = torch.arange(len(img), device=img.device)
        full = seed.new_zeros(len(img), *self.out.shape)
        full[rows, img] = self.layout.restore(seed, tuple(self.out.shape[1:]))
        kept = self.record["boundaries"] if keep_stages else []
        y, at = project_autograd(self.leaf, self.out, full, stages=[t for *_, t in kept])
        y = y[rows, img]
        if not keep_stages:
            return y, []
        stages, pools = [], sum(kind == "unpool" for _, kind, _ in kept)
        for (path, kind, _), g in reversed(list(zip(kept, at, strict=True))):
            if kind == "unpool":
                pools -= 1
            shown = Layout() if kind == "unpool" else self.layouts.get(path, Layout())
            if g is not None and shown.kind != "unknown":
                name = f"unpool{pools + 1}" if kind == "unpool" else path
                stages.append(Stage(name, kind, path, shown.maps(g[rows, img])))
        return y, [*stages, Stage("input", "deconv", "", y)]


Path = ChainPath | AutogradPath
