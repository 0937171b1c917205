"""--region, --at, --exclude, --class and --stage-view on the command line; the default reconstruction."""

from __future__ import annotations

import json

import pytest
import torch
from oracle import layer_activation

from deconvviz.images import DEFAULT_IMAGE, load_image, to_batch
from deconvviz.networks.weights import load_vgg


def test_reconstruct_default_is_the_map_strongest_on_the_bicycle_outside_the_dog(run, cwd):
    r = run("reconstruct", "--quiet", "--out", "bike.png")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "bike.png.provenance.json").read_text())
    (layer,) = prov["layers"]
    assert layer["mode"] == "map" and layer["region"]["name"] == "bicycle" and layer["exclude"][0]["name"] == "dog"
    assert prov["stage_view"] == "channel"
    # independent: conv5_3 by a forward hook; VGG16 conv5_3 fields are 196 px wide, 16 px apart, centred at
    # 16 i + 8; the sidecar's boxes are in 448 px, the input is 224 (halved, no crop)
    boxes = json.loads((DEFAULT_IMAGE.parent / "bicycle.jpg.json").read_text())
    model, w = load_vgg("vgg16", "vgg16-caffe", device="cpu", verbose=False)
    act = layer_activation(model, model.features[29], to_batch(load_image(DEFAULT_IMAGE), w.preprocess))[0]
    c = torch.arange(14) * 16 + 8.0

    def inside(b):
        x0, y0, x1, y1 = (v / 2 for v in b)
        return ((c >= y0) & (c < y1))[:, None] & ((c >= x0) & (c < x1))[None, :]

    keep = inside(boxes["bicycle"]) & ~inside(boxes["dog"])
    assert layer["channels"] == [int(act[:, keep].amax(1).argmax())]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reconstruct", "--class", "671", "--weights", "vgg16-caffe"], "vgg16-caffe has none"),
        (["visualize", "--region", "0,0,3"], "--region '0,0,3' is not x0,y0,x1,y1"),
        (["visualize", "--at", "1,b"], "--at '1,b' is not x,y"),
        (["visualize", "--region", "0.5,0,1,1"], "'0.5,0,1,1' mixes fractions and pixels; write frac:0.5,0,1,1"),
        (["visualize", "--region", "frac:cat"], "--region 'frac:cat' is not x0,y0,x1,y1"),
        (["reconstruct", "--stage-view", "max"], "is not one of 'channel', 'mean'"),
    ],
)
def test_bad_targets_are_one_line_and_exit_2(run, cwd, args, message):
    _refused(run(*args), cwd, message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["visualize", "--region", "0,0,100,64"], "leaves the 64x64 input; use x in 0..64"),
        (["visualize", "--region", "cat"], "unknown region 'cat'; "),
        (["visualize", "--region", "frac:0,0,1.5,1"], "--region: region fractions 0,0,1.5,1 must lie in 0..1"),
        (["visualize", "--at", "100,3"], "--at: point 100,3 leaves the 64x64 input"),
        (["visualize", "--region", "0,0,64,64", "--exclude", "0,0,65,3"], "--exclude: exclude 0,0,65,3 leaves"),
        (["visualize", "--region", "10,10,12,12"], "holds no receptive-field centre of layer 'conv5_2'"),
        (["visualize", "--class", "3", "--channels", "1,2"], "give channels or a class, not both"),
        (["occlusion", "--region", "0,0,64,64", "--at", "3,3"], "not both"),
        (["occlusion", "--class", "-1"], "class -1 is out of range"),
    ],
)
def test_bad_targets_on_a_quick_model_are_one_line_and_exit_2(run, small, cwd, args, message):
    _refused(run(*args, *small), cwd, message)


def _refused(r, cwd, message: str) -> None:
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("deconvviz: error:")]
    assert len(lines) == 1 and message in lines[0], r.output
    assert not list(cwd.iterdir())


def test_region_at_and_class_reach_the_figures(run, small, cwd):
    r = run("visualize", "--region", "0.0,0.0,0.5,0.5", "--top", "2", *small, "--out", "v.png", "-q")
    assert r.exit_code == 0, r.output
    layer = json.loads((cwd / "v.png.provenance.json").read_text())["layers"][0]
    assert layer["region"] == [0.0, 0.0, 32.0, 32.0] and len(layer["channels"]) == 2
    assert all(f[0] < 32 and f[2] < 32 for f in layer["receptive_fields"])  # fields start in the top-left quarter
    for spelled in ("frac:0,0,0.5,0.5", "0,0,32,32"):  # the explicit fractions and the same box in pixels
        r = run("visualize", "--region", spelled, "--top", "2", *small, "--out", "w.png", "-q")
        assert r.exit_code == 0, r.output
        same = json.loads((cwd / "w.png.provenance.json").read_text())["layers"][0]
        assert (same["region"], same["channels"]) == (layer["region"], layer["channels"])
    r = run("visualize", "--region", "0,0,1,1", "--layer", "conv1_1", "--top", "1", *small, "--out", "p.png", "-q")
    assert r.exit_code == 0, r.output  # whole numbers are pixels: one pixel, not the whole image
    assert json.loads((cwd / "p.png.provenance.json").read_text())["layers"][0]["region"] == [0.0, 0.0, 1.0, 1.0]
    r = run("reconstruct", "--class", "3", "--stage-view", "mean", *small, "--out", "r.png", "-q")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "r.png.provenance.json").read_text())
    assert prov["layers"][0]["class"] == 3 and prov["stage_view"] == "mean"
    r = run("occlusion", "--at", "10,50", "--stride", "32", *small, "--out", "o.png", "-q")
    assert r.exit_code == 0, r.output
    proj = json.loads((cwd / "o.png.provenance.json").read_text())["projection"]
    assert proj["at"] == [10, 50]


def test_reconstruct_at_a_point_draws_and_records_it(run, small, cwd):
    """--at on reconstruct reaches the figure's title (it raised a TypeError on the Point there) and the provenance."""
    for spelled, recorded in (("10,50", [10, 50]), ("frac:0.5,0.25", {"fractions": [0.5, 0.25]})):
        r = run("reconstruct", "--at", spelled, "--mode", "map", *small, "--out", "a.png", "-q")
        assert r.exit_code == 0, r.output
        assert json.loads((cwd / "a.png.provenance.json").read_text())["layers"][0]["at"] == recorded
