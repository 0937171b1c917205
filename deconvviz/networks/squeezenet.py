"""SqueezeNet 1.1 as the NumPy package ndf 0.1.4 builds it (Keras layout), and a safe reader of its weights.

ndf ships the ImageNet SqueezeNet 1.1 weights (Iandola et al. 2016, via Keras) as a pickle of NumPy arrays and
builds the graph in `ndf/example_models/squeezenet.py`: conv1 3x3/2 with Keras "same" padding, 3x3/2 max-pools
without padding, eight fire modules (squeeze 1x1, then expand 1x1 and 3x3 concatenated), conv10 1x1 and an
average pool over the 13x13 map, without a ReLU after conv10. `SqueezeNet11Keras` is that graph in torch, with
ReLU and MaxPool2d modules and torch.cat, so that deconvviz's autograd path projects it (it is not a chain).
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import WeightsError

# (squeeze, expand 1x1, expand 3x3) filters of fire2 ... fire9, and where the 3x3/2 max-pools sit
SQUEEZE = (16, 16, 32, 32, 48, 48, 64, 64)  # each expand has 4x the squeeze's filters
FIRES = {i: (s, 4 * s, 4 * s) for i, s in enumerate(SQUEEZE, start=2)}
POOLS_BEFORE = (4, 6)  # maxpool3 before fire4, maxpool5 before fire6 (maxpool1 follows conv1)


class KerasSamePad2d(nn.Module):
    """Zero padding of Keras/TensorFlow "same": total max((ceil(n/s) - 1) s + k - n, 0), the odd pixel at the
    bottom/right. For conv1 (3x3/2) at 224 that is 0 before and 1 after: torch's symmetric padding differs."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for n in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dim first: left, right, top, bottom
            total = max((-(-n // self.stride) - 1) * self.stride + self.kernel_size - n, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Fire(nn.Module):
    """squeeze 1x1 + ReLU, then expand 1x1 + ReLU and expand 3x3 ("same") + ReLU, concatenated on channels."""

    def __init__(self, inputs: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze1x1, self.squeeze_relu = nn.Conv2d(inputs, squeeze, 1), nn.ReLU()
        self.expand1x1, self.expand1x1_relu = nn.Conv2d(squeeze, expand1x1, 1), nn.ReLU()
        self.expand3x3, self.expand3x3_relu = nn.Conv2d(squeeze, expand3x3, 3, padding=1), nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze_relu(self.squeeze1x1(x))
        return torch.cat([self.expand1x1_relu(self.expand1x1(s)), self.expand3x3_relu(self.expand3x3(s))], 1)


class SqueezeNet11Keras(nn.Module):
    """ndf's SqueezeNet 1.1: `features` (conv1 ... fire9, 512 maps at 13x13 for 224 input) and `classifier`
    (conv10, global average, flatten: 1000 logits). Module names are ndf's layer names. (N, 3, H, W) -> (N, 1000).

    ndf averages over a 13x13 window, which is the whole map at its 224x224 input; here the average is global
    for any input size, as in the SqueezeNet paper."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        conv1 = {"pad1": KerasSamePad2d(3, 2), "conv1": nn.Conv2d(3, 64, 3, stride=2), "relu1": nn.ReLU()}
        layers: OrderedDict[str, nn.Module] = OrderedDict(conv1, maxpool1=nn.MaxPool2d(3, 2))
        channels = 64
        for i, (squeeze, e1, e3) in FIRES.items():
            if i in POOLS_BEFORE:
                layers[f"maxpool{i - 1}"] = nn.MaxPool2d(3, 2)
            layers[f"fire{i}"] = Fire(channels, squeeze, e1, e3)
            channels = e1 + e3
        self.features = nn.Sequential(layers)
        self.classifier = nn.Sequential(
            OrderedDict(conv10=nn.Conv2d(channels, classes, 1), avgpool10=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def squeezenet1_1_keras() -> SqueezeNet11Keras:
    """The architecture alone, with torch's default initialization; weights come from the model card."""
    return SqueezeNet11Keras()


def keras_layer(key: str) -> tuple[str, int]:
    """The ndf weights entry and index (0 kernel, 1 bias) a state-dict key comes from:
    features.fire2.expand3x3.weight -> ("fire2/expand3x3", 0)."""
    *path, kind = key.split(".")
    name = "/".join(p for p in path if p not in ("features", "classifier"))
    return name, 0 if kind == "weight" else 1


def state_dict_from_keras(arrays: dict[str, list[np.ndarray]]) -> dict[str, Tensor]:
    """ndf's weights (name -> [kernel HWIO, bias]) as a state dict of SqueezeNet11Keras (kernels OIHW)."""
    expected = SqueezeNet11Keras().state_dict()
    state = {}
    for key, template in expected.items():
        name, index = keras_layer(key)
        entry = arrays.get(name)
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise WeightsError(f"the SqueezeNet weights have no kernel and bias for layer '{name}'")
        value = np.asarray(entry[index], dtype=np.float32)
        want = tuple(template.shape)
        if index == 0:  # Keras kernels are HWIO
            o, i, h, w = want
            want = (h, w, i, o)
        if value.shape != want:
            raise WeightsError(f"SqueezeNet layer '{name}' has shape {value.shape}, expected {want}")
        value = value.transpose(3, 2, 0, 1) if index == 0 else value  # HWIO -> OIHW (both cross-correlate)
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
    unused = sorted(set(arrays) - {keras_layer(k)[0] for k in expected})
    if unused:
        raise WeightsError(f"the SqueezeNet weights hold layers the graph does not have: {', '.join(unused)}")
    return state


# --- reading the pickle: only NumPy's array reconstruction may be named in it

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),  # NumPy 1.x names
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),  # NumPy 2.x names
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds NumPy arrays, lists, dicts, strings and numbers, and refuses any other global
    before it is imported or called (pickle runs a global only after find_class returns it)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            what = f"the weights pickle names {module}.{name}, which is not NumPy array data"
            raise WeightsError(f"{what}; refused (only numpy arrays are read)")
        module, name = _ALLOWED_GLOBALS[module, name]
        if module == "numpy._core.multiarray" and not hasattr(np, "_core"):
            module = "numpy.core.multiarray"  # NumPy 1.x
        return super().find_class(module, name)


def read_arrays_pickle(data: bytes) -> dict[str, list[np.ndarray]]:
    """A pickle of {name: [numpy arrays]} read without running anything else; numeric arrays only."""
    try:
        obj = _ArraysOnly(io.BytesIO(data)).load()
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle: one line for the user
        raise WeightsError(f"the weights pickle cannot be read ({type(e).__name__}: {e}); reinstall it") from None
    ok = isinstance(obj, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(a, np.ndarray) for a in v) for k, v in obj.items()
    )
    if not ok:
        raise WeightsError("the weights pickle does not hold {name: [numpy arrays]}; reinstall it")
    bad = sorted({str(a.dtype) for v in obj.values() for a in v if a.dtype.kind not in "fiu"})
    if bad:
        raise WeightsError(f"the weights pickle holds arrays of dtype {', '.join(bad)}, not numbers; refused")
    return obj
