"""Static HTML sites to browse units: a finished dataset scan (`scan_site`) or one image's layers (`explore_site`).

scan run folder -> records, projections (scan.load_result) + the strongest record of every unit projected again
with its reverse stages -> pictures at display size -> one page per unit, layer and the index, rendered from
the Jinja2 templates in pages/ (autoescaped: data is text unless a template says otherwise, and none does).

A site is plain files (HTML, the package's site.css and vanilla JS files copied beside it, JPEG/PNG pictures, no
network): it opens from file:// and from any static host. A build is locked, written into a folder beside the
site and swapped in whole (outputs.py); `.deconvviz-site.json` marks a folder as a site of deconvviz, so a later
build may replace it, and no other non-empty folder is ever written into.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .. import __version__
from ..analysis.scan import ScanResult, activations, load_result, preprocessed
from ..engine.deconvnet import Deconvnet
from ..engine.fields import Fields, receptive_field
from ..engine.forward import layer_shape, module_activations
from ..engine.hooks import evaluating
from ..engine.layers import module_outputs, step_index
from ..engine.layout import Layout, layouts
from ..errors import DeconvvizError, LayerError
from ..images import check_size, load_image, to_batch, to_display
from ..networks.network import Network, load_network
from ..networks.weights import Weights, pick_device
from ..outputs import SITE_MARKER, Staged, check_folder, locked, owned, write_atomic
from ..preprocess import Preprocess
from ..render.draw import pattern_rgb, stage_channel

MARKER = SITE_MARKER
THUMB = 112  # side in pixels of every projection, patch and stage picture: written at the size it is shown
INDEX_UNITS = 8  # a layer's strongest units shown on the scan site's index
PER_POSITION = 5  # explore: units kept per feature-map position, the strongest there
STAGE_CHUNK = 8  # selections per reverse pass with stages (each keeps every stage's full planes)
Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class SiteSummary:
    """What a site build wrote: the folder, its pages, files and bytes."""

    out: Path
    pages: int
    files: int
    bytes: int


# ---------------------------------------------------------------------------------------------- the site folder


class _SiteFolder:
    """The output folder: refused unless new, empty or a previous site holding nothing else (outputs.owned);
    locked for the build, which goes into a folder beside it and is swapped in whole when complete, so an
    interrupted build leaves the previous site as it was. Use as a context manager."""

    def __init__(self, out: str | os.PathLike, kind: str):
        self.out, self.kind, self.written = Path(out), kind, []
        owned(self.out, MARKER, what="site")  # before any work; again under the lock
        check_folder(self.out)
        self.lock, self.staged = locked(self.out), Staged(self.out)
        self.root = self.out  # where files go: the staging folder during the build

    def __enter__(self) -> _SiteFolder:
        self.lock.acquire()
        try:
            owned(self.out, MARKER, what="site")
            self.root = self.staged.__enter__()
        except BaseException:
            self.lock.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.staged.__exit__(*exc)
        finally:
            self.root = self.out
            self.lock.__exit__(*exc)

    def write(self, rel: str, data: bytes) -> None:
        write_atomic(self.root / rel, lambda f: f.write(data))
        self.written.append(rel)

    def page(self, rel: str, text: str) -> None:
        self.write(rel, text.encode("utf-8", "replace"))  # a file name in no encoding shows as '?', never fails

    def static(self, name: str) -> None:
        """A CSS or JavaScript file of the package's pages folder, copied to the site's top."""
        self.write(name, resources.files(__package__).joinpath("pages", name).read_bytes())

    def picture(self, rel: str, rgb: np.ndarray, side: int = THUMB) -> Picture:
        """(h, w, 3) or (h, w) in [0, 1], longer side scaled to `side` (upscaled without smoothing)."""
        img = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
        scale = side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90) if rel.endswith(".jpg") else img.save(buf, format="PNG")
        self.write(rel, buf.getvalue())
        return Picture(rel, *size)

    def finish(self) -> SiteSummary:
        """The marker listing every file, written last into the complete build (swapped in on leaving)."""
        files = set(self.written)
        data = {"deconvviz": __version__, "kind": self.kind, "complete": True, "files": sorted(files)}
        write_atomic(self.root / MARKER, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))
        size = sum((self.root / f).stat().st_size for f in files)
        return SiteSummary(self.out, sum(f.endswith(".html") for f in files), len(files), size)


def _folder_name(layer: str) -> str:
    """A layer name as a folder name: letters, digits, _ . - only (module paths such as features.28 stay)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", layer)
    return "_" + name if name.startswith(".") or not name else name


# ------------------------------------------------------------------------------------------------------ pages


@dataclass(frozen=True)
class Picture:
    """A picture written into the site: its file relative to the site's top, and its size as shown."""

    file: str
    width: int
    height: int


@dataclass(frozen=True)
class Link:
    """A link as a page shows it: its text and target, relative to the page."""

    text: str
    href: str | None = None  # None: plain text (the breadcrumb of the page itself)


@dataclass(frozen=True)
class Nav:
    """Previous / up / next links of a page; the arrow keys follow rel=prev and rel=next (arrows.js)."""

    prev: Link | None
    up: Link | None
    next: Link | None


@dataclass(frozen=True)
class Tile:
    """A unit's tile: its projection beside the image patch, a caption; a link to its page (None: no page)."""

    channel: int
    value: float  # its strongest activation, written exactly (repr) for the page's sorting
    projection: Picture | None
    patch: Picture | None
    caption: str
    href: str | None = None
    missing: str = "no record"  # shown in place of a picture that is None


def _js_number(v: float) -> str:
    """A float as JavaScript's Number() reads it back exactly: repr, and Infinity/-Infinity/NaN (repr's 'inf'
    reads as NaN, which breaks sorting by value: a unit with no record is -inf)."""
    return repr(v) if math.isfinite(v) else "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity"


@cache
def _environment() -> jinja2.Environment:
    """The pages' templates: autoescaped (every value is text, quotes included), and a name a template uses that
    its context lacks raises instead of rendering empty."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "pages"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["g4"] = lambda v: f"{v:.4g}"
    env.filters["exact"] = _js_number  # a float as written back by Number() in the page's JavaScript
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "separators": (",", ":")}
    env.globals["version"] = __version__
    return env


def render_page(template: str, *, title: str, root: str, crumbs: Sequence[Link], nav: Nav | None, **context) -> str:
    """A whole page from deconvviz/site/pages/TEMPLATE; root: the site's top from the page ("" or "../")."""
    page = _environment().get_template(template)
    return page.render(title=title, root=root, crumbs=list(crumbs), nav=nav, **context)


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


# ------------------------------------------------------------------------------------------- the explore site


@dataclass
class _DrawnUnit:
    """A unit of an explored layer: its projection and patch, its strongest activation in the image and where."""

    projection: Picture
    patch: Picture
    value: float
    row: int
    col: int


@dataclass
class _LayerView:
    """One layer of an explored image: its activation (C, H, W), receptive field and the units drawn."""

    layer: str
    activation: Tensor
    rf: Fields
    strongest: list[int]  # the top maps, strongest first
    drawn: dict[int, _DrawnUnit]
    positions: dict  # the units strongest at each position, for the page's JavaScript (explore.js)


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
    network: Network,
    size: int = 224,
    progress: Progress | None = None,
    verbose: bool = True,
) -> SiteSummary:
    """A static site of one image: per layer its `top` strongest maps projected to pixels, and a picture where a
    click lists the units strongest at that position (the `per_position` strongest, precomputed)."""
    from ..images import DEFAULT_IMAGE

    check_size(size)
    for what, about, v in (("top", "top", top), ("units per position", "per_position", per_position)):
        if v < 1:
            raise DeconvvizError(f"{what} must be at least 1, got {v}", about=about)
    path = Path(image) if image is not None else Path(DEFAULT_IMAGE)
    if not path.is_file():
        raise DeconvvizError(f"'{path}' is not an image file; give the path of an image")
    load_image(path)  # unreadable: fails before any work
    with _SiteFolder(out, "explore") as site:
        net, info, model = network.module, network.weights, network.spec
        x = to_batch(path, info.preprocess, size)
        dn = Deconvnet(net)
        names = list(layers) if layers else _explore_layers(dn, size)
        fields = {}
        for n in names:
            dn.view.resolve(n)  # an unknown name: its own message
            try:
                fields[n] = receptive_field(dn.view, n, input_size=(size, size))
            except LayerError:
                raise DeconvvizError(
                    f"layer '{n}' has no feature-map positions to click; explore takes conv and pool layers"
                ) from None
        for name in ("site.css", "explore.js", "arrows.js"):
            site.static(name)
        ex = _Explore(
            site,
            dn,
            x.to(dn.device),
            picture=to_display(x[0], info.preprocess),
            weights=info,
            model=model,
            top=top,
            per_position=per_position,
            progress=progress,
        )
        site.picture("image.jpg", ex.picture, side=size)
        views = [_explore_layer(ex, n, fields[n]) for n in names]
        for i, v in enumerate(views):
            site.page(f"{_folder_name(v.layer)}/index.html", _explore_page(ex, views, i))
        site.page("index.html", _explore_index(ex, views, path))
        summary = site.finish()
    return summary


def strongest_units(activation: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per position of an activation (C, H, W) the k strongest units with a positive activation, strongest first.
    Returns units and values (k, H, W); -1 and 0 where fewer than k units are positive."""
    values, units = activation.topk(min(k, activation.shape[0]), dim=0)
    units = torch.where(values > 0, units, -1)
    return units, values.clamp_min(0)


def _explore_layers(dn: Deconvnet, size: int) -> list[str]:
    """The layers explored when none are named: a VGG's conv layers (conv1_1 ... conv5_3); any other network's
    stage outputs (stage_modules: ResNet's conv1, layer1-layer4, DenseNet's blocks and transitions, a ViT's patch
    embedding and blocks) that hold a convolution or follow one and give a feature map of more than one position."""
    if dn.steps is not None:
        convs = [n for n in dn.layers() if re.fullmatch(r"conv\d+_\d+", n)]
        if convs:
            return convs
    outputs = {r.name: r for r in module_outputs(dn.model, (size, size))}
    modules = dict(dn.model.named_modules())
    laid = layouts(dn.model, (size, size))

    def maps(name: str) -> bool:  # token and channels-last layers count by their maps on the grid
        r, lay = outputs.get(name), laid.get(name)
        shape = lay.map_shape(r.shape) if r is not None and lay is not None and lay.kind != "unknown" else ()
        return r is not None and r.runs == 1 and len(shape) == 3 and shape[1] * shape[2] > 1

    stages = [n for n in dn.view.stage_modules() if maps(n)]
    follows = {n for n in stages if laid[n].kind in ("tokens", "channels-last")}  # on a patch embedding's grid
    found = {n for n in stages if any(isinstance(m, nn.Conv2d) for m in modules[n].modules())} | follows
    if found:
        return [n for n in outputs if n in found]  # in the order the forward reaches them
    return [n for n in dn.layers() if maps(n) and isinstance(modules[n], nn.Conv2d)]


def _explore_layer(ex: _Explore, layer: str, rf: Fields) -> _LayerView:
    """Project a layer's strongest maps and every unit listed at some position; the positions' data for its page."""
    dn, x, site = ex.dn, ex.x, ex.site
    act = _activation(dn, x, layer)[0]  # (C, H, W)
    peak = act.flatten(1).max(1).values
    strongest = peak.argsort(descending=True, stable=True)[: min(ex.top, act.shape[0])].tolist()
    units, values = strongest_units(act, ex.per_position)
    listed = sorted(set(strongest) | set(units[units >= 0].unique().tolist()))
    folder, size, drawn = _folder_name(layer), x.shape[-1], {}
    for n in range(0, len(listed), 32):
        part = listed[n : n + 32]
        out = dn.project(x, layer, channels=part, mode="max")
        rc = out.selections.rows_cols[0].tolist()
        for j, c in enumerate(part):
            r, col = rc[j]
            t, b = rf.rows[r].tolist()
            left, right = rf.cols[col].tolist()
            crop = pattern_rgb(out.images[0, j, :, t:b, left:right].cpu(), ex.weights.preprocess)
            proj = site.picture(f"{folder}/unit-{c}.jpg", crop)
            patch = site.picture(f"{folder}/patch-{c}.jpg", ex.picture[t:b, left:right])
            drawn[c] = _DrawnUnit(proj, patch, float(peak[c]), r, col)
        if ex.progress:
            ex.progress(f"{layer}: projecting units", min(n + 32, len(listed)), len(listed))
    h, w = act.shape[-2:]
    data = {
        "layer": layer,
        "size": size,
        "h": h,
        "w": w,
        "k": units.shape[0],
        "rows": rf.rows.tolist(),  # the input rows [top, bottom) each row of positions sees, and columns
        "cols": rf.cols.tolist(),
        "centres": [[round(float(v), 3) for v in c] for c in (rf.centre_rows, rf.centre_cols)],
        "units": units.permute(1, 2, 0).flatten().tolist(),  # position-major: (row * w + col) * k + rank
        "values": [float(f"{v:.4g}") for v in values.permute(1, 2, 0).flatten().tolist()],
        "maps": {str(c): {"value": float(f"{d.value:.4g}"), "row": d.row, "col": d.col} for c, d in drawn.items()},
    }
    return _LayerView(layer, activation=act, rf=rf, strongest=strongest, drawn=drawn, positions=data)


@torch.no_grad()
def _activation(dn: Deconvnet, x: Tensor, layer: str) -> Tensor:
    """A layer's activation (1, C, H, W) for x, on the CPU: a chain's steps, or any network's module output."""
    view = dn.view
    path = view.resolve(layer)
    if view.steps is not None:
        return activations(view.steps, x, {"layer": step_index(view.steps, path)})["layer"].cpu()
    with evaluating(dn.model):
        act = module_activations(dn.model, x, {"layer": path})["layer"]
    return (dn.layouts(x).get(path) or Layout()).maps(act, layer).cpu()  # tokens: their maps on the grid


def _explore_page(ex: _Explore, views: list[_LayerView], i: int) -> str:
    v = views[i]
    h, w = v.activation.shape[-2:]
    tiles = []
    for c in v.strongest:
        d = v.drawn[c]
        tiles.append(Tile(c, d.value, d.projection, d.patch, f"max {d.value:.4g} at ({d.row}, {d.col})", missing=""))
    prev = Link(views[i - 1].layer, f"../{_folder_name(views[i - 1].layer)}/index.html") if i > 0 else None
    nxt = Link(views[i + 1].layer, f"../{_folder_name(views[i + 1].layer)}/index.html") if i + 1 < len(views) else None
    return render_page(
        "explore_layer.html.j2",
        title=f"{v.layer} · deconvviz explore",
        root="../",
        crumbs=[Link("image", "../index.html"), Link(v.layer)],
        nav=Nav(prev, Link("image", "../index.html"), nxt),
        layer=v.layer,
        units=v.activation.shape[0],
        h=h,
        w=w,
        shown=max(ex.size, 336),
        per_position=ex.per_position,
        field=_field_text(v.rf),
        tiles=tiles,
        positions=v.positions,
    )


def _field_text(rf: Fields) -> str:
    """The centre position's field, for a page: "99×99 pixels, stride 16"."""
    (h, w), strides = rf.interior()
    stride = rf.describe()[1].replace("x", "×")
    return f"{h}×{w} pixels" + ("" if all(s is None for s in strides) else f", stride {stride}")


def _explore_index(ex: _Explore, views: list[_LayerView], path: Path) -> str:
    info, size = ex.weights, ex.size
    rows = [
        ("image", str(path)),
        ("model", ex.model),
        ("weights", f"{info.name} ({info.source or 'no file'})"),
        ("preprocessing", info.preprocess.name),
        ("input size", f"{size} x {size}"),
        ("made by", f"deconvviz {__version__}"),
    ]
    strips = []
    for v in views:
        h, w = v.activation.shape[-2:]
        maps = [(c, v.drawn[c].projection) for c in v.strongest]
        href = f"{_folder_name(v.layer)}/index.html"
        strips.append(dict(layer=v.layer, href=href, units=v.activation.shape[0], h=h, w=w, maps=maps))
    return render_page(
        "explore_index.html.j2",
        title=f"explore {path.name} · deconvviz",
        root="",
        crumbs=[Link("image")],
        nav=Nav(None, None, Link(views[0].layer, f"{_folder_name(views[0].layer)}/index.html")) if views else None,
        image=path.name,
        size=size,
        rows=rows,
        views=strips,
    )


__all__ = ["SiteSummary", "explore_site", "scan_site", "strongest_units"]
