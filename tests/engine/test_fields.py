"""Receptive fields of any network against the support of each position's gradient (plain autograd)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from oracle import gradient_support
from torch import nn

import deconvviz
from deconvviz.engine.fields import module_fields, receptive_field
from deconvviz.engine.targets import centres, region_mask


class Residual(nn.Module):
    def __init__(self, act: bool):
        super().__init__()
        self.act = nn.ReLU() if act else nn.Identity()
        self.stem = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(4, 4, (1, 5), padding=(0, 2))  # an anisotropic field
        self.pool = nn.AvgPool2d(2, ceil_mode=True)
        self.branch = nn.Conv2d(4, 2, 3, padding=0)
        self.head = nn.Conv2d(6, 3, 3, stride=2, padding=1)

    def forward(self, x):
        s = self.act(self.stem(x))
        r = self.pool(s + self.b(self.act(self.a(s))))
        br = nn.functional.pad(self.branch(r), (1, 1, 1, 1))  # a concatenated branch of another field
        return self.head(torch.cat([r, br], 1))


def positive(model: nn.Module) -> nn.Module:
    """Positive weights: every dependency shows in the gradient, so the support fills the field exactly."""
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.data.copy_(torch.rand(p.shape, generator=g) + 0.1)
    return model.eval()


@pytest.mark.parametrize("layer", ["stem", "a", "pool", "branch", "head"])
def test_fields_are_the_support_of_the_gradient_residual_concat_strided_dilated_padded(layer):
    torch.manual_seed(0)
    x = torch.rand(1, 2, 23, 18)
    tight, relu = positive(Residual(act=False)), Residual(act=True).eval()
    f = receptive_field(tight, layer, input_size=(23, 18))
    assert torch.equal(f.rows, receptive_field(relu, layer, input_size=(23, 18)).rows)  # structure, not values
    for i in range(len(f.rows)):
        for j in range(len(f.cols)):
            box = tuple(f.boxes(torch.tensor([i, j])).tolist())
            assert gradient_support(tight, layer, x, i, j) == box, (i, j)  # every position matters: tight
            t, b, left, r = gradient_support(relu, layer, torch.randn(1, 2, 23, 18), i, j) if i == j else box
            assert box[0] <= t and b <= box[1] and box[2] <= left and r <= box[3]  # inside


def test_max_pools_depend_on_their_whole_window_and_global_layers_on_everything():
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU())

    class Wrapped(nn.Module):  # the same network, not a chain: the probe
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            y = self.body(x)
            return y + y.mean((2, 3), keepdim=True) * self.body[0].weight.sum()

    chain, probe = (
        receptive_field(model, "1", input_size=(12, 11)),
        receptive_field(Wrapped(), "body.1", input_size=(12, 11)),
    )
    assert torch.equal(chain.rows, probe.rows) and torch.equal(chain.cols, probe.cols)
    assert torch.equal(chain.centre_rows, probe.centre_rows) and torch.equal(chain.centre_cols, probe.centre_cols)
    assert chain.rows.tolist() == [[0, 5], [2, 7], [4, 9], [6, 11], [8, 12]]  # by hand: 3x3 conv, then 3-pools by 2

    class Gated(Wrapped):
        def forward(self, x):
            return self.body(x) * torch.sigmoid(self.body(x).mean((2, 3), keepdim=True))

    f = receptive_field(
        _Named(Gated()), "out", input_size=(12, 11)
    )  # a gate from a global pool: every field is the input
    assert f.rows.tolist() == [[0, 12]] * len(f.rows) and f.cols.tolist() == [[0, 11]] * len(f.cols)


class _Named(nn.Module):
    """A model whose result passes through a named module, so it can be asked for as a layer."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.out = inner, nn.Identity()

    def forward(self, x):
        return self.out(self.inner(x))


def test_vgg_like_chains_keep_their_closed_form():
    torch.manual_seed(0)
    chain = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1),
    ).eval()
    want = centres(chain, "6", input_size=(32, 32))
    got = centres(_Named(chain), "out", input_size=(32, 32))
    assert all(torch.equal(a.float(), b) for a, b in zip(want, got, strict=True))


def test_regions_points_and_boxes_on_a_non_chain_model():
    torch.manual_seed(0)
    model = positive(Residual(act=True))
    x = torch.rand(1, 2, 23, 18)
    rows, cols = centres(model, "head", input_size=(23, 18))
    assert len(rows) == 3 and len(cols) == 3
    mask = region_mask(model, "head", input_size=(23, 18), at=deconvviz.Point.pixels(17, 0))
    assert mask.nonzero().tolist() == [[0, 2]]
    dn = deconvviz.Deconvnet(model)
    out = dn.project(x, "head", channels=[0, 2], mode="max", at=deconvviz.Point.pixels(17, 0))
    assert out.selections.rows_cols[0].tolist() == [[0, 2], [0, 2]]
    boxes = dn.receptive_field_boxes(out)
    want = receptive_field(model, "head", input_size=(23, 18)).boxes(torch.tensor([0, 2]))
    assert boxes.shape == (1, 2, 4) and boxes[0, 0].tolist() == want.tolist()
    support = (out.images[0, 0].abs().sum(0) > 0).nonzero()
    t, b, left, r = want.tolist()
    assert t <= support[:, 0].min() and support[:, 0].max() < b and left <= support[:, 1].min() < r


def test_a_meta_skeleton_has_the_fields_of_the_gradient_support():
    """What checks --region before any weights are read: the architecture on the meta device."""
    with torch.device("meta"):
        skeleton = Residual(act=True)
    tight = positive(Residual(act=False))
    x = torch.rand(1, 2, 23, 18)
    f = receptive_field(skeleton, "head", input_size=(23, 18))
    for i, j in [(0, 0), (1, 2), (2, 1)]:
        assert tuple(f.boxes(torch.tensor([i, j])).tolist()) == gradient_support(tight, "head", x, i, j)
    assert all(p.is_meta for p in skeleton.parameters())  # the skeleton itself is untouched


def _same_fields(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("rows", "cols")) and all(
        torch.allclose(getattr(a, k), getattr(b, k)) for k in ("centre_rows", "centre_cols")
    )


def test_every_module_s_fields_from_one_forward_equal_the_probe_s():
    """module_fields (the hulls' one forward, what `deconvviz layers` shows) against the structural probe,
    module by module: a residual net with concatenation, dilation, ceil mode and an anisotropic kernel, and a
    torchvision resnet18 skeleton (meta device: no weights)."""
    model = Residual(act=True).eval()
    fields = module_fields(model, (23, 18))
    assert set(fields) == {"stem", "a", "b", "pool", "branch", "head"}  # not act: it runs twice
    for name, f in fields.items():
        assert _same_fields(f, receptive_field(model, name, input_size=(23, 18))), name
    with torch.device("meta"):
        resnet = torchvision.models.resnet18()
    fields = module_fields(resnet, (40, 40))
    # by hand: conv1, bn1, relu, maxpool; 8 blocks of conv1, bn1, conv2, bn2 and the block; 3 downsamples of
    # 3 modules; layer1-4; avgpool (not the blocks' relu: it runs twice)
    assert len(fields) == 4 + 8 * 5 + 3 * 3 + 4 + 1 and all(p.is_meta for p in resnet.parameters())
    for name in [*list(fields)[::5], "layer1", "layer2", "layer3.0.downsample", "layer4"]:  # the probe is slow
        assert _same_fields(fields[name], receptive_field(resnet, name, input_size=(40, 40))), name


def test_a_grouped_gated_network_and_an_operation_the_hulls_do_not_know():
    """Depthwise convolutions and squeeze-excitation gates (mobilenet_v3_small) agree with the probe; a bilinear
    upsampling (mixing neighbours, not modelled by the hulls) falls back to the probe for what follows it."""
    with torch.device("meta"):
        mobile = torchvision.models.mobilenet_v3_small()
    fields = module_fields(mobile, (32, 32))
    for name in ["features.0", "features.1.block.0", "features.1.block.1", "features.4.block.1"]:
        assert _same_fields(fields[name], receptive_field(mobile, name, input_size=(32, 32))), name
    assert fields["features.1.block.0"].rows.tolist()[4] == [13, 20]  # by hand: 3x3 by 2, then 3x3 by 2
    assert fields["features.1.block.1"].rows.tolist() == [[0, 32]] * 8  # a gate over all positions: everything

    class Upsampled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3, stride=2), nn.Conv2d(2, 2, 3)

        def forward(self, x):
            return self.b(nn.functional.interpolate(self.a(x), scale_factor=2, mode="bilinear"))

    model = Upsampled()
    fields = module_fields(model, (17, 17))
    assert fields["a"].rows.tolist()[:2] == [[0, 3], [2, 5]]  # by hand: 3x3 by 2
    assert _same_fields(fields["b"], receptive_field(model, "b", input_size=(17, 17)))


def test_a_field_that_lost_its_input_is_refused_and_the_crop_falls_back(monkeypatch):
    """A position of a layer that depends on the input always has a field. When the probe loses the dependence
    (maxvit_t's blocks.1 at 224 px gave every position an empty field, and visualize died cropping its patches
    to nothing), receptive_field refuses in one line and the crop falls back to the pixels the projection touches.
    Simulated here by a probe whose support comes back empty."""
    import deconvviz
    from deconvviz.engine import _probe, fields
    from deconvviz.engine.deconvnet import crop_boxes

    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fields.receptive_field(model, "layer1", input_size=(64, 64))  # traced as usual
    monkeypatch.setattr(_probe, "_support", lambda out, leaf, seeds: torch.zeros(len(seeds), *leaf.shape[-2:]) > 0)
    with pytest.raises(deconvviz.LayerError, match="cannot trace the receptive fields of 'layer1'"):
        fields.receptive_field(model, "layer1", input_size=(64, 64))
    dn = deconvviz.Deconvnet(model)
    out = dn.project(x, "layer1", top=2)
    assert dn.receptive_field_boxes(out) is None
    boxes = crop_boxes(dn, out)
    assert bool(((boxes[..., 1] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 2])).all())
