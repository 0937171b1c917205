"""Layer chains, VGG aliases, name resolution, receptive fields (checked by autograd) and output shapes."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

import deconvviz
from deconvviz.engine.forward import output_shapes
from deconvviz.engine.layers import chain_of, receptive_fields, resolve, vgg_aliases
from deconvviz.engine.model import ModelView

# Known VGG configurations (Simonyan & Zisserman, table 1): convs per block; block widths 64, 128, 256, 512, 512.
CONVS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
VGGS = [n + bn for n in CONVS for bn in ("", "_bn")]


@functools.cache
def vgg(name: str) -> nn.Module:
    """Untrained torchvision VGG on the meta device: the structure and shapes are real, building takes ms."""
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None).eval()


def expected_aliases(name: str) -> dict[str, str]:
    """Aliases worked out from torchvision's layout: conv[, bn], relu per conv; a max-pool after each block."""
    per_conv, i, out = (3 if name.endswith("_bn") else 2), 0, {}
    for b, n in enumerate(CONVS[name.removesuffix("_bn")], start=1):
        for c in range(1, n + 1):
            out[f"conv{b}_{c}"], i = f"features.{i + per_conv - 1}", i + per_conv
        out[f"pool{b}"], i = f"features.{i}", i + 1
    return out | {"fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}


@pytest.mark.parametrize("name", VGGS)
def test_vgg_aliases(name):
    model = vgg(name)
    aliases = vgg_aliases(chain_of(model))
    assert aliases == expected_aliases(name)
    modules = dict(model.named_modules())
    for alias, path in aliases.items():
        m, i = modules[path], int(path.split(".")[1])
        if alias.startswith("conv"):
            assert type(m) is nn.ReLU
            before = [type(model.features[j]) for j in range(i - (2 if name.endswith("_bn") else 1), i)]
            assert before == ([nn.Conv2d, nn.BatchNorm2d] if name.endswith("_bn") else [nn.Conv2d])
            assert model.features[i - len(before)].out_channels == WIDTHS[int(alias[4]) - 1]
        elif alias.startswith("pool"):
            assert type(m) is nn.MaxPool2d
            assert sum(type(x) is nn.MaxPool2d for x in model.features[: i + 1]) == int(alias[4:])
        else:
            assert type(m) is (nn.Linear if alias == "fc8" else nn.ReLU)
    blocks = [sum(a.startswith(f"conv{b}_") for a in aliases) for b in range(1, 6)]
    assert tuple(blocks) == CONVS[name.removesuffix("_bn")]


def test_layer_names_and_resolve():
    model = vgg("vgg16")
    steps = chain_of(model)
    modules = [f"features.{i}" for i in range(31)] + ["avgpool"] + [f"classifier.{i}" for i in range(7)]
    assert ModelView.of(model).layer_names() == list(expected_aliases("vgg16")) + modules
    assert [s.name for s in steps] == modules[:32] + ["flatten"] + modules[32:]
    for name, path in [("conv5_3", "features.29"), ("pool5", "features.30"), ("fc6", "classifier.1"),
                       ("fc8", "classifier.6"), ("features.28", "features.28"), ("avgpool", "avgpool"),
                       ("features", "features.30"), ("classifier", "classifier.6")]:  # fmt: skip
        assert resolve(model, steps, name) == path
    with pytest.raises(deconvviz.LayerError, match=r"unknown layer 'conv5-3'; did you mean 'conv5_3'\?.*pool5"):
        resolve(model, steps, "conv5-3")
    with pytest.raises(deconvviz.LayerError, match="flatten"):
        resolve(model, steps, "flatten")  # a step of ours, not a module of the model

    tiny = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.MaxPool2d(2))
    steps = chain_of(tiny)
    assert ModelView.of(tiny).layer_names() == ["0.0", "0.1", "1"] == [s.name for s in steps]
    assert [resolve(tiny, steps, n) for n in ("0", "0.0", "1")] == ["0.1", "0.0", "1"]
    with pytest.raises(deconvviz.LayerError, match=r"did you mean '0\.1'"):
        resolve(tiny, steps, "0.2")


def test_chain_of():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), relu, nn.Conv2d(2, 2, 3), relu)
    assert [s.name for s in chain_of(model)] == ["0", "1", "2", "3"]  # a reused module is two steps

    class Custom(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2

    unsupported = [
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid()),
        nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")),
        nn.Sequential(nn.Conv2d(1, 2, 3, padding="same")),
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)),
        nn.Sequential(nn.Conv2d(1, 2, 3), Custom(nn.ReLU())),
        Custom(nn.Conv2d(1, 2, 3), nn.ReLU()),
        nn.Conv2d(1, 2, 3),
    ]
    for m in unsupported:
        assert chain_of(m) is None, m
    assert ModelView.of(unsupported[0]).layer_names() == ["0", "1"]  # falls back to module paths


def surrogate(steps, upto: int) -> nn.Sequential:
    """One-channel net with the same conv/pool geometry, positive weights and biases: every ReLU passes and no
    gradient cancels, so d out[i, j] / d input is nonzero exactly on the receptive field. A pool becomes an
    all-positive conv with its kernel/stride/padding/dilation (same field as a max-pool, whose gradient hits one cell).
    """
    layers = []
    for s in steps[: upto + 1]:
        m = s.module
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            conv = nn.Conv2d(1, 1, m.kernel_size, m.stride, m.padding, getattr(m, "dilation", 1))
            conv.weight.data.fill_(1 / conv.weight.numel())
            conv.bias.data.fill_(1.0)
            layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers).double()


def autograd_fields(net: nn.Module, size: tuple[int, int], positions) -> list[tuple[tuple[int, int], ...]]:
    """Half-open bounding box (rows, cols) of the input cells that out[i, j] depends on, per position (batched)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(len(positions), 1, *size, dtype=torch.float64, generator=g).requires_grad_()
    out = net(x)[:, 0]
    out[range(len(positions)), *zip(*positions, strict=True)].sum().backward()
    hit = x.grad[:, 0] != 0  # (N, H, W)
    box = []
    for axis_hit in (hit.any(2), hit.any(1)):  # rows, cols: (N, H), (N, W)
        n = axis_hit.shape[1]
        box.append(zip(axis_hit.int().argmax(1).tolist(), (n - axis_hit.flip(1).int().argmax(1)).tolist(), strict=True))
    return list(zip(*box, strict=True))


def check_fields(steps, upto: int, size: tuple[int, int], positions, exact_border: bool = True) -> None:
    """span == autograd bounding box; at a clipped border of a dilated net only span ⊇ box (see test below)."""
    net = surrogate(steps, upto)
    rows, cols = receptive_fields(steps, upto)
    clipped = []
    for (i, j), want in zip(positions, autograd_fields(net, size, positions), strict=True):
        got = rows.span(i, size[0]), cols.span(j, size[1])
        clipped.append(got[0][1] - got[0][0] < rows.size or got[1][1] - got[1][0] < cols.size)
        if exact_border or not clipped[-1]:
            assert got == want, (steps[upto].name, i, j)
        else:
            assert all(g[0] <= w[0] < w[1] <= g[1] for g, w in zip(got, want, strict=True)), (steps[upto].name, i, j)
    assert any(clipped) and not all(clipped)  # both a border and an interior position were checked


@pytest.mark.parametrize("layer", ["conv3_3", "pool2", "conv5_3", "pool5"])
def test_receptive_fields_vgg16(layer):
    model = vgg("vgg16")
    steps = chain_of(model)
    upto = [s.name for s in steps].index(resolve(model, steps, layer))
    n = output_shapes(model, steps, (224, 224))[upto][-1]
    check_fields(steps, upto, (224, 224), [(0, n - 1), (n // 2, n // 2), (n - 1, 0), (1, n // 2)])


def test_receptive_fields_vgg16_closed_form():
    model = vgg("vgg16")
    steps = chain_of(model)
    index = {s.name: k for k, s in enumerate(steps)}
    # offset: sum of paddings times the stride before them: 2*1 + 2*2 + 3*4 + 3*8 + 3*16 = 90
    for layer, size, stride in [("conv5_3", 196, 16), ("pool5", 212, 32), ("conv1_1", 3, 1), ("pool1", 6, 2)]:
        rf = receptive_fields(steps, index[resolve(model, steps, layer)])
        assert rf[0] == rf[1]
        assert (rf[0].size, rf[0].stride) == (size, stride), layer
    assert receptive_fields(steps, index["features.30"])[0].offset == 90
    with pytest.raises(deconvviz.LayerError, match="avgpool"):
        receptive_fields(steps, index["classifier.1"])  # past the adaptive pool every position mixes


@pytest.mark.parametrize("dilated", [False, True])
def test_receptive_fields_strided_dilated_overlapping(dilated):
    torch.manual_seed(0)
    d = (2, 3) if dilated else 1
    model = nn.Sequential(
        nn.Conv2d(2, 3, (3, 5), stride=(2, 1), padding=(1, 2)), nn.BatchNorm2d(3).eval(), nn.ReLU(),
        nn.Conv2d(3, 3, 3, dilation=d, padding=d), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows
        nn.Conv2d(3, 2, (1, 3), stride=(1, 2)), nn.ReLU(),
        nn.MaxPool2d(2, stride=1, dilation=2 if dilated else 1),
    )  # fmt: skip
    steps, size = chain_of(model), (29, 37)
    shapes = output_shapes(model, steps, size)
    for upto in (0, 3, 5, 6, 8):
        net = surrogate(steps, upto)
        h, w = net(torch.zeros(1, 1, *size, dtype=torch.float64)).shape[-2:]
        assert shapes[upto][1:] == (h, w)
        edges = [(i, j) for i in {0, 1, 2, h // 2, h - 2, h - 1} for j in {0, 1, 2, w // 2, w - 2, w - 1}]
        check_fields(steps, upto, size, edges, exact_border=not dilated)


def test_output_shapes_vgg16():
    model = vgg("vgg16")
    steps = chain_of(model)
    shapes = output_shapes(model, steps, (224, 224))
    index = {s.name: k for k, s in enumerate(steps)}
    assert shapes[index["features.29"]] == (512, 14, 14)  # conv5_3
    assert shapes[index["features.30"]] == (512, 7, 7)  # pool5
    assert shapes[index["flatten"]] == (25088,) and shapes[-1] == (1000,)
    # independently: output shapes seen by forward hooks on torchvision's own forward
    seen, modules = {}, dict(model.named_modules())

    def record(name):
        return lambda module, args, out: seen.update({name: tuple(out.shape[1:])})  # returns None: output kept

    handles = [modules[s.name].register_forward_hook(record(s.name)) for s in steps if s.name != "flatten"]
    try:
        model(torch.zeros(1, 3, 224, 224, device="meta"))
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(steps) - 1 and {n: shapes[index[n]] for n in seen} == seen


def test_receptive_field_dilated_border_is_a_bounding_box():
    """With padding < dilation a border window's first tap lies in the padding and the next one skips a row:
    the span is the geometric field clipped to the image, one row wider than what the output depends on."""
    steps = chain_of(nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2, padding=1)))
    rows, _ = receptive_fields(steps, 0)
    assert (rows.size, rows.stride, rows.offset) == (5, 1, 1)
    border, inside = autograd_fields(surrogate(steps, 0), (9, 9), [(0, 0), (2, 2)])
    assert rows.span(0, 9) == (0, 4) and border[0] == (1, 4)  # taps at rows -1 (padding), 1, 3
    assert rows.span(2, 9) == (1, 6) == inside[0]
