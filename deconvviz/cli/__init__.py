"""The command line, a thin shell: parses, calls the public API and writes files (`_app` holds the typer app;
the commands are by family in `_figures`, `_scan` and `_info`, their options in `_options`)."""

from ._app import app, main

__all__ = ["app", "main"]
