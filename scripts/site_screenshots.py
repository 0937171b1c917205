"""Screenshots of a deconvviz site in Chromium (Playwright): its index, a layer page and a unit page.

    python scripts/site_screenshots.py SITE LAYER UNIT --prefix figures/site  # figures/site-{index,layer,unit}.png

Needs `pip install playwright` and a Chromium (Debian: apt-get install chromium; or CHROMIUM=/path/to/chrome).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("site", type=Path)
    p.add_argument("layer")
    p.add_argument("unit", type=int)
    p.add_argument("--prefix", default="figures/site")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=860)
    a = p.parse_args()
    pages = {
        "index": a.site / "index.html",
        "layer": a.site / a.layer / "index.html",
        "unit": a.site / a.layer / f"unit-{a.unit}.html",
    }
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
        page = browser.new_page(viewport={"width": a.width, "height": a.height})
        for name, path in pages.items():
            page.goto(path.resolve().as_uri())
            page.evaluate("for (const i of document.images) i.loading = 'eager'")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)")
            target = Path(f"{a.prefix}-{name}.png")
            page.screenshot(path=target, full_page=name == "unit")  # the unit page whole, stages included
            print(f"wrote {target}")
        browser.close()


if __name__ == "__main__":
    main()
