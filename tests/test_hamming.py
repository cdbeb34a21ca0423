"""Tests for lib.hamming against independent oracles: a plain-Python double loop, rapidfuzz's Hamming distance
for single windows, str.find for exact occurrences, scipy's direct correlation per character, brute-force
pair counting for the cost model and the sumset, and the hashing estimator's one-sided guarantee."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Hamming
from scipy.signal import correlate

from lib.hamming import (
    abrahamson_cost,
    abrahamson_threshold,
    hamming_abrahamson,
    hamming_approx_hashing,
    hamming_fft,
    hamming_hashed,
    hamming_naive,
    match_counts_fft,
    match_counts_sparse,
    sumset_counts,
)


def distances_by_loops(text, pattern) -> list[int]:
    """The definition, written out: mismatches of the pattern against every window of the text."""
    m = len(pattern)
    return [sum(text[i + j] != pattern[j] for j in range(m)) for i in range(len(text) - m + 1)]


def random_instance(rng: np.random.Generator, n: int, m: int, sigma: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, sigma, n), rng.integers(0, sigma, m)


@st.composite
def texts_and_patterns(draw, max_n: int = 60):
    sigma = draw(st.integers(1, 12))
    text = draw(st.lists(st.integers(0, sigma - 1), min_size=1, max_size=max_n))
    m = draw(st.integers(1, len(text)))
    pattern = draw(st.lists(st.integers(0, sigma - 1), min_size=m, max_size=m))
    return np.array(text), np.array(pattern)


EXACT_METHODS = {
    "naive": hamming_naive,
    "fft": hamming_fft,
    "abrahamson default t": hamming_abrahamson,
    "abrahamson t=1": lambda t, p: hamming_abrahamson(t, p, threshold=1),
    "abrahamson t=3": lambda t, p: hamming_abrahamson(t, p, threshold=3),
    "abrahamson t=n": lambda t, p: hamming_abrahamson(t, p, threshold=len(t)),
    "hashed 1 bucket": lambda t, p: hamming_hashed(t, p, 1, np.random.default_rng(0)),
    "hashed 3 buckets": lambda t, p: hamming_hashed(t, p, 3, np.random.default_rng(1)),
    "hashed 50 buckets": lambda t, p: hamming_hashed(t, p, 50, np.random.default_rng(2)),
}


@pytest.mark.parametrize("method", EXACT_METHODS)
@settings(max_examples=60, deadline=None)
@given(instance=texts_and_patterns())
def test_every_exact_method_matches_the_definition(method, instance):
    text, pattern = instance
    distances = EXACT_METHODS[method](text, pattern)
    assert distances.dtype == np.int64
    assert distances.tolist() == distances_by_loops(text.tolist(), pattern.tolist())


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_exact_methods_agree_with_rapidfuzz_on_strings(method):
    rng = np.random.default_rng(5)
    text = "".join(rng.choice(list("ACGTé∑"), 300))
    pattern = text[40:75]
    distances = EXACT_METHODS[method](text, pattern)
    m = len(pattern)
    expected = [Hamming.distance(text[i : i + m], pattern) for i in range(len(text) - m + 1)]
    assert distances.tolist() == expected


@pytest.mark.parametrize(("sigma", "m"), [(2, 64), (16, 128), (600, 300), (4, 1000)])
def test_larger_instances_span_several_fft_blocks_and_chunks(sigma, m):
    rng = np.random.default_rng(sigma)
    text, pattern = random_instance(rng, 3 * m + 17, m, sigma)
    reference = hamming_naive(text, pattern)
    assert reference.tolist() == distances_by_loops(text.tolist(), pattern.tolist())
    for method in EXACT_METHODS.values():
        np.testing.assert_array_equal(method(text, pattern), reference)


def test_zero_distance_exactly_at_the_occurrences_found_by_str_find():
    rng = np.random.default_rng(3)
    pattern = "abab"
    text = "".join(rng.choice(list("ab"), 500))
    occurrences, start = [], text.find(pattern)
    while start != -1:
        occurrences.append(start)
        start = text.find(pattern, start + 1)
    for method in EXACT_METHODS.values():
        distances = method(text, pattern)
        assert np.flatnonzero(distances == 0).tolist() == occurrences
        assert distances.min() >= 0 and distances.max() <= len(pattern)


def test_a_hand_checked_example():
    assert hamming_naive("abracadabra", "abra").tolist() == [0, 4, 3, 3, 3, 3, 4, 0]
    assert hamming_naive([7, 7, 7], [7, 7, 7]).tolist() == [0]
    assert hamming_naive([-1, 5], [2]).tolist() == [1, 1]


@settings(max_examples=40, deadline=None)
@given(instance=texts_and_patterns(), data=st.data())
def test_match_counts_per_character_equal_scipy_direct_correlation(instance, data):
    text, pattern = instance
    chars = data.draw(st.lists(st.integers(-1, 13), max_size=5))
    expected = np.zeros(len(text) - len(pattern) + 1, dtype=np.int64)
    for c in set(chars):
        indicator_text = (text == c).astype(int)
        indicator_pattern = (pattern == c).astype(int)
        expected += correlate(indicator_text, indicator_pattern, mode="valid", method="direct")
    if chars:
        np.testing.assert_array_equal(match_counts_fft(text, pattern, chars), expected)
        np.testing.assert_array_equal(match_counts_sparse(text, pattern, chars), expected)
    all_matches = len(pattern) - np.array(distances_by_loops(text.tolist(), pattern.tolist()))
    np.testing.assert_array_equal(match_counts_fft(text, pattern), all_matches)
    np.testing.assert_array_equal(match_counts_sparse(text, pattern), all_matches)


def test_match_counts_accept_characters_as_a_string():
    assert match_counts_fft("abracadabra", "abra", "a").tolist() == [2, 0, 1, 1, 1, 1, 0, 2]
    assert match_counts_sparse("abracadabra", "abra", "bz").tolist() == [1, 0, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize(("m", "expected"), [(1, 1), (2, 2), (16, 8), (1024, 102), (4096, 222)])
def test_abrahamson_threshold_is_ceil_sqrt_m_log2_m(m, expected):
    assert abrahamson_threshold(m) == expected


def cost_by_loops(text, pattern, threshold):
    """Count frequent characters and infrequent equal-character pairs one by one."""
    m = len(pattern)
    frequent = {c for c in set(pattern) if pattern.count(c) > threshold}
    pairs = sum(1 for x in text for y in pattern if x == y and y not in frequent)
    return len(frequent) * len(text) * np.log2(2 * m), pairs


@settings(max_examples=40, deadline=None)
@given(instance=texts_and_patterns(), thresholds=st.lists(st.integers(1, 70), min_size=1, max_size=4))
def test_abrahamson_cost_counts_fft_characters_and_listed_pairs(instance, thresholds):
    text, pattern = instance
    cost = abrahamson_cost(text, pattern, thresholds)
    assert cost.fft.shape == cost.sparse.shape == (len(thresholds),)
    for k, threshold in enumerate(thresholds):
        fft_ops, pairs = cost_by_loops(text.tolist(), pattern.tolist(), threshold)
        assert cost.fft[k] == pytest.approx(fft_ops)
        assert cost.sparse[k] == pairs
        assert cost.total[k] == pytest.approx(fft_ops + pairs)
    single = abrahamson_cost(text, pattern, thresholds[0])
    assert single.total == pytest.approx(cost.total[0])


def test_the_cost_model_balances_near_the_default_threshold():
    rng = np.random.default_rng(0)
    m = 1024
    text, pattern = random_instance(rng, 4096, m, 32)  # every character ~ 32 times in the pattern
    totals = abrahamson_cost(text, pattern, np.arange(1, m + 1)).total
    assert totals[abrahamson_threshold(m) - 1] <= 1.1 * totals.min()
    assert totals[0] > 5 * totals.min()  # all-FFT is far worse for 32 characters


def test_hashing_is_las_vegas_the_answer_never_depends_on_the_seed():
    text, pattern = random_instance(np.random.default_rng(9), 400, 50, 40)
    reference = hamming_naive(text, pattern)
    for seed in range(10):
        distances = hamming_hashed(text, pattern, 7, np.random.default_rng(seed))
        np.testing.assert_array_equal(distances, reference)


@settings(max_examples=40, deadline=None)
@given(instance=texts_and_patterns(), eps=st.floats(0.05, 0.95), reps=st.integers(1, 4),
       seed=st.integers(0, 99))
def test_the_approximation_never_overestimates(instance, eps, reps, seed):
    text, pattern = instance
    estimate = hamming_approx_hashing(text, pattern, eps, reps, np.random.default_rng(seed))
    exact = hamming_naive(text, pattern)
    assert np.all(estimate <= exact) and np.all(estimate >= 0)
    assert np.all(estimate[exact == 0] == 0)


def test_one_hash_loses_a_fraction_one_over_b_of_the_mismatches_on_average():
    rng = np.random.default_rng(11)
    text, pattern = random_instance(rng, 600, 100, 50)
    exact = hamming_naive(text, pattern)
    eps = 0.25  # b = 8 buckets
    lost = [np.mean(1 - hamming_approx_hashing(text, pattern, eps, 1, rng) / exact) for _ in range(300)]
    assert np.mean(lost) == pytest.approx(1 / 8, rel=0.15)


def test_the_maximum_over_nine_hashes_is_within_one_minus_eps():
    rng = np.random.default_rng(12)
    text, pattern = random_instance(rng, 3000, 200, 30)
    exact = hamming_naive(text, pattern)
    estimate = hamming_approx_hashing(text, pattern, 0.1, 9, rng)
    assert np.mean(estimate >= 0.9 * exact) >= 0.99


@settings(max_examples=60, deadline=None)
@given(universe=st.integers(1, 40), data=st.data())
def test_sumset_counts_equal_a_double_loop(universe, data):
    x = data.draw(st.lists(st.integers(0, universe - 1), min_size=1, max_size=30))
    y = data.draw(st.lists(st.integers(0, universe - 1), min_size=1, max_size=30))
    expected = np.zeros(2 * universe - 1, dtype=np.int64)
    for a in x:
        for b in y:
            expected[a + b] += 1
    np.testing.assert_array_equal(sumset_counts(x, y, universe), expected)


def test_sumsets_of_character_positions_give_the_matches():
    text, pattern = "abracadabra", "abra"
    m, n = len(pattern), len(text)
    total = np.zeros(2 * n - 1, dtype=np.int64)
    for c in set(pattern):
        x = [j for j in range(n) if text[j] == c]
        y = [m - 1 - a for a in range(m) if pattern[a] == c]
        total += sumset_counts(x, y, n)
    np.testing.assert_array_equal(total[m - 1 : n], match_counts_fft(text, pattern))


RNG = np.random.default_rng(0)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: hamming_naive([0.5, 1.0], [1]), TypeError, "text must be a str or a sequence of integers"),
    (lambda: hamming_naive([True, False], [1]), TypeError, "text must be a str"),
    (lambda: hamming_naive([[1, 2]], [1]), ValueError, "text must be one-dimensional"),
    (lambda: hamming_naive("abc", ""), ValueError, "pattern must not be empty"),
    (lambda: hamming_fft("ab", "abc"), ValueError, "pattern must not be longer than text"),
    (lambda: hamming_abrahamson("abc", "ab", threshold=0), ValueError, "threshold must be >= 1"),
    (lambda: hamming_abrahamson("abc", "ab", threshold=1.5), TypeError, "threshold must be an int"),
    (lambda: abrahamson_cost("abc", "ab", [2, 0]), ValueError, "thresholds must be >= 1"),
    (lambda: abrahamson_threshold(0), ValueError, "m must be >= 1"),
    (lambda: match_counts_fft("abc", "ab", [0.5]), TypeError, "chars must be a str or a sequence of"),
    (lambda: hamming_hashed("abc", "ab", 0, RNG), ValueError, "n_buckets must be >= 1"),
    (lambda: hamming_hashed("abc", "ab", 2, 0), TypeError, "rng must be a numpy.random.Generator"),
    (lambda: hamming_approx_hashing("abc", "ab", 0.0, 3, RNG), ValueError, r"eps must be in \(0, 1\)"),
    (lambda: hamming_approx_hashing("abc", "ab", 1.0, 3, RNG), ValueError, "eps must be in"),
    (lambda: hamming_approx_hashing("abc", "ab", "0.1", 3, RNG), TypeError, "eps must be a real"),
    (lambda: hamming_approx_hashing("abc", "ab", 0.1, 0, RNG), ValueError, "reps must be >= 1"),
    (lambda: hamming_approx_hashing("abc", "ab", 0.1, 2, None), TypeError, "rng must be a numpy"),
    (lambda: sumset_counts([0, 5], [1], 5), ValueError, r"x must lie in \[0, universe\)"),
    (lambda: sumset_counts([0], [-1], 5), ValueError, "y must lie in"),
    (lambda: sumset_counts([0], [1], 0), ValueError, "universe must be >= 1"),
])
def test_bad_inputs_are_rejected_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()
