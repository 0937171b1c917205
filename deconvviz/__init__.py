"""deconvviz: see what a convolutional network has learned, the Zeiler-Fergus way."""

__version__ = "0.1.0"

from .boxes import Box, Point  # noqa: E402
from .deconvnet import Deconvnet, Projection  # noqa: E402
from .errors import (  # noqa: E402
    DeconvvizError,
    ImageError,
    LayerError,
    OcclusionError,
    SelectionError,
    UnsupportedModelError,
    WeightsError,
)
from .forward import Switches  # noqa: E402
from .images import DEFAULT_IMAGE, load_image, to_batch, to_display  # noqa: E402
from .network import Network, load_network  # noqa: E402
from .request import Request  # noqa: E402
from .reverse import Stage  # noqa: E402
from .rules import RULES, Rule  # noqa: E402
from .selection import Selection  # noqa: E402
from .weights import Weights, load_vgg  # noqa: E402

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
