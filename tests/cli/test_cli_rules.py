"""The command line's rules: --rule on every projecting command, compare and sanity."""

from __future__ import annotations

import csv
import json

import pytest

from deconvviz import Box, Deconvnet
from deconvviz.analysis.scan import scan_folder
from deconvviz.images import DEFAULT_IMAGE, load_image, to_batch
from deconvviz.networks.weights import load_vgg


@pytest.mark.parametrize(
    "args, message",
    [
        (["visualize", "--rule", "guidd"], "is not one of 'deconvnet', 'guided', 'gradient'"),
        (["scan", ".", "--rule", "x"], "is not one of 'deconvnet', 'guided', 'gradient'"),
        (["sanity", "--rules", "deconvnet,guidd"], "unknown rule 'guidd'; did you mean 'guided'? Valid: deconvnet"),
        (["sanity", "--rules", ","], "names no rule"),
        (["compare", "--layer", "conv5_4"], "unknown layer 'conv5_4'"),
        (["compare", "--layer", "fc7"], "needs a classifier"),
        (["sanity", "--out", "pair.png"], "cannot write 'pair.csv': it is a folder"),
        (["sanity", "--layer", "pool9"], "unknown layer 'pool9'"),
    ],
)
def test_bad_rules_and_outputs_are_one_line_exit_2_and_nothing_written(run, cwd, args, message):
    (cwd / "pair.csv").mkdir()
    before = {p: p.stat().st_mtime_ns for p in cwd.rglob("*")}
    r = run(*args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("deconvviz: error:")]
    assert len(lines) == 1 and message in lines[0], r.output
    assert "Traceback" not in r.output
    assert {p: p.stat().st_mtime_ns for p in cwd.rglob("*")} == before


def _model_and_input():
    model, w = load_vgg("vgg11", "random", device="cpu", verbose=False)
    return model, to_batch(load_image(DEFAULT_IMAGE), w.preprocess, 64)


@pytest.mark.parametrize("rule", ["guided", "gradient"])
def test_reconstruct_and_visualize_record_the_rule_and_project_with_it(run, small, cwd, rule):
    assert run("reconstruct", "--rule", rule, "--out", "r.png", "-q", *small).exit_code == 0
    prov = json.loads((cwd / "r.png.provenance.json").read_text())
    assert prov["rule"] == rule
    r = run("visualize", "--rule", rule, "--layer", "conv3_2", "--top", "2", "--out", "v.png", "-q", *small)
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "v.png.provenance.json").read_text())
    model, x = _model_and_input()
    out = Deconvnet(model, rule=rule).project(x, "conv3_2", top=2)
    assert prov["rule"] == rule and prov["layers"][0]["channels"] == out.selections.channels[0].tolist()


def test_compare_draws_every_rule(run, small, cwd):
    r = run("compare", "--layer", "conv4_1", "--top", "2", "--out", "c.png", *small)
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "c.png.provenance.json").read_text())
    assert prov["rules"] == ["deconvnet", "guided", "gradient"] and len(prov["layers"][0]["channels"]) == 2
    assert (cwd / "c.png").stat().st_size > 5000


def test_sanity_writes_figure_json_and_csv_with_the_same_numbers(run, small, cwd):
    r = run("sanity", "--layer", "conv3_2", "--rules", "deconvnet,gradient", "--out", "s.png", "-q", *small)
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "s.png.provenance.json").read_text())
    assert prov["rules"] == ["deconvnet", "gradient"] and prov["randomized"][0] == "conv3_2"
    assert (
        prov["randomized"][-1] == "conv1_1" and len(prov["randomized"]) == 4
    )  # vgg11: conv1_1, conv2_1, conv3_1, conv3_2
    rows = list(csv.DictReader((cwd / "s.csv").open()))
    assert len(rows) == 2 * (2 * 4 + 3)  # cascading, independent, specificity, recovery, fixed positions
    for row in rows:
        if row["test"] in ("cascading", "independent"):
            i = prov["randomized"].index(row["randomized"])
            want = prov["results"][row["rule"]][row["test"]][i]["spearman_abs"]
            assert (row["spearman_abs"] == "" and want is None) or float(row["spearman_abs"]) == pytest.approx(want)
    assert (cwd / "s.png").stat().st_size > 10_000


def test_scan_projects_with_its_rule_and_records_it(scan_matches_the_api, tmp_path):
    photos, args = scan_matches_the_api(rule="guided")
    with pytest.raises(Exception, match="other arguments|different"):
        scan_folder(photos, ["conv3_1"], tmp_path / "run", **args, rule="gradient")


def test_compare_chooses_by_region_and_every_rule_projects_the_same_activations(run, small, cwd):
    r = run("compare", "--layer", "conv4_1", "--region", "0,0,32,32", "--top", "2", "--out", "c.png", *small)
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "c.png.provenance.json").read_text())
    model, x = _model_and_input()
    want = Deconvnet(model).project(x, "conv4_1", top=2, region=Box.pixels(0, 0, 32, 32))
    assert prov["layers"][0]["channels"] == want.selections.channels[0].tolist()
    assert prov["layers"][0]["positions"] == want.selections.rows_cols[0].tolist()
