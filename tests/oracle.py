"""The test oracle: captum's NeuronDeconvolution (NeuronGuidedBackprop, NeuronGradient for the other rules),
seeded with the selected activation values; and the seeded models that several test files check with it."""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
import torchvision
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


# --- the unpooling oracle: a copy of the model whose max-pools and ReLUs have hand-written backwards ---


def _pool_geometry(pool: nn.MaxPool2d) -> tuple:
    pair = torch.nn.modules.utils._pair
    return tuple(pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding, pool.dilation))


def unpool_by_loops(g: Tensor, pool: nn.MaxPool2d, size: tuple[int, int], how: str) -> Tensor:
    """Unpooling without switches, one tap of every window at a time. g (B, C, Ho, Wo) -> (B, C, *size).

    nearest: the value to every tap of its window; fixed: to tap (k - 1) // 2 only; bilinear: half-pixel
    centres, source row (r + 0.5) * Ho / H - 0.5 clamped at 0, blended with the next row (clamped at Ho - 1)."""
    b, c, ho, wo = g.shape
    h, w = size
    out = g.new_zeros(b, c, h, w)
    if how == "bilinear":

        def weights(n_out: int, n_in: int) -> Tensor:
            m = torch.zeros(n_out, n_in, dtype=g.dtype)
            for r in range(n_out):
                src = max((r + 0.5) * n_in / n_out - 0.5, 0.0)
                i0 = int(src)
                i1, lam = min(i0 + 1, n_in - 1), src - i0
                m[r, i0] += 1 - lam
                m[r, i1] += lam
            return m

        return weights(h, ho) @ g @ weights(w, wo).T
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_geometry(pool)
    for a in range(kh):
        for t in range(kw):
            if how == "fixed" and (a, t) != ((kh - 1) // 2, (kw - 1) // 2):
                continue
            rows = torch.arange(ho) * sh - ph + dh * a  # where tap (a, t) of window (i, j) lies
            cols = torch.arange(wo) * sw - pw + dw * t
            i, j = ((rows >= 0) & (rows < h)).nonzero()[:, 0], ((cols >= 0) & (cols < w)).nonzero()[:, 0]
            # one tap: distinct windows, distinct positions; taps of overlapping windows add up across the loop
            out[:, :, rows[i][:, None], cols[j][None, :]] += g[:, :, i[:, None], j[None, :]]
    return out


class _OraclePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pool, how):
        ctx.pool, ctx.how, ctx.size = pool, how, tuple(x.shape[-2:])
        return pool(x)

    @staticmethod
    def backward(ctx, g):
        return unpool_by_loops(g, ctx.pool, ctx.size, ctx.how), None, None


class _OracleReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule):
        ctx.rule = rule
        ctx.save_for_backward(x > 0)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (on,) = ctx.saved_tensors
        rectified = {"deconvnet": g.clamp_min(0), "guided": g.clamp_min(0) * on, "gradient": g * on, "linear": g}
        return rectified[ctx.rule], None


class OraclePool(nn.Module):
    def __init__(self, pool: nn.MaxPool2d, how: str):
        super().__init__()
        self.pool, self.how = pool, how

    def forward(self, x):
        if self.how == "switches":
            return self.pool(x)  # autograd's own max-pool backward: the switches
        return _OraclePool.apply(x, self.pool, self.how)


class OracleReLU(nn.Module):
    def __init__(self, rule: str):
        super().__init__()
        self.rule = rule

    def forward(self, x):
        return _OracleReLU.apply(x, self.rule)


def unpool_oracle(
    model: nn.Module, layer: str, x: Tensor, channels: Tensor, positions: Tensor | None, rule: str, how: str
) -> Tensor:
    """Projections through a copy of the model whose nn.MaxPool2d and nn.ReLU modules are OraclePool and
    OracleReLU, seeded (like `oracle`) with the selected activations of `layer`. Returns (N, K, C, H, W)."""
    twin = copy.deepcopy(model).eval()
    for name, m in list(twin.named_modules()):
        if isinstance(m, (nn.MaxPool2d, nn.ReLU)) and name:
            parent, _, leaf = name.rpartition(".")
            owner = twin.get_submodule(parent) if parent else twin
            setattr(owner, leaf, OraclePool(m, how) if isinstance(m, nn.MaxPool2d) else OracleReLU(rule))
    act = layer_activation(model, dict(model.named_modules())[layer], x)
    n, k = channels.shape
    seed = torch.zeros(n, k, *act.shape[1:])
    for i in range(n):
        for j in range(k):
            c = channels[i, j]
            if positions is None:
                seed[i, j, c] = act[i, c]
            else:
                seed[i, j, c].view(-1)[positions[i, j]] = act[i, c].reshape(-1)[positions[i, j]]
    got = []
    target = twin.get_submodule(layer)
    h = target.register_forward_hook(lambda m, i, o: got.append(o))
    out = torch.zeros(n, k, *x.shape[1:])
    try:
        for j in range(k):
            xs = x.clone().requires_grad_(True)
            got.clear()
            twin(xs)
            out[:, j] = torch.autograd.grad(got[0], xs, seed[:, j])[0]
    finally:
        h.remove()
    return out


# --- seeded models checked against the oracle by several test files

VGGS = ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, and BatchNorm statistics far from (0, 1) so a wrong BN transpose shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def vgg(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomized(torchvision.models.get_model(name))


class Residual(nn.Module):
    """Conv stem, a residual block (addition), max-pool, a second block; ReLUs as modules or functional."""

    def __init__(self, relu: str = "module"):
        super().__init__()
        self.relu_kind = relu
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a1, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # overlapping
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.b1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.r1, self.r2, self.r3, self.r4 = nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU(), nn.ReLU()
        self.shared = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def act(self, x, module):
        if self.relu_kind == "module":
            return module(x)
        if self.relu_kind == "shared":
            return self.shared(x)
        return {0: F.relu, 1: torch.relu, 2: lambda t: t.relu(), 3: lambda t: F.relu(t, inplace=True)}[
            [self.r1, self.r2, self.r3, self.r4].index(module)
        ](x)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)), self.r1)
        x = self.act(x + self.a2(self.act(self.a1(x), self.r2)), self.r3)
        x = self.pool(x)
        x = self.act(self.down(x) + self.b1(x), self.r4)
        return self.head(x)


class Concat(nn.Module):
    """Inception-like: two branches of different kernels, concatenated."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 5, padding=2))
        self.ra, self.rb = nn.ReLU(), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.c = nn.Conv2d(8, 6, 3)
        self.rc = nn.ReLU()

    def forward(self, x):
        y = torch.cat([self.ra(self.a(x)), self.rb(self.b(x))], dim=1)
        return self.rc(self.c(self.pool(y)))


def seeded(model):
    torch.manual_seed(0)
    m = type(model)(*getattr(model, "_args", ()))
    for p in m.parameters():
        p.data.normal_(0, 0.5)
    return m.eval()


# ---- hand-written conventions: the same model with each activation rule as a torch.autograd.Function and
# the gate and normalization conventions written with detach(); projected by plain autograd ----


class HandRule(torch.autograd.Function):
    """f forward; backward as the rule tables say. deconvnet: max(s, 0); guided: torch's own backward of f
    fed max(s, 0), i.e. max(s, 0) f'(x); gradient: torch's own backward of f, s f'(x); linear: s."""

    @staticmethod
    def forward(ctx, x, f, rule):
        ctx.save_for_backward(x)
        ctx.f, ctx.rule = f, rule
        return f(x)

    @staticmethod
    def backward(ctx, s):
        if ctx.rule == "linear":
            return s, None, None
        if ctx.rule == "deconvnet":
            return s.clamp(min=0), None, None
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.f(xd), xd, s.clamp(min=0) if ctx.rule == "guided" else s)
        return g, None, None


class HandAct(nn.Module):
    """An activation module whose backward is HandRule's."""

    def __init__(self, f, rule: str):
        super().__init__()
        self.f, self.rule = f, rule

    def forward(self, x):
        return HandRule.apply(x, self.f, self.rule)


ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
                    nn.SiLU, nn.Hardswish, nn.Mish, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid, nn.LogSigmoid,
                    nn.Softsign, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink)  # fmt: skip


def out_of_place(m: nn.Module) -> nn.Module:
    m = copy.deepcopy(m)
    if hasattr(m, "inplace"):
        m.inplace = False
    return m


def hand_layer_norm(x: Tensor, dims: int, weight, bias, eps: float) -> Tensor:
    """LayerNorm over the last `dims` dims with the std fixed (detach), centring and affine kept."""
    axes = tuple(range(-dims, 0))
    centred = x - x.mean(axes, keepdim=True)
    out = centred / torch.sqrt(x.var(axes, unbiased=False, keepdim=True) + eps).detach()
    return out * weight + bias if weight is not None else out


def hand_group_norm(x: Tensor, groups: int, weight, bias, eps: float) -> Tensor:
    g = x.reshape(x.shape[0], groups, -1)
    out = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + eps).detach()
    out = out.reshape(x.shape)
    shape = (1, -1, *[1] * (x.dim() - 2))
    return out * weight.view(shape) + bias.view(shape) if weight is not None else out


class _HandLayerNorm(nn.Module):
    def __init__(self, m: nn.LayerNorm, channels_first: bool):
        super().__init__()
        self.m, self.channels_first = m, channels_first

    def forward(self, x):
        m = self.m
        if self.channels_first:  # torchvision's LayerNorm2d
            x = x.permute(0, 2, 3, 1)
        y = hand_layer_norm(x, len(m.normalized_shape), m.weight, m.bias, m.eps)
        return y.permute(0, 3, 1, 2) if self.channels_first else y


class _HandGroupNorm(nn.Module):
    def __init__(self, m: nn.GroupNorm):
        super().__init__()
        self.m = m

    def forward(self, x):
        return hand_group_norm(x, self.m.num_groups, self.m.weight, self.m.bias, self.m.eps)


class _HandSE(nn.Module):
    """torchvision's SqueezeExcitation with the gate fixed: scale.detach() * input."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m._scale(x).detach() * x


class _ModuleReLUConv(nn.Module):
    """googlenet/inception BasicConv2d with its functional ReLU as a module (for captum, zennit, HandAct)."""

    def __init__(self, m: nn.Module, act: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = m.conv, m.bn, act

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def hand_twin(model: nn.Module, rule: str, activation=None) -> nn.Module:
    """A copy of the model with the rule written out by hand: every activation module a HandAct (or
    `activation(module)`, e.g. for zennit), gates and std fixed with detach() (deconvnet and guided only)."""
    from torchvision.models.convnext import LayerNorm2d
    from torchvision.models.googlenet import BasicConv2d
    from torchvision.models.inception import BasicConv2d as InceptionConv
    from torchvision.ops.misc import SqueezeExcitation

    twin = copy.deepcopy(model).eval()
    make = activation or (lambda m: HandAct(out_of_place(m), rule))
    conventions = rule != "gradient"

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, (BasicConv2d, InceptionConv)):
                new = _ModuleReLUConv(child, make(nn.ReLU()))
            elif isinstance(child, SqueezeExcitation) and conventions:
                swap(child)
                new = _HandSE(child)
            elif isinstance(child, (nn.LayerNorm, LayerNorm2d)) and conventions:
                new = _HandLayerNorm(child, isinstance(child, LayerNorm2d))
            elif isinstance(child, nn.GroupNorm) and conventions:
                new = _HandGroupNorm(child)
            elif isinstance(child, ACTIVATION_TYPES):
                new = make(child)
            else:
                swap(child)
                continue
            setattr(parent, name, new)

    swap(twin)
    return twin


def seeds_for(act: Tensor, channels: Tensor, positions: Tensor | None) -> Tensor:
    """(N*K, ...) seeds: each selected map (positions None) or its strongest activation, as oracle() builds them."""
    n, k = channels.shape
    seed = torch.zeros(n * k, *act.shape[1:], dtype=act.dtype)
    flat, src = seed.view(n * k, act.shape[1], -1), act.reshape(n, act.shape[1], -1)
    for i in range(n):
        for j in range(k):
            c = channels[i, j]
            if positions is None:
                flat[i * k + j, c] = src[i, c]
            else:
                flat[i * k + j, c, positions[i, j]] = src[i, c, positions[i, j]]
    return seed


def autograd_projection(twin: nn.Module, layer: str, x: Tensor, channels: Tensor, positions: Tensor | None,
                        seed_model: nn.Module | None = None) -> Tensor:  # fmt: skip
    """Plain autograd through `twin` (its rules written out by hand) from the layer, seeded with the selected
    activations of `seed_model` (default: twin). Returns (N, K, C, H, W)."""
    mods = dict((seed_model or twin).named_modules())
    act = layer_activation(seed_model or twin, mods[layer], x)
    n, k = channels.shape
    seed = seeds_for(act, channels, positions)
    got = []
    h = dict(twin.named_modules())[layer].register_forward_hook(lambda m, i, o: got.append(o))
    xs = x.repeat_interleave(k, dim=0).clone().requires_grad_(True)
    try:
        twin.eval()(xs)
    finally:
        h.remove()
    (g,) = torch.autograd.grad((got[0] * seed).sum(), xs)
    return g.unflatten(0, (n, k))


def zennit_projection(model: nn.Module, layer: str, x: Tensor, channels: Tensor, positions: Tensor | None,
                      rule: str, twin: nn.Module | None = None) -> Tensor:  # fmt: skip
    """zennit's ReLUDeconvNet / ReLUGuidedBackprop put on every activation module of a hand twin (gates and std
    fixed by detach(); `twin`: one made by hand_twin(model, rule, activation=out_of_place)), projected by
    autograd with zennit's hooks. Returns (N, K, C, H, W)."""
    from zennit.rules import ReLUDeconvNet, ReLUGuidedBackprop

    twin = twin if twin is not None else hand_twin(model, rule, activation=out_of_place)
    hooks = []
    handles = []
    for m in twin.modules():
        if isinstance(m, ACTIVATION_TYPES):
            hook = (ReLUDeconvNet if rule == "deconvnet" else ReLUGuidedBackprop)()
            hooks.append(hook)
            handles.append(hook.register(m))
    try:
        return autograd_projection(twin, layer, x, channels, positions, seed_model=model)
    finally:
        for h in handles:
            h.remove()


def gradient_support(model, layer, x, i, j):
    """Bounding box (top, bottom, left, right; half-open) of the input pixels where position (i, j)'s gradient is
    nonzero, by plain autograd."""
    got = []
    h = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, o: got.append(o))
    xx = x.clone().requires_grad_(True)
    try:
        model(xx)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(got[0][0, :, i, j].sum(), xx)
    hit = g[0].abs().sum(0) > 0
    rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
