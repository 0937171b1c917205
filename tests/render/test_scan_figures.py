"""A scan's figures composed from tiles: each tile is its record's projection under the display normalization
(worked out here by hand, not by the package) or its image patch, in reading order; a scan draws them only when
given `draw`, into the folder it swaps in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deconvviz.preprocess import CAFFE_VGG, IMAGENET_TORCHVISION
from deconvviz.render.scan import TopImages, channel_sheet, overview_sheet


def by_hand(r: torch.Tensor, std, *, bgr: bool = False, scale: float = 1.0) -> np.ndarray:
    """The display of a projection (3, h, w): preprocessing's scale undone (no mean: a direction, not an image),
    then 0.5 + r / (2 s), s the 99.9th percentile of |r| over the crop, clipped; as 8-bit (h, w, 3)."""
    rgb = r.double() * torch.tensor(std, dtype=torch.double)[:, None, None] / scale
    rgb = rgb.flip(0) if bgr else rgb
    s = torch.quantile(rgb.abs().flatten(), 0.999)
    shown = (0.5 + rgb / (2 * s)).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(shown * 255).astype(int)


def tile(picture: Image.Image, box, scale: int) -> np.ndarray:
    """The tile at `box` back at one picture pixel per tile pixel (each was enlarged `scale` times, nearest)."""
    left, top, right, bottom = box
    return np.asarray(picture)[top:bottom:scale, left:right:scale].astype(int)


def records(k: int, size: int = 12, seed: int = 0) -> TopImages:
    """k records of a 12 x 12 plane with boxes of several shapes (one None: the whole plane), random patches."""
    g = torch.Generator().manual_seed(seed)
    boxes = [(0, 7, 2, 12), None, (3, 12, 0, 5), (4, 9, 4, 9), (0, 12, 6, 12)][:k]
    recon = torch.randn(k, 3, size, size, generator=g) * torch.linspace(0.1, 3, k)[:, None, None, None]
    patches = []
    for b in boxes:
        t, bottom, left, right = b or (0, size, 0, size)
        patches.append(torch.rand(bottom - t, right - left, 3, generator=g).numpy())
    return TopImages("conv3_1", 7, recon, patches, boxes, [float(10 - i) for i in range(k)])


def test_each_channel_tile_is_its_records_projection_shown_centred_beside_its_patch():
    t = records(5)
    sheet = channel_sheet(t, CAFFE_VGG)
    proj, patches, s = sheet.projections[7], sheet.patches[7], sheet.scale
    assert s > 1 and len(proj) == len(patches) == 5
    lefts, tops = [b[0] for b in proj], [b[1] for b in proj]
    assert lefts[0] < lefts[1] < lefts[2] and lefts[3] < lefts[4] and tops[0] < tops[3]  # 3 a row, reading order
    assert min(b[0] for b in patches) > max(b[2] for b in proj)  # the patches to the right of the projections
    label = 24  # the value's box covers the top of a full-height tile: compared below it
    for k, (r, b) in enumerate(zip(t.reconstructions, t.boxes, strict=True)):
        top, bottom, left, right = b or (0, 12, 0, 12)
        want = by_hand(r[:, top:bottom, left:right], (1.0, 1.0, 1.0), bgr=True, scale=255.0)
        got = tile(sheet.picture, proj[k], s)
        assert got.shape == want.shape == (bottom - top, right - left, 3)
        rows = -(-label // s)
        assert np.abs(got[rows:] - want[rows:]).max() <= 1, k
        assert np.array_equal(tile(sheet.picture, patches[k], s), np.round(t.patches[k] * 255).astype(int))


def test_the_overview_shows_every_maps_tiles_whole_at_one_scale():
    items = [records(5, seed=0), records(3, seed=1), records(4, seed=2)]
    for i, t in enumerate(items):
        t.channel = i
    sheet = overview_sheet(items, IMAGENET_TORCHVISION, title="a title long enough to be wrapped " * 8)
    std = (0.229, 0.224, 0.225)
    for t in items:
        for k, (r, b) in enumerate(zip(t.reconstructions, t.boxes, strict=True)):
            top, bottom, left, right = b or (0, 12, 0, 12)
            want = by_hand(r[:, top:bottom, left:right], std)
            assert np.abs(tile(sheet.picture, sheet.projections[t.channel][k], sheet.scale) - want).max() <= 1
            patch = tile(sheet.picture, sheet.patches[t.channel][k], sheet.scale)
            assert np.array_equal(patch, np.round(t.patches[k] * 255).astype(int))
    first, second = sheet.projections[0][0], sheet.projections[1][0]
    assert second[0] > first[0] and abs(second[1] - first[1]) < 40  # map 1 beside map 0, in the same row


@pytest.fixture(scope="module")
def scanned(random_vgg11, tmp_path_factory):
    """Three crops of the built-in photo scanned at conv2_1, maps 4 and 9, with the scan's figures drawn."""
    from deconvviz.analysis.scan import scan_folder
    from deconvviz.images import DEFAULT_IMAGE, load_image
    from deconvviz.render import scan_figures

    root = tmp_path_factory.mktemp("scan")
    (root / "photos").mkdir()
    img = load_image(DEFAULT_IMAGE)
    for i in range(3):
        img.crop((60 * i, 30 * i, 60 * i + 300, 30 * i + 300)).save(root / "photos" / f"p{i}.png")
    args = dict(top=2, channels=[9, 4], size=32, network=random_vgg11, batch_size=2, workers=0, verbose=False)
    plain = scan_folder(root / "photos", ["conv2_1"], root / "plain", **args)
    drawn = scan_folder(root / "photos", ["conv2_1"], root / "run", **args, draw=scan_figures)
    return root, plain, drawn


def test_a_scan_draws_only_when_given_draw_and_lists_its_figures(scanned):
    root, plain, drawn = scanned
    assert sorted(p.name for p in (root / "plain" / "conv2_1").iterdir()) == ["projections.pt"]
    figures = ["channel-4.png", "channel-9.png", "overview.png"]
    assert sorted(p.name for p in (root / "run" / "conv2_1").iterdir()) == [*figures, "projections.pt"]
    assert {p.name for p in drawn.written} >= set(figures) and drawn.projected == {"conv2_1": [9, 4]}
    marked = json.loads((root / "run" / ".deconvviz-scan.json").read_text())["files"]
    assert {f"conv2_1/{f}" for f in figures} <= set(marked)  # a rescan into the folder sees them as its own
    assert not list(root.glob(".*deconvviz-new"))  # built beside the folder, swapped in whole


def test_a_scans_channel_figure_shows_its_kept_projections(random_vgg11, scanned):
    """The PNG is the sheet drawn from load_result's numbers, and each of its tiles their display normalization."""
    from deconvviz.analysis.scan import load_result, preprocessed
    from deconvviz.render.scan import _top_images

    root, _, drawn = scanned
    result = load_result(root / "run")
    assert result.projected == drawn.projected
    items = list(_top_images(result, "conv2_1", {}, random_vgg11.weights.preprocess))
    assert [t.channel for t in items] == [9, 4]
    std = random_vgg11.weights.preprocess.std
    for t in items:
        sheet = channel_sheet(t, random_vgg11.weights.preprocess)
        png = Image.open(root / "run" / "conv2_1" / f"channel-{t.channel}.png")
        assert np.array_equal(np.asarray(png), np.asarray(sheet.picture))
        for k, rec in enumerate(result.layers["conv2_1"][t.channel].records):
            top, bottom, left, right = rec.box
            r = result.layers["conv2_1"][t.channel].projections[k][:, top:bottom, left:right]
            got = tile(sheet.picture, sheet.projections[t.channel][k], sheet.scale)
            rows = -(-24 // sheet.scale)
            assert np.abs(got[rows:] - by_hand(r, std)[rows:]).max() <= 1
            x = preprocessed(root / "photos" / rec.image, random_vgg11.weights.preprocess, 32)
            mean = torch.tensor(random_vgg11.weights.preprocess.mean)[:, None, None]
            image = (x * torch.tensor(std)[:, None, None] + mean).clamp(0, 1).permute(1, 2, 0).numpy()
            want = np.round(image[top:bottom, left:right] * 255).astype(int)
            assert np.abs(tile(sheet.picture, sheet.patches[t.channel][k], sheet.scale) - want).max() <= 1
