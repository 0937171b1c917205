"""Static HTML sites to browse units: a finished dataset scan (`scan_site`) or one image's layers (`explore_site`).

scan run folder -> records, projections (scan.load_result) + the strongest record of every unit projected again
with its reverse stages -> pictures at display size -> one escaped page per unit, layer and the index.

A site is plain files (HTML, one CSS file, JPEG/PNG pictures, vanilla JS, no network): it opens from file://
and from any static host. Every page and picture is written atomically; `.deconvviz-site.json` marks a folder
as a site of deconvviz, so a later build may replace it and no other non-empty folder is ever written into.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from . import __version__
from .deconvnet import Deconvnet
from .errors import DeconvvizError, LayerError
from .forward import output_shapes
from .images import check_size, load_image, to_batch, to_display
from .layers import ReceptiveField, receptive_fields, resolve, step_index
from .preprocess import Preprocess
from .render import pattern_rgb, stage_channel, write_atomic
from .scan import ScanResult, activations, load_result, preprocessed
from .weights import Weights, load_vgg, pick_device

MARKER = ".deconvviz-site.json"
THUMB = 112  # side in pixels of every projection, patch and stage picture: written at the size it is shown
INDEX_UNITS = 8  # a layer's strongest units shown on the scan site's index
PER_POSITION = 5  # explore: units kept per feature-map position, the strongest there
STAGE_CHUNK = 8  # selections per reverse pass with stages (each keeps every stage's full planes)
Progress = Callable[[str, int, int], None]  # (phase, done, total)

_NORMALIZATION = (
    "Projections: mid-grey is zero, contrast set by the 99.9th percentile of |r| of each crop, cropped "
    "to the receptive field of the activation. Stages: each stage's most representative channel (ch c: the "
    "one most like the stage's channel mean, by cosine similarity, as Noh et al. draw them), rectified and "
    "divided by its 99.5th percentile."
)


@dataclass
class SiteSummary:
    """What a site build wrote: the folder, its pages, files and bytes."""

    out: Path
    pages: int
    files: int
    bytes: int


# ---------------------------------------------------------------------------------------------- the site folder


class _SiteFolder:
    """The output folder: refused unless new, empty or a previous site; every file written atomically; files of
    an earlier build that this one did not write are removed at the end."""

    def __init__(self, out: str | os.PathLike, kind: str):
        self.out, self.kind, self.written = Path(out), kind, []
        if self.out.exists() and not self.out.is_dir():
            raise DeconvvizError(f"cannot write a site to '{out}': it is a file; give a folder as --out")
        previous = self.out / MARKER
        if self.out.is_dir() and any(self.out.iterdir()) and not previous.is_file():
            raise DeconvvizError(f"'{out}' is not empty and holds no deconvviz site; give a new or empty --out folder")
        try:
            self.old_files = json.loads(previous.read_text())["files"] if previous.is_file() else []
        except (OSError, ValueError, KeyError, TypeError):
            raise DeconvvizError(f"'{previous}' is unreadable; delete '{out}' or give a new --out folder") from None
        made = [d for d in (self.out, *self.out.parents) if not d.exists()]
        self.created = made[-1] if made else None  # the outermost folder this build makes: removed on failure
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.out).close()
        except OSError as e:
            self.abandon()
            raise DeconvvizError(f"cannot write to '{out}': {e.strerror or e}; give a writable --out folder") from None

    def start(self) -> None:
        """Mark the folder as a (not yet complete) site, so that a crashed build can be rerun into it."""
        self._marker(complete=False, files=self.old_files)

    def _marker(self, *, complete: bool, files: list[str]) -> None:
        data = {"deconvviz": __version__, "kind": self.kind, "complete": complete, "files": sorted(set(files))}
        write_atomic(self.out / MARKER, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))

    def write(self, rel: str, data: bytes) -> None:
        write_atomic(self.out / rel, lambda f: f.write(data))
        self.written.append(rel)

    def page(self, rel: str, text: str) -> None:
        self.write(rel, text.encode())

    def picture(self, rel: str, rgb: np.ndarray, side: int = THUMB) -> tuple[int, int]:
        """(h, w, 3) or (h, w) in [0, 1], longer side scaled to `side` (upscaled without smoothing); its (w, h)."""
        img = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
        scale = side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90) if rel.endswith(".jpg") else img.save(buf, format="PNG")
        self.write(rel, buf.getvalue())
        return size

    def finish(self) -> SiteSummary:
        inside = self.out.resolve()
        for rel in set(self.old_files) - set(self.written):
            stale = self.out / rel
            if stale.resolve().is_relative_to(inside):  # the marker is data: never a path out of the site
                stale.unlink(missing_ok=True)
        self._marker(complete=True, files=self.written)
        files = set(self.written)
        size = sum((self.out / f).stat().st_size for f in files)
        return SiteSummary(self.out, sum(f.endswith(".html") for f in files), len(files), size)

    def abandon(self) -> None:
        """A build that failed leaves nothing of a folder it created."""
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)


def _folder_name(layer: str) -> str:
    """A layer name as a folder name: letters, digits, _ . - only (module paths such as features.28 stay)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", layer)
    return "_" + name if name.startswith(".") or not name else name


# ------------------------------------------------------------------------------------------------------- HTML

e = html.escape  # every text and attribute value from data goes through this (quote=True by default)

_CSS = """
:root { --fg: #1d2126; --muted: #5b6470; --line: #d9dde3; --accent: #1f5fbf; --bg: #fff; --tile: #f5f6f8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header { padding: 10px 20px; border-bottom: 1px solid var(--line); display: flex; gap: 16px; align-items: baseline;
         flex-wrap: wrap; }
header .crumbs a { color: var(--accent); text-decoration: none; }
header nav { margin-left: auto; display: flex; gap: 12px; }
header nav a { color: var(--accent); text-decoration: none; }
header nav span.off { color: var(--line); }
main { padding: 12px 20px 32px; }
h1 { font-size: 20px; margin: 6px 0 10px; }
h2 { font-size: 16px; margin: 22px 0 8px; }
h3 { font-size: 15px; margin: 16px 0 2px; }
a { color: var(--accent); }
table.facts { border-collapse: collapse; }
table.facts th { text-align: left; color: var(--muted); font-weight: normal; padding: 2px 14px 2px 0;
                 vertical-align: top; }
table.facts td { padding: 2px 0; }
pre { background: var(--tile); padding: 10px; overflow: auto; font-size: 12px; border-radius: 4px; }
.note { color: var(--muted); font-size: 12px; max-width: 70em; }
.controls { display: flex; gap: 16px; align-items: center; margin: 6px 0 12px; flex-wrap: wrap; }
.controls input.bad { outline: 2px solid #c33; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; }
.tile { display: block; background: var(--tile); border-radius: 5px; padding: 6px; color: var(--fg);
        text-decoration: none; border: 1px solid transparent; }
.tile:hover, .tile:focus { border-color: var(--accent); }
.tile .pair { display: flex; gap: 4px; }
.tile .caption { font-size: 12px; margin-top: 4px; display: flex; justify-content: space-between; gap: 8px; }
.tile .caption b { font-weight: 600; }
.box { width: 112px; height: 112px; display: flex; align-items: center; justify-content: center; background: #fff; }
.box img { display: block; image-rendering: pixelated; }
.box.missing { color: var(--muted); font-size: 11px; text-align: center; padding: 6px; background: #eceef1; }
.records { display: flex; flex-wrap: wrap; gap: 12px; }
.record { background: var(--tile); border-radius: 5px; padding: 6px; width: 244px; font-size: 12px; }
.record .source { overflow-wrap: anywhere; }
.stages { display: flex; flex-wrap: wrap; gap: 8px; }
.stages figure { margin: 0; font-size: 11px; color: var(--muted); text-align: center; }
.explore { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
.picture { position: relative; display: inline-block; cursor: crosshair; line-height: 0; }
.picture img { display: block; }
.picture .field { position: absolute; border: 2px solid #ffd400; box-shadow: 0 0 0 1px #000; pointer-events: none; }
.picture .dot { position: absolute; width: 7px; height: 7px; margin: -3px 0 0 -3px; background: #e0245e;
                border: 1px solid #fff; border-radius: 50%; pointer-events: none; }
#units { list-style: none; padding: 0; margin: 0; display: flex; flex-direction: column; gap: 6px; }
#units li { display: flex; gap: 8px; align-items: center; background: var(--tile); padding: 4px; border-radius: 4px; }
footer { padding: 12px 20px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line); }
"""


def _page(
    title: str,
    root: str,
    crumbs: Sequence[tuple[str, str | None]],
    body: str,
    *,
    nav: str = "",
    scripts: Sequence[str] = (),
    inline: str = "",
) -> str:
    """A whole page. crumbs: (text, href or None); root: relative path to the site's top ("" or "../")."""
    trail = " › ".join(f'<a href="{e(h)}">{e(t)}</a>' if h else e(t) for t, h in crumbs)
    tags = "".join(f'<script src="{e(s)}"></script>' for s in scripts)
    code = f"<script>{inline}</script>" if inline else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="deconvviz {e(__version__)}"><title>{e(title)}</title>
<link rel="stylesheet" href="{root}site.css"></head>
<body><header><span class="crumbs">{trail}</span>{nav}</header>
<main>
{body}
</main>
<footer>Made by deconvviz {e(__version__)}: a static site, no network needed.</footer>{tags}{code}
</body></html>
"""


def _facts(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table; values are HTML already (escape them when building the rows)."""
    return '<table class="facts">' + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _img(src: str, size: tuple[int, int], alt: str) -> str:
    return f'<img src="{e(src)}" width="{size[0]}" height="{size[1]}" alt="{e(alt)}" loading="lazy" decoding="async">'


def _box(picture: tuple[str, tuple[int, int]] | None, alt: str, missing: str) -> str:
    if picture is None:
        return f'<div class="box missing">{e(missing)}</div>'
    return f'<div class="box">{_img(picture[0], picture[1], alt)}</div>'


_LAYER_JS = r"""
(function () {
  const box = document.getElementById('tiles'), tiles = Array.from(box.children);
  const sort = document.getElementById('sort'), filter = document.getElementById('filter');
  const count = document.getElementById('count');
  function accepts(text) {  // "12, 40-60" -> channel test; null: not understood
    const ranges = [];
    for (const part of text.split(/[\s,]+/).filter(Boolean)) {
      const m = part.match(/^(\d+)(?:-(\d+))?$/);
      if (!m) return null;
      ranges.push([Number(m[1]), m[2] === undefined ? Number(m[1]) : Number(m[2])]);
    }
    return ranges.length ? (c) => ranges.some(([a, b]) => c >= a && c <= b) : () => true;
  }
  function update() {
    const byChannel = sort.value === 'channel', ch = (t) => Number(t.dataset.channel);
    const value = (t) => Number(t.dataset.value);
    tiles.sort((a, b) => byChannel ? ch(a) - ch(b) : (value(b) - value(a)) || ch(a) - ch(b));
    const test = accepts(filter.value);
    filter.classList.toggle('bad', test === null);
    let shown = 0;
    for (const t of tiles) {
      t.hidden = test !== null && !test(ch(t));
      shown += t.hidden ? 0 : 1;
      box.appendChild(t);
    }
    count.textContent = shown + ' of ' + tiles.length + ' units';
  }
  sort.addEventListener('change', update);
  filter.addEventListener('input', update);
  update();
})();
"""

_ARROWS_JS = r"""
document.addEventListener('keydown', function (ev) {
  if (ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
  if (ev.target.closest && ev.target.closest('input, textarea, select')) return;
  const rel = {ArrowLeft: 'prev', ArrowRight: 'next'}[ev.key];
  const link = rel && document.querySelector('header nav a[rel="' + rel + '"]');
  if (link) { ev.preventDefault(); window.location.href = link.href; }
});
"""


def _nav(prev: tuple[str, str] | None, up: tuple[str, str] | None, nxt: tuple[str, str] | None) -> str:
    """Previous / up / next links (text, href); arrow keys follow rel=prev / rel=next."""
    parts = []
    for link, rel, arrow in ((prev, "prev", "← "), (up, "up", ""), (nxt, "next", " →")):
        if link is None:
            parts.append(f'<span class="off">{arrow.strip() or "↑"}</span>') if rel != "up" else None
            continue
        text = f"{arrow}{link[0]}" if rel == "prev" else f"{link[0]}{arrow}"
        parts.append(f'<a rel="{rel}" id="{rel}" href="{e(link[1])}">{e(text)}</a>')
    return "<nav>" + "".join(parts) + "</nav>"


# ---------------------------------------------------------------------------------------------- the scan site


@dataclass
class _UnitPictures:
    """The files drawn for one unit, as links from its layer folder: per record (projection or None, patch), and
    the strongest record's stages."""

    records: list[tuple[tuple[str, tuple[int, int]] | None, tuple[str, tuple[int, int]]]]
    stages: list[tuple[str, str, tuple[int, int]]]  # (stage name and size, file, (w, h))


def _read_report(rundir: Path) -> dict:
    """The scan's report.json, checked to be a finished scan of this version."""
    where = rundir / "report.json"
    if not rundir.is_dir():
        raise DeconvvizError(f"'{rundir}' is not a folder; give the --out folder of a finished `deconvviz scan`")
    if not where.is_file():
        raise DeconvvizError(
            f"'{rundir}' is not a finished scan (no report.json); give the --out folder of "
            "`deconvviz scan`, or finish that scan first"
        )
    try:
        report = json.loads(where.read_text())
    except (OSError, ValueError) as err:
        raise DeconvvizError(f"'{where}' is unreadable ({err}); rerun the scan into a new folder") from None
    if not isinstance(report, dict) or report.get("command") != "scan" or "layers" not in report:
        raise DeconvvizError(f"'{where}' is not the report of `deconvviz scan`; give the folder of a scan")
    if report.get("deconvviz") != __version__:
        raise DeconvvizError(
            f"'{rundir}' was written by deconvviz {report.get('deconvviz')}, this is {__version__}; "
            "rerun the scan with this version into a new folder"
        )
    return report


def scan_site(
    rundir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    verbose: bool = True,
) -> SiteSummary:
    """A static site of a finished scan: an index, one page per layer (every unit a tile, sortable and
    filterable) and one page per unit (`LAYER/unit-C.html`: its top-k projections beside their patches,
    values, source images, the strongest record's reverse stages, previous/next links)."""
    rundir = Path(rundir)
    report = _read_report(rundir)
    try:
        result = load_result(rundir)
    except DeconvvizError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged run folder: say which, not a traceback
        raise DeconvvizError(
            f"cannot read the scan in '{rundir}' ({type(err).__name__}: {err}); rerun the scan into a new folder"
        ) from None
    args = result.arguments
    root = Path(args.folder)
    images = sorted({r.image for per in result.layers.values() for ch in per.values() for r in ch.records})
    missing = [i for i in images if not (root / i).is_file()]
    if missing:
        raise DeconvvizError(
            f"the scanned image '{root / missing[0]}' is gone ({len(missing)} of {len(images)} "
            "missing); the site needs the scanned folder where the scan read it"
        )
    rule = args.rule  # how the scan projected; reports without one are deconvnet scans
    site = _SiteFolder(out, "scan")
    try:
        net, info = load_vgg(args.model, args.weights, device=pick_device(device), verbose=verbose)
        b = _ScanBuild(
            site,
            Deconvnet(net, rule=rule, unpool=args.unpool),  # as the scan projected
            result,
            report,
            rule,
            info.preprocess,
            {image: n for n, image in enumerate(images)},
            progress,
        )
        site.start()
        site.write("site.css", _CSS.encode())
        _write_sources(b)
        drawn = {}
        for layer in result.layers:
            drawn[layer] = _layer_pictures(b, layer)
            _layer_pages(b, layer, drawn[layer])
        site.page("index.html", _scan_index(b, drawn))
        return site.finish()
    except BaseException:
        site.abandon()
        raise


@dataclass
class _ScanBuild:
    """What every step of a scan site's build reads, and the patches drawn so far."""

    site: _SiteFolder
    dn: Deconvnet
    result: ScanResult
    report: dict
    rule: str  # the scan's reverse rule; reports without one are deconvnet's
    preprocess: Preprocess
    number: dict[str, int]  # scanned image -> n, its copy is images/n.jpg
    progress: Progress | None
    views: dict[str, np.ndarray] = field(default_factory=dict)  # image -> as the network saw it (H, W, 3)
    patches: dict[tuple, tuple[str, tuple[int, int]]] = field(default_factory=dict)

    def say(self, phase: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(phase, done, total)

    def view(self, image: str) -> np.ndarray:
        if image not in self.views:
            self.views[image] = _network_view(
                Path(self.result.arguments.folder) / image, self.preprocess, self.result.arguments.size
            )
        return self.views[image]

    def patch(self, layer: str, image: str, box) -> tuple[str, tuple[int, int]]:
        """The patch of `image` under `box` (None: all), drawn once per layer; its link from the layer folder."""
        size = self.result.arguments.size
        t, b, left, r = box or (0, size, 0, size)
        rel = f"{_folder_name(layer)}/patches/{self.number[image]}-{t}-{b}-{left}-{r}.jpg"
        if rel not in self.patches:
            self.patches[rel] = ("../" + rel, self.site.picture(rel, self.view(image)[t:b, left:r]))
        return self.patches[rel]


def _write_sources(b: _ScanBuild) -> None:
    """Each image the site shows, as the network saw it (resized, centre-cropped), once: images/N.jpg."""
    for image, n in b.number.items():
        b.say("source images", n, len(b.number))
        b.site.picture(f"images/{n}.jpg", b.view(image), side=b.result.arguments.size)
        del b.views[image]  # patches are drawn layer by layer; keep memory to one layer's images
    b.say("source images", len(b.number), len(b.number))


def _shown_folder(folder: str) -> str:
    """The scanned folder as a shared page may show it: relative to the working folder, else its name only."""
    path = Path(folder)
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return path.name or str(path)


def _network_view(path: Path, preprocess: Preprocess, size: int) -> np.ndarray:
    try:
        return to_display(preprocessed(path, preprocess, size), preprocess)
    except DeconvvizError as err:
        raise DeconvvizError(f"cannot read the scanned image '{path}' again ({err})") from None


def _layer_pictures(b: _ScanBuild, layer: str) -> dict[int, _UnitPictures]:
    """Draw every unit of a layer: its records' patches and projections (the scan's, where it projected them;
    the strongest record always, projected here with its reverse stages)."""
    dn, args, per_channel = b.dn, b.result.arguments, b.result.layers[layer]
    by_image: dict[str, list[int]] = {}  # the units whose strongest record is this image
    for c, ch in per_channel.items():
        if ch.records:
            by_image.setdefault(ch.records[0].image, []).append(c)
    shape = output_shapes(dn.model, dn.steps, (args.size, args.size))[
        step_index(dn.steps, resolve(dn.model, dn.steps, layer))
    ]
    width = shape[-1] if len(shape) == 3 else 1
    pictures: dict[int, _UnitPictures] = {}
    p = next(dn.model.parameters())
    for image, chans in sorted(by_image.items()):
        x = preprocessed(Path(args.folder) / image, b.preprocess, args.size)[None].to(dn.device, p.dtype)
        for part in (chans[i : i + STAGE_CHUNK] for i in range(0, len(chans), STAGE_CHUNK)):
            pos = torch.tensor([[per_channel[c].records[0].row * width + per_channel[c].records[0].col for c in part]])
            out = dn.project(x, layer, part, "max", keep_stages=True, positions=pos.to(dn.device))
            for j, c in enumerate(part):
                stages = [(s.name, s.tensor[0, j].cpu()) for s in out.stages]
                pictures[c] = _unit_pictures(b, layer, c, out.images[0, j].cpu(), stages)
            b.say(f"{layer}: projecting units", len(pictures), len(per_channel))
    b.views.clear()
    for c in per_channel:  # units with no record (no image read): nothing to draw
        pictures.setdefault(c, _UnitPictures([], []))
    return pictures


def _unit_pictures(
    b: _ScanBuild, layer: str, c: int, strongest: Tensor, stages: list[tuple[str, Tensor]]
) -> _UnitPictures:
    """A unit's pictures: per record its projection (the strongest: `strongest`, the others: the scan's, where
    it made them) and patch; the strongest record's stages (name, (C, H, W))."""
    ch, folder, records = b.result.layers[layer][c], _folder_name(layer), []
    for i, r in enumerate(ch.records):
        proj = strongest if i == 0 else (ch.projections[i] if ch.projections is not None else None)
        drawn = None
        if proj is not None:
            t, bottom, left, right = r.box or (0, proj.shape[-2], 0, proj.shape[-1])
            rel = f"{folder}/projections/unit-{c}-{i}.jpg"
            drawn = ("../" + rel, b.site.picture(rel, pattern_rgb(proj[:, t:bottom, left:right], b.preprocess)))
        records.append((drawn, b.patch(layer, r.image, r.box)))
    drawn_stages = []
    for j, (name, t) in enumerate(stages):
        rel = f"{folder}/stages/unit-{c}-{j}.png"
        channel, picture = stage_channel(t)
        label = f"{name} {t.shape[-2]}x{t.shape[-1]}, ch {channel}"
        drawn_stages.append((label, "../" + rel, b.site.picture(rel, picture)))
    return _UnitPictures(records, drawn_stages)


def _layer_pages(b: _ScanBuild, layer: str, pictures: dict[int, _UnitPictures]) -> None:
    """The layer's page of tiles and a page per unit."""
    result, site = b.result, b.site
    per_channel, folder = result.layers[layer], _folder_name(layer)
    order = sorted(per_channel)
    layers = list(result.layers)
    up = (layer, "index.html")
    for n, c in enumerate(order):
        prev = (f"unit {order[n - 1]}", f"unit-{order[n - 1]}.html") if n > 0 else None
        nxt = (f"unit {order[n + 1]}", f"unit-{order[n + 1]}.html") if n + 1 < len(order) else None
        body = _unit_body(b, layer, c, pictures[c])
        crumbs = [("site", "../index.html"), (layer, "index.html"), (f"unit {c}", None)]
        site.page(
            f"{folder}/unit-{c}.html",
            _page(f"{layer} unit {c} · deconvviz", "../", crumbs, body, nav=_nav(prev, up, nxt), inline=_ARROWS_JS),
        )
        if n % 16 == 15 or n + 1 == len(order):
            b.say(f"{layer}: pages", n + 1, len(order))
    tiles = [_unit_tile(f"unit-{c}.html", c, per_channel[c], pictures[c]) for c in order]
    i = layers.index(layer)
    prev = (layers[i - 1], f"../{_folder_name(layers[i - 1])}/index.html") if i > 0 else None
    nxt = (layers[i + 1], f"../{_folder_name(layers[i + 1])}/index.html") if i + 1 < len(layers) else None
    projected = sum(ch.projections is not None for ch in per_channel.values())
    body = f"""<h1>{e(layer)}: {len(order)} units</h1>
<p class="note">Each tile: the unit's strongest activation over the scanned images, projected to pixels ({e(b.rule)}
rule), beside the image patch under its receptive field. The scan projected all top-{result.arguments.top} records of
{projected} of these units; the unit pages show them.</p>
<div class="controls"><label>Sort <select id="sort"><option value="activation">strongest activation first</option>
<option value="channel">channel number</option></select></label>
<label>Channels <input id="filter" type="search" placeholder="e.g. 12, 40-60" size="16"></label>
<span id="count" class="note"></span></div>
<div class="tiles" id="tiles">
{chr(10).join(tiles)}
</div>"""
    crumbs = [("site", "../index.html"), (layer, None)]
    nav = _nav(prev, ("site", "../index.html"), nxt)
    site.page(f"{folder}/index.html", _page(f"{layer} · deconvviz", "../", crumbs, body, nav=nav, inline=_LAYER_JS))


def _unit_tile(href: str, c: int, ch, pics: _UnitPictures, prefix: str = "../") -> str:
    """A unit's tile: its strongest record's projection beside the patch (pictures linked as `prefix` + path from
    the site's top: "../" from a layer folder, "" from the index)."""
    value = ch.records[0].value if ch.records else -math.inf
    proj, patch = pics.records[0] if pics.records else (None, None)
    proj, patch = ((prefix + p[0].removeprefix("../"), p[1]) if prefix != "../" and p else p for p in (proj, patch))
    return (
        f'<a class="tile" href="{e(href)}" data-channel="{c}" data-value="{value!r}">'
        f'<div class="pair">{_box(proj, f"unit {c}: projection", "no record")}'
        f"{_box(patch, f'unit {c}: image patch', 'no record')}</div>"
        f'<div class="caption"><b>unit {c}</b><span>max {value:.4g}</span></div></a>'
    )


def _unit_body(b: _ScanBuild, layer: str, c: int, pics: _UnitPictures) -> str:
    ch, number, rule = b.result.layers[layer][c], b.number, b.rule
    cards = []
    for i, (r, (proj, patch)) in enumerate(zip(ch.records, pics.records, strict=True)):
        box = "the whole image" if r.box is None else f"rows {r.box[0]}–{r.box[1] - 1}, cols {r.box[2]}–{r.box[3] - 1}"
        missing = "not projected by the scan (scan with --channels all to see every projection)"
        cards.append(
            f'<div class="record" data-rank="{i + 1}" data-value="{r.value!r}"><div class="pair tile-pair" '
            f'style="display:flex;gap:4px">{_box(proj, f"projection {i + 1}", missing)}'
            f"{_box(patch, f'patch {i + 1}', '')}</div>"
            f"<div><b>#{i + 1}</b> activation <b>{r.value:.4g}</b> at ({r.row}, {r.col})</div>"
            f'<div class="source">image: <a href="../images/{number[r.image]}.jpg">{e(r.image)}</a></div>'
            f'<div class="note">receptive field: {e(box)}</div></div>'
        )
    stages = "".join(
        f"<figure>{_img(src, size, label)}<figcaption>{e(label)}</figcaption></figure>"
        for label, src, size in pics.stages
    )
    strongest = ch.records[0] if ch.records else None
    lead = (
        f"Strongest activation <b>{strongest.value:.4g}</b> in {e(strongest.image)}."
        if strongest
        else "No image was read for this unit."
    )
    stage_part = f'<h2>Reverse stages of the strongest record</h2><div class="stages">{stages}</div>' if stages else ""
    return f"""<h1>{e(layer)} · unit {c}</h1>
<p>{lead} Rule: {e(rule)}. Use ← and → to go to the previous and next unit.</p>
<h2>The {len(ch.records)} strongest images: projection beside image patch</h2>
<div class="records">{"".join(cards)}</div>
{stage_part}
<p class="note">{e(_NORMALIZATION)}</p>"""


def _scan_index(b: _ScanBuild, drawn: dict[str, dict[int, _UnitPictures]]) -> str:
    report, result, rule = b.report, b.result, b.rule
    args, w, counts = result.arguments, report.get("weights", {}), report.get("images", {})
    strips = []
    for layer, per in result.layers.items():
        folder = _folder_name(layer)
        best = sorted(per, key=lambda c: (-per[c].records[0].value if per[c].records else math.inf, c))[:INDEX_UNITS]
        tiles = "".join(_unit_tile(f"{folder}/unit-{c}.html", c, per[c], drawn[layer][c], prefix="") for c in best)
        projected = sum(ch.projections is not None for ch in per.values())
        strips.append(
            f'<h3><a href="{e(folder)}/index.html">{e(layer)}</a>: {len(per)} units</h3><p class="note">{projected} '
            f"with all top-{args.top} records projected by the scan. The {len(best)} strongest:</p>"
            f'<div class="tiles">{tiles}</div>'
        )
    local = str(Path(args.folder)) + os.sep  # reasons quote the scan's full paths; the page names files only
    skipped = "".join(
        f"<li>{e(s.get('path', ''))}: {e(s.get('reason', '').replace(local, ''))}</li>" for s in result.skipped
    )
    rows = [
        ("model", e(args.model)),
        ("weights", e(f"{w.get('name', args.weights)} ({w.get('source') or 'no file'})")),
        ("preprocessing", e(w.get("preprocess", ""))),
        ("rule", e(rule)),
        ("unpool", e(args.unpool)),
        ("image folder", e(_shown_folder(args.folder))),
        (
            "images",
            e(
                f"{counts.get('found', result.images)} found, {counts.get('read', '?')} read, "
                f"{counts.get('skipped', len(result.skipped))} skipped"
            ),
        ),
        ("input size", e(f"{args.size} x {args.size}")),
        ("kept per unit", e(f"the {args.top} strongest images")),
        ("layers", e(", ".join(args.layers))),
        ("made by", e(f"deconvviz {report.get('deconvviz')}")),
    ]
    provenance = {k: report[k] for k in ("command", "deconvviz", "arguments", "weights", "images") if k in report}
    provenance["arguments"] = {**provenance.get("arguments", {}), "folder": _shown_folder(args.folder)}
    body = f"""<h1>Scan of {e(Path(args.folder).name or args.folder)}</h1>
{_facts(rows)}
<h2>Layers</h2>{"".join(strips)}
<h2>Skipped files ({len(result.skipped)})</h2>{f"<ul>{skipped}</ul>" if skipped else "<p>none</p>"}
<h2>Provenance</h2><pre>{e(json.dumps(provenance, indent=1))}</pre>"""
    first = next(iter(result.layers), None)
    nav = _nav(None, None, (first, f"{_folder_name(first)}/index.html")) if first else ""
    return _page("deconvviz scan site", "", [("site", None)], body, nav=nav)


# ------------------------------------------------------------------------------------------- the explore site


@dataclass
class _DrawnUnit:
    """A unit of an explored layer: its projection and patch (file in the layer folder, (w, h)), its strongest
    activation in the image and where."""

    projection: tuple[str, tuple[int, int]]
    patch: tuple[str, tuple[int, int]]
    value: float
    row: int
    col: int


@dataclass
class _LayerView:
    """One layer of an explored image: its activation (C, H, W), receptive field and the units drawn."""

    layer: str
    activation: Tensor
    rf: tuple[ReceptiveField, ReceptiveField]
    strongest: list[int]  # the top maps, strongest first
    drawn: dict[int, _DrawnUnit]


@dataclass
class _Explore:
    """What every step of an explore site's build reads."""

    site: _SiteFolder
    dn: Deconvnet
    x: Tensor  # the image as network input (1, 3, size, size)
    picture: np.ndarray  # the image as shown (size, size, 3)
    weights: Weights
    model: str
    top: int
    per_position: int
    progress: Progress | None

    @property
    def size(self) -> int:
        return self.x.shape[-1]


def explore_site(
    image: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    layers: Sequence[str] | None = None,
    top: int = 9,
    per_position: int = PER_POSITION,
    model: str = "vgg16",
    weights: str = "auto",
    device: str = "auto",
    size: int = 224,
    progress: Progress | None = None,
    verbose: bool = True,
) -> SiteSummary:
    """A static site of one image: per layer its `top` strongest maps projected to pixels, and a picture where a
    click lists the units strongest at that position (the `per_position` strongest, precomputed)."""
    from .images import DEFAULT_IMAGE

    check_size(size)
    for what, v in (("top (--top)", top), ("units per position (--per-position)", per_position)):
        if v < 1:
            raise DeconvvizError(f"{what} must be at least 1, got {v}")
    path = Path(image) if image is not None else Path(DEFAULT_IMAGE)
    if not path.is_file():
        raise DeconvvizError(f"'{path}' is not an image file; give the path of an image")
    load_image(path)  # unreadable: fails before any work
    site = _SiteFolder(out, "explore")
    try:
        net, info = load_vgg(model, weights, device=pick_device(device), verbose=verbose)
        x = to_batch(path, info.preprocess, size)
        dn = Deconvnet(net)
        if dn.steps is None:
            raise DeconvvizError(f"{model} is not a chain of layers; explore needs one")
        names = list(layers) if layers else [n for n in dn.layers() if re.fullmatch(r"conv\d+_\d+", n)]
        taps = {n: step_index(dn.steps, resolve(net, dn.steps, n)) for n in names}
        for n, i in taps.items():
            try:
                receptive_fields(dn.steps, i)
            except LayerError:
                raise DeconvvizError(
                    f"layer '{n}' has no feature-map positions to click; explore takes conv and pool layers"
                ) from None
        site.start()
        site.write("site.css", _CSS.encode())
        ex = _Explore(
            site, dn, x.to(dn.device), to_display(x[0], info.preprocess), info, model, top, per_position, progress
        )
        site.picture("image.jpg", ex.picture, side=size)
        views = [_explore_layer(ex, n) for n in names]
        for i, v in enumerate(views):
            site.page(f"{_folder_name(v.layer)}/index.html", _explore_page(ex, views, i))
        site.page("index.html", _explore_index(ex, views, path))
        return site.finish()
    except BaseException:
        site.abandon()
        raise


def strongest_units(activation: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per position of an activation (C, H, W) the k strongest units with a positive activation, strongest first.
    Returns units and values (k, H, W); -1 and 0 where fewer than k units are positive."""
    values, units = activation.topk(min(k, activation.shape[0]), dim=0)
    units = torch.where(values > 0, units, -1)
    return units, values.clamp_min(0)


def _explore_layer(ex: _Explore, layer: str) -> _LayerView:
    """Project a layer's strongest maps and every unit listed at some position; write the positions' data."""
    dn, x, site = ex.dn, ex.x, ex.site
    steps = dn.steps
    i = step_index(steps, resolve(dn.model, steps, layer))
    act = _activation(steps, x, i)[0]  # (C, H, W)
    rf = receptive_fields(steps, i)
    peak = act.flatten(1).max(1).values
    strongest = peak.argsort(descending=True, stable=True)[: min(ex.top, act.shape[0])].tolist()
    units, values = strongest_units(act, ex.per_position)
    listed = sorted(set(strongest) | set(units[units >= 0].unique().tolist()))
    folder, size, drawn = _folder_name(layer), x.shape[-1], {}
    for n in range(0, len(listed), 32):
        part = listed[n : n + 32]
        out = dn.project(x, layer, part, "max")
        rc = out.selections.rows_cols[0].tolist()
        for j, c in enumerate(part):
            r, col = rc[j]
            t, b = rf[0].span(r, size)
            left, right = rf[1].span(col, size)
            crop = pattern_rgb(out.images[0, j, :, t:b, left:right].cpu(), ex.weights.preprocess)
            proj = site.picture(f"{folder}/unit-{c}.jpg", crop)
            patch = site.picture(f"{folder}/patch-{c}.jpg", ex.picture[t:b, left:right])
            drawn[c] = _DrawnUnit((f"unit-{c}.jpg", proj), (f"patch-{c}.jpg", patch), float(peak[c]), r, col)
        if ex.progress:
            ex.progress(f"{layer}: projecting units", min(n + 32, len(listed)), len(listed))
    h, w = act.shape[-2:]
    data = {
        "layer": layer,
        "size": size,
        "h": h,
        "w": w,
        "k": units.shape[0],
        "rf": [[f.size, f.stride, f.offset] for f in rf],
        "units": units.permute(1, 2, 0).flatten().tolist(),  # position-major: (row * w + col) * k + rank
        "values": [float(f"{v:.4g}") for v in values.permute(1, 2, 0).flatten().tolist()],
        "maps": {str(c): {"value": float(f"{d.value:.4g}"), "row": d.row, "col": d.col} for c, d in drawn.items()},
    }
    site.write(f"{folder}/positions.js", f"window.DECONVVIZ_POSITIONS = {json.dumps(data)};\n".encode())
    return _LayerView(layer, act, rf, strongest, drawn)


@torch.no_grad()
def _activation(steps, x: Tensor, upto: int) -> Tensor:
    return activations(steps, x, {"layer": upto})["layer"].cpu()


_EXPLORE_JS = r"""
(function () {
  const P = window.DECONVVIZ_POSITIONS, img = document.getElementById('picture');
  const field = document.getElementById('field'), dot = document.getElementById('dot');
  const list = document.getElementById('units'), where = document.getElementById('where');
  function nearest(v, rf, n) {  // the position whose receptive field is centred closest to input pixel v
    const i = Math.round((v + rf[2] - (rf[0] - 1) / 2) / rf[1]);
    return Math.min(n - 1, Math.max(0, i));
  }
  function span(i, rf) { const lo = i * rf[1] - rf[2]; return [Math.max(lo, 0), Math.min(lo + rf[0], P.size)]; }
  function show(y, x) {
    const row = nearest(y, P.rf[0], P.h), col = nearest(x, P.rf[1], P.w);
    const [t, b] = span(row, P.rf[0]), [l, r] = span(col, P.rf[1]);
    const pct = (v) => (100 * v / P.size) + '%';
    Object.assign(field.style, {top: pct(t), left: pct(l), height: pct(b - t), width: pct(r - l), display: 'block'});
    Object.assign(dot.style, {top: pct(y + 0.5), left: pct(x + 0.5), display: 'block'});
    where.dataset.row = row; where.dataset.col = col; where.dataset.y = y; where.dataset.x = x;
    where.textContent = 'Pixel (' + y + ', ' + x + ') → position (' + row + ', ' + col + ') of the ' + P.h + '×' +
      P.w + ' map; its receptive field: rows ' + t + '–' + (b - 1) + ', cols ' + l + '–' + (r - 1) + '.';
    list.replaceChildren();
    const base = (row * P.w + col) * P.k;
    for (let j = 0; j < P.k; j++) {
      const unit = P.units[base + j];
      if (unit < 0) break;
      const li = document.createElement('li'), pic = document.createElement('img');
      const text = document.createElement('span');
      li.dataset.unit = unit; li.dataset.value = P.values[base + j];
      pic.src = 'unit-' + unit + '.jpg'; pic.alt = 'unit ' + unit + ': projection'; pic.height = 56;
      const m = P.maps[String(unit)];
      text.textContent = 'unit ' + unit + ': ' + P.values[base + j] + ' here (its strongest: ' + m.value + ' at (' +
        m.row + ', ' + m.col + '))';
      li.append(pic, text);
      list.appendChild(li);
    }
    if (!list.children.length) {
      const li = document.createElement('li'); li.textContent = 'no unit is active here'; list.appendChild(li);
    }
  }
  img.addEventListener('click', function (ev) {
    const box = img.getBoundingClientRect();
    const y = Math.min(P.size - 1, Math.floor((ev.clientY - box.top) * P.size / box.height));
    const x = Math.min(P.size - 1, Math.floor((ev.clientX - box.left) * P.size / box.width));
    show(y, x);
  });
})();
"""


def _explore_page(ex: _Explore, views: list[_LayerView], i: int) -> str:
    v, per_position = views[i], ex.per_position
    shown = max(ex.size, 336)
    tiles = []
    for c in v.strongest:
        d = v.drawn[c]
        tiles.append(
            f'<div class="tile" data-channel="{c}" data-value="{d.value!r}"><div class="pair">'
            f"{_box(d.projection, f'unit {c}: projection', '')}{_box(d.patch, f'unit {c}: image patch', '')}</div>"
            f'<div class="caption"><b>unit {c}</b><span>max {d.value:.4g} at ({d.row}, {d.col})</span></div></div>'
        )
    h, w = v.activation.shape[-2:]
    rf = v.rf
    body = f"""<h1>{e(v.layer)}: {v.activation.shape[0]} units, {h}×{w} positions</h1>
<h2>Click a position</h2>
<div class="explore"><div class="picture"><img id="picture" src="../image.jpg" width="{shown}" height="{shown}"
alt="the image"><div class="field" id="field" style="display:none"></div>
<div class="dot" id="dot" style="display:none"></div></div>
<div><p id="where">Click the image: the units strongest at that position of {e(v.layer)} appear here.</p>
<ol id="units"></ol>
<p class="note">Precomputed per position: at most the {per_position} strongest units with a positive activation there
(the bound). A pixel maps to the position whose receptive field ({rf[0].size}×{rf[1].size} pixels, stride
{rf[0].stride}) is centred closest to it. The picture beside each unit is its strongest activation in this image
projected to pixels.</p></div></div>
<h2>The {len(v.strongest)} strongest maps</h2>
<div class="tiles">{"".join(tiles)}</div>
<p class="note">{e(_NORMALIZATION)}</p>"""
    prev = (views[i - 1].layer, f"../{_folder_name(views[i - 1].layer)}/index.html") if i > 0 else None
    nxt = (views[i + 1].layer, f"../{_folder_name(views[i + 1].layer)}/index.html") if i + 1 < len(views) else None
    crumbs = [("image", "../index.html"), (v.layer, None)]
    return _page(
        f"{v.layer} · deconvviz explore",
        "../",
        crumbs,
        body,
        nav=_nav(prev, ("image", "../index.html"), nxt),
        scripts=["positions.js"],
        inline=_EXPLORE_JS + _ARROWS_JS,
    )


def _explore_index(ex: _Explore, views: list[_LayerView], path: Path) -> str:
    info, size = ex.weights, ex.size
    rows = [
        ("image", e(str(path))),
        ("model", e(ex.model)),
        ("weights", e(f"{info.name} ({info.source or 'no file'})")),
        ("preprocessing", e(info.preprocess.name)),
        ("input size", e(f"{size} x {size}")),
        ("made by", e(f"deconvviz {__version__}")),
    ]
    strips = []
    for v in views:
        link = f"{_folder_name(v.layer)}/index.html"
        folder = _folder_name(v.layer)
        pics = "".join(
            f'<div class="box">{_img(folder + "/" + v.drawn[c].projection[0], v.drawn[c].projection[1], f"unit {c}")}'
            "</div>"
            for c in v.strongest
        )
        h, w = v.activation.shape[-2:]
        strips.append(
            f'<h2><a href="{e(link)}">{e(v.layer)}</a> <span class="note">{v.activation.shape[0]} units, '
            f'{h}×{w}; its {len(v.strongest)} strongest maps</span></h2><div class="tiles">{pics}</div>'
        )
    body = f"""<h1>Explore {e(path.name)}</h1>
<div class="explore"><img src="image.jpg" width="{size}" height="{size}" alt="the image">{_facts(rows)}</div>
{"".join(strips)}
<p class="note">{e(_NORMALIZATION)}</p>"""
    nav = _nav(None, None, (views[0].layer, f"{_folder_name(views[0].layer)}/index.html")) if views else ""
    return _page(f"explore {path.name} · deconvviz", "", [("image", None)], body, nav=nav)


__all__ = ["SiteSummary", "explore_site", "scan_site", "strongest_units"]
