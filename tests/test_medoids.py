"""Tests for lib.medoids against independent oracles: the `kmedoids` package (Rust, by the paper's first author;
test-only), brute force over all medoid sets and all single swaps on tiny inputs, and losses recomputed from
scratch with plain Python loops."""

import itertools

import kmedoids
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from lib.medoids import (
    best_swap_for_candidate,
    check_dissimilarity,
    clara,
    fasterpam,
    fastpam1,
    lab_init,
    nearest_two,
    pam,
    pam_build,
    pam_swap,
    random_init,
    removal_loss,
    total_deviation,
)


def blob_distances(n: int, seed: int, n_blobs: int = 6) -> np.ndarray:
    """Euclidean distances of n continuous random points in a few blobs (no ties with probability one)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 10, size=(n_blobs, 2))
    points = centres[rng.integers(0, n_blobs, n)] + rng.normal(size=(n, 2))
    return cdist(points, points)


def loss_by_loops(D: np.ndarray, medoids) -> float:
    return sum(min(D[o, m] for m in medoids) for o in range(len(D)))


def swapped(medoids: np.ndarray, position: int, j: int) -> np.ndarray:
    out = medoids.copy()
    out[position] = j
    return out


def swap_changes(D: np.ndarray, medoids: np.ndarray) -> list[float]:
    """Change of the loss for every single swap, each recomputed from scratch (vectorised over the points)."""
    base = D[:, medoids].min(axis=1).sum()
    others = np.setdiff1d(np.arange(len(D)), medoids)
    return [D[:, swapped(medoids, p, j)].min(axis=1).sum() - base for p in range(len(medoids)) for j in others]


def improving_swaps(D: np.ndarray, medoids: np.ndarray) -> list[tuple[int, int, float]]:
    """All single swaps (position, j) that lower the loss, by recomputing the loss from scratch."""
    base = loss_by_loops(D, medoids)
    found = []
    for position in range(len(medoids)):
        for j in set(range(len(D))) - set(medoids.tolist()):
            change = loss_by_loops(D, swapped(medoids, position, j)) - base
            if change < -1e-9:
                found.append((position, j, change))
    return found


def oracle_start(medoids: np.ndarray) -> np.ndarray:
    return medoids.astype(np.uintp).copy()


# --- the kmedoids package (the paper's author's Rust implementation) ---------------------------------------------

@pytest.mark.parametrize(("n", "k", "seed"), [(60, 2, 0), (150, 5, 1), (300, 10, 2), (400, 25, 3), (1000, 12, 4)])
def test_fasterpam_equals_the_reference_implementation(n, k, seed):
    D = blob_distances(n, seed)
    start = random_init(n, k, np.random.default_rng(seed))
    ours = fasterpam(D, start)
    ref = kmedoids.fasterpam(D, oracle_start(start), max_iter=100, random_state=None, n_cpu=1)
    np.testing.assert_array_equal(ours.medoids, ref.medoids.astype(np.intp))
    np.testing.assert_array_equal(ours.labels, ref.labels.astype(np.intp))
    assert ours.loss == pytest.approx(ref.loss, rel=1e-12)
    assert (ours.n_swap, ours.n_iter) == (ref.n_swap, ref.n_iter)
    assert ours.n_swap > 0


@given(seed=st.integers(0, 10_000), n=st.integers(12, 90), k=st.integers(2, 8))
@settings(max_examples=40, deadline=None)
def test_fasterpam_equals_the_reference_on_random_inputs_without_ties(seed, n, k):
    points = np.random.default_rng(seed).uniform(size=(n, 2))
    D = cdist(points, points)
    start = random_init(n, k, np.random.default_rng(seed + 1))
    losses = [total_deviation(D, start)]
    ours = fasterpam(D, start, on_swap=lambda count, medoids, loss: losses.append(loss))
    # A swap with zero gain (e.g. the two points of a two-point cluster trading places) is decided by rounding,
    # which differs between implementations: compare only runs in which every swap clearly lowers the loss and
    # no zero-gain swap is left at the end.
    assume(np.all(np.diff(losses) < -1e-9 * losses[0]))
    assume(not any(abs(change) < 1e-9 * losses[0] for change in swap_changes(D, ours.medoids)))
    ref = kmedoids.fasterpam(D, oracle_start(start), max_iter=100, random_state=None, n_cpu=1)
    np.testing.assert_array_equal(ours.medoids, ref.medoids.astype(np.intp))
    assert (ours.n_swap, ours.n_iter) == (ref.n_swap, ref.n_iter)


def test_a_zero_gain_swap_ends_the_search_instead_of_cycling():
    # In this instance two points of a two-point cluster can trade places at a gain of zero up to rounding;
    # without the guard FastPAM1 and PAM keep swapping them until max_iter.
    points = np.random.default_rng(0).uniform(size=(12, 2))
    D = cdist(points, points)
    start = random_init(12, 4, np.random.default_rng(1))
    for method in (pam_swap, fastpam1, fasterpam):
        result = method(D, start)
        assert result.n_iter < 10
        assert improving_swaps(D, result.medoids) == []


@pytest.mark.parametrize(("n", "k", "seed"), [(80, 2, 5), (200, 6, 6), (300, 12, 7)])
def test_pam_swap_and_fastpam1_equal_the_reference_and_each_other(n, k, seed):
    D = blob_distances(n, seed)
    start = random_init(n, k, np.random.default_rng(seed))
    slow, fast = pam_swap(D, start), fastpam1(D, start)
    ref_pam = kmedoids.pam(D, oracle_start(start), max_iter=100)
    ref_fast = kmedoids.fastpam1(D, oracle_start(start), max_iter=100)
    for ours, ref in [(slow, ref_pam), (fast, ref_fast)]:
        np.testing.assert_array_equal(ours.medoids, ref.medoids.astype(np.intp))
        assert ours.loss == pytest.approx(ref.loss, rel=1e-12)
        assert (ours.n_swap, ours.n_iter) == (ref.n_swap, ref.n_iter)
    np.testing.assert_array_equal(slow.medoids, fast.medoids)
    assert slow.n_swap > 0


@pytest.mark.parametrize(("n", "k", "seed"), [(50, 1, 8), (120, 4, 9), (300, 15, 10)])
def test_pam_build_equals_the_reference(n, k, seed):
    D = blob_distances(n, seed)
    ours, ref = pam_build(D, k), kmedoids.pam_build(D, k)
    np.testing.assert_array_equal(ours.medoids, ref.medoids.astype(np.intp))
    assert ours.loss == pytest.approx(ref.loss, rel=1e-12)


def test_pam_build_plus_swap_equals_the_reference_pam():
    D = blob_distances(250, 11)
    ours, ref = pam(D, 8), kmedoids.pam(D, 8, max_iter=100, init="build")
    np.testing.assert_array_equal(ours.medoids, ref.medoids.astype(np.intp))
    assert ours.loss == pytest.approx(ref.loss, rel=1e-12)
    assert ours.n_swap == ref.n_swap


# --- brute force on tiny inputs ---------------------------------------------------------------------------------

def tiny_distances(seed: int, n: int) -> np.ndarray:
    points = np.random.default_rng(seed).normal(size=(n, 3))
    return cdist(points, points)


@given(seed=st.integers(0, 10_000), n=st.integers(4, 9), k=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_total_deviation_and_nearest_two_match_loops(seed, n, k):
    D = tiny_distances(seed, n)
    medoids = np.random.default_rng(seed).choice(n, size=k, replace=False)
    assert total_deviation(D, medoids) == pytest.approx(loss_by_loops(D, medoids))
    near_idx, d_near, d_second = nearest_two(D, medoids)
    for o in range(n):
        ranked = sorted(D[o, medoids])
        assert D[o, medoids[near_idx[o]]] == d_near[o] == ranked[0]
        assert d_second[o] == (ranked[1] if k > 1 else np.inf)


@given(seed=st.integers(0, 10_000), n=st.integers(5, 10), k=st.integers(2, 4))
@settings(max_examples=40, deadline=None)
def test_removal_loss_and_best_swap_match_recomputed_losses(seed, n, k):
    D = tiny_distances(seed, n)
    medoids = np.random.default_rng(seed).choice(n, size=k, replace=False)
    near_idx, d_near, d_second = nearest_two(D, medoids)
    base = loss_by_loops(D, medoids)
    loss_of_removal = removal_loss(near_idx, d_near, d_second, k)
    for position in range(k):
        without = np.delete(medoids, position)
        assert loss_of_removal[position] == pytest.approx(loss_by_loops(D, without) - base)
    for j in set(range(n)) - set(medoids.tolist()):
        changes = [loss_by_loops(D, swapped(medoids, p, j)) - base for p in range(k)]
        delta, position = best_swap_for_candidate(D, j, near_idx, d_near, d_second, loss_of_removal)
        assert delta == pytest.approx(min(changes))
        assert changes[position] == pytest.approx(min(changes))     # ties between medoids can occur here


@pytest.mark.parametrize("seed", range(6))
def test_swap_methods_end_in_local_optima_no_better_than_the_global_one(seed):
    n, k = 10, 3
    D = tiny_distances(seed, n)
    optimum = min(loss_by_loops(D, combo) for combo in itertools.combinations(range(n), k))
    start = random_init(n, k, np.random.default_rng(seed))
    results = [pam(D, k), pam_swap(D, start), fastpam1(D, start), fasterpam(D, start),
               clara(D, k, np.random.default_rng(seed), n_samples=2, sample_size=n)]
    for result in results:
        assert result.loss >= optimum - 1e-9
        assert result.loss == pytest.approx(loss_by_loops(D, result.medoids))
        assert improving_swaps(D, result.medoids) == []
        np.testing.assert_array_equal(result.labels, np.argmin(D[:, result.medoids], axis=1))


def test_pam_finds_the_global_optimum_on_separated_clusters():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(loc, 0.3, size=(4, 2)) for loc in [(0, 0), (5, 0), (0, 5)]])
    D = cdist(points, points)
    best = min(itertools.combinations(range(12), 3), key=lambda combo: loss_by_loops(D, combo))
    assert sorted(pam(D, 3).medoids.tolist()) == sorted(best)


# --- initialisations, CLARA, work counts -------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_lab_init_is_build_when_the_subsample_covers_all_points(seed):
    D = tiny_distances(seed, 12)                 # 10 + ceil(sqrt(12)) = 14 >= 12: every subsample is everything
    np.testing.assert_array_equal(lab_init(D, 4, np.random.default_rng(seed)), pam_build(D, 4).medoids)


def test_lab_init_and_random_init_give_distinct_seeded_medoids():
    D = blob_distances(500, 12)
    for draw in [lambda g: lab_init(D, 30, g), lambda g: random_init(500, 30, g)]:
        first, again = draw(np.random.default_rng(3)), draw(np.random.default_rng(3))
        np.testing.assert_array_equal(first, again)
        assert len(np.unique(first)) == 30 and first.min() >= 0 and first.max() < 500
    lab_loss = np.mean([total_deviation(D, lab_init(D, 10, np.random.default_rng(s))) for s in range(10)])
    random_loss = np.mean([total_deviation(D, random_init(500, 10, np.random.default_rng(s))) for s in range(10)])
    assert lab_loss < random_loss                # LAB is a greedy start: better than random on average


def test_random_init_covers_all_points_uniformly():
    rng = np.random.default_rng(0)
    counts = np.bincount(np.concatenate([random_init(10, 3, rng) for _ in range(3000)]), minlength=10)
    assert counts.min() > 800 and counts.max() < 1000    # expected 900 each, sd about 25


def test_clara_loss_is_recomputed_on_all_points_and_improves_with_samples():
    D = blob_distances(600, 13)
    one = clara(D, 8, np.random.default_rng(0), n_samples=1)
    many = clara(D, 8, np.random.default_rng(0), n_samples=6)
    for result in (one, many):
        assert result.loss == pytest.approx(total_deviation(D, result.medoids))
    assert many.loss <= one.loss
    assert one.n_iter >= 2 and many.n_iter >= 6 and many.n_swap >= one.n_swap > 0
    assert many.loss <= 1.1 * pam(D, 8).loss


def test_swap_work_of_pam_is_k_times_that_of_fastpam1():
    D = blob_distances(300, 14)
    k = 10
    start = random_init(300, k, np.random.default_rng(0))
    slow, fast = pam_swap(D, start), fastpam1(D, start)
    assert slow.n_iter == fast.n_iter
    assert slow.n_lookups / fast.n_lookups == pytest.approx(k, rel=0.05)
    assert slow.n_lookups == 300 * k * (1 + slow.n_swap) + slow.n_iter * k * (300 - k) * 300


def test_fasterpam_reports_every_swap():
    D = blob_distances(300, 15)
    seen = []
    result = fasterpam(D, random_init(300, 9, np.random.default_rng(1)),
                       on_swap=lambda count, medoids, loss: seen.append((count, medoids, loss)))
    assert [count for count, _, _ in seen] == list(range(1, result.n_swap + 1))
    assert all(loss == pytest.approx(total_deviation(D, medoids)) for _, medoids, loss in seen)
    assert np.all(np.diff([loss for _, _, loss in seen]) < 0)
    np.testing.assert_array_equal(seen[-1][1], result.medoids)


def test_max_iter_limits_the_sweeps():
    D = blob_distances(300, 16)
    start = random_init(300, 10, np.random.default_rng(2))
    one_sweep = fasterpam(D, start, max_iter=1)
    ref = kmedoids.fasterpam(D, oracle_start(start), max_iter=1, random_state=None, n_cpu=1)
    assert one_sweep.n_iter == 1
    np.testing.assert_array_equal(one_sweep.medoids, ref.medoids.astype(np.intp))


# --- bad inputs ---------------------------------------------------------------------------------------------------

def test_bad_dissimilarities_are_rejected():
    good = tiny_distances(0, 5)
    asymmetric = good.copy()
    asymmetric[0, 1] += 1.0
    with_nan = good.copy()
    with_nan[0, 1] = with_nan[1, 0] = np.nan
    for bad, error in [(good.tolist(), TypeError), (good[:, :4], ValueError), (-good, ValueError),
                       (asymmetric, ValueError), (with_nan, ValueError), (good + 1.0, ValueError),
                       (good.astype(complex), TypeError), (np.zeros((1, 1)), ValueError)]:
        with pytest.raises(error, match="D"):
            check_dissimilarity(bad)
        with pytest.raises(error, match="D"):
            fasterpam(bad, np.array([0, 1]))


def test_bad_medoids_k_and_arguments_are_rejected():
    D = tiny_distances(0, 6)
    for bad, error in [(np.array([0, 0]), ValueError), (np.array([0, 6]), ValueError),
                       (np.array([0.0, 1.0]), TypeError), ([0, 1], TypeError), (np.arange(6), ValueError),
                       (np.array([3]), ValueError)]:
        for method in (pam_swap, fastpam1, fasterpam):
            with pytest.raises(error, match="medoids|k"):
                method(D, bad)
    with pytest.raises(ValueError, match="k"):
        pam(D, 6)
    with pytest.raises(ValueError, match="k"):
        pam_build(D, 0)
    with pytest.raises(TypeError, match="k"):
        lab_init(D, 2.0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        random_init(6, 2, 0)
    with pytest.raises(ValueError, match="max_iter"):
        fasterpam(D, np.array([0, 1]), max_iter=0)
    with pytest.raises(ValueError, match="sample_size"):
        clara(D, 2, np.random.default_rng(0), sample_size=2)
    with pytest.raises(ValueError, match="j"):
        best_swap_for_candidate(D, 6, *nearest_two(D, np.array([0, 1])), np.zeros(2))
    with pytest.raises(ValueError, match="same length"):
        removal_loss(np.array([0, 1]), np.zeros(3), np.zeros(3), 2)
    with pytest.raises(ValueError, match="near_idx"):
        removal_loss(np.array([0, 2]), np.zeros(2), np.zeros(2), 2)
