"""The test oracle: captum's NeuronDeconvolution (NeuronGuidedBackprop, NeuronGradient for the other rules),
seeded with the selected activation values."""

from __future__ import annotations

import warnings

import torch
from captum.attr import NeuronDeconvolution, NeuronGradient, NeuronGuidedBackprop
from torch import Tensor, nn


def layer_activation(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's output for x, read with a plain forward hook (independent of deconvviz)."""
    got = []
    h = layer.register_forward_hook(lambda m, i, o: got.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        h.remove()
    return got[0]


CAPTUM = {"deconvnet": NeuronDeconvolution, "guided": NeuronGuidedBackprop, "gradient": NeuronGradient}


def oracle(
    model: nn.Module, layer: nn.Module, x: Tensor, channels: Tensor, positions: Tensor | None, rule: str = "deconvnet"
) -> Tensor:
    """captum's projection (by rule) for each image n and selection k. channels (N, K); positions (N, K)
    flat spatial index (mode max) or None (mode map, whole feature map). Returns (N, K, C, H, W)."""
    act = layer_activation(model, layer, x)
    n, k = channels.shape
    seed = torch.zeros(n * k, *act.shape[1:])
    flat, src = seed.view(n * k, act.shape[1], -1), act.reshape(n, act.shape[1], -1)
    for i in range(n):
        for j in range(k):
            c = channels[i, j]
            if positions is None:
                flat[i * k + j, c] = src[i, c]
            else:
                p = positions[i, j]
                assert src[i, c, p] == src[i, c].max()  # the selection is the map's strongest activation
                flat[i * k + j, c, p] = src[i, c, p]
    xs = x.repeat_interleave(k, dim=0).clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = CAPTUM[rule](model, layer)
        out = method.attribute(xs, neuron_selector=lambda o: (o * seed).flatten(1).sum(1))
    return out.detach().unflatten(0, (n, k))


def rel_err(got: Tensor, want: Tensor) -> float:
    """Max absolute error relative to the largest magnitude of the reference."""
    scale = want.abs().max().clamp_min(1e-30)
    return float((got - want).abs().max() / scale)
