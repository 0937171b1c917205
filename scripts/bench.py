"""Benchmark deconvviz against its references, all measured in this one run; prints a table and a JSON line.

    python scripts/bench.py [--device cuda] [--rounds 5] [--docs docs/performance.md]
    python scripts/bench.py --smoke   # every measurement on tiny inputs (32 px, 2 maps): checks the script runs

1 fp32 matmul rate (the ceiling), 2 VGG16 forward (one image), 3 captum NeuronDeconvolution per map (K whole
conv5_3 maps, one image, value-seeded) batched and one call per map, against deconvviz, 4 the FLOP rate of
deconvviz's reverse pass, 5 mode max at conv3_3, full reverse pass vs receptive-field crop (identical output),
6 projecting all 512 conv5_3 maps of one image: peak memory (child process), 7 the same per-map times and peak
memory for the guided and gradient rules, beside captum's NeuronGuidedBackprop and NeuronGradient, 8 the autograd
path (any network): K whole layer3 maps of torchvision resnet50 against captum batched, and its peak memory,
9 mode max at resnet50 layer1 and layer2 (K strongest maps), full plane vs receptive-field windows (same output),
and the peak memory of each, 10 scan throughput against a plain forward over the same batches, 11 a scan's figures:
drawing time per unit against projecting time per unit (resnet50 layer4, --units maps, 3 photos, 64 px).

Method, for a shared machine whose speed drifts: each comparison runs its contenders in alternation (A B A B
..., one warm-up each) for --rounds rounds and reports the median of the per-round ratios. captum is timed at
its best: on the model as torchvision builds it (in-place ReLUs) and on a copy with inplace=False (as captum
asks); the configuration with the lower median time is the reference, and the output says which one won.
--docs PATH writes the results as a table between PATH's bench markers.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import deconvviz
import deconvviz.engine.rectified
from deconvviz.engine.forward import forward_chain
from deconvviz.networks.weights import load_vgg

CONV5_3, CONV3_3 = 29, 15  # VGG16 features[i]: the ReLU after conv5_3, after conv3_3 (deconvviz's layer names)
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn: Callable, device: torch.device) -> float:
    """Wall time of one call (synchronizing CUDA)."""
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t


def timed(fn: Callable, device: torch.device, repeat: int) -> float:
    """Best wall time of `repeat` runs after one warm-up: for measurements that compare with nothing."""
    fn()
    return min(seconds(fn, device) for _ in range(repeat))


def alternating(contenders: dict[str, Callable], device: torch.device, rounds: int) -> dict[str, list[float]]:
    """Per-round wall times of each contender, run in alternation (A B A B ...) after one warm-up each, so that
    a drift in the machine's speed (other work, clocks, caches) falls on all of them alike."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(seconds(fn, device))
    return times


def versus(ours: Callable, references: dict[str, Callable], device: torch.device, rounds: int) -> dict:
    """deconvviz against the fastest of `references` (name -> call), alternating: the winning reference's name,
    median seconds of each, and the median over rounds of (reference's time / ours)."""
    times = alternating({**references, "deconvviz": ours}, device, rounds)
    best = min(references, key=lambda name: statistics.median(times[name]))
    ratios = [ref / mine for ref, mine in zip(times[best], times["deconvviz"], strict=True)]
    return {
        "reference": best,
        "reference_s": statistics.median(times[best]),
        "deconvviz_s": statistics.median(times["deconvviz"]),
        "speedup": statistics.median(ratios),
        **{f"{name}_s": statistics.median(t) for name, t in times.items() if name != "deconvviz"},
    }


def without_inplace(model: nn.Module) -> nn.Module:
    """A copy whose ReLUs do not work in place, as captum's hooks ask (torchvision builds them in place)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return twin


def reverse_flops(model: nn.Module, upto: int, size: int) -> float:
    """FLOPs of one full reverse pass from features[upto]: each transposed conv costs its forward conv's."""
    total, hw = 0.0, size
    for m in list(model.features)[: upto + 1]:
        if isinstance(m, nn.MaxPool2d):
            hw //= 2
        if isinstance(m, nn.Conv2d):
            total += 2 * m.in_channels * m.out_channels * 9 * hw * hw
    return total


def captum_maps(model: nn.Module, x: torch.Tensor, channels, rule: str = "deconvnet") -> torch.Tensor:
    """captum's neuron method for `rule`, seeded with the K whole conv5_3 maps `channels` (their own values)."""
    from captum.attr import NeuronDeconvolution, NeuronGradient, NeuronGuidedBackprop

    method = {"deconvnet": NeuronDeconvolution, "guided": NeuronGuidedBackprop, "gradient": NeuronGradient}[rule]
    k = len(channels)
    with torch.no_grad():
        act = model.features[: CONV5_3 + 1](x.clone())
    seed = torch.zeros(k, *act.shape[1:], device=x.device)
    seed[torch.arange(k), channels] = act[0, channels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return method(model, model.features[CONV5_3]).attribute(
            x.expand(k, -1, -1, -1).clone(), neuron_selector=lambda o: (o * seed).flatten(1).sum(1)
        )


def captum_configurations(model: nn.Module, call: Callable) -> dict[str, Callable]:
    """call(model) on the model as built (in-place ReLUs) and on its inplace=False copy."""
    twin = without_inplace(model)
    return {"captum_inplace": lambda: call(model), "captum_no_inplace": lambda: call(twin)}


def child_peak(code: str, what: str) -> float:
    """Peak memory (GiB) above the loaded model of the projection in `code`, measured in a fresh process (CPU:
    the process's high-water mark, reset before projecting; CUDA: the allocator's)."""
    r = subprocess.run([sys.executable, "-c", PEAK.format(code=code)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"peak-memory child ({what}) failed:\n{r.stderr}")
    return float(r.stdout.strip().splitlines()[-1])


PEAK = """
import torch, torchvision, deconvviz
from deconvviz.networks.weights import load_vgg
def rss(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
{code}
cuda = x.device.type == "cuda"
if cuda:
    torch.cuda.synchronize(); base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
else:
    base = rss("VmRSS:"); open("/proc/self/clear_refs", "w").write("5")
project()
peak = torch.cuda.max_memory_allocated() if cuda else rss("VmHWM:")
print((peak - base) / 2**30)
"""


def vgg_peak(device: str, size: int, rule: str = "deconvnet") -> float:
    """Peak memory of projecting all 512 conv5_3 maps of one image under `rule`."""
    code = f"""
m, _ = load_vgg("vgg16", "random", device="{device}", verbose=False)
x = torch.randn(1, 3, {size}, {size}, device="{device}")
project = lambda: deconvviz.Deconvnet(m, rule="{rule}").project(x, "conv5_3", channels=range(512), mode="map")
"""
    return child_peak(code, f"vgg16, {rule}")


def resnet_peak(device: str, size: int, layer: str, select: str, crop: bool | None = None) -> float:
    """Peak memory of one resnet50 projection (`select`: project's keyword arguments)."""
    code = f"""
torch.manual_seed(0)
m = torchvision.models.resnet50().eval().to("{device}")
x = torch.randn(1, 3, {size}, {size}, device="{device}")
project = lambda: deconvviz.Deconvnet(m, crop={crop}).project(x, "{layer}", {select})
"""
    return child_peak(code, f"resnet50 {layer}")


def max_rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def resnet_autograd(dev: torch.device, a: argparse.Namespace) -> dict:
    """deconvviz's autograd path against captum (batched, both ReLU configurations) per map: K whole layer3 maps
    of resnet50, one image."""
    import torchvision
    from captum.attr import NeuronDeconvolution

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(dev)
    x = torch.randn(1, 3, a.size, a.size, device=dev)
    dn, channels, k = deconvviz.Deconvnet(model), list(range(a.k)), a.k
    act = []
    hook = model.layer3.register_forward_hook(lambda m, i, o: act.append(o.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    seed = torch.zeros(k, *act[0].shape[1:], device=dev)
    seed[torch.arange(k), channels] = act[0][0, channels]

    def theirs(m: nn.Module) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return NeuronDeconvolution(m, m.layer3).attribute(
                x.expand(k, -1, -1, -1).clone(), neuron_selector=lambda o: (o * seed).flatten(1).sum(1)
            )

    def ours():
        return dn.project(x, "layer3", channels=channels, mode="map")

    v = versus(ours, captum_configurations(model, theirs), dev, a.rounds)
    return {
        "resnet50_layer3_reference": v["reference"],
        "resnet50_layer3_captum_per_map_s": v["reference_s"] / k,
        "resnet50_layer3_deconvviz_per_map_s": v["deconvviz_s"] / k,
        "resnet50_layer3_speedup": v["speedup"],
        "resnet50_layer3_max_rel_err_vs_captum": max_rel_diff(ours().images[0], theirs(model)),
        "resnet50_layer3_peak_gib": resnet_peak(str(dev), a.size, "layer3", f'channels=range({k}), mode="map"'),
    }


def resnet_windows(dev: torch.device, a: argparse.Namespace) -> dict:
    """Mode max on resnet50: per projection, the full-plane autograd pass vs receptive-field windows (fields
    cached by the warm-up), alternating; the forward that selects the activations is excluded from both."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(dev)
    x = torch.randn(1, 3, a.size, a.size, device=dev)
    return {k: v for layer in ("layer1", "layer2") for k, v in windows_rows(model, x, layer, dev, a).items()}


def windows_rows(model: nn.Module, x: torch.Tensor, layer: str, dev: torch.device, a: argparse.Namespace) -> dict:
    full, crop = deconvviz.Deconvnet(model, crop=False), deconvviz.Deconvnet(model, crop=True)
    fwd = timed(lambda: deconvviz.engine.rectified.layer_output(model, x, layer, rule=full.rule), dev, a.repeat)

    def one(d):
        return d.project(x, layer, top=a.k, mode="max")

    v = versus(lambda: one(crop), {"full": lambda: one(full)}, dev, a.rounds)
    r = {
        f"resnet50_{layer}_full_per_projection_s": (v["reference_s"] - fwd) / a.k,
        f"resnet50_{layer}_windows_per_projection_s": (v["deconvviz_s"] - fwd) / a.k,
        f"resnet50_{layer}_windows_max_rel_diff": max_rel_diff(one(crop).images, one(full).images),
    }
    for name, cropped in (("full", False), ("windows", True)):
        r[f"resnet50_{layer}_{name}_peak_gib"] = resnet_peak(str(dev), a.size, layer, f'top={a.k}, mode="max"', cropped)
    return r


def scan_throughput(device: str, count: int, size: int) -> tuple[float, float]:
    """Images/s of `deconvviz scan` (conv5_3, top 9) vs a plain forward to conv5_3 over the same batches and
    the same DataLoader (decoding included in both), on a folder of crops of the built-in photo."""
    from torch.utils.data import DataLoader

    from deconvviz.analysis._scan_files import ImageFiles, _collate, image_files
    from deconvviz.analysis.scan import scan_folder
    from deconvviz.images import DEFAULT_IMAGE, load_image

    with tempfile.TemporaryDirectory() as tmp:
        img = load_image(DEFAULT_IMAGE)
        for i in range(count):
            box = (i % 7 * 20, i // 7 % 7 * 20, 448 - i % 5 * 20, 448 - i // 5 % 5 * 20)
            img.crop(box).save(f"{tmp}/{i:04d}.jpg")
        network = deconvviz.load_network("vgg16", "random", device, verbose=False)
        steps = deconvviz.Deconvnet(network.module).steps
        files = image_files(tmp)
        batches = [range(j, min(j + 32, len(files))) for j in range(0, len(files), 32)]
        workers = min(4, os.cpu_count() or 1)

        def plain():
            images = ImageFiles(Path(tmp), files, network.preprocess, size)
            loader = DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=_collate)
            with torch.no_grad():
                for x, _, _ in loader:
                    forward_chain(steps, x.to(device), CONV5_3)

        marks = []

        def progress(what, done, total):
            if what == "scanning" and (done == 0 or done == total):
                marks.append(time.perf_counter())

        plain()  # warm-up (page cache, allocator)
        t = time.perf_counter()
        plain()
        plain_s = time.perf_counter() - t
        options = dict(top=9, channels=[0], size=size, batch_size=32, progress=progress, verbose=False)
        scan_folder(tmp, ["conv5_3"], f"{tmp}/run", network=network, **options)
        scan_s = marks[-1] - marks[0]
    return count / scan_s, count / plain_s


def scan_drawing(dev: torch.device, a: argparse.Namespace) -> dict:
    """Per unit of a scan (resnet50 layer4, --units maps, 3 crops of the built-in photo, top 3): projecting its
    records (the scan's 'projecting' phase) against drawing its figures (render.scan_figures, channel figures and
    the overview), both timed in each of --rounds scans into new folders; median of the per-round ratios."""
    from deconvviz.analysis.scan import scan_folder
    from deconvviz.images import DEFAULT_IMAGE, load_image
    from deconvviz.render import scan_figures

    size = 32 if a.smoke else 64
    network = deconvviz.load_network("torchvision:resnet50", "random", str(dev), verbose=False)
    projecting, drawing = [], []
    with tempfile.TemporaryDirectory() as tmp:
        img = load_image(DEFAULT_IMAGE)
        for i in range(3):
            img.crop((40 * i, 20 * i, 40 * i + 360, 20 * i + 360)).save(f"{tmp}/p{i}.jpg")
        marks: list[float] = []

        def progress(what, done, total):
            if what.startswith("projecting") and (done == 0 or done == total):
                synchronize(dev)
                marks.append(time.perf_counter())

        def draw(*args, **kwargs):
            t = time.perf_counter()
            written = scan_figures(*args, **kwargs)
            drawing.append(time.perf_counter() - t)
            return written

        options = dict(top=3, channels=list(range(a.units)), size=size, workers=0, verbose=False)
        for i in range(a.rounds + 1):  # the first is the warm-up
            marks.clear()
            scan_folder(tmp, ["layer4"], f"{tmp}/run{i}", network=network, progress=progress, draw=draw, **options)
            projecting.append(marks[-1] - marks[0])
    projecting, drawing = projecting[1:], drawing[1:]
    return {
        "resnet50_layer4_scan_projecting_per_unit_s": statistics.median(projecting) / a.units,
        "resnet50_layer4_scan_drawing_per_unit_s": statistics.median(drawing) / a.units,
        "resnet50_layer4_scan_drawing_over_projecting": statistics.median(
            d / p for d, p in zip(drawing, projecting, strict=True)
        ),
    }


def vgg16(dev: torch.device, a: argparse.Namespace) -> dict:
    """Rows 1-7 and 10: VGG16 with random weights."""
    r = {}
    n = a.matmul
    m1, m2 = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    r["matmul_gflops"] = 2 * n**3 / timed(lambda: m1 @ m2, dev, a.repeat) / 1e9

    model, _ = load_vgg("vgg16", "random", device=dev, verbose=False)
    x = torch.randn(1, 3, a.size, a.size, device=dev)
    with torch.no_grad():
        r["forward_s"] = timed(lambda: model(x), dev, a.repeat)

    dn, k = deconvviz.Deconvnet(model), a.k
    channels = dn.project(x, "conv5_3", top=k).selections.channels[0]

    def mine(rule: str = "deconvnet"):
        return dn.project(x, "conv5_3", channels=channels.tolist(), mode="map", rule=rule)

    def batched(m: nn.Module, rule: str = "deconvnet"):
        return captum_maps(m, x, channels, rule)

    def looped(m: nn.Module):
        return [captum_maps(m, x, channels[i : i + 1]) for i in range(k)]

    v = versus(mine, captum_configurations(model, batched), dev, a.rounds)
    r.update(reference=v["reference"], captum_batched_per_map_s=v["reference_s"] / k)
    r.update(deconvviz_per_map_s=v["deconvviz_s"] / k, speedup_batched=v["speedup"])
    v = versus(mine, captum_configurations(model, looped), dev, max(1, a.rounds // 2))
    r.update(reference_looped=v["reference"], captum_looped_per_map_s=v["reference_s"] / k)
    r["speedup_looped"] = v["speedup"]
    fwd = timed(lambda: forward_chain(dn.steps, x, CONV5_3), dev, a.repeat)
    reverse_s = (r["deconvviz_per_map_s"] * k - fwd) / k
    r["deconvviz_reverse_gflops"] = reverse_flops(model, CONV5_3, a.size) / reverse_s / 1e9
    r["max_rel_err_vs_captum"] = max_rel_diff(mine().images[0], batched(model))

    # mode max at conv3_3: 64 single activations (one per strongest map), forward excluded
    full, crop = deconvviz.Deconvnet(model, crop=False), deconvviz.Deconvnet(model, crop=True)

    def one(d):
        return d.project(x, "conv3_3", top=64, mode="max")

    fwd3 = timed(lambda: forward_chain(dn.steps, x, CONV3_3), dev, a.repeat)
    v = versus(lambda: one(crop), {"full": lambda: one(full)}, dev, a.rounds)
    r["conv3_3_full_per_projection_s"] = (v["reference_s"] - fwd3) / 64
    r["conv3_3_cropped_per_projection_s"] = (v["deconvviz_s"] - fwd3) / 64
    r["crop_max_rel_diff"] = max_rel_diff(one(crop).images, one(full).images)

    r["all_512_maps_peak_gib"] = vgg_peak(str(dev), a.size)
    for rule in ("guided", "gradient"):
        v = versus(
            lambda rule=rule: mine(rule),
            captum_configurations(model, lambda m, rule=rule: batched(m, rule)),
            dev,
            a.rounds,
        )
        r[f"{rule}_reference"] = v["reference"]
        r[f"captum_{rule}_batched_per_map_s"] = v["reference_s"] / k
        r[f"deconvviz_{rule}_per_map_s"] = v["deconvviz_s"] / k
        r[f"{rule}_speedup"] = v["speedup"]
        r[f"{rule}_max_rel_err_vs_captum"] = max_rel_diff(mine(rule).images[0], batched(model, rule))
        r[f"all_512_maps_{rule}_peak_gib"] = vgg_peak(str(dev), a.size, rule)
    r["scan_images_per_s"], r["plain_forward_images_per_s"] = scan_throughput(str(dev), a.images, a.size)
    return r


RATIOS = {  # label (target) -> how it is computed from the measurements
    "speedup vs captum, batched (>= 4)": lambda r: r["speedup_batched"],
    "speedup vs captum, one call per map (>= 4)": lambda r: r["speedup_looped"],
    "reverse rate / matmul rate (>= 0.6)": lambda r: r["deconvviz_reverse_gflops"] / r["matmul_gflops"],
    "conv3_3 crop speedup (>= 10)": lambda r: (
        r["conv3_3_full_per_projection_s"] / r["conv3_3_cropped_per_projection_s"]
    ),
    "all 512 maps peak GiB (< 4)": lambda r: r["all_512_maps_peak_gib"],
    "guided speedup vs captum, batched": lambda r: r["guided_speedup"],
    "gradient speedup vs captum, batched": lambda r: r["gradient_speedup"],
    "all 512 maps, guided, peak GiB (< 4)": lambda r: r["all_512_maps_guided_peak_gib"],
    "all 512 maps, gradient, peak GiB (< 4)": lambda r: r["all_512_maps_gradient_peak_gib"],
    "scan overhead over plain forward (<= 0.15)": lambda r: (
        r["plain_forward_images_per_s"] / r["scan_images_per_s"] - 1
    ),
    "resnet50 layer3 speedup vs captum, batched (>= 2)": lambda r: r["resnet50_layer3_speedup"],
    "resnet50 layer3, K maps, peak GiB": lambda r: r["resnet50_layer3_peak_gib"],
    "resnet50 layer1 windows speedup (>= 10)": lambda r: (
        r["resnet50_layer1_full_per_projection_s"] / r["resnet50_layer1_windows_per_projection_s"]
    ),
    "resnet50 layer2 windows speedup (>= 10)": lambda r: (
        r["resnet50_layer2_full_per_projection_s"] / r["resnet50_layer2_windows_per_projection_s"]
    ),
    "resnet50 layer4 scan, drawing / projecting (<= 1)": lambda r: r["resnet50_layer4_scan_drawing_over_projecting"],
}


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3, help="runs of a measurement that compares with nothing (best)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of each comparison (median)")
    ap.add_argument("--k", type=int, default=16, help="feature maps per projection")
    ap.add_argument("--size", type=int, default=224, help="input side")
    ap.add_argument("--images", type=int, default=96, help="images in the scan benchmark's folder")
    ap.add_argument("--units", type=int, default=64, help="feature maps projected and drawn in the drawing benchmark")
    ap.add_argument("--matmul", type=int, default=None, help="matmul side (default 2048, 4096 on CUDA)")
    ap.add_argument("--only-resnet", action="store_true", help="only the autograd rows (resnet50)")
    ap.add_argument("--smoke", action="store_true", help="tiny: 32 px, 2 maps, 4 images, 4 units, 1 repeat, 2 rounds")
    ap.add_argument("--docs", type=Path, help="write the table between this Markdown file's bench markers")
    a = ap.parse_args()
    if a.smoke:
        a.size, a.k, a.images, a.repeat, a.rounds, a.matmul, a.units = 32, 2, 4, 1, 2, 128, 4
    a.matmul = a.matmul or (4096 if a.device.startswith("cuda") else 2048)
    return a


def table(r: dict, ratios: dict, command: str) -> str:
    """The results as a Markdown table, under a line that says where and how they were measured."""
    when = datetime.date.today().isoformat()
    lines = [
        f"`{command}` on {r['device']}, torch {torch.__version__}, {when}:",
        "",
        "| measurement | value |",
        "| --- | --- |",
    ]
    for key, v in {**ratios, **r}.items():
        if key != "device":
            lines.append(f"| {key} | {v:.3g} |" if isinstance(v, float) else f"| {key} | {v} |")
    return "\n".join(lines)


def write_docs(path: Path, text: str) -> None:
    """Put `text` between the file's bench markers."""
    page = path.read_text()
    if START not in page or END not in page:
        sys.exit(f"{path} has no {START} ... {END} markers")
    head, rest = page.split(START, 1)
    path.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")


def main() -> None:
    a = arguments()
    dev = torch.device(a.device)
    torch.manual_seed(0)
    r = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"}
    if not a.only_resnet:
        r.update(vgg16(dev, a))
    r.update(resnet_autograd(dev, a))
    r.update(resnet_windows(dev, a))
    r.update(scan_drawing(dev, a))
    ratios = {label: f(r) for label, f in RATIOS.items() if not a.only_resnet or label.startswith("resnet50")}
    for key, v in {**r, **ratios}.items():
        print(f"{key:<52} {v:.4g}" if isinstance(v, float) else f"{key:<52} {v}")
    for key, v in r.items():
        if key.endswith("reference") or key.startswith("reference"):
            print(f"captum at its best ({key}): {v}")
    if a.docs:
        write_docs(a.docs, table(r, ratios, "python scripts/bench.py " + " ".join(sys.argv[1:])))
    print(json.dumps({**r, "ratios": ratios}))


if __name__ == "__main__":
    main()
