"""The "attention fixed" convention: attention's weights held at their forward values, the signal back through
the value path only.

Deconvnet, guided backprop and the linear rule have no rule for a softmax of the signal. In attention,
out = A v with A = softmax(q kᵀ/√d + bias), they follow Ali et al. (ICML 2022, "XAI for Transformers": the
q·k softmax detached) and LXT's CP-LRP: A is fixed like a max-pool's switches, and the signal s arriving at
the output goes back as s_v = Aᵀ s, then through the value and output projections. The gradient rule is
exact and none of this applies to it. Three forms reach it (rectified._RectifyReLUs routes them here):

- a product (matmul, @, bmm, einsum, *) of softmax weights of the signal with another signal: the weights
  detached (torchvision Swin and Swin V2, MaxViT, timm's Attention with fused_attn off);
- F.scaled_dot_product_attention, any backend: the kernel's own output, backward Aᵀ s (_FixedAttention);
- F.multi_head_attention_forward (nn.MultiheadAttention, torchvision's ViT), whose inner calls a
  TorchFunctionMode does not see: run with query and key detached.

A softmax of the signal used any other way keeps its gradient and is refused by the path check.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

CONVENTION = "attention fixed"

# Products whose one operand may be attention weights (A @ v, einsum("...ij,...jd", A, v), A * v).
PRODUCTS = {
    Tensor.__matmul__,
    Tensor.__rmatmul__,
    Tensor.matmul,
    torch.matmul,
    torch.bmm,
    Tensor.bmm,
    torch.einsum,
    Tensor.__mul__,
    Tensor.__rmul__,
    Tensor.mul,
    torch.mul,
}
# Autograd nodes that only move or copy their one input: a softmax seen through them is still the weights.
_PASSTHROUGH = set(
    "View UnsafeView Reshape ReshapeAlias Alias Transpose T Permute Expand Clone ToCopy Squeeze Unsqueeze "
    "Select Slice Unbind Split SplitWithSizes Narrow".split()
)
# The fused kernels' backward nodes: (query, key, value, ...) in this order for every backend.
KERNELS = re.compile(r"^(ScaledDotProduct\w*Attention\w*|\w*FlashAttention\w*|\w*EfficientAttention\w*)$")


def _op(node) -> str:
    return re.sub(r"Backward\d*$", "", type(node).__name__)


def weights_node(t: Tensor):
    """The softmax node whose output t is, seen through moves and copies (dropout in eval is t itself), or None."""
    node = t.grad_fn
    while node is not None and _op(node) in _PASSTHROUGH:
        feeding = [n for n, _ in node.next_functions if n is not None]
        node = feeding[0] if len(feeding) == 1 else None
    return node if node is not None and _op(node) in ("Softmax", "SafeSoftmax") else None


def fixed_product(func, args: tuple, kwargs: dict, *, signal: Callable, signal_node: Callable) -> Tensor | None:
    """A product of attention weights (a softmax of the signal) with another signal, the weights detached; None
    when it is not one (then a softmax on the signal's path stays and is refused)."""
    if "out" in kwargs:
        return None
    flat, spec = tree_flatten((args, kwargs))
    at = [i for i, a in enumerate(flat) if isinstance(a, Tensor)]
    if len(at) != 2:
        return None
    weights = [i for i in at if (node := weights_node(flat[i])) is not None and signal_node(node)]
    if len(weights) != 1 or not signal(flat[sum(at) - weights[0]]):
        return None  # no weights, weights of weights, or weights times a constant: not attention
    flat[weights[0]] = flat[weights[0]].detach()
    args, kwargs = tree_unflatten(flat, spec)
    return func(*args, **kwargs)


class _FixedAttention(torch.autograd.Function):
    """F.scaled_dot_product_attention's forward (the kernel's own numbers) whose backward passes the signal to the
    values only, with A fixed: s_v = Aᵀ s. A comes from the same kernel with the identity as values (A I = A), so
    masks, is_causal, scale and enable_gqa mean exactly what the kernel makes of them."""

    @staticmethod
    def forward(ctx, v: Tensor, q: Tensor, k: Tensor, options: dict) -> Tensor:
        out = F.scaled_dot_product_attention(q, k, v, **options)
        n = k.shape[-2]
        eye = torch.eye(n, dtype=v.dtype, device=v.device).expand(*k.shape[:-1], n)
        ctx.save_for_backward(F.scaled_dot_product_attention(q, k, eye, **options))  # A: (..., Hq, L, S)
        ctx.v_shape = v.shape
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple:
        (weights,) = ctx.saved_tensors
        gv = weights.transpose(-2, -1) @ g
        heads, kv_heads = weights.shape[-3] if weights.dim() > 2 else 1, ctx.v_shape[-3] if len(ctx.v_shape) > 2 else 1
        if heads != kv_heads:  # grouped-query attention: query head h reads key/value head h // (heads / kv_heads)
            gv = gv.unflatten(-3, (kv_heads, heads // kv_heads)).sum(-3)
        return gv.sum_to_size(ctx.v_shape), None, None, None


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")


def fixed_sdpa(args: tuple, kwargs: dict, *, signal: Callable) -> Tensor | None:
    """F.scaled_dot_product_attention as _FixedAttention when its weights depend on the signal and its values
    carry it; None otherwise (no signal in the weights: linear as it is; dropout: a random forward, refused)."""
    a = dict(zip(_SDPA_ARGS, args, strict=False)) | kwargs
    q, k, v, mask = a.pop("query"), a.pop("key"), a.pop("value"), a.get("attn_mask")
    if a.get("dropout_p", 0.0) or not signal(v) or not any(signal(t) for t in (q, k, mask)):
        return None
    if isinstance(mask, Tensor):
        a["attn_mask"] = mask.detach()
    return _FixedAttention.apply(v, q.detach(), k.detach(), a)


_MHA_ARGS = tuple(inspect.signature(F.multi_head_attention_forward).parameters)


def fixed_multi_head_attention(func, args: tuple, kwargs: dict, *, signal: Callable) -> tuple | None:
    """F.multi_head_attention_forward with query and key (and masks, static_k) detached, so that only the values
    carry the signal; None when its weights carry no signal or its values none. It runs the path that writes
    softmax and bmm out (need_weights), whose backward batches over seeds, where the fused kernel's loops. Weights
    the caller asked for are computed again with their gradient: a use of them on the signal's path is refused."""
    a = dict(zip(_MHA_ARGS, args, strict=False)) | kwargs
    values = a.get("static_v") if a.get("static_v") is not None else a["value"]
    weighing = ("query", "key", "static_k", "attn_mask", "key_padding_mask")
    if not signal(values) or not any(signal(a.get(n)) for n in weighing):
        return None
    fixed = {n: t.detach() if n in weighing and isinstance(t, Tensor) else t for n, t in a.items()}
    out, _ = func(**fixed | {"need_weights": True})
    if not a.get("need_weights", True):
        return out, None
    return out, func(*args, **kwargs)[1]
