"""Experiments on a network, built on the engine: a folder scan for the strongest activations (`scan`), occlusion
maps (`occlusion`), invariance to shifts, scales and rotations (`invariance`), the sanity checks with randomized
weights (`sanity`), the ablation of the deconvnet's parts (`ablation`), the first layer's filters (`filters`) and an
encoder-decoder's own stages for a class (`decoder`).
"""

from .ablation import ablation_report
from .decoder import decoder_activations
from .filters import first_layer_filters
from .invariance import invariance
from .occlusion import occlusion_maps
from .sanity import sanity_report
from .scan import load_result, scan_folder

__all__ = [
    "ablation_report",
    "decoder_activations",
    "first_layer_filters",
    "invariance",
    "load_result",
    "occlusion_maps",
    "sanity_report",
    "scan_folder",
]
