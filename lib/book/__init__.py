"""What every chapter shares: the explorer widget, claim checks, the plot style, seeding, source display.

Importing ``lib.book`` applies the book's plot style once, and (inside IPython) shows numpy scalars as plain
numbers, so that glued numbers format.
"""

from lib.book.claims import ClaimMismatch, claim
from lib.book.display import show_numpy_scalars_plainly
from lib.book.explorers import explorer
from lib.book.seeding import seed_everything
from lib.book.source import show_source
from lib.book.style import apply_book_style

apply_book_style()
show_numpy_scalars_plainly()

__all__ = ["ClaimMismatch", "apply_book_style", "claim", "explorer", "seed_everything", "show_source"]
