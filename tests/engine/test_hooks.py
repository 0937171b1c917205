"""engine.hooks: hooks and eval mode last for the call only, also on error; nothing of deconvviz stays attached to
a user's model after any function that records activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deconvviz
from deconvviz.analysis.occlusion import occlusion_maps
from deconvviz.engine.fields import module_fields, receptive_field
from deconvviz.engine.forward import module_activations
from deconvviz.engine.hooks import evaluating, forward_hooks
from deconvviz.engine.layers import module_outputs
from deconvviz.engine.targets import class_contributions
from deconvviz.errors import ImageError


def hooks_left(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]


class Residual(nn.Module):
    """Not a chain (its forward adds a skip), so every path below goes through hooks; `fail` raises mid-forward."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
        self.fail = False

    def forward(self, x):
        h = self.relu(self.conv1(x))
        h = self.pool(self.relu(h + self.conv2(h)))
        if self.fail:
            raise RuntimeError("broken on purpose")
        return self.head(h)


def test_hooks_run_in_the_block_in_order_and_are_removed_after_it_also_on_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    calls = []
    pre = [(model[0], lambda m, a: calls.append("pre-a")), (model[0], lambda m, a: calls.append("pre-b"))]
    with forward_hooks([(model[1], lambda m, a, o: calls.append(tuple(o.shape)))], pre=pre):
        model(torch.zeros(1, 1, 5, 5))
    assert calls == ["pre-a", "pre-b", (1, 2, 3, 3)] and hooks_left(model) == []
    with pytest.raises(ValueError), forward_hooks([(model[0], lambda m, a, o: None)]):
        assert hooks_left(model) == ["0"]
        raise ValueError
    assert hooks_left(model) == []
    with pytest.raises(AttributeError), forward_hooks([(model[0], lambda m, a, o: None), ("not a module", None)]):
        pass  # the second registration fails: the first is removed all the same
    assert hooks_left(model) == []


def test_evaluating_restores_every_training_flag_also_on_error():
    model = nn.Sequential(nn.Dropout(), nn.BatchNorm2d(2))
    model[1].eval()  # a mixed state: restored exactly, not as model.train()
    with pytest.raises(ValueError), evaluating(model):
        assert not any(m.training for m in model.modules())
        raise ValueError
    assert [m.training for m in model.modules()] == [True, True, False]


def test_no_hook_stays_on_the_model_after_any_recording_call():
    model = Residual().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    module_activations(model, x, {"a": "conv2", "b": "pool"})
    module_outputs(model, (8, 8))
    receptive_field(model, "pool", input_size=(8, 8))
    module_fields(model, (8, 8))
    class_contributions(model, x, "pool", cls=1)
    occlusion_maps(model, x, "pool", channel=0, size=4, stride=4)
    deconvviz.Deconvnet(model).project(x, "pool", channels=[0, 1])
    assert hooks_left(model) == [] and not model.training


def test_no_hook_stays_after_a_call_that_fails():
    model = Residual()
    model.fail = True
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RuntimeError):
        module_activations(model, x, {"a": "conv2"})
    with pytest.raises(ImageError):
        receptive_field(model, "pool", input_size=(8, 8))
    with pytest.raises(ImageError):
        deconvviz.Deconvnet(model).project(x, "conv2", channels=[0])
    assert hooks_left(model) == [] and model.training


class Pair(nn.Module):
    """A block returning (hidden states, a second tensor), as transformers' blocks do; the rest of the forward uses
    both, and writes into the first in place (so a hook must hand it on as a copy, in its place)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return y, y.mean((2, 3))


class PairNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block, self.head = Pair(), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h, pooled = self.block(x)
        h += pooled[:, :, None, None]
        return self.head(h)


def test_a_tuple_result_is_read_by_its_first_tensor_in_every_recorder():
    """The layer's maps are the tuple's first tensor: the gradient rule's projection is plain autograd of it, the
    activations, shapes and occlusion read it, and the model's own forward still gets the whole tuple."""
    from deconvviz.engine.hooks import hidden_states, with_hidden_states

    torch.manual_seed(0)
    model = PairNet().double().eval()
    x = torch.randn(1, 3, 9, 9, dtype=torch.double)
    xs = x.clone().requires_grad_(True)
    first = model.block(xs)[0]
    seed = torch.zeros_like(first)
    seed[0, 2] = first[0, 2].detach()
    want = torch.autograd.grad(first, xs, seed)[0]
    out = deconvviz.Deconvnet(model, rule="gradient").project(x, "block", channels=[2], mode="map")
    assert torch.allclose(out.images[0, 0], want[0], atol=1e-12)
    assert torch.equal(module_activations(model, x, {"b": "block"})["b"], first.detach())
    assert next(r.shape for r in module_outputs(model, (9, 9)) if r.name == "block") == (4, 7, 7)
    assert not hooks_left(model)
    t, u = torch.zeros(2), torch.ones(2)
    assert hidden_states((t, u)) is t and hidden_states([t]) is t and hidden_states((None, t)) is None
    assert with_hidden_states((t, u), u)[0] is u and with_hidden_states((t, u), u)[1] is u
