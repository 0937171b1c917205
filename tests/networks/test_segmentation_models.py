"""torchvision's segmentation models by spec: built offline with random weights (no backbone download), their
own weights refused in one line offline, and every one projected under every rule, equal to the hand oracle."""

from __future__ import annotations

import pytest
import torch
import torchvision
from oracle import autograd_projection, hand_twin, rel_err

from deconvviz import RULES, Deconvnet, load_network
from deconvviz.errors import WeightsError
from deconvviz.networks.architectures import parse, segmentation_names

FAST = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
SLOW = ["fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101"]  # the same blocks as the fast ones, deeper


def test_every_torchvision_segmentation_model_has_a_spec():
    assert set(segmentation_names()) == {*FAST, *SLOW}
    for name in segmentation_names():
        assert parse(f"torchvision:{name}").spec == f"torchvision:{name}" and parse(name).kind == "torchvision"


@pytest.mark.parametrize("name", [*FAST, *(pytest.param(n, marks=pytest.mark.slow) for n in SLOW)])
def test_each_projects_a_class_over_pixels_under_every_rule_as_the_hand_oracle(name):
    net = load_network(f"torchvision:{name}", "random", "cpu", verbose=False)
    assert net.categories is None
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        result = net.module(x)
    assert set(result) == ({"out"} if name.startswith("lraspp") else {"out", "aux"})
    assert result["out"].shape == (1, 21, 32, 32)  # the 21 VOC classes, at the input's size
    for rule in RULES:
        out = Deconvnet(net.module, rule=rule).project(x, "classifier", cls=2, top=2)
        assert out.score.output == "out" and out.score.counts == (32 * 32,)
        sel = out.selections
        twin = net.module if rule == "gradient" else hand_twin(net.module, rule)
        want = autograd_projection(twin, "classifier", x, sel.channels, sel.positions, seed_model=net.module)
        assert want.abs().max() > 0, "degenerate test: the oracle projected nothing"
        assert rel_err(out.images, want) <= 1e-4, (name, rule)


def test_their_own_weights_name_the_voc_classes_and_are_refused_offline_in_one_line(monkeypatch):
    enum = torchvision.models.get_model_weights("fcn_resnet50").DEFAULT
    assert len(enum.meta["categories"]) == 21 and enum.meta["categories"][2] == "bicycle"

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"cannot load torchvision's FCN_ResNet50_Weights.COCO_WITH_VOC") as e:
        load_network("torchvision:fcn_resnet50", "torchvision", "cpu", verbose=False)
    assert "\n" not in str(e.value)
