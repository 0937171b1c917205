"""What both sites share: the output folder (locked, staged, swapped in whole; outputs.py), pictures written at the
size they are shown, and pages rendered from the Jinja2 templates in pages/ (autoescaped: data is text unless a
template says otherwise, and none does).

A site is plain files (HTML, the package's site.css and vanilla JS files copied beside it, JPEG/PNG pictures, no
network): it opens from file:// and from any static host. `.deconvviz-site.json` marks a folder as a site of
deconvviz, so a later build may replace it, and no other non-empty folder is ever written into.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
from PIL import Image

from .. import __version__
from ..outputs import SITE_MARKER, Staged, check_folder, locked, owned, write_atomic

MARKER = SITE_MARKER
THUMB = 112  # side in pixels of every projection, patch and stage picture: written at the size it is shown


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
