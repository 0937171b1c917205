"""Seeds batched by vmap (engine._batched): torch's note about a missing batching rule is silenced there, the
numbers are those of one backward per seed, and every other warning still reaches the caller."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

from deconvviz import Deconvnet
from deconvviz.engine._batched import over_seeds


def test_seeds_through_cpu_attention_match_a_loop_and_raise_no_warning():
    """The CPU flash attention's backward has no batching rule: vmap loops itself and torch warns; over_seeds
    gives each seed's own gradient (checked against a plain loop) with warnings as errors."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g, requires_grad=True) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v)
    seeds = torch.randn(3, *out.shape, generator=g)

    def grads(seed):
        return torch.autograd.grad(out, (q, v), seed, retain_graph=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batched = over_seeds(grads, seeds)
    for i, seed in enumerate(seeds):
        for got, expected in zip(batched, grads(seed), strict=True):
            torch.testing.assert_close(got[i], expected)


def test_other_warnings_still_reach_the_caller():
    def noisy(seed):
        warnings.warn("a note of the caller's own", UserWarning, stacklevel=1)
        return seed * 2

    with pytest.warns(UserWarning, match="a note of the caller's own"):
        over_seeds(noisy, torch.ones(2, 3))


def test_a_vit_projects_under_the_gradient_rule_with_no_warning():
    """The API call that showed torch's note (a ViT's block, rule gradient) raises none with warnings as errors."""
    vit = torchvision.models.VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = Deconvnet(vit, rule="gradient").project(x, "encoder.layers.encoder_layer_1", top=2)
    assert out.images.shape == (1, 2, 3, 32, 32) and out.images.abs().sum() > 0
