"""Which network, which weights, which preprocessing: a spec (`vgg16`, `module:attr`) and a weights name become one
`Network` (`network`), read from the model cards in models/ (`cards`) through their loaders (`weights`);
`architectures` knows the network families by name. `squeezenet` is the Keras SqueezeNet 1.1 loader's machinery.
"""

from .network import Network, load_network
from .weights import Weights, load_vgg

__all__ = ["Network", "Weights", "load_network", "load_vgg"]
