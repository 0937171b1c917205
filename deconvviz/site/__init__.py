"""Static websites: a scan's run folder as pages (`scan_site`) and one image explored layer by layer
(`explore_site`), from the Jinja2 templates, CSS and JavaScript in pages/ (`_build` is the machinery)."""

from ._build import explore_site, scan_site

__all__ = ["explore_site", "scan_site"]
