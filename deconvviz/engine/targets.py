"""What to look at, said in the image's terms: a region, a point or a class, resolved into the channels and
positions of a layer that `select` then keeps.

Coordinates are continuous input pixels of the preprocessed image: pixel (x, y) covers [x, x+1) x [y, y+1),
so Box.pixels(0, 0, 224, 224) is a whole 224x224 input. Boxes and points say their unit (Box.pixels,
Box.fractions, Point.pixels, Point.fractions); a plain tuple is refused, never guessed. A layer position
belongs to a region when the centre of its receptive field (unclipped by the image's edge) lies inside:
x0 <= centre < x1, y0 <= centre < y1.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ImageError, LayerError, SelectionError
from ..images import DEFAULT_IMAGE, resize_crop_geometry
from .boxes import Box, Point, point, region_box
from .fields import receptive_field
from .forward import forward_chain, output_shapes
from .hooks import evaluating, forward_hooks, hidden_states, with_hidden_states
from .layers import receptive_fields, step_index
from .layout import CHANNELS_LAST, TOKENS, Layout, layout_of
from .model import ModelView, view_of
from .scores import ClassScore, ScoreRecord
from .selection import strongest_channels, strongest_in_region


def _numbers(values, count: int, what: str) -> list[float]:
    values = values.tolist() if isinstance(values, Tensor) else values
    try:
        vals = list(values)
    except TypeError:
        vals = []
    ok = len(vals) == count and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in vals)
    if not ok:
        form = "x0,y0,x1,y1" if count == 4 else "x,y"
        raise SelectionError(f"{what} must be {count} numbers {form}, got {values!r}")
    return vals


def sidecar(image: str | os.PathLike | None) -> Path:
    """Where an image's named regions live: the JSON file beside it, `photo.jpg.json`."""
    return Path(f"{Path(image if image is not None else DEFAULT_IMAGE)}.json")


def named_regions(image: str | os.PathLike | None, size: int | None = 224) -> dict[str, Box]:
    """The named boxes of an image's sidecar JSON ({"name": [x0, y0, x1, y1]} in the image's own pixels), mapped
    through the same resize and centre crop as the image (`to_batch(..., size)`). No sidecar: {}."""
    from PIL import Image, ImageOps

    path = sidecar(image)
    if not path.is_file():
        return {}
    try:
        boxes = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImageError(
            f"cannot read the regions file '{path}': {e}; it must be JSON such as {{\"bicycle\": [x0, y0, x1, y1]}}"
        ) from None
    if not isinstance(boxes, dict):
        raise ImageError(f"regions file '{path}' must hold an object such as {{\"bicycle\": [x0, y0, x1, y1]}}")
    with Image.open(Path(image if image is not None else DEFAULT_IMAGE)) as img:
        w, h = ImageOps.exif_transpose(img).size  # as load_image turns it
    nh, nw, top, left = resize_crop_geometry(h, w, size) if size is not None else (h, w, 0, 0)
    side_h, side_w = (size, size) if size is not None else (h, w)
    out = {}
    for name, box in boxes.items():
        try:
            x0, y0, x1, y1 = _numbers(box, 4, f"region '{name}' in '{path}'")
        except SelectionError as e:
            raise ImageError(str(e)) from None
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ImageError(
                f"region '{name}' in '{path}' is {box}, not a box inside the {w}x{h} image; "
                "give [x0, y0, x1, y1] with x0 < x1 <= width and y0 < y1 <= height"
            )
        sx, sy = nw / w, nh / h
        cx0, cx1 = (min(max(v * sx - left, 0), side_w) for v in (x0, x1))
        cy0, cy1 = (min(max(v * sy - top, 0), side_h) for v in (y0, y1))
        out[name] = Box.pixels(cx0, cy0, cx1, cy1, name=name)
    return out


def find_region(
    region: Box | str,
    image: str | os.PathLike | None,
    size: int | None,
    *,
    width: int,
    height: int,
    what: str = "region",
) -> Box:
    """A region by name (from the image's sidecar) or as a Box; in input pixels of the preprocessed image."""
    if not isinstance(region, str):
        return region_box(region, width, height, what=what)
    known = named_regions(image, size)
    if region not in known:
        file = "the built-in photo" if image is None else f"'{sidecar(image)}'"
        where = f"{file} names: {', '.join(known)}" if known else f"there is no '{sidecar(image)}'"
        raise SelectionError(f"unknown region '{region}'; {where}; or give a box", about=what)
    found = known[region]
    if not (found.x0 < found.x1 and found.y0 < found.y1):
        raise SelectionError(
            f"region '{region}' lies outside the centre square the image is cropped to; give a box inside it",
            about=what,
        )
    return found


def centres(
    model: nn.Module | ModelView, layer: str, *, input_size: tuple[int, int], about: str = "region"
) -> tuple[Tensor, Tensor]:
    """Receptive-field centres (rows (h,), cols (w,)) of a layer's positions, in input pixels: a chain's closed
    form, or any other network's exact fields (deconvviz.engine.fields.receptive_field): the centres of their grid, or,
    on a token or channels-last layer (patches, windows), each field's middle, NaN along an axis its field spans
    whole (Swin's shifted windows at the edge). A layer whose every field spans the whole input along an axis
    (after a global attention) has none: refused, the error about `about` (region or at)."""
    view = view_of(model)
    model, steps, name = view.model, view.steps, view.resolve(layer)
    if steps is None:
        try:
            f = receptive_field(view, name, input_size=input_size)
        except LayerError:
            raise SelectionError(
                f"layer '{layer}' has no spatial positions (N, C, H, W): a region or point needs "
                "a convolution or pool layer"
            ) from None
        if layout_of(model, name, input_size).kind not in (TOKENS, CHANNELS_LAST):
            return f.centre_rows, f.centre_cols
        # a transformer's fields are patches, then windows (Swin), then the whole input: no regular grid to fit
        # centres to, so each field's own middle; a field spanning the whole input along an axis has no place
        # along it (NaN: no region holds it, no point is near it)
        spans = [s.double() for s in (f.rows, f.cols)]
        whole = [(s[:, 0] == 0) & (s[:, 1] == n) for s, n in zip(spans, input_size, strict=True)]
        if all(bool(w.all()) for w in whole) or any(bool(w.all()) for w in whole):
            raise SelectionError(
                f"every position of layer '{layer}' sees the whole {input_size[1]}x{input_size[0]} input (attention "
                "has mixed them all), so a region or point cannot choose among them; choose a layer before the "
                "first global attention, or choose channels",
                about=about,
            )
        return tuple(s.mean(1).masked_fill(w, math.nan) for s, w in zip(spans, whole, strict=True))
    upto = step_index(steps, name)
    try:
        rows, cols = receptive_fields(steps, upto)
    except LayerError:
        raise SelectionError(
            f"layer '{layer}' mixes all positions of the image: a region or point needs a convolution or pool layer"
        ) from None
    shape = output_shapes(model, steps[: upto + 1], input_size)[upto][-2:]
    return tuple(torch.arange(n) * f.stride - f.offset + f.size / 2 for n, f in zip(shape, (rows, cols), strict=True))


def region_mask(
    model: nn.Module | ModelView,
    layer: str,
    *,
    input_size: tuple[int, int],
    region: Box | None = None,
    at: Point | None = None,
    exclude: Sequence[Box] = (),
) -> Tensor:
    """(h, w) bool: the layer positions inside `region` and outside every box of `exclude`, or the one
    position nearest to the point `at` (ties: the upper-left one). Empty: a SelectionError naming the valid range."""
    height, width = input_size
    rows, cols = centres(model, layer, input_size=input_size, about="region" if at is None else "at")
    if at is not None:
        x, y = point(at, width, height)
        mask = torch.zeros(len(rows), len(cols), dtype=torch.bool)
        near = [(t - v).abs().nan_to_num(math.inf) for t, v in ((rows, y), (cols, x))]  # NaN: no place there
        mask[int(near[0].argmin()), int(near[1].argmin())] = True
        return mask
    box = region_box(region, width, height)
    mask = box.holds(rows, cols)
    for other in exclude:
        mask &= ~region_box(other, width, height, what="exclude").holds(rows, cols)
    if not bool(mask.any()):
        spans = (
            f"x {cols[0]:g}..{cols[-1]:g}, y {rows[0]:g}..{rows[-1]:g}, every {float(cols[1] - cols[0]):g} px"
            if len(rows) > 1 and len(cols) > 1
            else f"x {cols[0]:g}, y {rows[0]:g}"
        )
        out = " outside the excluded boxes" if exclude else ""
        raise SelectionError(
            f"region {box} holds no receptive-field centre of layer '{layer}'{out}; its centres lie "
            f"at {spans} (input pixels): give a region that holds one"
        )
    return mask


@contextlib.contextmanager
def _watching(model: nn.Module, name: str) -> Iterator[list[Tensor]]:
    """Eval mode and a hook that records module `name`'s output and hands on a copy, so in-place steps after it
    leave the recorded tensor (and its gradient) alone; both undone after the call."""
    got: list[Tensor] = []

    def hook(m, i, whole):
        o = hidden_states(whole)  # a tuple's first tensor (Hugging Face's blocks), else the output
        got.append(o if o is not None else whole)
        return with_hidden_states(whole, o.clone()) if o is not None else whole

    with forward_hooks([(dict(model.named_modules())[name], hook)]), evaluating(model), torch.enable_grad():
        yield got


def class_contributions(
    model: nn.Module | ModelView,
    x: Tensor,
    layer: str,
    *,
    cls: int | ClassScore,
    layout: Layout | None = None,
) -> Tensor:
    """Each feature map's contribution to class `cls`'s score: gradient times activation, summed over positions.

    x: (N, C, H, W) preprocessed; cls: a class of the model's result, or a ClassScore (which part of the result,
    which pixels of a map: deconvviz.engine.scores), its score the logit of a (N, K) vector or the logits summed
    over the chosen pixels of a (N, K, h, w) map; layout: how the layer's output lays out its maps (tokens: summed
    over the grid's tokens). Returns (N, channels)."""
    return scored_contributions(model, x, layer, score=cls, layout=layout)[0]


def scored_contributions(
    model: nn.Module | ModelView,
    x: Tensor,
    layer: str,
    *,
    score: int | ClassScore,
    layout: Layout | None = None,
) -> tuple[Tensor, ScoreRecord]:
    """class_contributions, with what was scored (scores.ScoreRecord: the part of the result, the pixels)."""
    view = view_of(model)
    model, steps, name = view.model, view.steps, view.resolve(layer)
    score = score if isinstance(score, ClassScore) else ClassScore(score)
    cls = score.cls
    if steps is not None:
        last = [s for s in steps if not isinstance(s.module, (nn.Identity, nn.Dropout))][-1]
        if not isinstance(last.module, (nn.Linear, nn.Conv2d)):
            raise SelectionError(
                f"class {cls} needs a model with a classifier (class scores), and this one has "
                f"none (it ends with '{last.name}'; vgg16-caffe weights are conv layers only): use "
                "the torchvision weights or a state dict with a classifier",
                about="class",
            )
    with _watching(model, name) as got:
        result = model(x.detach().clone())
        if len(got) != 1 or not isinstance(got[0], Tensor):
            raise LayerError(f"layer '{layer}' must run once per forward and return a tensor")
        target, record = score.target_for(result, tuple(x.shape[-2:]))
        act = got[0]
        (grad,) = torch.autograd.grad(target(score.logits(result)[0]).sum(), act, allow_unused=True)
    if grad is None:
        part = "" if record.output is None else f" (output {record.output!r})"
        raise SelectionError(
            f"class {cls}'s score{part} does not depend on layer '{layer}'; choose a layer it is computed from",
            about="class",
        )
    if layout is not None:
        whole = grad
        grad, act = layout.maps(grad, layer), layout.maps(act, layer)
        if layout.prefix and layout.token is None and not grad.any() and whole.any():
            raise SelectionError(  # a ViT's last blocks: the head reads the class token only, so every map scores 0
                f"class {cls}'s score depends on none of layer '{layer}''s patch-grid maps, only on its prefix "
                f"token(s) ({', '.join(layout.prefix)}); choose one with token='{layout.prefix[0]}', or an earlier "
                "layer",
                about="token",
            )
    contributions = (grad * act).detach()
    return (contributions.flatten(2).sum(2) if act.dim() > 2 else contributions), record


def _contributing(contributions: Tensor, layer: str, record: ScoreRecord) -> int:
    """How many maps contribute to the class at all (the most of any image): a map whose contribution is exactly 0
    is no choice (at a segmentation head only class k's own map feeds its score): it ranks after every map that
    contributes, even negatively, and `top` stops at the contributing maps."""
    count = int(contributions.ne(0).sum(1).max())
    if count == 0:
        raise SelectionError(
            f"class {record.cls}'s score gets nothing from layer '{layer}' on this input (every map's gradient "
            "times activation is 0); choose an earlier layer or another image",
            about="class",
        )
    return count


def check_choice(
    model: nn.Module | ModelView | None = None,
    layer: str | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    region: Box | None = None,
    at: Point | None = None,
    exclude: Sequence[Box] = (),
    cls: int | None = None,
    channels=None,
    positions=None,
) -> None:
    """Refuse a region, point or class request that cannot work, before any activation: conflicting choices,
    and, given the model (its architecture is enough: weights.skeleton) and layer, a region with no field centre."""
    if region is not None and at is not None:
        raise SelectionError("give a region or a point (at), not both")
    if positions is not None and (region is not None or at is not None):
        raise SelectionError("give positions or a region or point (at), not both: the region chooses the positions")
    if cls is not None and channels is not None:
        raise SelectionError("give channels or a class, not both: the class chooses the channels")
    if exclude and region is None:
        raise SelectionError("excluded boxes narrow a region: give a region too")
    if model is not None and (region is not None or at is not None):
        region_mask(model, layer, input_size=input_size, region=region, at=at, exclude=exclude)


def choose(
    model: nn.Module | ModelView,
    x: Tensor,
    layer: str,
    *,
    channels: Sequence[int] | None = None,
    mode: str = "max",
    top: int = 9,
    region: Box | None = None,
    at: Point | None = None,
    exclude: Sequence[Box] = (),
    cls: int | ClassScore | None = None,
    positions: Tensor | None = None,
    layout: Layout | None = None,
):
    """Channels (N, K), positions (N, K; None in mode map) for `select`, and what a class scored (ScoreRecord;
    None without cls), from a region, point or class (an int or a ClassScore: which part, which pixels);
    layout: how the layer's output lays out its feature maps (deconvviz.engine.layout), positions on their grid.

    cls: the `top` maps with the largest contribution to the class score (`class_contributions`); region or
    at: the maps (given, or the `top` strongest there) and in each its strongest position inside the region."""
    check_choice(region=region, at=at, exclude=exclude, cls=cls, channels=channels, positions=positions)
    view, record = view_of(model), None
    if cls is not None:
        contrib, record = scored_contributions(view, x, layer, score=cls, layout=layout)
        count = _contributing(contrib, layer, record)
        channels = strongest_channels(contrib.double().masked_fill(contrib == 0, -math.inf), min(top, count))
    if region is None and at is None:
        return channels, positions, record
    mask = region_mask(view, layer, input_size=tuple(x.shape[-2:]), region=region, at=at, exclude=exclude)
    if view.steps is None:
        with torch.no_grad(), _watching(view.model, view.resolve(layer)) as got:
            view.model(x.detach().clone())
        act = got[0] if layout is None else layout.maps(got[0], layer)
    else:
        act = forward_chain(view.steps, x, view.step_index(layer)).activation
    chans, positions = strongest_in_region(act, mask, channels, top, layer)
    return chans, positions if mode == "max" else None, record
