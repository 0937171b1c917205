"""The CLI's shape: --rule and --unpool choices come from the registries (rules.RULES, reverse.UNPOOLS), its one
progress class draws a status line and bars (nothing under --quiet or off a terminal), and default outputs go
under runs/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

import deconvviz.cli._options as cli_options
from deconvviz.cli import app
from deconvviz.cli._progress import Progress
from deconvviz.engine.reverse import UNPOOLS
from deconvviz.engine.rules import RULES

# A rule the CLI has never heard of (half the signal, unrectified), registered as a new rule's module would
# register it: before the command line is imported. Run in a fresh process, so nothing of it stays behind here.
NEW_RULE = """
import sys
import torch
from deconvviz.engine.rules import RULES, Rule

class HalveRule(Rule):
    name, needs_slope, title = "halve", False, "halve"

    def backward(self, signal: torch.Tensor, slope: torch.Tensor | None) -> torch.Tensor:
        return signal / 2

RULES["halve"] = HalveRule()
from deconvviz.cli import main
sys.argv = ["deconvviz", *sys.argv[1:]]
main()
"""


def test_the_choices_are_the_registries():
    assert [c.value for c in cli_options.RuleChoice] == list(RULES)
    assert [c.value for c in cli_options.UnpoolChoice] == list(UNPOOLS)


def test_a_new_rule_is_a_choice_of_every_command_without_a_cli_edit(tmp_path):
    def cli(*args):
        done = subprocess.run([sys.executable, "-c", NEW_RULE, *args], capture_output=True, text=True)
        return done.returncode, done.stdout + done.stderr

    for command in ("visualize", "scan"):
        code, text = cli(command, "--help")
        assert code == 0 and "halve" in text.split("--rule", 1)[1], (command, text)
    out = tmp_path / "halve.png"
    small = ["--model", "vgg11", "--weights", "random", "--size", "32", "--top", "1", "--layer", "conv2_1"]
    code, text = cli("visualize", *small, "--rule", "halve", "--out", str(out), "-q")
    assert code == 0, text
    assert json.loads(out.with_name(f"{out.name}.provenance.json").read_text())["rule"] == "halve"
    assert "halve" not in RULES and "halve" not in [c.value for c in cli_options.RuleChoice]  # only there
    code, text = cli("visualize", *small, "--rule", "halved", "--out", str(out), "-q")
    assert code == 2 and "'halved' is not one of" in text and "halve" in text, text


def test_progress_draws_a_line_and_bars_on_a_terminal_and_nothing_when_quiet(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    quiet = Progress(quiet=True)
    quiet("loading")
    quiet("scanning", 1, 4)
    assert (quiet._status, quiet._bar) == (None, None)
    shown = Progress(quiet=False, rate="images")
    try:
        shown("loading weights")
        shown("layer conv1_1", 0, 4)
        shown("layer conv1_1", 3, 4)
        shown("layer conv2_1", 1, 2)
        tasks = {t.description: (t.completed, t.total) for t in shown._bar.tasks}
        assert tasks == {"layer conv1_1": (3, 4), "layer conv2_1": (1, 2)} and shown._status is not None
    finally:
        shown.stop()
    per_phase = Progress(quiet=False, rate={"projecting": "images", "drawing": "maps"})
    try:
        for phase in ("projecting conv1_1", "drawing conv1_1"):
            per_phase(phase, 0, 4)
            per_phase(phase, 2, 4)
        assert [t.fields["rate"].split()[-1] for t in per_phase._bar.tasks] == ["images/s", "maps/s"]
    finally:
        per_phase.stop()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    off = Progress(quiet=False)
    off("loading")
    assert off._status is None


def test_default_outputs_go_to_runs_never_over_the_committed_figures():
    """Run at the repository's top, no command's default output lands in figures/ (the README's pictures):
    every --out default is under runs/, which git ignores."""
    root = Path(__file__).parents[2]
    assert cli_options.OUTPUTS == Path("runs") and "runs/" in (root / ".gitignore").read_text().splitlines()
    runner = CliRunner()
    for command in ("visualize", "reconstruct", "occlusion", "compare", "sanity", "ablate", "filters", "invariance"):
        text = " ".join(runner.invoke(app, [command, "--help"], terminal_width=400).output.split())
        assert f"Default: runs/{command}-" in text and "figures/" not in text, (command, text)
    committed = {p.stem.split("-")[0] for p in (root / "figures").glob("*.png")}
    assert committed & {"compare", "sanity", "ablate", "filters", "invariance"}  # the names that used to collide


# The shared flags a command gives another meaning or default, with the number of variants that has: --out names
# each command's own file, the unit commands' --layer defaults differ (pool5, the first conv), layers' --weights
# and --size only decide shapes, occlusion's --class and --channel watch instead of choose, scan's --top counts
# images and explore's maps per layer, compare draws 4 maps by default (a row each, one picture per rule; its
# help says so), and so on.
VARIANTS = {
    "--out": 11,
    "--layer": 3,
    "--layers": 4,
    "--top": 4,
    "--channels": 3,
    "--channel": 2,
    "--class": 2,
    "--weights": 2,
    "--size": 2,
    "--batch-size": 2,
    "--mode": 2,
}


def test_a_shared_flag_means_one_thing_except_where_a_command_says_otherwise():
    """Every flag several commands share has one help text and one default, so each is declared once (an alias
    in cli/_options.py); the exceptions are the variants above, and no more of them than listed."""
    command = typer.main.get_command(app)
    seen: dict[str, dict[tuple, list[str]]] = {}
    for name, sub in command.commands.items():
        for param in sub.params:
            flag = param.opts[0]
            seen.setdefault(flag, {}).setdefault((param.help, repr(param.default)), []).append(name)
    shared = {flag: kinds for flag, kinds in seen.items() if sum(len(c) for c in kinds.values()) > 1}
    assert {"--model", "--weights", "--rule", "--unpool", "--quiet", "--debug", "--region"} <= set(shared)
    for flag, kinds in shared.items():
        assert len(kinds) == VARIANTS.get(flag, 1), (flag, kinds)


def test_options_are_declared_only_in_the_options_module():
    """The commands' modules use the aliases of cli/_options.py; only _app declares one (the app's --version)."""
    folder = Path(__file__).parents[2] / "deconvviz" / "cli"
    for path in folder.glob("*.py"):
        text = path.read_text()
        declared = text.count("typer.Option(") + text.count("typer.Argument(")
        assert declared == 0 or path.name in ("_options.py", "_app.py"), path.name
    assert (folder / "_app.py").read_text().count("typer.Option(") == 1


def test_one_progress_class():
    """The commands show progress with the one class in cli/_progress.py; nothing else in the package draws."""
    package = Path(__file__).parents[2] / "deconvviz"
    drawing = [p for p in package.rglob("*.py") if "rich.progress" in p.read_text() or "rich.console" in p.read_text()]
    assert drawing == [package / "cli" / "_progress.py"]
