"""Input checks shared by the library: each raises an error that names the argument and what it allows."""

import numpy as np


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum`` (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive_real(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number > 0 (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_generator(rng: object, name: str = "rng") -> np.random.Generator:
    """Return ``rng`` if it is a ``numpy.random.Generator``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng
