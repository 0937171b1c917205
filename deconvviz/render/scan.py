"""A scan's figures, composed from tiles with Pillow: per feature map the projections of its k strongest images
beside the image patches under them (LAYER/channel-C.png), and up to 16 maps in one (LAYER/overview.png).

The tiles are pasted into one picture and enlarged by a whole factor (nearest), not plotted: a feature map costs
about its display normalization (`draw.pattern_rgb`, the `centred` of every figure) and a PNG, a small part of a
matplotlib figure's cost. The text is DejaVu Sans, the font of the other figures.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..analysis.scan import ScanResult, preprocessed
from ..engine.progress import Progress
from ..engine.reverse import UNPOOLS
from ..engine.rules import get_rule
from ..images import to_display
from ..networks.weights import Weights
from ..outputs import write_atomic
from ..preprocess import Preprocess
from .draw import pattern_rgb

OVERVIEW_CHANNELS = 16  # at most this many feature maps in overview.png
CHANNEL_PANEL = 400  # pixels (about): the side of each of a channel figure's two mosaics
OVERVIEW_PANEL = 200  # the same for each mosaic of the overview
DRAWING_THREADS = min(8, os.cpu_count() or 1)  # channel figures drawn at once
TEXT = {"title": 20, "caption": 18, "label": 14, "note": 13}  # font sizes in pixels
MARGIN, INK, NOTE_INK = 12, (0, 0, 0), (77, 77, 77)
SCAN_NOTE = (
    "projections to pixels (mid-grey = 0, contrast: 99.9th percentile of |r| per crop), cropped to the "
    "receptive field of the activation | the image patches under it"
)

Box = tuple[int, int, int, int]  # left, top, right, bottom (half-open), in the picture's pixels


@dataclass
class TopImages:
    """One feature map's k strongest images of a dataset scan: reconstructions (k, 3, H, W), the image patches
    under their receptive fields ((h, w, 3) RGB in [0, 1]), boxes (top, bottom, left, right; None: all), values."""

    layer: str
    channel: int
    reconstructions: Tensor
    patches: Sequence[np.ndarray]
    boxes: Sequence[tuple[int, int, int, int] | None]
    values: Sequence[float]


@dataclass
class Sheet:
    """A composed figure: the picture, and per feature map where each record's projection and patch tile lies in
    it (best first); each tile pixel is `scale` x `scale` picture pixels."""

    picture: Image.Image
    projections: dict[int, list[Box]]
    patches: dict[int, list[Box]]
    scale: int


@dataclass
class _Mosaic:
    """Tiles centred in equal cells on white: the picture (h, w, 3) in [0, 1], each cell's top-left corner (x, y)
    and each tile's box."""

    picture: np.ndarray
    corners: list[tuple[int, int]]
    tiles: list[Box]


def _mosaic(tiles: Sequence[np.ndarray], cols: int) -> _Mosaic:
    """Tiles (h, w, 3) centred in equal cells (the largest tile) on white, `cols` a row."""
    ch, cw = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    gap = max(1, max(ch, cw) // 24)
    rows = -(-len(tiles) // cols)
    canvas = np.ones((rows * (ch + gap) - gap, cols * (cw + gap) - gap, 3), np.float32)
    corners, boxes = [], []
    for i, t in enumerate(tiles):
        y, x = (i // cols) * (ch + gap), (i % cols) * (cw + gap)
        top, left = y + (ch - t.shape[0]) // 2, x + (cw - t.shape[1]) // 2
        canvas[top : top + t.shape[0], left : left + t.shape[1]] = t
        corners.append((x, y))
        boxes.append((left, top, left + t.shape[1], top + t.shape[0]))
    return _Mosaic(canvas, corners, boxes)


def _top_mosaics(t: TopImages, preprocess: Preprocess) -> tuple[_Mosaic, _Mosaic]:
    """The projections (cropped to the receptive field, `centred` per crop) and the patches, as two square-ish grids."""
    boxed = zip(t.reconstructions, t.boxes, strict=True)
    crops = [pattern_rgb(r if b is None else r[:, b[0] : b[1], b[2] : b[3]], preprocess) for r, b in boxed]
    cols = math.ceil(math.sqrt(len(crops)))
    return _mosaic(crops, cols), _mosaic(list(t.patches), cols)


_FONTS = threading.local()  # each thread its own fonts: a FreeType face is not to be shared between threads


def _font(size: int) -> ImageFont.FreeTypeFont:
    fonts = _FONTS.__dict__.setdefault("sizes", {})
    if size not in fonts:
        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        fonts[size] = ImageFont.truetype(str(path), size)
    return fonts[size]


@lru_cache(maxsize=256)
def _lines(text: str, kind: str, width: int) -> tuple[str, ...]:
    """`text` broken between words into lines at most `width` pixels wide (a longer word keeps its own line)."""
    font, lines = _font(TEXT[kind]), [""]
    for word in text.split(" "):
        line = f"{lines[-1]} {word}".strip()
        if lines[-1] and font.getlength(line) > width:
            lines.append(word)
        else:
            lines[-1] = line
    return tuple(lines)


def _text_height(font: ImageFont.FreeTypeFont, lines: int = 1) -> int:
    ascent, descent = font.getmetrics()
    return lines * (ascent + descent) + (lines - 1) * 2


def _centred_text(draw: ImageDraw.ImageDraw, y: int, text: str, *, width: int, kind: str, fill=INK) -> int:
    """`text` wrapped to `width` and centred on it from height y; returns the height below it."""
    font = _font(TEXT[kind])
    for line in _lines(text, kind, width - 2 * MARGIN):
        draw.text((width // 2, y), line, font=font, fill=fill, anchor="ma")
        y += _text_height(font) + 2
    return y


def _uint8(picture: np.ndarray, scale: int) -> Image.Image:
    """(h, w, 3) in [0, 1] to an RGB picture, each pixel `scale` x `scale` (nearest)."""
    image = Image.fromarray((np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def _scale(mosaics: Sequence[_Mosaic], panel: int) -> int:
    """The whole factor that makes the largest mosaic about `panel` pixels on its longer side (at least 1)."""
    side = max(max(m.picture.shape[:2]) for m in mosaics)
    return max(1, round(panel / side))


def _moved(boxes: Sequence[Box], scale: int, x: int, y: int) -> list[Box]:
    return [(x + a * scale, y + b * scale, x + c * scale, y + d * scale) for a, b, c, d in boxes]


def _label(picture: Image.Image, xy: tuple[int, int], text: str) -> None:
    """A value in a corner, on a white box that lets a fifth of the tile show through."""
    font = _font(TEXT["label"])
    left, top, right, bottom = font.getbbox(text)
    box = (xy[0], xy[1], xy[0] + right + 4, xy[1] + bottom + 3)
    region = picture.crop(box)
    picture.paste(Image.blend(region, Image.new("RGB", region.size, "white"), 0.8), box[:2])
    ImageDraw.Draw(picture).text((xy[0] + 2, xy[1] + 1), text, font=font, fill=INK)


def channel_sheet(t: TopImages, preprocess: Preprocess, title: str | None = None) -> Sheet:
    """One feature map, Zeiler-Fergus Fig. 2 style: the projections of its k strongest images (left, each
    labelled with its activation) beside the image patches that caused them (right)."""
    proj, patches = _top_mosaics(t, preprocess)
    scale = _scale((proj, patches), CHANNEL_PANEL)
    panels = [_uint8(proj.picture, scale), _uint8(patches.picture, scale)]
    gap = 4 * MARGIN
    width = 2 * MARGIN + panels[0].width + gap + panels[1].width
    title = title or f"{t.layer}, feature map {t.channel}: its {len(t.values)} strongest images"
    caption, note = _font(TEXT["caption"]), _font(TEXT["note"])
    title_lines = len(_lines(title, "title", width - 2 * MARGIN))
    note_lines = len(_lines(SCAN_NOTE, "note", width - 2 * MARGIN))
    top = MARGIN + _text_height(_font(TEXT["title"]), title_lines) + 2 * title_lines + MARGIN
    panel_top = top + _text_height(caption) + 6
    below = panel_top + max(p.height for p in panels) + MARGIN
    picture = Image.new("RGB", (width, below + _text_height(note, note_lines) + 2 * note_lines + MARGIN), "white")
    draw = ImageDraw.Draw(picture)
    _centred_text(draw, MARGIN, title, width=width, kind="title")
    lefts = (MARGIN, MARGIN + panels[0].width + gap)
    for left, panel, what in zip(lefts, panels, ("projections", "image patches"), strict=True):
        draw.text((left + panel.width // 2, top), what, font=caption, fill=INK, anchor="ma")
        picture.paste(panel, (left, panel_top))
    for (x, y), v in zip(proj.corners, t.values, strict=True):
        _label(picture, (lefts[0] + x * scale, panel_top + y * scale), f"{v:.3g}")
    _centred_text(draw, below, SCAN_NOTE, width=width, kind="note", fill=NOTE_INK)
    return Sheet(
        picture,
        {t.channel: _moved(proj.tiles, scale, lefts[0], panel_top)},
        {t.channel: _moved(patches.tiles, scale, lefts[1], panel_top)},
        scale,
    )


def overview_sheet(items: Sequence[TopImages], preprocess: Preprocess, title: str) -> Sheet:
    """Several feature maps (Zeiler-Fergus Fig. 2): per map a grid of its top projections beside a grid of
    patches, under 'map c: a' (a its strongest activation); every map at one scale."""
    mosaics = [_top_mosaics(t, preprocess) for t in items]
    scale = _scale([m for pair in mosaics for m in pair], OVERVIEW_PANEL)
    ph = max(max(m.picture.shape[0] for m in pair) for pair in mosaics) * scale
    pw = max(max(m.picture.shape[1] for m in pair) for pair in mosaics) * scale
    per_row = math.ceil(math.sqrt(len(items)))
    rows = -(-len(items) // per_row)
    label = _font(TEXT["label"])
    inner, between = MARGIN, 3 * MARGIN  # projections to patches; one map to the next
    cell_w, cell_h = 2 * pw + inner, _text_height(label) + 4 + ph
    width = 2 * MARGIN + per_row * cell_w + (per_row - 1) * between
    title_font, note_font = _font(TEXT["title"]), _font(TEXT["note"])
    note = f"each map: {SCAN_NOTE}; 'map c: a' = feature map c, its strongest activation a"
    title_lines = len(_lines(title, "title", width - 2 * MARGIN))
    note_lines = len(_lines(note, "note", width - 2 * MARGIN))
    top = MARGIN + _text_height(title_font, title_lines) + 2 * title_lines + MARGIN
    grid_h = rows * cell_h + (rows - 1) * MARGIN * 2
    height = top + grid_h + MARGIN + _text_height(note_font, note_lines) + 2 * note_lines + MARGIN
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    _centred_text(draw, MARGIN, title, width=width, kind="title")
    projections, patches = {}, {}
    for i, (t, pair) in enumerate(zip(items, mosaics, strict=True)):
        r, c = divmod(i, per_row)
        x, y = MARGIN + c * (cell_w + between), top + r * (cell_h + 2 * MARGIN)
        draw.text((x, y), f"map {t.channel}: {t.values[0]:.3g}", font=label, fill=INK)
        y += _text_height(label) + 4
        for j, (m, found) in enumerate(zip(pair, (projections, patches), strict=True)):
            panel = _uint8(m.picture, scale)
            left = x + j * (pw + inner) + (pw - panel.width) // 2
            panel_top = y + (ph - panel.height) // 2
            picture.paste(panel, (left, panel_top))
            found[t.channel] = _moved(m.tiles, scale, left, panel_top)
    _centred_text(draw, top + grid_h + MARGIN, note, width=width, kind="note", fill=NOTE_INK)
    return Sheet(picture, projections, patches, scale)


def _top_images(result: ScanResult, layer: str, pictures: dict[str, np.ndarray], preprocess: Preprocess):
    """The projected feature maps of `layer` in the scan's order, each with the patches under its records (read
    from the scanned folder; `pictures`: image -> (H, W, 3), each image read once and kept for the next map)."""
    args, per_channel = result.arguments, result.layers[layer]
    for c in result.projected.get(layer, []):
        ch = per_channel[c]
        if ch.projections is None:
            continue
        patches = []
        for r in ch.records:
            if r.image not in pictures:
                x = preprocessed(Path(args.folder) / r.image, preprocess, args.size)
                pictures[r.image] = to_display(x, preprocess)
            top, bottom, left, right = r.box or (0, args.size, 0, args.size)  # None: a classifier layer sees all
            patches.append(pictures[r.image][top:bottom, left:right])
        boxes, values = [r.box for r in ch.records], [r.value for r in ch.records]
        yield TopImages(layer, c, ch.projections, patches, boxes=boxes, values=values)


def scan_figures(
    result: ScanResult,
    out: str | os.PathLike,
    weights: Weights,
    *,
    progress: Progress | None = None,
) -> list[Path]:
    """A scan's figures under `out`: LAYER/channel-C.png for every projected feature map and LAYER/overview.png
    (the first 16, strongest first where the scan chose them). result: from scan_folder or load_result; weights:
    the network's (network.weights), whose preprocessing is undone for display. Returns the files written.

    scan_folder(..., draw=scan_figures) draws them into the run folder before it is swapped in (the command does).
    """
    args, out, pictures, written = result.arguments, Path(out), {}, []
    preprocess = weights.preprocess
    with ThreadPoolExecutor(DRAWING_THREADS) as pool:  # Pillow and torch let go of the GIL while they work
        for layer in result.layers:
            items = list(_top_images(result, layer, pictures, preprocess))
            if not items:
                continue
            (out / layer).mkdir(parents=True, exist_ok=True)
            if progress:
                progress(f"drawing {layer}", 0, len(items))
            drawn = pool.map(partial(_channel_file, folder=out / layer, preprocess=preprocess), items)
            for n, path in enumerate(drawn, start=1):
                written.append(path)
                if progress:
                    progress(f"drawing {layer}", n, len(items))
            title = f"{args.model} ({weights.name}), {layer}: each feature map's {args.top} strongest images"
            title += "" if args.rule == "deconvnet" else f" ({get_rule(args.rule).title})"
            title += "" if args.unpool == "switches" else f" (unpooled: {UNPOOLS[args.unpool]})"
            sheet = overview_sheet(items[:OVERVIEW_CHANNELS], preprocess, title)
            written.append(_save(sheet, out / layer / "overview.png"))
    return written


def _channel_file(t: TopImages, *, folder: Path, preprocess: Preprocess) -> Path:
    return _save(channel_sheet(t, preprocess), folder / f"channel-{t.channel}.png")


def _save(sheet: Sheet, path: Path) -> Path:
    """The sheet as a PNG, written atomically; zlib's fastest level: the figures are mostly noise-like projections,
    which the slower levels shrink by a few percent at twice the time."""
    write_atomic(path, lambda f: sheet.picture.save(f, format="PNG", compress_level=1))
    return path
