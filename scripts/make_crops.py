"""A folder of COUNT photos for a scan from a few: each photo whole, then random square crops (half of them
mirrored), 256x256 JPEGs, seeded. For measurements and figures; tests build their own images.

    python scripts/make_crops.py PHOTO... --count 100 --out runs/crops
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageOps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", type=Path)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    sources = [Image.open(f).convert("RGB") for f in a.photos]
    a.out.mkdir(parents=True, exist_ok=True)
    for n, s in enumerate(sources[: a.count]):
        s.save(a.out / f"full{n:03d}.jpg")
    for n in range(len(sources), a.count):
        s = sources[n % len(sources)]
        side = rng.randint(min(s.size) // 3, min(s.size))
        left, top = rng.randint(0, s.width - side), rng.randint(0, s.height - side)
        crop = s.crop((left, top, left + side, top + side))
        crop = ImageOps.mirror(crop) if rng.random() < 0.5 else crop
        crop.resize((256, 256)).save(a.out / f"crop{n:03d}.jpg")
    print(f"wrote {a.count} images to {a.out}")


if __name__ == "__main__":
    main()
