"""A model resolved once: whether it is a chain or goes through autograd, its layer names, its stages and the
receptive fields found so far, in one `ModelView` that the rest of the package receives instead of the raw model.

The view is made from the model's structure (its modules, their order and geometry, and the forward hooks on it),
which `ModelView.current` checks cheaply: a `Deconvnet` makes a new view when the model changed since the last
call, so a model changed after the `Deconvnet` was made is projected as it is now. Public functions that take a
model accept a view as well (`view_of`), and make one at their entry when given a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.nn.modules import module as _registry
from torchvision.models import VGG

from .layers import (
    Step,
    chain_of,
    check_stage_modules,
    default_layer,
    layer_names,
    resolve,
    stage_modules,
    step_index,
    vgg_aliases,
)

# the module settings that decide a chain (layers._plain) and receptive fields (layers.receptive_fields, fields.py)
_GEOMETRY = ("kernel_size", "stride", "padding", "dilation", "padding_mode", "ceil_mode", "groups", "output_size")


def _structure(model: nn.Module) -> tuple:
    """What a view is made from, cheaply: each module's path, identity, type, geometry and whether hooks are on it
    (or on every module: global hooks). Weights are not in it: a view holds no weights, only the modules."""
    hooked = bool(_registry._global_forward_hooks or _registry._global_forward_pre_hooks)
    return (
        hooked,
        *(
            (
                name,
                id(m),
                type(m),
                bool(m._forward_hooks or m._forward_pre_hooks),
                tuple(_setting(getattr(m, a, None)) for a in _GEOMETRY),
                getattr(m, "running_mean", ()) is None,
            )
            for name, m in model.named_modules()
        ),
    )


def _setting(value):
    """A module setting as a plain value to compare (a tensor or other object by its type only: never `==`)."""
    if isinstance(value, (tuple, list)):
        return tuple(_setting(v) for v in value)
    return value if isinstance(value, (int, float, str, type(None))) else type(value).__name__


@dataclass(eq=False)
class ModelView:
    """One model, resolved: `steps` (the chain of mirrored steps, or None: it goes through autograd), its layer
    names and their module paths (`layer_names`, `resolve`, VGG's `aliases`), its stage boundaries
    (`stage_modules`), and `fields`, the receptive fields found so far (fields.receptive_field fills it, by layer,
    input size and channels). Make one with `ModelView.of(model)` or `view_of(model_or_view)`."""

    model: nn.Module
    steps: list[Step] | None
    structure: tuple = field(repr=False)
    fields: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, model: nn.Module) -> ModelView:
        return cls(model, chain_of(model), _structure(model))

    def current(self, model: nn.Module) -> bool:
        """Whether this view still describes `model`: the same object, with the same structure."""
        return model is self.model and _structure(model) == self.structure

    @property
    def is_chain(self) -> bool:
        return self.steps is not None

    @property
    def aliases(self) -> dict[str, str]:
        """VGG's familiar names (conv5_3, pool5, fc7) -> module paths; {} for any other model."""
        return vgg_aliases(self.steps) if self.steps is not None and isinstance(self.model, VGG) else {}

    def resolve(self, layer: str) -> str:
        """Module path for a layer name or alias; an unknown name is a LayerError with a suggestion."""
        return resolve(self.model, self.steps, layer)

    def step_index(self, layer: str) -> int:
        """Position in the chain of the step a layer name or alias resolves to (chains only)."""
        return step_index(self.steps, self.resolve(layer))

    def layer_names(self) -> list[str]:
        """Every name `project` accepts, in forward order (aliases first for VGG)."""
        return layer_names(self.model, self.steps)

    def default_layer(self) -> str:
        """The layer shown when none is named (layers.default_layer)."""
        return default_layer(self.model, self.steps)

    def stage_modules(self) -> list[str]:
        """Default stage boundaries of the model on the autograd path (layers.stage_modules)."""
        return stage_modules(self.model)

    def check_stage_modules(self, stages: list[str]) -> list[str]:
        """Module paths chosen as stage boundaries, checked (layers.check_stage_modules)."""
        return check_stage_modules(self.model, stages)


def view_of(model: nn.Module | ModelView) -> ModelView:
    """The view of a model (made now), or the view itself."""
    return model if isinstance(model, ModelView) else ModelView.of(model)
