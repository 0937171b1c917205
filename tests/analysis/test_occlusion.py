"""Occlusion maps against a straightforward loop: one occluded copy at a time through the plain model."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from oracle import layer_activation
from torch import nn

from deconvviz import DeconvvizError
from deconvviz.analysis.occlusion import mean_grey, occlusion_maps
from deconvviz.cli import app
from deconvviz.networks.weights import load_vgg
from deconvviz.preprocess import CAFFE_VGG, IMAGENET_TORCHVISION


def loop(model, module, x, rows, cols, size, grey, channel, cls=None):
    """Total activation of `channel` (and softmax probability of `cls`) for each occluder position, one by one."""
    acts, probs, seen = torch.zeros(len(rows), len(cols)), torch.zeros(len(rows), len(cols)), []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(float(o[0, channel].sum())))
    try:
        for (i, r), (j, c) in itertools.product(enumerate(rows), enumerate(cols)):
            xo = x.clone()
            xo[0, :, r : r + size, c : c + size] = torch.as_tensor(grey).view(-1, 1, 1)
            with torch.no_grad():
                out = model.eval()(xo)
            acts[i, j] = seen.pop()
            probs[i, j] = F.softmax(out, dim=1)[0, cls] if cls is not None else 0
    finally:
        handle.remove()
    return acts, probs


@pytest.fixture(scope="module")
def vgg11():
    return load_vgg("vgg11", "random", device="cpu", verbose=False)[0]


def test_chain_model_maps_and_class_probability_match_the_loop(vgg11):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    grey = torch.tensor([0.3, -0.2, 0.1])
    vgg11.train()  # the call must use eval semantics and leave the flags alone
    res = occlusion_maps(vgg11, x, "conv4_2", channel=5, size=24, stride=12, cls=7, grey=grey, batch_size=7)
    assert all(m.training for m in vgg11.modules())
    assert res.rows.tolist() == res.cols.tolist() == [0, 12, 24, 36, 40]  # 40: flush with the border
    assert res.layer == "features.14"
    want_act, want_prob = loop(vgg11, vgg11.features[14], x, res.rows, res.cols, 24, grey, 5, cls=7)
    assert torch.allclose(res.activation, want_act, rtol=1e-5, atol=1e-6)
    assert torch.allclose(res.probability, want_prob, rtol=1e-5, atol=1e-9)
    base = layer_activation(vgg11, vgg11.features[14], x)[0, 5].sum()
    assert res.baseline_activation == pytest.approx(float(base), rel=1e-5)
    assert res.activation.std() > 0 and res.probability.std() > 0  # the maps are not trivially constant


class Residual(nn.Module):
    """Not a chain: a skip connection and a functional ReLU; a small classifier head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool, self.drop, self.head = nn.MaxPool2d(2), nn.Dropout(0.5), nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = self.pool(F.relu(self.conv2(h)) + h)
        return self.head(self.drop(h.mean((2, 3))))


def test_any_module_matches_the_loop_and_is_left_untouched():
    torch.manual_seed(0)
    model = Residual().train()
    x = torch.randn(1, 3, 40, 52)
    res = occlusion_maps(model, x, "pool", channel=3, size=12, stride=9, cls=2, batch_size=5)
    assert res.rows.tolist() == [0, 9, 18, 27, 28] and res.cols.tolist() == [0, 9, 18, 27, 36, 40]
    assert all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())
    model.eval()  # the loop's own eval: dropout off
    want_act, want_prob = loop(model, model.pool, x, res.rows, res.cols, 12, 0.0, 3, cls=2)
    assert torch.allclose(res.activation, want_act, rtol=1e-5, atol=1e-6)
    assert torch.allclose(res.probability, want_prob, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pre, mean_rgb", [
    (IMAGENET_TORCHVISION, (0.485, 0.456, 0.406)),
    (CAFFE_VGG, (123.68 / 255, 116.779 / 255, 103.939 / 255)),
])  # fmt: skip
def test_grey_is_the_dataset_mean_in_input_space(pre, mean_rgb):
    grey = mean_grey(pre)
    assert grey.shape == (3,) and grey.abs().max() < 1e-5  # both preprocessings subtract the mean
    want = pre.to_input(torch.tensor(mean_rgb).view(3, 1, 1))[:, 0, 0]
    assert torch.allclose(grey, want, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(channel=512), "channel 512 is out of range for layer 'conv4_2' with 512 channels; use 0..511"),
    (dict(size=65), "occluder size 65 does not fit the 64x64 image; use 1..64"),
    (dict(size=0), "occluder size 0 does not fit"),
    (dict(stride=0), "must be at least 1, got 0"),
    (dict(cls=-1), "class -1 is out of range for a classifier with 1000 classes; use 0..999"),
    (dict(cls=1000), "class 1000 is out of range for a classifier with 1000 classes; use 0..999"),
    (dict(layer="conv9_9"), "unknown layer 'conv9_9'"),
])  # fmt: skip
def test_bad_arguments_are_clear_errors(vgg11, kwargs, message):
    args = dict(layer="conv4_2", channel=0) | kwargs
    with pytest.raises(DeconvvizError, match=message.replace("(", r"\(")):
        occlusion_maps(vgg11, torch.zeros(1, 3, 64, 64), **args)


def test_class_map_needs_a_classifier():
    caffe = load_vgg("vgg16", "vgg16-caffe", device="cpu", verbose=False)[0]
    with pytest.raises(DeconvvizError, match="class 3 needs a model with a classifier.*use the torchvision weights"):
        occlusion_maps(caffe, torch.zeros(1, 3, 64, 64), "conv5_3", channel=0, cls=3)


def test_cli_writes_figure_and_provenance(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["occlusion", "--model", "vgg11", "--weights", "random", "--size", "64", "--layer", "conv4_2",
            "--channel", "5", "--class", "7", "--occluder-size", "16", "--stride", "10", "-q"]  # fmt: skip
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    png, meta = tmp_path / "runs/occlusion-conv4_2-c5.png", tmp_path / "runs/occlusion-conv4_2-c5.png.provenance.json"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads(meta.read_text())
    assert prov["occluder"]["positions"] == {"rows": [0, 10, 20, 30, 40, 48], "cols": [0, 10, 20, 30, 40, 48]}
    assert prov["channel"] == 5 and prov["class"]["index"] == 7 and len(prov["activation"]["map"]) == 6
    first = meta.read_bytes()
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    assert meta.read_bytes() == first  # byte-stable provenance


def test_cli_default_channel_is_the_strongest_map_and_class_needs_a_classifier(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["occlusion", "--occluder-size", "64", "--stride", "40", "--out", "o.png", "-q"])
    assert r.exit_code == 0, r.output
    prov = json.loads((tmp_path / "o.png.provenance.json").read_text())
    assert prov["weights"]["name"] == "vgg16-caffe" and prov["layer"] == "conv5_3"
    assert prov["occluder"]["positions"]["rows"] == [0, 40, 80, 120, 160]
    assert prov["channel"] == prov["projection"]["channel"]  # the strongest conv5_3 map of the bicycle
    r = runner.invoke(app, ["occlusion", "--class", "3", "--weights", "vgg16-caffe", "--out", "p.png"])
    assert r.exit_code == 2 and r.output.startswith(
        "deconvviz: error: --class: a class needs a model with a classifier"
    )
    assert not (tmp_path / "p.png").exists()
