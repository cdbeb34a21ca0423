"""The book's one plot style: colour-blind-safe colours, labelled axes, figures sized for a book column."""

import matplotlib as mpl

# Okabe & Ito (2008): distinguishable under the common forms of colour blindness.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

BOOK_RC = {
    "figure.figsize": (7.5, 3.2),
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
    "savefig.bbox": "tight",  # frames keep their axis labels even when a render turns layout off
}


def apply_book_style() -> None:
    """Set matplotlib's rcParams to the book's house style (idempotent)."""
    mpl.rcParams.update(BOOK_RC)
