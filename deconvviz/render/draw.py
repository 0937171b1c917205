"""Figures drawn from projections. Rendering never changes numbers; it only normalizes for display:

- reconstructions (pixel space): `centred` -- 0.5 + r / (2 s), s the 99.9th percentile of |r| over the
  panel (the receptive-field crop in layer grids and scan figures), so zero is mid-grey and the sign is kept;
- intermediate stages (many channels): `stage_channel` -- the most representative channel (Noh et al.):
  the one whose rectified map is most like the stage's channel mean (cosine similarity), or `stage_map` --
  the channel mean of the rectified signal; either divided by its 99.5th percentile, clipped to [0, 1], grey;
- occlusion maps: the values themselves, colours spanning the map's range and its unoccluded value (marked
  on the colorbar), each value drawn at the centre of its occluder position, over a faint copy of the image.

One module on purpose (about 630 lines): every figure below draws its panels with the same letters, notes,
normalizations and `save` (which checks the pixel budget and writes the figure atomically); kept together, a change
to how a figure is normalized or written is made once and seen in every figure.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from ..analysis.occlusion import OcclusionResult  # noqa: E402
from ..engine.reverse import Stage  # noqa: E402
from ..errors import DeconvvizError  # noqa: E402
from ..images import centred  # noqa: E402
from ..outputs import check_target, check_writable, write_atomic, write_files  # noqa: E402, F401 - their old home
from ..preprocess import Preprocess  # noqa: E402

FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
RECONSTRUCTION_PERCENTILE = 99.9
STAGE_VIEWS = ("channel", "mean")
STAGE_VIEW = "channel"  # the default: a reader can follow the object's shape down the stages (see README)


def stage_map(t: Tensor, percentile: float = 99.5) -> np.ndarray:
    """(C, H, W) stage signal to an (H, W) map in [0, 1]: channel mean of the rectified signal, robustly scaled."""
    return _scaled(t.clamp_min(0).mean(0).float(), percentile)


def _scaled(m: Tensor, percentile: float) -> np.ndarray:
    """(H, W) >= 0 divided by its `percentile` (the max where that is 0), clipped to [0, 1]."""
    s = torch.quantile(m.flatten(), percentile / 100) if m.numel() else m.new_tensor(0)
    s = s if s > 0 else m.max()
    return (m / s).clamp(0, 1).cpu().numpy() if s > 0 else np.zeros(m.shape, np.float32)


def representative_channel(t: Tensor) -> int:
    """The stage's most representative channel (Noh et al.): the one whose rectified signal is most like the
    whole stage's, the channel mean (largest cosine similarity of the two maps), lower index on ties. (C, H, W)."""
    maps = t.clamp_min(0).double().flatten(1)
    mean = maps.mean(0)
    similarity = maps @ mean / (maps.norm(dim=1) * mean.norm()).clamp_min(1e-300)
    return int(similarity.argmax())


def stage_channel(t: Tensor, percentile: float = 99.5) -> tuple[int, np.ndarray]:
    """(C, H, W) stage signal to its representative channel and that channel's rectified signal as an (H, W)
    map in [0, 1], scaled like `stage_map`."""
    c = representative_channel(t)
    return c, _scaled(t[c].clamp_min(0).float(), percentile)


def pattern_rgb(r: Tensor, preprocess: Preprocess) -> np.ndarray:
    """Input-space reconstruction (3, H, W) to RGB (H, W, 3) for display (preprocessing undone, `centred`)."""
    return centred(preprocess.to_rgb(r.float(), pattern=True), RECONSTRUCTION_PERCENTILE).permute(1, 2, 0).cpu().numpy()


def _note(fig: Figure, y: float, text: str, fontsize: float = 7, *, wrap: bool = False) -> None:
    """The figure's footnote: how its panels are normalized, centred at height y (figure fraction)."""
    fig.text(0.5, y, text, ha="center", fontsize=fontsize, color="0.3", wrap=wrap)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _letter(i: int) -> str:
    """Panel letters a, b, ..., z, then aa, ab, ... (deep networks have more than 26 stages)."""
    a = string.ascii_lowercase
    return a[i] if i < 26 else a[i // 26 - 1] + a[i % 26]


def _wrapped_path(path: str, width: int = 24) -> str:
    """A module path on lines of at most about `width` characters, broken after its dots (a ViT's
    encoder.layers.encoder_layer_2 under a panel as narrow as the panel)."""
    lines = [""]
    for part in path.split("."):
        piece = part if not lines[-1] else "." + part
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append(piece)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def reconstruction_figure(
    image: np.ndarray, stages: Sequence[Stage], preprocess: Preprocess, *, title: str, stage_view: str = STAGE_VIEW
) -> Figure:
    """Layer-by-layer reconstruction (Noh et al. Fig. 4 layout): (a) input, then every reverse stage.

    image: (H, W, 3) RGB in [0, 1]; each stage tensor is one selection, (C, h, w); the last stage is the
    pixel-space reconstruction, drawn in colour. stage_view: "channel", each intermediate stage drawn from
    its most representative channel (`stage_channel`), or "mean", the channel mean (`stage_map`).
    """
    if stage_view not in STAGE_VIEWS:
        raise DeconvvizError(f"unknown stage view '{stage_view}'; use {' or '.join(STAGE_VIEWS)}")
    panels = [("input", image)] + [(s, None) for s in stages]
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.75 * rows + 0.7), squeeze=False)
    for i, ax in enumerate(axes.flat):
        _off(ax)
        if i >= len(panels):
            ax.set_visible(False)
            continue
        letter = _letter(i)
        if i == 0:
            ax.imshow(image, interpolation="nearest")
            label = f"({letter}) input {image.shape[0]}×{image.shape[1]}"
        else:
            st = panels[i][0]
            t = st.tensor
            h, w = t.shape[-2:]
            last = i == len(panels) - 1 and t.shape[0] == 3
            if last:
                ax.imshow(pattern_rgb(t, preprocess), interpolation="nearest")
            elif stage_view == "mean":
                channel = None
                ax.imshow(stage_map(t), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                channel, picture = stage_channel(t)
                ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            label = f"({letter}) {h}×{w} {'unpooling' if st.kind == 'unpool' else 'deconv'}"
            label += "\n(reconstruction)" if last else f"\n{_wrapped_path(st.name)}"
            label += f", ch {channel}" if not last and stage_view == "channel" else ""
        ax.set_xlabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    if stage_view == "channel":
        shown = "the channel ('ch c') most like the stage's channel mean (cosine), rectified"
    else:
        shown = "the channel mean of the rectified signal"
    reconstruction = "reconstruction: mid-grey = 0, contrast: 99.9th percentile of |r|"
    last_stage = _letter(len(panels) - 2)  # the last panel is the reconstruction
    _note(fig, 0.005, f"stages (b)-({last_stage}): {shown}, 0 to its 99.5th percentile | {reconstruction}")
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


def decoder_figure(
    image: np.ndarray, stages: Sequence, projection: Tensor, *, preprocess: Preprocess, title: str, projected: str
) -> Figure:
    """A decoder's stages forward, as Noh et al. Fig. 4 draws them: (a) the input, then each unpooling, upsampling
    and deconvolution's activation (analysis.decoder.DecoderStage: its channel contributing most to the class), then
    the deconvnet projection of the same class (3, H, W), labelled `projected`."""
    panels = len(stages) + 2
    cols = min(5, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.75 * rows + 0.7), squeeze=False)
    for i, ax in enumerate(axes.flat):
        _off(ax)
        if i >= panels:
            ax.set_visible(False)
            continue
        if i == 0:
            ax.imshow(image, interpolation="nearest")
            label = f"(a) input {image.shape[0]}×{image.shape[1]}"
        elif i == panels - 1:
            ax.imshow(pattern_rgb(projection, preprocess), interpolation="nearest")
            label = f"({_letter(i)}) {projected}"
        else:
            st = stages[i - 1]
            a = st.activation[st.channel].float()
            scale = float(torch.quantile(a.abs().flatten(), 0.995)) or float(a.abs().max()) or 1.0
            ax.imshow(a.cpu().numpy(), cmap="gray", vmin=-scale, vmax=scale, interpolation="nearest")
            h, w = a.shape[-2:]
            label = f"({_letter(i)}) {h}×{w} {st.kind}\n{_wrapped_path(st.name)}, ch {st.channel}"
        ax.set_xlabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    last = _letter(panels - 2)
    _note(
        fig,
        0.005,
        f"(b)-({last}): each stage's forward activation, its channel contributing most to the class (gradient x "
        "activation); mid-grey = 0, contrast: 99.5th percentile of |a| | projection: mid-grey = 0, 99.9th of |r|",
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return fig


@dataclass
class GridRow:
    """One layer of a layer grid: per selection the reconstruction (3, H, W), box, channel, value."""

    layer: str
    reconstructions: Tensor  # (K, 3, H, W)
    boxes: Tensor | None  # (K, 4) top, bottom, left, right; None: whole image
    channels: Sequence[int]
    values: Sequence[float]
    field: tuple[int, int] | None = None  # receptive field (rows, cols) in pixels: the size of every panel


def layer_grid(
    image: np.ndarray, rows: Sequence[GridRow], preprocess: Preprocess, *, title: str, pairs_per_row: int = 3
) -> Figure:
    """Zeiler-Fergus Fig. 2 style: for each selected feature map, its projection (cropped to the
    receptive field of the strongest activation) beside the matching image patch."""
    h, w = image.shape[:2]
    lines = [(r, i) for r in rows for i in range(0, len(r.channels), pairs_per_row)]
    height = 1.75 * len(lines) + 0.9
    fig = plt.figure(figsize=(1.6 * 2 * pairs_per_row + 1.2, height))
    ratios = [1, 1, 0.25] * pairs_per_row
    margins = {"top": 1 - 0.6 / height, "bottom": 0.45 / height}
    grid = fig.add_gridspec(
        len(lines), 3 * pairs_per_row - 1, width_ratios=ratios[:-1], wspace=0.05, hspace=0.35, **margins
    )
    for li, (row, start) in enumerate(lines):
        boxes = row.boxes.tolist() if row.boxes is not None else [(0, h, 0, w)] * len(row.channels)
        cell = (max(b - t for t, b, _, _ in boxes), max(r - q for _, _, q, r in boxes))
        if row.field is not None and row.boxes is not None:
            cell = (max(cell[0], min(row.field[0], h)), max(cell[1], min(row.field[1], w)))
        for j in range(2 * pairs_per_row):
            ax = fig.add_subplot(grid[li, j + j // 2])
            _off(ax)
            k = start + j // 2
            if k >= len(row.channels):
                ax.set_visible(False)
                continue
            t, b, left, right = boxes[k]
            if j % 2 == 0:
                crop = pattern_rgb(row.reconstructions[k][:, t:b, left:right], preprocess)
                ax.set_title(f"map {row.channels[k]}: {row.values[k]:.3g}", fontsize=7.5, loc="left")
            else:
                crop = image[t:b, left:right]
            ax.imshow(_in_cell(crop, boxes[k], cell, (h, w)), interpolation="nearest")
            if j == 0 and start == 0:
                letter = string.ascii_lowercase[rows.index(row)]
                ax.set_ylabel(f"({letter}) {row.layer}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    pair = "projection to pixels (mid-grey = 0, contrast: 99.9th percentile of |r| per panel)"
    patch = "image patch under its receptive field (light grey: beyond the image's edge)"
    _note(fig, 0.005, f"each pair: {pair} | {patch};\n'map c: a' = feature map c, strongest activation a")
    return fig


def _in_cell(crop: np.ndarray, box: Sequence[int], cell: tuple[int, int], plane: tuple[int, int]) -> np.ndarray:
    """A receptive-field crop (h, w, 3) placed in a light grey cell of the row's common size (the field's): a
    field cut off by the image's edge keeps the side it has, so panels of one layer line up."""
    out = np.full((*cell, 3), 0.88, np.float32)
    t, b, left, right = box
    offsets = []
    for lo, hi, size, extent in ((t, b, cell[0], plane[0]), (left, right, cell[1], plane[1])):
        if lo == 0 and hi < extent:  # cut off before the start: what is missing lies before it
            offsets.append(size - (hi - lo))
        elif hi == extent and lo > 0:
            offsets.append(0)
        else:
            offsets.append((size - (hi - lo)) // 2)
    y, x = offsets
    out[y : y + crop.shape[0], x : x + crop.shape[1]] = crop
    return out


def _edges(starts: Tensor, size: int) -> np.ndarray:
    """Cell edges around occluder centres (start + size / 2): midways between neighbours."""
    c = starts.double().numpy() + size / 2
    if len(c) == 1:
        return np.array([c[0] - size / 2, c[0] + size / 2])
    mid = (c[:-1] + c[1:]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def _occlusion_panel(
    fig: Figure, ax, image: np.ndarray, values: Tensor, baseline: float, res: OcclusionResult, what: str, fmt: str
) -> None:
    """One occlusion map in image coordinates over a faint grey copy of the image, with a colorbar."""
    h, w = image.shape[:2]
    v = values.double().numpy()
    lo, hi = min(v.min(), baseline), max(v.max(), baseline)
    varies = hi - lo > 1e-6 * max(abs(lo), abs(hi))  # beyond float32 rounding
    ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=1, alpha=0.35, extent=(0, w, h, 0))
    vmin, vmax = (lo, hi) if varies else (lo - 1, lo + 1)
    mesh = ax.pcolormesh(
        _edges(res.cols, res.size), _edges(res.rows, res.size), v, cmap="viridis", vmin=vmin, vmax=vmax
    )
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    bar = fig.colorbar(mesh, cax=ax.inset_axes((1.03, 0, 0.05, 1)))  # beside the map, which keeps its size
    bar.ax.tick_params(labelsize=7)
    bar.ax.axhline(baseline, color="w", lw=2)
    bar.ax.axhline(baseline, color="k", lw=0.8)
    if varies:
        i, j = np.unravel_index(v.argmin(), v.shape)
        what += f"\nlowest {v.min():{fmt}} (occluder at row {int(res.rows[i])}, col {int(res.cols[j])})"
    else:
        what += f"\nconstant: {lo:{fmt}} wherever the occluder is"
    ax.set_xlabel(what + f"; unoccluded {baseline:{fmt}}", fontsize=8)


def occlusion_figure(
    image: np.ndarray,
    res: OcclusionResult,
    projection: Tensor,
    *,
    strongest: float,
    preprocess: Preprocess,
    title: str,
    class_name: str | None = None,
) -> Figure:
    """Zeiler-Fergus Fig. 7: (a) the input and the occluder, (b) the feature map's total activation for each
    occluder position, (c) the projection of its strongest activation, (d) the class probability, if any.

    image: (H, W, 3) RGB in [0, 1]; projection: (3, H, W) in input space.
    """
    n = 3 if res.probability is None else 4
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 4.1))
    h, w = image.shape[:2]
    for ax in axes:
        _off(ax)
    axes[0].imshow(image, interpolation="nearest", extent=(0, w, h, 0))
    grey = preprocess.to_rgb(res.grey.view(3, 1, 1).float())[:, 0, 0].clamp(0, 1).tolist()
    for colour, width in (("w", 2.5), ("k", 1)):  # the occluder, to scale, in the top-left corner
        axes[0].add_patch(plt.Rectangle((2, 2), res.size, res.size, facecolor=grey, edgecolor=colour, lw=width))
    occluder = f"occluder {res.size}×{res.size}\n(top left, to scale), stride {res.stride}"
    axes[0].set_xlabel(f"(a) input {h}×{w}; {occluder}", fontsize=8)
    label = f"(b) total activation of map {res.channel}"
    _occlusion_panel(
        fig, axes[1], image, values=res.activation, baseline=res.baseline_activation, res=res, what=label, fmt=".4g"
    )
    axes[2].imshow(pattern_rgb(projection, preprocess), interpolation="nearest", extent=(0, w, h, 0))
    what = f"strongest activation\n({strongest:.4g}) projected to pixels"
    what = what if projection.any() else f"strongest activation ({strongest:.4g})\nprojects to 0 everywhere"
    axes[2].set_xlabel(f"(c) map {res.channel}'s {what}", fontsize=8)
    if res.probability is not None:
        label = f"(d) p({class_name or f'class {res.cls}'})"
        _occlusion_panel(
            fig,
            axes[3],
            image,
            values=res.probability,
            baseline=res.baseline_probability,
            res=res,
            what=label,
            fmt=".3g",
        )
    fig.suptitle(title, fontsize=10)
    maps = "each value at the centre of its occluder position, colours spanning the map and the unoccluded value"
    contrast = "projection: mid-grey = 0, contrast: 99.9th percentile of |r|"
    _note(fig, 0.01, f"maps: {maps} (line on the colorbar) | {contrast}")
    fig.tight_layout(rect=(0, 0.04, 1, 1), w_pad=2.5)
    return fig


def save(fig: Figure, path: str | os.PathLike, *, dpi: int = 150, also: dict | None = None) -> Path:
    """Write the figure atomically (temp file, then rename); the format follows the suffix. also: more files
    ({path: bytes}) written with it, all or none."""
    path = Path(path)
    fmt = "jpeg" if (fmt := figure_format(path)) == "jpg" else fmt
    check_dpi(dpi)
    check_pixels(fig, dpi)
    files = {path: lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")}
    files |= {Path(p): (lambda f, b=data: f.write(b)) for p, data in (also or {}).items()}
    try:
        write_files(files)
    finally:
        plt.close(fig)
    return path


MAX_DPI = 1200
MAX_PIXELS = 200_000_000  # a figure above this (size x dpi squared) needs gigabytes to draw; about 14000 px square


def check_pixels(fig: Figure, dpi: int) -> None:
    """A figure of width x height inches at `dpi` stays under MAX_PIXELS; refused before it is drawn."""
    w, h = fig.get_size_inches()
    if w * h * dpi * dpi > MAX_PIXELS:
        most = int((MAX_PIXELS / (w * h)) ** 0.5)
        plt.close(fig)
        raise DeconvvizError(
            f"the figure would be {w * dpi:.0f}x{h * dpi:.0f} pixels at dpi {dpi}, more than {MAX_PIXELS // 10**6} "
            f"million; use dpi {most} or less",
            about="dpi",
        )


def check_dpi(dpi: int) -> None:
    if not 1 <= dpi <= MAX_DPI:
        raise DeconvvizError(f"dpi {dpi} is not a usable resolution; use 1 to {MAX_DPI}, such as 150", about="dpi")


def figure_format(path: str | os.PathLike) -> str:
    """The file format a figure path asks for (its suffix); unknown suffixes fail before any work is done."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise DeconvvizError(f"cannot write '{path}': unknown format '{fmt or '(none)'}'; use .png, .pdf, .svg or .jpg")
    return fmt


def compare_figure(
    image: np.ndarray,
    projections: dict[str, Tensor],
    boxes: Tensor,
    *,
    channels: Sequence[int],
    values: Sequence[float],
    field: tuple[int, int] | None,
    preprocess: Preprocess,
    title: str,
) -> Figure:
    """Springenberg et al. style: per selection (rows) the image patch, then each rule's projection (columns),
    all cropped to the receptive field. projections: rule title -> (K, 3, H, W); boxes (K, 4)."""
    h, w = image.shape[:2]
    box_list = boxes.tolist()
    cell = (max(b - t for t, b, _, _ in box_list), max(r - q for _, _, q, r in box_list))
    if field is not None:
        cell = (max(cell[0], min(field[0], h)), max(cell[1], min(field[1], w)))
    cols = 1 + len(projections)
    fig, axes = plt.subplots(len(channels), cols, figsize=(1.9 * cols, 1.9 * len(channels) + 0.9), squeeze=False)
    for k, row_axes in enumerate(axes):
        t, b, left, right = box_list[k]
        panels = [("image patch", image[t:b, left:right])]
        panels += [(name, pattern_rgb(r[k][:, t:b, left:right], preprocess)) for name, r in projections.items()]
        for j, (ax, (name, crop)) in enumerate(zip(row_axes, panels, strict=True)):
            _off(ax)
            ax.imshow(_in_cell(crop, box_list[k], cell, (h, w)), interpolation="nearest")
            if k == 0:
                ax.set_title(f"({string.ascii_lowercase[j]}) {name}", fontsize=9)
        row_axes[0].set_ylabel(f"map {channels[k]}: {values[k]:.3g}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    contrast = "projections: mid-grey = 0, contrast: 99.9th percentile of |r| per panel"
    each_row = "each row one feature map's strongest activation, cropped to its receptive field"
    _note(fig, 0.005, f"{contrast}; {each_row} (light grey: beyond the image)", 6.5, wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def sanity_figure(
    image: np.ndarray,
    images: dict[str, Tensor],
    box: Sequence[int],
    *,
    columns: Sequence[str],
    scores: dict[str, Sequence[float | None]],
    ssim: dict[str, Sequence[float | None]],
    preprocess: Preprocess,
    title: str,
    fixed: dict[str, tuple[Tensor, float | None]] | None = None,
) -> Figure:
    """Cascading randomization (Adebayo et al. Fig. 2 layout): rows = rules, columns = trained, then randomized
    from the layer down to each named layer; under each panel its Spearman |r| with the trained one. Below,
    the same numbers (and SSIM) as curves. images: rule title -> (1 + steps, 3, H, W). fixed: rule title ->
    (the trained picture with the switches replaced by fixed positions (3, H, W), its Spearman |r|), a last column."""
    t, b, left, right = box
    if fixed:
        images = {k: torch.cat([v, fixed[k][0][None]]) for k, v in images.items()}
        scores = {k: [*v, fixed[k][1]] for k, v in scores.items()}
    n_rules, n_cols = len(images), 1 + len(columns) + bool(fixed)
    fig = plt.figure(figsize=(1.05 * (n_cols + 1) + 0.6, 1.25 * n_rules + 3.6))
    grid = fig.add_gridspec(n_rules + 1, n_cols + 1, height_ratios=[1] * n_rules + [2.2], hspace=0.45, wspace=0.08)
    ax = fig.add_subplot(grid[0, 0])
    _off(ax)
    ax.imshow(image[t:b, left:right], interpolation="nearest")
    ax.set_title("(a) image patch", fontsize=7)
    for i, (rule, pics) in enumerate(images.items()):
        for j in range(n_cols):
            ax = fig.add_subplot(grid[i, j + 1])
            _off(ax)
            r = pics[j][:, t:b, left:right]
            if r.any():
                ax.imshow(pattern_rgb(r, preprocess), interpolation="nearest")
            else:
                ax.imshow(np.full((*r.shape[-2:], 3), 0.5), vmin=0, vmax=1)
                ax.text(0.5, 0.5, "all zero", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            if i == 0:
                name = "trained" if j == 0 else f"→ {columns[j - 1]}" if j <= len(columns) else "fixed positions"
                ax.set_title(name, fontsize=6.5, rotation=0)
            if j == 0:
                ax.set_ylabel(rule, fontsize=8)
            else:
                s = scores[rule][j - 1]
                ax.set_xlabel("n/a" if s is None else f"ρ {s:.2f}", fontsize=6.5, labelpad=1)
    ax = fig.add_subplot(grid[n_rules, 1:])
    steps = np.arange(1, len(columns) + 1)
    for k, rule in enumerate(images):
        color = f"C{k}"
        spearman = [np.nan if v is None else v for v in scores[rule][: len(columns)]]
        ax.plot(steps, spearman, "o-", color=color, ms=3, label=f"{rule}: Spearman |r|")
        structural = [np.nan if v is None else v for v in ssim[rule]]
        ax.plot(steps, structural, "s--", color=color, ms=3, alpha=0.6, label=f"{rule}: SSIM |r|")
    ax.set_xticks(steps, list(columns), rotation=45, fontsize=7)
    ax.set_ylim(-0.1, 1.05)
    ax.axhline(0, color="0.7", lw=0.5)
    ax.set_ylabel("similarity to trained", fontsize=8)
    ax.set_xlabel("weights re-initialized from the layer down to ...", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6.5, ncol=len(images), loc="lower left")
    panel = f"({string.ascii_lowercase[1]}) cascading randomization, similarity inside the receptive field"
    ax.set_title(panel, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9.5)
    rho = "ρ: Spearman rank correlation of |r| (colour channels summed) with the trained projection"
    contrast = "projections: mid-grey = 0, contrast: 99.9th percentile of |r| per panel"
    _note(fig, 0.005, f"{rho}, inside the unit's receptive field; {contrast}")
    return fig


def filter_grid(templates: Tensor, title: str) -> Figure:
    """First-layer filters (K, 3, kh, kw) as RGB colour patches, index above each. Normalization "own max":
    each filter scaled by its own largest |weight| to 0.5 + w / (2 max|w|), so mid-grey is 0."""
    k = templates.shape[0]
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols, 0.95 * rows + 0.6), squeeze=False)
    scale = templates.abs().flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    shown = (0.5 + templates / (2 * scale)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    for i, ax in enumerate(axes.flat):
        _off(ax)
        if i < k:
            ax.imshow(shown[i], interpolation="nearest")
            ax.set_title(str(i), fontsize=6, pad=2)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def invariance_figure(
    thumbs: Sequence[tuple[str, np.ndarray]],
    amounts: Tensor,
    unit: str,
    *,
    curves: Sequence[tuple[str, Tensor, str]],
    title: str,
) -> Figure:
    """Zeiler & Fergus Fig. 5: (a) the transformed image at a few amounts, then one panel per curve
    (label, values (T,), y-axis label) against the amount. Numbers are drawn as they are."""
    fig = plt.figure(figsize=(max(2.6 * len(curves), 2.0 * len(thumbs)), 5.6))
    grid = fig.add_gridspec(2, 1, height_ratios=(1, 1.4), hspace=0.35)
    top = grid[0].subgridspec(1, len(thumbs), wspace=0.05)
    for i, (label, picture) in enumerate(thumbs):
        ax = fig.add_subplot(top[i])
        _off(ax)
        ax.imshow(picture)
        ax.set_title(label, fontsize=7)
        if i == 0:
            ax.text(-0.08, 1.0, "(a)", transform=ax.transAxes, fontsize=9, fontweight="bold", va="bottom", ha="right")
    bottom = grid[1].subgridspec(1, len(curves), wspace=0.4)
    for i, (label, values, ylabel) in enumerate(curves):
        ax = fig.add_subplot(bottom[i])
        ax.plot(amounts.numpy(), values.numpy(), marker="o", markersize=2.5, linewidth=1)
        ax.set_title(f"({string.ascii_lowercase[i + 1]}) {label}", fontsize=8)
        ax.set_xlabel(unit, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=9)
    return fig


@dataclass
class AblationPanel:
    """One variant's column in the ablation figure: its pictures (3, H, W) and the numbers under each."""

    title: str
    trained: Tensor
    randomized: Tensor
    trained_note: str  # e.g. "vs ZF ρ 0.83 S 0.71"
    randomized_note: str


def ablation_figure(
    image: np.ndarray,
    edges: Tensor,
    panels: Sequence[AblationPanel],
    *,
    box: Sequence[int],
    preprocess: Preprocess,
    title: str,
    note: str,
) -> Figure:
    """Mahendran & Vedaldi Fig. 3 layout: the unit's image patch and the edge map, then one column per reverse-pass
    variant, through the trained weights (top row) and the randomized ones (bottom), all cropped to the unit's
    receptive field `box`, each panel `centred` on its own contrast. edges: (3, H, W) in [0, 1]."""
    t, b, left, right = box
    cols = 1 + len(panels)
    fig, axes = plt.subplots(2, cols, figsize=(1.3 * cols, 4.4), squeeze=False)
    first = [
        ("(a) image patch", image[t:b, left:right]),
        ("(b) edge map", edges[0, t:b, left:right].float().cpu().numpy()),
    ]
    for ax, (name, crop) in zip(axes[:, 0], first, strict=True):
        _off(ax)
        ax.imshow(crop, cmap="gray" if crop.ndim == 2 else None, interpolation="nearest")
        ax.set_title(name, fontsize=7)
    for j, p in enumerate(panels, start=1):
        for i, (pic, words) in enumerate(((p.trained, p.trained_note), (p.randomized, p.randomized_note))):
            ax = axes[i, j]
            _off(ax)
            crop = pic[:, t:b, left:right]
            if crop.any():
                ax.imshow(pattern_rgb(crop, preprocess), interpolation="nearest")
            else:
                ax.imshow(np.full((*crop.shape[-2:], 3), 0.5), vmin=0, vmax=1)
                ax.text(0.5, 0.5, "all zero", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            ax.set_xlabel(words, fontsize=5.5, labelpad=2)
            if i == 0:
                ax.set_title(p.title, fontsize=6.5)
    axes[0, 1].set_ylabel("(c) trained", fontsize=7.5)
    axes[1, 1].set_ylabel("(d) randomized", fontsize=7.5)
    fig.suptitle(title, fontsize=9)
    fig.text(0.5, 0.01, note, ha="center", fontsize=6, color="0.3", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95), h_pad=1.5)
    return fig
