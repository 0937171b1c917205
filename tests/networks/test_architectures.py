"""Model specs: VGG names, torchvision and timm names, module:factory and file.py:factory."""

import os

import pytest
import torchvision
from torch import nn

from deconvviz.errors import WeightsError
from deconvviz.networks.architectures import NAMED, parse


def test_specs_are_canonical():
    assert parse("vgg16").spec == parse("torchvision:vgg16").spec == "vgg16"
    assert parse("vgg16").kind == "vgg"
    assert parse("resnet50").spec == parse("torchvision:resnet50").spec == "torchvision:resnet50"


def test_a_torchvision_name_builds_torchvisions_model():
    model = parse("torchvision:resnet18").build()
    assert type(model) is torchvision.models.ResNet and model.fc.out_features == 1000


def test_a_factory_file_and_a_module_factory(residual_factory, tmp_path, monkeypatch):
    arch = parse(residual_factory)
    assert arch.kind == "factory" and type(arch.build()).__name__ == "Small"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert type(parse("residual_nets:build").build()).__name__ == "Small"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resnt50", "unknown architecture model 'resnt50'; did you mean 'resnet50'"),
        ("torchvision:resnet5", "unknown torchvision model 'resnet5'"),
        ("no_such_module_for_deconvviz:build", "cannot import no_such_module_for_deconvviz (ModuleNotFoundError"),
        ("missing/nets.py:build", "no file missing/nets.py"),
        ("FILE:nope", "has no callable 'nope'"),
        ("FILE:not_a_module", "the factory returned a str, not a torch nn.Module"),
        ("FILE:build-it", "'build-it' is not a Python name"),
    ],
)
def test_a_bad_spec_is_one_line(residual_factory, spec, message):
    spec = spec.replace("FILE", residual_factory.rpartition(":")[0])
    with pytest.raises(WeightsError) as error:
        parse(spec).build()
    assert message in str(error.value) and "\n" not in str(error.value) and error.value.about == "model"


@pytest.mark.parametrize(
    "spec, what",
    [
        ("os:fork", "'fork' is a built-in function"),
        ("os:getpid", "'getpid' is a built-in function"),
        ("builtins:print", "'print' is a built-in function"),
        ("builtins:int", "'int' is a class built in C (int)"),
        ("operator:itemgetter", "'itemgetter' is a class built in C (itemgetter)"),
        ("torch:zeros", "'zeros' is a built-in function"),
        ("FILE:an_object", "'an_object' is a Builder object"),
        ("FILE:partial_print", "'partial_print' is a built-in function"),
    ],
)
def test_only_python_functions_and_classes_are_factories(residual_factory, capfd, spec, what):
    """Refused in parse, before anything is called: os:fork would fork, os:getpid return an int."""
    path = residual_factory.rpartition(":")[0]
    with open(path, "a") as f:
        f.write(EXTRA_FACTORIES)
    pid = os.getpid()
    with pytest.raises(WeightsError) as error:
        parse(spec.replace("FILE", path))
    message = str(error.value)
    assert what in message and "not a Python function or class" in message and "\n" not in message
    assert os.getpid() == pid and capfd.readouterr() == ("", "")  # not forked, nothing printed


EXTRA_FACTORIES = """

import functools


class Builder:
    def __call__(self):
        return Small()


an_object = Builder()
partial_print = functools.partial(print, "built")
partial_small = functools.partial(Small, classes=3)
small_class = Small
bound = Builder().__call__
"""


@pytest.mark.parametrize("attr, classes", [("build", 10), ("partial_small", 3), ("small_class", 10), ("bound", 10)])
def test_a_function_a_class_a_partial_and_a_method_are_factories(residual_factory, attr, classes):
    path = residual_factory.rpartition(":")[0]
    with open(path, "a") as f:
        f.write(EXTRA_FACTORIES)
    model = parse(f"{path}:{attr}").build()
    assert type(model).__name__ == "Small" and model.head[-1].out_features == classes
    assert isinstance(parse("torchvision.models:resnet18").build(), torchvision.models.ResNet)


def test_a_file_that_does_not_import_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("import no_such_module_for_deconvviz\n")
    with pytest.raises(WeightsError, match=r"cannot import .*broken.py \(ModuleNotFoundError: No module named"):
        parse(f"{tmp_path / 'broken.py'}:build")


def test_a_named_architecture_is_one_entry(monkeypatch):
    monkeypatch.setitem(NAMED, "tiny-for-test", lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()))
    arch = parse("tiny-for-test")
    assert arch.kind == "named" and isinstance(arch.build()[0], nn.Conv2d)
