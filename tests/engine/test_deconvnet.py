"""Deconvnet projections against captum's NeuronDeconvolution (independent autograd computation)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torchvision
from oracle import VGGS, layer_activation, oracle, randomized, rel_err, vgg
from torch import nn

import deconvviz
import deconvviz.engine.rectified
from deconvviz.engine._paths import AutogradPath
from deconvviz.engine.layers import vgg_aliases
from deconvviz.engine.reverse import reverse_cropped

TOL = 1e-5


def check(model, layer_name, module, x, top=2, modes=("max", "map"), channels=None):
    dn = deconvviz.Deconvnet(model)
    for mode in modes:
        out = dn.project(x, layer_name, channels=channels, mode=mode, top=top)
        sel = out.selections
        want = oracle(model, module, x, sel.channels, sel.positions if mode == "max" else None)
        assert out.images.shape == want.shape
        assert want.abs().max() > 0, "degenerate test: the oracle projected nothing"
        assert rel_err(out.images, want) <= TOL, (layer_name, mode)


@pytest.mark.slow
@pytest.mark.parametrize("name", VGGS)
def test_deconvnet_on_every_vgg_every_conv_and_pool_layer(name):
    """Every conv and pool layer of every VGG on an odd-sized batch; at 224x224 every layer of VGG16 (the paper's
    network, with and without BatchNorm) and the deepest conv and pool layers of the others (the same operations
    at a size that only changes how far the switches reach: CI's time goes to what can differ)."""
    model = vgg(name)
    steps = deconvviz.Deconvnet(model).steps
    mods = dict(model.named_modules())
    x224 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    x_odd = torch.randn(2, 3, 45, 67, generator=torch.Generator().manual_seed(2))
    layers = {a: p for a, p in vgg_aliases(steps).items() if a.startswith(("conv", "pool"))}
    deepest = {[a for a in layers if a.startswith(kind)][-1] for kind in ("conv", "pool")}  # layers: forward order
    for alias, path in layers.items():
        check(model, alias, mods[path], x_odd)
        if name in ("vgg16", "vgg16_bn") or alias in deepest:
            check(model, alias, mods[path], x224, top=1)


@pytest.mark.parametrize("layer", ["features.28", "features.0", "features.4", "pool5", "conv3_3"])
def test_vgg16_module_paths_and_raw_conv_outputs(layer):
    model = vgg("vgg16")
    path = vgg_aliases(deconvviz.Deconvnet(model).steps).get(layer, layer)
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    check(model, layer, dict(model.named_modules())[path], x, top=3)


@pytest.mark.parametrize("layer", ["classifier.0", "fc7", "classifier.6"])
def test_project_from_the_classifier(layer):
    model = vgg("vgg11_bn")
    path = vgg_aliases(deconvviz.Deconvnet(model).steps).get(layer, layer)
    x = torch.randn(1, 3, 100, 100, generator=torch.Generator().manual_seed(4))  # pool5 3x3 -> adaptive 7x7
    check(model, layer, dict(model.named_modules())[path], x, top=2, modes=("max",))


def test_alexnet_overlapping_pools_and_stride_4_conv():
    torch.manual_seed(0)
    model = torchvision.models.alexnet().eval()
    x = torch.randn(2, 3, 131, 117, generator=torch.Generator().manual_seed(5))
    for layer in ["features.2", "features.4", "features.12", "features.10", "classifier.5"]:
        check(model, layer, dict(model.named_modules())[layer], x, top=2)


def test_sequential_with_ceil_mode_padded_pools_strided_padded_convs():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, dilation=1), nn.ReLU(), nn.Dropout(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4), nn.ReLU(),
        nn.MaxPool2d(3, stride=1, dilation=2),
    )  # fmt: skip
    randomized(model)
    x = torch.randn(2, 3, 97, 121, generator=torch.Generator().manual_seed(6))
    assert deconvviz.Deconvnet(model).steps is not None
    for i in ["3", "5", "7", "9", "10"]:
        check(model, i, model[int(i)], x, top=3)
    out = deconvviz.Deconvnet(model).project(x, "10", top=1)
    assert out.images.shape[-2:] == x.shape[-2:]  # exactly the input's size on odd inputs


def test_hand_computed_unpool_rectify_filter():
    """1 channel, 4x4 input, conv 2x2 (weights 1, -1 / 2, 0), ReLU, max-pool 2x2 -- done on paper."""
    conv = nn.Conv2d(1, 1, 2, bias=True)
    conv.weight.data = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]])
    conv.bias.data = torch.tensor([-1.0])
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2, stride=1))
    x = torch.tensor([[[[4.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]]])
    # conv: out[i,j] = x[i,j] - x[i,j+1] + 2 x[i+1,j] - 1 = [[3,-1,-1],[-1,-1,5],[-1,-4,2]]
    # ReLU: [[3,0,0],[0,0,5],[0,0,2]]; max-pool 2x2 stride 1: [[3,5],[0,5]], the 5 of both right windows
    # comes from (1,2), the 0 window picks its first position (1,0).
    out = deconvviz.Deconvnet(model).project(x, "2", channels=[0], mode="map", keep_stages=True)
    pooled = torch.tensor([[3.0, 5.0], [0.0, 5.0]])
    assert torch.equal(out.selections.values, torch.tensor([[5.0]]))
    # unpool: overlapping windows (1,2) twice -> 5 + 5 = 10 added, 3 at (0,0); the 0 goes anywhere
    unpooled = torch.tensor([[3.0, 0, 0], [0, 0, 10], [0, 0, 0]])
    stages = {s.name: s.tensor[0, 0, 0] for s in out.stages}
    assert torch.equal(stages["unpool1"], unpooled)
    assert torch.equal(layer_activation(model, model[2], x)[0, 0], pooled)
    # rectify (no-op here), then filter with the transposed 2x2 kernel (full correlation with flipped kernel):
    want = torch.zeros(4, 4)
    for (i, j), v in {(0, 0): 3.0, (1, 2): 10.0}.items():
        want[i : i + 2, j : j + 2] += v * conv.weight.data[0, 0]
    assert torch.equal(out.images[0, 0, 0], want)  # the bias is not used
    # a negative signal is rectified away before filtering
    # projecting from the conv itself: no rectification before its filter, negative values pass
    raw = deconvviz.Deconvnet(nn.Sequential(conv, nn.ReLU())).project(-x, "0", channels=[0], mode="map")
    seed = conv(-x).detach()
    assert torch.equal(raw.images[0, 0], torch.nn.grad.conv2d_input(x.shape, conv.weight.data, seed)[0])
    relu_first = deconvviz.Deconvnet(nn.Sequential(nn.ReLU(), conv)).project(x, "1", channels=[0], mode="map")
    conv_out = conv(x).detach()
    want = torch.nn.grad.conv2d_input(x.shape, conv.weight.data, conv_out).clamp_min(0)[0]
    assert torch.equal(relu_first.images[0, 0], want)


def test_stages_of_vgg16_conv5_3_and_their_meaning():
    model = vgg("vgg16")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    out = deconvviz.Deconvnet(model).project(x, "conv5_3", top=2, keep_stages=True)
    names = [(s.name, s.size) for s in out.stages]
    assert names == [("deconv5", (14, 14)), ("unpool4", (28, 28)), ("deconv4", (28, 28)), ("unpool3", (56, 56)),
                     ("deconv3", (56, 56)), ("unpool2", (112, 112)), ("deconv2", (112, 112)),
                     ("unpool1", (224, 224)), ("deconv1", (224, 224))]  # fmt: skip
    assert torch.equal(out.stages[-1].tensor, out.images)
    # each unpool stage is the previous stage put back at the switches of that pool
    sw = out.switches["features.23"].indices
    prev, unp = out.stages[0].tensor[0], out.stages[1].tensor[0]
    manual = torch.zeros(2, 512, 28 * 28)
    manual.scatter_add_(2, sw.expand(2, -1, -1, -1).flatten(2), prev.flatten(2))
    assert torch.equal(unp.flatten(2), manual)
    assert out.switches["features.4"].indices.shape == (1, 64, 112, 112)


def test_channels_top_batch_and_chunking():
    model = vgg("vgg11")
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    dn = deconvviz.Deconvnet(model)
    out = dn.project(x, "conv4_2", top=4)
    act = layer_activation(model, dict(model.named_modules())[vgg_aliases(dn.steps)["conv4_2"]], x)
    peaks = act.flatten(2).amax(2)
    assert torch.equal(out.selections.channels, peaks.topk(4, dim=1).indices)  # per image, strongest first
    assert torch.equal(out.selections.values, peaks.topk(4, dim=1).values)
    small = deconvviz.Deconvnet(model, max_batch_bytes=1).project(x, "conv4_2", top=4)  # one selection a chunk
    assert torch.allclose(small.images, out.images, rtol=0, atol=1e-7)
    given = dn.project(x, "conv4_2", channels=[5, 5, 0])
    assert given.images.shape == (3, 3, 3, 64, 64)
    assert torch.equal(given.images[:, 0], given.images[:, 1])


def test_bad_layer_channel_mode_input():
    model = vgg("vgg11")
    dn = deconvviz.Deconvnet(model)
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(deconvviz.LayerError, match=r"did you mean 'conv4_2'.*Valid: conv1_1"):
        dn.project(x, "conv4_3")
    with pytest.raises(deconvviz.SelectionError, match=r"channel 512 is out of range .* 512 channels; use 0..511"):
        dn.project(x, "conv5_2", channels=[1, 512])
    with pytest.raises(deconvviz.SelectionError, match="unknown mode"):
        dn.project(x, "conv5_2", mode="mean")
    with pytest.raises(deconvviz.ImageError, match="too small"):
        dn.project(torch.randn(1, 3, 16, 16), "pool5")
    with pytest.raises(deconvviz.ImageError, match=r"\(N, C, H, W\)"):
        dn.project(torch.randn(3, 64, 64), "pool5")


def test_model_is_left_exactly_as_it_was():
    model = vgg("vgg11_bn").train()
    model.features[2].inplace = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    x = torch.randn(1, 3, 64, 64)
    deconvviz.Deconvnet(model).project(x, "conv3_1", top=2)
    assert flags == [m.training for m in model.modules()]
    assert model.features[2].inplace is True
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("crop", [True, False])
def test_receptive_field_crop_matches_full_pass_and_captum(crop):
    """Windows that follow the receptive field give the full pass's numbers (incl. positions at borders)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(8, 16, 3, padding=2, dilation=2), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    randomized(model)
    x = torch.randn(3, 3, 97, 83, generator=torch.Generator().manual_seed(9))
    for layer in ["2", "3", "5", "7", "8", "10"]:
        for mode in ("max", "map"):
            full = deconvviz.Deconvnet(model, crop=False).project(x, layer, top=6, mode=mode)
            fast = deconvviz.Deconvnet(model, crop=crop).project(x, layer, top=6, mode=mode)
            assert rel_err(fast.images, full.images) <= 1e-6, (layer, mode)
    check(model, "10", model[10], x, top=4)


def test_sparse_maps_take_windows_and_agree():
    """A map whose nonzero values fill a small box is projected on a window around that box's field."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU())  # fmt: skip
    randomized(model)
    x = torch.zeros(2, 3, 64, 64)
    x[0, :, 5:9, 50:56] = torch.randn(3, 4, 6)  # a blob near a border: conv4 maps nonzero in a small box
    x[1, :, 30:33, 20:24] = torch.randn(3, 3, 4)
    model[0].bias.data.fill_(-0.05)
    model[3].bias.data.fill_(-0.05)
    full = deconvviz.Deconvnet(model, crop=False).project(x, "4", top=3, mode="map")
    with mock.patch("deconvviz.engine._strategies.reverse_cropped", wraps=reverse_cropped) as spy:
        auto = deconvviz.Deconvnet(model).project(x, "4", top=3, mode="map")
        assert spy.called
    assert full.images.abs().max() > 0 and rel_err(auto.images, full.images) <= 1e-6
    check(model, "4", model[4], x, top=3, modes=("map",))


def test_auto_crop_is_used_where_it_pays_and_agrees_on_vgg():
    model = vgg("vgg11")
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(10))
    a = deconvviz.Deconvnet(model, crop=False).project(x, "conv3_1", top=5)
    with mock.patch("deconvviz.engine._strategies.reverse_cropped", wraps=reverse_cropped) as spy:
        b = deconvviz.Deconvnet(model).project(x, "conv3_1", top=5)  # field 40 px of 96: cropped
        assert spy.called
        deconvviz.Deconvnet(model).project(x, "conv5_2", top=1)  # field wider than the image: full pass
        assert spy.call_count == 1
    assert rel_err(b.images, a.images) <= 1e-6


def test_reruns_are_numerically_identical_on_cpu():
    model = vgg("vgg11_bn")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    runs = [deconvviz.Deconvnet(model).project(x, "conv4_1", top=3, keep_stages=True) for _ in range(2)]
    assert torch.equal(runs[0].images, runs[1].images)
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(runs[0].stages, runs[1].stages, strict=True))


def test_forward_records_every_switch():
    model = vgg("vgg11")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(12))
    rec = deconvviz.Deconvnet(model).forward(x)
    assert list(rec.switches) == ["features.2", "features.5", "features.10", "features.15", "features.20"]
    with torch.no_grad():
        want = model(x)
    assert torch.allclose(rec.activation, want, rtol=1e-5, atol=1e-6)
    pool = model.features[20]
    inp = model.features[:20](x).detach()
    _, idx = torch.nn.functional.max_pool2d(inp, pool.kernel_size, pool.stride, return_indices=True)
    assert torch.equal(rec.switches["features.20"].indices, idx)
    assert rec.switches["features.20"].input_size == (4, 4) and not rec.switches["features.20"].overlapping


def test_given_positions_project_those_activations():
    model = vgg("vgg11")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(13))
    dn = deconvviz.Deconvnet(model, crop=False)
    act = layer_activation(model, model.features[12], x)  # conv4_1's ReLU: (1, 512, 8, 8)
    pos = torch.tensor([[9, 63]])
    out = dn.project(x, "conv4_1", channels=[4, 7], positions=pos)
    assert torch.equal(out.selections.values, act.flatten(2)[0, [4, 7]][[0, 1], [9, 63]][None])
    # independent: autograd of the layer with the seed at those positions, ReLU backward rectified
    xs = x.clone().requires_grad_(True)
    with deconvviz.engine.rectified.rectified_relus():
        a = model.features[:13](xs)
    want = []
    for c, p in [(4, 9), (7, 63)]:
        seed = torch.zeros_like(a)
        seed.view(1, 512, -1)[0, c, p] = act.flatten(2)[0, c, p]
        want.append(torch.autograd.grad(a, xs, seed, retain_graph=True)[0][0])
    assert rel_err(out.images[0], torch.stack(want)) <= 1e-5
    cropped = deconvviz.Deconvnet(model, crop=True).project(x, "conv4_1", channels=[4, 7], positions=pos)
    assert rel_err(cropped.images, out.images) <= 1e-6
    with pytest.raises(deconvviz.SelectionError, match="positions must index"):
        dn.project(x, "conv4_1", channels=[4], positions=torch.tensor([[64]]))


def small_chain(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return randomized(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 6, 3), nn.ReLU()))


def test_forward_hooks_send_a_chain_through_autograd():
    """A hook can change what a module computes; the explicit chain would not see it, autograd does."""
    model = small_chain()
    x = torch.randn(2, 3, 20, 18, generator=torch.Generator().manual_seed(3))
    twin = small_chain()
    twin[0].weight.data.neg_()
    twin[0].bias.data.neg_()
    handle = model[0].register_forward_hook(lambda m, i, o: -o)  # the same as negated filters
    try:
        dn = deconvviz.Deconvnet(model)
        assert dn.steps is None
        out = dn.project(x, "4", top=3, mode="map")
    finally:
        handle.remove()
    want = oracle(twin, twin[4], x, out.selections.channels, None)
    assert rel_err(out.images, want) <= TOL
    assert deconvviz.Deconvnet(model).steps is not None  # hook gone: the chain again


def test_a_model_changed_after_the_deconvnet_was_made_is_projected_as_it_is_now():
    model = small_chain()
    dn = deconvviz.Deconvnet(model)
    x = torch.randn(1, 3, 20, 18)
    dn.project(x, "4", channels=[0])
    model[3] = small_chain(seed=7)[3]
    fresh = deconvviz.Deconvnet(model).project(x, "4", channels=[0, 1], mode="map").images
    assert torch.equal(dn.project(x, "4", channels=[0, 1], mode="map").images, fresh)
    model[1] = nn.Softmax(dim=1)  # no rule (GELU and Tanh now have one): a softmax of the signal, not attention
    with pytest.raises(deconvviz.UnsupportedModelError, match="softmax"):
        dn.project(x, "4", channels=[0])


def test_arguments_are_checked_not_coerced():
    model = small_chain()
    dn = deconvviz.Deconvnet(model)
    x = torch.randn(2, 3, 20, 18)
    with pytest.raises(deconvviz.SelectionError, match="whole number of at least 1, got 2.5"):
        dn.project(x, "4", top=2.5)
    with pytest.raises(deconvviz.SelectionError, match=r"whole numbers such as \[12, 40\], got \[1.5\]"):
        dn.project(x, "4", channels=[1.5])
    with pytest.raises(deconvviz.SelectionError, match=r"shape \(N, K\) = \(2, 1\).*got \(3,\)"):
        dn.project(x, "4", channels=[1], positions=torch.tensor([0, 1, 2]))
    assert torch.equal(dn.project(x, 4, channels=[1]).images, dn.project(x, "4", channels=[1]).images)
    with pytest.raises(deconvviz.ImageError, match="'0' expects 3 input channels"):
        dn.project(torch.randn(1, 4, 20, 18), "4")
    with pytest.raises(deconvviz.ImageError, match=r"does not fit '0' \(Conv2d"):
        dn.project(torch.randn(1, 3, 2, 2), "4")
    model[0].weight.data[0, 0, 0, 0] = float("nan")
    with pytest.raises(deconvviz.DeconvvizError, match="NaN or infinite activations"):
        dn.project(x, "4")


def test_fc_layers_of_a_vgg_without_classifier_say_why():
    model = vgg("vgg11")
    model.classifier = nn.Identity()
    with pytest.raises(deconvviz.LayerError, match="'fc6' needs a classifier"):
        deconvviz.Deconvnet(model).project(torch.randn(1, 3, 32, 32), "fc6")


def test_inference_mode_on_the_chain_path():
    model = vgg("vgg11")
    x = torch.randn(1, 3, 32, 32)
    want = deconvviz.Deconvnet(model).project(x, "fc6", top=2).images  # fc6: the average pool's adjoint
    with torch.inference_mode():
        got = deconvviz.Deconvnet(model).project(x.clone(), "fc6", top=2).images
    assert torch.equal(got, want)


class TinyResNet(nn.Module):
    """A stem with a max-pool, a residual block and a concatenating block: a non-chain model with stages."""

    def __init__(self, relu_modules: bool = False):
        super().__init__()
        self.relus = (
            nn.ModuleList([nn.ReLU(), nn.ReLU()]) if relu_modules else None
        )  # for captum, which hooks only these
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.conv_a, self.conv_b = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.branch = nn.Conv2d(6, 4, 1)
        self.head = nn.Conv2d(10, 8, 3, stride=2, padding=1)

    def forward(self, x):
        s = self.stem(x)
        relu_a, relu_b = self.relus if self.relus is not None else (torch.relu, torch.relu)
        r = relu_b(s + self.conv_b(relu_a(self.conv_a(s))))
        return self.head(torch.cat([r, self.branch(r)], 1))


def _plain_gradients(model, x, layer, tensors_of, n, c, p):
    """Plain autograd (no deconvviz): the selected unit's value times its gradient at each named module's output."""
    got = {}
    mods = dict(model.named_modules())
    hooks = [
        mods[name].register_forward_hook(lambda m, i, o, name=name: got.__setitem__(name, o)) for name in tensors_of
    ]
    hooks.append(mods[layer].register_forward_hook(lambda m, i, o: got.__setitem__("_out", o)))
    xx = x.clone().requires_grad_(True)
    try:
        model(xx)
    finally:
        for h in hooks:
            h.remove()
    unit = got["_out"][n, c].flatten()[p]
    grads = torch.autograd.grad(unit * unit.detach(), [got[t] for t in tensors_of] + [xx])
    return dict(zip([*tensors_of, "input"], [g[n] for g in grads], strict=True))  # a name twice: one tensor


def test_stages_of_any_network_are_the_signal_at_each_boundary():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 20, 20)
    out = deconvviz.Deconvnet(model, rule="gradient").project(x, "head", top=2, mode="max", keep_stages=True)
    names = ["branch", "conv_b", "conv_a", "stem", "unpool1", "stem.1", "stem.0", "input"]
    assert [s.name for s in out.stages] == names  # stem ends with its max-pool: one stage, the container's
    assert [s.kind for s in out.stages].count("unpool") == 1 and out.stages[4].step == "stem.2"
    assert out.stages[0].tensor.shape == (2, 2, 4, 10, 10) and out.stages[4].size == (20, 20)
    assert torch.equal(out.stages[-1].tensor, out.images)
    modules = ["branch", "conv_b", "conv_a", "stem", "stem.1", "stem.1", "stem.0"]  # the pool's input: the ReLU's
    for n in range(2):
        for k in range(2):
            c, p = int(out.selections.channels[n, k]), int(out.selections.positions[n, k])
            want = _plain_gradients(model, x, "head", modules, n, c, p)
            for stage, name in zip(out.stages, [*modules, "input"], strict=True):
                assert rel_err(stage.tensor[n, k], want[name]) <= TOL, stage.name
    # the deconvnet rule: its last stage is its reconstruction, which captum checks
    model = TinyResNet(relu_modules=True).eval()
    dn = deconvviz.Deconvnet(model).project(x, "head", top=2, mode="max", keep_stages=True)
    want = oracle(model, model.head, x, dn.selections.channels, dn.selections.positions)
    assert rel_err(dn.stages[-1].tensor, want) <= TOL


def test_chosen_stages_and_default_boundaries_of_torchvision_models():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(1, 3, 16, 16)
    out = deconvviz.Deconvnet(model, rule="gradient").project(
        x, "head", channels=[1], mode="map", keep_stages=True, stages=["conv_a", "branch"]
    )
    assert [s.name for s in out.stages] == ["branch", "conv_a", "unpool1", "input"]  # and each max-pool's input
    assert out.stages[0].tensor.shape == (1, 1, 4, 8, 8) and out.stages[0].tensor.abs().max() > 0
    with pytest.raises(deconvviz.LayerError, match="did you mean 'conv_a'"):
        deconvviz.Deconvnet(model).project(x, "head", keep_stages=True, stages=["conv_aa"])
    from deconvviz.engine.layers import stage_modules

    r = stage_modules(torchvision.models.resnet18())
    assert r == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    d = stage_modules(torchvision.models.densenet121())
    assert "features.denseblock2" in d and "features.transition2" in d and "features.denseblock2.denselayer1" not in d
    m = stage_modules(torchvision.models.mobilenet_v2())
    assert m[:3] == ["features", "features.0", "features.1"] and "features.18" in m


class Resized(nn.Module):
    """Local, but not translation-equivariant: an adaptive pool to a fixed size changes its windows on a crop."""

    def __init__(self):
        super().__init__()
        self.conv, self.pool, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(12), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.pool(self.conv(x))))


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "gradient"])
def test_windows_on_local_non_chain_networks_match_the_full_plane(rule):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 40)
    tiny = TinyResNet(relu_modules=True).eval()
    resnet = randomized(torchvision.models.resnet18())
    for model, layer, size in ((tiny, "head", 40), (resnet, "layer1", 64), (resnet, "layer2.0.conv1", 64)):
        xs = torch.randn(2, 3, size, size)
        full = deconvviz.Deconvnet(model, crop=False, rule=rule).project(xs, layer, top=4, mode="max")
        with mock.patch.object(AutogradPath, "backward", side_effect=AssertionError("took the full plane")):
            crop = deconvviz.Deconvnet(model, crop=True, rule=rule).project(xs, layer, top=4, mode="max")
        assert torch.equal(full.selections.positions, crop.selections.positions)
        assert rel_err(crop.images, full.images) <= TOL, (layer, rule)
    if rule == "deconvnet":  # and captum, independently
        out = deconvviz.Deconvnet(tiny, crop=True).project(x, "head", top=3, mode="max")
        assert rel_err(out.images, oracle(tiny, tiny.head, x, out.selections.channels, out.selections.positions)) <= TOL
    odd = Resized().eval()
    full = deconvviz.Deconvnet(odd, crop=False, rule=rule).project(x, "head", top=3, mode="max")
    crop = deconvviz.Deconvnet(odd, crop=True, rule=rule).project(x, "head", top=3, mode="max")
    assert rel_err(crop.images, full.images) <= TOL  # its crops disagree with the plane: the full pass is taken


def test_windows_share_one_crop_size_and_stay_exact_off_the_stride_grid():
    """Every crop of a layer grows to one size (inward at the image's edge), so one batched pass runs them all; a
    side that is not a multiple of the layer's stride keeps the edge crops' own size. Same numbers either way."""
    resnet = randomized(torchvision.models.resnet18())
    for size, passes in (((112, 112), 2), ((112, 110), None)):  # the selecting forward, then one for all crops
        xs = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
        full = deconvviz.Deconvnet(resnet, crop=False).project(xs, "layer1", top=6, mode="max")
        wraps = deconvviz.engine.rectified.layer_output
        selecting = mock.patch("deconvviz.engine._paths.layer_output", wraps=wraps)
        cropped = mock.patch("deconvviz.engine._strategies.layer_output", wraps=wraps)
        with (
            selecting as first,
            cropped as then,
            mock.patch.object(AutogradPath, "backward", side_effect=AssertionError("full plane")),
        ):
            crop = deconvviz.Deconvnet(resnet, crop=True).project(xs, "layer1", top=6, mode="max")
        rows = crop.selections.rows_cols[..., 0]
        assert bool((rows == 0).any() or (rows == full.images.shape[-2] // 4 - 1).any()), "no unit at an edge"
        assert rel_err(crop.images, full.images) <= TOL, size
        assert passes is None or (first.call_count, then.call_count) == (1, passes - 1)


class Viewed(nn.Module):
    """Local, but its forward takes a `.view` of an activation, which channels-last memory order cannot give."""

    def __init__(self):
        super().__init__()
        self.a, self.relu, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        h = self.relu(self.a(x))
        return self.b(h.view(h.shape[0], -1).view(h.shape))


def test_windows_run_a_model_that_needs_contiguous_activations():
    x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(4))
    model = Viewed().eval()
    full = deconvviz.Deconvnet(model, crop=False).project(x, "b", top=3, mode="max")
    with mock.patch.object(AutogradPath, "backward", side_effect=AssertionError("took the full plane")):
        crop = deconvviz.Deconvnet(model, crop=True).project(x, "b", top=3, mode="max")
    assert rel_err(crop.images, full.images) <= TOL  # captum, independently:
    assert rel_err(crop.images, oracle(model, model.b, x, crop.selections.channels, crop.selections.positions)) <= TOL
