"""Tests for lib.bandits: Tsallis-INF probabilities against a bracketing root finder, the vectorised learners
against plain-Python round-by-round references, and learning on stochastic bandits (Exp3 as comparison)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import brentq

from lib.bandits import binned_tsallis_inf, context_bins, exp3, tsallis_inf, tsallis_inf_probabilities


def tsallis_probabilities_by_bisection(losses: np.ndarray, eta: float) -> np.ndarray:
    """p_i = 4 / (eta (L_i - x))^2 with x < min L chosen by Brent's method so that the p_i sum to 1."""

    def excess(x: float) -> float:
        return float(np.sum(4.0 / (eta * (losses - x)) ** 2) - 1.0)

    upper = losses.min() - 1e-12
    lower = losses.min() - 2.0 * np.sqrt(len(losses)) / eta - 1.0
    x = brentq(excess, lower, upper, xtol=1e-14, rtol=1e-14)
    return 4.0 / (eta * (losses - x)) ** 2


def first_index_reaching(probabilities: np.ndarray, uniform: float) -> int:
    return int(
        min(np.searchsorted(np.cumsum(probabilities), uniform * probabilities.sum()), len(probabilities) - 1)
    )


def binned_tsallis_by_loops(costs, bins, seed):
    """Round-by-round reference: one dictionary of learner states per run, keyed by bin."""
    uniforms = np.random.default_rng(seed).random(costs.shape[:2])
    actions = np.zeros(costs.shape[:2], dtype=int)
    for r in range(costs.shape[0]):
        states = {}
        for t in range(costs.shape[1]):
            state = states.setdefault(bins[r, t], {"L": np.zeros(costs.shape[2]), "n": 0, "sum": 0.0})
            scale = state["sum"] / state["n"] if state["n"] else 1.0
            p = tsallis_probabilities_by_bisection(state["L"] / scale, 2.0 / np.sqrt(state["n"] + 1))
            p = p / p.sum()
            k = first_index_reaching(p, uniforms[r, t])
            state["L"][k] += costs[r, t, k] / p[k]
            state["n"] += 1
            state["sum"] += costs[r, t, k]
            actions[r, t] = k
    return actions


def exp3_by_loops(costs, seed):
    uniforms = np.random.default_rng(seed).random(costs.shape[:2])
    n_actions = costs.shape[2]
    actions = np.zeros(costs.shape[:2], dtype=int)
    for r in range(costs.shape[0]):
        losses, total = np.zeros(n_actions), 0.0
        for t in range(costs.shape[1]):
            scale = total / t if t else 1.0
            eta = np.sqrt(np.log(n_actions) / (n_actions * (t + 1)))
            weights = np.exp(-eta * (losses - losses.min()) / scale)
            p = weights / weights.sum()
            k = first_index_reaching(p, uniforms[r, t])
            losses[k] += costs[r, t, k] / p[k]
            total += costs[r, t, k]
            actions[r, t] = k
    return actions


def stochastic_costs(means, n_runs, n_rounds, seed, spread=0.2):
    rng = np.random.default_rng(seed)
    return np.asarray(means)[None, None, :] + spread * rng.uniform(-1, 1, (n_runs, n_rounds, len(means)))


@settings(max_examples=60, deadline=None)
@given(
    losses=arrays(np.float64, st.integers(1, 12), elements=st.floats(0.0, 1e3)),
    eta=st.floats(1e-3, 10.0),
)
def test_probabilities_match_root_finder(losses, eta):
    p = tsallis_inf_probabilities(losses, eta)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(p > 0)
    np.testing.assert_allclose(p, tsallis_probabilities_by_bisection(losses, eta), rtol=1e-7, atol=1e-12)


def test_probabilities_batch_shapes_and_ordering():
    losses = np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    p = tsallis_inf_probabilities(losses, np.array([1.0, 0.5]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert p[0, 0] > p[0, 1] > p[0, 2]
    np.testing.assert_allclose(p[1], 1 / 3)


def test_probabilities_minimise_the_regularised_objective():
    """p minimises <p, L> - (4 / eta) sum sqrt(p) over the simplex: no random simplex point does better."""
    rng = np.random.default_rng(0)
    losses, eta = np.array([0.3, 1.0, 2.5, 0.9]), 0.7
    p = tsallis_inf_probabilities(losses, eta)

    def objective(q):
        return q @ losses - 4.0 / eta * np.sqrt(q).sum(axis=-1)

    others = rng.dirichlet(np.ones(4), size=5000)
    assert objective(p) <= objective(others).min() + 1e-12


def test_binned_tsallis_equals_round_by_round_reference():
    rng = np.random.default_rng(1)
    costs = rng.uniform(1.0, 5.0, (3, 60, 4))
    bins = rng.integers(0, 3, (3, 60))
    actions, paid = binned_tsallis_inf(costs, bins, 7)
    np.testing.assert_array_equal(actions, binned_tsallis_by_loops(costs, bins, 7))
    np.testing.assert_array_equal(paid, np.take_along_axis(costs, actions[..., None], axis=2)[..., 0])


def test_tsallis_inf_is_the_single_bin_case():
    costs = stochastic_costs([1.0, 0.5, 0.8], 2, 50, seed=2)
    actions, _ = tsallis_inf(costs, 3)
    np.testing.assert_array_equal(actions, binned_tsallis_by_loops(costs, np.zeros((2, 50), dtype=int), 3))


def test_exp3_equals_round_by_round_reference():
    costs = np.random.default_rng(4).uniform(0.0, 3.0, (2, 80, 5))
    actions, paid = exp3(costs, 5)
    np.testing.assert_array_equal(actions, exp3_by_loops(costs, 5))
    assert paid.shape == (2, 80)


def test_tsallis_inf_concentrates_on_the_best_arm_and_beats_exp3():
    means = [1.0, 0.9, 0.6, 0.85, 1.0]
    costs = stochastic_costs(means, 8, 3000, seed=6)
    actions, paid = tsallis_inf(costs, 8)
    assert np.mean(actions[:, -1000:] == 2) > 0.8
    _, paid_exp3 = exp3(costs, 8)
    best_fixed = costs[:, :, 2].sum(axis=1)
    regret_tsallis = (paid.sum(axis=1) - best_fixed).mean()
    regret_exp3 = (paid_exp3.sum(axis=1) - best_fixed).mean()
    assert 0 < regret_tsallis < regret_exp3
    assert regret_exp3 < 0.1 * 3000  # Exp3 learns too, just more slowly


def test_binned_learner_finds_the_best_arm_of_each_context():
    """Two contexts with opposite best arms: one learner per bin beats the best single arm in hindsight."""
    rng = np.random.default_rng(9)
    contexts = rng.uniform(-1.0, 1.0, (4, 3000))
    costs = stochastic_costs([1.0, 1.0], 4, 3000, seed=10)
    costs[..., 0] -= 0.5 * (contexts < 0)
    costs[..., 1] -= 0.5 * (contexts >= 0)
    bins = context_bins(contexts, np.array([0.0]))
    actions, paid = binned_tsallis_inf(costs, bins, 11)
    right_arm = (contexts >= 0).astype(int)
    assert np.mean(actions[:, -1000:] == right_arm[:, -1000:]) > 0.8
    assert np.all(paid.sum(axis=1) < 0.9 * costs.sum(axis=1).min(axis=1))
    _, paid_plain = tsallis_inf(costs, 11)
    assert paid.sum() < paid_plain.sum()


def test_context_bins_match_brute_force():
    contexts = np.array([-1.0, 0.0, 0.1, 0.2, 0.25, 0.5, 0.7, 2.0])
    edges = np.array([0.0, 0.25, 0.6])
    expected = [sum(c >= e for e in edges) for c in contexts]
    np.testing.assert_array_equal(context_bins(contexts, edges), expected)
    np.testing.assert_array_equal(context_bins(contexts, np.array([])), 0)


def test_runs_are_reproducible_from_a_seed_or_generator():
    costs = stochastic_costs([1.0, 0.5], 2, 100, seed=12)
    a1, _ = tsallis_inf(costs, 13)
    a2, _ = tsallis_inf(costs, np.random.default_rng(13))
    np.testing.assert_array_equal(a1, a2)


def test_bad_inputs_raise():
    costs = np.ones((1, 5, 2))
    with pytest.raises(ValueError, match="costs must be a non-empty"):
        tsallis_inf(np.ones((5, 2)), 0)
    with pytest.raises(ValueError, match="non-negative"):
        exp3(-costs, 0)
    with pytest.raises(TypeError, match="rng"):
        tsallis_inf(costs, "seed")
    with pytest.raises(ValueError, match="bins"):
        binned_tsallis_inf(costs, np.zeros((1, 4), dtype=int), 0)
    with pytest.raises(ValueError, match="bins"):
        binned_tsallis_inf(costs, np.zeros((1, 5)), 0)
    with pytest.raises(ValueError, match="eta"):
        tsallis_inf_probabilities(np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="loss_estimates"):
        tsallis_inf_probabilities(np.array([0.0, np.inf]), 1.0)
    with pytest.raises(ValueError, match="edges"):
        context_bins(np.zeros(3), np.array([0.5, 0.1]))
