"""The sanity report's numbers against independent recomputations on tiny models, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import unpool_oracle
from scipy.stats import rankdata
from torch import nn

import deconvviz
from deconvviz.analysis.sanity import randomizable, randomized_copy, sanity_report, similarity


def chain() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    with torch.no_grad():
        model[4].running_mean.uniform_(-0.2, 0.2)
        model[4].running_var.uniform_(0.5, 2)
    return model.eval()


def pearson_of_ranks(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho written out: Pearson correlation of average ranks."""
    ra, rb = rankdata(a.ravel()), rankdata(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def gradient_of_unit(model: nn.Module, x: torch.Tensor, upto: int, channel: int, pos: int, value: float):
    """d(value * pre-activation at (channel, pos)) / dx by plain autograd: the gradient rule, independently."""
    xs = x.clone().requires_grad_(True)
    z = model[: upto + 1](xs)
    (g,) = torch.autograd.grad(z[0, channel].flatten()[pos] * value, xs)
    return g[0]


def test_gradient_cascade_matches_autograd_on_hand_randomized_copies():
    model = chain()
    x = torch.randn(1, 3, 20, 18, generator=torch.Generator().manual_seed(1))
    rep = sanity_report(model, x, "7", rules=["gradient"], seed=5, units=3)
    assert rep.randomized == ["6", "4", "3", "0"]  # nearest the layer first: conv, BN, conv, conv
    act = model(x).detach()
    c = int(act[0].flatten(1).amax(1).argmax())
    pos = int(act[0, c].flatten().argmax())
    assert rep.channel == c and rep.position == divmod(pos, act.shape[-1])
    value = float(act[0, c].flatten()[pos])
    t, b, left, right = rep.box
    base = gradient_of_unit(model, x, 6, c, pos, value)  # seeded at the pre-activation: conv "6"
    assert torch.allclose(rep.images["gradient"][0], base, atol=1e-6)
    modules = dict(model.named_modules())
    for i in range(4):
        twin = chain()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for name in rep.randomized[: i + 1]:  # the documented protocol, written out
                torch.manual_seed(5 + list(modules).index(name))
                dict(twin.named_modules())[name].reset_parameters()
                if name == "4":
                    twin[4].reset_running_stats()
        want = gradient_of_unit(twin, x, 6, c, pos, value)
        assert torch.allclose(rep.images["gradient"][i + 1], want, atol=1e-6)
        a, w = base[:, t:b, left:right].abs().sum(0).numpy(), want[:, t:b, left:right].abs().sum(0).numpy()
        assert rep.cascading["gradient"][i].spearman_abs == pytest.approx(pearson_of_ranks(a, w), abs=1e-9)
        s1, s2 = base[:, t:b, left:right].sum(0).numpy(), want[:, t:b, left:right].sum(0).numpy()
        assert rep.cascading["gradient"][i].spearman == pytest.approx(pearson_of_ranks(s1, s2), abs=1e-9)


def test_a_layer_reset_to_the_values_it_holds_changes_nothing():
    """Re-initializing a BatchNorm that is at its defaults leaves every rule's projection as it was."""
    model = chain()
    model[4].reset_parameters()
    model[4].reset_running_stats()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    rep = sanity_report(model, x, "7", seed=0, units=2)
    for rule in rep.rules:
        same = rep.independent[rule][rep.randomized.index("4")]
        assert same.spearman_abs == pytest.approx(1.0) and same.spearman == pytest.approx(1.0)
        assert same.ssim == pytest.approx(1.0)
        moved = rep.independent[rule][rep.randomized.index("3")]
        assert moved.spearman_abs < 0.999


def test_similarity_measures_known_cases():
    r = torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(3))
    box = (0, 12, 0, 12)
    same = similarity(r, 2.5 * r, box)  # scale does not matter
    assert same.spearman_abs == pytest.approx(1) and same.spearman == pytest.approx(1) and same.ssim == pytest.approx(1)
    flipped = similarity(r, -r, box)  # the sign: r and -r rank opposite, |r| alike
    assert flipped.spearman == pytest.approx(-1) and flipped.spearman_abs == pytest.approx(1)
    zero = similarity(r, torch.zeros_like(r), box)
    assert zero.spearman_abs is None and zero.ssim is None


def test_specificity_and_recovery_are_means_of_pairwise_similarities():
    model = chain()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    rep = sanity_report(model, x, "7", rules=["deconvnet"], units=3)
    units = rep.specificity_units
    assert len(units) == 3
    dn = deconvviz.Deconvnet(model)
    out = dn.project(x, "7", channels=units, mode="max")
    boxes = dn.receptive_field_boxes(out)[0].tolist()
    pairs = []
    for i in range(3):
        for j in range(i + 1, 3):
            box = tuple(f(boxes[i][k], boxes[j][k]) for k, f in enumerate((min, max, min, max)))
            pairs.append(similarity(out.images[0, i], out.images[0, j], box).spearman_abs)
    assert rep.specificity["deconvnet"].spearman_abs == pytest.approx(np.mean(pairs))
    assert -1 <= rep.recovery["deconvnet"].spearman_abs <= 1


def test_reproducible_and_the_callers_model_untouched():
    model = chain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    a = sanity_report(model, x, "5", rules=["guided"], seed=1, units=2)
    b = sanity_report(model, x, "5", rules=["guided"], seed=1, units=2)
    c = sanity_report(model, x, "5", rules=["guided"], seed=2, units=2)
    assert a.cascading == b.cascading and torch.equal(a.images["guided"], b.images["guided"])
    assert a.cascading != c.cascading
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    twin = randomized_copy(model, ["0"], 3)
    assert not torch.equal(twin[0].weight, model[0].weight) and torch.equal(twin[3].weight, model[3].weight)


class Gain(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class NoReset(nn.Module):
    """No chain: its modules are randomized in reverse order of forward execution; Gain cannot be."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.gain = Gain()

    def forward(self, x):
        return self.gain(torch.relu(self.conv(x)))


class Shuffled(nn.Module):
    """Modules declared in another order than they run, with a skip connection: not a chain."""

    def __init__(self):
        super().__init__()
        self.late = nn.Conv2d(4, 4, 3, padding=1)
        self.early = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = torch.relu(self.bn(self.early(x)))
        y = torch.relu(y + self.late(y))
        return self.head(y.mean((2, 3)))


def test_any_network_is_randomized_in_reverse_order_of_forward_execution():
    model = Shuffled().eval()
    assert randomizable(model, "late") == ["late", "bn", "early"]  # as run, by hand; "head" runs after
    assert randomizable(model, "bn") == ["bn", "early"]
    rep = sanity_report(model, torch.randn(1, 3, 12, 12), "late", rules=["deconvnet"])
    assert rep.randomized == ["late", "bn", "early"] and len(rep.cascading["deconvnet"]) == 3


def test_what_cannot_be_randomized_is_named():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(deconvviz.LayerError, match="no layer with weights between the input and '1'"):
        randomizable(nn.Sequential(nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(3, 2, 3)), "1")
    with pytest.raises(deconvviz.UnsupportedModelError, match="cannot randomize 'gain' .Gain.: it has no reset_"):
        sanity_report(NoReset(), x, "gain")


class OwnInit(NoReset):
    """NoReset with a model-wide init, as a Hugging Face model has (`_init_weights(module)`): it draws Gain anew."""

    def _init_weights(self, module):
        if isinstance(module, Gain):
            for p in module.parameters(recurse=False):
                p.normal_(0.0, 0.5)


def test_a_module_without_reset_parameters_is_randomized_by_the_models_own_init():
    model = OwnInit().eval()
    assert randomizable(model, "gain") == ["gain", "conv"]
    twin, again = randomized_copy(model, ["gain"], 3), randomized_copy(model, ["gain"], 3)
    for name, p in model.gain.named_parameters():
        drawn = dict(twin.gain.named_parameters())[name]
        assert not torch.equal(drawn, p) and torch.equal(drawn, dict(again.gain.named_parameters())[name])
        torch.manual_seed(3 + list(dict(model.named_modules())).index("gain"))  # the documented seed, by hand
        assert torch.equal(drawn, torch.empty_like(p).normal_(0.0, 0.5))
    assert torch.equal(twin.conv.weight, model.conv.weight)  # only the named modules
    rep = sanity_report(model, torch.randn(1, 3, 8, 8), "gain", rules=["gradient"], units=1)
    assert rep.randomized == ["gain", "conv"]
    with pytest.raises(deconvviz.SelectionError, match="unknown rule"):
        sanity_report(chain(), torch.randn(1, 3, 16, 16), "7", rules=["guidde"])


def test_fixed_positions_column_against_the_oracle():
    """The extra column: the trained unit with the switches replaced by fixed positions (Mahendran & Vedaldi),
    as a twin with hand-written pool and ReLU backwards draws it, and its similarity to the trained picture."""
    model = chain()
    x = torch.randn(1, 3, 20, 18, generator=torch.Generator().manual_seed(6))
    rep = sanity_report(model, x, "7", rules=["gradient", "deconvnet"], seed=5, units=2)
    c, (row, col) = rep.channel, rep.position
    pos = torch.tensor([[row * model(x).shape[-1] + col]])  # flat position in the layer's plane
    for rule in rep.rules:
        want = unpool_oracle(model, "6", x, torch.tensor([[c]]), pos, rule, "fixed")[0, 0]
        assert want.abs().max() > 0
        assert torch.allclose(rep.fixed_images[rule], want, atol=1e-6), rule
        got, sim = rep.fixed_positions[rule], similarity(rep.images[rule][0], want, rep.box)
        assert (got.spearman_abs, got.ssim) == (
            pytest.approx(sim.spearman_abs, abs=1e-4),
            pytest.approx(sim.ssim, abs=1e-4),
        )
