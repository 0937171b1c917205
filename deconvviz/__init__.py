"""deconvviz: see what a convolutional network has learned, the Zeiler-Fergus way."""

__version__ = "0.1.0"

from .engine.boxes import Box, Point  # noqa: E402
from .engine.deconvnet import Deconvnet, Projection  # noqa: E402
from .engine.forward import Switches  # noqa: E402
from .engine.request import Request  # noqa: E402
from .engine.reverse import Stage  # noqa: E402
from .engine.rules import RULES, Rule  # noqa: E402
from .engine.selection import Selection  # noqa: E402
from .errors import (  # noqa: E402
    DeconvvizError,
    ImageError,
    LayerError,
    OcclusionError,
    SelectionError,
    UnsupportedModelError,
    WeightsError,
)
from .images import DEFAULT_IMAGE, load_image, to_batch, to_display  # noqa: E402
from .networks.network import Network, load_network  # noqa: E402
from .networks.weights import Weights, load_vgg  # noqa: E402

__all__ = [
    "DEFAULT_IMAGE",
    "RULES",
    "Box",
    "Deconvnet",
    "DeconvvizError",
    "ImageError",
    "LayerError",
    "Network",
    "OcclusionError",
    "Point",
    "Projection",
    "Request",
    "Rule",
    "Selection",
    "SelectionError",
    "Stage",
    "Switches",
    "UnsupportedModelError",
    "Weights",
    "WeightsError",
    "__version__",
    "load_image",
    "load_network",
    "load_vgg",
    "to_batch",
    "to_display",
]
