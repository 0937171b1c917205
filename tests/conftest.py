import os
import subprocess
import sys

import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from deconvviz.cli import app
from deconvviz.images import DEFAULT_IMAGE
from deconvviz.networks.network import load_network


def pytest_collection_modifyitems(items):
    """A test on a browser page is a `browser` test, one on a torchrun scan a `torchrun` test (markers in
    pyproject.toml): `pytest -m "not slow and not browser and not torchrun"` is the quick local loop."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & {"browser", "tab"}:
            item.add_marker(pytest.mark.browser)
        if "resnet_scans" in used:
            item.add_marker(pytest.mark.torchrun)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Converted weights go to a cache of the test session, never the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DECONVVIZ_CACHE", str(tmp_path_factory.mktemp("deconvviz-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): small
    models on small inputs are faster so, and far faster on a machine shared with others."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def random_vgg11():
    """VGG11 with deconvviz's seeded random weights, on the CPU: the scans' network (built once, never changed)."""
    return load_network("vgg11", "random", "cpu", verbose=False)


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
def factory_file(tmp_path):
    """factory_file(source, "nets.py", attr="build"): writes a factory's source into the test's folder and returns
    its --model spec, path/to/nets.py:build."""

    def write(source: str, name: str, attr: str = "build") -> str:
        path = tmp_path / name
        path.write_text(source)
        return f"{path}:{attr}"

    return write


@pytest.fixture()
def residual_factory(factory_file):
    """The spec of a factory file with a small residual network: path/to/file.py:build."""
    return factory_file(RESIDUAL_NETS, "residual_nets.py")


RESNET_MODEL = ["--model", "torchvision:resnet18", "--weights", "random", "--size", "48", "--device", "cpu"]
RESNET_SCAN = ["--layers", "layer1,layer2", "--channels", "3,5", "--batch-size", "3", "--top", "3", "--workers", "0"]


@pytest.fixture(scope="session")
def resnet_scans(tmp_path_factory):
    """A scan of a torchvision resnet18 with random weights (a network that is not a chain) over eight small
    photos, twice: in one process and under torchrun with two (with the reference's thread count: torchrun's
    default is one). Returns (one process, torchrun) run directories; the torchrun one carries its site."""
    root = tmp_path_factory.mktemp("resnet-scan")
    photos = root / "photos"
    photos.mkdir()
    src = Image.open(DEFAULT_IMAGE).convert("RGB")  # 448x448
    for i, (left, top, side) in enumerate([(0, 0, 300), (100, 50, 250), (148, 148, 300), (50, 200, 200)] * 2):
        img = src.crop((left, top, left + side, top + side)).resize((56, 56))
        (ImageOps.mirror(img) if i >= 4 else img).save(photos / f"img{i}.jpg")
    one, two = root / "one", root / "torchrun"
    scan = [sys.executable, "-m", "deconvviz", "scan", str(photos), *RESNET_MODEL, *RESNET_SCAN, "-q"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    for cmd in ([*scan, "--out", str(one)], [*torchrun, *scan[1:], "--out", str(two)]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=threads)
        assert r.returncode == 0, r.stderr[-3000:]
    return one, two


@pytest.fixture()
def scan_matches_the_api(random_vgg11, tmp_path):
    """scan(**option): a scan of three crops of the built-in photo (conv3_1, map 5, 64 px) with one option (rule=...
    or unpool=...) that its report records, and whose kept projection equals the API's at the same position.
    Returns the scan's arguments, for another run into the same folder."""
    import json

    from oracle import rel_err

    from deconvviz import Deconvnet
    from deconvviz.analysis.scan import load_result, scan_folder
    from deconvviz.images import DEFAULT_IMAGE, load_image, to_batch
    from deconvviz.networks.weights import load_vgg

    def scan(**option):
        (name, value), photos = next(iter(option.items())), tmp_path / "photos"
        photos.mkdir()
        img = load_image(DEFAULT_IMAGE)
        for i in range(3):
            img.crop((40 * i, 0, 40 * i + 300, 300)).save(photos / f"p{i}.png")
        args = dict(top=2, channels=[5], size=64, network=random_vgg11, batch_size=2, workers=0, verbose=False)
        res = scan_folder(photos, ["conv3_1"], tmp_path / "run", **args, **option)
        assert json.loads((tmp_path / "run" / "report.json").read_text())["arguments"][name] == value
        again = load_result(tmp_path / "run")
        assert getattr(again.arguments, name) == value
        rec = res.layers["conv3_1"][5].records[0]
        model, w = load_vgg("vgg11", "random", device="cpu", verbose=False)  # a model of its own, as a user's
        x = to_batch(load_image(photos / rec.image), w.preprocess, 64)
        pos = torch.tensor([[rec.row * 16 + rec.col]])  # conv3_1 of a 64 input: 16x16
        want = Deconvnet(model, **option).project(x, "conv3_1", channels=[5], positions=pos)
        assert rel_err(again.layers["conv3_1"][5].projections[0], want.images[0, 0]) <= 1e-5
        return photos, args

    return scan
