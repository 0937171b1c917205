"""The documentation runs as written: every ```sh and ```python block of README.md and docs/ is executed, in
page order, in one shared working folder; a block that cannot run here says why in the page source
(<!-- not run: reason -->), and a long one is marked <!-- slow -->. The site builds with `mkdocs build --strict`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from deconvviz.cli import app

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:^<!-- (?P<marker>[^\n]*?) -->\n)?^```(?P<lang>sh|python)\n(?P<code>.*?)^```", re.S | re.M)
MARKER = re.compile(r"not run: \S.{9,}|slow")  # a reason of ten characters at least


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def nav_pages(nav) -> list[str]:
    """The pages of mkdocs.yml's nav, in order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return [p for item in nav for p in nav_pages(item)]


def pages() -> list[Path]:
    """README.md, then the docs in nav order, then any page the nav does not list yet."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = [ROOT / "docs" / p for p in nav_pages(config["nav"])]
    rest = sorted(p for p in (ROOT / "docs").rglob("*.md") if p not in listed)
    return [ROOT / "README.md", *listed, *rest]


def blocks() -> list[Block]:
    found = []
    for path in pages():
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start("lang")) + 1
            found.append(Block(str(path.relative_to(ROOT)), line, m["lang"], m["code"], m["marker"]))
    return found


BLOCKS = blocks()


def test_every_marker_is_known_and_every_not_run_says_why():
    assert BLOCKS, "no code blocks found"
    bad = [f"{b.id}: <!-- {b.marker} -->" for b in BLOCKS if b.marker and not MARKER.fullmatch(b.marker)]
    assert not bad, "markers are <!-- slow --> or <!-- not run: REASON -->:\n" + "\n".join(bad)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The folder every block runs in, with the checkout's package data and scripts at hand (the docs' paths),
    and `python`/`deconvviz` on PATH for shell lines that are not a deconvviz command."""
    work = tmp_path_factory.mktemp("docs")
    for name in ("deconvviz", "scripts"):
        (work / name).symlink_to(ROOT / name)
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "deconvviz").write_text(f'#!/bin/sh\nexec {sys.executable} -m deconvviz "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    work.joinpath(".bin").symlink_to(bin_dir)
    return work


def shell_env(work: Path) -> dict[str, str]:
    path = f"{work / '.bin'}:{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "PWD": str(work)}


def commands(code: str) -> list[str]:
    """The block's commands: a heredoc with the rest of its line as one, every other line split on '&&'; a line
    ending in a backslash continues on the next, as in the shell."""
    out, lines = [], iter(re.sub(r"\\\n\s*", " ", code).splitlines())
    for line in lines:
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            body = [line]
            for more in lines:
                body.append(more)
                if more == heredoc[1]:
                    break
            out.append("\n".join(body))
        elif line.strip():
            out.extend(part.strip() for part in line.split(" && "))
    return out


def run_command(command: str, work: Path) -> None:
    """A deconvviz command in-process (typer's runner, its environment assignments applied), anything else
    through bash."""
    env = shell_env(work)
    words = [] if "<<" in command else shlex.split(command, comments=True)
    assignments = {}
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        assignments[key] = os.path.expandvars(value.replace("$PWD", str(work)))
    if words and words[0] == "deconvviz":
        r = CliRunner().invoke(app, words[1:], env=assignments, catch_exceptions=False)
        assert r.exit_code == 0, f"{command}\nexit {r.exit_code}: {r.output}"
        return
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{command}\nexit {r.returncode}: {r.stdout}{r.stderr}"


RUN = [
    pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.marker == "slow" else [])
    for b in BLOCKS
    if not (b.marker or "").startswith("not run")
]


@pytest.mark.parametrize("block", RUN)
def test_block_runs(block: Block, workspace: Path, monkeypatch):
    monkeypatch.chdir(workspace)
    if block.lang == "python":
        exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})
        return
    for command in commands(block.code):
        run_command(command, workspace)


def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning: every page in the nav, every link and reference resolved."""
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "site" / "reference" / "index.html").is_file()
