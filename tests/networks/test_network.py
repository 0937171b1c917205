"""load_network: any architecture with random, state-dict and card weights, resolved once into a Network."""

import hashlib

import pytest
import torch
import torchvision

from deconvviz.errors import WeightsError
from deconvviz.networks.network import load_network, skeleton_network


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def test_random_weights_are_the_builders_own_init_seeded_and_leave_the_rng_alone():
    state = torch.random.get_rng_state()
    net = load_network("resnet18", "random", "cpu", seed=3, verbose=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(3)
    assert same(net.module, torchvision.models.resnet18())  # independent: torchvision's init under that seed
    assert net.spec == "torchvision:resnet18" and not net.module.training
    assert net.record() == {"spec": "torchvision:resnet18", "weights": "random", "seed": 3}
    assert net.categories is None and net.classifier  # fc gives class scores; random weights name no classes


def test_default_layers_are_the_last_convolutional_block():
    # worked out by hand from torchvision's modules: the last stage, the last dense block, the last fire module
    assert skeleton_network("resnet18", "random").__class__.__name__ == "ResNet"
    for spec, layer in [
        ("resnet18", "layer4"),
        ("densenet121", "features.denseblock4"),
        ("squeezenet1_1", "features.12"),
        ("vgg16", "conv5_3"),
    ]:
        net = load_network(spec, "random", "cpu", verbose=False)
        assert net.default_layer == layer, spec
        assert layer in net.layer_names


def test_a_state_dict_loads_into_any_architecture(tmp_path):
    torch.manual_seed(5)
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), tmp_path / "mine.pth")
    net = load_network("torchvision:resnet18", tmp_path / "mine.pth", "cpu", verbose=False)
    assert (
        same(net.module, model)
        and net.weights.sha256 == hashlib.sha256((tmp_path / "mine.pth").read_bytes()).hexdigest()
    )
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightsError, match=r"does not fit torchvision:resnet18: fc.weight has shape \(3, 3\)"):
        load_network("resnet18", tmp_path / "wrong.pth", "cpu", verbose=False)


def test_a_factory_builds_the_users_network(residual_factory):
    net = load_network(residual_factory, "auto", "cpu", verbose=False)
    assert type(net.module).__name__ == "Small" and net.default_layer == "block2" and net.classifier
    assert net.weights.name == "built"  # auto: as the factory builds it


CARD = """
name = "{name}"
architecture = "{arch}"
summary = "my small residual network"
loader = "file"
classifier = true
categories = {categories}
licence = "mine"

[file]
name = "weights.pt"
sha256 = "{sha}"

[preprocess]
name = "mine (RGB, 0-1, mean/std)"
channels = "RGB"
scale = 1.0
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
"""


def user_card(folder, arch, categories='["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]', sha=None, name="mine"):
    """A user's card beside a state dict of `arch` (seed 7); returns (card path, the module saved)."""
    from deconvviz.networks.architectures import parse

    folder.mkdir(exist_ok=True)
    torch.manual_seed(7)
    model = parse(arch).build()
    torch.save(model.state_dict(), folder / "weights.pt")
    digest = sha or hashlib.sha256((folder / "weights.pt").read_bytes()).hexdigest()
    card = folder / f"{name}.toml"
    card.write_text(CARD.format(name=name, arch=arch, categories=categories, sha=digest))
    return card, model


def test_a_user_card_names_its_architecture_weights_and_preprocessing(tmp_path, residual_factory, monkeypatch):
    card, model = user_card(tmp_path / "cards", residual_factory)
    net = load_network(None, card, "cpu", verbose=False)  # the card names the architecture
    assert same(net.module, model) and net.spec == residual_factory
    assert net.categories == tuple("abcdefghij") and net.preprocess.mean == (0.5, 0.5, 0.5)
    monkeypatch.setenv("DECONVVIZ_MODELS", str(tmp_path / "cards"))
    assert same(load_network(None, "mine", "cpu", verbose=False).module, model)  # found by name
    with pytest.raises(WeightsError, match="weights 'mine' are for model .*, not 'torchvision:resnet18'"):
        load_network("resnet18", "mine", "cpu", verbose=False)


def test_categories_from_a_file_beside_the_card(tmp_path, residual_factory):
    card, _ = user_card(tmp_path / "cards", residual_factory, categories='{ file = "classes.txt" }')
    (tmp_path / "cards" / "classes.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    assert load_network(None, card, "cpu", verbose=False).categories[9] == "class 9"


@pytest.mark.parametrize(
    "edit, message",
    [
        ("sha", "weights.pt has sha256 "),
        ('licence = "mine"\n', "has no field 'licence'"),
        ("categories", "categories must be a category set's name, a list of names"),
    ],
)
def test_a_bad_user_card_is_refused_in_one_line(tmp_path, residual_factory, edit, message):
    card, _ = user_card(
        tmp_path / "cards",
        residual_factory,
        **({"sha": "0" * 64} if edit == "sha" else {}),
        **({"categories": "[1, 2]"} if edit == "categories" else {}),
    )
    if edit not in ("sha", "categories"):
        card.write_text(card.read_text().replace(edit, ""))
    with pytest.raises(WeightsError) as error:
        load_network(None, card, "cpu", verbose=False)
    assert message in str(error.value) and "\n" not in str(error.value)


VISION_TRANSFORMERS = [
    n for n in torchvision.models.list_models(module=torchvision.models) if n.startswith(("vit_", "swin_"))
]


@pytest.mark.parametrize("name", VISION_TRANSFORMERS)
def test_weights_torchvision_reach_torchvision_s_download_for_every_vit_and_swin(name, monkeypatch):
    """No ViT or Swin weights load offline here, so the download itself is replaced by one that fails, saying
    which file it was asked for: each model's DEFAULT weights are asked for, and the failure is one WeightsError
    line (with a network, torchvision downloads them). Built on the meta device: no memory, no init."""
    asked = []

    def offline(self, *args, **kwargs):
        asked.append(self.url)
        raise ConnectionError(f"offline: {self.url}")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    default = torchvision.models.get_model_weights(name).DEFAULT
    with torch.device("meta"), pytest.raises(WeightsError, match=rf"cannot load torchvision's {default}.*offline"):
        load_network(f"torchvision:{name}", "torchvision", "cpu", verbose=False)
    assert asked == [default.url]
