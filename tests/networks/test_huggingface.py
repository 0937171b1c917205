"""hf: specs (deconvviz.networks.huggingface): overrides read as JSON, the canonical spec rebuilding the same
network, a JSON file of overrides, the attention kernel, the image processor's statistics and config.id2label."""

from __future__ import annotations

import json

import pytest
import torch

from deconvviz.errors import WeightsError
from deconvviz.networks.network import load_network

transformers = pytest.importorskip("transformers")

SWIN = "hf:swin:image_size=32,patch_size=4,embed_dim=16,depths=[1, 2],num_heads=[1,2],window_size=4,hidden_act=gelu_new"


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_overrides_are_json_values_and_the_canonical_spec_rebuilds_the_same_network():
    net = load_network(SWIN, "random", "cpu", verbose=False)
    config = net.module.config
    assert config.depths == [1, 2] and config.num_heads == [1, 2] and config.hidden_act == "gelu_new"
    assert " " not in net.spec  # pastes into a shell as one word
    again = load_network(net.spec, "random", "cpu", verbose=False)
    assert again.spec == net.spec and same_weights(net.module, again.module)
    other = load_network(net.spec, "random", "cpu", seed=1, verbose=False)
    assert not same_weights(net.module, other.module)
    acts = {type(m).__name__ for m in net.module.modules() if type(m).__module__ == "transformers.activations"}
    assert acts == {"NewGELUActivation"}


def test_a_json_file_of_overrides_is_written_into_the_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.json").write_text(json.dumps({"image_size": 32, "patch_size": 8, "num_hidden_layers": 1}))
    net = load_network("hf:vit:small.json", "random", "cpu", verbose=False)
    assert net.spec == "hf:vit:image_size=32,patch_size=8,num_hidden_layers=1"
    assert net.module.config.num_hidden_layers == 1 and len(net.module.vit.layers) == 1
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(WeightsError, match="holds no JSON object"):
        load_network("hf:vit:list.json", "random", "cpu", verbose=False)


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_the_attention_kernel_is_chosen_by_attn_implementation(kernel):
    net = load_network(f"hf:vit:image_size=32,patch_size=8,attn_implementation={kernel}", "random", "cpu")
    assert net.module.config._attn_implementation == kernel


def test_preprocessing_is_the_processor_classs_and_categories_config_id2label():
    """hf:TYPE: the mean and std of the type's processor class as transformers constructs it; categories only
    where id2label holds real names."""
    net = load_network("hf:convnext:hidden_sizes=[8,16],depths=[1,1],num_stages=2", "random", "cpu", verbose=False)
    processor = transformers.ConvNextImageProcessor()
    assert net.preprocess.mean == tuple(processor.image_mean) and net.preprocess.std == tuple(processor.image_std)
    assert net.weights.details["image_processor"].startswith("ConvNextImageProcessor")
    assert net.categories is None
    labels = 'id2label={"0":"cat","1":"dog"},label2id={"cat":0,"dog":1}'
    named = load_network(f"hf:resnet:embedding_size=8,hidden_sizes=[8],depths=[1],{labels}", "random", "cpu")
    assert named.categories == ("cat", "dog") and named.module.classifier[-1].out_features == 2


@pytest.mark.parametrize("weights", ["auto", "random"])
def test_a_saved_segmentation_model_loads_as_the_class_its_config_names(tmp_path, weights):
    """A SegformerForSemanticSegmentation folder: AutoModelForImageClassification knows SegformerConfig too, and
    would drop the decode head and draw a random classifier; the config's `architectures` names the class."""
    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], num_labels=4)
    config.update(dict(hidden_sizes=[8, 16], num_attention_heads=[1, 2], decoder_hidden_size=16))
    torch.manual_seed(0)
    saved = transformers.SegformerForSemanticSegmentation(config).eval()
    saved.save_pretrained(tmp_path / "seg")
    net = load_network(f"hf:{tmp_path / 'seg'}", weights, "cpu", verbose=False)
    assert type(net.module) is transformers.SegformerForSemanticSegmentation
    assert "config.architectures" in net.weights.description
    if weights == "auto":
        assert same_weights(net.module, saved)
        x = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(net.module(x).logits, saved(x).logits)
