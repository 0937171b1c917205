"""The command line run in-process for tests (typer's runner); SMALL: a quick random model for CLI paths."""

from __future__ import annotations

from typer.testing import CliRunner

from deconvviz.cli import app

SMALL = ["--model", "vgg11", "--weights", "random", "--size", "64"]
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
