"""Tests of lib.data_selection against brute force, closed forms and scikit-learn / scipy references."""

import itertools

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score

from lib.data_selection import (
    RandomFeatureLogistic,
    allocate_quotas,
    cluster_means,
    cluster_scores,
    covering_radius,
    kmeans_clusters,
    label_log_probs,
    make_pool,
    probe_items,
    reward_gap,
    sample_within_clusters,
    select_iterative,
    select_kcenter_greedy,
    select_kmeans_quality,
    select_kmeans_random,
    select_random,
    select_top_quality,
    softmax,
    train_on_subset,
    zipf_topic_sizes,
)


@pytest.fixture(scope="module")
def small_pool():
    return make_pool(3000, n_topics=20, n_test=400, seed=1)


# ---------------------------------------------------------------- pool


def test_zipf_sizes_sum_and_follow_the_power_law():
    sizes = zipf_topic_sizes(20_000, 60, 1.2)
    assert sizes.sum() == 20_000 and sizes.min() >= 1 and np.all(np.diff(sizes) <= 0)
    assert sizes[0] / sizes[9] == pytest.approx(10**1.2, rel=0.02)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pool_noisy_share_is_near_its_nominal_value(seed):
    pool = make_pool(seed=seed)
    assert pool.noisy_topics.sum() == 12
    assert abs(pool.noisy_share - 0.2) <= 0.02
    corrupted = (pool.y != pool.y_clean).mean()
    # a corrupted label is a uniform draw that differs from the clean one with probability 2/3
    assert corrupted == pytest.approx(pool.noisy_share * 0.6 * 2 / 3, abs=0.01)
    assert np.all(pool.y[~pool.noisy_item] == pool.y_clean[~pool.noisy_item])


def test_pool_test_set_is_balanced_and_topics_are_learnable(small_pool):
    assert np.all(np.bincount(small_pool.topic_test) == 20)
    for t in range(3):  # every topic uses all three classes
        assert len(np.unique(small_pool.y_clean[small_pool.topic == t])) == 3
    assert small_pool.X.shape == (3000, 16)


def test_pool_is_deterministic():
    a, b = make_pool(2000, n_topics=10, seed=5), make_pool(2000, n_topics=10, seed=5)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)


# ---------------------------------------------------------------- learner


def test_random_features_approximate_the_rbf_kernel():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    learner = RandomFeatureLogistic(4, n_features=40_000, gamma=0.3, seed=0)
    phi = learner.features(x)
    exact = np.exp(-0.3 * ((x[:, None] - x[None]) ** 2).sum(-1))
    assert np.abs(phi @ phi.T - exact).max() < 0.03


def test_learner_matches_sklearn_on_its_features(small_pool):
    learner = RandomFeatureLogistic(16, n_features=64, seed=3).fit(small_pool.X[:500], small_pool.y[:500])
    reference = LogisticRegression(C=100.0, max_iter=500).fit(learner.features(small_pool.X[:500]), small_pool.y[:500])
    expected = reference.predict_proba(learner.features(small_pool.X_test))
    assert np.allclose(learner.predict_proba(small_pool.X_test), expected, atol=1e-9)
    assert np.allclose(np.exp(label_log_probs(learner, small_pool.X_test)), expected, atol=1e-9)


def test_learner_handles_missing_classes():
    X = np.random.default_rng(0).normal(size=(10, 2))
    probs = RandomFeatureLogistic(2, seed=0).fit(X, np.array([0, 2] * 5)).predict_proba(X)
    assert probs.shape == (10, 3) and np.all(probs[:, 1] < 1e-9)
    assert np.all(RandomFeatureLogistic(2, seed=0).fit(X, np.full(10, 1)).predict(X) == 1)


def test_train_on_subset_uses_only_the_subset(small_pool):
    model = train_on_subset(small_pool, np.arange(300), n_features=64)
    direct = RandomFeatureLogistic(16, n_features=64, seed=0).fit(small_pool.X[:300], small_pool.y[:300])
    assert np.allclose(model.predict_proba(small_pool.X_test), direct.predict_proba(small_pool.X_test))


# ---------------------------------------------------------------- clustering, simple rules


def test_kmeans_finds_planted_blobs():
    X, truth = make_blobs(300, centers=[[0, 0], [10, 0], [0, 10]], cluster_std=0.5, random_state=0)
    labels, centers = kmeans_clusters(X, 3, seed=0)
    assert adjusted_rand_score(truth, labels) == 1.0 and centers.shape == (3, 2)


def test_random_and_top_quality():
    idx = select_random(50, 20, np.random.default_rng(0))
    assert len(np.unique(idx)) == 20 and idx.max() < 50
    quality = np.array([0.1, 0.9, 0.5, 0.9, -1.0])
    assert select_top_quality(quality, 3).tolist() == [1, 2, 3]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 9), st.integers(1, 4))
def test_kcenter_greedy_against_brute_force(seed, n, k):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    picked = select_kcenter_greedy(X, k, np.random.default_rng(seed))
    assert picked[0] == np.random.default_rng(seed).integers(n)  # the first pick is the seeded random item
    assert len(np.unique(picked)) == k
    distances = np.linalg.norm(X[:, None] - X[None], axis=-1)
    for j in range(1, k):  # each later pick is (one of) the farthest from those before it
        assert distances[picked[j], picked[:j]].min() == pytest.approx(distances[:, picked[:j]].min(axis=1).max())
    optimal = min(covering_radius(X, list(s)) for s in itertools.combinations(range(n), k))
    assert covering_radius(X, picked) <= 2 * optimal + 1e-12


# ---------------------------------------------------------------- quotas and cluster sampling


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=8), st.data())
def test_equal_quotas_fill_like_round_robin(capacity, data):
    capacity = np.array(capacity)
    budget = data.draw(st.integers(0, int(capacity.sum())))
    quotas = allocate_quotas(capacity, budget)
    # oracle: hand out items one at a time, in turn, to the clusters that still have room
    oracle, left = np.zeros_like(capacity), budget
    while left:
        for c in range(len(capacity)):
            if left and oracle[c] < capacity[c]:
                oracle[c] += 1
                left -= 1
    assert quotas.sum() == budget and np.all(quotas <= capacity)
    assert np.array_equal(quotas, oracle)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 10), min_size=2, max_size=8), st.integers(0, 200))
def test_weighted_quotas_follow_the_weights(weights, budget):
    weights = np.array(weights)
    quotas = allocate_quotas(np.full(len(weights), 1000), budget, weights)
    assert quotas.sum() == budget
    assert np.abs(quotas - budget * weights / weights.sum()).max() < 1


def test_weighted_quotas_respect_capacity():
    quotas = allocate_quotas(np.array([2, 100, 100]), 50, np.array([10.0, 1.0, 1.0]))
    assert quotas.tolist() == [2, 24, 24]


def test_kmeans_random_quotas_are_min_of_share_and_size():
    labels = np.repeat(np.arange(5), [3, 50, 50, 8, 100])
    for seed in range(5):
        idx = select_kmeans_random(labels, 50, np.random.default_rng(seed), redistribute=False)
        assert np.bincount(labels[idx], minlength=5).tolist() == [3, 10, 10, 8, 10]
        idx = select_kmeans_random(labels, 50, np.random.default_rng(seed))
        counts = np.bincount(labels[idx], minlength=5)
        assert counts.sum() == 50 and counts[0] == 3 and counts[3] == 8
        assert counts[[1, 2, 4]].tolist() == [13, 13, 13]
        assert len(np.unique(idx)) == len(idx)


def test_kmq_quotas_match_kmeans_random_and_prefer_quality():
    labels = np.repeat(np.arange(3), [4, 20, 30])
    quality = np.tile(np.linspace(-2, 2, 54), 1)
    inclusion = np.zeros(54)
    for seed in range(1000):
        idx = select_kmeans_quality(labels, quality, 12, np.random.default_rng(seed))
        assert np.bincount(labels[idx], minlength=3).tolist() == [4, 4, 4]
        inclusion[idx] += 1
    in_cluster_2 = inclusion[24:] / 1000  # quality increases with the index inside cluster 2
    assert np.all(np.diff(in_cluster_2[::5]) > 0)


def test_kmq_first_draw_probabilities_are_the_softmax():
    labels = np.zeros(4, dtype=int)
    quality = np.log(np.array([1.0, 2.0, 3.0, 4.0]))
    counts = np.bincount([select_kmeans_quality(labels, quality, 1, np.random.default_rng(s))[0] for s in range(4000)],
                         minlength=4)
    assert np.allclose(counts / 4000, [0.1, 0.2, 0.3, 0.4], atol=0.03)


def test_sample_within_clusters_excludes_items():
    labels = np.repeat(np.arange(2), 5)
    idx = sample_within_clusters(labels, np.array([3, 5]), np.random.default_rng(0), exclude=np.array([0, 1]))
    assert set(idx) == {2, 3, 4, 5, 6, 7, 8, 9}


# ---------------------------------------------------------------- iterative refinement


def test_softmax_against_scipy_and_shift_invariance():
    s = np.array([0.3, -1.0, 2.0])
    assert np.allclose(softmax(s, 0.5), scipy.special.softmax(s / 0.5))
    assert np.allclose(softmax(s + 100.0), softmax(s))


def test_reward_gap_and_cluster_means_by_hand():
    judge = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    assert np.allclose(reward_gap(judge, [0, 0], [1, 2]), [np.log(3.5), np.log(0.125)])
    assert np.allclose(cluster_means([1.0, 3.0, 5.0], [0, 0, 2], 4, empty=-1), [2.0, -1, 5.0, -1])


def test_probe_items_are_held_out_and_capped():
    labels = np.repeat(np.arange(3), [2, 10, 10])
    probe = probe_items(labels, np.array([0, 2, 3]), 4, np.random.default_rng(0))
    assert not set(probe) & {0, 2, 3}
    assert np.bincount(labels[probe], minlength=3).tolist() == [1, 4, 4]


def test_cluster_scores_on_selected_items_vanish_for_a_memorising_model(small_pool):
    labels = small_pool.topic
    clean = np.arange(0, 3000, 3)
    judge_model = RandomFeatureLogistic(16, n_features=64, seed=1).fit(small_pool.X[clean], small_pool.y_clean[clean])
    judge = label_log_probs(judge_model, small_pool.X)
    selected = np.flatnonzero(labels < 2)[:20]
    model = RandomFeatureLogistic(16, n_features=128, C=1e4, max_iter=2000, seed=0)
    model.fit(small_pool.X[selected], small_pool.y[selected])
    rng = np.random.default_rng(0)
    common = dict(X=small_pool.X, gold=small_pool.y, labels=labels, n_clusters=20, rng=rng)
    on_train = cluster_scores(model, selected, judge_log_probs=judge, on="selected", **common)
    assert np.allclose(on_train, 0.0)
    loss = cluster_scores(model, selected, signal="loss", **common)
    assert np.all(loss > 0) and loss.shape == (20,)


def _toy_iterative(allocation, seed=0):
    labels = np.repeat(np.arange(4), 50)
    scores = np.array([0.0, 1.0, 2.0, 3.0])
    return select_iterative(labels, 60, rounds=3, train_fn=lambda idx: len(idx),
                            score_fn=lambda model, idx: scores, rng=np.random.default_rng(seed),
                            temperature=1.0, allocation=allocation), labels, scores


@pytest.mark.parametrize("allocation", ["quota", "draw"])
def test_iterative_rounds_are_disjoint_and_sum_to_budget(allocation):
    result, labels, scores = _toy_iterative(allocation)
    assert [len(r) for r in result.new] == [20, 20, 20] and result.models == [20, 40, 60]
    assert len(np.unique(result.selected)) == 60
    assert np.allclose(result.weights[0], scipy.special.softmax(scores))
    if allocation == "quota":
        assert np.abs(np.bincount(labels[result.new[1]], minlength=4) - 20 * result.weights[0]).max() < 1


def test_iterative_draw_frequencies_follow_the_weights():
    counts = np.zeros(4)
    for seed in range(300):
        result, labels, _ = _toy_iterative("draw", seed)
        counts += np.bincount(labels[result.new[1]], minlength=4)
    assert np.allclose(counts / counts.sum(), scipy.special.softmax([0.0, 1.0, 2.0, 3.0]), atol=0.02)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 5)
    with pytest.raises(ValueError, match="budget"):
        select_random(10, 11, rng)
    with pytest.raises(TypeError, match="rng"):
        select_random(10, 3, 0)
    with pytest.raises(ValueError, match="noisy_frac"):
        make_pool(1000, noisy_frac=1.0)
    with pytest.raises(ValueError, match="K"):
        kmeans_clusters(np.zeros((3, 2)), 4)
    with pytest.raises(ValueError, match="temperature"):
        softmax([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="capacity"):
        allocate_quotas(np.array([1, 2]), 4)
    with pytest.raises(ValueError, match="quality"):
        select_kmeans_quality(labels, np.zeros(3), 3, rng)
    with pytest.raises(ValueError, match="allocation"):
        select_iterative(labels, 6, train_fn=len, score_fn=lambda m, i: np.zeros(3), rng=rng, allocation="x")
    with pytest.raises(ValueError, match="score_fn"):
        select_iterative(labels, 6, train_fn=len, score_fn=lambda m, i: np.zeros(2), rng=rng)
    with pytest.raises(ValueError, match="signal"):
        cluster_scores(None, [0], X=np.zeros((15, 2)), gold=labels, labels=labels, n_clusters=3, rng=rng, signal="x")
    with pytest.raises(ValueError, match="repeat"):
        train_on_subset(make_pool(500, n_topics=5, n_test=50), np.array([1, 1]))
    with pytest.raises(ValueError, match="fitted"):
        RandomFeatureLogistic(2).predict(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="emb"):
        select_kcenter_greedy(np.zeros(5), 2, rng)
