"""Tests for deconvviz.analysis.filters: a drawn filter is the gradient of its response with respect to RGB pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deconvviz.analysis.filters import first_conv, first_layer_filters
from deconvviz.errors import LayerError
from deconvviz.networks.weights import load_vgg, skeleton
from deconvviz.preprocess import CAFFE_VGG, IMAGENET_TORCHVISION


@pytest.mark.parametrize("preprocess", [CAFFE_VGG, IMAGENET_TORCHVISION], ids=["caffe-bgr-255", "torchvision"])
def test_filters_are_the_gradient_of_the_response_to_rgb_pixels(preprocess):
    """Independent oracle: autograd through the weights' preprocessing and the first conv, at one position."""
    model, _ = load_vgg("vgg11_bn", "random", device="cpu", seed=2, verbose=False)
    module, templates = first_layer_filters(model, "conv1_1", preprocess=preprocess)
    conv = model.features[0]
    assert module == "features.0" and templates.shape == (64, 3, 3, 3)
    rgb = torch.rand(1, 3, 7, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    response = F.conv2d(preprocess.to_input(rgb), conv.weight, conv.bias)  # (1, 64, 5, 5)
    for k in (0, 17, 63):
        (grad,) = torch.autograd.grad(response[0, k, 2, 2], rgb, retain_graph=True)
        assert torch.allclose(grad[0, :, 2:5, 2:5], templates[k], rtol=1e-5, atol=1e-6)
        assert grad[0, :, :2].abs().max() == 0  # nothing outside the 3x3 window


def test_deeper_layers_point_to_the_scan():
    model = skeleton("vgg16", "vgg16-caffe")
    assert first_conv(model, "conv1_1").name == first_conv(model, "features.0").name == "features.0"
    for layer, seen in (("conv2_1", "64 feature maps"), ("conv1_2", "64 feature maps"), ("pool5", "512 feature")):
        with pytest.raises(LayerError, match=f"'{layer}' see {seen}.*deconvviz scan FOLDER --layer {layer}"):
            first_conv(model, layer)
    with pytest.raises(LayerError, match="unknown layer 'conv1_0'; did you mean"):
        first_conv(model, "conv1_0")
