"""Pictures drawn from the engine's and the analyses' results. `figures` holds one function per figure the CLI
writes (`visualize`, `compare`, `sanity`, ...: numbers in, a matplotlib figure and its provenance out) and
`check_request`; `draw` the panels and the files (normalized for display only, never changing a number); `scan`
a scan's figures, composed from tiles (`scan_figures`); `_checks` and `_provenance` what figures checks before
loading weights and records beside each figure.
"""

from . import figures
from .scan import scan_figures

__all__ = ["figures", "scan_figures"]
