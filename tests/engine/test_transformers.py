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
import torch.nn.functional as F
import torchvision
from oracle import rel_err, seeds_for
from torch import nn
from transformer_oracle import hand_projection, layer_of, transformer_twin

import deconvviz
from deconvviz.engine.attention import CONVENTION as CONVENTIONS_ATTENTION
from deconvviz.engine.rectified import CONVENTIONS, layer_output, project_autograd, rule_passes
from deconvviz.engine.rules import RULES

ALL_RULES = ["deconvnet", "guided", "linear", "gradient"]


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: see conftest's one_thread


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


class TorchEncoder(nn.Module):
    """A conv stem's tokens through two nn.TransformerEncoderLayers (post-norm, then pre-norm; GELU as a module)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)
        self.body = nn.Sequential(
            nn.TransformerEncoderLayer(16, 2, 32, activation=nn.GELU(), batch_first=True),
            nn.TransformerEncoderLayer(16, 4, 32, activation=nn.GELU(), batch_first=True, norm_first=True),
        )

    def forward(self, x):
        return self.body(self.stem(x).flatten(2).transpose(1, 2))


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
    "torch_encoder_layers": Case(TorchEncoder, "body", 8, "tokens"),
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
        layer_of(model, layer, x)  # with a gradient: nn.TransformerEncoderLayer's fast path would skip its attention
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


PUBLIC = [name for name, case in CASES.items() if case.layout != "nchw"]


@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize("name", PUBLIC)
def test_the_public_projection_of_a_token_or_channels_last_map_matches_the_oracle(built, name, rule):
    """Deconvnet(model, rule=...).project(x, layer, channels=[c], mode=...) on a token or channels-last layer, as
    issue 21 defines it: map c is tokens[:, P:, c] (or out[..., c]) on the patch grid; mode max seeds its
    strongest grid position, mode map the whole map, token="cls" the class token's entry c; each equals the
    hand-written oracle seeded on the raw output."""
    model, x = built(name)
    case = CASES[name]
    act = layer_of(model, case.layer, x).detach()
    seeds = seeds_of(act, case)  # one position, the whole map, the class token: of the strongest map c
    grid = act[:, case.prefix :] if case.layout == "tokens" else act
    c = int(grid.flatten(0, -2).max(0).values.argmax())
    want = hand_projection(transformer_twin(model, rule), case.layer, x, seeds)
    dn = deconvviz.Deconvnet(model, rule=rule)
    for k, kw in enumerate([{"mode": "max"}, {"mode": "map"}, {"token": "cls"}][: len(seeds)]):
        out = dn.project(x, case.layer, channels=[c], **kw)
        assert out.selections.shape[0] == act.shape[-1], (name, kw)  # the channels are the features, not tokens
        assert rel_err(out.images[0, 0], want[k]) <= 1e-9, (name, rule, kw)


class Scaled(nn.Module):
    """Tokens from a conv stem, q, k, v by linear maps, F.scaled_dot_product_attention with `options`, a linear out.
    hand: the same sums with the weights written out (the reference formula of torch's docs) and detached."""

    def __init__(self, heads: int = 2, kv_heads: int = 2, hand: bool = False, **options):
        super().__init__()
        self.heads, self.kv_heads, self.hand, self.options = heads, kv_heads, hand, options
        self.stem = nn.Conv2d(3, 8, 3)
        self.q, self.k, self.v = nn.Linear(8, 4 * heads), nn.Linear(8, 4 * kv_heads), nn.Linear(8, 4 * kv_heads)
        self.out = nn.Linear(4 * heads, 6)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (N, L, 8)
        q, k, v = (
            f(t).unflatten(-1, (h, 4)).transpose(1, 2)
            for f, h in ((self.q, self.heads), (self.k, self.kv_heads), (self.v, self.kv_heads))
        )
        o = self.written_out(q, k, v) if self.hand else F.scaled_dot_product_attention(q, k, v, **self.options)
        return self.out(o.transpose(1, 2).flatten(2))

    def written_out(self, q, k, v):
        opts = self.options
        scores = q @ k.repeat_interleave(self.heads // self.kv_heads, 1).transpose(-2, -1)
        scores = scores * (opts.get("scale") or q.shape[-1] ** -0.5)
        mask = opts.get("attn_mask")
        if opts.get("is_causal"):
            mask = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask is not None:
            scores = scores + mask
        return scores.softmax(-1).detach() @ v.repeat_interleave(self.heads // self.kv_heads, 1)


L = 20  # tokens of a 7 x 6 input after the 3 x 3 stem
SOME = (torch.rand(L, L, generator=torch.Generator().manual_seed(5)) > 0.5) | torch.eye(L, dtype=torch.bool)
SDPA_OPTIONS = {
    "plain": {},
    "bool mask": {"attn_mask": SOME},
    "float mask": {"attn_mask": torch.randn(L, L, dtype=torch.double, generator=torch.Generator().manual_seed(6))},
    "causal": {"is_causal": True},
    "scale": {"scale": 0.9},
    "grouped query": {"enable_gqa": True, "heads": 4, "kv_heads": 2},
}


def double_twin(model: nn.Module, hand: nn.Module) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_(0, 0.7)
    hand.load_state_dict(model.state_dict())
    return model.double().eval(), hand.double().eval()


def project_raw(model: nn.Module, layer: str, x: torch.Tensor, rule: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """deconvviz's projections of two seeds on the raw output (all of it, and one entry): (seeds, images, record)."""
    leaf, act, record = layer_output(model, x, layer, rule=RULES[rule])
    one = torch.zeros_like(act)
    one.view(-1)[act.detach().abs().argmax()] = 1.0
    seeds = torch.stack([act.detach(), one])
    return seeds, project_autograd(leaf, act, seeds)[0], record


@pytest.mark.parametrize("rule", ["linear", "deconvnet"])
@pytest.mark.parametrize("options", SDPA_OPTIONS)
def test_scaled_dot_product_attention_gives_the_formula_with_its_weights_fixed(options, rule):
    """Masks (bool and float), is_causal, scale and grouped-query attention, through the fused kernel, against the
    reference formula written out with its weights detached; exact under the gradient rule."""
    kwargs = SDPA_OPTIONS[options]
    model, hand = double_twin(Scaled(**kwargs), Scaled(hand=True, **kwargs))
    x = torch.randn(2, 3, 7, 6, dtype=torch.double, generator=torch.Generator().manual_seed(7))
    seeds, got, record = project_raw(model, "out", x, rule)
    assert rel_err(got, hand_projection(hand, "out", x, seeds)) <= 1e-9
    assert list(record["conventions"].values()) == [CONVENTIONS_ATTENTION]
    assert rel_err(got, hand_projection(model, "out", x, seeds)) > 1e-2  # not the plain gradient
    _, exact, _ = project_raw(model, "out", x, "gradient")
    assert rel_err(exact, hand_projection(model, "out", x, seeds)) <= 1e-9


class Multihead(nn.Module):
    """A conv stem's tokens through nn.MultiheadAttention (self- or cross-attention to a second stem's tokens),
    then a linear map. build: the module's own options; call: what forward passes it (masks, need_weights)."""

    def __init__(self, batch_first: bool = True, cross: bool = False, build=None, call=None):
        super().__init__()
        self.batch_first, self.cross, self.call = batch_first, cross, call or {}
        self.stem, self.other = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 6, 3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, **(build or {}))
        self.out = nn.Linear(8, 5)

    def tokens(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        kv = self.other(x).flatten(2).transpose(1, 2) if self.cross else t
        return (t, kv) if self.batch_first else (t.transpose(0, 1), kv.transpose(0, 1))

    def forward(self, x):
        t, kv = self.tokens(x)
        o = self.attn(t, kv, kv, **self.call)[0]
        return self.out(o if self.batch_first else o.transpose(0, 1))


def multihead_by_hand(model: Multihead, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """The value path written out, with the per-head weights torch's module itself returns (fixed): the columns of
    add_bias_kv's and add_zero_attn's extra keys meet constant values and carry no signal."""
    m = model.attn
    t, kv = model.tokens(x)
    call = {k: v for k, v in model.call.items() if k not in ("need_weights", "is_causal")}
    with torch.no_grad():
        a = m(t, kv, kv, need_weights=True, average_attn_weights=False, **call)[1]  # (N, heads, L, S + extras)
    xs = x.clone().requires_grad_(True)
    t, kv = model.tokens(xs)
    kv = kv if model.batch_first else kv.transpose(0, 1)
    w = m.v_proj_weight if m.v_proj_weight is not None else m.in_proj_weight[2 * m.embed_dim :]
    v = F.linear(kv, w, m.in_proj_bias[2 * m.embed_dim :]).unflatten(-1, (m.num_heads, -1)).transpose(1, 2)
    o = m.out_proj((a[..., : v.shape[-2]] @ v).transpose(1, 2).flatten(2))
    out = model.out(o)
    return torch.stack([torch.autograd.grad(out, xs, s, retain_graph=True)[0] for s in seeds])


CAUSAL = torch.ones(L, L).tril() == 0  # True where attention is not allowed (nn.MultiheadAttention's convention)
PADDED = torch.zeros(2, L, dtype=torch.bool).index_fill_(1, torch.tensor([3, 11]), True)
MULTIHEAD = {
    "vit": {"call": {"need_weights": False}},
    "defaults, sequence first": {"batch_first": False},
    "masks": {
        "call": {
            "key_padding_mask": PADDED,
            "attn_mask": torch.randn(L, L, dtype=torch.double, generator=torch.Generator().manual_seed(9)),
        }
    },
    "causal": {"call": {"attn_mask": CAUSAL, "is_causal": True, "need_weights": False}},
    "bias_kv and zero_attn": {"build": {"add_bias_kv": True, "add_zero_attn": True}},
    "cross, kdim and vdim": {"cross": True, "build": {"kdim": 6, "vdim": 6}},
}


@pytest.mark.parametrize("case", MULTIHEAD)
def test_multihead_attention_passes_its_values_with_its_own_weights_fixed(case):
    torch.manual_seed(0)
    model = Multihead(**MULTIHEAD[case])
    for p in model.parameters():
        p.data.normal_(0, 0.7)
    model = model.double().eval()
    x = torch.randn(2, 3, 7, 6, dtype=torch.double, generator=torch.Generator().manual_seed(8))
    seeds, got, record = project_raw(model, "out", x, "linear")  # no activations: only attention's convention acts
    assert rel_err(got, multihead_by_hand(model, x, seeds)) <= 1e-9
    assert record["conventions"] == {"attn": CONVENTIONS_ATTENTION}
    assert rel_err(got, hand_projection(model, "out", x, seeds)) > 1e-2


class NotAttention(nn.Module):
    """A softmax of the signal that no other signal multiplies: weights times a parameter, weights used as a signal
    of their own, or attention whose values carry no signal."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.stem, self.attn = nn.Conv2d(3, 8, 3), nn.MultiheadAttention(8, 2, batch_first=True)
        self.values = nn.Parameter(torch.randn(1, 2, L, 4))
        self.out = nn.Linear(8, 5)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)  # (N, L, 8)
        if self.kind == "weights times a parameter":
            return self.out(t.softmax(1) * self.out.weight[0])
        if self.kind == "weights returned and used":
            o, w = self.attn(t, t, t)
            return self.out(o + w.mean(-1, keepdim=True))
        q = t.unflatten(-1, (2, 4)).transpose(1, 2).contiguous()
        v = self.values.repeat(len(x), 1, 1, 1)
        return self.out(F.scaled_dot_product_attention(q, q, v).transpose(1, 2).flatten(2))


@pytest.mark.parametrize(
    "kind, why",
    [
        ("weights times a parameter", "softmax of the signal outside attention"),
        ("weights returned and used", "softmax of the signal outside attention"),
        ("values without the signal", "attention kernel .* weights computed from the signal"),
    ],
)
@pytest.mark.parametrize("rule", ["deconvnet", "guided", "linear"])
def test_a_softmax_that_is_not_attention_of_the_signal_is_refused(kind, why, rule):
    model = NotAttention(kind).eval()
    x = torch.randn(1, 3, 7, 6)
    with pytest.raises(deconvviz.UnsupportedModelError, match=rf"{why}.*no {rule} rule.*rule='gradient'") as error:
        deconvviz.Deconvnet(model, rule=rule).project(x, "out", channels=[0], mode="max")
    assert "\n" not in str(error.value)
    deconvviz.Deconvnet(model, rule="gradient").project(x, "out", channels=[0], mode="max")  # exact: projects


def test_vision_transformer_layers_list_attention_fixed_for_every_rule_but_gradient(built):
    model, _ = built("vit_b_16")
    passes = {p.module: p.rules for p in rule_passes(model.float(), (64, 64))}
    model.double()
    attention = passes["encoder.layers.encoder_layer_0.self_attention"]
    assert attention == {"deconvnet": "attention fixed", "guided": "attention fixed", "linear": "attention fixed",
                         "gradient": "exact"}  # fmt: skip
    assert passes["encoder.layers.encoder_layer_0.ln_1"]["guided"] == "std fixed"
    assert passes["encoder.layers.encoder_layer_0.mlp.1"]["linear"] == "activation rule (GELU)"
    assert "attention fixed" in CONVENTIONS and "Ali et al." in CONVENTIONS["attention fixed"]


def test_layerscale_is_linear_and_droppath_in_eval_the_identity(built):
    model, _ = built("vit_small_layerscale_droppath")
    passes = {p.module: p.rules for p in rule_passes(model.float(), (64, 64))}
    model.double()
    for rule in ALL_RULES:
        assert passes["blocks.1.drop_path1"][rule] == "identity"  # a timm DropPath, in eval
        assert passes["blocks.1.ls1"][rule] == ("exact" if rule == "gradient" else "linear")  # LayerScale
        # the queries' (identity) normalization: on the signal's path only where attention is not fixed
        assert passes["blocks.1.attn.q_norm"][rule] == ("identity" if rule == "gradient" else "-")


TIMM_OTHERS = {
    "swin": lambda: timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4),
    "convnext": lambda: timm.create_model("convnext_atto"),
    "vit_little_registers": lambda: timm.create_model("vit_little_patch16_reg4_gap_256", img_size=64),
}


@pytest.mark.parametrize("name", TIMM_OTHERS)
def test_timm_swin_convnext_and_register_tokens_project_under_every_rule(name):
    torch.manual_seed(0)
    model = TIMM_OTHERS[name]().eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    used, last = {}, [n for n, _ in model.named_modules() if n][-1]  # the classifier: (N, classes)
    for rule in ALL_RULES:
        out = deconvviz.Deconvnet(model, rule=rule).project(x, last, channels=[1], mode="max")
        assert out.images.abs().max() > 0
        used[rule] = {c for v in out.conventions.values() for c in v.split(", ")}
    assert used["gradient"] == set()
    want = {"std fixed", "activation rule (GELU)"} | ({"attention fixed"} if name != "convnext" else set())
    assert used["deconvnet"] == used["guided"] == used["linear"] == want


@pytest.mark.slow
def test_maxvit_t_at_its_smallest_size_matches_the_oracle_through_the_public_api():
    """maxvit_t (224 px, the smallest its partitions of 7 allow), blocks.0: (N, C, H, W) maps after MBConv, block
    and grid attention, by Deconvnet.project in both modes, under every rule."""
    torch.manual_seed(0)
    model = sharpened(torchvision.models.maxvit_t(), 12.0).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    act = layer_of(model, "blocks.0", x).detach()
    for rule in ALL_RULES:
        twin = transformer_twin(model, rule)
        for mode in ("max", "map"):
            out = deconvviz.Deconvnet(model, rule=rule).project(x, "blocks.0", channels=[3, 17], mode=mode)
            sel = out.selections
            seeds = seeds_for(act, sel.channels, sel.positions if mode == "max" else None)
            want = hand_projection(twin, "blocks.0", x, seeds[:, None])[:, 0]
            assert rel_err(out.images[0], want) <= 1e-5, (rule, mode)
            assert (CONVENTIONS_ATTENTION in ", ".join(out.conventions.values())) == (rule != "gradient")


@pytest.mark.parametrize("options", ["bool mask", "grouped query"])
def test_scaled_dot_product_attention_on_the_math_backend_gives_the_same(options):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kwargs = SDPA_OPTIONS[options]
    model, hand = double_twin(Scaled(**kwargs), Scaled(hand=True, **kwargs))
    x = torch.randn(2, 3, 7, 6, dtype=torch.double, generator=torch.Generator().manual_seed(7))
    with sdpa_kernel([SDPBackend.MATH]):
        seeds, got, record = project_raw(model, "out", x, "deconvnet")
    assert rel_err(got, hand_projection(hand, "out", x, seeds)) <= 1e-9
    assert list(record["conventions"].values()) == [CONVENTIONS_ATTENTION]
