"""deconvviz: see what a convolutional network has learned, the Zeiler-Fergus way."""

from .deconvnet import Deconvnet, Projection
from .errors import (
    DeconvvizError,
    ImageError,
    LayerError,
    OcclusionError,
    SelectionError,
    UnsupportedModelError,
    WeightsError,
)
from .forward import Switches
from .reverse import Stage
from .selection import Selection

__version__ = "0.1.0"

__all__ = [
    "Deconvnet", "DeconvvizError", "ImageError", "LayerError", "OcclusionError", "Projection", "Selection",
    "SelectionError", "Stage", "Switches", "UnsupportedModelError", "WeightsError", "__version__",
]  # fmt: skip
