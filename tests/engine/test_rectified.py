"""Custom, non-sequential models through the autograd path, against captum on an nn.ReLU-module twin."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from oracle import (
    Concat,
    HandRule,
    Residual,
    autograd_projection,
    hand_group_norm,
    hand_layer_norm,
    hand_twin,
    oracle,
    out_of_place,
    rel_err,
    seeded,
    unpool_oracle,
    zennit_projection,
)
from torch import nn
from transformer_oracle import hand_projection, transformer_twin

import deconvviz

pytestmark = pytest.mark.usefixtures("one_thread")  # small models: see conftest's one_thread


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


OUTSIDE_ATTENTION = [(nn.Softmax(1), "Softmax", "softmax"), (nn.Softmin(1), "Softmin", "softmax")]


@pytest.mark.parametrize("act, name, op", [*OUTSIDE_ATTENTION, (nn.LogSoftmax(1), "LogSoftmax", "logsoftmax")])
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "linear"])
def test_a_softmax_of_the_signal_outside_attention_is_refused(act, name, op, rule):
    x = torch.randn(1, 3, 12, 12)
    why = rf"'act \({name}\)'.*{op} of the signal outside attention.*no {rule} rule.*rule='gradient'"
    with pytest.raises(deconvviz.UnsupportedModelError, match=why):
        deconvviz.Deconvnet(Gated(act), rule=rule).project(x, "conv2")
    deconvviz.Deconvnet(Gated(act), rule=rule).project(x, "conv1")  # before it: fine


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
    with deconvviz.engine.rectified.rectified_relus():
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


# ---- every activation, gate and normalization, against the rules written out by hand (and zennit) ----

RULE_NAMES = ["deconvnet", "guided", "gradient"]
ACTIVATIONS = [
    nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.5, 0.7), nn.LeakyReLU(0.2), nn.PReLU(6, 0.3), nn.ELU(0.7), nn.CELU(1.3),
    nn.SELU(), nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.Hardswish(), nn.Mish(), nn.Softplus(2.0, 3.0),
    nn.Tanh(), nn.Sigmoid(), nn.Hardsigmoid(), nn.LogSigmoid(), nn.Softsign(), nn.Tanhshrink(), nn.Softshrink(0.3),
    nn.Hardshrink(0.3),
]  # fmt: skip


class Activated(nn.Module):
    """conv -> act -> max-pool -> conv -> act -> conv, the activation a module (in-place where it can be)."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 4, 3)
        self.a1, self.a2 = copy.deepcopy(act), copy.deepcopy(act)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.c3(self.a2(self.c2(self.pool(self.a1(self.c1(x))))))


def compare_to_hand(model, layer, x, rule, modes=("max", "map"), top=3, zennit=True, tol=1e-5):
    """deconvviz against the hand twin (plain model for the gradient) and zennit (deconvnet, guided)."""
    dn = deconvviz.Deconvnet(model, rule=rule)
    assert dn.steps is None
    outs = {}
    twin = model if rule == "gradient" else hand_twin(model, rule)
    zennit_twin = hand_twin(model, rule, activation=out_of_place) if zennit and rule != "gradient" else None
    for mode in modes:
        out = dn.project(x, layer, top=top, mode=mode)
        sel = out.selections
        pos = sel.positions if mode == "max" else None
        want = autograd_projection(twin, layer, x, sel.channels, pos, seed_model=model)
        assert want.abs().max() > 0, "degenerate test: the oracle projected nothing"
        assert rel_err(out.images, want) <= tol, (layer, mode, rule)
        if zennit_twin is not None:
            got = zennit_projection(model, layer, x, sel.channels, pos, rule, zennit_twin)
            assert rel_err(out.images, got) <= tol, (layer, mode, rule, "zennit")
        outs[mode] = out
    return outs


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: repr(a))
def test_each_activation_module_matches_the_hand_written_rule_and_zennit(act, rule):
    torch.manual_seed(0)
    model = seeded_like(Activated(act))
    x = torch.randn(2, 3, 14, 13, generator=torch.Generator().manual_seed(3))
    compare_to_hand(model, "c3", x, rule)


def seeded_like(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if not name.endswith("weight") or p.dim() > 1:  # PReLU's slopes keep their values
            p.data.normal_(0, 0.5)
    return model.eval()


class Functional(nn.Module):
    """Every functional form: F.silu, x * sigmoid(x), x * hardsigmoid(x), F.gelu(tanh), in-place leaky ReLU,
    F.layer_norm, F.group_norm, a squeeze-and-excitation gate written with functional calls.
    hand: the same model with the rule written out (HandRule) and gates and std fixed by detach()."""

    def __init__(self, hand: str | None = None):
        super().__init__()
        self.hand = hand
        self.c = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1)] + [nn.Conv2d(8, 8, 3, padding=1) for _ in range(6)])
        self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.ln_w, self.ln_b = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))

    def act(self, f, x):
        return HandRule.apply(x, f, self.hand) if self.hand else None

    def forward(self, x):
        hand, fixed = self.hand, self.hand in ("deconvnet", "guided")
        x = self.c[0](x)
        x = self.act(F.silu, x) if hand else F.silu(x)
        x = self.c[1](x)
        x = self.act(F.silu, x) if hand else x * torch.sigmoid(x)
        x = self.c[2](x)
        x = self.act(F.hardswish, x) if hand else x * F.hardsigmoid(x)
        x = self.c[3](x)
        x = self.act(lambda t: F.gelu(t, approximate="tanh"), x) if hand else F.gelu(x, approximate="tanh")
        g = torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3), keepdim=True)))))
        x = x * (g.detach() if fixed else g)
        x = self.c[4](x).permute(0, 2, 3, 1)
        if fixed:
            x = hand_layer_norm(x, 1, self.ln_w, self.ln_b, 1e-5)
        else:
            x = F.layer_norm(x, (8,), self.ln_w, self.ln_b)
        x = self.c[5](x.permute(0, 3, 1, 2))
        x = hand_group_norm(x, 2, None, None, 1e-5) if fixed else F.group_norm(x, 2)
        x = self.act(lambda t: F.leaky_relu(t, 0.1), x) if hand else F.leaky_relu_(x, 0.1)
        return self.c[6](x)


def twin_conventions(cls, layer: str, rule: str, seed: int) -> set[str]:
    """cls() against cls(hand=rule) in both modes (and against the plain gradient, which only the gradient rule
    equals); the conventions the projection used, all in the root module (none under the gradient rule)."""
    model = seeded_like(cls())
    twin = cls(hand=rule).eval()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 11, 12, generator=torch.Generator().manual_seed(seed))
    dn = deconvviz.Deconvnet(model, rule=rule)
    for mode in ("max", "map"):
        out = dn.project(x, layer, top=3, mode=mode)
        sel = out.selections
        pos = sel.positions if mode == "max" else None
        want = autograd_projection(twin, layer, x, sel.channels, pos, model)
        assert want.abs().max() > 0, "degenerate test: the oracle projected nothing"
        assert rel_err(out.images, want) <= 1e-5, mode
        plain = autograd_projection(model, layer, x, sel.channels, pos)
        assert (rel_err(out.images, plain) <= 1e-5) == (rule == "gradient")  # the conventions do change things
    if rule == "gradient":
        assert out.conventions == {}
        return set()
    assert list(out.conventions) == [""]
    return set(out.conventions[""].split(", "))


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_functional_forms_match_the_hand_written_conventions(rule):
    labels = twin_conventions(Functional, "c.6", rule, seed=4)
    activations = {f"activation rule ({a})" for a in ("SiLU", "Hardswish", "GELU", "LeakyReLU")}
    assert labels == (set() if rule == "gradient" else activations | {"gate fixed", "std fixed"})


class ScaledGates(nn.Module):
    """QuickGELU written three ways (CLIP's x * sigmoid(1.702 x), sigmoid(x * 1.702), in place), a SiLU with
    beta 0.5, and a gate sigmoid(1.702 y) of another tensor y, which stays a fixed gate. hand: the same with the
    rule written out (HandRule on f(t) = t sigmoid(beta t)) and the foreign gate detached."""

    def __init__(self, hand: str | None = None):
        super().__init__()
        self.hand = hand
        self.c = nn.ModuleList([nn.Conv2d(3, 6, 3, padding=1)] + [nn.Conv2d(6, 6, 3, padding=1) for _ in range(5)])

    def gated(self, x, beta, form):
        if self.hand:
            return HandRule.apply(x, lambda t: t * torch.sigmoid(beta * t), self.hand)
        if form == "mul":
            return x * torch.sigmoid(beta * x)
        if form == "rmul":
            return torch.sigmoid(x * beta) * x
        return x.mul_(torch.sigmoid(x.mul(beta)))

    def forward(self, x):
        x = self.gated(self.c[0](x), 1.702, "mul")
        x = self.gated(self.c[1](x), 1.702, "rmul")
        x = self.gated(self.c[2](x), 1.702, "inplace")
        x = self.gated(self.c[3](x), 0.5, "mul")
        g = torch.sigmoid(1.702 * self.c[4](x))
        x = x * (g.detach() if self.hand in ("deconvnet", "guided") else g)
        return self.c[5](x)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_quickgelu_and_scaled_silu_are_activations_and_a_foreign_gate_is_fixed(rule):
    labels = twin_conventions(ScaledGates, "c.5", rule, seed=5)
    want = {"activation rule (QuickGELU)", "activation rule (SiLU(0.5x))", "gate fixed"}
    assert labels == (set() if rule == "gradient" else want)


TORCHVISION = [  # (architecture, layer, input side): layers past the gates, normalizations and activations
    ("mobilenet_v2", "features.4", 32),
    ("efficientnet_b0", "features.3", 32),
    ("mobilenet_v3_small", "features.4", 32),
    ("regnet_y_400mf", "trunk_output.block1", 32),
    ("convnext_tiny", "features.2", 32),
    ("googlenet", "inception3a", 48),
]


@pytest.fixture(scope="module")
def torchvision_models():
    built = {}

    def build(name):
        if name not in built:
            torch.manual_seed(0)
            built[name] = torchvision.models.get_model(name, weights=None, **({"init_weights": True} if name ==
                                                       "googlenet" else {})).eval()  # fmt: skip
        return built[name]

    return build


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("name, layer, side", TORCHVISION)
def test_torchvision_architectures_match_the_hand_written_rules(torchvision_models, name, layer, side, rule):
    model = torchvision_models(name)
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(5))
    outs = compare_to_hand(model, layer, x, rule, top=2, zennit=False)  # zennit: on each activation above
    used = set(outs["max"].conventions.values())
    expected = {
        "mobilenet_v2": {"activation rule (ReLU6)"},
        "efficientnet_b0": {"activation rule (SiLU)", "gate fixed"},
        "mobilenet_v3_small": {"activation rule (Hardswish)", "gate fixed"},
        "regnet_y_400mf": {"gate fixed"},
        "convnext_tiny": {"std fixed", "activation rule (GELU)"},
        "googlenet": set(),
    }[name]
    assert used == (set() if rule == "gradient" else expected)


def test_googlenet_captum_passes_the_plain_gradient_where_deconvviz_applies_the_rule(torchvision_models):
    """GoogLeNet's ReLUs are functional: captum's guided backprop does not see them and returns the gradient."""
    model = torchvision_models("googlenet")
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    out = deconvviz.Deconvnet(model, rule="guided").project(x, "inception3a", top=1)
    sel, mod = out.selections, model.inception3a
    captum = oracle(model, mod, x, sel.channels, sel.positions, "guided")
    gradient = oracle(model, mod, x, sel.channels, sel.positions, "gradient")
    assert rel_err(captum, gradient) <= 1e-6  # silently the plain gradient
    assert rel_err(out.images, captum) > 0.1
    twin = hand_twin(model, "guided", activation=lambda m: m)  # ReLUs as modules: captum now applies its rule
    assert rel_err(out.images, oracle(twin, twin.inception3a, x, sel.channels, sel.positions, "guided")) <= 1e-6


class Attention(nn.Module):
    """A conv stem and one self-attention over positions: softmax of two signals, then a product of two."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        return self.out(self.attn(t, t, t, need_weights=False)[0])


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "linear"])
def test_attention_has_its_weights_fixed_and_is_exact_under_gradient(rule):
    from deconvviz.engine.rectified import layer_output, project_autograd
    from deconvviz.engine.rules import RULES

    model = seeded_like(Attention())
    x = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(7))
    leaf, act, record = layer_output(model, x, "out", rule=RULES[rule])
    seeds = torch.stack([act.detach(), torch.zeros_like(act).index_fill_(1, torch.tensor([3]), 1.0)])
    got = project_autograd(leaf, act, seeds)[0]
    want = hand_projection(transformer_twin(model, rule), "out", x, seeds)
    assert rel_err(got, want) <= 1e-5 and record["conventions"]["attn"] == "attention fixed"
    assert rel_err(got, hand_projection(transformer_twin(model, rule, attention=False), "out", x, seeds)) > 1e-2
    out = deconvviz.Deconvnet(model, rule="gradient").project(x, "out", channels=[1, 3], mode="map")
    want = []
    for i in range(2):
        for c in (1, 3):
            xs = x.clone().requires_grad_(True)
            o = model(xs)[i, :, c]  # map c of tokens on the stem's 5x4 grid: feature c of every token
            want.append(torch.autograd.grad((o * o.detach()).sum(), xs)[0][i])
    assert rel_err(out.images.flatten(0, 1), torch.stack(want)) <= 1e-5


def test_slopes_are_recorded_compactly_and_only_when_the_rule_needs_them():
    from deconvviz.engine.rectified import layer_output
    from deconvviz.engine.rules import RULES

    def saved(act, rule):
        model = seeded_like(Activated(act))
        _, out, _ = layer_output(model, torch.randn(1, 3, 10, 10), "c3", rule=RULES[rule])
        nodes, stack = [], [out.grad_fn]
        while stack:
            n = stack.pop()
            if n is not None:
                if type(n).__name__ == "_ActivatedBackward":
                    nodes.append(n.saved_tensors[0])
                stack.extend(f for f, _ in n.next_functions)
        return nodes

    for act in (nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(), nn.PReLU()):
        assert all(t.dtype == torch.bool for t in saved(act, "guided")) and len(saved(act, "guided")) == 2
    assert all(t.dtype == torch.float32 for t in saved(nn.SiLU(), "gradient"))
    assert saved(nn.GELU(), "deconvnet") == [None, None]


class Mixed(nn.Module):
    """conv, SiLU, torchvision squeeze-and-excitation, conv, GroupNorm, ReLU, max-pool, conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.act = nn.Conv2d(3, 6, 3), nn.SiLU()
        self.se = torchvision.ops.SqueezeExcitation(6, 2)
        self.c2, self.norm, self.relu = nn.Conv2d(6, 6, 3), nn.GroupNorm(2, 6), nn.ReLU()
        self.pool, self.c3 = nn.MaxPool2d(2), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.c3(self.pool(self.relu(self.norm(self.c2(self.se(self.act(self.c1(x))))))))


def test_rule_passes_lists_each_module_for_every_rule():
    from deconvviz.engine.rectified import rule_passes

    passes = {p.module: p.rules for p in rule_passes(seeded_like(Mixed()), (12, 12))}
    for rule in ("deconvnet", "guided"):
        got = {m: r[rule] for m, r in passes.items()}
        assert got["c1"] == "linear" and got["act"] == "activation rule (SiLU)" and got["se"] == "gate fixed"
        assert got["se.fc1"] == "-" and got["se.fc2"] == "-"  # the fixed gate's branch carries no signal back
        assert got["norm"] == "std fixed" and got["relu"] == "ReLU rule" and got["pool"] == "switches"
    assert {r["gradient"] for r in passes.values()} == {"exact"}
    attention = {p.module: p.rules for p in rule_passes(seeded_like(Attention()), (7, 6))}
    assert attention["attn"]["deconvnet"] == "attention fixed" and attention["attn"]["gradient"] == "exact"
    assert attention["stem"]["guided"] == "linear"


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
