"""How much of the bicycle reconstruction's last panel (j) lies on the bicycle: the share of the absolute
reconstruction (summed over colour channels) at pixels inside the bicycle's box and outside the dog's box
(the built-in photo's sidecar, deconvviz/data/bicycle.jpg.json), for the old and the new default of
`deconvviz reconstruct`. Offline: vgg16-caffe weights. Run from the checkout: python scripts/bicycle_share.py
"""

from __future__ import annotations

import torch

from deconvviz import DEFAULT_IMAGE, Deconvnet, load_image, load_vgg, to_batch
from deconvviz.engine.targets import named_regions
from deconvviz.render.figures import BUILT_IN


def on_bicycle(shape: tuple[int, int], bicycle, dog) -> torch.Tensor:
    """(H, W) bool: pixels whose centre lies in the bicycle's box and not in the dog's."""
    ys, xs = (torch.arange(n) + 0.5 for n in shape)

    def inside(b):
        return ((ys >= b.y0) & (ys < b.y1))[:, None] & ((xs >= b.x0) & (xs < b.x1))[None, :]

    return inside(bicycle) & ~inside(dog)


def share(r: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of the absolute reconstruction r (3, H, W), summed over colours, that lies where mask is true."""
    a = r.abs().sum(0).double()
    return float(a[mask].sum() / a.sum())


def main() -> None:
    model, weights = load_vgg("vgg16", "vgg16-caffe", device="cpu", verbose=False)
    x = to_batch(load_image(DEFAULT_IMAGE), weights.preprocess)
    regions = named_regions(None, 224)
    bicycle, dog = regions["bicycle"], regions["dog"]
    dn = Deconvnet(model)
    old = dn.project(x, "conv5_3", mode="max", top=1, together=True)  # before: the image's strongest map
    new = dn.project(x, "conv5_3", mode=BUILT_IN["mode"], top=1, together=True, region=bicycle, exclude=[dog])
    mask = on_bicycle((224, 224), bicycle, dog)
    defaults = {
        "old default (strongest map overall, mode max)": old,
        "new default (strongest on the bicycle outside the dog, mode map)": new,
    }
    for what, out in defaults.items():
        channel, part = out.selections.channels[0, 0].item(), share(out.images[0, 0], mask)
        print(f"{what}: conv5_3 map {channel}, share of |r| on the bicycle outside the dog {part:.1%}")
    print(f"(that area is {float(mask.double().mean()):.1%} of the image: what an evenly spread |r| would score)")


if __name__ == "__main__":
    main()
