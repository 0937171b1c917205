"""Every command on transformers models built from small configs (hf:TYPE:overrides, random weights) and on a
folder save_pretrained wrote: one command per family, all commands across them; the figures' provenance names
the layout, the prefix tokens and the image processor; bad hf: specs are one line and exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from deconvviz.images import DEFAULT_IMAGE, load_image, to_batch
from deconvviz.networks.network import load_network

pytest.importorskip("transformers")

BASE = "image_size=32,patch_size=8,num_hidden_layers=2,hidden_size=32,num_attention_heads=2"
TINY = f"{BASE},intermediate_size=64"
SPECS = {
    "vit": f"hf:vit:{TINY}",
    "deit": f"hf:deit:{TINY}",
    "beit": f"hf:beit:{TINY},use_relative_position_bias=true",
    "dinov2": f"hf:dinov2:{BASE},mlp_ratio=2",
    "dinov2_with_registers": f"hf:dinov2_with_registers:{BASE},mlp_ratio=2,num_register_tokens=2",
    "swin": "hf:swin:image_size=32,patch_size=4,embed_dim=16,depths=[1,2],num_heads=[1,2],window_size=4",
    "convnext": "hf:convnext:hidden_sizes=[8,16],depths=[1,1],num_stages=2",
    "resnet": "hf:resnet:embedding_size=8,hidden_sizes=[8,16],depths=[1,1],layer_type=basic",
    "segformer": "hf:segformer:num_encoder_blocks=2,depths=[1,1],sr_ratios=[2,1],hidden_sizes=[16,32],"
    "num_attention_heads=[1,2],patch_sizes=[7,3],strides=[4,2],decoder_hidden_size=16",
}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def common(family: str) -> list:
    return ["--model", SPECS[family], "--weights", "random", "--size", 32, "--device", "cpu"]


def raw_tokens(spec: str, layer: str) -> torch.Tensor:
    """The layer's raw output (its first tensor) for the built-in photo, read with a plain hook: (T, C)."""
    net = load_network(spec, "random", "cpu", verbose=False)
    got = []
    module = net.module.get_submodule(layer)
    handle = module.register_forward_hook(lambda m, i, o: got.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        net.module(to_batch(load_image(DEFAULT_IMAGE), net.preprocess, 32))
    handle.remove()
    return got[0][0]


def test_visualize_hf_vit_records_the_tokens_layout_and_reads_the_maps_on_the_grid(run, cwd):
    """The positions chosen for maps 1 and 2 are the strongest of tokens[1:, c] read by hand on the 4x4 grid; the
    provenance names the layout, the class token and the image processor."""
    layer = "vit.layers.1"
    r = run("visualize", *common("vit"), "--layer", layer, "--channels", "1,2", "--out", "v.png")
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "v.png.provenance.json").read_text())
    rec = prov["layers"][0]
    assert rec["feature_maps"]["layout"] == "tokens" and rec["feature_maps"]["prefix_tokens"] == ["cls"]
    assert rec["feature_maps"]["shape"] == [32, 4, 4]
    tokens = raw_tokens(SPECS["vit"], layer)[1:]
    assert rec["positions"] == [list(divmod(int(tokens[:, c].argmax()), 4)) for c in (1, 2)]
    assert prov["weights"]["image_processor"].startswith("ViTImageProcessor")
    assert prov["weights"]["model_class"] == "AutoModelForImageClassification -> ViTForImageClassification"
    assert prov["network"]["spec"] == SPECS["vit"]


def test_a_save_pretrained_folder_loads_offline_with_its_processor_and_labels(run, cwd):
    """hf:PATH: the folder's weights (the same numbers), its preprocessor_config.json's mean and std, its
    config.id2label as categories; the provenance names the folder by its path in the working folder."""
    from transformers import ViTImageProcessor

    net = load_network(SPECS["vit"], "random", "cpu", verbose=False)
    net.module.config.id2label = {0: "cat", 1: "dog"}
    net.module.config.label2id = {"cat": 0, "dog": 1}
    net.module.save_pretrained(cwd / "saved")
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4]
    ).save_pretrained(cwd / "saved")
    again = load_network("hf:saved", "auto", "cpu", verbose=False)
    before, after = net.module.state_dict(), again.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert again.preprocess.mean == (0.4, 0.5, 0.6) and again.preprocess.std == (0.2, 0.3, 0.4)
    assert again.categories == ("cat", "dog")
    r = run(
        "visualize", "--model", "hf:saved", "--size", 32, "--layer", "vit.layers.0", "--channels", 3, "--out", "f.png"
    )
    assert r.exit_code == 0, r.output
    prov = json.loads((cwd / "f.png.provenance.json").read_text())
    assert prov["network"]["spec"] == "hf:saved" and prov["weights"]["categories"] == ["cat", "dog"]
    assert prov["weights"]["size"] == {"height": 32, "width": 32} and prov["weights"]["mean"] == [0.4, 0.5, 0.6]
    assert prov["layers"][0]["feature_maps"]["prefix_tokens"] == ["cls"]


@pytest.mark.parametrize(
    ("family", "command", "args", "prefix"),
    [
        ("deit", "reconstruct", ["--layer", "deit.layers.1", "--channels", 4, "--mode", "map", "--rule", "guided"], 2),
        ("beit", "compare", ["--layer", "beit.layers.1", "--channels", "2,5"], 1),
        ("dinov2_with_registers", "reconstruct", ["--layer", "dinov2_with_registers.encoder.layer.1"], 3),
        (
            "swin",
            "visualize",
            ["--layer", "swin.encoder.layers.1.blocks.1", "--channels", "1,2", "--rule", "linear"],
            0,
        ),
        ("segformer", "visualize", ["--layer", "segformer.stages.0.blocks.0", "--channels", 1], 0),
        ("convnext", "reconstruct", ["--layer", "convnext.encoder.stages.1.layers.0.act", "--channels", 7], None),
    ],
)
def test_figure_commands_on_each_family(run, cwd, family, command, args, prefix):
    """Each family's figure: exit 0, a PNG, the layout recorded (tokens with the model's prefix tokens, or
    channels-last for ConvNeXt's MLP)."""
    r = run(command, *common(family), *args, "--out", "fig.png")
    assert r.exit_code == 0, r.output
    assert (cwd / "fig.png").stat().st_size > 0
    maps = json.loads((cwd / "fig.png.provenance.json").read_text())["layers"][0]["feature_maps"]
    if prefix is None:
        assert maps["layout"] == "channels-last"
    else:
        assert maps["layout"] == "tokens" and len(maps.get("prefix_tokens", [])) == prefix


@pytest.mark.parametrize(
    ("family", "command", "layer", "extra"),
    [
        ("dinov2", "occlusion", "dinov2.encoder.layer.1", ["--occluder-size", 8, "--stride", 8]),
        ("resnet", "sanity", "resnet.encoder.stages.1", []),
        ("dinov2", "sanity", "dinov2.encoder.layer.1", []),
    ],
)
def test_occlusion_on_dinov2_and_sanity_on_resnet_and_dinov2(run, cwd, family, command, layer, extra):
    """(sanity re-initializes each layer by its reset_parameters(), else by the model's own _init_weights(module):
    transformers' embeddings drawn anew, layer scales back to their initial value.)"""
    r = run(command, *common(family), "--layer", layer, "--channel", 3, *extra, "--out", f"{command}.png")
    assert r.exit_code == 0, (command, r.output)
    assert (cwd / f"{command}.png").stat().st_size > 0
    if (family, command) == ("dinov2", "sanity"):  # the embeddings (class token, positions) by the model's init
        randomized = json.loads((cwd / "sanity.png.provenance.json").read_text())["randomized"]
        assert randomized[-2:] == ["dinov2.embeddings", "dinov2.embeddings.patch_embeddings.projection"]


def test_layers_lists_resnet_and_swin_with_their_rules(run):
    r = run("layers", "--model", SPECS["resnet"], "--size", 32)
    assert r.exit_code == 0, r.output
    assert "resnet.encoder.stages.1.layers.0" in r.output and "ReLU rule" in r.output
    r = run("layers", "--model", SPECS["swin"], "--size", 32)
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if " swin.encoder.layers.1.blocks.1 " in line)
    assert "tokens 4x4" in row and "attention fixed" in row


def test_scan_site_and_explore_on_swin_and_convnext(run, cwd):
    from PIL import Image

    photos = cwd / "photos"
    photos.mkdir()
    src = Image.open(DEFAULT_IMAGE).convert("RGB")
    for i, left in enumerate((0, 100)):
        src.crop((left, 0, left + 250, 250)).resize((40, 40)).save(photos / f"img{i}.jpg")
    layer = "swin.encoder.layers.1.blocks.1"
    args = [*common("swin"), "--layers", layer, "--channels", "3", "--top", 1, "--workers", 0, "-q"]
    r = run("scan", photos, *args, "--out", "s")
    assert r.exit_code == 0, r.output
    best = json.loads((cwd / "s" / "report.json").read_text())["layers"][layer]["channels"]["3"][0]
    net, peaks = load_network(SPECS["swin"], "random", "cpu", verbose=False), []
    h = net.module.get_submodule(layer).register_forward_hook(lambda m, a, o: peaks.append(o[0][0, :, 3]))
    with torch.no_grad():
        for i in range(2):
            net.module(to_batch(load_image(photos / f"img{i}.jpg"), net.preprocess, 32))
    h.remove()
    image, pos = divmod(int(torch.stack(peaks).flatten().argmax()), 16)
    assert (best["image"], best["row"], best["col"]) == (f"img{image}.jpg", *divmod(pos, 4))
    r = run("site", "s", "--out", "site", "-q")
    assert r.exit_code == 0, r.output
    assert (cwd / "site" / "index.html").is_file()
    r = run("explore", *common("convnext"), "--layers", "convnext.encoder.stages.1", "--top", 2, "-q", "--out", "ex")
    assert r.exit_code == 0, r.output
    assert (cwd / "ex" / "convnext.encoder.stages.1" / "index.html").is_file()


@pytest.mark.parametrize(
    ("spec", "weights", "said"),
    [
        ("hf:vit:image_sise=32", "random", "unknown config key of ViTConfig 'image_sise'; did you mean 'image_size'"),
        ("hf:vitt", "random", "unknown Hugging Face model type 'vitt'; did you mean 'vit'"),
        ("hf:vit:image_size", "random", "config override 'image_size' is not key=value"),
        ("hf:vit", "auto", "is a model type: its default config has no weights; use weights random"),
        ("hf:no-such-org/no-such-model", "auto", "from the Hugging Face hub or its cache"),
    ],
)
def test_bad_hf_specs_are_one_line(run, cwd, monkeypatch, spec, weights, said):
    """Offline (HF_HUB_OFFLINE), a hub name not in the cache is one line naming what to do, as is every other
    bad spec; nothing is written."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    size = 224 if spec == "hf:vit" else 32  # the default config's image size: only the weights are wrong
    r = run("visualize", "--model", spec, "--weights", weights, "--size", size, "--out", "x.png")
    assert r.exit_code == 2 and said in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (cwd / "x.png").exists()


def test_models_says_what_hf_needs(run):
    r = run("models")
    assert r.exit_code == 0 and "hf:ORG/NAME" in r.output and "deconvviz[transformers]" in r.output


@pytest.mark.parametrize("command", [["layers"], ["visualize", "--layer", "vit.layers.1", "--out", "x.png"]])
def test_a_vit_at_another_size_than_its_config_is_one_line_about_size(run, cwd, command):
    """transformers' ViT raises ValueError on an input of another size than config.image_size: --size, one line."""
    r = run(*command, "--model", SPECS["vit"], "--weights", "random", "--size", 64)
    assert r.exit_code == 2 and "--size" in r.output and "cannot run on a 64x64 input" in r.output, r.output
    assert r.output.rstrip().endswith("use 32 (its config's image_size)"), r.output  # SPECS["vit"]: image_size=32
    assert "Traceback" not in r.output and not (cwd / "x.png").exists()
