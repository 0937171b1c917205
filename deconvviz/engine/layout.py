"""How a layer lays out its feature maps: planes (N, C, H, W), tokens on a patch grid (N, P + H*W, C) or
channels last (N, H, W, C). Decided once per (model, layer) from the network itself, never from a square root.

Map c of a token layer is tokens[:, P:, c] in the patch embedding's row-major order; the P prefix tokens
(class, distillation, registers) are no grid positions, and can be selected alone (`Layout.for_token`). Map c
of a channels-last layer (Swin's blocks, ConvNeXt's MLPs) is out[..., c]. How the layout is found:
- the axes of the output that follow the input's height and width, from two more shape-only runs (meta device)
  with the height, then the width, doubled (a model that runs at one input size only: see below);
- tokens: the grid is the output grid of the patch embedding, the last convolution that runs before the layer,
  and the prefix is what the model declares (timm's num_prefix_tokens, cls_token, dist_token, reg_token;
  torchvision's class_token; transformers' embeddings.cls_token, distillation_token, register_tokens), placed
  first as the libraries place them; a grid a model names in its blocks' arguments (transformers' Swin
  `input_dimensions`, SegFormer's `height` and `width`) is the grid of the tokens it holds, with no prefix;
- a model that runs at one input size only: a 3-d output is planes if its last two axes are a grid of some
  convolution or pool of the model and its first two are none, channels last the other way round.
Anything else cannot be decided for sure and is refused in one line, never guessed.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from weakref import WeakKeyDictionary

from torch import Tensor, nn

from ..errors import LayerError, SelectionError
from .layers import ModuleOutput, module_outputs

PLANES, TOKENS, CHANNELS_LAST, UNKNOWN = "planes", "tokens", "channels-last", "unknown"
# modules whose 3-d output is (C, H, W) by their definition
_PLANAR = (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Layout:
    """Where a layer's feature maps lie in its output. kind: "planes" (N, C, *spatial), "tokens" (N, P + H*W, C),
    "channels-last" (N, H, W, C), or "unknown" (why: `source`). grid: the tokens' (H, W); prefix: the names of the
    P prefix tokens in order ("cls", "dist", "reg0", ...); token: the index of a prefix token selected alone (its
    maps are then 1x1); source: what the layout was read from, in words."""

    kind: str = PLANES
    grid: tuple[int, int] | None = None
    prefix: tuple[str, ...] = ()
    token: int | None = None
    source: str = ""

    @property
    def on_grid(self) -> bool:
        """Whether positions are the layer's own grid positions (a prefix token selected alone has none)."""
        return self.kind != UNKNOWN and self.token is None

    def check(self, layer: str) -> None:
        if self.kind == UNKNOWN:
            raise LayerError(f"layer '{layer}': {self.source}", about="layer")

    def maps(self, out: Tensor, layer: str = "") -> Tensor:
        """The layer's output (N, ...) as feature maps (N, C, *spatial), differentiable (views and an index)."""
        self.check(layer)
        if self.kind == PLANES:
            return out
        if self.kind == CHANNELS_LAST:
            return out.movedim(-1, 1)
        if self.token is not None:
            return out[:, self.token, :, None, None]
        return out[:, len(self.prefix) :, :].transpose(1, 2).unflatten(2, self.grid)

    def restore(self, maps: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Feature maps (B, C, *spatial) put back in the layer's own layout (B, *shape); prefix tokens (or, for a
        token selected alone, every other token) get zeros."""
        if self.kind == PLANES:
            return maps
        if self.kind == CHANNELS_LAST:
            return maps.movedim(1, -1)
        out = maps.new_zeros(len(maps), *shape)
        if self.token is not None:
            out[:, self.token] = maps[:, :, 0, 0]
        else:
            out[:, len(self.prefix) :] = maps.flatten(2).transpose(1, 2)
        return out

    def map_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-image shape of the feature maps (C, *spatial) of an output of per-image `shape`."""
        if self.kind == CHANNELS_LAST:
            return (shape[-1], *shape[:-1])
        if self.kind == TOKENS:
            return (shape[-1], 1, 1) if self.token is not None else (shape[-1], *self.grid)
        return tuple(shape)

    def for_token(self, token: str | int, layer: str = "") -> Layout:
        """This layout with one prefix token selected alone: by name ("cls", "dist", "reg0") or index 0..P-1."""
        if self.kind != TOKENS or not self.prefix:
            what = "its tokens all lie on the patch grid" if self.kind == TOKENS else f"its output is {self.kind}"
            raise SelectionError(
                f"token {token!r} needs a layer with prefix tokens (class, distillation, register), and layer "
                f"'{layer}' has none ({what}); leave token out",
                about="token",
            )
        names = {name: i for i, name in enumerate(self.prefix)}
        whole = isinstance(token, numbers.Integral) and not isinstance(token, bool)
        if isinstance(token, str) and token.isdigit():
            token, whole = int(token), True
        if whole and 0 <= int(token) < len(self.prefix):
            return replace(self, token=int(token))
        if isinstance(token, str) and token in names:
            return replace(self, token=names[token])
        valid = ", ".join([*self.prefix, f"0..{len(self.prefix) - 1}"])
        raise SelectionError(f"unknown token {token!r} of layer '{layer}'; its prefix tokens: {valid}", about="token")

    def describe(self, shape: tuple[int, ...]) -> str:
        """In words, for a table: "tokens 1+4x4 (cls)", "channels-last 8x8", "planes"."""
        if self.kind == TOKENS:
            grid = "x".join(map(str, self.grid))
            return f"tokens {len(self.prefix)}+{grid} ({', '.join(self.prefix)})" if self.prefix else f"tokens {grid}"
        if self.kind == CHANNELS_LAST:
            return "channels-last " + "x".join(map(str, shape[:-1]))
        return self.kind


_KNOWN: WeakKeyDictionary = WeakKeyDictionary()  # model -> {(size, channels, structure): layouts}


def layouts(model: nn.Module, size: tuple[int, int], *, channels: int | None = None) -> dict[str, Layout]:
    """The layout of every module that runs once and returns a tensor, for an input of `size` (H, W): three
    shape-only runs on the meta device (the model itself and its weights untouched), once per model, input size
    and set of modules. {} where the model cannot run on such an input at all."""
    key = (tuple(size), channels, tuple((n, type(m)) for n, m in model.named_modules()))
    known = _KNOWN.setdefault(model, {})
    if key not in known:
        known[key] = _layouts(model, tuple(size), channels)
    return known[key]


def _layouts(model: nn.Module, size: tuple[int, int], channels: int | None) -> dict[str, Layout]:
    try:
        runs = module_outputs(model, size, channels)
    except Exception:  # noqa: BLE001 - input the model refuses: its own forward says why (the caller's check)
        return {}
    h, w = size
    taller, wider = (_shapes(model, s, channels) for s in ((2 * h, w), (h, 2 * w)))
    grids = _grids(runs)
    declared = _declared_prefix(model)
    told: dict[tuple[int, int], str] = {}
    for r in runs:
        if r.grid is not None:
            told.setdefault(r.grid, r.name)
    out = {}
    for i, r in enumerate(runs):
        if r.runs != 1 or not r.shape:
            continue
        if len(r.shape) == 2:
            out[r.name] = _told(r, told) or _tokens(r, runs[:i], declared, taller)
        elif len(r.shape) == 3:
            moved = [_moved(r.shape, other.get(r.name)) if other is not None else None for other in (taller, wider)]
            out[r.name] = _planes_or_last(r, moved, grids)
        else:
            out[r.name] = Layout(PLANES, source="(C,) or (C, *spatial)")
    return out


def layout_of(model: nn.Module, name: str, size: tuple[int, int], *, channels: int | None = None) -> Layout:
    """The layout of module `name` (a path `resolve` returned) for an input of `size`; planes for a module that
    does not run once (the caller refuses it for that reason)."""
    return layouts(model, size, channels=channels).get(name, Layout())


def _shapes(model: nn.Module, size: tuple[int, int], channels: int | None) -> dict[str, tuple[int, ...]] | None:
    """Output shapes by module path for an input of `size`, or None for a model that cannot run at that size."""
    try:
        return {r.name: r.shape for r in module_outputs(model, size, channels) if r.runs == 1}
    except Exception:  # noqa: BLE001 - a model that asserts its input size (ViT) or fails otherwise: no answer
        return None


def _moved(shape: tuple[int, ...], other: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The axes whose size differs between two runs (None: the module gave no comparable output)."""
    if other is None or len(other) != len(shape):
        return None
    return tuple(i for i, (a, b) in enumerate(zip(shape, other, strict=True)) if a != b)


def _grids(runs: list[ModuleOutput]) -> set[tuple[int, int]]:
    """The (H, W) grids of the model's convolutions and pools (modules whose output is planes by definition)."""
    return {r.shape[1:] for r in runs if isinstance(r.module, _PLANAR) and len(r.shape) == 3}


def _planes_or_last(r: ModuleOutput, moved: list, grids: set) -> Layout:
    """A 3-d output: planes (C, H, W) or channels last (H, W, C), from which axes follow the input's size."""
    if isinstance(r.module, _PLANAR):
        return Layout(PLANES, source=f"{type(r.module).__name__} output")
    if None not in moved:
        rows, cols = moved
        if not rows and not cols:  # a fixed-size map (an adaptive pool's, a pooled 1x1)
            return Layout(PLANES, source="fixed-size (C, H, W)")
        if rows == (1,) and cols == (2,):
            return Layout(PLANES, source="axes 1, 2 follow the input's height and width")
        if rows == (0,) and cols == (1,):
            return Layout(CHANNELS_LAST, source="axes 0, 1 follow the input's height and width")
        return Layout(
            UNKNOWN,
            source=f"its output {r.shape} is no feature map on the input's grid (axes {rows} follow the input's "
            f"height, {cols} its width: windows or partitions?); choose a layer whose output is (C, H, W), "
            "(H, W, C) or tokens",
        )
    last, first = r.shape[1:] in grids, r.shape[:2] in grids
    if last and not first:
        return Layout(PLANES, source="axes 1, 2 are a grid of the model's convolutions")
    if first and not last:
        return Layout(CHANNELS_LAST, source="axes 0, 1 are a grid of the model's convolutions")
    return Layout(
        UNKNOWN,
        source=f"the model runs at one input size only, and its output {r.shape} cannot be told (C, H, W) or "
        "(H, W, C) from the grids of its convolutions; choose a convolution's output",
    )


def _declared_prefix(model: nn.Module) -> tuple[str, ...] | None:
    """The names of the prefix tokens the model declares, in the order timm and torchvision place them, or None
    where it declares nothing about them; a model that declares none itself may hold an embedding that does, as
    transformers' do (`_hf_prefix`)."""
    own = _own_prefix(model)
    if own is not None:
        return own
    return next((found for m in model.modules() if (found := _hf_prefix(m)) is not None), None)


def _hf_prefix(module: nn.Module) -> tuple[str, ...] | None:
    """The prefix tokens a transformers embedding declares, in the order its forward places them: `cls_token`,
    then DeiT's `distillation_token` ([cls, dist, patches]), then Dinov2WithRegisters' `register_tokens`
    (1, R, C) ([cls, reg0..reg(R-1), patches]); None where it holds no `cls_token`."""
    if not isinstance(getattr(module, "cls_token", None), Tensor):
        return None
    names = ["cls"]
    if isinstance(getattr(module, "distillation_token", None), Tensor):
        names.append("dist")
    reg = getattr(module, "register_tokens", None)
    if isinstance(reg, Tensor):
        names += [f"reg{i}" for i in range(reg.shape[1])]
    return tuple(names)


def _own_prefix(model: nn.Module) -> tuple[str, ...] | None:
    names: list[str] = []
    if isinstance(getattr(model, "class_token", None), Tensor) or isinstance(getattr(model, "cls_token", None), Tensor):
        names.append("cls")
    if isinstance(getattr(model, "dist_token", None), Tensor):
        names.append("dist")
    reg = getattr(model, "reg_token", None)
    if isinstance(reg, Tensor):
        names += [f"reg{i}" for i in range(reg.shape[1])]
    count = getattr(model, "num_prefix_tokens", None)
    if isinstance(count, int):
        return tuple(names) if count == len(names) else tuple(f"prefix{i}" for i in range(count))
    return tuple(names) if names else None


def _told(r: ModuleOutput, told: dict[tuple[int, int], str]) -> Layout | None:
    """A 2-d output (T, C) on a grid the model names in its blocks' arguments (transformers' Swin and SegFormer:
    `input_dimensions`, `height` and `width`): the module's own grid if it holds T tokens, else the one grid told
    to any module that holds T; None where none or two do."""
    t = r.shape[0]
    if r.grid is not None and r.grid[0] * r.grid[1] == t:
        return Layout(TOKENS, grid=r.grid, source=f"grid {r.grid[0]}x{r.grid[1]} named in its own arguments")
    fits = [g for g in told if g[0] * g[1] == t]
    if len(fits) != 1:
        return None
    (h, w), where = fits[0], told[fits[0]]
    return Layout(TOKENS, grid=(h, w), source=f"grid {h}x{w} named in the arguments of '{where}'")


def _tokens(r: ModuleOutput, before: list[ModuleOutput], declared: tuple[str, ...] | None, taller) -> Layout:
    """A 2-d output (T, C): tokens on the grid of the last convolution that ran before it, with the model's
    declared prefix tokens first; planes (C, L) where no 2-d convolution ran before it (a 1-d network)."""
    embed = next((e for e in reversed(before) if isinstance(e.module, nn.Conv2d) and len(e.shape) == 3), None)
    if embed is None:
        return Layout(PLANES, source="(C, L): no 2-d convolution before it")
    t, (h, w) = r.shape[0], embed.shape[1:]
    prefix = t - h * w
    names = () if prefix == 0 else declared
    if names is None or len(names) != prefix:
        said = "declares no" if declared is None else f"declares {len(declared)}"
        return Layout(
            UNKNOWN,
            source=f"its {t} tokens are not the {h}x{w} patch grid of '{embed.name}' (and the model {said} prefix "
            f"tokens): where its {prefix} other tokens lie cannot be told; choose '{embed.name}' or a layer "
            "whose tokens are the grid and the model's prefix tokens",
        )
    if taller is not None and taller.get(embed.name) and taller.get(r.name):
        th, tw = taller[embed.name][1:]
        if taller[r.name][0] != prefix + th * tw:
            return Layout(UNKNOWN, source=f"its tokens do not follow the patch grid of '{embed.name}' with the input")
    named = f", prefix {', '.join(names)}" if names else ""
    return Layout(TOKENS, grid=(h, w), prefix=tuple(names), source=f"patch grid {h}x{w} of '{embed.name}'{named}")
