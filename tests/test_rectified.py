"""Custom, non-sequential models through the autograd path, against captum on an nn.ReLU-module twin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from oracle import Concat, Residual, oracle, rel_err, seeded, unpool_oracle
from torch import nn

import deconvviz


def compare(model, twin, layer, x, modes=("max", "map")):
    dn = deconvviz.Deconvnet(model)
    assert dn.steps is None  # the autograd path
    for mode in modes:
        out = dn.project(x, layer, top=3, mode=mode)
        sel = out.selections
        want = oracle(
            twin, dict(twin.named_modules())[layer], x, sel.channels, sel.positions if mode == "max" else None
        )
        assert want.abs().max() > 0
        assert rel_err(out.images, want) <= 1e-5, (layer, mode)


@pytest.mark.parametrize("relu", ["module", "functional", "shared"])
@pytest.mark.parametrize("layer", ["r3", "pool", "r4", "head.2"])
def test_residual_model_matches_captum(relu, layer):
    torch.manual_seed(0)
    twin = Residual("module")
    for p in twin.parameters():
        p.data.normal_(0, 0.5)
    model = Residual(relu)
    model.load_state_dict(twin.state_dict())
    x = torch.randn(2, 3, 19, 23, generator=torch.Generator().manual_seed(1))
    if relu != "module" and layer in ("r3", "r4"):
        layer = {"r3": "a2", "r4": "down"}[layer]  # those ReLU modules are not used (or shared): another layer
    compare(model.eval(), twin.eval(), layer, x)


def test_concatenation_model_matches_captum():
    torch.manual_seed(0)
    model = Concat()
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    x = torch.randn(2, 3, 21, 17, generator=torch.Generator().manual_seed(2))
    compare(model.eval(), model.eval(), "rc", x)
    compare(model.eval(), model.eval(), "pool", x)


def test_switches_recorded_and_model_untouched():
    torch.manual_seed(0)
    model = Residual("functional").train()
    x = torch.randn(1, 3, 16, 16)
    out = deconvviz.Deconvnet(model).project(x, "b1", top=2)
    sw = out.switches["pool"]
    assert sw.indices.shape == (1, 8, 8, 8) and sw.input_size == (16, 16) and sw.overlapping
    got = []
    h = model.pool.register_forward_hook(lambda m, i, o: got.append(i[0].detach()))
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    model.train()
    assert torch.equal(sw.indices, F.max_pool2d(got[0], 3, 2, 1, return_indices=True)[1])
    assert model.training and all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())
    assert out.images.shape == (1, 2, 3, 16, 16)


class Gated(nn.Module):
    def __init__(self, act: nn.Module | None = None, product: bool = False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.act = act if act is not None else nn.ReLU()
        self.product = product

    def forward(self, x):
        y = self.act(self.conv1(x))
        if self.product:
            y = y * torch.relu(self.conv1(x))
        return F.relu(self.conv2(y))


@pytest.mark.parametrize("act, name", [(nn.Sigmoid(), "Sigmoid"), (nn.GELU(), "GELU"), (nn.LeakyReLU(), "LeakyReLU")])
def test_nonlinearities_without_a_deconvnet_rule_are_refused(act, name):
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(deconvviz.UnsupportedModelError, match=rf"'act \({name}\)'.*no deconvnet rule"):
        deconvviz.Deconvnet(Gated(act)).project(x, "conv2")
    deconvviz.Deconvnet(Gated(act)).project(x, "conv1")  # before it: fine


def test_product_of_two_signals_is_refused():
    with pytest.raises(deconvviz.UnsupportedModelError, match="multiplies two input-dependent signals"):
        deconvviz.Deconvnet(Gated(product=True)).project(torch.randn(1, 3, 12, 12), "conv2")


def test_layer_called_twice_or_unknown():
    model = Residual("shared")
    with pytest.raises(deconvviz.LayerError, match="runs 4 times"):
        deconvviz.Deconvnet(model).project(torch.randn(1, 3, 16, 16), "shared")
    with pytest.raises(deconvviz.LayerError, match="did you mean 'stem'"):
        deconvviz.Deconvnet(model).project(torch.randn(1, 3, 16, 16), "stemm")


class InPlace(nn.Module):
    """A ReLU on the model's own input, and a residual addition and ReLU done in place on the output of `bn`
    (as torchvision's ResNet does); twin=True: the same net with out-of-place nn.ReLU modules (for captum)."""

    def __init__(self, twin: bool = False):
        super().__init__()
        self.twin = twin
        self.r0, self.r1, self.r2 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.c0, self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 4, 3)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        if self.twin:
            y = self.r1(self.c0(self.r0(x)))
            return self.c2(self.r2(self.bn(self.c1(y)) + y))
        y = F.relu(self.c0(F.relu(x, inplace=True)))
        z = self.bn(self.c1(y))
        z += y
        return self.c2(F.relu(z, inplace=True))


def test_in_place_ops_after_the_layer_and_on_the_input():
    torch.manual_seed(0)
    twin = InPlace(twin=True).eval()
    for p in twin.parameters():
        p.data.normal_(0, 0.5)
    twin.bn.running_mean.uniform_(-0.5, 0.5)
    twin.bn.running_var.uniform_(0.5, 2)
    model = InPlace()
    model.load_state_dict(twin.state_dict())
    x = torch.randn(2, 3, 13, 11, generator=torch.Generator().manual_seed(4))
    before = x.clone()
    compare(model.eval(), twin, "bn", x)  # what in-place ops later do to bn's output must not leak in
    compare(model.eval(), twin, "c2", x)
    assert torch.equal(x, before)  # the caller's tensor is never written


class Act(nn.Module):
    """conv -> fn -> conv, to try one operation between two layers."""

    def __init__(self, fn, norm: nn.Module | None = None):
        super().__init__()
        self.c1, self.c2, self.fn, self.norm = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3), fn, norm or nn.Identity()
        self.w = nn.Parameter(torch.randn(6, 1, 1))

    def forward(self, x):
        return self.c2(self.fn(self, self.norm(self.c1(x))))


@pytest.mark.parametrize(
    "fn, norm, why",
    [
        (lambda m, t: t * (t > 0), None, "computed from the input without a gradient"),
        (lambda m, t: t.relu() * t.detach(), None, "computed from the input without a gradient"),
        (lambda m, t: F.relu(t) / (t.detach().abs() + 1), None, "computed from the input without a gradient"),
        (lambda m, t: torch.div(torch.full_like(t, 2.0), F.relu(t) + 1), None, "divides by an input-dependent"),
        (lambda m, t: F.relu(t), nn.InstanceNorm2d(6), "batch's own statistics"),
        (lambda m, t: F.relu(t), nn.BatchNorm2d(6, track_running_stats=False), "batch's own statistics"),
        (lambda m, t: F.dropout(F.relu(t), 0.5, training=True), None, "draws random numbers"),
    ],
)
def test_data_dependent_and_random_operations_are_refused(fn, norm, why):
    x, model = torch.randn(2, 3, 12, 12), Act(fn, norm).eval()
    rng = torch.get_rng_state()
    with pytest.raises(deconvviz.UnsupportedModelError, match=why):
        deconvviz.Deconvnet(model).project(x, "c2")
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(
    "fn",
    [
        lambda m, t: F.relu(t) * (m.w > 0),  # a mask of parameters, not of the signal: linear
        lambda m, t: torch.cat([F.relu(t), torch.zeros_like(t)], 1)[:, :6],
        lambda m, t: F.relu(F.pad(t, (1, 1, 1, 1), mode="reflect")),
    ],
)
def test_linear_operations_are_projected_through(fn):
    torch.manual_seed(0)
    model = Act(fn).eval()
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    out = deconvviz.Deconvnet(model).project(x, "c2", top=2, mode="map")
    # independent: autograd through the model with the ReLU backward rectified, seeded with the maps
    xs = x.clone().requires_grad_(True)
    got = []
    h = model.c2.register_forward_hook(lambda m, i, o: got.append(o))
    with deconvviz.rectified.rectified_relus():
        model(xs)
    h.remove()
    want = []
    for i in range(2):
        for c in out.selections.channels[i].tolist():
            seed = torch.zeros_like(got[0])
            seed[i, c] = got[0][i, c].detach()
            want.append(torch.autograd.grad(got[0], xs, seed, retain_graph=True)[0][i])
    assert rel_err(out.images.flatten(0, 1), torch.stack(want)) <= 1e-5


def test_checkpointed_model_is_refused_not_crashed():
    densenet = torchvision.models.densenet121(weights=None, memory_efficient=True).eval()
    with pytest.raises(deconvviz.UnsupportedModelError, match="checkpoint"):
        deconvviz.Deconvnet(densenet).project(torch.randn(1, 3, 32, 32), "features.denseblock1", channels=[3])


def test_bad_input_for_a_custom_model():
    with pytest.raises(deconvviz.ImageError, match=r"cannot run on an input of shape \(1, 4, 16, 16\)"):
        deconvviz.Deconvnet(Residual()).project(torch.randn(1, 4, 16, 16), "stem")


def test_inference_mode_tensors_and_calls():
    model = seeded(Residual())
    x = torch.randn(1, 3, 16, 16)
    want = deconvviz.Deconvnet(model).project(x, "b1", top=2).images
    with torch.inference_mode():
        xi = x.clone()
        got = deconvviz.Deconvnet(model).project(xi, "b1", top=2).images
    assert torch.equal(got, want)


class Pools(nn.Module):
    """A residual block between a ceil-mode overlapping pool and a functional (F.max_pool2d) one."""

    def __init__(self):
        super().__init__()
        self.stem, self.r1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.a, self.ra, self.b, self.rb = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.ReLU()
        self.last = nn.MaxPool2d((2, 3), stride=(2, 1), dilation=(1, 2))

    def forward(self, x):
        x = self.pool(self.r1(self.stem(x)))
        x = self.rb(x + self.b(self.ra(self.a(x))))
        return self.last(x)


@pytest.mark.parametrize("how", ["switches", "nearest", "bilinear", "fixed"])
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient", "linear"])
def test_unpooling_through_autograd_matches_the_oracle(how, rule):
    """The autograd path swaps each max-pool's backward for the unpooling; checked against a twin whose pools
    and ReLUs have hand-written backwards (tests/oracle.py), on odd sizes."""
    model = seeded(Pools())
    x = torch.randn(2, 3, 21, 27, generator=torch.Generator().manual_seed(3))
    dn = deconvviz.Deconvnet(model, rule=rule, unpool=how)
    assert dn.steps is None
    for layer, mode in (("last", "max"), ("rb", "map"), ("pool", "max")):
        out = dn.project(x, layer, top=2, mode=mode)
        sel = out.selections
        want = unpool_oracle(model, layer, x, sel.channels, sel.positions if mode == "max" else None, rule, how)
        assert want.abs().max() > 0 and out.unpool == how
        assert rel_err(out.images, want) <= 1e-5, (layer, mode)
        assert set(out.switches) == {"pool", "last"}  # still recorded, whatever the unpooling


def test_switches_through_autograd_stay_bit_for_bit():
    model, x = seeded(Pools()), torch.randn(1, 3, 21, 27, generator=torch.Generator().manual_seed(4))
    plain = deconvviz.Deconvnet(model).project(x, "last", top=3)
    named = deconvviz.Deconvnet(model, unpool="nearest").project(x, "last", top=3, unpool="switches")
    assert torch.equal(plain.images, named.images)


class _AdaptiveMax(nn.Module):
    def __init__(self, indices: bool):
        super().__init__()
        self.conv, self.indices = nn.Conv2d(3, 4, 3), indices

    def forward(self, x):
        if self.indices:
            return F.max_pool2d(self.conv(x), 2, return_indices=True)[0]
        return F.adaptive_max_pool2d(self.conv(x), 2)


@pytest.mark.parametrize("indices", [False, True])
def test_max_pools_without_a_swappable_backward_are_refused(indices):
    model, x = _AdaptiveMax(indices).eval(), torch.randn(1, 3, 12, 12)
    deconvviz.Deconvnet(model).project(x, "conv", top=1)  # switches: fine
    with pytest.raises(deconvviz.UnsupportedModelError, match="2-d max-pools only.*use unpool='switches'"):
        deconvviz.Deconvnet(model, unpool="nearest").project(x, "conv", top=1)
