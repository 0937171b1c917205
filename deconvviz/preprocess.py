"""Preprocessing belongs to the weights: how an RGB image in [0, 1] becomes network input, and back."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Preprocess:
    """x = (image in channel order `bgr`, times `scale`, minus `mean`) / `std`.

    `mean` and `std` are per network-input channel (already in BGR order when `bgr`), in scaled units.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0
    bgr: bool = False

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = (3,) + (1,) * 2
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return mean, std

    def to_input(self, rgb: Tensor) -> Tensor:
        """RGB image(s) in [0, 1], (..., 3, H, W), to network input of the same shape."""
        mean, std = self._stats(rgb)
        x = rgb.flip(-3) if self.bgr else rgb
        return (x * self.scale - mean) / std

    def to_rgb(self, x: Tensor, *, pattern: bool = False) -> Tensor:
        """Network-input space back to RGB in image units ([0, 1] for an image), (..., 3, H, W).

        `pattern=True` is for reconstructions: a direction in input space, not an image, so the
        mean is not added back; only the channel order and the per-channel scale are undone.
        """
        mean, std = self._stats(x)
        y = x * std if pattern else x * std + mean
        y = y / self.scale
        return y.flip(-3) if self.bgr else y


IMAGENET_TORCHVISION = Preprocess(
    name="torchvision-imagenet (RGB, 0-1, mean/std)",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)
CAFFE_VGG = Preprocess(
    name="caffe-vgg (BGR, 0-255, mean subtracted, no std)",
    mean=(103.939, 116.779, 123.68),
    scale=255.0,
    bgr=True,
)
