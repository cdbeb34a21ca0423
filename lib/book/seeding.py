"""One call that makes a chapter's randomness repeatable."""

import random

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's ``random``, NumPy's global state and torch, and return a fresh ``numpy`` Generator.

    Library functions take explicit seeds or Generators; this only guards code that draws from global state.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:  # torch is optional for chapters that do not use it
        pass
    else:
        torch.manual_seed(seed)
    return np.random.default_rng(seed)
