"""Networks that upsample: a decoder's own unpooling (fed its max-pools' switches), transposed convolutions,
interpolation in every mode, pixel shuffles, pads, crops and skip concatenations, under every rule and both modes,
against a hand oracle (a copy whose ReLUs are autograd Functions with the rule's backward) and captum; and their
receptive fields against a brute-force field (the input pixels whose perturbation changes the activation)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from oracle import OracleReLU, oracle, rel_err
from torch import Tensor, nn
from transformer_oracle import layer_of

import deconvviz
from deconvviz.engine._hulls import module_fields
from deconvviz.engine._probe import Fields, _centres
from deconvviz.engine.fields import receptive_field
from deconvviz.engine.rectified import rule_passes
from deconvviz.engine.table import layer_table
from deconvviz.engine.targets import region_mask
from deconvviz.errors import UnsupportedModelError

RULES = ("deconvnet", "guided", "gradient", "linear")


class SegNet(nn.Module):
    """Badrinarayanan et al.'s SegNet in small: the decoder unpools with the encoder's own switches."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c1, self.r1, self.p1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, return_indices=True)
        self.c2, self.r2, self.p2 = nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, return_indices=True)
        self.c3, self.r3 = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        self.u2, self.c4, self.r4 = nn.MaxUnpool2d(2), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU()
        self.u1, self.c5, self.r5 = nn.MaxUnpool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x):
        y, i1 = self.p1(self.r1(self.c1(x)))
        y, i2 = self.p2(self.r2(self.c2(y)))
        y = self.r3(self.c3(y))
        y = self.r4(self.c4(self.u2(y, i2)))
        return self.head(self.r5(self.c5(self.u1(y, i1))))


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net in small: up by a transposed convolution (then padded to its skip) and by
    bilinear interpolation (its skip cropped), skips concatenated."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c1, self.r1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.c3, self.r3 = nn.Conv2d(4, 6, 3), nn.ReLU()  # valid: 8 -> 6
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)  # 6 -> 12, padded to 16
        self.c4, self.r4 = nn.Conv2d(8, 4, 3, padding=1), nn.ReLU()
        self.c5, self.r5 = nn.Conv2d(8, 4, 3, padding=1), nn.ReLU()
        self.head = nn.Conv2d(4, classes, 1)

    def forward(self, x):
        e1 = self.r1(self.c1(x))
        e2 = self.r2(self.c2(F.max_pool2d(e1, 2)))
        e3 = self.r3(self.c3(F.max_pool2d(e2, 2)))
        d2 = self.r4(self.c4(torch.cat([F.pad(self.up(e3), (2, 2, 2, 2), mode="reflect"), e2], 1)))
        n = x.shape[-1] - 2
        up = F.interpolate(d2, size=(n, n), mode="bilinear", align_corners=False)
        d1 = self.r5(self.c5(torch.cat([up, e1[:, :, 1:-1, 1:-1]], 1)))
        return self.head(d1)


class FCN(nn.Module):
    """Long et al.'s FCN in small: class scores on a coarse grid, upsampled bilinearly to the input's size."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c1, self.r1, self.p1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.r2, self.p2 = nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.score = nn.Conv2d(6, classes, 1)
        self.up = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)

    def forward(self, x):
        return self.up(self.score(self.p2(self.r2(self.c2(self.p1(self.r1(self.c1(x))))))))


class Call(nn.Module):
    """A functional operator as a module (its parameters, if any, in `inner`)."""

    def __init__(self, f, inner: nn.Module | None = None):
        super().__init__()
        self.f, self.inner = f, inner

    def forward(self, x):
        return self.f(self, x)


class Around(nn.Module):
    """conv-relu, the operator, conv-relu: the rule acts on both sides of it."""

    def __init__(self, op: nn.Module, channels: int = 4):
        super().__init__()
        self.c1, self.r1, self.op = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), op
        self.c2, self.r2 = nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.r2(self.c2(self.op(self.r1(self.c1(x)))))


def _unpooling(d: int) -> Call:
    """pool (d-d, with indices) -> 1x1 conv -> ReLU -> unpool with those indices, on a map seen as 1-, 2- or 3-d."""
    conv = getattr(nn, f"Conv{d}d")(4, 4, 1)
    pool, unpool = getattr(nn, f"MaxPool{d}d")(2, return_indices=True), getattr(nn, f"MaxUnpool{d}d")(2)
    inner = nn.ModuleDict({"conv": conv, "pool": pool, "unpool": unpool, "relu": nn.ReLU()})

    def f(m, x):
        shaped = x.flatten(2) if d == 1 else x[:, :, None].expand(-1, -1, 2, -1, -1) if d == 3 else x
        y, idx = m.inner["pool"](shaped)
        y = m.inner["unpool"](m.inner["relu"](m.inner["conv"](y)), idx)
        return y.view_as(x) if d == 1 else y.sum(2) if d == 3 else y

    return Call(f, inner)


def _functional_unpooling(m, x):
    y, idx = F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    return F.max_unpool2d(m.inner(y), idx, 3, stride=2, padding=1, output_size=x.shape[-2:])


def _interpolate(**kwargs) -> Call:
    return Call(lambda m, x: F.interpolate(x, **kwargs))


def _as(d: int, op: nn.Module) -> Call:
    """A 1-d (rows flattened) or 3-d (a depth of 2) operator on the maps, back to (N, C, H', W')."""

    def f(m, x):
        if d == 1:
            y = m.inner(x.flatten(2))
            return y.view(*x.shape[:2], x.shape[2], -1)
        return m.inner(x[:, :, None].expand(-1, -1, 2, -1, -1)).sum(2)

    return Call(f, op)


def _skip(m, x):
    """A skip concatenation: the map beside a cropped and padded copy of itself."""
    return m.inner(torch.cat([x, F.pad(x[:, :, 1:-2, 2:-1], (2, 1, 1, 2))], 1))


OPERATORS = {
    "ConvTranspose2d": lambda: nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1),
    "ConvTranspose2d groups dilation": lambda: nn.ConvTranspose2d(4, 4, 3, stride=2, dilation=2, groups=2),
    "ConvTranspose1d": lambda: _as(1, nn.ConvTranspose1d(4, 4, 4, stride=2, padding=1)),
    "ConvTranspose3d": lambda: _as(3, nn.ConvTranspose3d(4, 4, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))),
    "MaxUnpool1d": lambda: _unpooling(1),
    "MaxUnpool2d": lambda: _unpooling(2),
    "MaxUnpool3d": lambda: _unpooling(3),
    "F.max_unpool2d overlapping": lambda: Call(_functional_unpooling, nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())),
    "nearest": lambda: nn.Upsample(scale_factor=2),
    "nearest 1.5": lambda: _interpolate(scale_factor=1.5, mode="nearest"),
    "nearest-exact": lambda: _interpolate(scale_factor=1.5, mode="nearest-exact"),
    "bilinear": lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
    "bilinear align_corners": lambda: nn.Upsample(size=(29, 29), mode="bilinear", align_corners=True),
    "bicubic": lambda: _interpolate(scale_factor=2, mode="bicubic"),
    "bicubic align_corners": lambda: _interpolate(scale_factor=2, mode="bicubic", align_corners=True),
    "bilinear antialias down": lambda: _interpolate(scale_factor=0.5, mode="bilinear", antialias=True),
    "bicubic antialias down": lambda: _interpolate(size=(7, 9), mode="bicubic", antialias=True),
    "area": lambda: _interpolate(size=(11, 13), mode="area"),
    "linear": lambda: _as(1, nn.Upsample(scale_factor=2, mode="linear")),
    "linear align_corners": lambda: _as(1, nn.Upsample(scale_factor=2, mode="linear", align_corners=True)),
    "trilinear": lambda: _as(3, nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear")),
    "nearest 1d": lambda: _as(1, nn.Upsample(scale_factor=2)),
    "nearest-exact 3d": lambda: _as(3, nn.Upsample(scale_factor=(1, 2, 2), mode="nearest-exact")),
    "PixelShuffle": lambda: nn.Sequential(nn.Conv2d(4, 16, 1), nn.PixelShuffle(2)),
    "PixelUnshuffle": lambda: nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(16, 4, 1)),
    "pad constant": lambda: Call(lambda m, x: F.pad(x, (1, 1, 1, 0))),
    "pad reflect": lambda: nn.ReflectionPad2d((2, 1, 0, 2)),
    "pad replicate": lambda: Call(lambda m, x: F.pad(x, (2, 2, 1, 3), mode="replicate")),
    "pad circular": lambda: Call(lambda m, x: F.pad(x, (2, 1, 1, 2), mode="circular")),
    "conv padding_mode circular": lambda: nn.Conv2d(4, 4, 3, padding=2, padding_mode="circular"),
    "fold (patches summed back)": lambda: Call(
        lambda m, x: F.fold(F.unfold(x, 3, padding=1), x.shape[-2:], 3, padding=1)
    ),
    "crop": lambda: Call(lambda m, x: x[:, :, 2:-1, 1:-3]),
    "skip concatenation": lambda: Call(_skip, nn.Conv2d(8, 4, 1)),
}


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():
        p.data.normal_(0, 0.6)
    return model.double().eval()


def _input(seed: int = 1, size: int = 16) -> Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def hand_twin(model: nn.Module, rule: str) -> nn.Module:
    """A copy whose nn.ReLU modules are tests/oracle.py's OracleReLU: an autograd Function with the rule's
    backward written out (deconvnet max(s, 0), guided max(s, 0) where x > 0, gradient s where x > 0, linear s)."""
    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, name, OracleReLU(rule))
    return twin.eval()


def hand_projection(model: nn.Module, layer: str, x: Tensor, channel: int, mode: str) -> Tensor:
    """Plain autograd through `model` from `layer`'s map `channel`: its strongest activation (max) or the whole map
    (map) as the seed. (C, H, W)."""
    xs = x.clone().requires_grad_(True)
    out = layer_of(model, layer, xs)
    act, seed = out.detach()[0, channel], torch.zeros_like(out)
    if mode == "map":
        seed[0, channel] = act
    else:
        at = int(act.flatten().argmax())
        seed[0, channel].view(-1)[at] = act.flatten()[at]
    return torch.autograd.grad(out, xs, seed)[0][0]


def _check_every_rule(model: nn.Module, layer: str, x: Tensor, *, captum: bool = True) -> None:
    """Every rule and mode equals the hand twin (and captum where it has the rule), on the layer's strongest map;
    the rules that are not the gradient differ from it, so that no case passes by the signal not reaching a ReLU."""
    with torch.no_grad():
        channel = int(layer_of(model, layer, x)[0].flatten(1).amax(1).argmax())
    for mode in ("max", "map"):
        plain = hand_projection(model, layer, x, channel, mode)
        assert rel_err(hand_projection(hand_twin(model, "gradient"), layer, x, channel, mode), plain) <= 1e-12
        for rule in RULES:
            got = deconvviz.Deconvnet(model, rule=rule).project(x, layer, channels=[channel], mode=mode)
            want = hand_projection(hand_twin(model, rule), layer, x, channel, mode)
            assert rel_err(got.images[0, 0], want) <= 1e-9, (rule, mode)
            if rule != "gradient":
                assert rel_err(want, plain) > 1e-3, (rule, mode)  # the rule changes the result here
            if captum and rule in ("deconvnet", "guided", "gradient"):
                sel = got.selections
                positions = None if mode == "map" else sel.positions
                found = oracle(model, model.get_submodule(layer), x, sel.channels, positions, rule)
                assert rel_err(got.images, found) <= 1e-6, (rule, mode)  # the oracle seeds in float32


@pytest.mark.parametrize("name", list(OPERATORS))
def test_each_operator_passes_the_signal_by_its_transpose_under_every_rule(name):
    op = OPERATORS[name]()
    model = _seeded(Around(op))
    _check_every_rule(model, "r2", _input(), captum=name in ("MaxUnpool2d", "bicubic", "skip concatenation"))


@pytest.mark.parametrize(
    ("net", "layers"), [(SegNet, ("r4", "r5", "head")), (UNet, ("r4", "r5", "head")), (FCN, ("score", "up"))]
)
def test_encoder_decoders_match_the_oracles_under_every_rule(net, layers):
    model = _seeded(net())
    for layer in layers:
        _check_every_rule(model, layer, _input(2, size=16))


def test_unpooling_passes_the_signal_back_as_a_gather_at_the_switches():
    """A case by hand: a 4x4 map pooled 2x2 with indices and unpooled; the projection of the unpooled map is the
    seed gathered back at the switches (zero elsewhere), under every rule (no ReLU on the way)."""
    model = nn.Sequential(Call(lambda m, x: F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2)))
    x = torch.tensor([[1.0, 5, 2, 0], [3, 4, 8, 1], [0, 9, 7, 7], [6, 2, 3, 6]], dtype=torch.float64)[None, None]
    for rule in RULES:
        got = deconvviz.Deconvnet(model, rule=rule).project(x, "0", channels=[0], mode="map").images[0, 0, 0]
        want = torch.tensor([[0.0, 5, 0, 0], [0, 0, 8, 0], [0, 9, 7, 0], [0, 0, 0, 0]], dtype=torch.float64)
        assert torch.equal(got, want), rule  # 7 at (2, 2): the first maximum of its window, as torch records it


def test_an_unpooling_at_indices_not_from_a_max_pool_is_refused_by_name():
    def f(m, x):
        y, idx = F.max_pool2d(x, 2, return_indices=True)
        return F.max_unpool2d(y, idx.flip(-1), 2)  # indices computed from the switches, not the switches

    model = _seeded(Around(Call(f)))
    for rule in ("deconvnet", "guided", "linear"):
        with pytest.raises(UnsupportedModelError, match="unpools at indices computed from the input"):
            deconvviz.Deconvnet(model, rule=rule).project(_input(), "r2", channels=[0])
    deconvviz.Deconvnet(model, rule="gradient").project(_input(), "r2", channels=[0])  # exact through anything


def test_layers_says_how_each_rule_passes_the_upsampling_operators():
    passes = {p.module: p.rules for p in rule_passes(SegNet(), (16, 16))}
    assert passes["u1"] == passes["u2"] == {"deconvnet": "switches", "guided": "switches", "gradient": "exact",
                                            "linear": "switches"}  # fmt: skip
    assert passes["r4"]["deconvnet"] == "ReLU rule"
    unet = {p.module: p.rules for p in rule_passes(UNet(), (16, 16))}
    assert unet["up"] == {"deconvnet": "linear", "guided": "linear", "gradient": "exact", "linear": "linear"}


# ---- receptive fields, against a brute-force field ----


def brute_fields(model: nn.Module, layer: str, size: tuple[int, int], inputs: int = 2) -> Fields:
    """The input rows (columns) each row (column) of the layer depends on: those of the pixels whose perturbation,
    by +-1000 in every channel, changes some activation of that row (column), over a few random inputs."""
    h_in, w_in = size
    rows = cols = None
    for k in range(inputs):
        x = torch.randn(1, 3, h_in, w_in, generator=torch.Generator().manual_seed(10 + k), dtype=torch.float64)
        with torch.no_grad():
            base = layer_of(model, layer, x)
            for sign in (1.0, -1.0):
                batch = x.repeat(h_in * w_in, 1, 1, 1)
                batch.view(h_in * w_in, 3, -1)[torch.arange(h_in * w_in), :, torch.arange(h_in * w_in)] += sign * 1e3
                out = torch.cat([layer_of(model, layer, b) for b in batch.split(64)])
                changed = ((out - base).abs() > 1e-6 * (1 + base.abs())).any(1).view(h_in, w_in, *out.shape[-2:])
                r, c = changed.any(3).any(1).T, changed.any(2).any(0).T  # (h, H_in), (w, W_in)
                rows, cols = (r, c) if rows is None else (rows | r, cols | c)
    spans = []
    for hit, n in ((rows, h_in), (cols, w_in)):
        first, last = hit.int().argmax(1), n - hit.flip(1).int().argmax(1)
        spans.append(torch.stack([first.where(hit.any(1), 0), last.where(hit.any(1), 0)], 1))
    return Fields(spans[0], spans[1], _centres(spans[0], h_in), _centres(spans[1], w_in))


FIELD_CASES = [(name, "r2") for name in OPERATORS if "1d" not in name and "linear" != name[:6]] + [
    ("SegNet", "r4"),
    ("SegNet", "r5"),
    ("UNet", "r4"),
    ("UNet", "head"),
    ("FCN", "up"),
]


@pytest.mark.parametrize(("name", "layer"), FIELD_CASES)
def test_receptive_fields_through_upsampling_are_exact(name, layer):
    nets = {"SegNet": SegNet, "UNet": UNet, "FCN": FCN}
    model = _seeded(nets[name]() if name in nets else Around(OPERATORS[name]()))
    size = (16, 16)
    want = brute_fields(model, layer, size)
    probe = receptive_field(model, layer, input_size=size)
    hulls = module_fields(model, size)[layer]
    for got in (probe, hulls):
        assert torch.equal(got.rows, want.rows) and torch.equal(got.cols, want.cols), name
    row = next(r for r in layer_table(model, size) if r.module == layer)
    assert (row.rf, row.stride) == (("all", "-") if want.whole(size) else want.describe())  # `deconvviz layers`


@pytest.mark.parametrize(("net", "layer"), [(SegNet, "r4"), (SegNet, "r5"), (UNet, "r4"), (UNet, "r5")])
def test_region_and_at_choose_positions_by_the_exact_fields(net, layer):
    """On a decoder's layers neighbours share a field (an unpooling by 2: steps 0, 4, 0, 4), yet a point chooses
    a position whose exact field is centred on it, within one stride (input pixels per position), and a region
    the positions centred inside it."""
    model = _seeded(net())
    size = (32, 32)
    want = brute_fields(model, layer, size, inputs=1)
    mids = [s.double().mean(1) for s in (want.rows, want.cols)]  # exact field centres (interior ones unclipped)
    stride = [size[0] / len(mids[0]), size[1] / len(mids[1])]
    for px, py in ((11.3, 17.6), (19.8, 13.2)):
        got = region_mask(model, layer, input_size=size, at=deconvviz.Point.pixels(px, py))
        centre = (py + 0.5, px + 0.5)  # Point.pixels(x, y): the centre of that pixel
        (i, j), near = got.nonzero()[0].tolist(), [(m - v).abs() for m, v in zip(mids, centre, strict=True)]
        assert float(near[0][i]) <= float(near[0].min()) + stride[0] and float(near[0][i]) <= stride[0]
        assert float(near[1][j]) <= float(near[1].min()) + stride[1] and float(near[1][j]) <= stride[1]
        out = deconvviz.Deconvnet(model).project(_input(3, 32), layer, channels=[1], at=deconvviz.Point.pixels(px, py))
        assert int(out.selections.positions[0, 0]) == i * len(mids[1]) + j
    inside = region_mask(model, layer, input_size=size, region=deconvviz.Box.pixels(10, 8, 22, 20))
    rows, cols = inside.any(1).nonzero()[:, 0], inside.any(0).nonzero()[:, 0]
    for chosen, m, (a, b), s in ((rows, mids[0], (8, 20), stride[0]), (cols, mids[1], (10, 22), stride[1])):
        assert bool(((m[chosen] >= a - s) & (m[chosen] <= b + s)).all())
        assert abs(len(chosen) - (b - a) / s) <= 1


def test_layers_gives_a_stride_only_where_a_decoders_fields_step_evenly():
    """After an unpooling neighbours share a field (steps 0, 4, 0, 4): no grid, so `-`, as in Swin's windows;
    the encoder's layers keep their strides."""
    rows = {r.module: (r.rf, r.stride) for r in layer_table(_seeded(SegNet()), (32, 32))}
    assert [rows[n][1] for n in ("r1", "p1", "r2", "p2", "r3")] == ["1", "2", "2", "4", "4"]
    assert [rows[n][1] for n in ("u2", "r4", "u1", "r5", "head")] == ["-"] * 5
    assert rows["u2"][0] == rows["r3"][0]  # an unpooling adds its window, which the pool's field holds already


def test_field_windows_give_the_full_planes_numbers_on_an_encoder_decoder():
    """crop=True: each selection on the crop of its field (encoder layers) or, where the fields are not on a regular
    grid (after an unpooling), the full plane; the same numbers either way."""
    model, x = _seeded(SegNet()), _input(4, size=32)
    for layer in ("r3", "r5"):
        full = deconvviz.Deconvnet(model, crop=False).project(x, layer, top=3)
        windows = deconvviz.Deconvnet(model, crop=True).project(x, layer, top=3)
        assert torch.equal(windows.selections.channels, full.selections.channels)
        assert rel_err(windows.images, full.images) <= 1e-9
