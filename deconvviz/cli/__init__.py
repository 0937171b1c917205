"""The command line, a thin shell: parses, calls the public API and writes files (`_app` holds the commands)."""

from ._app import app, main

__all__ = ["app", "main"]
