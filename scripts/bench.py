"""Benchmark deconvviz against its references, all measured in this one run; prints a table and a JSON line.

    python scripts/bench.py [--device cuda] [--repeat 3]

1 fp32 matmul rate (the ceiling), 2 VGG16 forward (one 224 image), 3 captum NeuronDeconvolution per map
(K whole conv5_3 maps, one image, value-seeded), 4 deconvviz per map and the FLOP rate of its reverse pass,
5 mode max at conv3_3, full reverse pass vs receptive-field crop (identical output), 6 projecting all 512
conv5_3 maps of one image: peak memory (child process), 7 the same per-map times and peak memory for the
guided and gradient rules, beside captum's NeuronGuidedBackprop and NeuronGradient, 8 the autograd path (any
network): K whole layer3 maps of torchvision resnet50 at 224 against captum batched, and its peak memory, 9 mode
max at resnet50 layer1 and layer2 (K strongest maps), full plane vs receptive-field windows (same output), and
the peak memory of each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import deconvviz
import deconvviz.engine.rectified
from deconvviz.engine.forward import forward_chain
from deconvviz.networks.weights import load_vgg


def timed(fn, device, repeat):
    """Best wall time of `repeat` runs after one warm-up (synchronizing CUDA)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def reverse_flops(model: nn.Module, upto: int, size: int) -> float:
    """FLOPs of one full reverse pass from features[upto]: each transposed conv costs its forward conv's."""
    total, hw = 0.0, size
    for m in list(model.features)[: upto + 1]:
        if isinstance(m, nn.MaxPool2d):
            hw //= 2
        if isinstance(m, nn.Conv2d):
            total += 2 * m.in_channels * m.out_channels * 9 * hw * hw
    return total


def captum_maps(model, layer, x, channels, rule="deconvnet"):
    from captum.attr import NeuronDeconvolution, NeuronGradient, NeuronGuidedBackprop

    method = {"deconvnet": NeuronDeconvolution, "guided": NeuronGuidedBackprop, "gradient": NeuronGradient}[rule]
    k = len(channels)
    act = model.features[:30](x.clone()).detach()
    seed = torch.zeros(k, *act.shape[1:], device=x.device)
    seed[torch.arange(k), channels] = act[0, channels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method(model, layer).attribute(
            x.expand(k, -1, -1, -1).clone(), neuron_selector=lambda o: (o * seed).flatten(1).sum(1)
        )


def peak_memory_child(device: str, rule: str = "deconvnet") -> float:
    """Peak memory (GiB) above the loaded model while projecting all 512 conv5_3 maps of one image, measured
    in a fresh process (CPU: the process's high-water mark, reset before projecting; CUDA: the allocator's)."""
    code = f"""
import torch, deconvviz
from deconvviz.networks.weights import load_vgg
def rss(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
m, _ = load_vgg("vgg16", "random", device="{device}", verbose=False)
x = torch.randn(1, 3, 224, 224, device="{device}")
cuda = "{device}".startswith("cuda")
if cuda:
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
else:
    base = rss("VmRSS:"); open("/proc/self/clear_refs", "w").write("5")
deconvviz.Deconvnet(m, rule="{rule}").project(x, "conv5_3", channels=range(512), mode="map")
peak = torch.cuda.max_memory_allocated() if cuda else rss("VmHWM:")
print((peak - base) / 2**30)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"peak-memory child ({rule}) failed:\n{r.stderr}")
    return float(r.stdout.strip().splitlines()[-1])


RESNET_PEAK = """
import torch, torchvision, deconvviz
def rss(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
torch.manual_seed(0)
m = torchvision.models.resnet50().eval().to("{device}")
x = torch.randn(1, 3, 224, 224, device="{device}")
cuda = "{device}".startswith("cuda")
if cuda:
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
else:
    base = rss("VmRSS:"); open("/proc/self/clear_refs", "w").write("5")
deconvviz.Deconvnet(m, crop={crop}).project(x, "{layer}", {select})
peak = torch.cuda.max_memory_allocated() if cuda else rss("VmHWM:")
print((peak - base) / 2**30)
"""


def resnet_autograd(dev: torch.device, repeat: int, k: int) -> dict[str, float]:
    """deconvviz's autograd path against captum (batched) per map: K whole layer3 maps of resnet50, one image."""
    import torchvision
    from captum.attr import NeuronDeconvolution

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(dev)
    x = torch.randn(1, 3, 224, 224, device=dev)
    dn, channels = deconvviz.Deconvnet(model), list(range(k))
    act = []
    hook = model.layer3.register_forward_hook(lambda m, i, o: act.append(o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    seed = torch.zeros(k, *act[0].shape[1:], device=dev)
    seed[torch.arange(k), channels] = act[0][0, channels]

    def theirs():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return NeuronDeconvolution(model, model.layer3).attribute(
                x.expand(k, -1, -1, -1).clone(), neuron_selector=lambda o: (o * seed).flatten(1).sum(1)
            )

    ours = lambda: dn.project(x, "layer3", channels=channels, mode="map")  # noqa: E731
    r = {"resnet50_layer3_captum_per_map_s": timed(theirs, dev, repeat) / k}
    r["resnet50_layer3_deconvviz_per_map_s"] = timed(ours, dev, repeat) / k
    want, got = theirs(), ours().images[0]
    r["resnet50_layer3_max_rel_err_vs_captum"] = float((got - want).abs().max() / want.abs().max())
    r["resnet50_layer3_peak_gib"] = resnet_peak_child(dev, "layer3", f'channels=range({k}), mode="map"')
    return r


def resnet_peak_child(dev: torch.device, layer: str, select: str, crop: bool | None = None) -> float:
    """Peak memory (GiB) above the loaded resnet50 of one projection (`select`: project's keyword arguments),
    in a fresh process, as peak_memory_child."""
    code = RESNET_PEAK.format(device=str(dev), layer=layer, select=select, crop=crop)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if child.returncode != 0:
        raise SystemExit(f"resnet50 peak-memory child failed:\n{child.stderr}")
    return float(child.stdout.strip().splitlines()[-1])


def resnet_windows(dev: torch.device, repeat: int, k: int) -> dict[str, float]:
    """Mode max on resnet50 at 224: per projection, the full-plane autograd pass vs receptive-field windows
    (fields cached by the first call), the forward that selects the activations excluded from both."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(dev)
    x = torch.randn(1, 3, 224, 224, device=dev)
    r = {}
    for layer in ("layer1", "layer2"):
        r.update(_windows_rows(model, x, layer, dev, repeat, k))
    return r


def _windows_rows(model: nn.Module, x: torch.Tensor, layer: str, dev, repeat: int, k: int) -> dict[str, float]:
    full, crop = deconvviz.Deconvnet(model, crop=False), deconvviz.Deconvnet(model, crop=True)
    fwd = timed(lambda: deconvviz.engine.rectified.layer_output(model, x, layer, rule=full.rule), dev, repeat)
    one = lambda d: d.project(x, layer, top=k, mode="max")  # noqa: E731
    a, b = one(full).images, one(crop).images
    return {
        f"resnet50_{layer}_full_per_projection_s": (timed(lambda: one(full), dev, repeat) - fwd) / k,
        f"resnet50_{layer}_windows_per_projection_s": (timed(lambda: one(crop), dev, repeat) - fwd) / k,
        f"resnet50_{layer}_windows_max_rel_diff": float((a - b).abs().max() / a.abs().max()),
        **{
            f"resnet50_{layer}_{name}_peak_gib": resnet_peak_child(dev, layer, f'top={k}, mode="max"', crop)
            for name, crop in (("full", False), ("windows", True))
        },
    }


def scan_throughput(device: str, count: int) -> tuple[float, float]:
    """Images/s of `deconvviz scan` (conv5_3, top 9) vs a plain forward to conv5_3 over the same batches and
    the same DataLoader (decoding included in both), on a folder of crops of the built-in photo."""
    from torch.utils.data import DataLoader

    from deconvviz.analysis.scan import ImageFiles, _collate, image_files, scan_folder
    from deconvviz.images import DEFAULT_IMAGE, load_image

    with tempfile.TemporaryDirectory() as tmp:
        img = load_image(DEFAULT_IMAGE)
        for i in range(count):
            box = (i % 7 * 20, i // 7 % 7 * 20, 448 - i % 5 * 20, 448 - i // 5 % 5 * 20)
            img.crop(box).save(f"{tmp}/{i:04d}.jpg")
        model, info = load_vgg("vgg16", "random", device=device, verbose=False)
        steps = deconvviz.Deconvnet(model).steps
        files = image_files(tmp)
        batches = [range(j, min(j + 32, len(files))) for j in range(0, len(files), 32)]

        def plain():
            loader = DataLoader(ImageFiles(Path(tmp), files, info.preprocess, 224), batch_sampler=batches,
                                num_workers=min(4, os.cpu_count() or 1), collate_fn=_collate)  # fmt: skip
            with torch.no_grad():
                for x, _, _ in loader:
                    forward_chain(steps, x.to(device), 29)

        marks = []

        def progress(what, done, total):
            if what == "scanning" and (done == 0 or done == total):
                marks.append(time.perf_counter())

        plain()  # warm-up (page cache, allocator)
        t = time.perf_counter()
        plain()
        plain_s = time.perf_counter() - t
        scan_folder(tmp, ["conv5_3"], f"{tmp}/run", top=9, channels=[0], model="vgg16", weights="random",
                    device=device, batch_size=32, progress=progress, verbose=False)  # fmt: skip
        scan_s = marks[-1] - marks[0]
    return count / scan_s, count / plain_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--images", type=int, default=96, help="images in the scan benchmark's folder")
    ap.add_argument("--only-resnet", action="store_true", help="only the autograd rows (resnet50 layer3)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    r = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"}
    if args.only_resnet:
        r.update(resnet_autograd(dev, args.repeat, args.k))
        r.update(resnet_windows(dev, args.repeat, args.k))
        ratios = {
            "resnet50 layer3 speedup vs captum, batched (>= 2)": r["resnet50_layer3_captum_per_map_s"]
            / r["resnet50_layer3_deconvviz_per_map_s"],
            **{
                f"resnet50 {layer} windows speedup (>= 10)": r[f"resnet50_{layer}_full_per_projection_s"]
                / r[f"resnet50_{layer}_windows_per_projection_s"]
                for layer in ("layer1", "layer2")
            },
        }
        for key, v in {**r, **ratios}.items():
            print(f"{key:<48} {v:.4g}" if isinstance(v, float) else f"{key:<48} {v}")
        print(json.dumps({**r, "ratios": ratios}))
        return

    n = 4096 if dev.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    r["matmul_gflops"] = 2 * n**3 / timed(lambda: a @ b, dev, args.repeat) / 1e9

    model, _ = load_vgg("vgg16", "random", device=dev, verbose=False)
    x = torch.randn(1, 3, 224, 224, device=dev)
    with torch.no_grad():
        r["forward_s"] = timed(lambda: model(x), dev, args.repeat)

    dn = deconvviz.Deconvnet(model)
    channels = dn.project(x, "conv5_3", top=args.k).selections.channels[0]
    k = args.k
    batched = lambda: captum_maps(model, model.features[29], x, channels)  # noqa: E731
    looped = lambda: [captum_maps(model, model.features[29], x, channels[i : i + 1]) for i in range(k)]  # noqa: E731
    r["captum_batched_per_map_s"] = timed(batched, dev, args.repeat) / k
    r["captum_looped_per_map_s"] = timed(looped, dev, 1) / k
    ours = lambda: dn.project(x, "conv5_3", channels=channels.tolist(), mode="map")  # noqa: E731
    r["deconvviz_per_map_s"] = timed(ours, dev, args.repeat) / k
    steps = dn.steps
    fwd = timed(lambda: forward_chain(steps, x, 29), dev, args.repeat)
    r["deconvviz_reverse_gflops"] = reverse_flops(model, 29, 224) / ((r["deconvviz_per_map_s"] * k - fwd) / k) / 1e9
    want, got = batched(), ours().images[0]
    r["max_rel_err_vs_captum"] = float((got - want).abs().max() / want.abs().max())

    # mode max at conv3_3: 64 single activations (one per strongest map), forward excluded
    full, crop = deconvviz.Deconvnet(model, crop=False), deconvviz.Deconvnet(model, crop=True)
    one = lambda d: d.project(x, "conv3_3", top=64, mode="max")  # noqa: E731
    fwd3 = timed(lambda: forward_chain(steps, x, 15), dev, args.repeat)
    r["conv3_3_full_per_projection_s"] = (timed(lambda: one(full), dev, args.repeat) - fwd3) / 64
    r["conv3_3_cropped_per_projection_s"] = (timed(lambda: one(crop), dev, args.repeat) - fwd3) / 64
    a, b = one(full).images, one(crop).images
    r["crop_max_rel_diff"] = float((a - b).abs().max() / a.abs().max())

    r["all_512_maps_peak_gib"] = peak_memory_child(args.device)
    for rule in ("guided", "gradient"):
        theirs = lambda rule=rule: captum_maps(model, model.features[29], x, channels, rule)  # noqa: E731
        mine = lambda rule=rule: dn.project(x, "conv5_3", channels=channels.tolist(), mode="map", rule=rule)  # noqa: E731
        r[f"captum_{rule}_batched_per_map_s"] = timed(theirs, dev, args.repeat) / k
        r[f"deconvviz_{rule}_per_map_s"] = timed(mine, dev, args.repeat) / k
        want, got = theirs(), mine().images[0]
        r[f"{rule}_max_rel_err_vs_captum"] = float((got - want).abs().max() / want.abs().max())
        r[f"all_512_maps_{rule}_peak_gib"] = peak_memory_child(args.device, rule)
    r["scan_images_per_s"], r["plain_forward_images_per_s"] = scan_throughput(args.device, args.images)
    r.update(resnet_autograd(dev, args.repeat, args.k))
    r.update(resnet_windows(dev, args.repeat, args.k))

    ratios = {
        "speedup vs captum, batched (>= 4)": r["captum_batched_per_map_s"] / r["deconvviz_per_map_s"],
        "speedup vs captum, one call per map (>= 4)": r["captum_looped_per_map_s"] / r["deconvviz_per_map_s"],
        "reverse rate / matmul rate (>= 0.6)": r["deconvviz_reverse_gflops"] / r["matmul_gflops"],
        "conv3_3 crop speedup (>= 10)": r["conv3_3_full_per_projection_s"] / r["conv3_3_cropped_per_projection_s"],
        "all 512 maps peak GiB (< 4)": r["all_512_maps_peak_gib"],
        **{
            f"{rule} speedup vs captum, batched": r[f"captum_{rule}_batched_per_map_s"]
            / r[f"deconvviz_{rule}_per_map_s"]
            for rule in ("guided", "gradient")
        },
        **{
            f"all 512 maps, {rule}, peak GiB (< 4)": r[f"all_512_maps_{rule}_peak_gib"]
            for rule in ("guided", "gradient")
        },
        "scan overhead over plain forward (<= 0.15)": r["plain_forward_images_per_s"] / r["scan_images_per_s"] - 1,
        "resnet50 layer3 speedup vs captum, batched (>= 2)": r["resnet50_layer3_captum_per_map_s"]
        / r["resnet50_layer3_deconvviz_per_map_s"],
        "resnet50 layer3, 16 maps, peak GiB": r["resnet50_layer3_peak_gib"],
        **{
            f"resnet50 {layer} windows speedup (>= 10)": r[f"resnet50_{layer}_full_per_projection_s"]
            / r[f"resnet50_{layer}_windows_per_projection_s"]
            for layer in ("layer1", "layer2")
        },
    }
    for k, v in {**r, **ratios}.items():
        print(f"{k:<40} {v:.4g}" if isinstance(v, float) else f"{k:<40} {v}")
    print(json.dumps({**r, "ratios": ratios}))


if __name__ == "__main__":
    main()
