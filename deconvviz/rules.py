"""How a ReLU passes the signal backward: the one step in which a deconvnet, guided backprop and the gradient differ.

Every other reverse step (unpool, filter with the transposed filters) is the same for all of them (and for
`linear`, which passes the signal unchanged). A rule is one small class; the chain path, the receptive-field window
path and the autograd path all call `relu_backward`, and the forward pass records the ReLU masks
(booleans, where the forward ReLU let its input through) only for rules that ask for them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor

from .errors import SelectionError, unknown_name


class Rule(ABC):
    """A backward rule for ReLUs. needs_mask: the forward mask (input > 0) must be recorded."""

    name: ClassVar[str]
    needs_mask: ClassVar[bool]
    title: ClassVar[str]  # for figures

    @abstractmethod
    def relu_backward(self, signal: Tensor, mask: Tensor | None) -> Tensor:
        """The signal arriving at a ReLU's output, passed to its input. mask: bool, same shape, or None."""

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


class DeconvnetRule(Rule):
    """Zeiler & Fergus: rectify the reconstruction; the forward pass plays no part."""

    name, needs_mask, title = "deconvnet", False, "deconvnet"

    def relu_backward(self, signal: Tensor, mask: Tensor | None) -> Tensor:
        return signal.clamp_min(0)


class GuidedRule(Rule):
    """Springenberg et al.: rectify the signal and keep it only where the forward ReLU was active."""

    name, needs_mask, title = "guided", True, "guided backprop"

    def relu_backward(self, signal: Tensor, mask: Tensor | None) -> Tensor:
        return signal.clamp_min(0).mul_(mask)


class GradientRule(Rule):
    """Simonyan et al.: the unit's plain gradient; the forward mask only."""

    name, needs_mask, title = "gradient", True, "gradient"

    def relu_backward(self, signal: Tensor, mask: Tensor | None) -> Tensor:
        return signal * mask


class LinearRule(Rule):
    """Mahendran & Vedaldi's fourth combination: no rectification, no forward mask; the ReLU passes all."""

    name, needs_mask, title = "linear", False, "linear"

    def relu_backward(self, signal: Tensor, mask: Tensor | None) -> Tensor:
        return signal


RULES: dict[str, Rule] = {r.name: r for r in (DeconvnetRule(), GuidedRule(), GradientRule(), LinearRule())}


def get_rule(rule: str | Rule) -> Rule:
    """A rule by name (deconvnet, guided, gradient, linear), or the Rule itself; an unknown name is a SelectionError."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str) and rule in RULES:
        return RULES[rule]
    raise SelectionError(unknown_name("rule", str(rule), list(RULES), "; e.g. --rule guided"))
