"""The dataset scan: running top-k against brute force, skipped files, kill -9 and resume, the torchrun merge."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from oracle import layer_activation, rel_err
from PIL import Image, ImageOps
from typer.testing import CliRunner

from deconvviz import Deconvnet
from deconvviz.analysis.scan import CRASH_AFTER_BATCH, TopK, load_result, scan_folder
from deconvviz.cli import app
from deconvviz.engine.layers import resolve
from deconvviz.errors import ImageError
from deconvviz.images import DEFAULT_IMAGE, to_batch
from deconvviz.networks.weights import load_vgg
from deconvviz.render import scan_figures

LAYERS, CHANNELS, SIZE, BATCH = ("conv3_1", "pool3"), (3, 17), 64, 16
OPTIONS = ["--layers", ",".join(LAYERS), "--channels", "3,17", "--model", "vgg11", "--weights", "random",
           "--size", SIZE, "--batch-size", BATCH]  # fmt: skip
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def photo_folder(root: Path, n: int = 200) -> Path:
    """n crops and flips of the built-in photo in five formats and several colour modes, a corrupt JPEG,
    a text file named .png (both in a subfolder) and a text file that is no image by its name."""
    rng, src = random.Random(0), Image.open(DEFAULT_IMAGE).convert("RGB")  # 448x448
    kinds = [("jpg", "RGB"), ("png", "L"), ("png", "P"), ("webp", "RGBA"), ("jpeg", "CMYK"), ("bmp", "RGB")]
    for i in range(n):
        w = rng.randint(64, 448)
        h = min(448, max(48, round(w * rng.uniform(0.7, 1.4))))
        left, top = rng.randint(0, 448 - w), rng.randint(0, 448 - h)
        img = src.crop((left, top, left + w, top + h))
        img = [img, ImageOps.mirror(img), ImageOps.flip(img)][i % 3]
        scale = rng.randint(64, 112) / min(img.size)  # small files: quick to read
        img = img.resize((round(img.width * scale), round(img.height * scale)))
        ext, mode = kinds[i % len(kinds)]
        path = root / f"set{i % 4}" / ("deep" if i % 5 == 0 else "") / f"img{i:03d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.convert(mode).save(path)
    (root / "set1" / "bad").mkdir()
    (root / "set1" / "bad" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (root / "set1" / "bad" / "notes.png").write_text("not an image\n")
    (root / "readme.txt").write_text("not an image by its name: not scanned\n")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def reference(random_vgg11, photos, tmp_path_factory) -> Path:
    """One uninterrupted single-process scan, in process, with the command's figures."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    scan_folder(
        photos,
        LAYERS,
        out,
        channels=CHANNELS,
        size=SIZE,
        network=random_vgg11,
        batch_size=BATCH,
        workers=2,
        verbose=False,
        draw=scan_figures,
    )
    return out


def files_of(rundir: Path) -> dict[str, bytes]:
    return {p.relative_to(rundir).as_posix(): p.read_bytes() for p in sorted(rundir.rglob("*")) if p.is_file()}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "deconvviz", "scan", *map(str, args)]


def test_running_top_k_merges_in_any_order_with_ties_to_the_earlier_image():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (7, 50), generator=gen).float()  # (C, images): many ties
    want = [sorted(range(50), key=lambda i: (-values[c, i], i))[:5] for c in range(7)]
    order = torch.randperm(50, generator=gen)
    top = TopK.empty(7, 5)
    for part in order.split(6):  # batches in a shuffled order, like shards arriving
        top = top.add(values[:, part].T[:, :, None, None], part)
    shards = [TopK.empty(7, 5).add(values[:, p].T[:, :, None], p) for p in order.split(17)]
    assert top.images.tolist() == want
    assert shards[0].merge(*shards[1:]).images.tolist() == want
    assert torch.equal(top.values, values.gather(1, torch.tensor(want)))


def test_top_9_of_every_channel_equals_brute_force_over_all_activations(photos, reference):
    model, weights = load_vgg("vgg11", "random", device="cpu", verbose=False)
    names = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*") if p.suffix in SUFFIXES)
    good, x = [], []
    for name in names:
        try:
            x.append(to_batch(photos / name, weights.preprocess, SIZE))
            good.append(name)
        except ImageError:
            pass
    assert len(good) == 200
    x, report = torch.cat(x), json.loads((reference / "report.json").read_text())
    steps = Deconvnet(model).steps
    for layer in LAYERS:
        module = resolve(model, steps, layer)
        upto = next(i for i, s in enumerate(steps) if s.name == module)
        act = layer_activation(model.features[: upto + 1], model.get_submodule(module), x)  # every activation
        peak, where = act.flatten(2).max(2)  # (images, C)
        channels = report["layers"][layer]["channels"]
        assert len(channels) == act.shape[1]
        exact = 0
        for c, records in channels.items():
            v = peak[:, int(c)].tolist()
            want = sorted(range(len(good)), key=lambda i: (-v[i], i))[:9]  # value desc, then file order
            got = [good.index(r["image"]) for r in records]
            assert [r["value"] for r in records] == pytest.approx([v[i] for i in want], rel=1e-5, abs=1e-6)
            for g, w, r in zip(got, want, records, strict=True):
                if g == w:
                    exact += 1
                    assert r["row"] * act.shape[-1] + r["col"] == where[w, int(c)]
                else:  # only a near-tie may be ordered differently by float rounding of another batching
                    assert abs(v[g] - v[w]) <= 1e-5 * abs(v[w]) + 1e-6
        assert exact >= 0.99 * 9 * act.shape[1]


def test_unreadable_files_are_skipped_counted_and_listed(reference):
    report = json.loads((reference / "report.json").read_text())
    assert report["images"] == {"found": 202, "read": 200, "skipped": 2}
    assert [s["path"] for s in report["skipped"]] == ["set1/bad/corrupt.jpg", "set1/bad/notes.png"]
    assert all("cannot read image" in s["reason"] for s in report["skipped"])


def test_result_from_python_holds_records_and_their_projections(photos, reference):
    result = load_result(reference)
    model, weights = load_vgg("vgg11", "random", device="cpu", verbose=False)
    dn = Deconvnet(model)
    assert set(result.layers) == set(LAYERS) and result.images == 202 and len(result.skipped) == 2
    for layer in LAYERS:
        assert result.layers[layer][0].projections is None  # recorded, not projected
        for c in CHANNELS:
            ch = result.layers[layer][c]
            assert len(ch.records) == 9 and ch.projections.shape == (9, 3, SIZE, SIZE)
            for j in (0, 8):
                rec = ch.records[j]
                out = dn.project(to_batch(photos / rec.image, weights.preprocess, SIZE), layer, channels=[c])
                assert rel_err(ch.projections[j], out.images[0, 0]) < 1e-5
                assert out.selections.rows_cols[0, 0].tolist() == [rec.row, rec.col]
                assert out.selections.values[0, 0].item() == pytest.approx(rec.value, rel=1e-5)
            png = (reference / layer / f"channel-{c}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        assert (reference / layer / "overview.png").stat().st_size > 20_000


def test_killed_scan_resumes_to_identical_files(photos, reference, tmp_path):
    out = tmp_path / "run"
    cmd = cli(photos, *OPTIONS, "--out", out, "--workers", 2, "--checkpoint-every", BATCH, "-q")
    crash = {**os.environ, CRASH_AFTER_BATCH: "5"}  # kill -9, by the scan itself, right after batch 5's checkpoint
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=crash)
    assert r.returncode == -signal.SIGKILL, r.stderr
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["batches"] == 5 and not (out / "report.json").exists()  # killed in the middle of the scan
    r = subprocess.run(cmd[:-1], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {5 * BATCH} of 202 images already scanned" in r.stderr
    assert files_of(out) == files_of(reference)  # results and checkpoint, byte for byte


def test_finished_run_is_not_redone_and_other_arguments_are_refused(random_vgg11, photos, reference):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    r = CliRunner().invoke(app, ["scan", *map(str, [photos, *OPTIONS, "--out", reference])])
    assert r.exit_code == 0 and "holds this finished scan; nothing to do" in r.output
    again = scan_folder(
        photos, LAYERS, reference, channels=CHANNELS, size=SIZE, network=random_vgg11, batch_size=BATCH, verbose=False
    )
    assert again.already_done and not again.written and again.layers[LAYERS[0]][3].projections.shape[0] == 9
    r = CliRunner().invoke(app, ["scan", *map(str, [photos, *OPTIONS, "--out", reference, "--top", 4])])
    lines = [line for line in r.output.splitlines() if line.startswith("deconvviz: error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "other arguments (top 9, now 4)" in lines[0], r.output
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


@pytest.mark.torchrun
def test_torchrun_two_processes_equal_one_process(photos, reference, tmp_path):
    """With the thread count of the reference (made in this process), every file is equal to the bit."""
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd = [
        *torchrun,
        *cli(photos)[1:],
        *map(str, OPTIONS),
        "--out",
        str(out),
        "--workers",
        "0",
        "--device",
        "cpu",
        "-q",
    ]
    threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # torchrun's own default is 1
    r = subprocess.run(cmd, capture_output=True, text=True, env=threads)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.glob("state-rank*.pt")) == ["state-rank0.pt", "state-rank1.pt"]
    got = {k: v for k, v in files_of(out).items() if not k.startswith("state")}
    assert got == {k: v for k, v in files_of(reference).items() if not k.startswith("state")}


def test_torchrun_on_a_resnet_equals_one_process(resnet_scans):
    """A network that is not a chain (torchvision resnet18, random weights; projections through autograd) under
    torchrun with two processes: the records equal to the bit, the projections to float rounding (README), and
    with the reference's thread count every file to the bit."""
    one, two = resnet_scans
    assert sorted(p.name for p in two.glob("state-rank*.pt")) == ["state-rank0.pt", "state-rank1.pt"]
    reports = [json.loads((d / "report.json").read_text()) for d in (one, two)]
    assert reports[0]["layers"] == reports[1]["layers"] and reports[0]["skipped"] == reports[1]["skipped"]
    a, b = load_result(one), load_result(two)
    assert list(a.layers) == ["layer1", "layer2"]
    for layer, channels in a.layers.items():
        drawn = {c: ch.projections for c, ch in channels.items() if ch.projections is not None}
        assert sorted(drawn) == [3, 5] and all(len(p) == 3 for p in drawn.values()), layer
        for c, p in drawn.items():
            assert rel_err(b.layers[layer][c].projections, p) <= 1e-6, (layer, c)
    got = {k: v for k, v in files_of(two).items() if not k.startswith("state")}  # with equal thread counts: bitwise
    assert got == {k: v for k, v in files_of(one).items() if not k.startswith("state")}


def test_projections_with_another_thread_count_agree_to_float_rounding(photos, reference):
    """CPU kernels round differently with other thread counts (torchrun sets OMP_NUM_THREADS=1): the README
    promises the same records and projections equal to float rounding then, not to the bit."""
    result, (model, weights) = load_result(reference), load_vgg("vgg11", "random", device="cpu", verbose=False)
    dn, threads = Deconvnet(model), torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        for layer, c in zip(LAYERS, CHANNELS, strict=True):
            ch = result.layers[layer][c]
            width = SIZE // {"conv3_1": 4, "pool3": 8}[layer]  # vgg11: two pools before conv3_1, three to pool3
            for rec, want in zip(ch.records, ch.projections, strict=True):
                x = to_batch(photos / rec.image, weights.preprocess, SIZE)
                got = dn.project(x, layer, channels=[c], positions=torch.tensor([[rec.row * width + rec.col]])).images[
                    0, 0
                ]
                assert rel_err(got, want) <= 1e-6
    finally:
        torch.set_num_threads(threads)


def test_bad_folder_is_one_line_exit_2(tmp_path):
    r = CliRunner().invoke(app, ["scan", str(tmp_path / "nope"), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "is not a folder" in r.output and not (tmp_path / "run").exists()
    r = CliRunner().invoke(app, ["scan", str(tmp_path), "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and "no images under" in r.output


def test_a_folder_with_nothing_readable_is_an_error_and_leaves_nothing(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (photos / "empty.png").touch()
    r = CliRunner().invoke(app, ["scan", str(photos), *map(str, OPTIONS), "--out", str(tmp_path / "run"), "-q"])
    lines = [line for line in r.output.splitlines() if line.startswith("deconvviz: error:")]
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert "none of the 2 image file(s)" in lines[0] and "corrupt.jpg" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_memory_refusal_counts_in_a_unit_that_shows_the_numbers():
    """The kept projections (maps x k x 3 x size x size x 4 bytes) against the budget, worked by hand: MiB under
    1 GiB (it said '0.0 GiB' there), GiB from 1 GiB; nothing is refused at the budget itself."""
    from deconvviz.analysis.scan import _check_memory
    from deconvviz.errors import DeconvvizError

    plan = {"conv": ((64, 8, 8), None)}  # 64 maps: each image kept costs 64 x 3 x 64 x 64 x 4 = 3 MiB at size 64
    with pytest.raises(DeconvvizError, match=r"about 6\.0 MiB of projections, more than the 1\.0 MiB allowed") as e:
        _check_memory(plan, "all", 2, 64, 2**20)
    assert e.value.about == "max_memory"
    with pytest.raises(DeconvvizError, match=r"about 1\.5 GiB of projections, more than the 1\.0 GiB allowed"):
        _check_memory(plan, "all", 512, 64, 2**30)
    _check_memory(plan, "all", 2, 64, 6 * 2**20)
    six = r"6 feature maps \(6 of conv\) x 2 images at size 64 keeps about 0\.6 MiB of projections, more than the 0\.5"
    with pytest.raises(DeconvvizError, match=six):  # 6 x 2 x 3 x 64 x 64 x 4 bytes = 0.5625 MiB
        _check_memory(plan, [1, 2, 3, 4, 5, 6], 2, 64, 2**19)
