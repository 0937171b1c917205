"""Every command on a segmentation network (a small encoder-decoder returning {"out", "aux"}, as torchvision's do),
with --class scored over pixels (--output, --pixels, --target-box), and what the figures and provenance record."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from deconvviz import Box, load_network, to_batch
from deconvviz.engine.request import Request
from deconvviz.images import DEFAULT_IMAGE, load_image
from deconvviz.render import figures

SEGMENTATION_NET = '''
import torch
from torch import nn


class Segmenter(nn.Module):
    """conv, ReLU, pool (/2), conv, ReLU; class maps upsampled by a transposed convolution; an auxiliary head."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1, self.relu1, self.pool = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        self.head, self.up = nn.Conv2d(8, classes, 1), nn.ConvTranspose2d(classes, classes, 2, stride=2)
        self.aux = nn.Conv2d(6, classes, 1)

    def forward(self, x):
        low = self.pool(self.relu1(self.conv1(x)))
        return {"out": self.up(self.head(self.relu2(self.conv2(low)))), "aux": self.aux(low)}


def build():
    torch.manual_seed(0)
    return Segmenter()
'''


@pytest.fixture()
def segmenter(factory_file):
    """The spec of a factory file with the small segmentation network: path/to/file.py:build."""
    return factory_file(SEGMENTATION_NET, "segmenter.py")


def _predicted_in(spec: str, cls: int, size: int, box: tuple[int, int, int, int] | None = None) -> int:
    """By hand: how many output pixels of the built-in photo class `cls` wins, inside the box if one is given."""
    net = load_network(spec, "auto", "cpu", verbose=False)
    with torch.no_grad():
        wins = net.module(to_batch(load_image(DEFAULT_IMAGE), net.preprocess, size))["out"].argmax(1)[0] == cls
    if box is not None:
        x0, y0, x1, y1 = box
        wins = wins[y0:y1, x0:x1]
    return int(wins.sum())


def test_visualize_scores_a_class_over_the_predicted_pixels_in_a_box_and_records_them(run, cwd, segmenter):
    wins = {c: _predicted_in(segmenter, c, 32, (0, 0, 16, 32)) for c in range(4)}
    cls = max(wins, key=wins.get)
    args = ["--model", segmenter, "--layer", "relu2", "--size", 32, "--top", 3, "--class", cls]
    r = run("visualize", *args, "--pixels", "predicted", "--target-box", "0,0,16,32", "--out", "v.png", "-q")
    assert r.exit_code == 0, r.output
    (layer,) = json.loads((cwd / "v.png.provenance.json").read_text())["layers"]
    assert layer["score"] == {
        "class": cls,
        "output": "out",
        "kind": "map",
        "pixels": "predicted",
        "grid": [32, 32],
        "pixels_scored": [wins[cls]],
        "target": [0, 0, 16, 32],
    }
    net = load_network(segmenter, "auto", "cpu", verbose=False)
    request = Request(
        layers=["relu2"], top=3, cls=cls, size=32, pixels="predicted", target_box=Box.pixels(0, 0, 16, 32)
    )
    fig, _ = figures.visualize(net, request)
    title = fig._suptitle.get_text()
    assert f"class {cls}'s logits summed over {wins[cls]} of 1024 output pixels" in title
    assert "where it is predicted, in 0,0,16,32" in title and "of 'out'" in title


@pytest.mark.parametrize("command", ["reconstruct", "compare", "occlusion"])
def test_the_class_commands_score_the_chosen_output(run, cwd, segmenter, command):
    args = ["--model", segmenter, "--layer", "conv1", "--size", 32, "--class", 1, "--output", "aux"]
    r = run(command, *args, "--out", "f.png", "-q")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "f.png.provenance.json").read_text())
    score = prov["class"]["score"] if command == "occlusion" else prov["layers"][0]["score"]
    assert score["output"] == "aux" and score["grid"] == [16, 16] and score["pixels_scored"] == [256]


def test_the_other_commands_run_on_a_segmentation_network(run, cwd, segmenter):
    photos = cwd / "photos"
    photos.mkdir()
    src = Image.open(DEFAULT_IMAGE).convert("RGB")
    for i, (left, top, side) in enumerate([(0, 0, 300), (100, 50, 250), (148, 148, 300)]):
        src.crop((left, top, left + side, top + side)).resize((40, 40)).save(photos / f"img{i}.jpg")
    small = ["--model", segmenter, "--size", 32]
    r = run("sanity", *small, "--layer", "relu2", "--out", "s.png", "-q")
    assert r.exit_code == 0 and (cwd / "s.csv").is_file(), r.output
    r = run(
        "scan", photos, *small, "--layers", "relu2,up", "--channels", "1,2", "--top", 2, "--workers", 0, "--out", "scan"
    )
    assert r.exit_code == 0, r.output
    assert list(json.loads((cwd / "scan" / "report.json").read_text())["layers"]) == ["relu2", "up"]  # and a decoder's
    r = run("site", "scan", "--out", "site", "-q")
    assert r.exit_code == 0 and (cwd / "site" / "index.html").is_file(), r.output
    r = run("explore", *small, "--layers", "relu1,relu2", "--top", 2, "--out", "explore", "-q")
    assert r.exit_code == 0 and (cwd / "explore" / "index.html").is_file(), r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--class", "1", "--output", "logits"],
            "--output: output 'logits' is not in the model's result; valid: out, aux",
        ),
        (["--pixels", "predicted"], "--class: output, pixels and target say how a class is scored: give a class too"),
        (["--class", "9"], "class 9 is out of range for a map of class scores with 4 classes (output 'out')"),
        (["--class", "1", "--target-box", "0,0,0.5,0.5,1"], "--target-box '0,0,0.5,0.5,1' is not x0,y0,x1,y1"),
    ],
)
def test_a_wrong_output_or_pixels_is_refused_in_one_line_before_any_work(run, cwd, segmenter, args, message):
    r = run("visualize", "--model", segmenter, "--layer", "relu2", "--size", 32, *args, "--out", "x.png")
    assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output
    assert not (cwd / "x.png").exists()


@pytest.mark.slow
def test_fcn_resnet50_with_random_weights_says_which_pixels_it_scored(run, cwd):
    args = ["--model", "torchvision:fcn_resnet50", "--weights", "random", "--layer", "classifier", "--class", 2]
    r = run("visualize", *args, "--size", 64, "--out", "fcn.png", "-q")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "fcn.png.provenance.json").read_text())
    score = prov["layers"][0]["score"]
    assert score["output"] == "out" and score["pixels"] == "all" and score["pixels_scored"] == [64 * 64]
    assert prov["layers"][0]["channels"][0] == 2  # at the head's output only class 2's own map feeds its score
