"""The engine, torch only: a forward pass that records switches, the choice of what to project, and the reverse
pass (unpool, rectify, filter) back to the input.

Modules, in the order a projection meets them: `layers` (a model's steps and names), `model` (a model resolved
once into a `ModelView`, handed down to the rest), `forward` (the forward pass
and its switches), `selection`, `boxes` and `targets` (which activations), `scores` (how a model's result becomes a
class score: the part scored, a class of a vector or over a map's pixels), `rules` (how an activation passes the
signal back), `reverse` (the reverse pass of a chain), `rectified` (the autograd path for any network), `fields`
(receptive fields), `_paths` (a chain or autograd, forward and back), `_strategies` (the seeds back on the whole
plane or on windows), `deconvnet` (the `Deconvnet` that chooses among them), `request` (one command's choices).
Public: the names below; the rest is used by the other subpackages and the tests.
"""

from .boxes import Box, Point
from .deconvnet import Deconvnet, Projection
from .fields import receptive_field
from .forward import Switches
from .model import ModelView
from .request import Request
from .reverse import UNPOOLS, Stage
from .rules import RULES, Rule
from .selection import Selection

__all__ = [
    "RULES",
    "UNPOOLS",
    "Box",
    "Deconvnet",
    "ModelView",
    "Point",
    "Projection",
    "Request",
    "Rule",
    "Selection",
    "Stage",
    "Switches",
    "receptive_field",
]
