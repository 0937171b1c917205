"""Vision transformers under every rule, against the hand-written oracle of tests/transformer_oracle.py: torchvision's
ViT (B/16, B/32), Swin, Swin V2 and MaxViT, timm's DeiT and ViT (fused attention on and off, LayerScale, DropPath);
random weights, small inputs, double precision. Seeds are built on the raw layer output here (one position, a
whole map, a prefix token), so these tests do not depend on how a selection reads a token layout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import timm
import torch
import torchvision
from oracle import rel_err
from torch import nn
from transformer_oracle import (
    hand_projection,
    layer_of,
    transformer_twin,
)

from deconvviz.rectified import layer_output, project_autograd
from deconvviz.rules import RULES

CONVENTIONS_ATTENTION = "attention fixed"

ALL_RULES = ["deconvnet", "guided", "linear", "gradient"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def attentions() -> tuple[type, ...]:
    from timm.layers import Attention
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models.swin_transformer import ShiftedWindowAttention

    return nn.MultiheadAttention, Attention, ShiftedWindowAttention, RelativePositionalMultiHeadAttention


def sharpened(model: nn.Module, factor: float) -> nn.Module:
    """Query, key and value weights `factor` times larger: random weights give nearly uniform attention, where
    fixing its weights would change too little for a test to tell."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                m.in_proj_weight.mul_(factor)
            elif isinstance(m, attentions()):
                (m.to_qkv if hasattr(m, "to_qkv") else m.qkv).weight.mul_(factor)
    return model


def small_maxvit() -> nn.Module:
    """torchvision's MaxVit at 32 px: two blocks, each with MBConv, block (window) and grid attention."""
    from torchvision.models.maxvit import MaxVit

    return MaxVit(
        input_size=(32, 32),
        stem_channels=8,
        partition_size=2,
        block_channels=[8, 16],
        block_layers=[1, 1],
        head_dim=4,
        stochastic_depth_prob=0.2,
        num_classes=10,
    )


def first_blocks(model: nn.Module, n: int = 2) -> nn.Module:
    """Only the first n encoder blocks (the projected layer is one of them): the rest cannot change a projection."""
    if hasattr(model, "encoder"):
        model.encoder.layers = model.encoder.layers[:n]
    else:
        model.blocks = model.blocks[:n]
    return model


def timm_vit(name: str, *, fused: bool = True, **kwargs) -> nn.Module:
    model = first_blocks(timm.create_model(name, pretrained=False, img_size=64, **kwargs))
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused  # off: q @ k^T, softmax, @ v written out
    return model


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    layer: str
    side: int
    layout: str  # of the layer's output: "tokens" (N, P + H*W, C), "nhwc" or "nchw"
    prefix: int = 0  # class and distillation tokens before the patch tokens
    sharpen: float = 4.0


TV_VIT = "encoder.layers.encoder_layer_1"
CASES = {
    "vit_b_16": Case(lambda: first_blocks(torchvision.models.vit_b_16(image_size=64)), TV_VIT, 64, "tokens", 1),
    "vit_b_32": Case(lambda: first_blocks(torchvision.models.vit_b_32(image_size=64)), TV_VIT, 64, "tokens", 1),
    "swin_t": Case(torchvision.models.swin_t, "features.1", 64, "nhwc"),  # 16 x 16: padded windows of 7, shifted
    "swin_v2_t": Case(torchvision.models.swin_v2_t, "features.1", 64, "nhwc"),  # windows of 8, shifted by 4
    "maxvit": Case(small_maxvit, "blocks.1", 32, "nchw", sharpen=12.0),
    "deit_tiny": Case(lambda: timm_vit("deit_tiny_patch16_224"), "blocks.1", 64, "tokens", 1),
    "deit_tiny_unfused": Case(lambda: timm_vit("deit_tiny_patch16_224", fused=False), "blocks.1", 64, "tokens", 1),
    "deit_tiny_distilled": Case(lambda: timm_vit("deit_tiny_distilled_patch16_224"), "blocks.1", 64, "tokens", 2),
    "vit_small_layerscale_droppath": Case(
        lambda: timm_vit("vit_small_patch16_224", fused=False, init_values=0.5, drop_path_rate=0.3),
        "blocks.1",
        64,
        "tokens",
        1,
    ),
}


@pytest.fixture(scope="module")
def built():
    """name -> (model, input): random weights (seeded), attention sharpened, double precision, eval mode."""
    cache: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            case = CASES[name]
            x = torch.randn(1, 3, case.side, case.side, dtype=torch.double, generator=torch.Generator().manual_seed(1))
            cache[name] = sharpened(case.build(), case.sharpen).double().eval(), x
        return cache[name]

    return get


def seeds_of(act: torch.Tensor, case: Case) -> torch.Tensor:
    """(K, *act.shape) seeds on the raw output of one image: the strongest position of the strongest feature map c,
    the whole map c, and (with prefix tokens) the first token's entry c. A map is a channel over the patch grid."""
    act = act.detach()
    maps = {"tokens": lambda t: t[:, case.prefix :], "nhwc": lambda t: t, "nchw": lambda t: t.movedim(1, -1)}
    grid = maps[case.layout]  # a view of act with the channels last
    c = int(grid(act).flatten(0, -2).max(0).values.argmax())
    one, whole = torch.zeros_like(act), torch.zeros_like(act)
    at = grid(act)[..., c].argmax()
    grid(one)[..., c].view(-1)[at] = grid(act)[..., c].reshape(-1)[at]
    grid(whole)[..., c] = grid(act)[..., c]
    seeds = [one, whole]
    if case.prefix:
        token = torch.zeros_like(act)
        token[:, 0, c] = act[:, 0, c]
        seeds.append(token)
    return torch.stack(seeds)


def attention_paths(model: nn.Module, layer: str, x: torch.Tensor) -> set[str]:
    """The attention modules that run before the layer's output is made (plain forward hooks)."""
    ran: list[str] = []
    hook = [(n, m) for n, m in model.named_modules() if isinstance(m, attentions())]
    handles = [m.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, m in hook]
    try:
        with torch.no_grad():
            layer_of(model, layer, x)
    finally:
        for h in handles:
            h.remove()
    return set(ran)


@pytest.mark.parametrize("name", CASES)
def test_the_oracle_is_the_plain_gradient_when_nothing_is_fixed(built, name):
    """With nothing detached and exact activations, the hand-written modules give the model's own output and
    gradient: the oracle's attention, LayerNorm, gates and activations are the model's."""
    model, x = built(name)
    case = CASES[name]
    twin = transformer_twin(model, "gradient")
    unwritten = [n for n, m in twin.named_modules() if isinstance(m, attentions()) and not n.endswith(".m")]
    assert not unwritten  # every attention module is held by its hand-written twin, which does the sums
    xs = x.clone().requires_grad_(True)
    out = layer_of(model, case.layer, xs)
    assert rel_err(layer_of(twin, case.layer, x), out) <= 1e-12
    seed = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
    plain = torch.autograd.grad(out, xs, seed)[0]
    assert rel_err(hand_projection(twin, case.layer, x, seed[None])[0], plain) <= 1e-12


@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize("name", CASES)
def test_deconvviz_matches_the_oracle(built, name, rule):
    """deconvviz's autograd path against the oracle, seeded at one position, a whole map and a prefix token."""
    model, x = built(name)
    case = CASES[name]
    leaf, act, record = layer_output(model, x, case.layer, rule=RULES[rule], stop=True)
    seeds = seeds_of(act, case)
    got = project_autograd(leaf, act, seeds)[0]
    want = hand_projection(transformer_twin(model, rule), case.layer, x, seeds)
    plain = hand_projection(model, case.layer, x, seeds)
    for k in range(len(seeds)):
        assert want[k].abs().max() > 0, "degenerate test: the oracle projected nothing"
        assert rel_err(got[k], want[k]) <= 1e-9, (name, rule, k)
    fixed = {path for path, used in record["conventions"].items() if CONVENTIONS_ATTENTION in used}
    if rule == "gradient":
        assert record["conventions"] == {} and rel_err(got, plain) <= 1e-9
        return
    assert fixed == attention_paths(model, case.layer, x) and fixed
    unfixed = hand_projection(transformer_twin(model, rule, attention=False), case.layer, x, seeds)
    for k in range(len(seeds)):  # the conventions change the picture: this test cannot pass by the plain gradient
        assert rel_err(got[k], unfixed[k]) > 1e-3 and rel_err(got[k], plain[k]) > 1e-2, (name, rule, k)
