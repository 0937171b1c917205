"""transformers' vision models through the public API, against independent computations: HF ViT under every rule
and both modes against the hand-written oracle (tests/transformer_oracle.py: attention written out with its
softmax detached, GELU and LayerNorm as rule Functions), itself checked first against plain autograd of the SDPA
model; DINOv2 with registers, a Swin block and a SegFormer block under the gradient rule against plain autograd
of the map the layout says (tokens[:, P:, c] on the patch grid, P read from the model); transformers'
activation modules against the rules written by hand. Tiny configs, random weights, double precision."""

from __future__ import annotations

import pytest
import torch
from oracle import HandAct, rel_err
from torch import nn
from transformer_oracle import hand_projection, layer_of, transformer_twin

import deconvviz

transformers = pytest.importorskip("transformers")

ALL_RULES = ["deconvnet", "guided", "linear", "gradient"]
VIT = dict(
    image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64
)


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: see conftest's one_thread


def hf_model(model_type: str, *, auto: str = "AutoModel", sharpen: float = 1.0, **config) -> nn.Module:
    """A transformers model from `model_type`'s default config with `config` overrides, seeded, double, eval;
    query and key weights `sharpen` times larger (random weights attend nearly uniformly)."""
    kernel = {"attn_implementation": config.pop("attn_implementation")} if "attn_implementation" in config else {}
    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(model_type, **config)
    model = getattr(transformers, auto).from_config(cfg, **kernel)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "query.weight", "key.weight")):
                p.mul_(sharpen)
    return model.double().eval()


def image(side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, side, side, dtype=torch.double, generator=torch.Generator().manual_seed(seed))


def grid_seed(act: torch.Tensor, prefix: int, c: int, grid: tuple[int, int], *, whole: bool) -> torch.Tensor:
    """A seed on the raw output (1, P + H*W, C): map c (tokens[:, P:, c]) whole, or its strongest grid position."""
    seed = torch.zeros_like(act)
    tokens = act[0, prefix:, c]
    assert tokens.numel() == grid[0] * grid[1]
    if whole:
        seed[0, prefix:, c] = tokens
    else:
        at = int(tokens.argmax())
        seed[0, prefix + at, c] = tokens[at]
    return seed


LAYER = "vit.layers.1"


@pytest.fixture(scope="module")
def vits():
    return {
        kernel: hf_model("vit", auto="AutoModelForImageClassification", sharpen=4.0, attn_implementation=kernel, **VIT)
        for kernel in ("sdpa", "eager")
    }


def test_the_hf_oracle_is_the_plain_gradient_of_the_sdpa_model(vits):
    """With nothing detached and exact activations the hand-written twin (attention written out, LayerNorm and
    GELUActivation as modules of the oracle) gives the SDPA model's own output and gradient."""
    model, x = vits["sdpa"], image()
    twin = transformer_twin(model, "gradient")
    assert type(twin.get_submodule("vit.layers.0.attention")).__name__ == "HandHFAttention"
    assert isinstance(twin.get_submodule("vit.layers.0.mlp.activation_fn"), HandAct)
    xs = x.clone().requires_grad_(True)
    out = layer_of(model, LAYER, xs)
    assert rel_err(layer_of(twin, LAYER, x), out) <= 1e-12
    seed = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(2))
    assert rel_err(hand_projection(twin, LAYER, x, seed[None])[0], torch.autograd.grad(out, xs, seed)[0]) <= 1e-12


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("rule", ALL_RULES)
def test_hf_vit_matches_the_oracle_under_every_rule_and_mode(vits, kernel, rule):
    """Deconvnet(model, rule).project(x, 'vit.layers.1', channels=[c], mode=...) on ViTForImageClassification:
    map c is hidden_states[:, 1:, c] on the 4x4 patch grid (one class token, read from embeddings.cls_token);
    mode max seeds its strongest grid position, mode map all of it; both equal the oracle seeded on the raw
    output, and (rules other than gradient) differ from the plain gradient."""
    model, x = vits[kernel], image()
    act = layer_of(model, LAYER, x).detach()
    c = int(act[0, 1:].max(0).values.argmax())
    dn = deconvviz.Deconvnet(model, rule=rule)
    twin = transformer_twin(model, rule)
    for mode in ("max", "map"):
        out = dn.project(x, LAYER, channels=[c], mode=mode)
        sel = out.selections
        assert tuple(sel.shape) == (32, 4, 4) and sel.layout.prefix == ("cls",), sel.layout
        seed = grid_seed(act, 1, c, (4, 4), whole=mode == "map")
        want = hand_projection(twin, LAYER, x, seed[None])[0]
        assert want.abs().max() > 0
        assert rel_err(out.images[0, 0], want) <= 1e-9, (kernel, rule, mode)
        plain = hand_projection(model, LAYER, x, seed[None])[0]
        if rule == "gradient":
            assert rel_err(out.images[0, 0], plain) <= 1e-9
        else:
            assert rel_err(out.images[0, 0], plain) > 1e-2, (kernel, rule, mode)  # not the gradient by accident
            assert out.conventions["vit.layers.0.attention"] == "attention fixed"
            assert out.conventions["vit.layers.0.mlp.activation_fn"] == "activation rule (GELUActivation)"


def test_dinov2_with_registers_maps_skip_the_class_and_register_tokens():
    """Dinov2WithRegisters places [cls, reg0..reg3, patches]: map c is tokens[:, 1 + R:, c] on the patch grid;
    the gradient rule equals plain autograd of that map; token='reg2' is token 3."""
    model = hf_model("dinov2_with_registers", num_register_tokens=4, **VIT)
    x, layer = image(), "encoder.layer.1"
    act = layer_of(model, layer, x).detach()
    assert act.shape[1] == 1 + 4 + 16
    c = 5
    dn = deconvviz.Deconvnet(model, rule="gradient")
    out = dn.project(x, layer, channels=[c], mode="map")
    assert out.selections.layout.prefix == ("cls", "reg0", "reg1", "reg2", "reg3")
    seed = grid_seed(act, 5, c, (4, 4), whole=True)
    want = hand_projection(model, layer, x, seed[None])[0]
    assert rel_err(out.images[0, 0], want) <= 1e-9
    wrong = torch.zeros_like(act)
    wrong[0, 1:17, c] = act[0, 1:17, c]  # registers read as patches (a prefix of 1) would give another picture
    assert rel_err(want, hand_projection(model, layer, x, wrong[None])[0]) > 1e-2
    reg = torch.zeros_like(act)
    reg[0, 3, c] = act[0, 3, c]
    token = dn.project(x, layer, channels=[c], token="reg2")
    assert rel_err(token.images[0, 0], hand_projection(model, layer, x, reg[None])[0]) <= 1e-9


def test_deit_declares_its_class_and_distillation_tokens_in_order():
    model = hf_model("deit", **VIT)
    layout = deconvviz.Deconvnet(model).layouts(image())["layers.1"]
    assert layout.prefix == ("cls", "dist") and layout.grid == (4, 4)


SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2], window_size=4)


@pytest.mark.parametrize(
    ("layer", "grid"), [("encoder.layers.1.blocks.1", (4, 4)), ("encoder.layers.0.blocks.0", (8, 8))]
)
def test_a_swin_block_is_read_on_its_stages_grid(layer, grid):
    """A Swin block returns (hidden_states, attentions); hidden_states (1, h*w, C) lie on the grid its
    input_dimensions name: map c is hidden_states[0, :, c] as (h, w); mode max's position is its argmax; the
    gradient rule equals plain autograd."""
    model = hf_model("swin", **SWIN)
    x = image()
    act = layer_of(model, layer, x).detach()
    c = 3
    dn = deconvviz.Deconvnet(model, rule="gradient")
    for mode in ("max", "map"):
        out = dn.project(x, layer, channels=[c], mode=mode)
        assert tuple(out.selections.shape) == (act.shape[-1], *grid)
        seed = grid_seed(act, 0, c, grid, whole=mode == "map")
        assert rel_err(out.images[0, 0], hand_projection(model, layer, x, seed[None])[0]) <= 1e-9
        if mode == "max":
            at = int(act[0, :, c].argmax())
            assert out.selections.rows_cols[0].tolist() == [[at // grid[1], at % grid[1]]]


def test_a_segformer_block_is_read_on_the_grid_of_its_height_and_width():
    """SegFormer's blocks get (hidden_states, height, width); its efficient attention's reduction convolution has
    a smaller grid, which must not be taken for the tokens' grid."""
    model = hf_model(
        "segformer",
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        patch_sizes=[7, 3],
        strides=[4, 2],
    )
    x, layer, c = image(), "stages.0.blocks.0", 2
    act = layer_of(model, layer, x).detach()
    assert act.shape[1:] == (64, 16)
    out = deconvviz.Deconvnet(model, rule="gradient").project(x, layer, channels=[c], mode="map")
    assert tuple(out.selections.shape) == (16, 8, 8)
    seed = grid_seed(act, 0, c, (8, 8), whole=True)
    assert rel_err(out.images[0, 0], hand_projection(model, layer, x, seed[None])[0]) <= 1e-9


class Act(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.stem, self.act, self.out = nn.Conv2d(3, 6, 3), act, nn.Conv2d(6, 4, 3)

    def forward(self, x):
        return self.out(self.act(self.stem(x)))


@pytest.mark.parametrize("name", ["GELUActivation", "NewGELUActivation", "FastGELUActivation", "QuickGELUActivation"])
@pytest.mark.parametrize("rule", ALL_RULES)
def test_transformers_activation_modules_get_the_activation_rule(name, rule):
    """Each of transformers' activation modules (formulas of tanh, erf, sigmoid) is one activation of the rule,
    against HandAct (oracle.HandRule: deconvnet max(s, 0), guided max(s, 0) f'(x)), never its pieces."""
    from transformers import activations

    torch.manual_seed(0)
    model = Act(getattr(activations, name)()).double().eval()
    x = image(10)
    twin = Act(HandAct(model.act, rule)).double().eval()
    twin.load_state_dict(model.state_dict())
    out = deconvviz.Deconvnet(model, rule=rule).project(x, "out", channels=[1], mode="map")
    act = layer_of(model, "out", x).detach()
    seed = torch.zeros_like(act)
    seed[:, 1] = act[:, 1]
    want = hand_projection(twin, "out", x, seed[None])[0]
    assert rel_err(out.images[0, 0], want) <= 1e-9, (name, rule)
    if rule != "gradient":
        assert out.conventions["act"] == f"activation rule ({name})"
        assert rel_err(want, hand_projection(model, "out", x, seed[None])[0]) > 1e-3


def _contributions(model: nn.Module, x: torch.Tensor, layer: str, score) -> torch.Tensor:
    """Gradient times activation of layer's patch-grid tokens (P prefix tokens dropped), summed over the grid: by
    hand, with a hook that reads the block's hidden states and plain autograd of `score(result)`."""
    got = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: got.__setitem__("act", o[0] if isinstance(o, tuple) else o)
    )
    try:
        result = model(x)
    finally:
        hook.remove()
    act = got["act"]
    (grad,) = torch.autograd.grad(score(result), act)
    return grad * act


def test_a_class_of_an_image_classifier_is_read_from_its_logits():
    model = hf_model("vit", auto="AutoModelForImageClassification", num_labels=5, **VIT)
    x = image()
    by_hand = _contributions(model, x, "vit.layers.0", lambda r: r.logits[:, 3].sum())[:, 1:].sum(1)  # 1 cls token
    out = deconvviz.Deconvnet(model, rule="gradient").project(x, "vit.layers.0", cls=3, top=4, mode="map")
    assert torch.equal(out.selections.channels, by_hand.topk(4, dim=1).indices)
    assert out.score.output == "logits" and out.score.kind == "vector"
    # the last block: the head reads the class token alone, so every grid map scores 0 and a token is asked for
    last = _contributions(model, x, "vit.layers.1", lambda r: r.logits[:, 1].sum())
    assert not last[:, 1:].any() and last[:, 0].any()
    with pytest.raises(deconvviz.DeconvvizError, match="token='cls'"):
        deconvviz.Deconvnet(model).project(x, "vit.layers.1", cls=1, top=4)


def test_a_class_of_a_segmentation_models_logits_is_summed_over_its_pixels():
    config = dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16])
    config |= dict(num_attention_heads=[1, 2], decoder_hidden_size=16, num_labels=4, image_size=32)
    model = hf_model("segformer", auto="AutoModelForSemanticSegmentation", **config)
    x, layer, cls = image(32), "segformer.stages.1.blocks.0", 2
    logits = model(x).logits  # (1, 4, 8, 8): a quarter of the input
    predicted = logits.argmax(1, keepdim=True) == cls
    assert predicted.any()
    for pixels, mask in (("all", torch.ones_like(predicted)), ("predicted", predicted)):
        grid = _contributions(model, x, layer, lambda r, m=mask: (r.logits[:, cls : cls + 1] * m).sum())
        want = grid.sum(1).topk(3, dim=1).indices  # SegFormer's tokens have no prefix
        out = deconvviz.Deconvnet(model, rule="gradient").project(x, layer, cls=cls, top=3, pixels=pixels)
        assert torch.equal(out.selections.channels, want), pixels
        assert out.score.output == "logits" and out.score.counts == (int(mask.sum()),)
