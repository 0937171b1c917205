"""How a model's result becomes a class score: the part of the result that is scored (`output`), and a small callable
per kind of target: a class of a (N, K) vector (`VectorClass`) or a class summed over pixels of a (N, K, H, W) map
(`PixelClass`), as pytorch-grad-cam's ClassifierOutputTarget and SemanticSegmentationTarget.

The scored part (output=None): a tensor as it is; an object with `logits` (a Hugging Face ModelOutput, checked
before it is read as a dict); `out` of a dict (torchvision's segmentation models return {"out", "aux"}); the first
element of a tuple or list. output=KEY chooses another: a dict's key or an object's attribute ("aux", "logits"), a
tuple's index (1). Which pixels of a map: all of them (pixels="all"), those where the class wins
(pixels="predicted"), and with `target` (a Box on the input) only those whose centre, mapped to the input, lies
inside it (x0 <= centre < x1, as a region's field centres); both together: both conditions.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import SelectionError
from .boxes import Box, region_box

PIXELS = ("all", "predicted")


def scored_part(result, output: str | int | None = None) -> tuple[Tensor, str | int | None]:
    """The tensor of a model's result that is scored, and its name there (a key, an index, "logits"; None: the
    result is that tensor). A wrong key, or a result with no tensor to score, is refused naming the valid ones."""
    if output is None:
        if isinstance(result, Tensor):
            return result, None
        logits = getattr(result, "logits", None)  # a ModelOutput is a dict too: its logits first
        if isinstance(logits, Tensor):
            return logits, "logits"
        if isinstance(result, Mapping):
            if "out" in result and isinstance(result["out"], Tensor):
                return result["out"], "out"
            raise SelectionError(
                f"the model returns a dict without 'out' (keys: {_keys(result)}); choose the scored part with "
                "output=KEY",
                about="output",
            )
        if isinstance(result, (tuple, list)) and result and isinstance(result[0], Tensor):
            return result[0], 0
        raise SelectionError(
            f"the model returns a {type(result).__name__}, with no tensor of class scores to score (a tensor, a "
            "dict with 'out', a tuple, an object with logits); choose one with output=KEY",
            about="output",
        )
    if isinstance(output, bool) or not isinstance(output, (str, numbers.Integral)):
        raise SelectionError(f"output must be a key (str) or an index (int), got {output!r}", about="output")
    if isinstance(result, (tuple, list)):
        n = len(result)
        index = int(output) if isinstance(output, numbers.Integral) or str(output).lstrip("-").isdigit() else None
        if index is None or not 0 <= index < n:
            raise SelectionError(
                f"output {output!r} is not in the model's {type(result).__name__} of {n}; valid: 0..{n - 1}",
                about="output",
            )
        part, name = result[index], index
    elif isinstance(result, Mapping):
        if str(output) not in result:
            raise SelectionError(
                f"output {output!r} is not in the model's result; valid: {_keys(result)}", about="output"
            )
        part, name = result[str(output)], str(output)
    elif not isinstance(result, Tensor) and isinstance(output, str) and hasattr(result, output):
        part, name = getattr(result, output), output
    else:
        what = "a tensor" if isinstance(result, Tensor) else f"a {type(result).__name__}"
        raise SelectionError(
            f"output {output!r} chooses a part of the model's result, and it returns {what}; leave output out",
            about="output",
        )
    if not isinstance(part, Tensor):
        raise SelectionError(f"output {output!r} of the model's result is a {type(part).__name__}, not a tensor")
    return part, name


def _keys(result: Mapping) -> str:
    return ", ".join(str(k) for k in result.keys())


@dataclass(frozen=True)
class VectorClass:
    """Class `cls` of class scores (N, K): its logit (ClassifierOutputTarget)."""

    cls: int

    def __call__(self, logits: Tensor) -> Tensor:
        """(N,) the class's logit."""
        return logits[:, self.cls]

    def probability(self, logits: Tensor) -> Tensor:
        """(N,) the class's softmax probability."""
        return logits.softmax(1)[:, self.cls]


@dataclass(frozen=True)
class PixelClass:
    """Class `cls` of a map of class scores (N, K, h, w), summed over the pixels `mask` (N or 1, h, w) keeps
    (SemanticSegmentationTarget)."""

    cls: int
    mask: Tensor

    def __call__(self, logits: Tensor) -> Tensor:
        """(N,) the class's logits summed over the kept pixels."""
        return (logits[:, self.cls] * self.mask.to(logits.dtype)).flatten(1).sum(1)

    def probability(self, logits: Tensor) -> Tensor:
        """(N,) the class's softmax probability (over classes, per pixel), averaged over the kept pixels."""
        kept = self.mask.to(logits.dtype)
        return (logits.softmax(1)[:, self.cls] * kept).flatten(1).sum(1) / kept.flatten(1).sum(1)


@dataclass(frozen=True)
class ScoreRecord:
    """What was scored, for titles and provenance: the class, the part of the result (`output`: a key, an index,
    "logits", None for the tensor itself), and on a map which pixels (how many of the output's grid, per image)."""

    cls: int
    output: str | int | None
    kind: str  # "vector" (N, K) or "map" (N, K, h, w)
    pixels: str = "all"
    target: Box | None = None  # in input pixels
    grid: tuple[int, int] | None = None  # the map's (h, w)
    counts: tuple[int, ...] = field(default_factory=tuple)  # pixels scored, per image

    def words(self) -> str:
        """e.g. "class 2's logits summed over all 4096 output pixels (64x64) of 'out'"."""
        if self.kind == "vector":
            return f"class {self.cls}'s score" + ("" if self.output is None else f" in {self.output!r}")
        return f"class {self.cls}'s logits summed over {self.pixel_words()}"

    def pixel_words(self) -> str:
        """Which pixels of a map were scored, e.g. "1736 of 4096 output pixels (64x64: where it is predicted)"."""
        h, w = self.grid
        part = "" if self.output is None else f" of {self.output!r}"
        if self.pixels == "all" and self.target is None:
            return f"all {h * w} output pixels ({h}x{w}){part}"
        conditions = ["where it is predicted"] if self.pixels == "predicted" else []
        conditions += [] if self.target is None else [f"in {self.target}"]
        return f"{self.counts[0]} of {h * w} output pixels ({h}x{w}: {', '.join(conditions)}){part}"

    def record(self) -> dict:
        """The provenance's "score" entry."""
        rec: dict = {"class": self.cls, "output": self.output, "kind": self.kind}
        if self.kind == "map":
            rec |= {"pixels": self.pixels, "grid": list(self.grid), "pixels_scored": list(self.counts)}
            if self.target is not None:
                rec["target"] = [self.target.x0, self.target.y0, self.target.x1, self.target.y1]
        return rec


@dataclass(frozen=True)
class ClassScore:
    """A class of a model's result, as asked: `cls`, the part scored (`output`), and on a map which pixels
    (`pixels`: all or predicted; `target`: a Box on the input). `target_for` turns it into the callable for one
    result; the pixels are decided there, on that result, and held fixed (as grad-cam's mask)."""

    cls: int
    output: str | int | None = None
    pixels: str = "all"
    target: Box | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cls, numbers.Integral) or isinstance(self.cls, bool):
            raise SelectionError(f"class must be a whole number, got {self.cls!r}", about="class")
        if self.pixels not in PIXELS:
            raise SelectionError(
                f"pixels must be 'all' or 'predicted' (where the class wins), got {self.pixels!r}", about="pixels"
            )
        if self.target is not None and not isinstance(self.target, Box):
            raise SelectionError(
                f"target must be a Box (Box.pixels or Box.fractions) on the input, got {self.target!r}",
                about="target",
            )

    def logits(self, result) -> tuple[Tensor, str | int | None]:
        """The scored part of `result`, checked: (N, K) or (N, K, h, w) with `cls` among its K classes."""
        part, name = scored_part(result, self.output)
        shown = "" if name is None else f" (output {name!r})"
        if part.dim() not in (2, 4):
            raise SelectionError(
                f"class {self.cls} needs class scores (N, classes) or a map of them (N, classes, H, W); the model's "
                f"result{shown} is {tuple(part.shape)}; choose another part with output=KEY",
                about="class",
            )
        n = part.shape[1]
        if not 0 <= self.cls < n:
            what = "a classifier" if part.dim() == 2 else "a map of class scores"
            raise SelectionError(
                f"class {self.cls} is out of range for {what} with {n} classes{shown}; use 0..{n - 1}", about="class"
            )
        if part.dim() == 2 and (self.pixels != "all" or self.target is not None):
            raise SelectionError(
                f"pixels and target choose pixels of a map of class scores (N, K, H, W); the scores{shown} are "
                f"{tuple(part.shape)}, one per image: leave them out",
                about="pixels",
            )
        return part, name

    def target_for(self, result, input_size: tuple[int, int]) -> tuple[VectorClass | PixelClass, ScoreRecord]:
        """The callable that scores results like `result` (its pixels chosen on this one, detached), and what it
        scores. input_size: the input's (H, W), to which a map's grid is stretched to place the target box."""
        logits, name = self.logits(result)
        if logits.dim() == 2:
            return VectorClass(int(self.cls)), ScoreRecord(int(self.cls), name, "vector")
        n, _, h, w = logits.shape
        mask = torch.ones(n, h, w, dtype=torch.bool, device=logits.device)
        box = None
        if self.target is not None:
            height, width = input_size
            box = region_box(self.target, width, height, what="target")
            rows = (torch.arange(h, device=logits.device) + 0.5) * height / h  # each output pixel's centre
            cols = (torch.arange(w, device=logits.device) + 0.5) * width / w
            inside = box.holds(rows, cols)
            if not bool(inside.any()):
                raise SelectionError(
                    f"target {box} holds no pixel centre of the {h}x{w} output (each covers {height / h:g}x"
                    f"{width / w:g} input pixels); give a larger box",
                    about="target",
                )
            mask &= inside
        if self.pixels == "predicted":
            mask &= logits.detach().argmax(1) == self.cls
        empty = [i for i in range(n) if not bool(mask[i].any())]
        if empty:
            where = "" if box is None else f" in target {box}"
            raise SelectionError(
                f"class {self.cls} wins at no pixel{where} of the output (image {empty[0]}); use pixels='all' "
                "or another class",
                about="pixels",
            )
        counts = tuple(int(c) for c in mask.flatten(1).sum(1))
        record = ScoreRecord(int(self.cls), name, "map", pixels=self.pixels, target=box, grid=(h, w), counts=counts)
        return PixelClass(int(self.cls), mask), record
