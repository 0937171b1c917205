"""The command line, in-process (typer's runner) and once as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from oracle import layer_activation
from PIL import Image

from deconvviz.cli import app
from deconvviz.images import DEFAULT_IMAGE, load_image, to_batch
from deconvviz.networks.weights import load_vgg


def test_visualize_default_is_top9_conv5_3_of_the_bicycle_with_offline_weights(run, cwd):
    r = run("visualize", "--quiet")
    assert r.exit_code == 0, r.output
    png, meta = cwd / "runs/visualize-conv5_3.png", cwd / "runs/visualize-conv5_3.png.provenance.json"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    prov = json.loads(meta.read_text())
    assert prov["weights"]["name"] == "vgg16-caffe" and prov["image"]["path"] == "built-in bicycle.jpg"
    (layer,) = prov["layers"]
    assert layer["layer"] == "conv5_3" and len(layer["channels"]) == 9
    # independent: the 9 strongest conv5_3 maps of the bicycle, read with a forward hook
    model, w = load_vgg("vgg16", "vgg16-caffe", device="cpu", verbose=False)
    act = layer_activation(model, model.features[29], to_batch(load_image(DEFAULT_IMAGE), w.preprocess))
    peaks = act.flatten(2).amax(2)[0]
    assert layer["channels"] == peaks.topk(9).indices.tolist()
    assert torch.allclose(torch.tensor(layer["values"]), peaks.topk(9).values, rtol=1e-5)
    first = meta.read_bytes()
    assert run("visualize", "--quiet").exit_code == 0
    assert meta.read_bytes() == first  # same arguments, byte-identical provenance
    assert not [p for p in (cwd / "runs").iterdir() if p.name.startswith(".")]  # no temp files left


def test_reconstruct_default_draws_ten_panels(run, cwd):
    r = run("reconstruct", "--out", "bike.pdf")
    assert r.exit_code == 0, r.output
    assert "weights: auto" in r.output and "wrote bike.pdf" in r.output
    assert (cwd / "bike.pdf").read_bytes()[:4] == b"%PDF"
    prov = json.loads((cwd / "bike.pdf.provenance.json").read_text())
    assert [(s["name"], s["size"]) for s in prov["stages"]] == [
        ("deconv5", [14, 14]), ("unpool4", [28, 28]), ("deconv4", [28, 28]), ("unpool3", [56, 56]),
        ("deconv3", [56, 56]), ("unpool2", [112, 112]), ("deconv2", [112, 112]), ("unpool1", [224, 224]),
        ("deconv1", [224, 224]),
    ]  # fmt: skip


def test_several_layers_channels_and_map_mode(run, cwd, tmp_path):
    img = tmp_path / "in.png"
    load_image(DEFAULT_IMAGE).resize((90, 70)).save(img)
    r = run("visualize", img, "--layers", "conv2_1,pool2", "--channels", "3,7", "--mode", "map",
            "--model", "vgg11", "--weights", "random", "--size", "64", "--out", "g.svg", "-q")  # fmt: skip
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "g.svg.provenance.json").read_text())
    assert [lay["channels"] for lay in prov["layers"]] == [[3, 7], [3, 7]]
    assert prov["input_size"] == [64, 64] and prov["image"]["path"] == "in.png"  # relative to the working folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["visualize", "--layer", "conv5_4"], "unknown layer 'conv5_4'; did you mean"),
        (["visualize", "missing.jpg"], "image not found: 'missing.jpg'"),
        (["visualize", "corrupt.jpg"], "cannot read image 'corrupt.jpg'"),
        (["visualize", "--channels", "600"], "channel 600 is out of range for layer 'conv5_3' with 512 channels"),
        (["visualize", "--channels", "a,b"], "not a comma-separated list"),
        (["visualize", "--channels", "all"], "visualize draws a grid"),
        (["reconstruct", "--out", "fig.gif"], "unknown format 'gif'"),
        (["visualize", "--device", "cuda:7"], "--device: device 'cuda:7' is not available here; use 'cpu'"),
        (["visualize", "--weights", "nope.pth"], "weights file not found"),
        (["visualize", "--weights", "garbage.pt"], "not a state dict that torch.load(weights_only=True) reads"),
        (["visualize", "--weights", "empty.pt"], "is empty"),
        (["visualize", "--model", "vgg17"], "did you mean"),
        (["reconstruct", "--layer", "fc7"], "layer 'fc7' needs a classifier"),
        (["visualize", "--size", "16", "--layer", "pool5"], "too small"),
        (["visualize", "--size", "0"], "--size: input size 0 is too small; use 32 or more"),
        (["visualize", "--size", "100000"], "use --size 2048 or less"),
        (["layers", "--size", "0"], "input size 0 is too small"),
        (["reconstruct", "--dpi", "0"], "--dpi: dpi 0 is not a usable resolution; use 1 to 1200"),
        (["reconstruct", "--dpi", "20000"], "--dpi: dpi 20000 is not a usable resolution; use 1 to 1200"),
        (["occlusion", "--size", "8"], "input size 8 is too small"),
        (["visualize", "/"], "is a directory"),
        (["visualize", "--top", "0"], "--top: top (how many feature maps) must be a whole number of at least 1"),
        (["visualize", "--layers", ","], "names no layer"),
        (["scan", ".", "--workers", "-1"], "--workers: workers must be at least 0"),
        (["visualize", "--sizee", "3"], "No such option: --sizee"),
        (["visualize", "--mode", "mean"], "is not one of 'max', 'map'"),
        (["visualize", "a.jpg", "b.jpg"], "unexpected extra argument"),
        (["visualize", "--out", "folder.png"], "--out: cannot write 'folder.png': it is a folder; choose another path"),
        (["visualize", "--out", "pair.png"], "cannot write 'pair.png.provenance.json': it is a folder"),
        (["visualize", "--out", "afile/f.png"], "'afile' is a file, not a folder"),
        (["visualize", "photo.png", "--out", "photo.png"], "would overwrite the input image"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(run, cwd, args, message):
    (cwd / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    (cwd / "garbage.pt").write_bytes(b"\x80\x04 definitely not a checkpoint")
    (cwd / "empty.pt").touch()
    (cwd / "folder.png").mkdir()
    (cwd / "pair.png.provenance.json").mkdir()
    (cwd / "afile").write_text("a file where a folder should be")
    load_image(DEFAULT_IMAGE).resize((64, 64)).save(cwd / "photo.png")
    before = {p: p.stat().st_mtime_ns for p in cwd.rglob("*")}
    r = run(*args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("deconvviz: error:")]
    assert len(lines) == 1 and message in lines[0], r.output
    assert "Traceback" not in r.output and "Usage:" not in r.output
    assert {p: p.stat().st_mtime_ns for p in cwd.rglob("*")} == before  # nothing written, nothing touched


def test_non_finite_weights_are_refused(run, cwd):
    state = load_vgg("vgg11", "random", device="cpu", verbose=False)[0].features.state_dict()
    state["0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, cwd / "nan.pt")
    r = run("visualize", "--model", "vgg11", "--weights", "nan.pt", "--size", "64")
    assert r.exit_code == 2 and "NaN or infinite activations" in r.output, r.output
    assert not (cwd / "runs").exists()


def test_default_layer_is_the_models_last_conv(run, cwd):
    r = run("visualize", "--model", "vgg13", "--weights", "random", "--size", "64", "--top", "2", "-q")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "runs" / "visualize-conv5_2.png.provenance.json").read_text())
    assert prov["layers"][0]["layer"] == "conv5_2" and prov["layers"][0]["module"] == "features.23"


def test_a_broken_weights_cache_setting_is_one_line(run, cwd, monkeypatch):
    (cwd / "cachefile").write_text("not a folder")
    monkeypatch.setenv("DECONVVIZ_CACHE", str(cwd / "cachefile"))
    r = run("filters", "--weights", "vgg16-caffe")  # `layers` reads no weights: shapes do not depend on them
    assert r.exit_code == 2 and "is a file, not a folder; set DECONVVIZ_CACHE" in r.output, r.output


def test_existing_output_is_replaced(run, cwd):
    out = cwd / "figures" / "x.png"
    out.parent.mkdir()
    out.write_bytes(b"old")
    assert (
        run(
            "reconstruct", "--weights", "random", "--model", "vgg11", "--layer", "conv4_2", "--out", out, "-q"
        ).exit_code
        == 0
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png", "x.png.provenance.json"]


def test_layers_lists_shapes_and_receptive_fields(run):
    r = run("layers", "--model", "vgg16")
    assert r.exit_code == 0
    row = next(line.split() for line in r.output.splitlines() if line.startswith("conv5_3"))
    assert row == [
        "conv5_3",
        "features.29",
        "ReLU",
        "512x14x14",
        "196",
        "16",
        *["ReLU", "rule"] * 2,
        "exact",
        "ReLU",
        "rule",
    ]
    pool = next(line.split() for line in r.output.splitlines() if line.startswith("pool5"))
    assert pool[-4:] == ["switches", "switches", "exact", "switches"]
    assert "pool5" in r.output and "Linear" in r.output


def test_installed_console_script_and_python_m(tmp_path):
    exe = shutil.which("deconvviz", path=os.path.dirname(sys.executable)) or shutil.which("deconvviz")
    assert exe, "the console script is not installed (pip install -e .)"
    r = subprocess.run([exe, "visualize", "--layer", "conv9_9"], capture_output=True, text=True, cwd=tmp_path)
    errors = [line for line in r.stderr.splitlines() if line.startswith("deconvviz: error:")]
    assert r.returncode == 2 and len(errors) == 1 and "did you mean" in errors[0] and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "deconvviz", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "reconstruct" in r.stdout and "visualize" in r.stdout
    assert not list(Path(tmp_path).iterdir())


REFUSED_IMAGES = ["missing.jpg", "empty.jpg", "text.jpg", "truncated.jpg", "bomb.png", "folder.jpg"]
REFUSED = [
    *[["visualize", name] for name in REFUSED_IMAGES],
    *[["reconstruct", name] for name in REFUSED_IMAGES],
    ["occlusion", "truncated.jpg"], ["invariance", "text.jpg"], ["invariance", "bomb.png"],
    ["visualize", "--layer", "conv5_4"], ["reconstruct", "--layer", "con5_3"], ["occlusion", "--layer", "pool9"],
    ["invariance", "--layers", "conv1_2,conv9_9"], ["filters", "--layer", "conv1_0"], ["filters", "--layer", "conv2_1"],
    ["visualize", "--channels", "9999"], ["reconstruct", "--channels", "512"], ["occlusion", "--channel", "9999"],
    ["visualize", "--top", "-3"], ["occlusion", "--class", "3"], ["reconstruct", "--layer", "fc7"],
    ["visualize", "--out", "/proc/deconvviz/x.png"], ["invariance", "--out", "/proc/x.png"],
    ["filters", "--out", "/proc/x.png"], ["visualize", "--model", "vgg16", "--weights", "torchvision-vgg19"],
    ["scan", ".", "--layer", "conv5_4"], ["scan", ".", "--channels", "600"], ["scan", ".", "--out", "/proc/x"],
    ["visualize", "--region", "0,0,0,0"], ["visualize", "--region", "0.5,0,1,1"], ["visualize", "--region", "nope"],
    ["visualize", "--at", "1000,1000"], ["visualize", "--exclude", "0,0,10,10"], ["visualize", "--class", "3"],
    ["visualize", "--region", "0,0,50,50", "--at", "3,3"], ["visualize", "--class", "3", "--channels", "1,2"],
    ["reconstruct", "--region", "bicycle", "--exclude", "cat"], ["visualize", "--region", "0,0,3,3"],
    ["compare", "--layer", "fc6"], ["compare", "--region", "nope"], ["sanity", "--layer", "fc6"],
    ["sanity", "--layer", "fc7", "--weights", "random"], ["explore", "--layers", "conv9_9"],
    ["explore", "--layers", "fc6"], ["occlusion", "--at", "1,2,3"], ["compare", "--channels", "600"],
]  # fmt: skip


@pytest.mark.parametrize("args", REFUSED, ids=lambda a: " ".join(a))
def test_refused_input_is_one_line_on_stderr_before_any_weights_load(runner, cwd, monkeypatch, args):
    (cwd / "empty.jpg").touch()
    (cwd / "text.jpg").write_text("hello, not an image\n")
    (cwd / "truncated.jpg").write_bytes(DEFAULT_IMAGE.read_bytes()[:3000])
    Image.new("1", (20000, 20000)).save(cwd / "bomb.png")  # 400 megapixels: PIL refuses it as a bomb
    (cwd / "folder.jpg").mkdir()
    before = {p: p.stat().st_mtime_ns for p in cwd.rglob("*")}

    def must_not_load(*a, **k):
        raise AssertionError("weights loaded for a refused input")

    monkeypatch.setattr("deconvviz.networks.weights.load_vgg", must_not_load)
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("deconvviz: error: "), r.stderr
    assert {p: p.stat().st_mtime_ns for p in cwd.rglob("*")} == before  # nothing written, nothing touched


def _no_machine_paths(text: str, *more: Path) -> None:
    for path in (Path.home(), Path(sys.prefix), Path(os.environ["DECONVVIZ_CACHE"]), Path("/tmp"), *more):
        assert str(path) not in text


def test_filters_draws_the_first_layer_and_its_provenance_names_no_path(runner, cwd):
    r = runner.invoke(app, ["filters", "--out", "f.png"])
    assert r.exit_code == 0, r.output
    notice = r.stderr.splitlines()
    assert len(notice) == 1 and notice[0].startswith("deconvviz: weights: auto (") and "vgg16-caffe" in notice[0]
    _no_machine_paths(r.stderr, cwd)
    text = (cwd / "f.png.provenance.json").read_text()
    _no_machine_paths(text, cwd)
    prov = json.loads(text)
    model, w = load_vgg("vgg16", "vgg16-caffe", device="cpu", verbose=False)
    assert prov["weights"]["sha256"] == w.sha256 and prov["module"] == "features.0" and prov["filters"] == 64
    expected = model.features[0].weight.flatten(1).abs().amax(1) * 255  # BGR 0-255, no std: only the scale
    assert torch.allclose(torch.tensor(prov["largest_abs_weight"]), expected, rtol=1e-5)
    assert (cwd / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_invariance_records_distances_class_and_a_relative_image_path(run, cwd, tmp_path_factory):
    inside = cwd / "photos" / "bike.png"
    inside.parent.mkdir()
    load_image(DEFAULT_IMAGE).resize((80, 64)).save(inside)
    args = ["--transform", "shift", "--model", "vgg11", "--weights", "random", "--size", "48", "-q"]
    r = run("invariance", inside.resolve(), *args, "--out", "inv.png")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "inv.png.provenance.json").read_text())
    assert prov["image"]["path"] == "photos/bike.png" and prov["transform"] == "shift"
    assert list(prov["distances"]) == ["conv1_1", "conv5_2", "fc7"] and len(prov["amounts"]) == 25
    assert len(prov["class"]["probabilities"]) == 25 and 0 <= prov["class"]["index"] < 1000
    outside = tmp_path_factory.mktemp("elsewhere") / "far.png"
    load_image(DEFAULT_IMAGE).resize((64, 64)).save(outside)
    r = run("invariance", outside, *args, "--layers", "conv2_1", "--out", "far.png")
    assert r.exit_code == 0, r.output
    text = (cwd / "far.png.provenance.json").read_text()
    assert json.loads(text)["image"]["path"] == "far.png"  # outside the working folder: its name only
    _no_machine_paths(text, cwd, outside.parent)


TINY_VIT = """import torchvision


def tiny_vit():
    return torchvision.models.VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
"""


def test_a_vit_under_the_gradient_rule_prints_only_deconvvizs_own_lines(tmp_path):
    """Torch's note that vmap has no batching rule for the CPU attention's backward is not shown: stderr holds
    deconvviz's own lines only (a fresh process, as a user runs it)."""
    (tmp_path / "nets.py").write_text(TINY_VIT)
    args = ["--model", "nets.py:tiny_vit", "--weights", "random", "--size", "32", "--rule", "gradient", "--top", "2"]
    layer = ["--layer", "encoder.layers.encoder_layer_1", "--out", "vit.png"]
    r = subprocess.run(
        [sys.executable, "-m", "deconvviz", "visualize", *args, *layer], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr and all(line.startswith("deconvviz: ") for line in r.stderr.splitlines()), r.stderr
    assert "note:" not in r.stderr and (tmp_path / "vit.png").is_file()


def test_a_warning_inside_a_command_is_one_note_shown_once(run, monkeypatch):
    """A library's warning raised while a command runs: one line `deconvviz: note: ...`, once, however often it
    is raised, with no source line."""
    import warnings

    import deconvviz.images

    check_size = deconvviz.images.check_size

    def noisy(size):
        for _ in range(3):
            warnings.warn("a library's note\nover two lines", UserWarning, stacklevel=1)
        return check_size(size)

    monkeypatch.setattr(deconvviz.images, "check_size", noisy)
    r = run("layers", "--model", "vgg11", "--size", "32")
    assert r.exit_code == 0
    assert r.stderr == "deconvviz: note: a library's note over two lines\n"
