"""What every chapter shares: the explorer widget, claim checks, the plot style, seeding, source display.

Importing ``lib.book`` applies the book's plot style once.
"""

from lib.book.claims import ClaimMismatch, claim
from lib.book.explorers import explorer
from lib.book.seeding import seed_everything
from lib.book.source import show_source
from lib.book.style import apply_book_style

apply_book_style()

__all__ = ["ClaimMismatch", "apply_book_style", "claim", "explorer", "seed_everything", "show_source"]
