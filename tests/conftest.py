import pytest
from typer.testing import CliRunner

from deconvviz.cli import app


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Converted weights go to a cache of the test session, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DECONVVIZ_CACHE", str(tmp_path_factory.mktemp("deconvviz-cache")))
    yield
    mp.undo()


@pytest.fixture()
def cwd(tmp_path, monkeypatch):
    """A fresh working folder for a command that writes its default outputs there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def runner():
    """typer's runner, for a test that invokes the app itself (its own argument list, its own checks)."""
    return CliRunner()


@pytest.fixture()
def run(runner):
    """The command line run in-process: run("visualize", path, "--top", 3) -> typer's Result."""

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture()
def small():
    """A quick random model for CLI paths: arguments that follow a command."""
    return ["--model", "vgg11", "--weights", "random", "--size", "64"]


RESIDUAL_NETS = '''
"""A small residual network deconvviz has never named, built by a factory (module:factory convention)."""
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(x + self.conv2(self.relu1(self.conv1(x))))


class Small(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block1 = Block(8)
        self.pool = nn.MaxPool2d(2)
        self.block2 = Block(8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x):
        return self.head(self.block2(self.pool(self.block1(self.stem(x)))))


def build():
    return Small()


def not_a_module():
    return "a string"
'''


@pytest.fixture()
def residual_factory(tmp_path):
    """The spec of a factory file with a small residual network: path/to/file.py:build."""
    path = tmp_path / "residual_nets.py"
    path.write_text(RESIDUAL_NETS)
    return f"{path}:build"
