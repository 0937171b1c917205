"""Every script in scripts/ runs, in a small mode, so that an API change cannot break one unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from deconvviz.images import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ELSEWHERE = {"test.sh": "tests/test_readme.py runs it with fake apt-get, ruff and python"}


def script(name: str, *args, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run scripts/NAME with this interpreter and this checkout's package; fail with its output if it fails."""
    command = ["bash", str(SCRIPTS / name)] if name.endswith(".sh") else [sys.executable, str(SCRIPTS / name)]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run([*command, *map(str, args)], cwd=cwd, env=environment, capture_output=True, text=True)
    assert r.returncode == 0, f"scripts/{name} {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r


def test_every_script_has_a_test_here():
    """A new script gets its small run in this file (the before-stop check looks for its name in tests/)."""
    text = Path(__file__).read_text()
    names = [p.name for p in SCRIPTS.iterdir() if p.suffix in (".py", ".sh") and p.name not in ELSEWHERE]
    missing = [name for name in names if f'"{name}"' not in text]
    assert not missing, f"scripts run by no test in {Path(__file__).name}: {missing}"


def test_make_crops_writes_the_photos_whole_then_seeded_square_crops(tmp_path):
    script("make_crops.py", DEFAULT_IMAGE, "--count", 4, "--out", tmp_path / "a")
    script("make_crops.py", DEFAULT_IMAGE, "--count", 4, "--out", tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["crop001.jpg", "crop002.jpg", "crop003.jpg", "full000.jpg"]
    assert Image.open(tmp_path / "a" / "full000.jpg").size == Image.open(DEFAULT_IMAGE).size
    assert all(Image.open(tmp_path / "a" / n).size == (256, 256) for n in names if n.startswith("crop"))
    same = [(tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names]
    assert all(same), "the crops are seeded: two runs write the same files"


def test_cli_docs_page_is_what_the_app_gives():
    """docs/cli.md is generated from the typer app: a new option or command without a rerun fails here."""
    script("cli_docs.py", "--check")


def test_architectures_table_on_two_networks(tmp_path):
    """resnet18 and vit_b_16 project under every rule, vit_b_16 by the conventions it names (attention fixed, std
    fixed, the activation rule on GELU) and resnet18 by none. The table goes between a page's markers."""
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- architectures:start -->\nold\n<!-- architectures:end -->\nafter\n")
    script("architectures.py", "--only", "resnet18,vit_b_16", "--page", page)
    text = page.read_text()
    assert text.startswith("before\n<!-- architectures:start -->\n| architecture |") and text.endswith("-->\nafter\n")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert rows["resnet18"][2:6] == ["projects"] * 4 and rows["resnet18"][6].strip("| ") == "-"
    vit = rows["vit_b_16"]
    assert vit[2:6] == ["projects"] * 4
    assert {c.strip() for c in vit[6].strip("| ").split(",")} == {"activation rule", "attention fixed", "std fixed"}


@pytest.mark.slow
def test_bench_smoke_runs_to_its_json_line_and_agrees_with_captum(tmp_path):
    """Every measurement at 32 px with 2 maps, up to the JSON line; the projections it times agree with captum's,
    captum's faster ReLU configuration is named, and --docs writes the table between the page's markers."""
    page = tmp_path / "performance.md"
    page.write_text("# Performance\n<!-- bench:start -->\n<!-- bench:end -->\n")
    out = script("bench.py", "--smoke", "--docs", page).stdout.strip().splitlines()
    r = json.loads(out[-1])
    for key in ("max_rel_err_vs_captum", "guided_max_rel_err_vs_captum", "gradient_max_rel_err_vs_captum"):
        assert r[key] < 1e-4, (key, r[key])
    assert r["resnet50_layer3_max_rel_err_vs_captum"] < 1e-4 and r["crop_max_rel_diff"] < 1e-4
    references = [v for k, v in r.items() if k.endswith("reference") or k.startswith("reference")]
    assert len(references) == 5 and set(references) <= {"captum_inplace", "captum_no_inplace"}
    assert any(line.startswith("captum at its best") for line in out)
    assert r["ratios"]["speedup vs captum, batched (>= 4)"] == r["speedup_batched"] > 0
    drawing = r["ratios"]["resnet50 layer4 scan, drawing / projecting (<= 1)"]
    assert drawing == r["resnet50_layer4_scan_drawing_over_projecting"] > 0  # the scan's figures were drawn and timed
    table = page.read_text()
    assert "| speedup vs captum, batched (>= 4) |" in table and table.endswith("<!-- bench:end -->\n")


@pytest.mark.slow
def test_bicycle_share_prints_the_shares_the_docs_show():
    """The two defaults' conv5_3 maps and their shares on the bicycle, as docs/commands/reconstruct.md's table."""
    out = script("bicycle_share.py").stdout
    page = (ROOT / "docs" / "commands" / "reconstruct.md").read_text()
    assert "conv5_3 map 303, share of |r| on the bicycle outside the dog 25.6%" in out
    assert "conv5_3 map 348, share of |r| on the bicycle outside the dog 62.6%" in out
    assert "| 303 (the dog's face) | 25.6 % |" in page and "| 348 | **62.6 %** |" in page
    assert "that area is 42.2% of the image" in out and "42.2 % of\nthe image" in page


@pytest.mark.slow
def test_make_figures_smoke_draws_every_figure_small(tmp_path):
    """Every figure command of make_figures.sh at 64 px into a folder of its own; figures/ is not touched."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "deconvviz").write_text(f'#!/bin/sh\nexec {sys.executable} -m deconvviz "$@"\n')
    (bin_dir / "deconvviz").chmod(0o755)
    before = {p.name: p.stat().st_mtime_ns for p in (ROOT / "figures").iterdir()}
    script("make_figures.sh", "--smoke", tmp_path / "out", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    committed = {p.stem for p in (ROOT / "figures").glob("*.png")}
    made = {p.stem for p in (tmp_path / "out").glob("*.png")}
    photos = {"scan-conv4_3-overview"} | {n for n in committed if n.startswith("site-")}  # need the photos
    assert made == committed - photos
    assert all((tmp_path / "out" / f"{n}.png.provenance.json").is_file() for n in made)
    assert {p.name: p.stat().st_mtime_ns for p in (ROOT / "figures").iterdir()} == before


@pytest.mark.slow
def test_site_screenshots_of_a_tiny_site(tmp_path):
    """A tiny scan's site, photographed in Chromium: the index and layer page at the viewport's size, the unit
    page whole (at least as tall)."""
    if not os.access(CHROMIUM, os.X_OK):  # a failure that says what to do, not a skip: CI must run it
        pytest.fail(f"no browser at {CHROMIUM}: run bash scripts/test.sh (it installs Debian's chromium)")
    import deconvviz
    from deconvviz.analysis.scan import scan_folder
    from deconvviz.site import scan_site

    script("make_crops.py", DEFAULT_IMAGE, "--count", 3, "--out", tmp_path / "photos")
    network = deconvviz.load_network("vgg11", "random", "cpu", verbose=False)
    options = dict(top=2, size=32, network=network, batch_size=4, workers=0, verbose=False)
    scan_folder(tmp_path / "photos", ["conv1_1"], tmp_path / "run", **options)
    scan_site(tmp_path / "run", tmp_path / "site", device="cpu", verbose=False)
    prefix = tmp_path / "shot"
    args = (tmp_path / "site", "conv1_1", 0, "--prefix", prefix, "--width", 800, "--height", 600)
    script("site_screenshots.py", *args, env={"CHROMIUM": CHROMIUM})
    sizes = {name: Image.open(f"{prefix}-{name}.png").size for name in ("index", "layer", "unit")}
    assert sizes["index"] == sizes["layer"] == (800, 600)
    assert sizes["unit"][0] == 800 and sizes["unit"][1] >= 600


@pytest.mark.slow
def test_bench_memory_reads_a_large_image_reduced_and_sizes_the_scan_state_to_the_images():
    """bench_memory.py at a small side (4000 px): the reduced decode peaks no higher than the full one, visualize
    on the large PNG peaks at most 2 decoded images above the built-in photo's run (issue 24, item 8: it was 7 at
    this side, 12 at 20000 px), and the scan with --top 100000 over five photos keeps a small state.pt (issue 19,
    items 11 and 12)."""
    out = script("bench_memory.py", "--side", 4000).stdout
    over = {}
    for line in out.splitlines():
        if " over the start)" in line:
            kind, how = line.split(":")[0].split()[0], line.split(":")[0].split()[-1]
            over[kind, how] = float(line.split("(")[1].split()[0])
    assert set(over) == {(k, h) for k in ("png", "jpg") for h in ("full", "reduced")}
    assert all(over[k, "reduced"] <= over[k, "full"] for k in ("png", "jpg"))
    ratio = float(out.split("(peak - that) / decoded = ")[1].split()[0])
    assert ratio <= 2, out
    state_kb = float(out.split("state.pt ")[1].split()[0])
    assert state_kb < 1024  # sized to 5 images, not to --top 100000 (1 GB before)
