"""Figures drawn from projections. Rendering never changes numbers; it only normalizes for display:

- reconstructions (pixel space): `centred` -- 0.5 + r / (2 s), s the 99.9th percentile of |r| over the
  panel (the receptive-field crop in layer grids), so zero is mid-grey and the sign is kept;
- intermediate stages (many channels): `stage_map` -- the channel mean of the rectified signal,
  divided by its 99.5th percentile and clipped to [0, 1], shown in grey levels.
"""

from __future__ import annotations

import os
import string
import tempfile
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

from .errors import DeconvvizError  # noqa: E402
from .images import centred  # noqa: E402
from .preprocess import Preprocess  # noqa: E402
from .reverse import Stage  # noqa: E402

FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
RECONSTRUCTION_PERCENTILE = 99.9


def stage_map(t: Tensor, percentile: float = 99.5) -> np.ndarray:
    """(C, H, W) stage signal to an (H, W) map in [0, 1]: channel mean of the rectified signal, robustly scaled."""
    m = t.clamp_min(0).mean(0).float()
    s = torch.quantile(m.flatten(), percentile / 100) if m.numel() else m.new_tensor(0)
    s = s if s > 0 else m.max()
    return (m / s).clamp(0, 1).cpu().numpy() if s > 0 else np.zeros(m.shape, np.float32)


def pattern_rgb(r: Tensor, preprocess: Preprocess) -> np.ndarray:
    """Input-space reconstruction (3, H, W) to RGB (H, W, 3) for display (preprocessing undone, `centred`)."""
    return centred(preprocess.to_rgb(r.float(), pattern=True), RECONSTRUCTION_PERCENTILE).permute(1, 2, 0).cpu().numpy()


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def reconstruction_figure(image: np.ndarray, stages: Sequence[Stage], preprocess: Preprocess, title: str) -> Figure:
    """Layer-by-layer reconstruction (Noh et al. Fig. 4 layout): (a) input, then every reverse stage.

    image: (H, W, 3) RGB in [0, 1]; each stage tensor is one selection, (C, h, w); the last stage is the
    pixel-space reconstruction, drawn in colour.
    """
    panels = [("input", image)] + [(s, None) for s in stages]
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.55 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        _off(ax)
        if i >= len(panels):
            ax.set_visible(False)
            continue
        letter = string.ascii_lowercase[i]
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
            else:
                ax.imshow(stage_map(t), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            label = f"({letter}) {h}×{w} {'unpooling' if st.kind == 'unpool' else 'deconv'}"
            label += "\n(reconstruction)" if last else f"\n{st.name}"
        ax.set_xlabel(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@dataclass
class GridRow:
    """One layer of a layer grid: per selection the reconstruction (3, H, W), box, channel, value."""

    layer: str
    reconstructions: Tensor  # (K, 3, H, W)
    boxes: Tensor | None  # (K, 4) top, bottom, left, right; None: whole image
    channels: Sequence[int]
    values: Sequence[float]


def layer_grid(image: np.ndarray, rows: Sequence[GridRow], preprocess: Preprocess, title: str,
               pairs_per_row: int = 3) -> Figure:  # fmt: skip
    """Zeiler-Fergus Fig. 2 style: for each selected feature map, its projection (cropped to the
    receptive field of the strongest activation) beside the matching image patch."""
    lines = [(r, i) for r in rows for i in range(0, len(r.channels), pairs_per_row)]
    fig = plt.figure(figsize=(1.6 * 2 * pairs_per_row + 1.2, 1.75 * len(lines) + 0.8))
    ratios = [1, 1, 0.25] * pairs_per_row
    grid = fig.add_gridspec(len(lines), 3 * pairs_per_row - 1, width_ratios=ratios[:-1], wspace=0.05, hspace=0.35)
    for li, (row, start) in enumerate(lines):
        for j in range(2 * pairs_per_row):
            ax = fig.add_subplot(grid[li, j + j // 2])
            _off(ax)
            k = start + j // 2
            if k >= len(row.channels):
                ax.set_visible(False)
                continue
            t, b, left, right = (
                row.boxes[k].tolist() if row.boxes is not None else (0, *image.shape[:1], 0, image.shape[1])
            )
            if j % 2 == 0:
                ax.imshow(pattern_rgb(row.reconstructions[k][:, t:b, left:right], preprocess), interpolation="nearest")
                ax.set_title(f"map {row.channels[k]}: {row.values[k]:.3g}", fontsize=7.5, loc="left")
            else:
                ax.imshow(image[t:b, left:right], interpolation="nearest")
            if j == 0 and start == 0:
                letter = string.ascii_lowercase[rows.index(row)]
                ax.set_ylabel(f"({letter}) {row.layer}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.005, "each pair: projection to pixels (mid-grey = 0, contrast: 99.9th percentile of |r| per panel) "
             "| image patch under its receptive field; 'map c: a' = feature map c, strongest activation a",
             ha="center", fontsize=7, color="0.3")  # fmt: skip
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write the figure atomically (temp file, then rename); the format follows the suffix."""
    path = Path(path)
    fmt = figure_format(path)
    write_atomic(path, lambda f: fig.savefig(f, format="jpeg" if fmt == "jpg" else fmt, dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return path


def figure_format(path: str | os.PathLike) -> str:
    """The file format a figure path asks for (its suffix); unknown suffixes fail before any work is done."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise DeconvvizError(f"cannot write '{path}': unknown format '{fmt or '(none)'}'; use .png, .pdf, .svg or .jpg")
    return fmt


def write_atomic(path: Path, write) -> None:
    """Call write(file) on a temp file beside `path`, then rename it over `path`: never a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise DeconvvizError(f"cannot write '{path}': {e.strerror}; choose another --out") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
