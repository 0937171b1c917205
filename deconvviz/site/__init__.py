"""Static websites: a scan's run folder as pages (`scan_site`) and one image explored layer by layer
(`explore_site`), from the Jinja2 templates, CSS and JavaScript in pages/ (`_common`: the folder and the pages both
sites share; `_scan_site` and `_explore_site`: each site's build)."""

from ._explore_site import explore_site
from ._scan_site import scan_site

__all__ = ["explore_site", "scan_site"]
