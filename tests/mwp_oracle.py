"""Test-only oracle shared by the word-problem tests: each template's answer as a closed form, written separately
from the templates' expression strings."""

CLOSED_FORMS = {
    "add": lambda a, b: a + b, "sell": lambda a, b: a - b, "boxes": lambda a, b: a * b,
    "share": lambda a, b: a / b, "bus": lambda a, b, c: a - b + c, "discount": lambda a, p: a - a * p / 100,
    "walkers": lambda a, p: a * p / 100, "shopping": lambda a, b, c: c * a + b, "drive": lambda a, b: a * b,
    "savings": lambda a, b, c: c * a - c * b, "taller": lambda a, b: a - b, "orchard": lambda a, b, c: a * b - c,
}
