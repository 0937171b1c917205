"""A scan's state on disk: the running top-k per feature map (merged across batches and torchrun processes), its
checkpoints (written atomically, resumed only by the same arguments over the same files), and the marks that make
a folder a scan's own, so that an interrupted scan leaves nothing half-written that a later run would trust.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from .. import __version__
from ..errors import DeconvvizError
from ..outputs import (
    SCAN_MARKER,
    remove_partials,
    write_locked,
)


@dataclass
class TopK:
    """Per channel the k strongest images so far, best first (value desc, then image order asc). (C, k) each."""

    values: Tensor  # the map's strongest activation in the image; -inf in unused slots
    images: Tensor  # index in the scan's file order; -1 in unused slots
    positions: Tensor  # flat position of that activation in the map

    @classmethod
    def empty(cls, channels: int, k: int) -> TopK:
        full = torch.full((channels, k), -1, dtype=torch.long)
        return cls(torch.full((channels, k), -math.inf), full, torch.zeros_like(full))

    def add(self, activation: Tensor, images: Tensor) -> TopK:
        """Merge in a batch: activation (B, C, ...) of the images with these indices (B,)."""
        peak, where = activation.reshape(*activation.shape[:2], -1).max(dim=2)  # as selection.select does
        c = peak.shape[1]
        return self.merge(TopK(peak.T.float().cpu(), images.cpu()[None].expand(c, -1), where.T.cpu()))

    def merge(self, *others: TopK) -> TopK:
        """The k best of all candidates; sorted by image, then stably by value, so ties go to the earlier image."""
        values, images, positions = (torch.cat([getattr(t, f) for t in (self, *others)], 1) for f in _FIELDS)
        by_image = images.argsort(dim=1, stable=True)
        best = values.gather(1, by_image).argsort(dim=1, descending=True, stable=True)[:, : self.values.shape[1]]
        keep = by_image.gather(1, best)
        return TopK(values.gather(1, keep), images.gather(1, keep), positions.gather(1, keep))


_FIELDS = ("values", "images", "positions")


def _state_names(world: int) -> list[str]:
    return ["state.pt"] if world == 1 else [f"state-rank{r}.pt" for r in range(world)]


def _remove_unfinished(out: Path, made: Path | None, world: int, *, interrupted: bool) -> None:
    """A first run that failed leaves the folder as it found it; one interrupted (Ctrl-C) keeps its checkpoints,
    to resume from, as a kill does."""
    names = [*_state_names(world), SCAN_MARKER]
    if interrupted and any((out / n).is_file() for n in _state_names(world)):
        return
    for n in names:
        (out / n).unlink(missing_ok=True)
    remove_partials(out, names)
    for d in (out, *out.parents) if made is not None else ():
        if not d.is_relative_to(made):
            break
        with contextlib.suppress(OSError):
            d.rmdir()


def _start(out: Path, world: int) -> None:
    """Claim the run folder: made if new, marked as a scan's (before any checkpoint), a killed run's temp files
    of its checkpoints removed by their exact names."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeconvvizError(
            f"cannot write to '{out}': {e.strerror or e}; give a writable folder", about="out"
        ) from None
    if not (out / SCAN_MARKER).is_file():
        _mark(out, files=[])
    remove_partials(out, [*_state_names(world), SCAN_MARKER])


def _mark(folder: Path, files: list[str]) -> None:
    """The marker that makes a folder a scan's own: a later scan may resume or replace it, and nothing else."""
    data = {"deconvviz": __version__, "kind": "scan", "files": sorted(files)}
    write_locked(folder / SCAN_MARKER, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))


def _keep_checkpoints(out: Path, new: Path, world: int) -> None:
    """The finished run keeps its checkpoints (a rerun with other arguments is compared with them)."""
    for n in _state_names(world):
        if (out / n).is_file():
            try:
                os.link(out / n, new / n)
            except OSError:
                shutil.copy2(out / n, new / n)


def _resumed(path: Path, fresh: dict, out: Path, batches: int) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True)
        checked = _checkpoint(state, fresh)
    except Exception:  # noqa: BLE001 - checkpoints are written atomically; this one was not a scan's
        raise DeconvvizError(
            f"'{path}' is not a checkpoint of deconvviz scan; delete it to scan again, or give another output folder",
            about="out",
        ) from None
    _same_arguments(out, state.get("arguments"), fresh["arguments"])
    if not checked or state.get("world") != fresh["world"] or state["batches"] > batches:
        raise DeconvvizError(
            f"the images under '{fresh['arguments']['folder']}' (or the number of processes) "
            f"changed since the scan in '{out}' began; give a new output folder",
            about="out",
        )
    return state


def _checkpoint(state, fresh: dict) -> bool:
    """A checkpoint's shape is a scan's (raises otherwise); True when it is of the same images in the same order."""
    if not isinstance(state, dict) or not isinstance(state.get("arguments"), dict):
        raise TypeError("not a scan checkpoint")
    top, batches = state["top"], state["batches"]
    if not isinstance(batches, int) or set(top) != set(fresh["top"]) or not isinstance(state["skipped"], list):
        raise TypeError("not a scan checkpoint")
    for name, t in top.items():
        want = fresh["top"][name]["values"].shape
        if any(not isinstance(t[f], Tensor) or t[f].shape != want for f in _FIELDS):
            if state["arguments"] == fresh["arguments"]:
                raise TypeError("not a scan checkpoint")
    return state.get("files") == fresh["files"]


def _same_arguments(out: Path, stored: dict | None, now: dict) -> None:
    if stored != now:
        stored = stored or {}
        diff = "; ".join(f"{k} {stored.get(k)!r}, now {v!r}" for k, v in now.items() if stored.get(k) != v)
        raise DeconvvizError(
            f"'{out}' holds a scan with other arguments ({diff}); rerun with the same "
            "arguments to resume or reuse it, or give a new output folder",
            about="out",
        )


def _gathered(state: dict, world: int) -> dict:
    """All processes' top-k merged (the same tie rule makes it equal to a single-process scan)."""
    if world == 1:
        return state
    parts = [None] * world
    dist.all_gather_object(parts, {"top": state["top"], "skipped": state["skipped"]})
    top = {
        name: asdict(TopK(**parts[0]["top"][name]).merge(*(TopK(**p["top"][name]) for p in parts[1:])))
        for name in state["top"]
    }
    return {"top": top, "skipped": [s for p in parts for s in p["skipped"]]}
