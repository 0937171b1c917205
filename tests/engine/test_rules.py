"""The three ReLU rules (deconvnet, guided backprop, gradient) on every path, against captum and by hand."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import torchvision
from oracle import VGGS, Concat, Residual, layer_activation, oracle, randomized, rel_err, seeded, vgg
from torch import nn

import deconvviz
from deconvviz.engine.layers import vgg_aliases
from deconvviz.engine.reverse import reverse_cropped
from deconvviz.engine.rules import RULES, Rule, get_rule

TOL = 1e-5
OTHER_RULES = ["guided", "gradient"]


def check(model, layer_name, module, x, rule, top=2, modes=("max", "map"), crop=None):
    dn = deconvviz.Deconvnet(model, rule=rule, crop=crop)
    for mode in modes:
        out = dn.project(x, layer_name, top=top, mode=mode)
        assert out.rule == rule
        sel = out.selections
        want = oracle(model, module, x, sel.channels, sel.positions if mode == "max" else None, rule)
        assert want.abs().max() > 0, "degenerate test: the oracle projected nothing"
        assert rel_err(out.images, want) <= TOL, (layer_name, mode, rule)


class Tiny(nn.Module):
    """x -> conv 1x1 (1 -> 3 channels: x, -x, x/2) -> ReLU -> conv 1x1 (3 -> 1: 3, 1, -4); functional ReLU."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 3, 1, bias=False), nn.Conv2d(3, 1, 1, bias=False)
        self.c1.weight.data = torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1, 1)
        self.c2.weight.data = torch.tensor([3.0, 1.0, -4.0]).view(1, 3, 1, 1)

    def forward(self, x):
        return self.c2(F.relu(self.c1(x)))


@pytest.mark.parametrize("path", ["chain", "windows", "autograd"])
def test_hand_computed_rules(path):
    """At x = 1: hidden = (1, -1, 0.5), ReLU mask (T, F, T), output 3*1 + 1*0 - 4*0.5 = 1, the seed.
    Signal back at the ReLU: (3, 1, -4) * 1.
    deconvnet: ReLU of the signal (3, 1, 0)             -> x: 1*3 - 1*1 + 0.5*0  = 2
    guided:    ReLU of the signal, masked (3, 0, 0)     -> x: 3
    gradient:  the signal, masked (3, 0, -4)            -> x: 3 - 0.5*4 = 1 (d out / dx at x = 1)"""
    tiny = Tiny()
    model = tiny if path == "autograd" else nn.Sequential(tiny.c1, nn.ReLU(), tiny.c2)
    x = torch.ones(1, 1, 1, 1)
    want = {"deconvnet": 2.0, "guided": 3.0, "gradient": 1.0}
    layer = "c2" if path == "autograd" else "2"
    for rule, value in want.items():
        dn = deconvviz.Deconvnet(model, rule=rule, crop=True if path == "windows" else False)
        with mock.patch("deconvviz.engine._strategies.reverse_cropped", wraps=reverse_cropped) as spy:
            out = dn.project(x, layer, channels=[0])
        assert spy.called == (path == "windows")
        assert out.images.flatten().tolist() == [value], rule


def test_gradient_rule_is_the_autograd_gradient():
    """On a model whose forward is plain torch, the gradient rule is d(seed . layer) / dx, by autograd."""
    model = randomized(
        nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU()
        )  # fmt: skip
    )
    x = torch.randn(2, 3, 21, 19, generator=torch.Generator().manual_seed(3))
    out = deconvviz.Deconvnet(model, rule="gradient").project(x, "5", top=3, mode="map")
    for i in range(2):
        for j, c in enumerate(out.selections.channels[i].tolist()):
            xs = x[i : i + 1].clone().requires_grad_(True)
            a = model(xs)
            (g,) = torch.autograd.grad((a[0, c] * a[0, c].detach()).sum(), xs)
            assert rel_err(out.images[i, j], g[0]) <= TOL


@pytest.mark.parametrize("rule", OTHER_RULES)
def test_sequential_with_ceil_mode_padded_pools_strided_convs(rule):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Dropout(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4), nn.ReLU(),
        nn.MaxPool2d(3, stride=1, dilation=2),
    )  # fmt: skip
    randomized(model)
    x = torch.randn(2, 3, 97, 121, generator=torch.Generator().manual_seed(6))
    for i in ["3", "5", "7", "9", "10"]:
        check(model, i, model[int(i)], x, rule, top=3)


@pytest.mark.parametrize("rule", OTHER_RULES)
@pytest.mark.parametrize("crop", [True, False])
def test_windows_match_full_pass_and_captum(rule, crop):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 16, 3, padding=2, dilation=2), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    randomized(model)
    x = torch.randn(3, 3, 97, 83, generator=torch.Generator().manual_seed(9))
    for layer in ["2", "3", "5", "8"]:
        for mode in ("max", "map"):
            full = deconvviz.Deconvnet(model, rule=rule, crop=False).project(x, layer, top=6, mode=mode)
            fast = deconvviz.Deconvnet(model, rule=rule, crop=crop).project(x, layer, top=6, mode=mode)
            assert rel_err(fast.images, full.images) <= 1e-6, (layer, mode)
    check(model, "8", model[8], x, rule, top=4, crop=crop)


@pytest.mark.parametrize("rule", OTHER_RULES)
def test_alexnet_overlapping_pools(rule):
    torch.manual_seed(0)
    model = torchvision.models.alexnet().eval()
    x = torch.randn(2, 3, 131, 117, generator=torch.Generator().manual_seed(5))
    for layer in ["features.2", "features.10", "classifier.5"]:
        check(model, layer, dict(model.named_modules())[layer], x, rule, top=2)


@pytest.mark.parametrize("rule", OTHER_RULES)
@pytest.mark.parametrize("relu", ["module", "functional", "shared"])
def test_autograd_path_residual_models(rule, relu):
    model, twin = seeded(Residual(relu)), seeded(Residual("module"))
    x = torch.randn(2, 3, 17, 15, generator=torch.Generator().manual_seed(1))
    dn = deconvviz.Deconvnet(model, rule=rule)
    assert dn.steps is None
    for layer in ["r3", "pool", "head.2"]:
        for mode in ("max", "map"):
            out = dn.project(x, layer, top=3, mode=mode)
            sel = out.selections
            mod = dict(twin.named_modules())[layer]
            want = oracle(twin, mod, x, sel.channels, sel.positions if mode == "max" else None, rule)
            assert want.abs().max() > 0
            assert rel_err(out.images, want) <= TOL, (layer, mode)


@pytest.mark.parametrize("rule", OTHER_RULES)
def test_autograd_path_concatenation(rule):
    model = seeded(Concat())
    x = torch.randn(2, 3, 14, 13, generator=torch.Generator().manual_seed(2))
    out = deconvviz.Deconvnet(model, rule=rule).project(x, "rc", top=3, mode="map")
    want = oracle(model, model.rc, x, out.selections.channels, None, rule)
    assert rel_err(out.images, want) <= TOL


@pytest.mark.parametrize("rule", OTHER_RULES)
def test_stages_for_every_rule_end_in_the_image(rule):
    model = vgg("vgg11")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    out = deconvviz.Deconvnet(model, rule=rule).project(x, "conv4_2", top=2, keep_stages=True)
    assert [s.name for s in out.stages][0] == "deconv4" and out.stages[-1].name == "deconv1"
    assert torch.equal(out.stages[-1].tensor, out.images)
    plain = deconvviz.Deconvnet(model).project(x, "conv4_2", top=2, rule=rule)  # per call
    assert plain.rule == rule and rel_err(plain.images, out.images) <= 1e-6


def test_rules_differ_and_deconvnet_needs_no_masks():
    model = vgg("vgg11")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    pics = {r: deconvviz.Deconvnet(model, rule=r, crop=False).project(x, "conv3_2", top=1).images for r in RULES}
    for a in RULES:
        for b in RULES:
            if a < b:
                assert rel_err(pics[a], pics[b]) > 0.01, (a, b)
    assert pics["guided"].abs().sum() > 0
    dn = deconvviz.Deconvnet(model)
    assert dn.forward(x).masks == {}


def test_masks_are_booleans_recorded_only_when_asked():
    from deconvviz.engine.forward import forward_chain

    model = vgg("vgg11")
    steps = deconvviz.Deconvnet(model).steps
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    rec = forward_chain(steps, x, 5, keep_masks=True)
    relus = [s.name for s in steps[:6] if isinstance(s.module, nn.ReLU)]
    assert list(rec.masks) == relus and all(m.dtype == torch.bool for m in rec.masks.values())
    mods = dict(model.named_modules())
    for name in relus:
        assert torch.equal(rec.masks[name], layer_activation(model, mods[name], x) > 0)
    assert forward_chain(steps, x, 5).masks == {}


def test_unknown_rule_names_the_valid_ones():
    with pytest.raises(deconvviz.SelectionError, match="unknown rule 'guidd'; did you mean 'guided'"):
        deconvviz.Deconvnet(nn.Sequential(nn.Conv2d(1, 1, 1)), rule="guidd")
    with pytest.raises(deconvviz.SelectionError, match="valid: deconvnet, guided, gradient"):
        deconvviz.Deconvnet(nn.Sequential(nn.Conv2d(1, 1, 1))).project(torch.ones(1, 1, 2, 2), "0", rule="x")
    assert get_rule("guided") is get_rule(RULES["guided"])


def test_a_fourth_rule_is_one_class():
    """A new rule plugs into every path without other changes (here: ReLU passes the signal unchanged)."""

    class Identity(Rule):
        name, needs_slope, title = "identity", False, "identity"

        def backward(self, signal, slope):
            return signal

    model = randomized(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.ReLU()))
    x = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    out = deconvviz.Deconvnet(model, rule=Identity()).project(x, "3", channels=[1], mode="map")
    seed = layer_activation(model, model[3], x)
    seed[:, 0] = 0
    hidden = torch.nn.grad.conv2d_input((1, 4, 7, 7), model[2].weight.detach(), seed)
    want = torch.nn.grad.conv2d_input(x.shape, model[0].weight.detach(), hidden)
    assert out.rule == "identity" and rel_err(out.images[0, 0], want[0]) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", VGGS)
def test_other_rules_on_every_vgg_every_conv_and_pool_layer(name):
    model = vgg(name)
    steps = deconvviz.Deconvnet(model).steps
    mods = dict(model.named_modules())
    x_odd = torch.randn(1, 3, 45, 67, generator=torch.Generator().manual_seed(2))
    for rule in OTHER_RULES:
        for alias, path in vgg_aliases(steps).items():
            if alias.startswith(("conv", "pool")):
                check(model, alias, mods[path], x_odd, rule)
    if name in ("vgg16", "vgg16_bn"):
        x224 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        for rule in OTHER_RULES:
            check(model, "conv5_3", mods[vgg_aliases(steps)["conv5_3"]], x224, rule, top=1)


def test_linear_rule_is_the_plain_transpose_by_name():
    """The built-in `linear` rule (Mahendran & Vedaldi's fourth combination): the same hand-computed transpose
    as an identity ReLU, chosen by name, with no mask recorded."""
    assert list(RULES) == ["deconvnet", "guided", "gradient", "linear"] and not RULES["linear"].needs_slope
    model = randomized(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.ReLU()))
    x = torch.randn(1, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    out = deconvviz.Deconvnet(model, rule="linear").project(x, "3", channels=[0], mode="map")
    seed = layer_activation(model, model[3], x)
    seed[:, 1] = 0
    hidden = torch.nn.grad.conv2d_input((1, 4, 7, 7), model[2].weight.detach(), seed)
    want = torch.nn.grad.conv2d_input(x.shape, model[0].weight.detach(), hidden)
    assert out.rule == "linear" and rel_err(out.images[0, 0], want[0]) <= TOL
