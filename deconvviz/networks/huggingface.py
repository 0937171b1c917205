"""Hugging Face transformers models: which one an `hf:` spec names, how it is built or loaded, and the
preprocessing (its image processor) and categories (config.id2label) that belong to it.

Specs: `hf:ORG/NAME` (the hub, or its cache offline), `hf:PATH` (a folder `save_pretrained` wrote, offline),
`hf:TYPE` (a model type's default config, `AutoConfig.for_model`: random weights only), each optionally followed
by config overrides, `hf:vit:image_size=32,num_hidden_layers=2` (values read as JSON: numbers, true/false,
lists; anything else a string) or `hf:vit:overrides.json`. `attn_implementation=eager` chooses transformers'
attention kernel (default: its own, SDPA). The model class is the one the config names (`architectures`, as
save_pretrained wrote it), else the first of AutoModelForImageClassification, AutoModelForSemanticSegmentation and
AutoModel that knows the config; the weights' description names it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import WeightsError
from ..preprocess import IMAGENET_TORCHVISION, Preprocess

AUTO_CLASSES = ("AutoModelForImageClassification", "AutoModelForSemanticSegmentation", "AutoModel")
NEEDS = "pip install 'deconvviz[transformers]'"
_KERNEL = "attn_implementation"  # not a config key: passed to from_config / from_pretrained


@dataclass(frozen=True)
class HFSpec:
    """A parsed `hf:` spec. kind: "type" (a model type), "folder" (a save_pretrained folder) or "hub";
    source: the type, the folder (absolute) or the hub name; overrides: config keys and values."""

    kind: str
    source: str
    overrides: dict

    @property
    def spec(self) -> str:
        """The canonical spec, which rebuilds it from anywhere: overrides written out, a folder absolute."""
        if not self.overrides:
            return f"hf:{self.source}"
        shown = ",".join(f"{k}={_shown(v)}" for k, v in self.overrides.items())
        return f"hf:{self.source}:{shown}"


def available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def models_line() -> str:
    """What `deconvviz models` says about Hugging Face models."""
    here = "installed here" if available() else f"not installed here: {NEEDS}"
    return (
        "Hugging Face transformers models: --model hf:ORG/NAME (the hub, or its cache offline), hf:PATH (a folder "
        "save_pretrained wrote, offline) or hf:TYPE --weights random (hf:vit, hf:swin, ...), config overrides as "
        f"hf:TYPE:key=value,...; they need transformers, pip install 'deconvviz[transformers]' ({here})."
    )


def parse_hf(text: str, folder: Path | None = None) -> HFSpec:
    """The `hf:` spec `text` (without its prefix) names; a bad override or an unknown type: one WeightsError."""
    if not available():
        raise WeightsError(f"model 'hf:{text}' needs transformers: {NEEDS}", about="model")
    source, _, rest = text.partition(":")
    if not source:
        raise WeightsError(
            "model 'hf:': name a hub model (hf:ORG/NAME), a save_pretrained folder (hf:PATH) or a model type "
            "(hf:vit, hf:swin, ...)",
            about="model",
        )
    overrides = _overrides(rest, text, folder) if rest else {}
    path = Path(source).expanduser()
    path = path if path.is_absolute() else (folder or Path.cwd()) / path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightsError(
                f"model 'hf:{source}': the folder has no config.json; give a folder save_pretrained wrote",
                about="model",
            )
        hf = HFSpec("folder", str(path.resolve()), overrides)
        _config(hf)  # an unknown key or a config transformers cannot read is refused now, before any work
        return hf
    from transformers import CONFIG_MAPPING

    if source in CONFIG_MAPPING:
        _config(HFSpec("type", source, overrides))  # an unknown key is refused now, before any work
        return HFSpec("type", source, overrides)
    if "/" not in source and source.count(".") == 0:
        from ..errors import unknown_name

        raise WeightsError(
            unknown_name("Hugging Face model type", source, list(CONFIG_MAPPING.keys()))
            + "; or give a hub name hf:ORG/NAME or a save_pretrained folder hf:PATH",
            about="model",
        )
    return HFSpec("hub", source, overrides)


def _overrides(text: str, spec: str, folder: Path | None) -> dict:
    """`key=value,key=[1,2],...` (values as JSON, else strings) or the path of a JSON file of an object."""
    if text.endswith(".json") and "=" not in text:
        path = Path(text).expanduser()
        path = path if path.is_absolute() else (folder or Path.cwd()) / path
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise WeightsError(f"model 'hf:{spec}': cannot read {text} as JSON ({e})", about="model") from None
        if not isinstance(found, dict):
            raise WeightsError(f"model 'hf:{spec}': {text} holds no JSON object of config keys", about="model")
        return found
    out = {}
    for item in _split(text):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise WeightsError(
                f"model 'hf:{spec}': config override '{item}' is not key=value; write e.g. "
                "hf:vit:image_size=32,num_hidden_layers=2 or hf:vit:overrides.json",
                about="model",
            )
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _split(text: str) -> list[str]:
    """Comma-separated items, commas inside [...] or {...} kept."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "[{"
        depth -= c in "]}"
        if c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [t for t in [*items, text[start:]] if t]


def _shown(value) -> str:
    return (
        value
        if isinstance(value, str) and "," not in value and value == value.strip()
        else json.dumps(value, separators=(",", ":"))
    )


def _config(hf: HFSpec):
    """The config (the type's defaults, the folder's, the hub's or its cache's) with the overrides; an unknown
    key: one WeightsError naming it."""
    from transformers import AutoConfig

    overrides = {k: v for k, v in hf.overrides.items() if k != _KERNEL}
    try:
        config = AutoConfig.for_model(hf.source) if hf.kind == "type" else _pretrained(AutoConfig, hf.source)
    except Exception as e:  # noqa: BLE001 - no network, no cache, a bad folder: one line
        raise WeightsError(_cannot(hf, e, "the config"), about="model") from None
    unknown = [k for k in overrides if not hasattr(config, k)]
    if unknown:
        from ..errors import unknown_name

        keys = [k for k in config.to_dict() if not k.startswith("_")]
        raise WeightsError(
            unknown_name(f"config key of {type(config).__name__}", unknown[0], keys), about="model"
        ) from None
    for k, v in overrides.items():
        setattr(config, k, v)
    if not getattr(config, "architectures", None):
        config.architectures = []  # an auto class with several model classes for one type takes its first
    return config


def _pretrained(auto, source: str, **kwargs):
    """auto.from_pretrained(source): the cache (or folder) first, so that no network is asked for what is here."""
    try:
        return auto.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        pass
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    hub.setLevel(logging.ERROR)  # its retries' warnings: the error that follows says it in one line
    try:
        return auto.from_pretrained(source, **kwargs)
    finally:
        hub.setLevel(level)


def _cannot(hf: HFSpec, e: Exception, what: str) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    where = {"hub": "from the Hugging Face hub or its cache", "folder": "from its folder", "type": ""}[hf.kind]
    fix = (
        "; connect to the network once (the hub cache keeps it), or give a save_pretrained folder hf:PATH, or a "
        "model type hf:TYPE with weights random"
        if hf.kind == "hub"
        else ""
    )
    return f"cannot load {what} of 'hf:{hf.source}' {where} ({type(e).__name__}: {first}){fix}".replace("  ", " ")


def _auto(config, make) -> tuple[nn.Module, str]:
    """The class the config names (`architectures`: what save_pretrained wrote, e.g. a segmentation model, whose
    head an auto class for classification would drop and replace by a random one), else the first auto class
    (AUTO_CLASSES) that knows the config; and the module `make(class)` gives."""
    import transformers

    named = [getattr(transformers, n, None) for n in getattr(config, "architectures", None) or []]
    named = [c for c in named if isinstance(c, type) and isinstance(config, c.config_class)]
    if named:
        return make(named[0]), "config.architectures"
    for name in AUTO_CLASSES:
        auto = getattr(transformers, name)
        if type(config) not in auto._model_mapping:
            continue
        return make(auto), name
    raise WeightsError(
        f"no vision model class of transformers knows {type(config).__name__} ({', '.join(AUTO_CLASSES)})",
        about="model",
    )


def build(text: str) -> nn.Module:
    """The model `hf:text` names, built from its config with transformers' own random initialization."""
    return _random(parse_hf(text))[0]


def _random(hf: HFSpec) -> tuple[nn.Module, str]:
    config = _config(hf)
    kernel = {_KERNEL: hf.overrides[_KERNEL]} if _KERNEL in hf.overrides else {}
    return _auto(config, lambda cls: _from_config(cls, config, **kernel))


def _from_config(cls, config, **kernel) -> nn.Module:
    """A model of `cls` (an auto class, or the model class a config names) with transformers' random init."""
    return cls.from_config(config, **kernel) if hasattr(cls, "from_config") else cls._from_config(config, **kernel)


def load(text: str, choice: str, seed: int) -> tuple[nn.Module, dict]:
    """(module in eval mode, the fields of its weights.Weights) for `hf:text` with weights `choice`: auto (the
    hub's or the folder's weights) or random (the config's model, transformers' initialization drawn with
    `seed`)."""
    import torch

    hf = parse_hf(text)
    if choice not in ("auto", "random"):
        raise WeightsError(
            f"weights '{choice}' for model '{hf.spec}': a Hugging Face model takes weights auto (the hub's or the "
            "folder's) or random",
            about="weights",
        )
    if choice == "auto" and hf.kind == "type":
        raise WeightsError(
            f"model '{hf.spec}' is a model type: its default config has no weights; use weights random, or a hub "
            "name hf:ORG/NAME or a save_pretrained folder hf:PATH",
            about="weights",
        )
    if choice == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module, auto = _random(hf)
        how = f"random (transformers' init, seed {seed})"
    else:
        config = _config(hf)
        kernel = {_KERNEL: hf.overrides[_KERNEL]} if _KERNEL in hf.overrides else {}

        def pretrained(auto):
            try:
                return _pretrained(auto, hf.source, config=config, **kernel)
            except Exception as e:  # noqa: BLE001
                raise WeightsError(_cannot(hf, e, "the weights"), about="weights") from None

        module, auto = _auto(config, pretrained)
        how = "from the hub or its cache" if hf.kind == "hub" else "from its folder"
    pre, details = preprocessing(hf, module.config)
    cats = categories(module.config)
    details |= {"model_class": f"{auto} -> {type(module).__name__}", "categories_from": "config.id2label"}
    if cats is None:
        details["categories_from"] = "none (config.id2label holds only the default LABEL_i names)"
    source = hf.source if hf.kind != "folder" else Path(hf.source).name
    desc = f"{hf.spec if hf.kind != 'folder' else 'hf:' + source} {how}, as {type(module).__name__} ({auto})"
    name = "hf-random" if choice == "random" else f"hf-{source}"
    kept = source if choice != "random" else None
    info = {"name": name, "description": desc, "preprocess": pre, "categories": cats, "source": kept}
    return module.eval(), info | {"details": details}


def categories(config) -> tuple[str, ...] | None:
    """config.id2label in index order; None where it holds only transformers' defaults (LABEL_0, ...)."""
    labels = getattr(config, "id2label", None) or {}
    names = [labels[k] for k in sorted(labels, key=int)]
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return tuple(names)


def preprocessing(hf: HFSpec, config) -> tuple[Preprocess, dict]:
    """The image processor's mean and std as a Preprocess, and its resize and crop settings in words: the
    folder's or hub's preprocessor_config.json, else (a model type) the default processor class of the type,
    else torchvision's ImageNet statistics, said so."""
    proc, where = _processor(hf, config)
    if proc is None:
        pre = IMAGENET_TORCHVISION
        return pre, {"image_processor": f"none ({where}); torchvision's ImageNet mean and std assumed"}
    normalize = getattr(proc, "do_normalize", True)
    mean = tuple(float(v) for v in proc.image_mean) if normalize else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in proc.image_std) if normalize else (1.0, 1.0, 1.0)
    crop = getattr(proc, "crop_size", None) if getattr(proc, "do_center_crop", False) else None
    settings = {
        "image_processor": f"{type(proc).__name__} ({where})",
        "mean": list(mean),
        "std": list(std),
        "size": _sizes(getattr(proc, "size", None)),
        "resample": _resample(getattr(proc, "resample", None)),
        "center_crop": _sizes(crop),
    }
    if "crop_pct" in vars(proc) and getattr(proc, "crop_pct", None) is not None:
        settings["crop_pct"] = float(proc.crop_pct)
    name = f"hf {type(proc).__name__} (RGB, 0-1, mean/std)"
    return Preprocess(name, mean, std), settings


def _processor(hf: HFSpec, config):
    """The image processor and where it came from, or (None, why)."""
    import transformers

    if hf.kind != "type":
        try:
            return _pretrained(transformers.AutoImageProcessor, hf.source), "preprocessor_config.json"
        except Exception:  # noqa: BLE001 - a folder saved without its processor, no network: the type's defaults
            pass
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(config.model_type)
    if isinstance(names, dict):
        names = names.get("torchvision") or names.get("pil") or next(iter(names.values()), None)
    names = [names] if isinstance(names, str) else list(names or [])
    for name in names:
        cls = getattr(transformers, name, None) if name else None
        if cls is None:
            continue
        try:
            return cls(), f"the defaults of {config.model_type}'s processor class"
        except Exception:  # noqa: BLE001 - a processor that needs more than its defaults
            continue
    return None, f"transformers names no image processor for model type '{config.model_type}'"


def _sizes(size) -> dict | int | None:
    """A processor's size or crop_size ({"height": 224, "width": 224}, {"shortest_edge": 256}) as plain JSON."""
    if size is None or isinstance(size, int):
        return size
    items = size.items() if hasattr(size, "items") else vars(size).items()
    return {k: v for k, v in items if v is not None}


def _resample(resample) -> str | None:
    """PIL's resampling filter by its name (bilinear, bicubic, ...), however the processor stores it."""
    if resample is None:
        return None
    try:
        from PIL import Image

        return Image.Resampling(int(resample)).name.lower()
    except (ValueError, TypeError):
        return str(getattr(resample, "name", resample)).lower()
