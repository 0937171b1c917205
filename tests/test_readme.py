"""The README's Python examples run as written; its Quick start's test command is CI's and does what it says."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import torch


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    code = next(b for b in blocks if "Deconvnet(model)" in b)  # the Python API's first example
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = scope["out"]
    assert out.images.shape == (1, 2, 3, 224, 224) and len(out.stages) == 9
    assert scope["picture"].shape == (224, 224, 3) and 0 <= scope["picture"].min() <= scope["picture"].max() <= 1
    assert torch.equal(out.selections.channels, torch.tensor([[3, 17]]))


def test_docs_region_example_runs_and_picks_the_bicycle_map(tmp_path, monkeypatch):
    text = (Path(__file__).parents[1] / "docs" / "selection.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "named_regions" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["bike"].selections.channels.tolist() == [[348]]  # as the README's table says
    cols = scope["right"].selections.rows_cols[0, :, 1]
    assert bool((cols * 16 + 8 >= 112).all())  # field centres in the right half
    assert scope["point"].selections.rows_cols[0].tolist() == [[5, 9]] * 3  # centres 16 i + 8 nearest (150.5, 90.5)


def _quick_start() -> list[str]:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Quick start\n\n(?:<!-- not run: .*? -->\n)?```sh\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quick_start_has_two_commands_and_ci_runs_the_second():
    commands = _quick_start()
    assert len(commands) == 2 and commands[1].endswith("bash scripts/test.sh")
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line.startswith("python3 -m venv")] == [commands[1]] and ci[-1] == commands[1]


def test_the_test_command_pins_torch_and_the_package_caps_nothing():
    """The pins are the test environment's (a constraints file the test command uses), not every user's."""
    root = Path(__file__).parents[1]
    constraints = re.search(r" -c (\S+) ", _quick_start()[1]).group(1)
    pins = dict(re.findall(r"^([a-z]+)==(\S+)$", (root / constraints).read_text(), re.M))
    assert set(pins) >= {"torch", "torchvision"}
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {re.match(r"[A-Za-z0-9_.-]+", d).group(0): d for d in dependencies}
    for name in ("torch", "torchvision"):
        assert re.fullmatch(rf"{name}>=[0-9.]+", bounds[name]), bounds[name]  # a lower bound only


FAKE = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$LOG"
case "$(basename "$0") $1" in
    "apt-get install") printf '#!/bin/sh\\n' > "$CHROMIUM" && chmod +x "$CHROMIUM" ;;
    "sudo "*) LOG=/dev/null "$@" ;;  # the command it runs is logged as sudo's
    "id "*) echo "$UID_SEEN" ;;
esac
"""


@pytest.mark.parametrize(
    "uid, prefix", [("0", []), ("1000", ["sudo apt-get update -q", "sudo apt-get install -y -q chromium"])]
)
def test_the_test_script_installs_chromium_when_missing_then_lints_and_runs_pytest(tmp_path, uid, prefix):
    """scripts/test.sh with fake apt-get, sudo, id, ruff and python on PATH, logging each call in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("apt-get", "sudo", "id", "ruff", "python"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod(0o755)
    log, browser = tmp_path / "calls.log", tmp_path / "chromium"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "CHROMIUM": str(browser), "UID_SEEN": uid}
    script = Path(__file__).parents[1] / "scripts" / "test.sh"
    r = subprocess.run(["bash", str(script), "-x", "-q"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    install = prefix or ["apt-get update -q", "apt-get install -y -q chromium"]
    tail = ["ruff check .", "ruff format --check .", "python -m pytest -n auto --dist loadfile --durations=25 -x -q"]
    assert log.read_text().splitlines() == ["id -u", *install, *tail]
    assert f"no browser at {browser}; installing Debian's chromium" in r.stderr
    log.unlink()  # a second run with the browser present installs nothing
    assert subprocess.run(["bash", str(script)], env=env, capture_output=True).returncode == 0
    pytest = "python -m pytest -n auto --dist loadfile --durations=25"
    assert log.read_text().splitlines() == ["ruff check .", "ruff format --check .", pytest]
