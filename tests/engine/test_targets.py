"""Selection by region, point and class, checked against brute force and autograd; sidecar regions through
resize and crop, checked by drawing the box into the image and finding it again after preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deconvviz import Box, Deconvnet, Point, SelectionError
from deconvviz.engine.targets import class_contributions, named_regions
from deconvviz.images import to_batch
from deconvviz.preprocess import Preprocess


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Conv2d(6, 8, 5, stride=2, padding=1), nn.ReLU(),
    ).eval()  # fmt: skip


def _footprint_centres(net: nn.Sequential, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Receptive-field centres measured, not derived: on a copy of the net with ones for weights, no ReLU and
    average pools of the max-pools' geometry, the input pixels that reach an interior position are its field;
    centres of interior positions, extended with their spacing to every position of an input of `size`."""
    ones = []
    for m in net:
        if isinstance(m, nn.Conv2d):
            c = nn.Conv2d(1, 1, m.kernel_size, m.stride, m.padding, bias=False)
            nn.init.ones_(c.weight)
            ones.append(c)
        elif isinstance(m, nn.MaxPool2d):
            ones.append(nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
    probe = nn.Sequential(*ones)
    big = torch.zeros(1, 1, 96, 96, requires_grad=True)
    out = probe(big)
    h, w = net(torch.zeros(1, 3, *size)).shape[-2:]
    centres = []
    for axis, n in ((0, h), (1, w)):
        found = []
        for i in (4, 5):  # two interior positions, far from every edge of the big input
            idx = (0, 0, i, 6) if axis == 0 else (0, 0, 6, i)
            (g,) = torch.autograd.grad(out[idx], big, retain_graph=True)
            hit = g[0, 0].abs().sum(1 - axis).nonzero().flatten().double()
            found.append((hit.min() + hit.max() + 1) / 2)  # continuous centre of [lo, hi]
        step = float(found[1] - found[0])
        centres.append(np.array([float(found[0]) + (i - 4) * step for i in range(n)]))
    return centres[0], centres[1]


def _peak(a: torch.Tensor, rows, cols, box) -> tuple[float, int]:
    """One map (H, W): its strongest activation among positions whose field centre lies in box, and where."""
    x0, y0, x1, y1 = box
    cands = [(float(a[i, j]), i * a.shape[1] + j) for i, r in enumerate(rows) for j, c in enumerate(cols)
             if y0 <= r < y1 and x0 <= c < x1]  # fmt: skip
    return max(cands, key=lambda t: t[0])


def _brute(act: torch.Tensor, rows, cols, box, top):
    """For each image: the top maps by their strongest activation in box, and those activations' positions."""
    out_c, out_p = [], []
    for a in act:
        best = sorted(((*_peak(a[ch], rows, cols, box), ch) for ch in range(a.shape[0])), key=lambda t: (-t[0], t[2]))
        out_c.append([b[2] for b in best[:top]])
        out_p.append([b[1] for b in best[:top]])
    return out_c, out_p


@pytest.mark.parametrize(
    "box",
    [
        Box.pixels(0, 0, 37, 29),
        Box.pixels(0, 0, 9, 7),
        Box.pixels(30, 20, 37, 29),
        Box.fractions(10 / 37, 0.5, 1, 1),
        Box.pixels(0, 14, 37, 29),
        Box.pixels(17, 0, 23, 29),
        Box.pixels(16.5, 0.5, 23.25, 29),
    ],
)
def test_region_selection_matches_brute_force_over_the_map_and_receptive_fields(box):
    net = _net()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 29, 37)  # odd sizes, not square: width 37, height 29
    act = net(x).detach()
    rows, cols = _footprint_centres(net, (29, 37))
    scale = (37, 29, 37, 29) if box.unit == "fraction" else (1, 1, 1, 1)
    pixels = [v * s for v, s in zip((box.x0, box.y0, box.x1, box.y1), scale, strict=True)]
    want_c, want_p = _brute(act, rows, cols, pixels, 3)
    out = Deconvnet(net).project(x, "4", region=box, top=3)
    assert out.selections.channels.tolist() == want_c
    assert out.selections.positions.tolist() == want_p
    flat = act.flatten(2)
    want_v = torch.stack([flat[n, want_c[n], want_p[n]] for n in range(2)])
    assert torch.equal(out.selections.values, want_v)
    # the same selection projected as if given by hand
    same = Deconvnet(net).project(x, "4", channels=out.selections.channels, positions=out.selections.positions)
    torch.testing.assert_close(out.images, same.images, rtol=0, atol=0)
    # given channels: the region picks each one's position
    given = Deconvnet(net).project(x, "4", channels=[5, 2], region=box)
    assert given.selections.channels.tolist() == [[5, 2], [5, 2]]
    want = [[_peak(act[n, ch], rows, cols, pixels)[1] for ch in (5, 2)] for n in range(2)]
    assert given.selections.positions.tolist() == want


def test_point_picks_the_position_whose_field_centre_is_nearest():
    net = _net()
    torch.manual_seed(2)
    x = torch.randn(1, 3, 29, 37)
    act = net(x).detach()
    rows, cols = _footprint_centres(net, (29, 37))
    for at in [Point.pixels(0, 0), Point.pixels(36, 28), Point.pixels(18, 3), Point.fractions(0.5, 0.25)]:
        px, py = (at.x * 37, at.y * 29) if at.unit == "fraction" else (at.x + 0.5, at.y + 0.5)
        i, j = int(np.abs(rows - py).argmin()), int(np.abs(cols - px).argmin())
        out = Deconvnet(net).project(x, "4", at=at, top=2, mode="map")
        assert out.selections.channels[0].tolist() == act[0, :, i, j].topk(2).indices.tolist()
        out = Deconvnet(net).project(x, "4", at=at, top=2)
        assert out.selections.rows_cols[0].tolist() == [[i, j], [i, j]]


def test_exclude_removes_positions_and_an_empty_region_names_the_valid_range():
    net = _net()
    torch.manual_seed(3)
    x = torch.randn(1, 3, 29, 37)
    act = net(x).detach()
    rows, cols = _footprint_centres(net, (29, 37))
    dn = Deconvnet(net)
    out = dn.project(x, "4", region=Box.fractions(0, 0, 1, 1), exclude=[Box.pixels(0, 0, 20, 29)], top=2)
    want_c, want_p = _brute(act, rows, cols, (20, 0, 37, 29), 2)
    assert out.selections.channels.tolist() == want_c and out.selections.positions.tolist() == want_p
    gap = Box.pixels(cols[0] + 0.5, 0, cols[1] - 0.5, 29)  # between two columns of centres
    with pytest.raises(SelectionError, match=rf"no receptive-field centre.*x {cols[0]:g}\.\.{cols[-1]:g}"):
        dn.project(x, "4", region=gap)
    with pytest.raises(SelectionError, match=r"leaves the 37x29 input; use x in 0\.\.37 and y in 0\.\.29"):
        dn.project(x, "4", region=Box.pixels(0, 0, 40, 29))
    with pytest.raises(SelectionError, match="is empty"):
        dn.project(x, "4", region=Box.pixels(10, 5, 10, 20))
    with pytest.raises(SelectionError, match=r"exclude fractions 0,0,1\.5,1 must lie in 0\.\.1"):
        dn.project(x, "4", region=Box.pixels(0, 0, 37, 29), exclude=[Box.fractions(0, 0, 1.5, 1)])
    with pytest.raises(SelectionError, match="not both"):
        dn.project(x, "4", region=Box.pixels(0, 0, 37, 29), at=Point.pixels(3, 3))


def test_plain_tuples_are_refused_because_their_unit_would_be_a_guess():
    x = torch.randn(1, 3, 29, 37)
    dn = Deconvnet(_net())
    fix = r"say its unit with Box\.pixels\(x0, y0, x1, y1\) or Box\.fractions"
    with pytest.raises(SelectionError, match=rf"region must be a Box, got \(0, 0, 1, 1\): {fix}") as e:
        dn.project(x, "4", region=(0, 0, 1, 1))
    assert e.value.about == "region"
    with pytest.raises(SelectionError, match=rf"exclude must be a Box, got \[0\.0, 0\.0, 0\.5, 0\.5\]: {fix}"):
        dn.project(x, "4", region=Box.pixels(0, 0, 37, 29), exclude=[[0.0, 0.0, 0.5, 0.5]])
    with pytest.raises(SelectionError, match=r"at must be a Point, got \(3, 3\): say its unit with Point\.pixels"):
        dn.project(x, "4", at=(3, 3))
    with pytest.raises(SelectionError, match="unit must be 'px' or 'fraction', got 'cm'"):
        Box(0, 0, 1, 1, unit="cm")


def test_a_box_in_fractions_and_the_same_box_in_pixels_choose_the_same_activations():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 29, 37)
    dn = Deconvnet(_net())
    frac = Box.fractions(0.25, 0.5, 0.75, 1)
    assert frac.in_pixels(37, 29) == Box.pixels(9.25, 14.5, 27.75, 29)
    a = dn.project(x, "4", region=frac, top=3).selections
    b = dn.project(x, "4", region=Box.pixels(9.25, 14.5, 27.75, 29), top=3).selections
    assert torch.equal(a.channels, b.channels) and torch.equal(a.positions, b.positions)
    # one pixel and the whole image: the same four numbers, two units
    assert Box.pixels(0, 0, 1, 1).in_pixels(37, 29) == Box.pixels(0, 0, 1, 1)
    assert Box.fractions(0, 0, 1, 1).in_pixels(37, 29) == Box.pixels(0, 0, 37, 29)


def _with_head(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, 5),
    ).eval()  # fmt: skip


class _Wrapped(nn.Module):
    """Not a chain: projected and ranked through hooks and autograd."""

    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(x) * 1.0


def test_class_selection_matches_gradient_times_activation_from_autograd():
    net = _with_head()
    torch.manual_seed(4)
    x = torch.randn(3, 3, 21, 19)
    for cls in (0, 3):
        a = net[:5](x.clone()).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(net[5:](a)[:, cls].sum(), a)
        contrib = (g * a).detach().sum((2, 3))  # (N, 8)
        want = contrib.topk(3, dim=1).indices
        for model, layer in ((net, "4"), (_Wrapped(net), "body.4")):
            torch.testing.assert_close(class_contributions(model, x, layer, cls=cls), contrib, rtol=1e-5, atol=1e-6)
            out = Deconvnet(model).project(x, layer, cls=cls, top=3)
            assert torch.equal(out.selections.channels, want)
        # per-image channels are projected as given by hand
        by_hand = [Deconvnet(net).project(x[n : n + 1], "4", channels=want[n].tolist()).images[0] for n in range(3)]
        torch.testing.assert_close(Deconvnet(net).project(x, "4", cls=cls, top=3).images, torch.stack(by_hand))
    assert all(not m._forward_hooks for m in net.modules())  # nothing left attached


def test_class_selection_needs_a_classifier():
    with pytest.raises(SelectionError, match="needs a model with a classifier"):
        Deconvnet(_net()).project(torch.randn(1, 3, 16, 16), "4", cls=1)
    with pytest.raises(SelectionError, match=r"out of range .* 5 classes; use 0\.\.4"):
        Deconvnet(_with_head()).project(torch.randn(1, 3, 16, 16), "4", cls=5)


def _box_in_batch(path, size: int) -> tuple[int, int, int, int]:
    """The white box found again in the preprocessed image: bounds of pixels brighter than half."""
    x = to_batch(path, Preprocess("identity", (0.0, 0.0, 0.0)), size)[0].mean(0)
    ys, xs = (x > 0.5).nonzero(as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("wh", [(300, 200), (150, 260)])
def test_sidecar_regions_follow_the_resize_and_centre_crop(tmp_path, wh):
    w, h = wh
    boxes = {"thing": [w // 3, h // 4, w // 3 + w // 4, h // 4 + h // 3], "edge": [0, 0, w // 2, h // 2]}
    for name, (x0, y0, x1, y1) in boxes.items():
        img = np.zeros((h, w, 3), np.uint8)
        img[y0:y1, x0:x1] = 255
        path = tmp_path / f"{name}.png"
        Image.fromarray(img).save(path)
        path.with_name(path.name + ".json").write_text(json.dumps({name: boxes[name]}))
        got = named_regions(path, 100)[name]
        want = _box_in_batch(path, 100)
        assert np.allclose([got.x0, got.y0, got.x1, got.y1], want, atol=1.0), (got, want)
    assert named_regions(tmp_path / "none.png", 100) == {}


def test_a_region_named_in_the_sidecar_outside_the_crop_is_refused(tmp_path):
    from deconvviz.engine.targets import find_region

    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((100, 400, 3), np.uint8)).save(path)
    path.with_name("wide.png.json").write_text(json.dumps({"left": [0, 0, 100, 100]}))
    with pytest.raises(SelectionError, match="outside the centre square"):
        find_region("left", path, 64, width=64, height=64)
    with pytest.raises(SelectionError, match="unknown region 'right'.*names: left"):
        find_region("right", path, 64, width=64, height=64)


def test_the_built_in_photo_names_the_bicycle_and_the_dog():
    regions = named_regions(None, 224)
    assert set(regions) == {"bicycle", "dog"}
    bike, dog = regions["bicycle"], regions["dog"]
    assert bike.x1 - bike.x0 > 150 and dog.y1 == 224  # the bicycle spans the photo; the dog sits on its lower edge
