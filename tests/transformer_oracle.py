"""The transformer oracle: a copy of a vision transformer with every convention written out by hand, projected by
plain autograd.

Its attention modules recompute q, k and v from their own weights and detach the softmax weights (attention
fixed), its LayerNorms detach the standard deviation (std fixed), its squeeze-and-excitation gates are detached
(gate fixed), and its activations are autograd Functions with the rule's backward (oracle.HandRule). With
fixed=False nothing is detached and the activations are exact: then the copy's gradient is the plain gradient,
which checks the hand-written modules themselves. Covers torchvision's ViT (nn.MultiheadAttention), Swin and
Swin V2 (shifted windows, relative position bias, cosine attention), MaxViT (block and grid attention),
timm's Attention (fused or not: the copy writes it out either way), and transformers' ViT attention (eager or
SDPA) with its activation modules (GELUActivation, NewGELUActivation, ...).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from oracle import ACTIVATION_TYPES, HandAct, out_of_place
from torch import Tensor, nn


def weights(scores: Tensor, fixed: bool) -> Tensor:
    """Attention weights softmax(scores) over the last dim, held at their forward values when fixed."""
    a = torch.softmax(scores, dim=-1)
    return a.detach() if fixed else a


class Hand(nn.Module):
    """A module written out by hand around the original `m`; fixed: detach what its convention holds. Attributes it
    lacks are the original's (nn.TransformerEncoderLayer reads its parts' batch_first, eps, weights)."""

    def __init__(self, m: nn.Module, fixed: bool):
        super().__init__()
        self.m, self.fixed = m, fixed

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.m, name)


class HandMultiheadAttention(Hand):
    """torchvision ViT's self-attention (nn.MultiheadAttention without masks): q, k, v from in_proj, A v, out_proj."""

    def forward(self, query, key, value, need_weights=False, attn_mask=None, key_padding_mask=None, is_causal=False):
        assert query is key is value and not need_weights and self.m.in_proj_weight is not None
        assert attn_mask is None and key_padding_mask is None and not is_causal
        m = self.m
        x = query if m.batch_first else query.transpose(0, 1)  # (N, L, E)
        qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias).unflatten(-1, (3, m.num_heads, -1))
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (N, heads, L, d)
        a = weights(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), self.fixed)
        out = F.linear((a @ v).transpose(1, 2).flatten(2), m.out_proj.weight, m.out_proj.bias)
        return (out if m.batch_first else out.transpose(0, 1)), None


class HandTimmAttention(Hand):
    """timm's Attention (no qk-norm, no gate, no mask): the same sums whether the model fuses them or not."""

    def __init__(self, m: nn.Module, fixed: bool):
        assert isinstance(m.q_norm, nn.Identity) and isinstance(m.norm, nn.Identity) and m.gate is None
        super().__init__(m, fixed)

    def forward(self, x, attn_mask=None, is_causal=False):
        assert attn_mask is None and not is_causal
        m = self.m
        qkv = F.linear(x, m.qkv.weight, m.qkv.bias).unflatten(-1, (3, m.num_heads, m.head_dim))
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, heads, N, head_dim)
        a = weights(q @ k.transpose(-2, -1) * m.head_dim**-0.5, self.fixed)
        return F.linear((a @ v).transpose(1, 2).flatten(2), m.proj.weight, m.proj.bias)


def _bands(n: int, window: int, shift: int) -> Tensor:
    """The region of each row (or column) of a shifted padded map: 0 before the last window, 1 in the last window
    before the shift, 2 in the shift (rows that the cyclic shift brought from the other side)."""
    p = torch.arange(n)
    return (p >= n - window).long() + (p >= n - shift).long() if shift else torch.zeros(n, dtype=torch.long)


class HandSwinAttention(Hand):
    """torchvision's ShiftedWindowAttention and V2, written again: pad, cyclic shift, windows, scores (q kᵀ/√d, or
    V2's cosine similarity times exp(min(logit_scale, log 100))) + relative position bias, -100 between positions of
    different regions, softmax, A v, projection, windows back, shift back, crop."""

    def forward(self, x):
        m = self.m
        n, h, w, c = x.shape
        (wh, ww), heads = m.window_size, m.num_heads
        x = F.pad(x, (0, 0, 0, -w % ww, 0, -h % wh))
        hp, wp = x.shape[1:3]
        sh, sw = (0 if win >= size else s for s, win, size in zip(m.shift_size, m.window_size, (hp, wp), strict=True))
        x = torch.roll(x, (-sh, -sw), (1, 2))
        x = x.unflatten(1, (hp // wh, wh)).unflatten(3, (wp // ww, ww)).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(n, -1, wh * ww, c)  # (N, windows, window pixels, C)
        bias = m.qkv.bias
        if hasattr(m, "logit_scale"):  # V2: no key bias
            bias = torch.cat([bias[:c], torch.zeros_like(bias[c : 2 * c]), bias[2 * c :]])
        qkv = F.linear(x, m.qkv.weight, bias).unflatten(-1, (3, heads, c // heads))
        q, k, v = (qkv[..., i, :, :].transpose(-3, -2) for i in range(3))  # (N, windows, heads, pixels, d)
        if hasattr(m, "logit_scale"):
            scale = torch.clamp(m.logit_scale, max=math.log(100.0)).exp()
            scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * scale
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(c // heads)
        scores = scores + m.get_relative_position_bias()
        if sh or sw:
            region = _bands(hp, wh, sh)[:, None] * 3 + _bands(wp, ww, sw)[None, :]
            region = region.unflatten(0, (hp // wh, wh)).unflatten(2, (wp // ww, ww)).permute(0, 2, 1, 3)
            region = region.reshape(-1, wh * ww)  # (windows, pixels)
            apart = region[:, :, None] != region[:, None, :]
            scores = scores + torch.where(apart, -100.0, 0.0).to(scores.dtype)[None, :, None]
        out = (weights(scores, self.fixed) @ v).transpose(-3, -2).flatten(-2)  # (N, windows, pixels, C)
        out = F.linear(out, m.proj.weight, m.proj.bias)
        out = out.unflatten(1, (hp // wh, wp // ww)).unflatten(3, (wh, ww)).permute(0, 1, 3, 2, 4, 5)
        out = torch.roll(out.reshape(n, hp, wp, c), (sh, sw), (1, 2))
        return out[:, :h, :w]


class HandMaxViTAttention(Hand):
    """torchvision MaxViT's RelativePositionalMultiHeadAttention (block and grid attention alike), (B, G, P, D)."""

    def forward(self, x):
        m = self.m
        qkv = F.linear(x, m.to_qkv.weight, m.to_qkv.bias).unflatten(-1, (3, m.n_heads, m.head_dim))
        q, k, v = (qkv[..., i, :, :].transpose(-3, -2) for i in range(3))  # (B, G, heads, P, head_dim)
        scores = q @ k.transpose(-2, -1) * m.scale_factor + m.get_relative_positional_bias()
        out = (weights(scores, self.fixed) @ v).transpose(-3, -2).flatten(-2)
        return F.linear(out, m.merge.weight, m.merge.bias)


class HandHFAttention(Hand):
    """transformers' self-attention of ViT, DeiT, DINOv2 (q_proj, k_proj, v_proj, o_proj, no mask), written out
    whichever kernel the model runs (eager or SDPA): softmax(q kᵀ scaling) v, heads joined, o_proj; returns
    (output, None) as the module does."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        assert attention_mask is None
        m = self.m
        heads = (*hidden_states.shape[:-1], -1, m.head_dim)
        q, k, v = (f(hidden_states).view(heads).transpose(1, 2) for f in (m.q_proj, m.k_proj, m.v_proj))
        a = weights(q @ k.transpose(-2, -1) * m.scaling, self.fixed)
        return m.o_proj((a @ v).transpose(1, 2).flatten(2)), None


def hf_activation_types() -> tuple[type, ...]:
    """transformers' activation modules whose forward is a formula (GELUActivation, NewGELUActivation, ...)."""
    from transformers import activations

    names = "GELUActivation GELUTanh NewGELUActivation FastGELUActivation QuickGELUActivation MishActivation"
    return tuple(getattr(activations, n) for n in names.split() if hasattr(activations, n))


class HandLayerNorm(Hand):
    """LayerNorm over the last dims, the standard deviation detached when fixed."""

    def forward(self, x):
        m = self.m
        axes = tuple(range(-len(m.normalized_shape), 0))
        std = torch.sqrt(x.var(axes, unbiased=False, keepdim=True) + m.eps)
        out = (x - x.mean(axes, keepdim=True)) / (std.detach() if self.fixed else std)
        return out * m.weight + m.bias if m.weight is not None else out


class HandSqueezeExcitation(Hand):
    """torchvision's SqueezeExcitation, the gate detached when fixed."""

    def forward(self, x):
        g = self.m._scale(x)
        return (g.detach() if self.fixed else g) * x


def transformer_twin(
    model: nn.Module, rule: str, *, fixed: bool | None = None, attention: bool | None = None
) -> nn.Module:
    """A copy of the model with every attention, LayerNorm, squeeze-and-excitation and activation written out by
    hand; fixed (default: rule != "gradient") detaches std and gates, attention (default: fixed) the attention
    weights."""
    from timm.layers import Attention as TimmAttention
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    from torchvision.ops.misc import SqueezeExcitation

    fixed = rule != "gradient" if fixed is None else fixed
    attention = fixed if attention is None else attention
    attentions = (nn.MultiheadAttention, TimmAttention, ShiftedWindowAttention, RelativePositionalMultiHeadAttention)
    hf_acts: tuple[type, ...] = ()
    if any(type(m).__module__.startswith("transformers.") for m in model.modules()):
        from transformers.models.vit.modeling_vit import ViTAttention

        attentions += (ViTAttention,)
        hf_acts = hf_activation_types()
    hand = {
        **dict.fromkeys(attentions[4:], HandHFAttention),
        nn.MultiheadAttention: HandMultiheadAttention,
        TimmAttention: HandTimmAttention,
        ShiftedWindowAttention: HandSwinAttention,
        RelativePositionalMultiHeadAttention: HandMaxViTAttention,
        nn.LayerNorm: HandLayerNorm,
        SqueezeExcitation: HandSqueezeExcitation,
    }
    twin = copy.deepcopy(model).eval()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            kind = next((t for t in hand if isinstance(child, t)), None)
            if kind is SqueezeExcitation:
                swap(child)
            if kind is not None:
                setattr(parent, name, hand[kind](child, attention if kind in attentions else fixed))
            elif isinstance(child, ACTIVATION_TYPES) or type(child) in hf_acts:
                setattr(parent, name, HandAct(out_of_place(child), rule))
            else:
                swap(child)

    swap(twin)
    return twin


class _Reached(Exception):
    pass


def layer_of(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    """The layer's output for x, with its graph (the forward ends there); a tuple's first element (transformers'
    blocks return (hidden_states, attentions))."""
    got = []

    def hook(m, i, o):
        got.append(o[0] if isinstance(o, tuple) else o)
        raise _Reached

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    return got[0]


def hand_projection(twin: nn.Module, layer: str, x: Tensor, seeds: Tensor) -> Tensor:
    """Plain autograd through the twin from the layer's output, one backward per seed. seeds (K, *out.shape) ->
    (K, *x.shape)."""
    xs = x.clone().requires_grad_(True)
    out = layer_of(twin.eval(), layer, xs)
    return torch.stack([torch.autograd.grad(out, xs, s, retain_graph=True)[0] for s in seeds])
