"""How an activation passes the signal backward: the one step in which a deconvnet, guided backprop and the
gradient differ.

Every other reverse step (unpool with the switches, filter with the transposed filters) is the same linear
adjoint for all of them. With f the activation, x its input, s the signal arriving from above and f'(x) its slope:

    activation                                  deconvnet    guided              gradient
    ReLU                                        max(s, 0)    max(s, 0) [x > 0]   s [x > 0]
    ReLU6, Hardtanh, LeakyReLU, PReLU           max(s, 0)    max(s, 0) f'(x)     s f'(x)
    ELU, CELU, SELU, GELU (none, tanh), SiLU,   max(s, 0)    max(s, 0) f'(x)     s f'(x)
    Hardswish, Mish, Softplus, QuickGELU (x sigmoid(1.702 x)), x sigmoid(beta x), Tanh, Sigmoid,
    Hardsigmoid, LogSigmoid, Softsign, Tanhshrink, Softshrink, Hardshrink

The fourth, `linear` (Mahendran & Vedaldi's fourth combination), passes s unchanged at every activation: no
rectification, no forward mask.

deconvnet is Zeiler & Fergus's rectification (the forward pass plays no part), guided is Springenberg et al.'s,
which equals zennit's ReLUGuidedBackprop mapped onto f, and gradient is the exact gradient (Simonyan et al.).
A rule is one small class; the chain path, the receptive-field window path and the autograd path all call
`backward`, and the forward pass records the slope only for rules that ask for it: booleans (where the ReLU let
its input through) at piecewise-linear activations, f'(x) as floats only at smooth ones.

Products with a sigmoid-like gate from another branch (squeeze-and-excitation), LayerNorm/GroupNorm and attention
have no rule of their own: deconvnet, guided and linear follow the named conventions of rectified.py
(`CONVENTIONS`; attention in attention.py), the gradient rule is exact there too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor

from ..errors import SelectionError, unknown_name


class Rule(ABC):
    """A backward rule for activations. needs_slope: f'(x) at the activation's input must be recorded;
    exact: the rule is the plain gradient, so gates and normalizations need no convention."""

    name: ClassVar[str]
    needs_slope: ClassVar[bool]
    title: ClassVar[str]  # for figures
    exact: ClassVar[bool] = False

    @abstractmethod
    def backward(self, signal: Tensor, slope: Tensor | None) -> Tensor:
        """The signal arriving at an activation's output, passed to its input. slope: f'(x), same shape (bool
        at a ReLU, float at smooth activations), or None when the rule does not need it."""

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


class DeconvnetRule(Rule):
    """Zeiler & Fergus: rectify the reconstruction; the forward pass plays no part."""

    name, needs_slope, title = "deconvnet", False, "deconvnet"

    def backward(self, signal: Tensor, slope: Tensor | None) -> Tensor:
        return signal.clamp_min(0)


class GuidedRule(Rule):
    """Springenberg et al.: rectify the signal and weigh it by the forward slope (at a ReLU: keep it where active)."""

    name, needs_slope, title = "guided", True, "guided backprop"

    def backward(self, signal: Tensor, slope: Tensor | None) -> Tensor:
        return signal.clamp_min(0).mul_(slope)


class GradientRule(Rule):
    """Simonyan et al.: the unit's plain gradient."""

    name, needs_slope, title, exact = "gradient", True, "gradient", True

    def backward(self, signal: Tensor, slope: Tensor | None) -> Tensor:
        return signal * slope


class LinearRule(Rule):
    """Mahendran & Vedaldi's fourth combination: no rectification, no forward mask; the ReLU passes all."""

    name, needs_slope, title = "linear", False, "linear"

    def backward(self, signal: Tensor, slope: Tensor | None) -> Tensor:
        return signal


RULES: dict[str, Rule] = {r.name: r for r in (DeconvnetRule(), GuidedRule(), GradientRule(), LinearRule())}


def get_rule(rule: str | Rule) -> Rule:
    """A rule by name (deconvnet, guided, gradient, linear), or the Rule itself; an unknown name is a SelectionError."""
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str) and rule in RULES:
        return RULES[rule]
    raise SelectionError(unknown_name("rule", str(rule), list(RULES), fix="; e.g. rule='guided'"), about="rule")
