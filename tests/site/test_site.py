"""The static sites in a real browser (Playwright driving Debian's chromium from file://), and their files."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from unittest import mock

import jinja2
import pytest
import torch
from oracle import gradient_support, layer_activation
from PIL import Image, ImageOps
from playwright.sync_api import sync_playwright

from deconvviz import Deconvnet
from deconvviz.analysis.scan import scan_folder
from deconvviz.cli import app
from deconvviz.images import DEFAULT_IMAGE, to_batch
from deconvviz.networks.network import load_network
from deconvviz.networks.weights import load_vgg
from deconvviz.site import _common as site_module
from deconvviz.site import explore_site, scan_site
from deconvviz.site._common import MARKER
from deconvviz.site._explore_site import _explore_layers
from deconvviz.site._scan_site import _RecordCard

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HOSTILE = '"><img src=x onerror=alert(1)>.jpg'
HOSTILE_SKIPPED = "<svg onload=alert(2)>.png"  # not an image: listed as skipped on the index
LAYERS, SIZE, TOP = ("conv1_1", "conv2_1"), 32, 3


def photo_folder(root: Path) -> Path:
    src = Image.open(DEFAULT_IMAGE).convert("RGB")  # 448x448
    boxes = [(0, 0, 300), (100, 50, 250), (148, 148, 300), (50, 200, 200), (0, 100, 400)]
    for i, (left, top, side) in enumerate(boxes):
        img = src.crop((left, top, left + side, top + side))
        (ImageOps.mirror(img) if i % 2 else img).resize((48, 48)).save(root / f"img{i}.jpg")
    src.crop((200, 100, 420, 320)).resize((48, 48)).save(root / HOSTILE)
    (root / HOSTILE_SKIPPED).write_text("not an image")
    return root


@pytest.fixture(scope="module")
def scan_run(random_vgg11, tmp_path_factory) -> Path:
    photos = photo_folder(tmp_path_factory.mktemp("photos"))
    out = tmp_path_factory.mktemp("scan") / "run"
    scan_folder(photos, LAYERS, out, top=TOP, size=SIZE, network=random_vgg11, batch_size=4, workers=0, verbose=False)
    return out


@pytest.fixture(scope="module")
def site(scan_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    scan_site(scan_run, out, device="cpu", verbose=False)
    return out


@pytest.fixture(scope="module")
def report(scan_run) -> dict:
    return json.loads((scan_run / "report.json").read_text())


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):  # a failure that says what to do, not a skip: CI must run these
        fix = "run bash scripts/test.sh (it installs Debian's chromium), or set CHROMIUM to a browser's path"
        pytest.fail(f"no browser at {CHROMIUM}: {fix}")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


class Watched:
    """A page with what went wrong on it: console errors, uncaught exceptions, dialogs (alert(...))."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1200, "height": 800})
        self.errors, self.dialogs = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda ex: self.errors.append(str(ex)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

    def open(self, path: Path):
        self.page.goto(path.resolve().as_uri())
        return self.page

    def check(self) -> None:
        """Every image of the current page loaded (in a window tall enough to show all), and nothing went wrong."""
        p = self.page
        lazy = "Array.from(document.querySelectorAll('.tiles img, .records img, .stages img'))"
        assert p.evaluate(lazy + ".every(i => i.loading === 'lazy')")
        view = p.viewport_size
        p.set_viewport_size({"width": view["width"], "height": p.evaluate("document.body.scrollHeight") + 100})
        p.wait_for_function("Array.from(document.images).every(i => i.complete)")  # lazy ones load when in view
        p.set_viewport_size(view)
        broken = p.evaluate("Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
        assert broken == [], broken
        assert self.errors == [] and self.dialogs == [], (self.errors, self.dialogs)

    def close(self) -> None:
        self.page.close()


@pytest.fixture()
def tab(browser):
    w = Watched(browser)
    yield w
    w.close()


def strongest_first(report: dict, layer: str) -> list[int]:
    """Channels by their strongest record's value, descending; ties by channel (computed from report.json)."""
    chans = report["layers"][layer]["channels"]
    return sorted((int(c) for c in chans), key=lambda c: (-chans[str(c)][0]["value"], c))


def visible_tiles(page) -> list[int]:
    return [
        int(c) for c in page.eval_on_selector_all("#tiles .tile:not([hidden])", "ts => ts.map(t => t.dataset.channel)")
    ]


def test_index_layer_unit_next_by_clicks_and_arrow_keys(site, report, tab):
    page = tab.open(site / "index.html")
    tab.check()
    assert page.locator("main").inner_text().count("vgg11") >= 1
    page.click("main a:text-is('conv2_1')")
    assert page.url.endswith("/conv2_1/index.html")
    tab.check()
    best = strongest_first(report, "conv2_1")
    page.click("#tiles .tile >> nth=0")
    assert page.url.endswith(f"/conv2_1/unit-{best[0]}.html")
    tab.check()
    records = report["layers"]["conv2_1"]["channels"][str(best[0])]
    shown = page.eval_on_selector_all(".record", "rs => rs.map(r => Number(r.dataset.value))")
    assert shown == [r["value"] for r in records]  # exact: written with repr
    assert page.locator("main").inner_text().count(records[0]["image"]) >= 1
    assert page.locator(".stages img").count() >= 2  # conv2_1: deconv2, unpool1, deconv1
    c = best[0]
    nxt = c + 1 if c + 1 < 128 else c - 1
    page.click("a#next" if nxt > c else "a#prev")
    assert page.url.endswith(f"/conv2_1/unit-{nxt}.html")
    tab.check()
    start = int(re.search(r"unit-(\d+)", page.url)[1])
    step = 1 if start + 1 < 128 else -1
    page.keyboard.press("ArrowRight" if step == 1 else "ArrowLeft")
    page.wait_for_url(f"**/conv2_1/unit-{start + step}.html")
    tab.check()
    page.keyboard.press("ArrowLeft" if step == 1 else "ArrowRight")
    page.wait_for_url(f"**/conv2_1/unit-{start}.html")
    tab.check()
    page.goto((site / "conv2_1" / "unit-0.html").resolve().as_uri())
    assert page.locator("a#prev").count() == 0
    page.keyboard.press("ArrowLeft")  # nothing before unit 0: stays
    assert page.url.endswith("/conv2_1/unit-0.html")


def test_the_site_of_a_resnet_scanned_under_torchrun(resnet_scans, tmp_path, tab):
    """The site of a network that is not a chain (resnet18, random weights), from the two-process torchrun scan:
    the pages load with every image and no script error; a unit's page shows its top images, each with its
    projection and patch, in the order and with the values of the report."""
    run = resnet_scans[1]
    report = json.loads((run / "report.json").read_text())
    out = tmp_path / "site"
    scan_site(run, out, device="cpu", verbose=False)
    page = tab.open(out / "index.html")
    tab.check()
    assert "torchvision:resnet18" in page.locator("main").inner_text()
    for layer in ("layer1", "layer2"):
        page = tab.open(out / "index.html")
        page.click(f"main a:text-is('{layer}')")
        assert page.url.endswith(f"/{layer}/index.html")
        tab.check()
        best = strongest_first(report, layer)
        assert visible_tiles(page) == best
        page.click("#tiles .tile[data-channel='3']")
        assert page.url.endswith(f"/{layer}/unit-3.html")
        tab.check()
        records = report["layers"][layer]["channels"]["3"]
        shown = page.eval_on_selector_all(".record", "rs => rs.map(r => Number(r.dataset.value))")
        assert shown == [r["value"] for r in records] and len(records) == 3
        assert page.locator(".record img").count() >= 2 * len(records)  # a projection and a patch per record
        assert page.locator("main").inner_text().count(records[0]["image"]) >= 1


def test_sorting_and_filtering_change_the_tile_order(site, report, tab):
    page = tab.open(site / "conv1_1" / "index.html")
    tab.check()
    assert visible_tiles(page) == strongest_first(report, "conv1_1")
    page.select_option("#sort", "channel")
    assert visible_tiles(page) == list(range(64))
    page.fill("#filter", "3-5, 9")
    assert visible_tiles(page) == [3, 4, 5, 9]
    page.select_option("#sort", "activation")
    assert visible_tiles(page) == [c for c in strongest_first(report, "conv1_1") if c in (3, 4, 5, 9)]
    assert page.inner_text("#count") == "4 of 64 units"
    page.fill("#filter", "twelve")  # not understood: every tile, the field marked
    assert len(visible_tiles(page)) == 64 and "bad" in page.get_attribute("#filter", "class")
    page.fill("#filter", "")
    assert visible_tiles(page) == strongest_first(report, "conv1_1")
    assert tab.errors == []


def test_hostile_file_names_show_as_text_and_run_nothing(site, report, tab):
    units = [(layer, int(c)) for layer in LAYERS for c, recs in report["layers"][layer]["channels"].items()
             if any(r["image"] == HOSTILE for r in recs)]  # fmt: skip
    assert units, "the hostile image is in no unit's top-k; the test needs it shown"
    for layer, c in units[:3]:
        page = tab.open(site / layer / f"unit-{c}.html")
        tab.check()
        assert HOSTILE in page.locator("main").inner_text()
        assert page.locator("img[src='x'], img[onerror], svg").count() == 0
    page = tab.open(site / "index.html")
    tab.check()
    assert HOSTILE_SKIPPED in page.locator("main").inner_text()
    assert page.locator("svg, [onload], [onerror]").count() == 0
    assert tab.dialogs == []


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        self.targets += [v for k, v in attrs if k in ("href", "src") and v]


def test_every_link_is_relative_inside_the_site_and_exists(site, report):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 1 + len(LAYERS) + 64 + 128
    for page in pages:
        parser = Links()
        parser.feed(page.read_text())
        for target in parser.targets:
            assert not re.match(r"^[a-z]+:|^/", target), (page, target)
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(site.resolve()) and resolved.is_file(), (page, target)
    marker = json.loads((site / MARKER).read_text())
    on_disk = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()} - {MARKER}
    assert marker["complete"] and set(marker["files"]) == on_disk


def test_a_second_build_replaces_the_site_and_a_failed_one_leaves_nothing(runner, scan_run, tmp_path, monkeypatch):
    out = tmp_path / "site"
    scan_site(scan_run, out, device="cpu", verbose=False)
    (out / "conv1_1" / "unit-999.html").write_text("from an older build")
    listed = json.loads((out / MARKER).read_text())
    listed["files"] += ["conv1_1/unit-999.html", "../outside.txt"]  # the marker never reaches outside the site
    (tmp_path / "outside.txt").write_text("not the site's")
    (out / MARKER).write_text(json.dumps(listed))
    r = runner.invoke(app, ["site", str(scan_run), "--out", str(out), "--device", "cpu", "-q"])
    assert r.exit_code == 0 and r.output == ""
    assert not (out / "conv1_1" / "unit-999.html").exists() and (out / "conv1_1" / "unit-63.html").is_file()
    assert (tmp_path / "outside.txt").is_file()

    calls = []

    def failing_page(self, rel, text):
        calls.append(rel)
        if len(calls) == 5:
            raise OSError("disk full")
        self.write(rel, text.encode())

    monkeypatch.setattr(site_module._SiteFolder, "page", failing_page)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError):
        scan_site(scan_run, fresh / "deeper" / "site", device="cpu", verbose=False)
    assert not fresh.exists()  # the folders the failed build made are gone
    calls.clear()
    with pytest.raises(OSError):
        scan_site(scan_run, out, device="cpu", verbose=False)
    assert not [p for p in out.rglob(".*") if p.name != MARKER]  # no temp file left, pages whole
    monkeypatch.undo()
    scan_site(scan_run, out, device="cpu", verbose=False)  # a crashed build's folder is still a site: rebuilt
    assert json.loads((out / MARKER).read_text())["complete"]


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(runner, scan_run, tmp_path):
    (tmp_path / "empty").mkdir()
    old = tmp_path / "old"
    shutil.copytree(scan_run, old)
    rep = json.loads((old / "report.json").read_text())
    (old / "report.json").write_text(json.dumps({**rep, "deconvviz": "0.0.1"}))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("mine")
    (tmp_path / "afile").write_text("a file")
    cases = [
        ([str(tmp_path / "empty")], "is not a finished scan (no report.json)"),
        ([str(tmp_path / "nothing")], "is not a folder"),
        ([str(old)], "was written by deconvviz 0.0.1"),
        ([str(scan_run), "--out", str(tmp_path / "busy")], "is not empty and holds no deconvviz site"),
        ([str(scan_run), "--out", str(tmp_path / "afile")], "it is a file"),
        ([str(scan_run), "--out", str(tmp_path / "afile" / "site")], "cannot write to"),
    ]
    for args, message in cases:
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
        r = runner.invoke(app, ["site", *args, "--out", str(tmp_path / "new")] if "--out" not in args else
                          ["site", *args])  # fmt: skip
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, r.output)
        assert lines[0].startswith("deconvviz: error: ")
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before, args
    assert not (tmp_path / "new").exists()


def test_a_guided_scan_gives_a_guided_site(random_vgg11, tmp_path, browser):
    """The rule the scan projected with (its report's arguments) is shown, and the site projects with it too."""
    (tmp_path / "photos").mkdir()
    photos = photo_folder(tmp_path / "photos")
    scan_folder(
        photos,
        ["conv2_1"],
        tmp_path / "run",
        top=TOP,
        size=SIZE,
        network=random_vgg11,
        batch_size=4,
        workers=0,
        verbose=False,
        rule="guided",
    )
    with mock.patch("deconvviz.site._scan_site.Deconvnet", wraps=Deconvnet) as made:
        scan_site(tmp_path / "run", tmp_path / "site", device="cpu", verbose=False)
    assert [c.kwargs.get("rule") for c in made.call_args_list] == ["guided"]
    tab = Watched(browser)
    page = tab.open(tmp_path / "site" / "index.html")
    assert "rule\tguided" in page.locator("table.facts").inner_text()
    assert str(tmp_path) not in page.content()  # the scanned folder by name, no local path
    tab.close()
    unit = next((tmp_path / "site" / "conv2_1").glob("unit-*.html")).read_text()
    assert "Rule: guided" in unit


def field_box(features: torch.nn.Sequential, upto: int, row: int, col: int, size: int) -> tuple[int, int, int, int]:
    """Input rows/cols that reach position (row, col) of features[: upto + 1], found by autograd on a copy with
    all-ones filters, average pools in place of max pools and a positive input: every path counts."""
    layers = []
    for m in features[: upto + 1]:
        if isinstance(m, torch.nn.Conv2d):
            c = torch.nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
            torch.nn.init.ones_(c.weight)
            torch.nn.init.zeros_(c.bias)
            layers.append(c)
        elif isinstance(m, torch.nn.MaxPool2d):
            layers.append(torch.nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
        else:
            layers.append(m)
    x = torch.ones(1, 3, size, size, requires_grad=True)
    torch.nn.Sequential(*layers)(x)[0, 0, row, col].backward()
    rows, cols = (x.grad[0].sum(0) > 0).nonzero(as_tuple=True)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def test_explore_a_click_lists_the_strongest_units_whose_field_holds_it(random_vgg11, tmp_path, tab):
    image = tmp_path / HOSTILE
    Image.open(DEFAULT_IMAGE).resize((64, 64)).save(image)
    out, k = tmp_path / "explore", 4
    explore_site(
        image, out, layers=["conv2_1", "conv3_1"], top=5, per_position=k, network=random_vgg11, size=SIZE, verbose=False
    )
    net, info = load_vgg("vgg11", "random", device="cpu", verbose=False)
    x = to_batch(image, info.preprocess, SIZE)
    page = tab.open(out / "index.html")
    tab.check()
    assert HOSTILE in page.locator("main").inner_text() and tab.dialogs == []
    page.click("main h2 a:text-is('conv2_1')")
    for layer, upto in (("conv2_1", 4), ("conv3_1", 7)):  # vgg11: features.4 / .7 are those convs' ReLUs
        page.wait_for_url(f"**/{layer}/index.html")
        tab.check()
        with torch.no_grad():
            act = net.features[: upto + 1](x)[0]
        for y, xx in ((0, 0), (SIZE - 1, SIZE - 1), (5, 26), (17, 3), (13, 14)):
            picture = page.locator("#picture").bounding_box()
            scale = picture["width"] / SIZE
            page.mouse.click(picture["x"] + (xx + 0.5) * scale, picture["y"] + (y + 0.5) * scale)
            where = page.locator("#where")
            assert (int(where.get_attribute("data-y")), int(where.get_attribute("data-x"))) == (y, xx)
            row, col = int(where.get_attribute("data-row")), int(where.get_attribute("data-col"))
            top, bottom, left, right = field_box(net.features, upto, row, col, SIZE)
            assert top <= y <= bottom and left <= xx <= right, (layer, y, xx, row, col)
            units = [
                int(u) for u in page.eval_on_selector_all("#units li[data-unit]", "ls => ls.map(l => l.dataset.unit)")
            ]
            values = page.eval_on_selector_all("#units li[data-unit]", "ls => ls.map(l => Number(l.dataset.value))")
            here = act[:, row, col]
            expected = [c for c in here.argsort(descending=True).tolist() if here[c] > 0][:k]
            assert len(units) == len(expected) and units
            assert torch.allclose(here[units], here[expected], rtol=1e-3)  # the same values (ties may swap)
            assert torch.allclose(torch.tensor(values), here[units], rtol=1e-3)
            tab.check()
        if layer == "conv2_1":
            page.keyboard.press("ArrowRight")
            page.wait_for_url("**/conv3_1/index.html")
    page.keyboard.press("ArrowRight")  # no layer after conv3_1: stays
    assert page.url.endswith("/conv3_1/index.html")


FIELD_SHOWN = """([row, col]) => {
  const P = JSON.parse(document.getElementById('positions').textContent);
  return [...P.rows[row], ...P.cols[col]];
}"""


@pytest.mark.parametrize("name", ["torchvision:resnet18", "FACTORY"])
def test_explore_on_networks_that_are_not_chains(name, tmp_path, tab, residual_factory):
    """Explore on networks deconvviz has never named (random weights): the default layers are the stage outputs;
    a click lists the strongest units at the position whose field is centred nearest (from an independent forward
    hook) and draws a field that holds the pixel and the support of that position's gradient."""
    spec = residual_factory if name == "FACTORY" else name
    network = load_network(spec, "random", "cpu", verbose=False)
    net, size, k = network.module, 48, 3
    want = ["stem.0", "stem", "block1", "block2"] if name == "FACTORY" else ["conv1", *(f"layer{i}" for i in "1234")]
    assert _explore_layers(Deconvnet(net), size) == want
    layers = want if name == "FACTORY" else ["layer1", "layer3"]
    image = tmp_path / "img.jpg"
    Image.open(DEFAULT_IMAGE).resize((64, 64)).save(image)
    out = tmp_path / "explore"
    explore_site(image, out, layers=layers, top=3, per_position=k, network=network, size=size, verbose=False)
    x = to_batch(image, network.weights.preprocess, size)
    page = tab.open(out / "index.html")
    tab.check()
    for layer in layers:
        page = tab.open(out / layer / "index.html")
        tab.check()
        assert page.locator(".tiles .tile").count() == 3
        act = layer_activation(net, dict(net.named_modules())[layer], x)[0]
        for y, xx in ((0, 0), (size - 1, size - 1), (5, 30), (20, 7)):
            picture = page.locator("#picture").bounding_box()
            scale = picture["width"] / size
            page.mouse.click(picture["x"] + (xx + 0.5) * scale, picture["y"] + (y + 0.5) * scale)
            where = page.locator("#where")
            row, col = int(where.get_attribute("data-row")), int(where.get_attribute("data-col"))
            top, bottom, left, right = page.evaluate(FIELD_SHOWN, [row, col])
            assert top <= y < bottom and left <= xx < right, (layer, y, xx, row, col)
            t, b, le, r = gradient_support(net, layer, x, row, col)
            assert top <= t and b <= bottom and left <= le and r <= right, (layer, row, col)
            units = page.eval_on_selector_all("#units li[data-unit]", "ls => ls.map(l => Number(l.dataset.unit))")
            here = act[:, row, col]
            expected = [c for c in here.argsort(descending=True).tolist() if here[c] > 0][:k]
            assert len(units) == len(expected)
            assert torch.allclose(here[units], here[expected], rtol=1e-3)  # the same values (ties may swap)
        tab.check()


def test_explore_bad_inputs_are_one_line_exit_2_and_write_nothing(runner, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    small = ["--model", "vgg11", "--weights", "random", "--size", "32"]
    cases = [
        ([str(DEFAULT_IMAGE), "--out", str(tmp_path / "busy"), *small], "is not empty and holds no deconvviz site"),
        ([str(tmp_path / "corrupt.jpg"), "--out", str(tmp_path / "new"), *small], "corrupt.jpg"),
        ([str(DEFAULT_IMAGE), "--out", str(tmp_path / "new"), "--layers", "conv9_9", *small], "conv9_9"),
        ([str(DEFAULT_IMAGE), "--out", str(tmp_path / "new"), "--per-position", "0", *small], "at least 1"),
    ]
    for args, message in cases:
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
        r = runner.invoke(app, ["explore", *args])
        lines = [line for line in r.output.splitlines() if line.startswith("deconvviz: error: ")]
        assert r.exit_code == 2 and len(lines) == 1 and message in lines[0], (args, r.output)
        assert "Traceback" not in r.output
        assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before, args


def test_a_fixed_position_scan_gives_a_fixed_position_site(random_vgg11, tmp_path):
    """The unpooling the scan projected with (its report's arguments) is what the site projects with, and shows."""
    (tmp_path / "photos").mkdir()
    photos = photo_folder(tmp_path / "photos")
    scan_folder(
        photos,
        ["conv2_1"],
        tmp_path / "run",
        top=TOP,
        size=SIZE,
        network=random_vgg11,
        batch_size=4,
        workers=0,
        verbose=False,
        unpool="fixed",
    )
    with mock.patch("deconvviz.site._scan_site.Deconvnet", wraps=Deconvnet) as made:
        scan_site(tmp_path / "run", tmp_path / "site", device="cpu", verbose=False)
    assert [(c.kwargs.get("rule"), c.kwargs.get("unpool")) for c in made.call_args_list] == [("deconvnet", "fixed")]
    index = (tmp_path / "site" / "index.html").read_text()
    assert re.search(r"unpool</t[hd]>\s*<td>fixed<", index), index


HOSTILE_PATH = "a</script><script>alert(3)</script>{{ 7*7 }}'\".jpg"  # in folders a< and script><script>alert(3)<
HOSTILE_PATH_SKIPPED = "b</script><img src=x onerror=alert(4)>{{ 7*7 }}'\".png"


def script_elements(page) -> list[str]:
    """The page's script elements: a file's name, or the type of an inline block."""
    return page.evaluate("Array.from(document.scripts).map(s => s.src ? s.src.split('/').pop() : s.type)")


def test_a_hostile_path_with_script_quotes_and_braces_shows_as_text(random_vgg11, tmp_path, browser):
    """A scanned file under folders whose names close a script element, with quotes and template braces in its
    name: shown as that text on the unit pages, the index and an explore site; no script runs, nothing is
    evaluated as a template."""
    photos = tmp_path / "photos"
    hostile = photos / HOSTILE_PATH
    hostile.parent.mkdir(parents=True)
    (photos / HOSTILE_PATH_SKIPPED).parent.mkdir(parents=True)
    src = Image.open(DEFAULT_IMAGE).convert("RGB")
    src.crop((0, 0, 300, 300)).resize((48, 48)).save(hostile, format="JPEG")
    ImageOps.mirror(src).resize((48, 48)).save(photos / "plain.jpg")
    (photos / HOSTILE_PATH_SKIPPED).write_text("not an image")
    tiny = {"size": SIZE, "network": random_vgg11, "verbose": False}
    scan_folder(photos, ["conv1_1"], tmp_path / "run", top=2, batch_size=4, workers=0, **tiny)
    scan_site(tmp_path / "run", tmp_path / "site", device="cpu", verbose=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    chans = report["layers"]["conv1_1"]["channels"]
    units = [int(c) for c, recs in chans.items() if recs and recs[0]["image"] == HOSTILE_PATH]
    assert units, "the hostile image is no unit's strongest; the test needs it in the lead sentence"
    tab = Watched(browser)
    page = tab.open(tmp_path / "site" / "conv1_1" / f"unit-{units[0]}.html")
    tab.check()
    main = page.locator("main").inner_text()
    assert f"in {HOSTILE_PATH}." in main and page.locator(".source a").first.inner_text() == HOSTILE_PATH
    assert script_elements(page) == ["arrows.js"]
    page = tab.open(tmp_path / "site" / "index.html")
    tab.check()
    assert f"{HOSTILE_PATH_SKIPPED}: " in page.locator("main ul").inner_text()
    assert script_elements(page) == [] and page.locator("img[src='x'], [onerror]").count() == 0

    out = tmp_path / "explore"
    explore_site(hostile, out, layers=["conv1_1"], top=2, per_position=2, **tiny)
    page = tab.open(out / "index.html")
    tab.check()
    assert page.title() == f"explore {hostile.name} · deconvviz"
    assert page.locator("h1").inner_text() == f"Explore {hostile.name}"
    assert str(hostile) in page.locator("table.facts").inner_text()
    page.click("main h2 a:text-is('conv1_1')")
    tab.check()
    assert script_elements(page) == ["application/json", "explore.js", "arrows.js"]
    assert tab.dialogs == [] and tab.errors == []
    tab.close()


HOSTILE_LABEL = "</script><script>alert(5)</script>\"'{{ 7*7 }}{% if 1 %}<!--"


def test_a_hostile_layer_and_labels_render_as_text_in_every_template(tmp_path, browser):
    """A layer name (a module path of the user's network may be any text but '.') and labels through every page
    template: the title, crumbs, links, headings, alt texts, captions, facts and the explore page's JSON data
    show them as that text; no script runs and the explore page still works."""
    s, text = site_module, HOSTILE_LABEL
    folder = s._SiteFolder(tmp_path / "site", "test")
    for name in ("site.css", "layer.js", "arrows.js", "explore.js"):
        folder.static(name)
    pic = folder.picture("pic.png", torch.linspace(0, 1, 16).reshape(4, 4).numpy())
    folder.picture("image.jpg", torch.full((8, 8, 3), 0.5).numpy(), side=SIZE)
    folder.picture("layer/unit-3.jpg", torch.full((4, 4, 3), 0.5).numpy())
    tile = s.Tile(3, 0.5, pic, pic, text, href="unit.html")
    card = _RecordCard(1, 0.5, 0, 0, text, "pic.png", text, pic, pic)
    nav = s.Nav(s.Link(text, "../index.html"), s.Link(text, "../index.html"), s.Link(text, "../index.html"))
    frame = {"title": f"{text} · deconvviz", "crumbs": [s.Link(text, "../index.html"), s.Link(text)], "nav": nav}
    strip = {"layer": text, "href": "layer/index.html", "units": 1, "projected": 1, "tiles": [tile]}
    one_unit = {"units": [3], "values": [0.5], "maps": {"3": {"value": 0.5, "row": 0, "col": 0}}}
    fields = {"rows": [[0, SIZE]], "cols": [[0, SIZE]], "centres": [[SIZE / 2], [SIZE / 2]]}
    positions = {"layer": text, "size": SIZE, "h": 1, "w": 1, "k": 1, **fields, **one_unit}
    view = {"layer": text, "href": "layer/explore.html", "units": 1, "h": 1, "w": 1, "maps": [(3, pic)]}
    sizes = {"units": 1, "h": 1, "w": 1, "shown": SIZE, "per_position": 1, "field": text}
    pages = {  # page: (template, root, context)
        "index.html": (
            "scan_index.html.j2",
            "",
            dict(folder=text, rows=[(text, text)], top=1, strips=[strip], skipped=[(text, text)], provenance=text),
        ),
        "layer/index.html": (
            "scan_layer.html.j2",
            "../",
            dict(layer=text, rule=text, top=1, projected=1, tiles=[tile]),
        ),
        "layer/unit.html": (
            "scan_unit.html.j2",
            "../",
            dict(layer=text, unit=3, rule=text, records=[card], stages=[(text, pic)]),
        ),
        "explore.html": ("explore_index.html.j2", "", dict(image=text, size=SIZE, rows=[(text, text)], views=[view])),
        "layer/explore.html": (
            "explore_layer.html.j2",
            "../",
            dict(layer=text, tiles=[tile], positions=positions, **sizes),
        ),
    }
    for rel, (template, root, context) in pages.items():
        folder.page(rel, s.render_page(template, root=root, **frame, **context))
    scripts = {
        "index.html": [],
        "layer/index.html": ["layer.js"],
        "layer/unit.html": ["arrows.js"],
        "explore.html": [],
        "layer/explore.html": ["application/json", "explore.js", "arrows.js"],
    }
    tab = Watched(browser)
    for rel in pages:
        page = tab.open(tmp_path / "site" / rel)
        tab.check()
        assert page.title() == frame["title"], rel
        assert page.locator("header").inner_text().count(text) == 5, rel  # two crumbs, prev, up, next
        assert text in page.locator("main").inner_text(), rel
        assert page.locator("img[onerror], [onload]").count() == 0, rel
        assert script_elements(page) == scripts[rel], rel
    page = tab.open(tmp_path / "site" / "layer" / "unit.html")
    assert page.locator(".stages img").get_attribute("alt") == text
    assert page.locator(".stages figcaption").inner_text() == text
    assert page.locator(".source a").inner_text() == text and page.locator(".record .note").inner_text().endswith(text)
    page = tab.open(tmp_path / "site" / "layer" / "index.html")
    assert page.locator(".tile .caption span").inner_text() == text
    page = tab.open(tmp_path / "site" / "index.html")
    assert page.locator("table.facts th").inner_text() == text == page.locator("table.facts td").inner_text()
    assert page.locator("main ul").inner_text() == f"{text}: {text}" and page.locator("pre").inner_text() == text
    page = tab.open(tmp_path / "site" / "layer" / "explore.html")
    assert page.evaluate("JSON.parse(document.getElementById('positions').textContent)") == positions
    assert text in page.locator("#where").inner_text()
    box = page.locator("#picture").bounding_box()
    page.mouse.click(box["x"] + 1, box["y"] + 1)
    assert page.eval_on_selector_all("#units li[data-unit]", "ls => ls.map(l => l.dataset.unit)") == ["3"]
    tab.check()
    assert tab.dialogs == []
    tab.close()


def test_a_name_missing_from_a_page_context_raises_instead_of_rendering_empty():
    frame = {"title": "t", "root": "", "crumbs": [], "nav": None}
    with pytest.raises(jinja2.UndefinedError, match="projected"):
        site_module.render_page("scan_layer.html.j2", **frame, layer="conv1_1", rule="deconvnet", top=1, tiles=[])
    tile = site_module.Tile(1, 0.5, None, None, "max 0.5")
    with pytest.raises(jinja2.UndefinedError, match="chanel"):
        site_module._environment().from_string("unit {{ t.chanel }}").render(t=tile)  # a misspelled attribute


def test_a_unit_without_records_sorts_as_minus_infinity_not_nan(tmp_path, browser):
    """A tile's data-value is what JavaScript's Number() reads: a unit with no record is -Infinity (repr's '-inf'
    read as NaN, so sorting by value put such tiles anywhere)."""
    s = site_module
    folder = s._SiteFolder(tmp_path / "site", "test")
    folder.static("site.css"), folder.static("layer.js"), folder.static("arrows.js")
    tiles = [s.Tile(c, v, None, None, f"unit {c}", href="u.html") for c, v in ((0, float("-inf")), (1, 2.5), (2, 0.1))]
    frame = {"title": "t", "crumbs": [s.Link("t")], "nav": None}
    page = s.render_page(
        "scan_layer.html.j2", root="../", layer="l", rule="r", top=1, projected=2, tiles=tiles, **frame
    )
    folder.page("l/index.html", page)
    tab = Watched(browser)
    p = tab.open(tmp_path / "site" / "l" / "index.html")
    values = p.eval_on_selector_all(".tile", "ts => ts.map(t => String(Number(t.dataset.value)))")
    assert sorted(values) == sorted(["-Infinity", "2.5", "0.1"]) and visible_tiles(p)[-1] == 0
    assert tab.errors == [] and tab.dialogs == []
    tab.close()


def test_no_template_turns_escaping_off():
    env = site_module._environment()
    assert env.autoescape is True and env.undefined is jinja2.StrictUndefined
    templates = env.list_templates(extensions=["j2"])
    assert "base.html.j2" in templates
    for name in templates:
        source = env.loader.get_source(env, name)[0]
        assert not re.search(r"\|\s*safe\b|autoescape\s+false|Markup", source), name
