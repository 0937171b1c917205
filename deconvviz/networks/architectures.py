"""Which architecture a spec names, and how to build it: VGG by name, torchvision and timm models, or a factory.

Specs (the conventions of torchvision's get_model, timm's create_model and uvicorn's module:attr):
`vgg16`; `torchvision:resnet50` or `resnet50`; `timm:resnet50d`; `mypkg.nets:build`; `path/to/nets.py:build`;
`hf:ORG/NAME`, `hf:PATH`, `hf:TYPE:key=value,...` (Hugging Face transformers: networks.huggingface).
A registered name (NAMED) builds its own architecture: adding one is one entry.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torchvision
from torch import nn

from ..errors import WeightsError
from .cards import VGG_ARCHITECTURES as VGG_NAMES

# Architectures deconvviz builds itself, by name: {spec: builder returning an nn.Module with fresh weights}.
NAMED: dict[str, Callable[[], nn.Module]] = {}


@dataclass(frozen=True)
class Architecture:
    """A parsed spec: `spec` is its canonical form (what provenance stores), `kind` which builder makes it."""

    spec: str
    kind: str  # "vgg", "torchvision", "timm", "factory", "named" or "hf"
    name: str  # the torchvision/timm name, the factory's "module:attr", or the registered name

    def build(self) -> nn.Module:
        """The module with its builder's own (random) initialization, on the current default device."""
        return _BUILDERS[self.kind](self.name)


def parse(spec: str) -> Architecture:
    """The architecture a spec names; an unknown name or a factory that cannot be found: one WeightsError."""
    spec = spec.strip()
    if spec.startswith("hf:"):  # Hugging Face: hf:ORG/NAME, hf:PATH, hf:TYPE, each with :overrides
        from .huggingface import parse_hf

        hf = parse_hf(spec[3:])
        return Architecture(hf.spec, "hf", hf.spec[3:])
    if spec in NAMED:
        return Architecture(spec, "named", spec)
    prefix, _, rest = spec.rpartition(":") if ":" in spec else ("", "", spec)
    if prefix in ("", "torchvision") and rest in VGG_NAMES:
        return Architecture(rest, "vgg", rest)
    if prefix == "timm":
        if importlib.util.find_spec("timm") is None:
            raise WeightsError(f"model '{spec}' needs timm: pip install 'deconvviz[timm]'", about="model")
        return Architecture(spec, "timm", rest)
    if prefix == "torchvision" or (not prefix and rest in _torchvision_names()):
        if rest not in _torchvision_names():
            raise WeightsError(_unknown(rest, _torchvision_names(), "torchvision"), about="model")
        return Architecture(f"torchvision:{rest}", "torchvision", rest)
    if prefix and rest.isidentifier():
        _factory(f"{prefix}:{rest}")  # imports now, so that a factory that cannot be found fails before any work
        return Architecture(spec, "factory", spec)
    if prefix:
        raise WeightsError(
            f"model '{spec}': '{rest}' is not a Python name; give module:factory or file.py:factory", about="model"
        )
    raise WeightsError(
        _unknown(spec, [*VGG_NAMES, *NAMED, *_torchvision_names()], "architecture") + _FORMS, about="model"
    )


def located(spec: str, folder: Path | None = None) -> str:
    """The spec with a factory file's path made absolute (a relative one taken from `folder`, default the
    working folder), so that a run directory or a card rebuilds it from anywhere."""
    where, _, attr = spec.rpartition(":")
    if not where.endswith(".py"):
        return spec
    path = Path(where).expanduser()
    return f"{((folder or Path.cwd()) / path).resolve()}:{attr}"


_FORMS = "; or torchvision:NAME, timm:NAME, hf:ORG/NAME, hf:TYPE, package.module:factory, path/to/file.py:factory"


def _unknown(name: str, valid: list[str], kind: str) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} model '{name}'{hint} (torchvision.models.list_models() lists torchvision's)"


def _torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models) + segmentation_names()


def segmentation_names() -> list[str]:
    """torchvision's semantic segmentation models (FCN, DeepLabV3, LR-ASPP), which return {"out": (N, 21, H, W),
    ...} at the input's size; their own weights are COCO's with the 21 VOC classes."""
    return torchvision.models.list_models(module=torchvision.models.segmentation)


def _torchvision(name: str) -> nn.Module:
    if name in segmentation_names():  # random, with no backbone weights (no download); FCN and DeepLabV3 with
        # their auxiliary head, as their own weights have it ({"out", "aux"})
        aux = {} if name.startswith("lraspp") else {"aux_loss": True}
        return torchvision.models.get_model(name, weights=None, weights_backbone=None, **aux)
    return torchvision.models.get_model(name)


def _timm(name: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise WeightsError(f"model 'timm:{name}' needs timm: pip install 'deconvviz[timm]'", about="model") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise WeightsError(f"unknown timm model '{name}'{hint} (see timm.list_models())", about="model")
    return timm.create_model(name, pretrained=False)


def _factory(target: str) -> Callable[[], object]:
    """The callable `module:attr` or `file.py:attr` names, imported (a file by its path, as its own module)."""
    where, _, attr = target.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise WeightsError(f"model '{target}': no file {where}; give path/to/file.py:factory", about="model")
            name = f"deconvviz_factory_{abs(hash(str(path)))}"
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            module = importlib.import_module(where)
    except WeightsError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - whatever the user's file raises on import, in one line
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(
            f"model '{target}': cannot import {where} ({type(e).__name__}: {first})", about="model"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise WeightsError(f"model '{target}': {where} has no callable '{attr}'; give module:factory", about="model")
    refused = _not_python_code(factory)
    if refused:
        raise WeightsError(
            f"model '{target}': '{attr}' is {refused}, not a Python function or class; give module:factory "
            "naming a function or an nn.Module class that returns the model",
            about="model",
        )
    return factory


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: not a static C type (int, OrderedDict)


def _python_class(cls: type) -> bool:
    """An nn.Module subclass, or a class whose own or inherited methods include Python code (a C extension's
    heap types, such as operator.itemgetter, hold none)."""
    if not cls.__flags__ & _HEAP_TYPE:
        return False
    code = (types.FunctionType, classmethod, staticmethod, property)
    return issubclass(cls, nn.Module) or any(isinstance(v, code) for k in cls.__mro__ for v in vars(k).values())


def _not_python_code(factory: object) -> str | None:
    """What `factory` is when it is not a Python function, a Python class (an nn.Module subclass, usually), or a
    functools.partial or bound method of one (os:fork, os:getpid, builtins:print are refused before a call)."""
    if isinstance(factory, functools.partial):
        return _not_python_code(factory.func)
    if isinstance(factory, types.MethodType):
        return _not_python_code(factory.__func__)
    if isinstance(factory, types.FunctionType):
        return None
    if isinstance(factory, type):
        return None if _python_class(factory) else f"a class built in C ({factory.__name__})"
    if isinstance(factory, types.BuiltinFunctionType | types.BuiltinMethodType):
        return "a built-in function"
    return f"a {type(factory).__name__} object"


def _from_factory(target: str) -> nn.Module:
    try:
        module = _factory(target)()
    except WeightsError:
        raise
    except (SystemExit, KeyboardInterrupt) as e:  # user code that ends the program: said, never a silent exit 0
        raise WeightsError(
            f"model '{target}': the factory raised {type(e).__name__}({e}) instead of returning a model", about="model"
        ) from None
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsError(
            f"model '{target}': the factory failed ({type(e).__name__}: {first})", about="model"
        ) from None
    if not isinstance(module, nn.Module):
        raise WeightsError(
            f"model '{target}': the factory returned a {type(module).__name__}, not a torch nn.Module", about="model"
        )
    return module


def _hf(name: str) -> nn.Module:
    from .huggingface import build

    return build(name)


_BUILDERS: dict[str, Callable[[str], nn.Module]] = {
    "hf": _hf,
    "vgg": _torchvision,
    "torchvision": _torchvision,
    "timm": _timm,
    "factory": _from_factory,
    "named": lambda name: NAMED[name](),
}
