"""The site of a finished dataset scan (`scan_site`): an index, a page per layer and a page per unit.

scan run folder -> records, projections (scan.load_result) + the strongest record of every unit projected again
with its reverse stages -> pictures at display size -> one page per unit, layer and the index (_common.py).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..analysis.scan import ScanResult, load_result, preprocessed
from ..engine.deconvnet import Deconvnet
from ..engine.forward import layer_shape
from ..engine.progress import Progress
from ..errors import DeconvvizError
from ..images import to_display
from ..networks.network import load_network
from ..networks.weights import pick_device
from ..preprocess import Preprocess
from ..render.draw import pattern_rgb, stage_channel
from ._common import (
    Link,
    Nav,
    Picture,
    SiteSummary,
    Tile,
    _folder_name,
    _SiteFolder,
    render_page,
)

INDEX_UNITS = 8  # a layer's strongest units shown on the scan site's index
STAGE_CHUNK = 8  # selections per reverse pass with stages (each keeps every stage's full planes)

# ---------------------------------------------------------------------------------------------- the scan site


@dataclass
class _UnitPictures:
    """The pictures drawn for one unit: per record (projection or None, patch), and the strongest record's
    stages."""

    records: list[tuple[Picture | None, Picture]]
    stages: list[tuple[str, Picture]]  # (stage name, size and channel; its picture)


def _read_report(rundir: Path) -> dict:
    """The scan's report.json, checked to be a finished scan of this version."""
    where = rundir / "report.json"
    if not rundir.is_dir():
        raise DeconvvizError(f"'{rundir}' is not a folder; give the output folder of a finished `deconvviz scan`")
    if not where.is_file():
        raise DeconvvizError(
            f"'{rundir}' is not a finished scan (no report.json); give the output folder of "
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
    with _SiteFolder(out, "scan") as site:
        network = load_network(args.model, args.weights, pick_device(device), verbose=verbose)  # the scan's network
        net, info = network.module, network.weights
        b = _ScanBuild(
            site,
            Deconvnet(net, rule=rule, unpool=args.unpool),  # as the scan projected
            result,
            report=report,
            rule=rule,
            preprocess=info.preprocess,
            number={image: n for n, image in enumerate(images)},
            progress=progress,
        )
        for name in ("site.css", "layer.js", "arrows.js"):
            site.static(name)
        _write_sources(b)
        drawn = {}
        for layer in result.layers:
            drawn[layer] = _layer_pictures(b, layer)
            _layer_pages(b, layer, drawn[layer])
        site.page("index.html", _scan_index(b, drawn))
        summary = site.finish()
    return summary


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
    patches: dict[str, Picture] = field(default_factory=dict)

    def say(self, phase: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(phase, done, total)

    def view(self, image: str) -> np.ndarray:
        if image not in self.views:
            self.views[image] = _network_view(
                Path(self.result.arguments.folder) / image, self.preprocess, self.result.arguments.size
            )
        return self.views[image]

    def patch(self, layer: str, image: str, box) -> Picture:
        """The patch of `image` under `box` (None: all), drawn once per layer."""
        size = self.result.arguments.size
        t, b, left, r = box or (0, size, 0, size)
        rel = f"{_folder_name(layer)}/patches/{self.number[image]}-{t}-{b}-{left}-{r}.jpg"
        if rel not in self.patches:
            self.patches[rel] = self.site.picture(rel, self.view(image)[t:b, left:r])
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
    shape = layer_shape(dn.view, layer, size=args.size)
    width = shape[-1] if len(shape) == 3 else 1
    pictures: dict[int, _UnitPictures] = {}
    p = next(dn.model.parameters())
    for image, chans in sorted(by_image.items()):
        x = preprocessed(Path(args.folder) / image, b.preprocess, args.size)[None].to(dn.device, p.dtype)
        for part in (chans[i : i + STAGE_CHUNK] for i in range(0, len(chans), STAGE_CHUNK)):
            pos = torch.tensor([[per_channel[c].records[0].row * width + per_channel[c].records[0].col for c in part]])
            out = dn.project(x, layer, channels=part, mode="max", keep_stages=True, positions=pos.to(dn.device))
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
            drawn = b.site.picture(rel, pattern_rgb(proj[:, t:bottom, left:right], b.preprocess))
        records.append((drawn, b.patch(layer, r.image, r.box)))
    drawn_stages = []
    for j, (name, t) in enumerate(stages):
        rel = f"{folder}/stages/unit-{c}-{j}.png"
        channel, picture = stage_channel(t)
        label = f"{name} {t.shape[-2]}x{t.shape[-1]}, ch {channel}"
        drawn_stages.append((label, b.site.picture(rel, picture)))
    return _UnitPictures(records, drawn_stages)


def _layer_pages(b: _ScanBuild, layer: str, pictures: dict[int, _UnitPictures]) -> None:
    """The layer's page of tiles and a page per unit."""
    result, site = b.result, b.site
    per_channel, folder = result.layers[layer], _folder_name(layer)
    order = sorted(per_channel)
    layers = list(result.layers)
    up = Link(layer, "index.html")
    for n, c in enumerate(order):
        prev = Link(f"unit {order[n - 1]}", f"unit-{order[n - 1]}.html") if n > 0 else None
        nxt = Link(f"unit {order[n + 1]}", f"unit-{order[n + 1]}.html") if n + 1 < len(order) else None
        page = render_page(
            "scan_unit.html.j2",
            title=f"{layer} unit {c} · deconvviz",
            root="../",
            crumbs=[Link("site", "../index.html"), Link(layer, "index.html"), Link(f"unit {c}")],
            nav=Nav(prev, up, nxt),
            layer=layer,
            unit=c,
            rule=b.rule,
            records=_record_cards(b, layer, c, pictures[c]),
            stages=pictures[c].stages,
        )
        site.page(f"{folder}/unit-{c}.html", page)
        if n % 16 == 15 or n + 1 == len(order):
            b.say(f"{layer}: pages", n + 1, len(order))
    i = layers.index(layer)
    prev = Link(layers[i - 1], f"../{_folder_name(layers[i - 1])}/index.html") if i > 0 else None
    nxt = Link(layers[i + 1], f"../{_folder_name(layers[i + 1])}/index.html") if i + 1 < len(layers) else None
    page = render_page(
        "scan_layer.html.j2",
        title=f"{layer} · deconvviz",
        root="../",
        crumbs=[Link("site", "../index.html"), Link(layer)],
        nav=Nav(prev, Link("site", "../index.html"), nxt),
        layer=layer,
        rule=b.rule,
        top=result.arguments.top,
        projected=sum(ch.projections is not None for ch in per_channel.values()),
        tiles=[_unit_tile(f"unit-{c}.html", c, per_channel[c], pictures[c]) for c in order],
    )
    site.page(f"{folder}/index.html", page)


def _unit_tile(href: str, c: int, ch, pics: _UnitPictures) -> Tile:
    """A unit's tile on the scan site: its strongest record's projection beside the patch; href from the page."""
    value = ch.records[0].value if ch.records else -math.inf
    proj, patch = pics.records[0] if pics.records else (None, None)
    return Tile(c, value, proj, patch, f"max {value:.4g}", href=href)


@dataclass(frozen=True)
class _RecordCard:
    """One of a unit's top-k records as its page shows it."""

    rank: int
    value: float
    row: int
    col: int
    image: str  # the scanned file's name, shown as text
    source: str  # its copy as the network saw it, from the site's top
    field: str  # the receptive field, in words
    projection: Picture | None
    patch: Picture


def _record_cards(b: _ScanBuild, layer: str, c: int, pics: _UnitPictures) -> list[_RecordCard]:
    cards = []
    for i, (r, (proj, patch)) in enumerate(zip(b.result.layers[layer][c].records, pics.records, strict=True)):
        box = "the whole image" if r.box is None else f"rows {r.box[0]}–{r.box[1] - 1}, cols {r.box[2]}–{r.box[3] - 1}"
        source = f"images/{b.number[r.image]}.jpg"
        cards.append(
            _RecordCard(
                i + 1, r.value, r.row, col=r.col, image=r.image, source=source, field=box, projection=proj, patch=patch
            )
        )
    return cards


def _scan_index(b: _ScanBuild, drawn: dict[str, dict[int, _UnitPictures]]) -> str:
    report, result, rule = b.report, b.result, b.rule
    args, w, counts = result.arguments, report.get("weights", {}), report.get("images", {})
    strips = []
    for layer, per in result.layers.items():
        folder = _folder_name(layer)
        best = sorted(per, key=lambda c: (-per[c].records[0].value if per[c].records else math.inf, c))[:INDEX_UNITS]
        tiles = [_unit_tile(f"{folder}/unit-{c}.html", c, per[c], drawn[layer][c]) for c in best]
        projected = sum(ch.projections is not None for ch in per.values())
        strips.append(dict(layer=layer, href=f"{folder}/index.html", units=len(per), projected=projected, tiles=tiles))
    local = str(Path(args.folder)) + os.sep  # reasons quote the scan's full paths; the page names files only
    skipped = [(s.get("path", ""), s.get("reason", "").replace(local, "")) for s in result.skipped]
    found, read = counts.get("found", result.images), counts.get("read", "?")
    rows = [
        ("model", args.model),
        ("weights", f"{w.get('name', args.weights)} ({w.get('source') or 'no file'})"),
        ("preprocessing", w.get("preprocess", "")),
        ("rule", rule),
        ("unpool", args.unpool),
        ("image folder", _shown_folder(args.folder)),
        ("images", f"{found} found, {read} read, {counts.get('skipped', len(result.skipped))} skipped"),
        ("input size", f"{args.size} x {args.size}"),
        ("kept per unit", f"the {args.top} strongest images"),
        ("layers", ", ".join(args.layers)),
        ("made by", f"deconvviz {report.get('deconvviz')}"),
    ]
    provenance = {k: report[k] for k in ("command", "deconvviz", "arguments", "weights", "images") if k in report}
    provenance["arguments"] = {**provenance.get("arguments", {}), "folder": _shown_folder(args.folder)}
    first = next(iter(result.layers), None)
    return render_page(
        "scan_index.html.j2",
        title="deconvviz scan site",
        root="",
        crumbs=[Link("site")],
        nav=Nav(None, None, Link(first, f"{_folder_name(first)}/index.html")) if first else None,
        folder=Path(args.folder).name or args.folder,
        rows=rows,
        top=args.top,
        strips=strips,
        skipped=skipped,
        provenance=json.dumps(provenance, indent=1),
    )
