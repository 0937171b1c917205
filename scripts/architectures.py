"""Every torchvision classification architecture x rule: projects, or refused naming the op and where.

    python scripts/architectures.py [--only resnet18,vit_b_16] [--no-write] [--page docs/rules.md]

Builds each model of torchvision.models.list_models(module=torchvision.models) with random weights (seeded),
projects channel 0 of its last module (mode max) from a small input under each rule, and writes the table
between the architectures markers of docs/rules.md (or --page; unless --no-write). ViTs get image_size twice
their patch; a model that cannot run on 64 px is tried at 224.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

import deconvviz
from deconvviz.engine.rules import RULES

PAGE = Path(__file__).resolve().parent.parent / "docs" / "rules.md"
START, END = "<!-- architectures:start -->", "<!-- architectures:end -->"


def build(name: str) -> tuple[torch.nn.Module, int]:
    """The model with random weights, and the input side it takes."""
    torch.manual_seed(0)
    if name.startswith("vit_"):
        patch = int(re.search(r"_(\d+)$", name)[1])
        return torchvision.models.get_model(name, weights=None, image_size=2 * patch).eval(), 2 * patch
    return torchvision.models.get_model(name, weights=None).eval(), 64


def refusal(message: str) -> str:
    """The op and the module path from a refusal's one line."""
    m = re.search(r"through (.+?): (.+?);", message)
    if not m:
        return message.split(";")[0]
    where, why = re.sub(r" \([^)]*\)$", "", m[1].strip("'")), m[2]
    op = why.split(",")[0].removeprefix("it ") if why.startswith("it ") else why.split(" has no")[0]
    return f"{op} at `{where}`"


def attempt(model: torch.nn.Module, side: int, layer: str, rule: str) -> tuple[str, dict, int]:
    """('projects' or 'refused: ...', conventions used, side) for one rule."""
    for size in dict.fromkeys((side, 224)):
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        try:
            out = deconvviz.Deconvnet(model, rule=rule).project(x, layer, channels=[0], mode="max")
            return "projects", out.conventions, size
        except deconvviz.ImageError:
            continue
        except deconvviz.DeconvvizError as e:
            return f"refused: {refusal(str(e))}", {}, size
    return "cannot run at 64 or 224 px", {}, side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated architecture names")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave the page as it is")
    ap.add_argument("--page", type=Path, default=PAGE, help="the Markdown page whose markers get the table")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small inputs: threads cost more than they give, and far more on a busy machine
    names = torchvision.models.list_models(module=torchvision.models)
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    rows = [
        "| architecture | input | " + " | ".join(f"`{r}`" for r in RULES) + " | conventions (deconvnet) |",
        "| --- | --- | " + " | ".join("---" for _ in RULES) + " | --- |",
    ]
    for name in names:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, side = build(name)
            layer = [n for n, _ in model.named_modules() if n][-1]
            cells, used = [], set()
            for rule in RULES:
                cell, conventions, side = attempt(model, side, layer, rule)
                cells.append(cell)
                if rule == "deconvnet":
                    used = {c.split(" (")[0] for v in conventions.values() for c in v.split(", ")}
        rows.append(f"| {name} | {side} px | " + " | ".join(cells) + f" | {', '.join(sorted(used)) or '-'} |")
        print(rows[-1], f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
        del model
    table = "\n".join(rows)
    if args.no_write:
        print(table)
        return
    write_page(args.page, table)
    print(f"wrote {len(names)} architectures into {args.page}", file=sys.stderr)


def write_page(page: Path, table: str) -> None:
    """Put the table between the page's architectures markers."""
    text = page.read_text()
    if START not in text or END not in text:
        sys.exit(f"{page} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    page.write_text(f"{head}{START}\n{table}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    main()
