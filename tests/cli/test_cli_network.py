"""The command line on networks deconvviz has never named: torchvision resnet18 and densenet121 (random
weights), a factory file with a small residual network, and a user's model card."""

import hashlib
import json

import pytest
import torch
from PIL import Image

from deconvviz.images import DEFAULT_IMAGE

NETWORKS = ["resnet18", "torchvision:densenet121", "FACTORY"]


def spec_of(name, residual_factory):
    return residual_factory if name == "FACTORY" else name


@pytest.mark.parametrize("name", NETWORKS)
def test_figures_of_any_network(run, cwd, residual_factory, name):
    spec = spec_of(name, residual_factory)
    common = ["--model", spec, "--weights", "random", "--size", "64", "-q"]
    for command in (["visualize", "--top", "2"], ["reconstruct"], ["compare", "--top", "2"]):
        r = run(*command, *common, "--out", f"{command[0]}.png")
        assert r.exit_code == 0, r.output
        prov = json.loads((cwd / f"{command[0]}.png.provenance.json").read_text())
        assert prov["network"] == {"spec": prov["model"], "weights": "random", "seed": 0}
        assert str(cwd) not in json.dumps(prov)  # provenance holds no local path
    default = {"resnet18": "layer4", "torchvision:densenet121": "features.denseblock4", "FACTORY": "block2"}[name]
    assert prov["layers"][0]["layer"] == default


@pytest.mark.parametrize("name, layer", [("resnet18", "layer1"), ("FACTORY", "block1")])
def test_sanity_of_any_network(run, cwd, residual_factory, name, layer):
    spec = spec_of(name, residual_factory)
    r = run(
        "sanity",
        "--model",
        spec,
        "--weights",
        "random",
        "--size",
        "64",
        "--layer",
        layer,
        "--rules",
        "deconvnet",
        "-q",
        "--out",
        "s.png",
    )
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "s.png.provenance.json").read_text())
    if name == "FACTORY":  # reverse order of forward execution, by hand
        assert prov["randomized"] == ["block1.conv2", "block1.conv1", "stem.0"]
    else:
        assert prov["randomized"][0] == "layer1.1.bn2" and prov["randomized"][-1] == "conv1"


def test_layers_of_a_resnet_are_module_paths_with_shapes(run):
    r = run("layers", "--model", "torchvision:resnet18", "--size", "64")
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line.split()[1:3] for line in r.stdout.splitlines()[1:]}
    # by hand: 64 -> conv1 /2 -> 32 -> maxpool /2 -> 16 -> layer2 /2 -> 8 -> layer3 /2 -> 4 -> layer4 /2 -> 2
    assert rows["conv1"] == ["Conv2d", "64x32x32"] and rows["layer3"] == ["Sequential", "256x4x4"]
    assert rows["layer4.1"] == ["BasicBlock", "512x2x2"] and rows["fc"] == ["Linear", "1000"]
    assert "layer1.0.relu" not in rows  # it runs twice in a BasicBlock: no one output to project from
    fields = {line.split()[0]: line.split()[3:5] for line in r.stdout.splitlines()[1:]}
    # by hand: 7x7 by 2, 3x3 max-pool by 2 (11, stride 4), layer1's four 3x3 convs at stride 4 (43); layer4's
    # 427 pixels cover all of a 64 x 64 input from every position
    assert fields["conv1"] == ["7", "2"] and fields["maxpool"] == ["11", "4"] and fields["layer1"] == ["43", "4"]
    assert fields["layer4"] == ["all", "-"] and fields["fc"] == ["all", "-"]


def test_layers_of_a_factory_network_give_receptive_fields_worked_by_hand(run, residual_factory):
    r = run("layers", "--model", residual_factory, "--size", "64")
    assert r.exit_code == 0, r.output
    fields = {line.split()[0]: line.split()[3:5] for line in r.stdout.splitlines()[1:]}
    # stem: 3x3 (3), max-pool 2 (4, stride 2); block1: two 3x3 at stride 2 (8, 12), the residual's sum keeps the
    # larger field; pool (14, stride 4); block2: two 3x3 at stride 4 (22, 30); the head pools everything
    want = {
        "stem.0": ["3", "1"],
        "stem.2": ["4", "2"],
        "block1.conv1": ["8", "2"],
        "block1.conv2": ["12", "2"],
        "block1": ["12", "2"],
        "pool": ["14", "4"],
        "block2.conv1": ["22", "4"],
        "block2": ["30", "4"],
        "head.0": ["all", "-"],
        "head.2": ["all", "-"],
    }
    assert {k: fields[k] for k in want} == want


def test_a_mistyped_module_path_gets_the_nearest_ones(run, cwd):
    r = run("visualize", "--model", "resnet18", "--weights", "random", "--layer", "layer3.1.con1", "--size", "64")
    assert r.exit_code == 2 and "did you mean 'layer3.1.conv1'" in r.output and r.output.count("\n") == 1


def test_filters_draws_the_first_convolution_whatever_its_name(run, cwd, residual_factory):
    r = run("filters", "--model", residual_factory, "--weights", "random", "-q")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "runs" / "filters-stem.0.png.provenance.json").read_text())
    assert prov["module"] == "stem.0" and prov["filters"] == 8


def photos(folder):
    folder.mkdir()
    picture = Image.open(DEFAULT_IMAGE)
    for i in range(3):
        picture.rotate(40 * i).resize((72, 72)).save(folder / f"p{i}.jpg")
    return folder


# receptive field sizes worked out by hand: the factory's stem conv 3, pool 2, two convs 3, pool 2, two convs 3
# (3, 4, 12, 14, 30); resnet18's conv1 7/2, maxpool 3/2, layer1's four convs 3 at stride 4 (7, 11, 43)
FIELD = {"FACTORY": 30, "resnet18": 43}


@pytest.mark.parametrize("name, layer", [("FACTORY", "block2"), ("resnet18", "layer1")])
def test_scan_and_site_of_any_network(run, cwd, residual_factory, name, layer):
    spec = spec_of(name, residual_factory)
    folder = photos(cwd / "photos")
    r = run(
        "scan",
        folder,
        "--model",
        spec,
        "--weights",
        "random",
        "--size",
        "64",
        "--layer",
        layer,
        "--top",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--out",
        "run",
        "-q",
    )
    assert r.exit_code == 0, r.output
    report = json.loads((cwd / "run" / "report.json").read_text())
    assert report["arguments"]["model"] == ("torchvision:resnet18" if name != "FACTORY" else residual_factory)
    # the top-k of one unit, checked against a plain forward pass of the same network with hooks
    from deconvviz.analysis.scan import preprocessed
    from deconvviz.networks.network import load_network

    net = load_network(spec, "random", "cpu", verbose=False)
    got = {}
    handle = dict(net.module.named_modules())[layer].register_forward_hook(lambda m, a, o: got.update(o=o.clone()))
    values = {}
    for p in sorted(folder.iterdir()):
        with torch.no_grad():
            net.module(preprocessed(p, net.preprocess, 64)[None])
        values[p.name] = float(got["o"][0, 3].max())
    handle.remove()
    unit = report["layers"][layer]["channels"]["3"]
    best = sorted(values.items(), key=lambda kv: -kv[1])[:2]
    assert [rec["image"] for rec in unit] == [b[0] for b in best]
    assert [rec["value"] for rec in unit] == pytest.approx([b[1] for b in best], rel=1e-5)
    # each record's box: the receptive field of its position, which holds the support of that unit's gradient
    for rec in unit:
        x = preprocessed(folder / rec["image"], net.preprocess, 64)[None].requires_grad_(True)
        handle = dict(net.module.named_modules())[layer].register_forward_hook(lambda m, a, o: got.update(o=o))
        net.module(x)
        handle.remove()
        (g,) = torch.autograd.grad(got["o"][0, 3, rec["row"], rec["col"]], x)
        rows, cols = g.abs().sum((0, 1)).nonzero().unbind(1)
        top, bottom, left, right = rec["box"]
        assert (
            top <= int(rows.min()) and int(rows.max()) < bottom and left <= int(cols.min()) and int(cols.max()) < right
        )
        assert bottom - top <= FIELD[name] and right - left <= FIELD[name]
    r = run("site", "run", "--out", "site", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert (cwd / "site" / "index.html").is_file() and (cwd / "site" / layer / "unit-3.html").is_file()


def test_a_user_card_alone_is_enough_and_a_bad_one_is_refused_in_one_line(run, cwd, residual_factory, monkeypatch):
    from deconvviz.networks.architectures import parse

    cards = cwd / "cards"
    cards.mkdir()
    torch.save(parse(residual_factory).build().state_dict(), cards / "weights.pt")
    digest = hashlib.sha256((cards / "weights.pt").read_bytes()).hexdigest()
    text = (
        f'name = "mine"\narchitecture = "{residual_factory}"\nsummary = "my net"\nloader = "file"\n'
        'classifier = true\ncategories = "none"\nlicence = "mine"\n'
        f'[file]\nname = "weights.pt"\nsha256 = "{digest}"\n'
        '[preprocess]\nname = "mine"\nchannels = "RGB"\nscale = 1.0\nmean = [0.5, 0.5, 0.5]\nstd = [0.2, 0.2, 0.2]\n'
    )
    (cards / "mine.toml").write_text(text)
    monkeypatch.setenv("DECONVVIZ_MODELS", str(cards))
    r = run("models")
    assert r.exit_code == 0 and any(line.split()[:1] == ["mine"] for line in r.stdout.splitlines()), r.output
    r = run("visualize", "--weights", "mine", "--size", "64", "--top", "2", "-q", "--out", "v.png")
    assert r.exit_code == 0, r.output
    assert json.loads((cwd / "v.png.provenance.json").read_text())["weights"]["name"] == "mine"
    r = run("visualize", "--model", "resnet18", "--weights", "mine", "--out", "x.png")
    assert r.exit_code == 2 and "are for model" in r.output and r.output.count("\n") == 1
    for bad, message in (
        (text.replace(digest, "0" * 64), "has sha256"),
        (text.replace('licence = "mine"\n', ""), "has no field 'licence'"),
    ):
        (cards / "mine.toml").write_text(bad)
        r = run("visualize", "--weights", str(cards / "mine.toml"), "--size", "64", "--out", "x.png")
        assert r.exit_code == 2 and message in r.output and r.output.count("\n") == 1, r.output
    assert not (cwd / "x.png").exists() and not (cwd / "x.png.provenance.json").exists()
