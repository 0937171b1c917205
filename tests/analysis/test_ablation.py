"""Mahendran & Vedaldi's ablation (ablation.py) on tiny networks whose answers are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deconvviz
from deconvviz.analysis.ablation import REFERENCE, VARIANTS, Variant, ablation_report
from deconvviz.analysis.sanity import randomizable, randomized_copy


def _no_relus() -> nn.Module:
    """Convolutions without biases and max-pools, no ReLU: for fixed switches the network is linear, A x."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
    ).eval()


X = torch.randn(1, 1, 20, 20, generator=torch.Generator().manual_seed(1))


def test_the_ten_variants():
    assert len(VARIANTS) == 10 and REFERENCE == Variant("deconvnet", "switches")
    assert {(v.rule, v.unpool) for v in VARIANTS[:8]} == {
        (r, u) for r in ("deconvnet", "guided", "gradient", "linear") for u in ("switches", "fixed")
    }
    assert [v.name for v in VARIANTS[8:]] == ["deconvnet+nearest", "deconvnet+bilinear"]


def test_without_relus_linear_with_switches_is_the_exact_adjoint_and_every_rule_agrees():
    """No ReLU: with the switches fixed, the unit is a linear function a(x) = <e, A x>, and the linear rule
    with switches projects A^T (a e): <A^T s, x> = <s, A x> = a^2. The four rules have no ReLU to differ at,
    so each unpooling gives one picture whatever the rule: similarity 1 to the deconvnet's (switches)."""
    model = _no_relus()
    rep = ablation_report(model, X, "3", seed=3)
    unit = model(X)[0, rep.channel, rep.position[0], rep.position[1]].item()
    pictures = dict(zip(rep.variants, rep.images, strict=True))
    r = pictures[Variant("linear", "switches")].double()
    assert float((r * X[0].double()).sum()) == pytest.approx(unit**2, rel=1e-5)
    for v, sim in zip(rep.variants, rep.vs_reference, strict=True):
        same = pictures[Variant("deconvnet", v.unpool)]
        assert torch.allclose(pictures[v], same, atol=1e-6), v
        if v.unpool == "switches":
            assert (sim.spearman_abs, sim.ssim) == (pytest.approx(1.0), pytest.approx(1.0)), v
    # the public API draws the same pictures the report holds
    for v in VARIANTS:
        direct = deconvviz.Deconvnet(model, rule=v.rule, unpool=v.unpool).project(X, "3", top=1)
        assert torch.allclose(pictures[v], direct.images[0, 0], atol=1e-6), v


def test_randomized_weights_of_the_same_sign_keep_every_picture():
    """A 1x1 convolution (one channel) and an 8x8 pool: any weight of the same sign moves no maximum and only
    scales the picture, so the randomized picture equals the trained one up to scale: similarity 1 (no rank
    correlation where the picture is flat: nearest fills the window with one value)."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.MaxPool2d(8)).eval()
    random_weight = randomized_copy(model, randomizable(model, "1"), seed=7)[0].weight.detach()
    with torch.no_grad():
        model[0].weight.copy_(2.5 * random_weight)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    rep = ablation_report(model, x, "1", seed=7)
    assert rep.box[1] - rep.box[0] == 8 and rep.randomized == ["0"]
    for v, pic, rand, sim in zip(rep.variants, rep.images, rep.randomized_images, rep.vs_randomized, strict=True):
        assert torch.allclose(pic, 2.5 * rand, atol=1e-6), v
        if v.unpool == "nearest":
            assert sim.spearman_abs is None and sim.ssim == pytest.approx(1.0)  # no ranks in a flat window
        else:
            assert sim.spearman_abs == pytest.approx(1.0) and sim.ssim == pytest.approx(1.0), v


def test_one_image_and_a_spatial_layer():
    model = _no_relus()
    with pytest.raises(ValueError, match="one image"):
        ablation_report(model, X.repeat(2, 1, 1, 1), "3")
