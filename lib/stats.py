"""Statistical tests shared by the chapters."""

import numpy as np
from scipy.stats import chisquare


def pooled_chisquare_pvalue(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Chi-square goodness-of-fit p-value of observed ``counts`` against category probabilities ``probs``.

    Categories expected fewer than ``min_expected`` times are pooled into one, so that the chi-square
    approximation holds; ``probs`` is normalised first.
    """
    counts = np.asarray(counts, dtype=float)
    probs = np.asarray(probs, dtype=float)
    if counts.ndim != 1 or counts.shape != probs.shape or counts.size < 2:
        raise ValueError(f"counts and probs must be 1-D of the same length >= 2, got {counts.shape}, {probs.shape}")
    if (counts < 0).any() or (probs < 0).any() or probs.sum() <= 0 or counts.sum() <= 0:
        raise ValueError("counts and probs must be non-negative with positive sums")
    expected = probs / probs.sum() * counts.sum()
    small = expected < min_expected
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    if expected[-1] == 0:  # nothing was pooled
        observed, expected = observed[:-1], expected[:-1]
    return float(chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)
