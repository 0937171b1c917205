"""Peak memory of the bounded paths of docs/outputs.md, each measured in a fresh process (ru_maxrss).

    python scripts/bench_memory.py [--side 12000]

- a large PNG and JPEG (side x 0.45 side) read for a 224 input: to_batch (reduced decode) against a full
  decode followed by the same resize (what deconvviz did before);
- scan --top 100000 over five photos: the checkpoint's size (the top-k is sized to the images that exist).

Nothing here is a test: the numbers depend on the machine. Run it after a change to images.py or scan.py.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

READ = """
import sys, warnings, numpy as np, resource, torch
from PIL import Image
from deconvviz.images import to_batch, _resize_crop
from deconvviz.preprocess import IMAGENET_TORCHVISION
Image.MAX_IMAGE_PIXELS = None
path, how = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if how == "reduced":
    x = to_batch(path, IMAGENET_TORCHVISION, 224)
else:  # the whole image decoded, as a float tensor, then resized
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    x = _resize_crop(torch.from_numpy(a).permute(2, 0, 1), 224)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_mib(args: list[str]) -> tuple[float, float]:
    r = subprocess.run([sys.executable, "-c", READ, *args], capture_output=True, text=True, check=True)
    before, after = map(int, r.stdout.split())
    return before / 1024, after / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12000, help="width of the large test image in pixels")
    side = parser.parse_args().side
    from PIL import Image

    from deconvviz.images import DEFAULT_IMAGE

    Image.MAX_IMAGE_PIXELS = None
    with tempfile.TemporaryDirectory() as tmp:
        big = Image.open(DEFAULT_IMAGE).convert("RGB").resize((side, int(side * 0.45)))
        for ext in ("png", "jpg"):
            path = Path(tmp) / f"big.{ext}"
            big.save(path)
            for how in ("full", "reduced"):
                start, peak = peak_mib([str(path), how])
                shape = f"{ext} {big.width}x{big.height} {how:>8}"
                print(f"{shape}: peak {peak:8.0f} MiB ({peak - start:6.0f} over the start)")
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for i in range(5):
            Image.open(DEFAULT_IMAGE).convert("RGB").rotate(10 * i).save(photos / f"p{i}.jpg")
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "deconvviz", "scan", str(photos), "--model", "vgg16", "--weights", "random"]
        cmd += ["--layer", "conv5_3", "--top", "100000", "--out", str(out), "--workers", "0", "-q"]
        subprocess.run(cmd, check=True)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        size = (out / "state.pt").stat().st_size / 1024
        print(f"scan --top 100000, 5 photos: state.pt {size:.0f} kB, largest child peak {usage:.0f} MiB")


if __name__ == "__main__":
    main()
