"""The command line's unpooling: --unpool on every projecting command, --rule linear, and `deconvviz ablate`."""

from __future__ import annotations

import csv
import json

import pytest

from deconvviz import Deconvnet
from deconvviz.images import DEFAULT_IMAGE, load_image, to_batch
from deconvviz.networks.weights import load_vgg


@pytest.mark.parametrize(
    "args, message",
    [
        (["visualize", "--unpool", "fixd"], "is not one of 'switches', 'nearest', 'bilinear', 'fixed'"),
        (["reconstruct", "--unpool", "centre"], "is not one of 'switches', 'nearest', 'bilinear', 'fixed'"),
        (["compare", "--unpool", "x"], "is not one of 'switches', 'nearest', 'bilinear', 'fixed'"),
        (["scan", ".", "--unpool", "x"], "is not one of 'switches', 'nearest', 'bilinear', 'fixed'"),
        (["visualize", "--rule", "lineer"], "is not one of 'deconvnet', 'guided', 'gradient', 'linear'"),
        (["ablate", "--layer", "pool9"], "unknown layer 'pool9'"),
        (["ablate", "--layer", "fc7"], "mixes all positions"),
        (["ablate", "--channel", "9999"], "channel"),
        (["ablate", "--out", "pair.png"], "cannot write 'pair.csv': it is a folder"),
        (["ablate", "missing.jpg"], "missing.jpg"),
    ],
)
def test_bad_unpooling_and_ablation_input_is_one_line_exit_2_and_nothing_written(run, cwd, args, message):
    (cwd / "pair.csv").mkdir()
    before = {p: p.stat().st_mtime_ns for p in cwd.rglob("*")}
    r = run(*args, "--weights", "torchvision") if args[0] == "ablate" and "fc7" in args else run(*args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("deconvviz: error:")]
    assert len(lines) == 1 and message in lines[0], r.output
    assert "Traceback" not in r.output
    assert {p: p.stat().st_mtime_ns for p in cwd.rglob("*")} == before


def _model_and_input():
    model, w = load_vgg("vgg11", "random", device="cpu", verbose=False)
    return model, to_batch(load_image(DEFAULT_IMAGE), w.preprocess, 64)


@pytest.mark.parametrize("unpool", ["nearest", "fixed"])
def test_visualize_reconstruct_compare_record_the_unpooling(run, small, cwd, unpool):
    r = run(
        "visualize",
        "--unpool",
        unpool,
        "--rule",
        "linear",
        "--layer",
        "conv3_2",
        "--channels",
        "3",
        "--out",
        "v.png",
        "-q",
        *small,
    )
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "v.png.provenance.json").read_text())
    assert prov["unpool"] == unpool and prov["rule"] == "linear"
    assert run("reconstruct", "--unpool", unpool, "--out", "r.png", "-q", *small).exit_code == 0
    assert json.loads((cwd / "r.png.provenance.json").read_text())["unpool"] == unpool
    assert (
        run("compare", "--unpool", unpool, "--layer", "conv3_2", "--top", "1", "--out", "c.png", "-q", *small).exit_code
        == 0
    )
    assert json.loads((cwd / "c.png.provenance.json").read_text())["unpool"] == unpool


def test_ablate_writes_figure_json_and_csv_with_the_same_numbers(run, small, cwd):
    r = run("ablate", "--layer", "conv3_2", "--out", "a.png", "-q", *small)
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "a.png.provenance.json").read_text())
    assert prov["command"] == "ablate" and prov["reference"] == "deconvnet+switches"
    assert [v["name"] for v in prov["variants"]][8:] == ["deconvnet+nearest", "deconvnet+bilinear"]
    assert prov["variants"][0]["reference"]["spearman_abs"] == pytest.approx(1.0)
    assert "/" not in json.dumps(prov["image"]["path"])
    rows = list(csv.DictReader((cwd / "a.csv").open()))
    assert len(rows) == 10 * 3
    for row in rows:
        v = next(v for v in prov["variants"] if v["name"] == row["variant"])
        want = v[row["against"]]["spearman_abs"]
        assert (row["spearman_abs"] == "" and want is None) or float(row["spearman_abs"]) == pytest.approx(
            want, abs=1e-6
        )
    model, x = _model_and_input()
    out = Deconvnet(model).project(x, "conv3_2", top=1)
    assert prov["channel"] == int(out.selections.channels[0, 0])
    assert (cwd / "a.png").stat().st_size > 20_000


def test_scan_projects_with_its_unpooling_and_records_it(scan_matches_the_api):
    scan_matches_the_api(unpool="bilinear")
