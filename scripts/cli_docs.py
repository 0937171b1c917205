"""Write docs/cli.md, the CLI reference, from the typer app itself (typer's own Markdown, as `typer ... utils docs`).

python scripts/cli_docs.py            # rewrite docs/cli.md
python scripts/cli_docs.py --check    # exit 1 when docs/cli.md is not what the app gives (tests/test_scripts.py)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import typer
import typer.cli

from deconvviz.cli import app

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def reference() -> str:
    """The Markdown reference of every command and option, at a fixed terminal width (help text wraps alike)."""
    os.environ["COLUMNS"] = "100"
    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="deconvviz")
    body = typer.cli.get_docs_for_click(obj=command, ctx=ctx, name="deconvviz", title="CLI reference")
    note = "<!-- written by scripts/cli_docs.py from the typer app; do not edit by hand -->\n\n"
    return note + body.strip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    text = reference()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            sys.exit(f"{PAGE} is stale: run python scripts/cli_docs.py")
        return
    PAGE.write_text(text)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
