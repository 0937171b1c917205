"""Token and channels-last layers as feature maps on the patch grid (deconvviz.engine.layout), checked against a forward
hook read by hand and against plain autograd of a seed built by hand on the layer's raw output."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from deconvviz import Box, Deconvnet, LayerError, Point, SelectionError
from deconvviz.engine.fields import receptive_field
from deconvviz.engine.forward import layer_shape
from deconvviz.engine.layers import stage_modules
from deconvviz.engine.layout import CHANNELS_LAST, PLANES, TOKENS, UNKNOWN, layout_of

RULES = ("gradient", "deconvnet", "guided", "linear")


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


# name -> (builder, token layer or channels-last layer, its patch embedding conv, prefix tokens, layout kind)
NETS = {
    "vit_b_16": (
        lambda: torchvision.models.vit_b_16(image_size=64),
        "encoder.layers.encoder_layer_5",
        "conv_proj",
        ("cls",),
        TOKENS,
    ),
    "vit_b_32": (
        lambda: torchvision.models.vit_b_32(image_size=64),
        "encoder.layers.encoder_layer_2",
        "conv_proj",
        ("cls",),
        TOKENS,
    ),
    "deit_tiny": (
        lambda: timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64),
        "blocks.3",
        "patch_embed.proj",
        ("cls",),
        TOKENS,
    ),
    "vit_small": (
        lambda: timm.create_model("vit_small_patch16_224", pretrained=False, img_size=64),
        "blocks.1.mlp",
        "patch_embed.proj",
        ("cls",),
        TOKENS,
    ),
    "deit_tiny_distilled": (
        lambda: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=64),
        "blocks.0",
        "patch_embed.proj",
        ("cls", "dist"),
        TOKENS,
    ),
    "swin_t": (lambda: torchvision.models.swin_t(), "features.1.0", "features.0.0", (), CHANNELS_LAST),
    "swin_v2_t": (lambda: torchvision.models.swin_v2_t(), "features.3", "features.0.0", (), CHANNELS_LAST),
}
_BUILT: dict = {}


def net(name: str) -> nn.Module:
    if name not in _BUILT:
        _BUILT[name] = _seeded(NETS[name][0])
    return _BUILT[name]


def _image(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _raw(model: nn.Module, x: torch.Tensor, *paths: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The input leaf and the raw outputs of modules `paths` in one plain forward (no deconvviz involved)."""
    leaf, got = x.clone().requires_grad_(True), {}
    modules = dict(model.named_modules())
    handles = [modules[p].register_forward_hook(lambda m, i, o, p=p: got.setdefault(p, o)) for p in paths]
    try:
        model(leaf)
    finally:
        for h in handles:
            h.remove()
    return leaf, [got[p] for p in paths]


def _maps_by_hand(out: torch.Tensor, kind: str, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) of image 0 read by hand: map c is tokens[P:, c] row-major, or out[..., c] channels-last."""
    if kind == TOKENS:
        return out[0, prefix:, :].T.reshape(-1, *grid)
    return out[0].permute(2, 0, 1)


def _project(model, x, layer, rule, **kw):
    return Deconvnet(model, rule=rule).project(x, layer, **kw)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("name", list(NETS))
def test_a_channel_of_a_token_or_channels_last_layer_is_a_map_on_the_patch_grid(name, rule):
    """selections.shape (C, H, W), the position of each map's strongest activation on the grid and its value are
    those read by hand from a forward hook; under gradient the images are plain autograd of the seed put by hand
    into the raw output (tokens[:, P + pos, c], or out[:, r, q, c])."""
    model, (_, layer, embed, prefix, kind) = net(name), NETS[name]
    x = _image()
    leaf, (out, patches) = _raw(model, x, layer, embed)
    grid = tuple(patches.shape[-2:]) if kind == TOKENS else tuple(out.shape[1:3])  # Swin merges patches later
    maps = _maps_by_hand(out.detach(), kind, len(prefix), grid)
    c = 7
    p = _project(model, x, layer, rule, channels=[c], mode="max")
    sel = p.selections
    assert sel.shape == (out.shape[-1], *grid)
    assert sel.layout.kind == kind and sel.layout.prefix == prefix
    pos = int(maps[c].flatten().argmax())
    assert sel.positions.tolist() == [[pos]] and sel.rows_cols.tolist() == [[[pos // grid[1], pos % grid[1]]]]
    assert float(sel.values) == pytest.approx(float(maps[c].max()), rel=1e-5)
    if rule != "gradient":
        return
    seed = torch.zeros_like(out)
    if kind == TOKENS:
        seed[0, len(prefix) + pos, c] = maps[c].max()
    else:
        seed[0, pos // grid[1], pos % grid[1], c] = maps[c].max()
    (want,) = torch.autograd.grad(out, leaf, seed, retain_graph=True)
    torch.testing.assert_close(p.images[0, 0], want[0], rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    whole = _project(model, x, layer, rule, channels=[c], mode="map")
    seed = torch.zeros_like(out)
    if kind == TOKENS:
        seed[0, len(prefix) :, c] = out[0, len(prefix) :, c].detach()
    else:
        seed[0, ..., c] = out[0, ..., c].detach()
    (want,) = torch.autograd.grad(out, leaf, seed)
    assert whole.selections.shape == sel.shape
    torch.testing.assert_close(whole.images[0, 0], want[0], rtol=1e-4, atol=1e-6 * float(want.abs().max()))


def test_the_bug_of_reading_tokens_as_channels_is_gone():
    """The issue's example: channel 3 of vit_b_16's encoder_layer_5 at 64 px is a 4x4 map of 768 channels,
    not token 3 with 768 positions."""
    p = Deconvnet(net("vit_b_16"), rule="gradient").project(_image(), "encoder.layers.encoder_layer_5", channels=[3])
    assert p.selections.shape == (768, 4, 4) and 0 <= int(p.selections.positions) < 16


@pytest.mark.parametrize(("name", "token", "index"), [("vit_b_16", "cls", 0), ("deit_tiny_distilled", "dist", 1)])
def test_a_prefix_token_is_selected_on_its_own(name, token, index):
    """token="cls"/"dist" (or its index) seeds that token's feature c alone: plain autograd of tokens[:, i, c]."""
    model, (_, layer, *_rest) = net(name), NETS[name]
    x = _image(2)
    leaf, (out,) = _raw(model, x, layer)
    dn = Deconvnet(model, rule="gradient")
    p = dn.project(x, layer, channels=[5, 9], token=token)
    by_index = dn.project(x, layer, channels=[5, 9], token=index)
    assert p.selections.shape == (out.shape[-1], 1, 1) and p.selections.positions.tolist() == [[0, 0]]
    torch.testing.assert_close(p.selections.values, out[:, index, [5, 9]].detach())
    for k, c in enumerate([5, 9]):
        seed = torch.zeros_like(out)
        seed[0, index, c] = out[0, index, c].detach()
        (want,) = torch.autograd.grad(out, leaf, seed, retain_graph=True)
        torch.testing.assert_close(p.images[0, k], want[0], rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    torch.testing.assert_close(by_index.images, p.images)
    assert dn.receptive_field_boxes(p) is None  # a prefix token is no grid position


def test_a_token_that_does_not_exist_is_refused_in_one_line():
    dn = Deconvnet(net("deit_tiny_distilled"), rule="gradient")
    with pytest.raises(SelectionError, match=r"unknown token 'reg0'.*cls, dist, 0\.\.1"):
        dn.project(_image(), "blocks.0", channels=[1], token="reg0")
    with pytest.raises(SelectionError, match="'patch_embed' has none"):
        dn.project(_image(), "patch_embed", channels=[1], token="cls")
    with pytest.raises(SelectionError, match="a prefix token has none"):
        dn.project(_image(), "blocks.0", channels=[1], token="cls", at=Point.pixels(3, 3))


def test_a_class_on_a_vits_last_block_needs_its_class_token():
    """A ViT's head reads only the class token of its last block, so every patch-grid map there contributes exactly
    0 to a class score (checked by hand below with plain autograd): cls without token is refused in one line naming
    token='cls', where it used to pick maps by scores all zero; with token='cls', and at an earlier block, it
    projects."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(32, 16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: no class would depend on anything
    x, last = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)), "encoder.layers.encoder_layer_1"
    got = []
    handle = dict(vit.named_modules())[last].register_forward_hook(lambda m, i, o: got.append(o))
    try:
        score = vit(x)[0, 3]
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, got[0])
    assert not grad[:, 1:].any() and grad[:, 0].any()  # the patch tokens: none of the score; the class token: all
    dn = Deconvnet(vit)
    with pytest.raises(SelectionError, match=r"class 3's score depends on none of .*token='cls'"):
        dn.project(x, last, cls=3, top=2)
    assert dn.project(x, last, cls=3, top=2, token="cls").images.abs().sum() > 0
    assert dn.project(x, "encoder.layers.encoder_layer_0", cls=3, top=2).images.abs().sum() > 0


def test_layouts_come_from_the_network():
    """The patch grid is the patch embedding's output grid, the prefix what the model declares; Swin's blocks are
    channels-last because their first two axes follow the input's size; window partitions are refused."""
    vit = layout_of(net("vit_b_32"), "encoder.layers.encoder_layer_0", (64, 64))
    assert (vit.kind, vit.grid, vit.prefix) == (TOKENS, (2, 2), ("cls",))
    assert layout_of(net("vit_b_32"), "conv_proj", (64, 64)).kind == PLANES
    patch = layout_of(net("deit_tiny"), "patch_embed", (64, 64))
    assert (patch.kind, patch.grid, patch.prefix) == (TOKENS, (4, 4), ())
    assert layout_of(net("swin_t"), "features.0", (64, 64)).kind == CHANNELS_LAST
    assert layout_of(net("swin_t"), "permute", (64, 64)).kind == PLANES
    assert layer_shape(net("swin_t"), "features.3", size=64) == (192, 8, 8)
    assert layer_shape(net("vit_b_16"), "encoder.ln", size=64) == (768, 4, 4)


def test_maxvit_planes_keep_working_and_its_window_partitions_are_refused():
    """maxvit_t's blocks give (N, C, H, W): read as before (plain autograd of the seed); a partition (windows,
    positions, channels) is no map on the input's grid: refused in one line."""
    model = _seeded(torchvision.models.maxvit_t)  # 7x7 partitions: 224 px is its smallest input
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    leaf, (out,) = _raw(model, x, "blocks.0")
    p = Deconvnet(model, rule="gradient").project(x, "blocks.0", channels=[2])
    assert p.selections.shape == tuple(out.shape[1:]) and p.selections.layout.kind == PLANES
    pos = int(out[0, 2].flatten().argmax())
    seed = torch.zeros_like(out)
    seed.view(1, out.shape[1], -1)[0, 2, pos] = out[0, 2].flatten()[pos].detach()
    (want,) = torch.autograd.grad(out, leaf, seed)
    torch.testing.assert_close(p.images[0, 0], want[0], rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    window = "blocks.0.layers.0.layers.window_attention.attn_layer"
    assert layout_of(model, window, (224, 224)).kind == UNKNOWN
    with pytest.raises(LayerError, match="cannot be told"):
        Deconvnet(model, rule="gradient").project(x, window, channels=[0])


class TinyTokens(nn.Module):
    """A ViT without attention: a 4x4 patch embedding, a class token in front, a token-wise ReLU MLP."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 6))
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU())

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.mlp(torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1))


class TinyChannelsLast(nn.Module):
    """A ConvNeXt-style block: a convolution, channels moved last, a ReLU MLP on them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU())

    def forward(self, x):
        return self.mlp(self.conv(x).permute(0, 2, 3, 1))


class _RuleReLU(torch.autograd.Function):
    """ReLU whose backward is the rule's, written out: deconvnet relu(g), guided relu(g) at x > 0, linear g."""

    @staticmethod
    def forward(ctx, x, rule):
        ctx.save_for_backward(x)
        ctx.rule = rule
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        out = {"gradient": g * (x > 0), "deconvnet": g.clamp_min(0), "guided": g.clamp_min(0) * (x > 0)}
        return out.get(ctx.rule, g), None


def _oracle(model: nn.Module, x: torch.Tensor, rule: str, seed_at) -> torch.Tensor:
    """The reconstruction by hand: the model's forward with each ReLU the rule's Function, the seed built by
    seed_at(out) on the raw output, plain autograd."""
    leaf = x.clone().requires_grad_(True)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_hook(lambda m, i, o: _RuleReLU.apply(i[0], rule)) for m in relus]
    try:
        out = model(leaf)
    finally:
        for h in handles:
            h.remove()
    (g,) = torch.autograd.grad(out, leaf, seed_at(out.detach()))
    return g


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mode", ["max", "map"])
def test_tiny_token_and_channels_last_models_under_every_rule(rule, mode):
    """Without attention every rule runs today: deconvviz on the token grid (map c = tokens[:, 1:, c]) and on the
    channels-last grid (map c = out[..., c]) against the rule written by hand on the raw output."""
    x = _image(4)[:, :, :16, :16]
    for model, kind in ((_seeded(TinyTokens), TOKENS), (_seeded(TinyChannelsLast), CHANNELS_LAST)):
        out = model(x).detach()
        maps = _maps_by_hand(out, kind, 1, (4, 4) if kind == TOKENS else (8, 8))
        c = int(maps.flatten(1).amax(1).argmax())  # a map with a positive activation
        pos, grid_w = int(maps[c].flatten().argmax()), maps.shape[-1]

        def seed_at(o, c=c, pos=pos, grid_w=grid_w, kind=kind):
            s = torch.zeros_like(o)
            if kind == TOKENS and mode == "max":
                s[0, 1 + pos, c] = o[0, 1 + pos, c]
            elif kind == TOKENS:
                s[0, 1:, c] = o[0, 1:, c]
            elif mode == "max":
                s[0, pos // grid_w, pos % grid_w, c] = o[0, pos // grid_w, pos % grid_w, c]
            else:
                s[..., c] = o[..., c]
            return s

        p = Deconvnet(model, rule=rule).project(x, "mlp", channels=[c], mode=mode)
        assert p.selections.shape == (5, *maps.shape[-2:]) and p.selections.layout.kind == kind
        want = _oracle(model, x, rule, seed_at)
        torch.testing.assert_close(p.images[0, 0], want[0], rtol=1e-5, atol=1e-7)


def test_regions_and_points_use_the_grid_s_exact_fields():
    """Before attention a ViT's fields are its patches: a point picks its patch, a region the patches whose centre
    it holds; after the first global attention every field is the whole image, refused in one line. A Swin's
    windowed block: each position's field is its window."""
    dn = Deconvnet(net("vit_b_16"), rule="gradient")
    x = _image(5)
    p = dn.project(x, "encoder.dropout", channels=[3], at=Point.pixels(5, 40))
    assert p.selections.rows_cols.tolist() == [[[2, 0]]]
    assert dn.receptive_field_boxes(p).tolist() == [[[32, 48, 0, 16]]]
    p = dn.project(x, "encoder.dropout", channels=[3], region=Box.pixels(32, 32, 64, 64))
    _, (out,) = _raw(net("vit_b_16"), x, "encoder.dropout")
    inside = out[0, 1:, 3].detach().reshape(4, 4)[2:, 2:]
    r, q = divmod(int(inside.flatten().argmax()), 2)
    assert p.selections.rows_cols.tolist() == [[[2 + r, 2 + q]]]
    with pytest.raises(SelectionError, match="sees the whole 64x64 input"):
        dn.project(x, "encoder.layers.encoder_layer_0", channels=[3], at=Point.pixels(5, 40))
    fields = receptive_field(net("swin_t"), "features.1.0", input_size=(64, 64))
    assert fields.rows[:8].tolist() == [[0, 28]] * 7 + [[28, 56]]  # 7x7 windows of 4x4 patches
    p = Deconvnet(net("swin_t"), rule="gradient").project(
        x, "features.1.0", channels=[3], region=Box.pixels(0, 0, 28, 28)
    )
    assert all(v < 7 for v in p.selections.rows_cols.flatten().tolist())


def test_stages_of_a_transformer_are_the_patch_embedding_and_each_block_on_the_grid():
    """keep_stages on a ViT: the signal at the patch embedding's output and after each block before the layer,
    drawn as (C, H, W) maps on the patch grid, labelled by module paths."""
    assert stage_modules(net("vit_b_16"))[:3] == ["conv_proj", "encoder", "encoder.layers.encoder_layer_0"]
    p = Deconvnet(net("vit_b_16"), rule="gradient").project(
        _image(), "encoder.layers.encoder_layer_2", channels=[3], keep_stages=True
    )
    assert [s.name for s in p.stages] == [
        "encoder.layers.encoder_layer_1",
        "encoder.layers.encoder_layer_0",
        "conv_proj",
        "input",
    ]
    assert [tuple(s.tensor.shape[2:]) for s in p.stages] == [(768, 4, 4)] * 3 + [(3, 64, 64)]


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("vit_b_16", ["conv_proj", "encoder.dropout", "encoder.layers.encoder_layer_0"]),
        ("swin_t", ["features.0", "features.1.0", "features.1.1"]),
        ("deit_tiny_distilled", ["patch_embed", "blocks.0.norm1", "blocks.0"]),
    ],
)
def test_the_hulls_of_token_layers_are_the_probe_s_fields(name, layers):
    """receptive_field takes a transformer layer's fields from the hulls (one forward): the same as the probe's
    (a backward per row and column of the grid), through scaled_dot_product_attention, nn.MultiheadAttention and
    Swin's windowed matmuls."""
    from deconvviz.engine.fields import _probe

    model = net(name)
    for layer in layers:
        hulls = receptive_field(model, layer, input_size=(64, 64))
        probe = _probe(model, layer, (64, 64), None, layout_of(model, layer, (64, 64)))
        assert torch.equal(hulls.rows, probe.rows) and torch.equal(hulls.cols, probe.cols), layer
