"""Dataset scan (Zeiler & Fergus Fig. 2): for each feature map, the k images that excite it most, projected to pixels.

folder -> DataLoader (workers, batches) -> one chain forward per batch for all layers -> running top-k per
channel (checkpointed; merged across torchrun processes) -> projections of the kept activations -> report (and the
figures of `draw`, a function of the layers above: deconvviz.render.scan_figures).

What a scan reads is in _scan_files.py, what it keeps on disk (top-k, checkpoints, marks) in _scan_state.py. The
rest stays one module (about 650 lines) on purpose: checking, scanning, projecting and writing share the run's
arguments, its result types and one order of steps that makes an interrupted scan resumable, and reading them in
one place is how that order is checked.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from .. import __version__
from ..engine.deconvnet import Deconvnet
from ..engine.fields import Fields, receptive_field
from ..engine.forward import apply, layer_shape, module_activations
from ..engine.layers import ReceptiveField, receptive_fields
from ..engine.layout import Layout
from ..engine.progress import Progress
from ..engine.reverse import get_unpool
from ..engine.rules import get_rule
from ..errors import DeconvvizError, ImageError, LayerError, SelectionError
from ..images import check_size
from ..networks.architectures import located
from ..networks.cards import cards_folder
from ..networks.network import Network
from ..networks.weights import find_card, pick_device
from ..outputs import (
    SCAN_MARKER,
    Staged,
    locked,
    missing_folders,
    owned,
    recover,
    write_atomic,
    write_locked,
)
from ..preprocess import Preprocess
from ._scan_files import ImageFiles, _collate, _fingerprint, _unreadable, listed_images, preprocessed
from ._scan_state import (
    _FIELDS,
    TopK,
    _gathered,
    _keep_checkpoints,
    _mark,
    _remove_unfinished,
    _resumed,
    _same_arguments,
    _start,
    _state_names,
)

SHOWN_CHANNELS = 9  # feature maps projected and drawn when none are given: the strongest over the folder
Draw = Callable[..., list[Path]]  # draw(result, folder, weights, progress=...): the files it wrote under folder
CRASH_AFTER_BATCH = "DECONVVIZ_TEST_CRASH_AFTER_BATCH"  # tests only: the scan kills itself after that checkpoint
MAX_MEMORY = 4 * 2**30  # bytes the kept projections may take (max_memory); above it a scan is refused before it runs


@dataclass(frozen=True)
class ScanArguments:
    """Everything that decides a scan's result; a run directory belongs to one set of arguments.

    batch_size is one of them: activations differ in the last bits with a batch's composition, and
    the checkpoints, shards and merges are exact only because every run forms the same batches.
    """

    folder: str
    layers: tuple[str, ...]
    top: int
    channels: tuple[int, ...] | str | None  # feature maps to project and draw; "all"; None: the strongest
    size: int
    model: str  # the network's spec (Network.spec): the site rebuilds the network from it and `weights`
    weights: str
    batch_size: int
    rule: str = "deconvnet"  # how the kept activations are projected (rules.py); the top-k do not depend on it
    unpool: str = "switches"  # how their max-pools are undone (reverse.UNPOOLS); reports without one: switches

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class Record:
    """One of a feature map's k strongest images: the map's strongest activation in it, where, and its input box."""

    image: str  # path relative to the scanned folder
    value: float
    row: int
    col: int
    box: tuple[int, int, int, int] | None  # receptive field: top, bottom, left, right (half-open); None: all


@dataclass
class ChannelResult:
    """A feature map's top-k records, best first; projections (k, 3, H, W) where the channel was projected."""

    records: list[Record]
    projections: Tensor | None = None  # record i: Deconvnet.project(x_i, layer, channels=[c], mode="max")


@dataclass
class ScanResult:
    """What a scan found: per layer and channel the top-k records (and projections), and the files it skipped."""

    arguments: ScanArguments
    images: int  # image files found
    skipped: list[dict]  # unreadable files: {"path", "reason"}
    layers: dict[str, dict[int, ChannelResult]]
    projected: dict[str, list[int]] = field(default_factory=dict)  # per layer the channels projected, in order
    already_done: bool = False  # the run directory held this finished scan; nothing was recomputed
    written: list[Path] = field(default_factory=list)  # files this call wrote (process 0 only)


@torch.no_grad()
def activations(steps, x: Tensor, taps: dict[str, int]) -> dict[str, Tensor]:
    """One pass along the chain up to the deepest tap, keeping the output of each tapped step (by layer name)."""
    wanted, kept = set(taps.values()), {}
    for i, s in enumerate(steps[: max(wanted) + 1]):
        x = apply(s.module, x)
        if i in wanted:
            kept[i] = x
    return {name: kept[i] for name, i in taps.items()}


def check_scan(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    top: int = 9,
    batch_size: int = 32,
    checkpoint_every: int = 1000,
    workers: int | None = None,
) -> tuple[list[str], list[dict]]:
    """Every check of a scan that needs no network: the numbers, the folder (some file in it reads as an
    image), and `out` (new, empty, or a scan's own). Returns the image files and those that are no regular file."""
    checks = (
        ("top", "top", top, 1),
        ("batch size", "batch_size", batch_size, 1),
        ("checkpoint interval", "checkpoint_every", checkpoint_every, 1),
        ("workers", "workers", workers, 0),
    )
    for what, about, v, least in checks:
        if v is not None and v < least:
            raise DeconvvizError(f"{what} must be at least {least}, got {v}", about=about)
    files, odd = listed_images(folder, out)
    _owned_scan(Path(out))
    reasons = [(s["path"], s["reason"]) for s in odd]
    for f in files:  # the first file whose header reads as an image ends the search
        why = _unreadable(Path(folder) / f)
        if why is None:
            break
        reasons.append((f, why))
    else:
        first, why = sorted(reasons)[0]
        raise ImageError(
            f"none of the {len(reasons)} image file(s) under '{folder}' could be read ('{first}': {why}); "
            "check the folder"
        )
    return files, odd


def _owned_scan(out: Path) -> dict | None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return owned(out, SCAN_MARKER, what="scan", allowed=_state_names(world))


def scan_folder(
    folder: str | os.PathLike,
    layers: Sequence[str] = ("conv5_3",),
    out: str | os.PathLike = "runs/scan",
    *,
    top: int = 9,
    channels: Sequence[int] | str | None = None,
    size: int = 224,
    network: Network,
    batch_size: int = 32,
    workers: int | None = None,
    checkpoint_every: int = 1000,
    progress: Progress | None = None,
    verbose: bool = True,
    rule: str = "deconvnet",
    unpool: str = "switches",
    max_memory: int = MAX_MEMORY,
    draw: Draw | None = None,
) -> ScanResult:
    """For every channel of `layers`, the `top` images of `folder` with its strongest activations; the chosen
    `channels` (None: the 9 strongest, "all") are projected. Everything is written under `out`: report.json and
    LAYER/projections.pt, and the figures of `draw` (such as deconvviz.render.scan_figures, called as
    draw(result, folder, network.weights, progress=progress) on the folder before it is swapped in; None: none).

    Resumable: `out/state.pt` is checkpointed every `checkpoint_every` images; run again with the same
    arguments after an interruption and the result is that of an uninterrupted run. A finished run
    (`out/report.json`) is returned without recomputing. rule: deconvnet, guided, gradient or linear; unpool:
    switches, nearest, bilinear or fixed (reverse.UNPOOLS). Under torchrun
    the batches are shared out among the processes and the per-process top-k merged exactly; process 0
    projects and writes. `out` must be new, empty or a scan's own folder; one scan at a time writes it (an OS
    lock), and its figures are built beside it and swapped in whole. max_memory: bytes the kept projections
    may take; a scan that would need more is refused before it runs.
    """
    chans = channels if channels is None or isinstance(channels, str) else tuple(int(c) for c in channels)
    if isinstance(chans, str) and chans != "all":
        raise SelectionError(f"channels '{chans}' is not a list of feature maps; give e.g. 12,40, or all")
    weights = _located_weights(network.weights_choice)
    args = ScanArguments(
        folder=str(Path(folder).resolve()),
        layers=tuple(layers),
        top=top,
        channels=chans,
        size=size,
        model=located(network.spec),
        weights=weights,
        batch_size=batch_size,
        rule=get_rule(rule).name,
        unpool=get_unpool(unpool),
    )
    check_size(size)
    out = Path(out)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    say = (lambda text: print(f"deconvviz: {text}", file=sys.stderr)) if verbose and rank == 0 else lambda text: None
    limits = {"top": top, "batch_size": batch_size, "checkpoint_every": checkpoint_every, "workers": workers}
    with locked(out) if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            recover(out)  # a swap that a kill interrupted: the old result back, temporaries gone
        fresh, made = _owned_scan(out) is None, missing_folders(out)
        if (done := _finished(out, args)) is not None:
            say(f"'{out}' holds this finished scan; nothing to do (give a new output folder to scan again)")
            return done
        files, odd = check_scan(folder, out, **limits)
        try:
            return _scan(
                network,
                args,
                (files, odd),
                out,
                world=world,
                rank=rank,
                workers=workers,
                every=checkpoint_every,
                progress=progress,
                say=say,
                max_memory=max_memory,
                draw=draw,
            )
        except BaseException as e:
            if fresh and rank == 0:
                _remove_unfinished(out, made, world, interrupted=isinstance(e, KeyboardInterrupt))
            raise


def _scan(network, args, found, out, *, world, rank, workers, every, progress, say, max_memory, draw) -> ScanResult:
    """The scan itself, under the lock: the top-k, then the projections and `draw`'s figures, swapped in whole.
    found: the image files and those that are no regular file (listed_images)."""
    (files, odd), folder, layers, size, chans = found, args.folder, args.layers, args.size, args.channels
    root = Path(args.folder)  # resolved: the report must not depend on the cwd
    net, info = network.module, network.weights
    dev = next(net.parameters()).device
    dn = Deconvnet(net, rule=args.rule, unpool=args.unpool)
    taps = {name: _tap(dn, name) for name in dict.fromkeys(layers)}
    # shapes fail early, and clearly, on a too small size; fields: None where positions see the whole image (the
    # records then hold no box)
    shapes = {name: layer_shape(dn.view, name, size=size) for name in taps}
    plan = {name: (shapes[name], _field(dn, i, shapes[name], size)) for name, i in taps.items()}
    for name, (shape, _) in plan.items():
        _check_channels(chans, name, shape[0])
    k = min(args.top, len(files))  # no more records than images: the state is sized to what exists
    _check_memory(plan, chans, k, size, max_memory)
    if rank == 0:
        _start(out, world)
    else:
        out.mkdir(parents=True, exist_ok=True)
    with _processes(dev, world):
        state = _scan_shard(
            dn,
            info.preprocess,
            root,
            files=files,
            taps=taps,
            plan=plan,
            args=args,
            out=out,
            device=dev,
            rank=rank,
            world=world,
            workers=workers,
            every=every,
            progress=progress,
            say=say,
            k=k,
        )
        state = _gathered(state, world)
        skipped = [{"path": files[i], "reason": why} for i, why in sorted(state["skipped"])]
        if len(skipped) == len(files):
            (out / ("state.pt" if world == 1 else f"state-rank{rank}.pt")).unlink(missing_ok=True)
            first = (odd + skipped)[0]
            raise ImageError(
                f"none of the {len(files) + len(odd)} image file(s) under '{folder}' could be read "
                f"('{first['path']}': {first['reason']}); check the folder"
            )
        skipped = sorted(odd + skipped, key=lambda s: s["path"])
        result = ScanResult(args, len(files) + len(odd), skipped, {})
        for name, (shape, rf) in plan.items():
            top_k = TopK(*(state["top"][name][f] for f in _FIELDS))
            result.layers[name] = {c: ChannelResult(r) for c, r in _records(top_k, files, shape, rf, size).items()}
        if rank == 0:
            with Staged(out) as new:
                written = _project_and_write(dn, info, root, result=result, out=new, progress=progress)
                if draw is not None:
                    written += draw(result, new, info, progress=progress)
                _keep_checkpoints(out, new, world)
                _mark(new, files=[p.relative_to(new).as_posix() for p in written])
            result.written = [out / p.relative_to(new) for p in written]
            if skipped:
                say(f"{len(skipped)} unreadable file(s) skipped, listed in {out / 'report.json'}")
    return result


def _check_memory(plan: dict, chans, k: int, size: int, budget: int) -> None:
    """The kept projections ((k, 3, size, size) float32 per projected map, all layers) fit in `budget` bytes."""
    maps = {
        name: shape[0] if chans == "all" else SHOWN_CHANNELS if chans is None else len(set(chans))
        for name, (shape, _) in plan.items()
    }
    maps = {name: min(n, plan[name][0][0]) for name, n in maps.items()}
    need = sum(maps.values()) * k * 3 * size * size * 4
    if need > budget:
        biggest = max(maps, key=maps.get)
        raise DeconvvizError(
            f"projecting {sum(maps.values())} feature maps ({maps[biggest]} of {biggest}) x {k} images at size "
            f"{size} keeps about {_bytes(need)} of projections, more than the {_bytes(budget)} allowed; give "
            "fewer channels, a smaller top or size, or allow more memory",
            about="max_memory",
        )


def _bytes(n: int) -> str:
    """A size in the unit that shows it: GiB from 1 GiB, MiB below (at least 0.1 MiB)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{max(n / 2**20, 0.1):.1f} MiB"


def _located_weights(weights: str) -> str:
    """A weights file, or a user's card (found by path or through $DECONVVIZ_MODELS), by its absolute path, like
    the folder: the site rebuilds the network from the report wherever it runs. A shipped card keeps its name."""
    if Path(weights).suffix in (".pt", ".pth", ".toml"):
        return str(Path(weights).expanduser().resolve())
    card = find_card(weights)
    if card is not None and card.path is not None and not card.path.resolve().is_relative_to(cards_folder().resolve()):
        return str(card.path.resolve())
    return weights


def scan_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device this process scans on: `device`, and under torchrun on CUDA its own GPU (LOCAL_RANK)."""
    dev = pick_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def _tap(dn: Deconvnet, layer: str) -> int | str:
    """Where a layer's activation is read: its step in a chain, else its module path."""
    view = dn.view
    return view.resolve(layer) if view.steps is None else view.step_index(layer)


def _field(
    dn: Deconvnet, i: int | str, shape: tuple, size: int
) -> tuple[ReceptiveField, ReceptiveField] | Fields | None:
    """The receptive fields of a layer's positions: a chain's closed form, any other network's exact fields
    (fields.receptive_field), or None where every position sees the whole image (a classifier, a pooled vector)."""
    if dn.steps is None:
        if len(shape) != 3:
            return None
        try:
            return receptive_field(dn.view, i, input_size=(size, size))
        except DeconvvizError:  # a model the probe cannot trace: the records hold no box (the whole image)
            return None
    try:
        return receptive_fields(dn.steps, i)
    except LayerError:  # a classifier layer sees the whole image
        return None


def _box(rf, r: int, col: int, size: int) -> tuple[int, int, int, int] | None:
    """Top, bottom, left, right (half-open) of position (r, col)'s receptive field; None: the whole image."""
    if rf is None:
        return None
    if isinstance(rf, Fields):
        return tuple(int(v) for v in rf.boxes(torch.tensor([r, col])).tolist())
    return (*rf[0].span(r, size), *rf[1].span(col, size))


def _check_channels(channels, layer: str, count: int) -> None:
    bad = [c for c in channels if not 0 <= c < count] if isinstance(channels, tuple) else []
    if bad or channels == ():
        what = f"channel {bad[0]} is out of range" if bad else "no channels given"
        raise SelectionError(f"{what} for layer '{layer}' with {count} channels; use 0..{count - 1}")


@contextlib.contextmanager
def _processes(device: torch.device, world: int):
    """Under torchrun (WORLD_SIZE > 1) a process group for the merge: gloo on CPU, nccl on CUDA; destroyed after."""
    if world == 1 or dist.is_initialized():  # single process, or a group the caller owns
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _scan_shard(
    dn, preprocess, root, files, taps, plan, args, out, device, rank, world, workers, every, progress, say, k
) -> dict:
    """Scan this process's batches (batch b goes to process b mod world), resuming from its checkpoint."""
    path = out / ("state.pt" if world == 1 else f"state-rank{rank}.pt")
    b = args.batch_size
    batches = [range(j * b, min(j * b + b, len(files))) for j in range(rank, -(-len(files) // b), world)]
    empty = {name: asdict(TopK.empty(shape[0], k)) for name, (shape, _) in plan.items()}
    state = {
        "arguments": args.to_json(),
        "files": _fingerprint(root, files),
        "world": world,
        "batches": 0,
        "skipped": [],
        "top": empty,
    }
    if path.is_file():
        state = _resumed(path, state, out, len(batches))
        if 0 < state["batches"] < len(batches):
            say(f"resuming: {sum(map(len, batches[: state['batches']]))} of {len(files)} images already scanned")
    tops, steps = {name: TopK(**t) for name, t in state["top"].items()}, dn.steps
    total = sum(map(len, batches))
    done = saved = sum(map(len, batches[: state["batches"]]))
    p = next(dn.model.parameters())
    loader = DataLoader(
        ImageFiles(root, files, preprocess, args.size),
        batch_sampler=batches[state["batches"] :],
        num_workers=min(4, os.cpu_count() or 1) if workers is None else workers,
        collate_fn=_collate,
    )
    if progress and rank == 0:
        progress("scanning", done, total)
    for x, index, bad in loader:
        if x is not None:
            x = x.to(device, p.dtype)
            found = activations(steps, x, taps) if steps is not None else module_activations(dn.model, x, taps)
            if steps is None:  # token and channels-last layers: their maps on the grid (deconvviz.layout)
                laid = dn.layouts(x)
                found = {name: (laid.get(taps[name]) or Layout()).maps(act, name) for name, act in found.items()}
            for name, act in found.items():
                if not bool(torch.isfinite(act).all()):
                    where = files[int(index[(~torch.isfinite(act)).flatten(1).any(1)][0])]
                    raise DeconvvizError(
                        f"layer '{name}' has NaN or infinite activations for '{where}'; check the weights"
                    )
                tops[name] = tops[name].add(act, index)
        state["skipped"] += bad
        state["batches"] += 1
        done += len(index) + len(bad)
        if progress and rank == 0:
            progress("scanning", done, total)
        if done - saved >= every or state["batches"] == len(batches):
            state["top"] = {name: asdict(t) for name, t in tops.items()}
            write_locked(path, lambda f: torch.save(state, f))
            saved = done
            if os.environ.get(CRASH_AFTER_BATCH) == str(state["batches"]):
                os.kill(os.getpid(), signal.SIGKILL)  # for the resume test: kill -9 right after this checkpoint
    return state


def _records(top: TopK, files: list[str], shape, rf, size: int) -> dict[int, list[Record]]:
    w = shape[-1] if len(shape) == 3 else 1
    out = {}
    rows = zip(top.values.tolist(), top.images.tolist(), top.positions.tolist(), strict=True)
    for c, (vs, ims, ps) in enumerate(rows):
        out[c] = []
        for v, i, p in zip(vs, ims, ps, strict=True):
            if i >= 0:
                r, col = divmod(p, w)
                out[c].append(Record(files[i], v, r, col, _box(rf, r, col, size)))
    return out


def _shown(result: ScanResult, layer: str) -> list[int]:
    """The channels to project: as given, all, or the SHOWN_CHANNELS with the strongest activation (ties: lower c)."""
    chans, per_channel = result.arguments.channels, result.layers[layer]
    if chans == "all":
        return list(per_channel)
    if chans is not None:
        return list(dict.fromkeys(chans))
    best = torch.tensor([r.records[0].value if r.records else -math.inf for r in per_channel.values()])
    return best.argsort(descending=True, stable=True)[:SHOWN_CHANNELS].tolist()


def _project(
    dn: Deconvnet,
    preprocess: Preprocess,
    root: Path,
    size: int,
    layer: str,
    per_channel: dict[int, ChannelResult],
    shown: list[int],
    progress,
) -> None:
    """Project the shown channels' records, one pass per image for all its channels; fills their projections."""
    wanted: dict[str, list[int]] = {}  # image -> the shown channels whose top-k hold it
    for c in shown:
        for r in per_channel[c].records:
            wanted.setdefault(r.image, []).append(c)
    recon, p = {}, next(dn.model.parameters())
    shape = layer_shape(dn.view, layer, size=size)
    width = shape[-1] if len(shape) == 3 else 1
    for n, (image, chans) in enumerate(sorted(wanted.items())):
        if progress:
            progress(f"projecting {layer}", n, len(wanted))
        x = preprocessed(root / image, preprocess, size)[None].to(dn.device, p.dtype)
        # the recorded positions, not a fresh argmax: a near-tie in a batch of one cannot move the activation
        pos = torch.tensor(
            [[next(r.row * width + r.col for r in per_channel[c].records if r.image == image) for c in chans]]
        )
        for c, y in zip(
            chans, dn.project(x, layer, channels=chans, mode="max", positions=pos).images[0].cpu(), strict=True
        ):
            recon[c, image] = y
    if progress:
        progress(f"projecting {layer}", len(wanted), len(wanted))
    for c in shown:
        recs = per_channel[c].records
        per_channel[c].projections = torch.stack([recon[c, r.image] for r in recs]) if recs else None


def _project_and_write(dn: Deconvnet, info, root: Path, result: ScanResult, out: Path, progress) -> list[Path]:
    """Project and write the projections; report.json comes last and marks the run finished.

    Nothing written holds a clock or the run directory, so the files of a resumed run are byte-identical
    to those of an uninterrupted one.
    """
    args, layers, written = result.arguments, {}, []
    for layer, per_channel in result.layers.items():
        shown = _shown(result, layer)
        _project(
            dn,
            info.preprocess,
            root,
            size=args.size,
            layer=layer,
            per_channel=per_channel,
            shown=shown,
            progress=progress,
        )
        result.projected[layer] = shown
        projections = {c: per_channel[c].projections for c in shown if per_channel[c].projections is not None}
        written.append(out / layer / "projections.pt")
        write_atomic(written[-1], lambda f, pr=projections: torch.save(pr, f))
        layers[layer] = {
            "projected": shown,
            "channels": {str(c): [asdict(r) for r in ch.records] for c, ch in per_channel.items()},
        }
    images = {"found": result.images, "read": result.images - len(result.skipped), "skipped": len(result.skipped)}
    report = {
        "command": "scan",
        "deconvviz": __version__,
        "arguments": args.to_json(),
        "weights": {
            "name": info.name,
            "source": info.source,
            "sha256": info.sha256,
            "preprocess": info.preprocess.name,
        },
        "images": images,
        "skipped": result.skipped,
        "layers": layers,
    }
    write_atomic(out / "report.json", lambda f: f.write((json.dumps(report, indent=1) + "\n").encode()))
    return [*written, out / "report.json"]


def _finished(out: Path, args: ScanArguments) -> ScanResult | None:
    if not (out / "report.json").is_file():
        return None
    result = load_result(out)
    _same_arguments(out, result.arguments.to_json(), args.to_json())
    result.already_done = True
    return result


def load_result(rundir: str | os.PathLike) -> ScanResult:
    """A finished scan from its run directory: per layer and channel the records and (where drawn) projections."""
    rundir = Path(rundir)
    try:
        report = json.loads((rundir / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise DeconvvizError(f"no finished scan in '{rundir}' ({e}); run `deconvviz scan` there first") from None
    try:
        return _result(rundir, report)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DeconvvizError(
            f"'{rundir / 'report.json'}' is not the report of a finished deconvviz scan ({type(e).__name__}: {e}); "
            "give another output folder",
            about="out",
        ) from None


def _result(rundir: Path, report: dict) -> ScanResult:
    a = report["arguments"]
    chans = tuple(a["channels"]) if isinstance(a["channels"], list) else a["channels"]
    args = ScanArguments(
        **{**a, "layers": tuple(a["layers"]), "channels": chans}
    )  # no "rule": deconvnet, no "unpool": switches
    layers, projected = {}, {}
    for layer, rec in report["layers"].items():
        projected[layer] = [int(c) for c in rec["projected"]]
        proj = torch.load(rundir / layer / "projections.pt", weights_only=True)
        layers[layer] = {
            int(c): ChannelResult(
                [Record(**{**r, "box": tuple(r["box"]) if r["box"] else None}) for r in recs], proj.get(int(c))
            )
            for c, recs in rec["channels"].items()
        }
    return ScanResult(args, report["images"]["found"], report["skipped"], layers, projected)
