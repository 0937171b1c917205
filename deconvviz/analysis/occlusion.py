"""Occlusion sensitivity (Zeiler-Fergus Fig. 7): slide a grey square over the image and watch a feature map
and, for a classifier, a class probability, with the square at each position."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..engine.forward import apply, forward_chain
from ..engine.hooks import evaluating, forward_hooks, hidden_states
from ..engine.layers import step_index
from ..engine.model import ModelView, view_of
from ..engine.progress import Status
from ..engine.scores import ClassScore, ScoreRecord
from ..errors import ImageError, LayerError, OcclusionError, SelectionError
from ..preprocess import Preprocess

Grey = Tensor | float | Preprocess | None


@dataclass
class OcclusionResult:
    """Maps over occluder positions: activation[i, j] with the square's top-left corner at (rows[i], cols[j])."""

    rows: Tensor  # (R,) top edge of each occluder row, pixels
    cols: Tensor  # (C,) left edge of each occluder column
    size: int  # occluder side, pixels
    stride: int
    grey: Tensor  # (3,) the occluder's value in the model's input space
    layer: str  # module path of the layer
    channel: int
    activation: Tensor  # (R, C) total activation of the feature map (sum over its positions)
    baseline_activation: float  # the same, unoccluded
    cls: int | None = None
    probability: Tensor | None = None  # (R, C) softmax probability of class `cls` (a map's: mean over `score`'s pixels)
    baseline_probability: float | None = None
    score: ScoreRecord | None = None  # with cls: the part of the result and the pixels scored (fixed unoccluded)


def mean_grey(preprocess: Preprocess) -> Tensor:
    """The dataset mean colour in the model's input space (3,): what the occluder is painted with."""
    rgb = torch.tensor(preprocess.mean, dtype=torch.float64) / preprocess.scale  # mean is in network channel order
    rgb = rgb.flip(0) if preprocess.bgr else rgb
    return preprocess.to_input(rgb.view(3, 1, 1))[:, 0, 0].float()


def occluder_positions(extent: int, size: int, stride: int) -> list[int]:
    """Top-left corners along one axis: 0, stride, ... with the square inside, plus one flush with the far edge."""
    starts = list(range(0, extent - size + 1, stride))
    return starts if starts[-1] == extent - size else [*starts, extent - size]


def default_size(side: int) -> int:
    """Occluder side for an image of `side` pixels: 48 at 224, scaled with the image."""
    return max(1, round(side * 48 / 224))


@contextlib.contextmanager
def _reading(model: nn.Module, name: str) -> Iterator[list[Tensor]]:
    """Eval mode and a forward hook collecting the output of module `name`; both undone after the call."""
    got: list[Tensor] = []
    keep = (dict(model.named_modules())[name], lambda m, i, o: got.append(hidden_states(o)))  # a tuple: its first
    with forward_hooks([keep]), evaluating(model), torch.no_grad():
        yield got


def _band(coords: Tensor, start: Tensor, size: int) -> Tensor:
    """(B, n): which coordinates each of B squares starting at `start` covers."""
    return (coords >= start[:, None]) & (coords < start[:, None] + size)


def occlusion_maps(
    model: nn.Module | ModelView,
    x: Tensor,
    layer: str,
    *,
    channel: int,
    size: int | None = None,
    stride: int | None = None,
    cls: int | None = None,
    output: str | int | None = None,
    pixels: str = "all",
    target=None,
    grey: Grey = None,
    batch_size: int = 32,
    progress: Status | None = None,
) -> OcclusionResult:
    """Occlusion maps for one image x (1, 3, H, W), already preprocessed.

    size: occluder side (default 48 at 224, scaled); stride: step between positions (default size // 3);
    grey: the occluder's input-space value, (3,) or a scalar, or a Preprocess: its dataset mean colour
    (`mean_grey`); None: 0, the mean of mean-subtracted input. cls: also map this class's softmax probability; output,
    pixels, target: which part of the model's result and which pixels of a map of class scores (as
    Deconvnet.project: deconvviz.engine.scores); on a map, the probability is averaged over those pixels, chosen on
    the unoccluded image and kept for every position. The model is not modified: eval semantics for the call, no
    hooks left behind.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ImageError(f"occlusion takes one preprocessed image (1, C, H, W), got {shape}; use deconvviz.to_batch")
    h, w = x.shape[-2:]
    size = default_size(min(h, w)) if size is None else size
    stride = max(1, size // 3) if stride is None else stride
    if not 1 <= size <= min(h, w):
        raise OcclusionError(f"occluder size {size} does not fit the {h}x{w} image; use 1..{min(h, w)}")
    if stride < 1 or batch_size < 1:
        what, about, v = (
            ("occluder stride", "stride", stride) if stride < 1 else ("batch size", "batch_size", batch_size)
        )
        raise OcclusionError(f"{what} must be at least 1, got {v}", about=about)
    if cls is None and (output is not None or pixels != "all" or target is not None):
        raise OcclusionError("output, pixels and target say how a class is scored: give cls too", about="class")
    score = None if cls is None else ClassScore(cls, output=output, pixels=pixels, target=target)
    view = view_of(model)
    model = view.model
    p = next(model.parameters(), None)
    if p is not None:
        x = x.to(p.device, p.dtype)
    grey = mean_grey(grey) if isinstance(grey, Preprocess) else torch.as_tensor(0.0 if grey is None else grey)
    grey = grey.to(x.device, x.dtype).expand(x.shape[1])

    steps, name = view.steps, view.resolve(layer)
    if steps is not None:
        upto = step_index(steps, name)
        last = [s for s in steps if not isinstance(s.module, (nn.Identity, nn.Dropout))][-1]
        if cls is not None and not isinstance(last.module, (nn.Linear, nn.Conv2d)):
            raise OcclusionError(
                f"class {cls} needs a model with a classifier, and this one ends with '{last.name}' "
                "(no class scores); use the torchvision weights",
                about="class",
            )
        forward_chain(steps, x, len(steps) - 1 if cls is not None else upto)  # clear errors for too small inputs

        def run(xb: Tensor) -> tuple[Tensor, Tensor]:
            out = act = xb
            with torch.no_grad():
                for i, s in enumerate(steps[: len(steps) if cls is not None else upto + 1]):
                    out = apply(s.module, out)
                    act = out if i == upto else act
            return act, out
    else:

        def run(xb: Tensor) -> tuple[Tensor, Tensor]:
            with _reading(model, name) as got:
                out = model(xb)
            if len(got) != 1 or not isinstance(got[0], Tensor):
                raise LayerError(f"layer '{layer}' must run once per forward and return a tensor")
            return got[0], out

    base_act, base_out = run(x)
    if not 0 <= channel < base_act.shape[1]:
        n = base_act.shape[1]
        raise SelectionError(f"channel {channel} is out of range for layer '{layer}' with {n} channels; use 0..{n - 1}")
    scorer, record = score.target_for(base_out, (h, w)) if score is not None else (None, None)
    rows, cols = (torch.tensor(occluder_positions(n, size, stride), device=x.device) for n in (h, w))
    corners = torch.cartesian_prod(rows, cols)  # (R*C, 2), row-major
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    totals, probs = [], []
    for start in range(0, len(corners), batch_size):
        r, c = corners[start : start + batch_size].T
        if progress:
            progress(f"occluding: {start + len(r)}/{len(corners)} positions")
        inside = _band(ys, r, size)[:, :, None] & _band(xs, c, size)[:, None, :]  # (B, H, W)
        act, out = run(torch.where(inside[:, None], grey.view(1, -1, 1, 1), x))
        totals.append(act[:, channel].reshape(len(r), -1).sum(1))
        if cls is not None:
            probs.append(scorer.probability(score.logits(out)[0]))
    grid = (len(rows), len(cols))
    return OcclusionResult(
        rows.cpu(),
        cols.cpu(),
        size,
        stride=stride,
        grey=grey.cpu(),
        layer=name,
        channel=channel,
        activation=torch.cat(totals).view(grid).cpu(),
        baseline_activation=float(base_act[0, channel].sum()),
        cls=cls,
        probability=torch.cat(probs).view(grid).cpu() if cls is not None else None,
        baseline_probability=float(scorer.probability(score.logits(base_out)[0])[0]) if cls is not None else None,
        score=record,
    )
