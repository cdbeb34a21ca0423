"""lib.stats: the pooled chi-square test against scipy and a hand computation."""

import numpy as np
import pytest
from scipy.stats import chi2, chisquare

from lib.stats import pooled_chisquare_pvalue


def test_without_small_cells_it_is_scipys_chisquare():
    counts = np.array([18, 22, 30, 30])
    probs = np.array([0.2, 0.2, 0.3, 0.3])
    assert pooled_chisquare_pvalue(counts, probs) == pytest.approx(chisquare(counts, probs * 100).pvalue)


def test_small_cells_are_pooled_by_hand():
    counts = np.array([50, 45, 3, 2])
    probs = np.array([0.5, 0.46, 0.02, 0.02])  # expected 50, 46, 2, 2: the last two pool into 4
    statistic = (50 - 50) ** 2 / 50 + (45 - 46) ** 2 / 46 + (5 - 4) ** 2 / 4
    assert pooled_chisquare_pvalue(counts, probs) == pytest.approx(chi2.sf(statistic, df=2))


def test_probabilities_are_normalised_and_samples_from_the_law_pass():
    rng = np.random.default_rng(0)
    probs = np.array([5.0, 3.0, 1.0, 0.5, 0.01])
    counts = np.bincount(rng.choice(5, 2000, p=probs / probs.sum()), minlength=5)
    assert pooled_chisquare_pvalue(counts, probs) > 0.01
    assert pooled_chisquare_pvalue(counts, probs[::-1]) < 1e-6


@pytest.mark.parametrize(("counts", "probs"), [([1, 2], [0.5]), ([[1, 2]], [[0.5, 0.5]]), ([1, -1], [0.5, 0.5]),
                                               ([0, 0], [0.5, 0.5]), ([1], [1.0])])
def test_bad_input_is_rejected(counts, probs):
    with pytest.raises(ValueError, match="counts and probs must"):
        pooled_chisquare_pvalue(np.array(counts), np.array(probs))
