"""A decoder's own stages on a SegNet-style network (unpooling with the encoder's switches, transposed convolutions):
the stages keep_stages gives, the forward activations and each stage's channel checked against hooks and autograd
by hand, and the figure reconstruct --activations writes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from deconvviz import Deconvnet
from deconvviz.analysis.decoder import decoder_activations
from deconvviz.engine.layers import decoder_modules, stage_modules
from deconvviz.errors import LayerError

SEGNET = '''
import torch
from torch import nn


class SegNet(nn.Module):
    """SegNet in miniature: the decoder unpools with the encoder's switches and deconvolves."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, return_indices=True)
        self.conv2, self.relu2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, return_indices=True)
        self.up2, self.deconv2, self.drelu2 = nn.MaxUnpool2d(2), nn.ConvTranspose2d(16, 8, 3, padding=1), nn.ReLU()
        self.up1, self.deconv1 = nn.MaxUnpool2d(2), nn.ConvTranspose2d(8, classes, 3, padding=1)

    def forward(self, x):
        h, i1 = self.pool1(self.relu1(self.conv1(x)))
        h, i2 = self.pool2(self.relu2(self.conv2(h)))
        h = self.drelu2(self.deconv2(self.up2(h, i2)))
        return self.deconv1(self.up1(h, i1))


def build():
    torch.manual_seed(0)
    return SegNet()
'''


@pytest.fixture()
def segnet_spec(factory_file):
    """The spec of a factory file with the SegNet above: path/to/segnet.py:build."""
    return factory_file(SEGNET, "segnet.py")


def _segnet() -> nn.Module:
    scope: dict = {}
    exec(SEGNET, scope)  # noqa: S102 - the test's own network, the same text the CLI test's factory file holds
    return scope["build"]().eval()


def test_the_decoder_stages_are_its_unpoolings_and_deconvolutions_in_the_order_they_run():
    model = _segnet()
    assert decoder_modules(model, (32, 32)) == ["up2", "deconv2", "up1", "deconv1"]
    assert {"up2", "deconv2", "up1", "deconv1"} <= set(stage_modules(model))
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = Deconvnet(model, rule="gradient").project(x, "deconv1", cls=1, top=1, keep_stages=True)
    kept = [s.name for s in out.stages]
    assert kept.index("up1") < kept.index("deconv2") < kept.index("up2")  # from the layer (deconv1) down


def test_the_activations_and_each_stages_channel_are_the_forward_and_gradient_times_activation():
    model, x = _segnet(), torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    stages, record = decoder_activations(model, x, cls=2)
    assert [s.name for s in stages] == ["up2", "deconv2", "up1", "deconv1"]
    assert [s.kind for s in stages] == ["unpooling", "deconvolution", "unpooling", "deconvolution"]
    assert record.kind == "map" and record.counts == (1024,)
    # by hand: each module's output through its own hook, the class's logits summed, autograd
    seen = {}
    names = ["up2", "deconv2", "up1", "deconv1"]
    handles = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, o)) for n in names]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(logits[:, 2].sum(), [seen[s.name] for s in stages])
    for s, g in zip(stages, grads, strict=True):
        torch.testing.assert_close(s.activation, seen[s.name][0].detach())
        want = (g[0] * seen[s.name][0]).detach().flatten(1).sum(1)
        torch.testing.assert_close(s.contributions, want, rtol=1e-5, atol=1e-6)
        assert s.channel == int(want.argmax())
    assert stages[0].activation.ne(0).float().mean() <= 0.25 + 1e-6  # an unpooling puts one value in each window
    assert all(not m._forward_hooks for m in model.modules())


def test_a_network_without_decoder_modules_is_refused():
    with pytest.raises(LayerError, match="no unpooling, upsampling or transposed-convolution module"):
        decoder_activations(nn.Sequential(nn.Conv2d(3, 4, 1)), torch.randn(1, 3, 8, 8), cls=1)


def test_reconstruct_activations_draws_the_decoder_beside_the_class_projection(run, cwd, segnet_spec):
    args = ["--model", segnet_spec, "--class", 1, "--activations", "--size", 32]
    r = run("reconstruct", *args, "--out", "decoder.png", "-q")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "decoder.png.provenance.json").read_text())
    assert [s["name"] for s in prov["decoder_stages"]] == ["up2", "deconv2", "up1", "deconv1"]
    assert prov["activations"] and prov["score"]["pixels_scored"] == [1024] and prov["layers"][0]["layer"] == "deconv1"
    assert prov["layers"][0]["channels"] == [1]  # at the class map, only class 1's own map feeds its score
    r = run("reconstruct", "--model", segnet_spec, "--activations", "--size", 32, "--out", "x.png")
    assert r.exit_code == 2 and "give --class too" in r.output and not (cwd / "x.png").exists()
    flat = cwd / "flat.py"
    flat.write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3))\n")
    r = run("reconstruct", "--model", f"{flat}:build", "--class", 1, "--activations", "--size", 32, "--out", "x.png")
    assert r.exit_code == 2 and "--activations: Sequential has no unpooling" in r.output, r.output
