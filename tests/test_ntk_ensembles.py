"""Tests of lib.ntk_ensembles against independent oracles: Monte-Carlo kernels of wide random layers, autograd
tangent kernels, explicit linear algebra, brute-force enumeration and direct simulation of ensembles."""

from math import comb

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from lib.ntk_ensembles import (
    binary_posterior_covariance,
    critical_ensemble_sizes,
    ensemble_size_for,
    init_wide_ensemble,
    nonzero_binary_inputs,
    ntk_gp_posterior,
    permute_coordinates,
    relu_nngp,
    relu_ntk,
    round_midpoint,
    round_top_s,
    single_input_ensemble_size,
    single_input_success,
    success_probability,
    train_wide_ensemble,
    union_bound_ensemble_size,
    weight_profile,
    wide_relu_outputs,
)

PERM5 = np.array([3, 0, 4, 2, 1])


def probe_inputs(rng: np.random.Generator) -> np.ndarray:
    """A few binary inputs and a few Gaussian ones."""
    binary = nonzero_binary_inputs(4)[[0, 2, 6, 9, 14]]
    return np.vstack([binary, rng.standard_normal((3, 4))])


def test_kernels_match_monte_carlo_over_a_wide_random_layer():
    rng = np.random.default_rng(0)
    X = probe_inputs(rng)
    weights = rng.standard_normal((100_000, 4))
    pre = X @ weights.T
    hidden, active = np.maximum(pre, 0), (pre > 0).astype(float)
    nngp_mc = hidden @ hidden.T / weights.shape[0]
    ntk_mc = nngp_mc + (X @ X.T) * (active @ active.T) / weights.shape[0]
    scale = np.sqrt(np.outer(np.diag(nngp_mc), np.diag(nngp_mc)))
    # One entry's Monte-Carlo standard error is about 0.7 % of the scale at 1e5 units: 3.5 % is five of them.
    assert np.max(np.abs(relu_nngp(X, X) - nngp_mc) / scale) < 0.035
    assert np.max(np.abs(relu_ntk(X, X) - ntk_mc) / (2 * scale)) < 0.035


def test_ntk_matches_the_autograd_tangent_kernel_of_the_wide_network():
    torch.manual_seed(0)
    first, readout = init_wide_ensemble(4, 1, 4096, 1, torch.Generator().manual_seed(1))
    X = torch.from_numpy(nonzero_binary_inputs(4)[[0, 2, 6, 9, 14]]).float()

    def outputs(first, readout):
        return wide_relu_outputs(first, readout, X).reshape(-1)

    jacobians = torch.autograd.functional.jacobian(outputs, (first, readout))
    flat = torch.cat([j.reshape(X.shape[0], -1) for j in jacobians], dim=1).double()
    empirical = (flat @ flat.T).numpy()
    analytic = relu_ntk(X.double().numpy(), X.double().numpy())
    assert np.max(np.abs(empirical - analytic) / analytic) < 0.05


def test_kernels_on_the_training_set_have_the_closed_form_values():
    eye = np.eye(5)
    b = 1 / (2 * np.pi)
    np.testing.assert_allclose(relu_ntk(eye, eye), (1 - b) * eye + b, atol=1e-14)
    np.testing.assert_allclose(relu_nngp(eye, eye), (0.5 - b) * eye + b, atol=1e-14)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 10.0))
def test_kernels_are_symmetric_and_positively_homogeneous(seed, scale):
    rng = np.random.default_rng(seed)
    X, Z = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    for kernel in (relu_nngp, relu_ntk):
        np.testing.assert_allclose(kernel(X, Z), kernel(Z, X).T, atol=1e-12)
    np.testing.assert_allclose(relu_nngp(scale * X, Z), scale * relu_nngp(X, Z), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.diag(relu_nngp(X, X)), 0.5 * np.sum(X**2, axis=1), rtol=1e-9)


def test_zero_vector_has_zero_kernel():
    X = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert np.all(relu_nngp(X, X)[0] == 0) and np.all(relu_ntk(X, X)[0] == 0)


def test_posterior_matches_explicit_linear_algebra():
    rng = np.random.default_rng(1)
    X_train, Y_train, X_test = rng.standard_normal((4, 3)), rng.standard_normal((4, 2)), rng.standard_normal((5, 3))
    theta = relu_ntk(X_train, X_train)
    theta_x = relu_ntk(X_test, X_train)
    k_x, k_train = relu_nngp(X_test, X_train), relu_nngp(X_train, X_train)
    mean_oracle = theta_x @ np.linalg.solve(theta, Y_train)
    M = np.linalg.solve(theta, theta_x.T).T
    cov_oracle = relu_nngp(X_test, X_test) + M @ k_train @ M.T - M @ k_x.T - k_x @ M.T
    mean, var = ntk_gp_posterior(X_train, Y_train, X_test)
    _, cov = ntk_gp_posterior(X_train, Y_train, X_test, full_covariance=True)
    np.testing.assert_allclose(mean, mean_oracle, atol=1e-10)
    np.testing.assert_allclose(cov, cov_oracle, atol=1e-10)
    np.testing.assert_allclose(var, np.diag(cov_oracle), atol=1e-10)


def test_posterior_reproduces_the_training_points_exactly():
    X_train = np.eye(5)
    Y_train = permute_coordinates(X_train, PERM5)
    mean, var = ntk_gp_posterior(X_train, Y_train, X_train)
    np.testing.assert_allclose(mean, Y_train, atol=1e-12)
    np.testing.assert_allclose(var, 0, atol=1e-12)


def test_nonzero_binary_inputs_enumerates_every_nonzero_vector_once():
    X = nonzero_binary_inputs(5)
    assert X.shape == (31, 5)
    assert len({tuple(row) for row in X}) == 31 and np.all(X.sum(axis=1) >= 1)
    assert set(np.unique(X)) == {0.0, 1.0}


def test_permute_coordinates_moves_coordinate_i_to_perm_i():
    X = np.array([[1.0, 0, 0, 0, 0], [0, 1.0, 1.0, 0, 0]])
    Y = permute_coordinates(X, PERM5)
    np.testing.assert_array_equal(Y, [[0, 0, 0, 1, 0], [1, 0, 0, 0, 1]])
    np.testing.assert_array_equal(Y, X @ np.eye(5)[PERM5])


@pytest.mark.parametrize("k", [3, 5, 7])
def test_weight_profile_matches_the_posterior_on_every_input(k):
    perm = np.roll(np.arange(k), 1)
    X = nonzero_binary_inputs(k)
    mean, var = ntk_gp_posterior(np.eye(k), permute_coordinates(np.eye(k), perm), X)
    profile = weight_profile(k)
    s = X.sum(axis=1).astype(int)
    on = permute_coordinates(X, perm).astype(bool)
    expected = np.where(on, profile.mean_on[s - 1][:, None], profile.mean_off[s - 1][:, None])
    np.testing.assert_allclose(mean, expected, atol=1e-12)
    np.testing.assert_allclose(var, profile.variance[s - 1], atol=1e-12)


def test_weight_profile_on_value_is_above_the_off_value():
    for k in (2, 8, 64, 256):
        profile = weight_profile(k)
        assert np.all(profile.gap > 0) and profile.variance[0] == pytest.approx(0, abs=1e-12)


def test_binary_posterior_covariance_matches_the_general_posterior():
    k = 5
    inputs, covariance = binary_posterior_covariance(k)
    _, oracle = ntk_gp_posterior(np.eye(k), np.eye(k), inputs, full_covariance=True)
    np.testing.assert_allclose(covariance, oracle, atol=1e-12)
    assert np.all(inputs.sum(axis=1) >= 2) and len(inputs) == 2**k - 1 - k


@pytest.mark.parametrize("k", [3, 6, 9])
def test_rounding_the_exact_mean_recovers_the_permutation_on_every_input(k):
    perm = np.random.default_rng(k).permutation(k)
    X = nonzero_binary_inputs(k)
    mean, _ = ntk_gp_posterior(np.eye(k), permute_coordinates(np.eye(k), perm), X)
    np.testing.assert_array_equal(round_midpoint(mean, X), permute_coordinates(X, perm))
    np.testing.assert_array_equal(round_top_s(mean, X), permute_coordinates(X, perm))


def test_round_midpoint_uses_the_threshold_of_the_input_weight():
    profile = weight_profile(3)
    X = np.array([[1.0, 1.0, 0.0]])
    just_above, just_below = profile.threshold[1] + 1e-9, profile.threshold[1] - 1e-9
    np.testing.assert_array_equal(round_midpoint([[just_above, just_below, 5.0]], X), [[1, 0, 1]])


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_round_top_s_keeps_the_s_largest_coordinates(seed):
    rng = np.random.default_rng(seed)
    X = nonzero_binary_inputs(4)
    outputs = rng.standard_normal((2, len(X), 4))
    rounded = round_top_s(outputs, X)
    for block in range(2):
        for row, x in enumerate(X):
            s = int(x.sum())
            expected = np.zeros(4, dtype=int)
            expected[np.argsort(-outputs[block, row])[:s]] = 1
            np.testing.assert_array_equal(rounded[block, row], expected)


def test_single_input_success_matches_a_simulated_ensemble():
    k, s, n_models = 5, 3, 4
    rng = np.random.default_rng(2)
    x = np.zeros((1, k))
    x[0, :s] = 1
    mean, var = ntk_gp_posterior(np.eye(k), np.eye(k), x)
    draws = mean + np.sqrt(var[0]) * rng.standard_normal((20_000, n_models, 1, k))
    exact = (round_midpoint(draws.mean(axis=1), x) == x).all(axis=(1, 2)).mean()
    predicted = single_input_success(k, s, n_models)
    assert abs(exact - predicted) < 4 * np.sqrt(predicted * (1 - predicted) / 20_000)


def test_single_input_ensemble_size_is_the_first_size_reaching_the_target():
    for k, s in [(6, None), (10, 4), (40, None)]:
        n = single_input_ensemble_size(k, s, target=0.9)
        weights = range(2, k + 1) if s is None else [s]
        assert all(single_input_success(k, w, n) >= 0.9 for w in weights)
        assert min(single_input_success(k, w, n - 1) for w in weights) < 0.9


def test_union_bound_ensemble_size_meets_its_definition():
    k = 7
    profile = weight_profile(k)

    def bound(n):
        return sum(comb(k, s) * k * norm.sf(profile.gap[s - 1] * np.sqrt(n) / (2 * np.sqrt(profile.variance[s - 1])))
                   for s in range(2, k + 1))

    n = union_bound_ensemble_size(k, 0.9)
    assert bound(n) <= 0.1 < bound(n - 1)


@pytest.mark.parametrize("rule, rounding", [("midpoint", round_midpoint), ("top_s", round_top_s)])
def test_critical_sizes_match_directly_simulated_ensembles(rule, rounding):
    k, n_models, n_trials = 4, 6, 3000
    critical = critical_ensemble_sizes(k, 4000, np.random.default_rng(3), rule=rule)
    inputs, covariance = binary_posterior_covariance(k)
    mean, _ = ntk_gp_posterior(np.eye(k), np.eye(k), inputs)
    rng = np.random.default_rng(4)
    noise = rng.multivariate_normal(np.zeros(len(inputs)), covariance, size=(n_trials, n_models, k))
    averages = mean + noise.mean(axis=1).transpose(0, 2, 1)
    exact = (rounding(averages, inputs) == inputs).all(axis=(1, 2)).mean()
    predicted = success_probability(critical, n_models)
    assert abs(exact - predicted) < 0.035


def test_success_probability_and_ensemble_size_on_a_small_example():
    critical = np.array([0.5, 3.0, 3.0, 7.2, 12.0])
    np.testing.assert_allclose(success_probability(critical, [1, 3, 4, 8, 13]), [0.2, 0.2, 0.6, 0.8, 1.0])
    assert ensemble_size_for(critical, 0.8) == 8
    assert ensemble_size_for(critical, 0.5) == 4


def test_trained_wide_ensemble_fits_the_basis_and_tracks_the_gaussian_process():
    k, perm, n_models = 3, np.array([2, 0, 1]), 48
    outputs = train_wide_ensemble(k, perm, width=1024, n_models=n_models, steps=100, lr=1.0, seed=0)
    X = nonzero_binary_inputs(k)
    targets = permute_coordinates(X, perm)
    basis = X.sum(axis=1) == 1
    assert outputs.shape == (n_models, 7, k)
    np.testing.assert_allclose(outputs[:, basis], np.broadcast_to(targets[basis], (n_models, k, k)), atol=1e-3)
    mean, var = ntk_gp_posterior(np.eye(k), permute_coordinates(np.eye(k), perm), X[~basis])
    z = (outputs[:, ~basis].mean(axis=0) - mean) / np.sqrt(var / n_models)[:, None]
    assert np.max(np.abs(z)) < 4.5
    np.testing.assert_allclose(outputs[:, ~basis].var(axis=0).mean() / var.mean(), 1, atol=0.3)


@pytest.mark.parametrize("call, error", [
    (lambda: relu_nngp(np.ones(3), np.ones((2, 3))), ValueError),
    (lambda: relu_ntk(np.ones((2, 3)), np.ones((2, 4))), ValueError),
    (lambda: relu_nngp(np.array([[np.nan, 1.0]]), np.ones((1, 2))), ValueError),
    (lambda: ntk_gp_posterior(np.eye(3), np.eye(2), np.ones((1, 3))), ValueError),
    (lambda: ntk_gp_posterior(np.zeros((2, 3)), np.eye(2), np.ones((1, 3))), ValueError),
    (lambda: nonzero_binary_inputs(0), ValueError),
    (lambda: nonzero_binary_inputs(15), ValueError),
    (lambda: nonzero_binary_inputs(3.0), TypeError),
    (lambda: permute_coordinates(np.eye(3), np.array([0, 0, 1])), ValueError),
    (lambda: permute_coordinates(np.eye(3), np.array([0, 1])), ValueError),
    (lambda: round_midpoint(np.zeros((2, 3)), np.array([[1.0, 0, 0], [0.5, 1, 0]])), ValueError),
    (lambda: round_top_s(np.zeros((2, 3)), np.array([[1.0, 0, 0], [0, 0, 0]])), ValueError),
    (lambda: round_top_s(np.zeros((2, 2)), np.eye(3)[:2]), ValueError),
    (lambda: single_input_success(5, 1, 4), ValueError),
    (lambda: single_input_success(5, 6, 4), ValueError),
    (lambda: single_input_success(5, 3, 0), ValueError),
    (lambda: single_input_ensemble_size(5, target=1.0), ValueError),
    (lambda: union_bound_ensemble_size(1), ValueError),
    (lambda: critical_ensemble_sizes(4, 10, np.random.default_rng(0), rule="nearest"), ValueError),
    (lambda: critical_ensemble_sizes(4, 10, 0), TypeError),
    (lambda: ensemble_size_for(np.array([]), 0.9), ValueError),
    (lambda: train_wide_ensemble(3, np.array([0, 1, 2]), lr=-1.0), ValueError),
    (lambda: train_wide_ensemble(3, np.array([0, 1, 2]), width=0), ValueError),
])
def test_bad_inputs_raise_errors_naming_the_argument(call, error):
    with pytest.raises(error):
        call()
