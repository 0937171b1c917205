"""The command line on token and channels-last networks: a small torchvision ViT and Swin built by a factory."""

from __future__ import annotations

import json

import pytest
import torch

from deconvviz import load_image, load_network, to_batch
from deconvviz.images import DEFAULT_IMAGE

NETS = '''
"""A ViT with a 4x4 patch grid at 32 px and a Swin with 2x2 windows, small enough for the CLI tests."""
import torchvision


def vit():
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )


def swin():
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2]
    )
'''


RULE_TITLES = ["deconvnet", "guided", "gradient", "linear"]


@pytest.fixture()
def nets(tmp_path):
    path = tmp_path / "transformers.py"
    path.write_text(NETS)
    return str(path)


def _tokens(spec: str, layer: str) -> torch.Tensor:
    """The layer's raw output on the built-in photo at 32 px, from the same network the CLI builds (seed 0) and the
    same input (the file read as to_batch reads it: at 32 px, 448 px is read reduced by 3)."""
    net = load_network(spec, "random", "cpu", verbose=False)
    x = to_batch(DEFAULT_IMAGE, net.preprocess, 32)
    got = []
    handle = dict(net.module.named_modules())[layer].register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        net.module(x)
    handle.remove()
    return got[0][0]


def test_layers_shows_the_grid_the_fields_and_the_rules(run, nets):
    """Token layers: their maps on the patch grid, a patch's field before attention, the whole input after it;
    a Swin's channels-last blocks likewise."""
    r = run("layers", "--model", f"{nets}:vit", "--size", "32")
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.output.splitlines()[1:]}
    assert rows["conv_proj"].split()[2:5] == ["16x4x4", "8", "8"]  # a planes layer: no feature-map column
    assert rows["encoder.dropout"].split()[2:8] == ["17x16", "16x4x4", "tokens", "1+4x4", "(cls)", "8"]
    assert rows["encoder.layers.encoder_layer_1"].split()[2:9] == ["17x16", "16x4x4", "tokens", "1+4x4", "(cls)"] + [
        "all",
        "-",
    ]
    assert "exact" in rows["encoder.layers.encoder_layer_1"]  # the gradient rule's column
    r = run("layers", "--model", f"{nets}:swin", "--size", "32")
    assert r.exit_code == 0, r.output
    rows = {line.split()[0]: line for line in r.output.splitlines()[1:]}
    assert rows["features.0"].split()[2:6] == ["8x8x8", "8x8x8", "channels-last", "8x8"]


def test_layers_columns_fit_their_content_and_windows_have_no_stride(run, nets):
    """Every cell lies in its header's column, long types (ShiftedWindowAttention) and conventions (activation
    rule (GELU)) included; a field stride shows only where the fields step on a grid, '-' in Swin's windows, whose
    positions share a field (the probe's centres step 0, 0, ..., 8), never 0."""
    r = run("layers", "--model", f"{nets}:swin", "--size", "32")
    assert r.exit_code == 0, r.output
    head, *lines = r.stdout.splitlines()
    titles = ["name", "module", "type", "output shape", "feature maps", "rf size", "stride", *RULE_TITLES]
    starts = [head.index(t) for t in titles]
    cells = {}
    for line in lines:
        row = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        assert all(line[a - 2 : a].strip() == "" for a in starts[1:]), line  # the gutters stay blank
        cells[row[1]] = dict(zip(titles, row, strict=True))
    assert cells["features.1.0.attn"]["type"] == "ShiftedWindowAttention"
    assert cells["features.1.0.mlp.1"]["deconvnet"] == "activation rule (GELU)"
    assert cells["features.1.0.mlp.1"]["gradient"] == "exact"
    assert cells["features.0.0"]["stride"] == "4"  # the patch embedding: a grid of 4 px
    assert cells["features.1.0.norm1"]["stride"] == "4"  # before the first window attention: still the grid
    windowed = [c for m, c in cells.items() if m.startswith("features.1") and m != "features.1.0.norm1"]
    assert len(windowed) == 10 and all(c["stride"] == "-" for c in windowed)
    assert all(c["stride"] == "-" or float(c["stride"].split("x")[0]) > 0 for c in cells.values())


def test_visualize_and_reconstruct_select_on_the_patch_grid(run, nets, tmp_path):
    """The provenance records map c of the tokens on the grid, at the position read by hand from the raw tokens;
    --token cls projects the class token alone; reconstruct's stages are the patch embedding and each block."""
    spec, layer = f"{nets}:vit", "encoder.layers.encoder_layer_1"
    common = ["--model", spec, "--weights", "random", "--size", 32, "--rule", "gradient", "--device", "cpu", "-q"]
    r = run("visualize", "--layer", layer, "--channels", "3,5", *common, "--out", tmp_path / "v.png")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "v.png.provenance.json").read_text())["layers"][0]
    tokens = _tokens(spec, layer)
    want = [divmod(int(tokens[1:, c].argmax()), 4) for c in (3, 5)]
    assert rec["channels"] == [3, 5] and rec["positions"] == [list(p) for p in want]
    assert rec["feature_maps"]["layout"] == "tokens" and rec["feature_maps"]["prefix_tokens"] == ["cls"]
    assert rec["values"] == pytest.approx([float(tokens[1:, c].max()) for c in (3, 5)], rel=1e-5)
    r = run("visualize", "--layer", layer, "--channels", "3", "--token", "cls", *common, "--out", tmp_path / "t.png")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "t.png.provenance.json").read_text())["layers"][0]
    assert rec["token"] == "cls" and "positions" not in rec and rec["values"] == pytest.approx([float(tokens[0, 3])])
    r = run("reconstruct", "--layer", layer, "--channels", "3", *common, "--out", tmp_path / "r.png")
    assert r.exit_code == 0, r.output
    stages = json.loads((tmp_path / "r.png.provenance.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["encoder.layers.encoder_layer_0", "conv_proj", "input"]
    assert [s["size"] for s in stages] == [[4, 4], [4, 4], [32, 32]]


def test_a_token_where_there_is_none_and_a_fixed_size_vit_say_so_in_one_line(run, nets):
    common = ["--model", f"{nets}:vit", "--weights", "random", "--rule", "gradient", "--device", "cpu", "-q"]
    r = run("visualize", "--layer", "conv_proj", "--token", "cls", "--size", 32, *common)
    assert r.exit_code == 2 and "--token" in r.output and "has none" in r.output and "Traceback" not in r.output
    r = run("visualize", "--layer", "encoder", "--size", 64, *common)
    assert r.exit_code == 2 and "--size" in r.output and "Expected 32 but got 64" in r.output


def test_scan_records_tokens_on_the_patch_grid(run, nets, tmp_path):
    """A scan of a ViT's patch embedding output (tokens, before attention): each map's strongest image and
    position are those read by hand from the raw tokens, and its box is that patch (8x8 px)."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    src = Image.open(DEFAULT_IMAGE).convert("RGB")
    for i, (left, top, side) in enumerate([(0, 0, 300), (100, 50, 250), (148, 148, 300)]):
        src.crop((left, top, left + side, top + side)).resize((40, 40)).save(photos / f"img{i}.jpg")
    spec, layer = f"{nets}:vit", "encoder.dropout"
    args = ["--model", spec, "--weights", "random", "--size", 32, "--layers", layer, "--channels", "3", "--top", 1]
    r = run(
        "scan", photos, *args, "--rule", "gradient", "--workers", 0, "--device", "cpu", "--out", tmp_path / "s", "-q"
    )
    assert r.exit_code == 0, r.output
    records = json.loads((tmp_path / "s" / "report.json").read_text())["layers"][layer]["channels"]
    net = load_network(spec, "random", "cpu", verbose=False)
    got = []
    handle = dict(net.module.named_modules())[layer].register_forward_hook(lambda m, i, o: got.append(o[0, 1:]))
    with torch.no_grad():
        for i in range(3):
            net.module(to_batch(load_image(photos / f"img{i}.jpg"), net.preprocess, 32))
    handle.remove()
    for c in (3, 7):
        peaks = torch.stack([t[:, c] for t in got])  # (images, 16 grid positions)
        image, pos = divmod(int(peaks.flatten().argmax()), 16)
        row, col = divmod(pos, 4)
        want = {"image": f"img{image}.jpg", "row": row, "col": col, "box": [8 * row, 8 * row + 8, 8 * col, 8 * col + 8]}
        assert {k: records[str(c)][0][k] for k in want} == want
        assert records[str(c)][0]["value"] == pytest.approx(float(peaks.max()), rel=1e-5)


def test_explore_reads_token_layers_on_the_grid(run, nets, tmp_path):
    """explore's default layers of a ViT are its patch embedding and blocks (their maps on the grid); a token
    layer's page lists units at grid positions."""
    from deconvviz import Deconvnet
    from deconvviz.site._explore_site import _explore_layers

    net = load_network(f"{nets}:vit", "random", "cpu", verbose=False)
    assert _explore_layers(Deconvnet(net.module), 32) == [
        "conv_proj",
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1",
        "encoder",
    ]
    args = ["--model", f"{nets}:vit", "--weights", "random", "--size", 32, "--device", "cpu", "-q", "--top", 3]
    r = run("explore", *args, "--layers", "encoder.dropout", "--out", tmp_path / "ex")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "ex" / "encoder.dropout" / "index.html").read_text()
    tokens = _tokens(f"{nets}:vit", "encoder.dropout")[1:]  # (16 grid positions, 16 features)
    for c in tokens.amax(0).argsort(descending=True)[:3].tolist():
        assert f'data-channel="{c}"' in page
