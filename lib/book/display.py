"""Plain numbers for numpy scalars in a chapter's outputs.

NumPy 2 shows a scalar as ``np.float64(0.95)``; glue's ``{glue:text}`name:.2f``` then cannot format it, and the
reader sees noise. Inside IPython, numpy scalars are shown as the plain Python numbers they are.
"""

import numpy as np


def _plain_scalar(scalar: np.generic, printer, cycle: bool) -> None:
    printer.text(repr(scalar.item()))


def show_numpy_scalars_plainly() -> None:
    """Register the plain-number formatter with the running IPython shell (nothing outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    formatter = shell.display_formatter.formatters["text/plain"]
    # Every concrete type: IPython already registers a printer for np.float64 itself, which a base class
    # registration would not override.
    for scalar_type in set(np.sctypeDict.values()):
        if issubclass(scalar_type, (np.floating, np.integer, np.bool_)):
            formatter.for_type(scalar_type, _plain_scalar)
