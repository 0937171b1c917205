"""deconvviz.analysis.invariance: distances and probabilities against a plain recomputation with the model's own
forward and transforms written independently (slicing for whole-pixel shifts, rot90 for quarter turns)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deconvviz.analysis.invariance import default_amounts, default_layers, invariance, transformed
from deconvviz.errors import DeconvvizError
from deconvviz.images import DEFAULT_IMAGE, load_image, to_batch
from deconvviz.networks.weights import load_vgg, skeleton


@pytest.fixture(scope="module")
def net():
    model, w = load_vgg("vgg11", "random", device="cpu", seed=1, verbose=False)
    return model, to_batch(load_image(DEFAULT_IMAGE), w.preprocess, 64)


def plain_features(model, y):
    """conv1_1, conv5_2 and fc7 of vgg11 and the class probabilities, by slicing the torchvision model."""
    with torch.no_grad():
        conv5_2 = model.features[:20](y)
        fc7 = model.classifier[:5](torch.flatten(model.avgpool(model.features(y)), 1))
        return [model.features[:2](y).flatten(1), conv5_2.flatten(1), fc7], F.softmax(model(y), dim=1)


def shifted_down(x, a):
    y = torch.zeros_like(x)
    if a >= 0:
        y[..., a:, :] = x[..., : x.shape[-2] - a, :]
    else:
        y[..., :a, :] = x[..., -a:, :]
    return y


@pytest.mark.parametrize(
    "transform, amounts, plain",
    [
        ("shift", [-7, -1, 0, 3, 12], shifted_down),
        ("rotate", [0, 90, 180, 270], lambda x, a: torch.rot90(x, a // 90, dims=(-2, -1))),
    ],
)
def test_distances_and_probabilities_match_a_plain_recomputation(net, transform, amounts, plain):
    model, x = net
    res = invariance(model, x, transform, amounts=amounts, layers=["conv1_1", "conv5_2", "fc7"], batch_size=3)
    ref, p_ref = plain_features(model, x)
    top = int(p_ref[0].argmax())
    assert res.top_class == top and res.layers == ["conv1_1", "conv5_2", "fc7"]
    for t, a in enumerate(amounts):
        y = plain(x, a)
        assert torch.allclose(res.images[t], y[0], atol=1e-4), (transform, a)
        feats, p = plain_features(model, y)
        expected = torch.stack([(f - r).norm() for f, r in zip(feats, ref, strict=True)])
        assert torch.allclose(res.distances[:, t], expected, rtol=1e-4, atol=1e-5 * float(res.norms.min()))
        assert res.probabilities[t].item() == pytest.approx(p[0, top].item(), rel=1e-4, abs=1e-7)
    assert torch.allclose(res.norms, torch.stack([r.norm() for r in ref]), rtol=1e-5)
    assert (res.distances[:, amounts.index(0)] <= 1e-5 * res.norms).all()  # the original, up to batched rounding


def test_scale_one_is_the_original_and_other_scales_move_every_layer(net):
    model, x = net
    res = invariance(model, x, "scale", amounts=[1.0, 0.7, 1.4])
    assert res.distances[:, 0].abs().max() < 1e-3 * res.norms.min()
    assert (res.distances[:, 1:] > 0).all()
    assert torch.allclose(res.images[0], x[0], atol=1e-5)


def test_default_layers_follow_the_weights():
    assert default_layers(skeleton("vgg16", "vgg16-caffe")) == ["conv1_2", "conv5_3"]  # no classifier
    assert default_layers(skeleton("vgg16", "random")) == ["conv1_2", "conv5_3", "fc7"]
    assert default_layers(skeleton("vgg11", "random")) == ["conv1_1", "conv5_2", "fc7"]


def test_default_range_and_errors(net):
    model, x = net
    res = invariance(model, x[:, :, :48, :48], "shift")
    assert res.amounts[0] == -res.amounts[-1] == -round(48 * 60 / 224) and len(res.amounts) == 25
    assert 0 in res.amounts.tolist() and res.amounts.tolist() == res.amounts.round().tolist()
    assert 1.0 in default_amounts("scale", 224).tolist() and default_amounts("rotate", 224)[-1] == 360
    assert res.probabilities.shape == (25,) and res.images.shape == (25, 3, 48, 48)
    with pytest.raises(DeconvvizError, match="unknown transform 'skew'; use shift, scale, rotate"):
        transformed(x, "skew", 1.0)
    with pytest.raises(DeconvvizError, match=r"one preprocessed image \(1, 3, H, W\)"):
        invariance(model, x.expand(2, -1, -1, -1), "rotate")
