"""Peak memory of the bounded paths of docs/outputs.md, each measured in a fresh process (ru_maxrss).

    python scripts/bench_memory.py [--side 12000]

- a large PNG and JPEG (side x 0.45 side) read for a 224 input: to_batch (reduced decode) against a full
  decode followed by the same resize (what deconvviz did before);
- `deconvviz visualize` on that PNG against the same command on the built-in photo: the peak over the
  network's own (the difference) as a multiple of the decoded image (side x 0.45 side x 3 bytes); issue 24
  asks for at most 2 (it was 12 at 20000 px: the whole image read twice, three 8-bit copies and float copies);
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


VISUALIZE = """
import resource, runpy, sys
sys.argv = ["deconvviz", "visualize", *sys.argv[1:]]
try:
    runpy.run_module("deconvviz", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def visualize_peak_mib(image: Path, out: Path) -> float:
    """Peak RSS of `deconvviz visualize IMAGE` (vgg11, random weights, 224 px) in a fresh process."""
    args = [str(image), "--model", "vgg11", "--weights", "random", "--top", "2", "--device", "cpu", "-q"]
    r = subprocess.run([sys.executable, "-c", VISUALIZE, *args, "--out", str(out)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"visualize failed: {r.stderr.strip()}")
    return int(r.stdout.split()[-1]) / 1024


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
        small = visualize_peak_mib(DEFAULT_IMAGE, Path(tmp) / "small.png")
        large = visualize_peak_mib(Path(tmp) / "big.png", Path(tmp) / "large.png")
        decoded = big.width * big.height * 3 / 2**20
        print(
            f"visualize png {big.width}x{big.height} (decoded {decoded:.0f} MiB): peak {large:.0f} MiB, "
            f"{small:.0f} MiB on the built-in photo; (peak - that) / decoded = {(large - small) / decoded:.2f}"
        )
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
