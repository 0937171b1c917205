"""Class scores of results that are not one (N, K) tensor: a dict, a tuple, a dense map, an object with logits; the
maps chosen for a class checked against gradient x activation from plain autograd on the (masked) summed logits."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from deconvviz import Box, Deconvnet
from deconvviz.analysis.occlusion import occlusion_maps
from deconvviz.engine.layers import meta_forward
from deconvviz.engine.scores import ClassScore, scored_part
from deconvviz.engine.targets import class_contributions
from deconvviz.errors import DeconvvizError, SelectionError


class _Logits(OrderedDict):
    """A Hugging Face ModelOutput in miniature: a dict whose fields are attributes too."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Seg(nn.Module):
    """A small encoder-decoder: conv, ReLU, pool (16 -> 8), conv, then class maps at 8x8 (`head`) upsampled to the
    input (`up`); `returns` says how the result is wrapped."""

    def __init__(self, returns: str = "tensor", classes: int = 4, upsample: bool = True):
        super().__init__()
        self.returns, self.upsample = returns, upsample
        self.conv1, self.relu1, self.pool = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        self.head, self.aux = nn.Conv2d(8, classes, 1), nn.Conv2d(6, classes, 1)

    def features(self, x):
        low = self.pool(self.relu1(self.conv1(x)))
        return low, self.relu2(self.conv2(low))

    def forward(self, x):
        low, high = self.features(x)
        out = self.head(high)
        out = nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear") if self.upsample else out
        aux = self.aux(low)
        if self.returns == "dict":
            return {"out": out, "aux": aux}
        if self.returns == "tuple":
            return out, aux
        if self.returns == "logits":
            return _Logits(loss=None, logits=out)
        return out


def _seg(returns="tensor", seed=0, **kw) -> Seg:
    torch.manual_seed(seed)
    return Seg(returns, **kw).eval()


def _by_hand(model: Seg, x, cls: int, mask=None, part=lambda r: r["out"]):
    """Gradient x activation of relu2's maps for class `cls` summed over the pixels `mask` keeps: (N, 8)."""
    low, high = model.features(x)
    high = high.detach().requires_grad_(True)
    out = model.head(high)
    out = nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear") if model.upsample else out
    logits = part({"out": out, "aux": model.aux(low)})
    score = logits[:, cls] if mask is None else logits[:, cls] * mask
    (g,) = torch.autograd.grad(score.sum(), high)
    return (g * high).detach().sum((2, 3))


def _ranked(contributions):
    """Channels by contribution, largest first (ties: the lower channel), without the maps that contribute exactly
    nothing (one image: those are no choice)."""
    ranked = contributions.double().sort(dim=1, descending=True, stable=True).indices
    return ranked[:, contributions.gather(1, ranked)[0] != 0]


@pytest.mark.parametrize("returns", ["tensor", "dict", "tuple", "logits"])
def test_a_class_of_a_dense_output_is_summed_over_all_pixels(returns):
    model, x = _seg(returns), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for cls in (0, 3):
        want = _by_hand(model, x, cls, part=lambda r: r["out"])
        torch.testing.assert_close(class_contributions(model, x, "relu2", cls=cls), want, rtol=1e-5, atol=1e-6)
        out = Deconvnet(model).project(x, "relu2", cls=cls, top=3)
        assert torch.equal(out.selections.channels, _ranked(want)[:, :3])
        assert out.score.kind == "map" and out.score.pixels == "all" and out.score.counts == (256, 256)
        assert out.score.output == {"tensor": None, "dict": "out", "tuple": 0, "logits": "logits"}[returns]
    assert all(not m._forward_hooks for m in model.modules())


def test_aux_of_a_dict_and_the_second_of_a_tuple_on_request():
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for returns, key in (("dict", "aux"), ("tuple", 1)):
        model = _seg(returns)
        low = model.pool(model.relu1(model.conv1(x))).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.aux(low)[:, 2].sum(), low)
        want = (g * low).detach().sum((2, 3))
        torch.testing.assert_close(class_contributions(model, x, "pool", cls=ClassScore(2, output=key)), want)
        assert Deconvnet(model).project(x, "pool", cls=2, output=key, top=2).score.output == key
        with pytest.raises(SelectionError, match="does not depend on layer 'relu2'"):
            Deconvnet(model).project(x, "relu2", cls=2, output=key)


def test_a_target_box_keeps_the_output_pixels_whose_centres_lie_inside():
    """On an 8x8 output of a 16x16 input each output pixel covers 2x2 input pixels; its centre is at 2i + 1."""
    model, x = _seg("dict", upsample=False), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    box = Box.pixels(3, 0, 9, 5)  # centres x in {3, 5, 7}, y in {1, 3}: columns 1..3, rows 0..1
    mask = torch.zeros(8, 8)
    mask[0:2, 1:4] = 1
    want = _by_hand(model, x, 1, mask, part=lambda r: r["out"])
    out = Deconvnet(model).project(x, "relu2", cls=1, target=box, top=8)
    assert out.score.counts == (6,) and out.score.grid == (8, 8)
    torch.testing.assert_close(
        class_contributions(model, x, "relu2", cls=ClassScore(1, target=box)), want, rtol=1e-5, atol=1e-6
    )
    assert torch.equal(out.selections.channels, _ranked(want))
    fractions = Box.fractions(3 / 16, 0, 9 / 16, 5 / 16)
    assert Deconvnet(model).project(x, "relu2", cls=1, target=fractions, top=8).score.counts == (6,)


def test_predicted_pixels_are_where_the_class_wins_and_combine_with_a_box():
    model, x = _seg("tensor"), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        wins = model(x).argmax(1)[0]
    cls = int(wins.flatten().mode().values)  # a class that wins somewhere
    box = Box.pixels(0, 0, 8, 16)  # the left half
    for target in (None, box):
        mask = (wins == cls).float()
        if target is not None:
            mask[:, 8:] = 0
        if not mask.any():
            continue
        want = _by_hand(model, x, cls, mask, part=lambda r: r["out"])
        score = ClassScore(cls, pixels="predicted", target=target)
        torch.testing.assert_close(class_contributions(model, x, "relu2", cls=score), want, rtol=1e-5, atol=1e-6)
        out = Deconvnet(model).project(x, "relu2", cls=cls, pixels="predicted", target=target, top=2)
        assert out.score.counts == (int(mask.sum()),)
        assert "where it is predicted" in out.score.words()


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(output="logits"), r"output 'logits' is not in the model's result; valid: out, aux"),
        (dict(output=3), r"output 3 is not in the model's result; valid: out, aux"),
        (dict(cls=4), r"class 4 is out of range for a map of class scores with 4 classes \(output 'out'\); use 0\.\.3"),
        (dict(pixels="argmax"), r"pixels must be 'all' or 'predicted'"),
        (dict(target=(0, 0, 4, 4)), r"target must be a Box"),
        (dict(target=Box.pixels(0, 0, 0.5, 0.5)), r"target 0,0,0.5,0.5 holds no pixel centre of the 16x16 output"),
    ],
)
def test_wrong_parts_classes_and_pixels_are_refused_in_one_line(kw, message):
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(SelectionError, match=message) as e:
        Deconvnet(_seg("dict")).project(x, "relu2", **({"cls": 1} | kw))
    assert "\n" not in str(e.value)


def test_results_without_a_part_to_score_are_refused_naming_the_keys():
    with pytest.raises(SelectionError, match=r"a dict without 'out' \(keys: a, b\); choose the scored part"):
        scored_part({"a": torch.zeros(1), "b": torch.zeros(1)})
    logits = torch.zeros(1, 3)
    assert scored_part(SimpleNamespace(logits=logits, hidden=None))[0] is logits  # an object, not a dict
    assert scored_part(_Logits(loss=torch.zeros(()), logits=logits)) == (logits, "logits")  # logits before a dict
    assert scored_part((logits, None)) == (logits, 0) and scored_part([None, logits], "1") == (logits, 1)
    with pytest.raises(SelectionError, match=r"valid: 0\.\.1"):
        scored_part((torch.zeros(1), torch.zeros(1)), 2)
    with pytest.raises(SelectionError, match="returns a tensor; leave output out"):
        scored_part(torch.zeros(1), "out")
    with pytest.raises(SelectionError, match=r"class scores \(N, classes\) or a map of them .* is \(1, 4, 2\)"):
        ClassScore(0).logits(torch.zeros(1, 4, 2))
    with pytest.raises(SelectionError, match="pixels and target choose pixels of a map"):
        ClassScore(0, pixels="predicted").logits(torch.zeros(1, 4))
    with pytest.raises(SelectionError, match="give cls too"):
        Deconvnet(_seg("dict")).project(torch.randn(1, 3, 16, 16), "relu2", output="aux")


def test_predicted_with_no_winning_pixel_is_refused():
    model = _seg("tensor")
    with torch.no_grad():
        model.head.bias[:] = torch.tensor([100.0, 0, 0, 0])  # class 0 wins everywhere
    with pytest.raises(SelectionError, match=r"class 2 wins at no pixel of the output \(image 0\); use pixels='all'"):
        Deconvnet(model).project(torch.randn(1, 3, 16, 16), "relu2", cls=2, pixels="predicted")


def scored_shape(model, size, output=None):
    """The per-image shape of the scored part, on the meta device (what the CLI checks before any weights)."""
    return tuple(scored_part(meta_forward(model, size)[0], output)[0].shape[1:])


def test_the_scored_part_is_read_on_the_architecture_alone():
    model = _seg("dict")
    assert scored_shape(model, (16, 16)) == (4, 16, 16)
    assert scored_shape(model, (16, 16), "aux") == (4, 8, 8)
    assert scored_shape(_seg("logits"), (32, 32)) == (4, 32, 32)
    with pytest.raises(SelectionError, match="valid: out, aux"):
        scored_shape(model, (16, 16), "x")
    assert not any(p.is_meta for p in model.parameters()) and not model.training  # the model left as it was


def test_occlusion_of_a_dense_output_averages_the_class_probability_over_the_scored_pixels():
    model, x = _seg("dict"), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    box = Box.pixels(0, 0, 8, 8)
    res = occlusion_maps(model, x, "relu2", channel=1, size=6, stride=5, cls=2, target=box)
    assert res.score.counts == (64,) and res.probability.shape == (len(res.rows), len(res.cols))
    for (i, r), (j, c) in itertools.product(enumerate(res.rows), enumerate(res.cols)):
        xo = x.clone()
        xo[0, :, r : r + 6, c : c + 6] = 0
        with torch.no_grad():
            p = model(xo)["out"].softmax(1)[0, 2, :8, :8].mean()
        torch.testing.assert_close(res.probability[i, j], p, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.tensor(res.baseline_probability), model(x)["out"].softmax(1)[0, 2, :8, :8].mean()
        )
    with pytest.raises(DeconvvizError, match="give cls too"):
        occlusion_maps(model, x, "relu2", channel=1, pixels="predicted")


def test_at_a_segmentation_head_only_the_classs_own_map_is_chosen():
    """At the (N, K, H, W) scores themselves, class k's score is the sum of map k: every other map contributes
    exactly 0, so it is no choice; top=K gives map k alone, never maps picked among zeros."""
    model, x = _seg("tensor", upsample=False), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    out = Deconvnet(model).project(x, "head", cls=2, top=4)
    assert out.selections.channels.tolist() == [[2]]
