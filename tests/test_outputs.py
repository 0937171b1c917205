"""Nothing of the user's is lost: owned output folders, one writer at a time, build then swap, provenance
names, checked input files and bounded resources (issue 19). Every case compares a listing of the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deconvviz import outputs
from deconvviz.errors import DeconvvizError
from deconvviz.images import DEFAULT_IMAGE, load_image, to_batch
from deconvviz.preprocess import IMAGENET_TORCHVISION

BASE = ["--model", "vgg11", "--weights", "random", "--size", "32"]
QUICK = ["--workers", "0", "--device", "cpu", "-q"]
SCAN = [*BASE, "--layer", "conv1_1", "--top", "2", *QUICK]


def listing(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root` (dotfiles included): a file by its bytes, a link by its target, a folder by '/'."""
    found = {}
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = Path(top) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                found[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                found[rel] = "/"
            elif p.is_file():
                found[rel] = p.read_bytes()
            else:
                found[rel] = "special"
    return found


def error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("deconvviz: error: "), result.output
    return lines[0]


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    src = Image.open(DEFAULT_IMAGE).convert("RGB")
    for i, box in enumerate([(0, 0, 300, 300), (100, 50, 350, 300), (148, 148, 448, 448)]):
        src.crop(box).resize((40, 40)).save(folder / f"img{i}.jpg")
    return folder


def test_scan_writes_only_into_a_new_empty_or_own_folder_and_never_touches_dotfiles(run, photos, tmp_path):
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    (proj / "notes.txt").write_text("mine")
    (proj / ".env").write_text("SECRET=1")
    (proj / "sub" / ".keep").write_text("")
    before = listing(tmp_path)
    assert "holds no deconvviz scan" in error_line(run("scan", photos, *SCAN, "--out", proj))
    assert listing(tmp_path) == before  # notes.txt, .env and sub/.keep as they were; nothing new anywhere

    (proj / "report.json").write_text('{"mine": true}')  # a report of the user's own: refused, not a KeyError
    assert "holds no deconvviz scan" in error_line(run("scan", photos, *SCAN, "--out", proj))

    run_dir = tmp_path / "run"
    assert run("scan", photos, *SCAN, "--out", run_dir).exit_code == 0
    assert (run_dir / outputs.SCAN_MARKER).is_file() and (run_dir / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "proj", "run"]  # no lock, no temporaries left
    (run_dir / ".env").write_text("put there by the user")
    assert "which deconvviz did not write" in error_line(run("scan", photos, *SCAN, "--out", run_dir))
    assert (run_dir / ".env").read_text() == "put there by the user"


def test_a_second_writer_is_refused_in_one_line_while_the_first_holds_the_lock(run, photos, tmp_path):
    out = tmp_path / "run"
    hold = (
        "import sys\nfrom deconvviz.outputs import locked\nwith locked(sys.argv[1]):\n    print('held', flush=True)\n"
    )
    hold += "    sys.stdin.read()\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, out], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "held\n"
        line = error_line(run("scan", photos, *SCAN, "--out", out))
        assert f"is being written by pid {holder.pid}" in line and "give another folder" in line
        assert not out.exists()
        line = error_line(run("explore", "--model", "vgg11", "--weights", "random", "--size", "32", "--out", out))
        assert f"pid {holder.pid}" in line
    finally:
        holder.stdin.close()
        holder.wait()
    assert run("scan", photos, *SCAN, "--out", out).exit_code == 0  # released with the process
    assert json.loads((out / "report.json").read_text())["images"]["read"] == 3


def test_a_kill_9_leaves_no_stale_lock(photos, tmp_path):
    out = tmp_path / "run"
    hold = (
        "import sys\nfrom deconvviz.outputs import locked\nlocked(sys.argv[1]).acquire()\nprint('held', flush=True)\n"
    )
    hold += "sys.stdin.read()\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, out], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    assert (tmp_path / ".run.deconvviz-lock").is_file()  # the file stays; the kernel dropped its lock
    with outputs.locked(out):
        pass
    assert not (tmp_path / ".run.deconvviz-lock").exists()


def test_provenance_never_lands_on_the_images_regions_file(run, tmp_path):
    photo = tmp_path / "side.jpg"
    Image.open(DEFAULT_IMAGE).save(photo)
    regions = tmp_path / "side.jpg.json"  # the image's own named boxes (--region NAME reads them)
    regions.write_text(json.dumps({"head": [10, 10, 200, 200]}))
    small = ["--model", "vgg11", "--weights", "random", "--size", "64", "--top", "2", "-q"]
    r = run("visualize", photo, *small, "--out", f"{photo}.png")
    assert r.exit_code == 0, r.output
    assert json.loads(regions.read_text()) == {"head": [10, 10, 200, 200]}
    prov = json.loads((tmp_path / "side.jpg.png.provenance.json").read_text())
    assert prov["figure"] == "side.jpg.png" and prov["command"] == "visualize"
    assert run("visualize", photo, *small, "--region", "head", "--out", f"{photo}.png").exit_code == 0  # again

    mine = tmp_path / "notes.png.provenance.json"
    mine.write_text("my notes")
    before = listing(tmp_path)
    line = error_line(run("visualize", photo, *small, "--out", tmp_path / "notes.png"))
    assert "notes.png.provenance.json' exists and was not written by deconvviz" in line and "--out" in line
    (tmp_path / "unit.csv").write_text("my table")  # sanity writes NAME.csv beside its figure
    line = error_line(run("sanity", photo, *small[:-3], "--out", tmp_path / "unit.png"))
    assert "unit.csv' exists and was not written by deconvviz" in line
    assert listing(tmp_path) == {**before, "unit.csv": b"my table"}


def test_each_format_of_a_figure_has_its_own_provenance(run, tmp_path, residual_factory):
    """out.png, then out.pdf, then out.png again: all written, every file kept, each record naming its own file;
    sanity's table (NAME.csv) is shared by its formats."""
    small = ["--model", residual_factory, "--weights", "random", "--size", "32", "-q"]
    for name in ("out.png", "out.pdf", "out.png"):
        assert run("visualize", *small, "--top", "2", "--out", tmp_path / name).exit_code == 0, name
    for name in ("unit.png", "unit.svg"):
        assert run("sanity", *small, "--out", tmp_path / name).exit_code == 0, name
    files = {k: v for k, v in listing(tmp_path).items() if not k.endswith(".py")}
    formats = [("out", "png"), ("out", "pdf"), ("unit", "png"), ("unit", "svg")]
    made = [f"{stem}.{ext}{tail}" for stem, ext in formats for tail in ("", ".provenance.json")]
    assert sorted(files) == sorted([*made, "unit.csv"])
    for stem, ext in formats:
        prov = json.loads(files[f"{stem}.{ext}.provenance.json"])
        assert prov["figure"] == f"{stem}.{ext}" and prov["command"] == {"out": "visualize", "unit": "sanity"}[stem]
    assert files["out.pdf"].startswith(b"%PDF") and files["out.png"].startswith(b"\x89PNG")


def test_an_old_named_record_is_still_deconvviz_own(run, tmp_path, residual_factory):
    """A figure written by an earlier version has NAME.provenance.json beside it: a run over it is not refused,
    replaces that record by NAME.EXT.provenance.json, and keeps the old record of another format."""
    small = ["--model", residual_factory, "--weights", "random", "--size", "32", "-q"]
    assert run("sanity", *small, "--out", tmp_path / "unit.png").exit_code == 0
    (tmp_path / "unit.png.provenance.json").rename(tmp_path / "unit.provenance.json")  # as earlier versions named it
    assert run("sanity", *small, "--out", tmp_path / "unit.pdf").exit_code == 0  # unit.csv: deconvviz's own
    assert json.loads((tmp_path / "unit.provenance.json").read_text())["figure"] == "unit.png"  # still unit.png's
    assert run("visualize", *small, "--top", "2", "--out", tmp_path / "unit.png").exit_code == 0
    names = ("csv", "pdf", "pdf.provenance.json", "png", "png.provenance.json")
    assert sorted(p.name for p in tmp_path.glob("unit*")) == [f"unit.{n}" for n in names]

    (tmp_path / "notes.provenance.json").write_text("my notes")  # not deconvviz's: never touched
    (tmp_path / "notes.csv").write_text("my table")
    line = error_line(run("sanity", *small, "--out", tmp_path / "notes.png"))
    assert "notes.csv' exists and was not written by deconvviz" in line
    assert run("visualize", *small, "--top", "2", "--out", tmp_path / "notes.png").exit_code == 0
    assert (tmp_path / "notes.provenance.json").read_text() == "my notes"
    assert (tmp_path / "notes.csv").read_text() == "my table"


def _scan_site(run, photos: Path, tmp_path: Path, layer: str) -> Path:
    out = tmp_path / f"scan-{layer}"
    options = [*BASE, "--layer", layer, "--top", "2", *QUICK]
    assert run("scan", photos, *options, "--out", out).exit_code == 0
    return out


KILLED_SITE = """
import os, signal, sys
from deconvviz.site import scan_site
from deconvviz.site._common import _SiteFolder
calls = []
real = _SiteFolder.page
def page(self, rel, text):
    calls.append(rel)
    if len(calls) == int(sys.argv[3]):
        os.kill(os.getpid(), getattr(signal, sys.argv[4]))
    real(self, rel, text)
_SiteFolder.page = page
scan_site(sys.argv[1], sys.argv[2], device="cpu", verbose=False)
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_an_interrupted_rebuild_leaves_the_old_site_whole_and_a_rerun_the_new(run, photos, tmp_path, how):
    first, second = (_scan_site(run, photos, tmp_path, layer) for layer in ("conv1_1", "conv2_1"))
    out = tmp_path / "site"
    assert run("site", first, "--out", out, "--device", "cpu", "-q").exit_code == 0
    old = listing(out)
    r = subprocess.run([sys.executable, "-c", KILLED_SITE, second, out, "20", how], capture_output=True, text=True)
    assert r.returncode != 0
    assert listing(out) == old  # not one file of the new site, not one of the old changed
    assert run("site", second, "--out", out, "--device", "cpu", "-q").exit_code == 0
    new = listing(out)
    marker = json.loads(new.pop(outputs.SITE_MARKER))
    assert set(marker["files"]) == {k for k, v in new.items() if v != "/"}  # only the new site's files
    assert any(k.startswith("conv2_1/") for k in new) and not any(k.startswith("conv1_1/") for k in new)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "scan-conv1_1", "scan-conv2_1", "site"]


def test_a_failed_write_leaves_the_previous_result_whole_and_no_new_folder(run, photos, tmp_path, monkeypatch):
    from deconvviz.render import scan

    out = tmp_path / "run"
    assert run("scan", photos, *SCAN, "--out", out).exit_code == 0
    finished = listing(out)
    (out / "report.json").unlink()  # unfinished again: the next run draws everything anew, from its checkpoint
    old = listing(out)
    calls, real = [], scan._save

    def full_disk(sheet, path):
        calls.append(path)
        if len(calls) == 3:
            raise DeconvvizError(f"cannot write '{path}': No space left on device; choose another path")
        return real(sheet, path)

    monkeypatch.setattr(scan, "_save", full_disk)
    other = [*BASE, "--layer", "conv1_1", "--top", "3", *QUICK]  # other arguments: a folder of its own
    assert "No space left" in error_line(run("scan", photos, *other, "--out", tmp_path / "new" / "run"))
    assert not (tmp_path / "new").exists()  # an error (not an interruption) leaves nothing of a first run
    calls.clear()
    assert "No space left" in error_line(run("scan", photos, *SCAN, "--out", out))
    assert listing(out) == old  # two figures of the new result were written, beside it: none is here
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "run"]
    monkeypatch.undo()
    assert run("scan", photos, *SCAN, "--out", out).exit_code == 0
    assert listing(out) == finished


def test_irregular_files_are_skipped_and_listed_and_names_in_any_encoding_read(run, photos, tmp_path):
    (photos / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(photos / "pipe.jpg")  # opened, it would wait for a writer forever
    latin = os.fsdecode("caf\xe9.jpg".encode("latin-1"))  # not UTF-8: a surrogate in Python's str
    Image.open(photos / "img0.jpg").save(photos / latin, format="JPEG")
    out = tmp_path / "run"
    r = run("scan", photos, *SCAN, "--out", out)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == {"found": 6, "read": 4, "skipped": 2}
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert "dangling link" in reasons["gone.jpg"] and "named pipe" in reasons["pipe.jpg"]
    line = error_line(run("visualize", photos / "pipe.jpg", "--model", "vgg11", "--weights", "random"))
    assert "named pipe" in line
    r = run("site", out, "--out", tmp_path / "site", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output


def test_a_scan_does_not_read_its_own_output_inside_the_scanned_folder(run, photos):
    assert run("scan", photos, *SCAN, "--out", photos / "run").exit_code == 0
    assert run("scan", photos, *SCAN, "--out", photos / "run2").exit_code == 0
    for name in ("run", "run2"):
        assert json.loads((photos / name / "report.json").read_text())["images"]["found"] == 3


def test_a_foreign_or_garbage_checkpoint_is_one_line_and_a_choice(run, photos, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / outputs.SCAN_MARKER).write_text(json.dumps({"deconvviz": "x", "kind": "scan", "files": []}))
    for content in ({"top": [1, 2]}, {"arguments": {}, "top": 3}):
        torch.save(content, out / "state.pt")
        line = error_line(run("scan", photos, *SCAN, "--out", out))
        assert "not a checkpoint of deconvviz scan" in line or "other arguments" in line, line
    (out / "state.pt").write_bytes(b"garbage, not a torch file")
    line = error_line(run("scan", photos, *SCAN, "--out", out))
    assert "not a checkpoint of deconvviz scan; delete it to scan again, or give another" in line
    assert "weights_only" not in line


def test_arguments_are_checked_before_the_network_loads_and_nothing_is_created(run, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("not a jpeg")
    (tmp_path / "junk" / "b.png").write_bytes(b"")
    small = [*BASE, "--workers", "0"]  # the default --out: runs/scan-LAYER
    cases = [
        ([photos, "--top", "0"], "--top: top must be at least 1"),
        ([photos, "--batch-size", "0"], "--batch-size: batch size must be at least 1"),
        ([tmp_path / "empty"], "no images under"),
        ([tmp_path / "junk"], "none of the 2 image file(s)"),
    ]
    before = listing(tmp_path)
    for args, message in cases:
        r = run("scan", *args, *small)
        assert message in error_line(r), r.output  # one line: no weights notice first
        assert listing(tmp_path) == before, args  # no runs/ folder


def test_a_factory_that_exits_is_one_line(run, tmp_path):
    (tmp_path / "quits.py").write_text("import sys\n\n\ndef build():\n    sys.exit(3)\n")
    line = error_line(run("layers", "--model", f"{tmp_path / 'quits.py'}:build"))
    assert "the factory raised SystemExit" in line


def test_a_builtin_is_no_factory_and_is_never_called():
    """os:fork would fork: parent and child would each print a line. It is refused before the call: one line."""
    r = subprocess.run(
        [sys.executable, "-m", "deconvviz", "layers", "--model", "os:fork"], capture_output=True, text=True
    )
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert "'fork' is a built-in function, not a Python function or class" in lines[0] and "--model" in lines[0]


def test_top_is_capped_at_the_number_of_images(run, photos, tmp_path):
    out = tmp_path / "run"
    assert run("scan", photos, *BASE, "--layer", "conv1_1", "--top", "100000", *QUICK, "--out", out).exit_code == 0
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["top"]["conv1_1"]["values"].shape == (64, 3)  # 64 maps, 3 images (not 100000 slots)


def test_channels_all_above_the_memory_budget_is_refused_before_it_runs(run, photos, tmp_path):
    out = tmp_path / "run"
    line = error_line(run("scan", photos, *SCAN, "--channels", "all", "--max-memory", "0.0001", "--out", out))
    # 64 maps x 2 images x 3 x 32 x 32 x 4 bytes = 1.5 MiB, above 0.0001 GiB (0.1 MiB)
    assert "--max-memory" in line and "64 feature maps" in line and not out.exists()
    assert run("scan", photos, *SCAN, "--channels", "all", "--out", out).exit_code == 0


def test_a_large_image_is_decoded_at_reduced_size_without_a_bomb_warning(tmp_path, monkeypatch):
    big = Image.open(DEFAULT_IMAGE).convert("RGB").resize((2400, 1800))
    big.save(tmp_path / "big.jpg", quality=95)
    big.save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3_000_000)  # 4.3 MP warns (and is under twice: no error)
    for name in ("big.jpg", "big.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            reduced = load_image(tmp_path / name, fit=64)
            x = to_batch(tmp_path / name, IMAGENET_TORCHVISION, 64)
        assert 4 * 64 <= min(reduced.size) < 8 * 64 and reduced.size[0] > reduced.size[1], (name, reduced.size)
        # independent: the whole image decoded, then resized to 64 by PIL's own antialiased bicubic
        full = big if name.endswith(".png") else _decoded(tmp_path / name)
        want = np.asarray(full.resize((85, 64), Image.Resampling.BICUBIC).crop((10, 0, 74, 64)), dtype=np.float32)
        got = IMAGENET_TORCHVISION.to_rgb(x[0]).permute(1, 2, 0).numpy() * 255
        assert abs(got - want).mean() < 3, name


def test_a_figure_reads_a_large_image_as_to_batch_does(run, tmp_path):
    """visualize reads a 3000x2000 PNG reduced, as scan and to_batch do (no full-size copy for its panels): its
    recorded values are the API's on to_batch(path)."""
    from deconvviz import Deconvnet, load_network

    path = tmp_path / "big.png"
    Image.open(DEFAULT_IMAGE).convert("RGB").resize((3000, 2000)).save(path, compress_level=1)
    small = ["--model", "vgg11", "--weights", "random", "--size", "64", "--layer", "conv3_1", "--top", "3", "-q"]
    assert run("visualize", path, *small, "--out", tmp_path / "v.png").exit_code == 0
    rec = json.loads((tmp_path / "v.png.provenance.json").read_text())["layers"][0]
    net = load_network("vgg11", "random", "cpu", verbose=False)
    out = Deconvnet(net.module).project(to_batch(path, net.preprocess, 64), "conv3_1", top=3)
    assert rec["channels"] == out.selections.channels[0].tolist()
    assert rec["values"] == pytest.approx(out.selections.values[0].tolist(), rel=1e-6)


def _decoded(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path).convert("RGB")


def test_a_figure_too_large_for_its_dpi_is_refused_naming_dpi(run, tmp_path):
    import matplotlib.pyplot as plt

    from deconvviz.render.draw import MAX_PIXELS, save

    fig = plt.figure(figsize=(20, 12))
    with pytest.raises(DeconvvizError, match=r"dpi 1200, more than 200 million; use dpi 912 or less") as e:
        save(fig, tmp_path / "f.png", dpi=1200)
    assert e.value.about == "dpi" and not list(tmp_path.iterdir()) and 20 * 12 * 912**2 <= MAX_PIXELS


CARD = """name = "mine"
architecture = "vgg11"
summary = "my net"
loader = "file"
classifier = true
categories = "none"
licence = "mine"
[file]
name = "NAME"
sha256 = "%s"
[preprocess]
name = "mine"
channels = "RGB"
scale = 1.0
mean = [0.5, 0.5, 0.5]
std = [0.2, 0.2, 0.2]
""" % ("0" * 64)


def test_a_cards_file_must_lie_beside_the_card_and_is_refused_before_it_is_read(run, tmp_path, monkeypatch):
    (tmp_path / "secret").write_bytes(b"not for deconvviz")
    card = tmp_path / "cards" / "mine.toml"
    card.parent.mkdir()
    opened = []
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: opened.append(self) or real(self))
    for name in ("../secret", str(tmp_path / "secret"), "sub/w.pt", ".."):
        card.write_text(CARD.replace("NAME", name))
        line = error_line(run("layers", "--weights", card))
        assert f"file.name '{name}' must be a file name beside the card" in line, line
    assert not [p for p in opened if p.name == "secret"]
