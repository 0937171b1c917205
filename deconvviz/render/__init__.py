"""Pictures drawn from the engine's and the analyses' results. `figures` holds one function per figure the CLI
writes (`visualize`, `compare`, `sanity`, ...: numbers in, a matplotlib figure and its provenance out) and
`check_request`; `draw` the panels and the files (normalized for display only, never changing a number);
`_checks` and `_provenance` what figures checks before loading weights and records beside each figure.
"""

from . import figures

__all__ = ["figures"]
