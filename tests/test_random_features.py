"""Tests of lib.random_features against independent oracles (sklearn, scipy, closed forms, brute force)."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import Ridge

from lib.random_features import (
    ACTIVATIONS,
    box_quadrature,
    fit_output_layer,
    kernel_ridge_coefficients,
    limit_kernel,
    limit_kernel_ridge_predict,
    random_features,
    relative_l2_error,
    ridge_path,
    sample_hidden_parameters,
    spectral_energy_outside,
)

SCALAR_ACTIVATIONS = {
    "tanh": math.tanh,
    "sigmoid": lambda t: 1.0 / (1.0 + math.exp(-t)),
    "relu": lambda t: max(t, 0.0),
    "gaussian": lambda t: math.exp(-t * t / 2),
}


def problem(n_points: int, n_features: int, seed: int = 0, bound: float = 3.0, n_targets: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n_points)
    weights, biases = sample_hidden_parameters(n_features, 1, bound, rng)
    y = rng.normal(size=(n_points, n_targets)) if n_targets > 1 else rng.normal(size=n_points)
    return x, weights, biases, y


# ---------------------------------------------------------------- sampling and features


def test_sampled_parameters_fill_the_box_uniformly():
    weights, biases = sample_hidden_parameters(20_000, 2, 5.0, np.random.default_rng(1), bias_bound=2.0)
    assert weights.shape == (20_000, 2) and biases.shape == (20_000,)
    assert np.all(np.abs(weights) <= 5.0) and np.all(np.abs(biases) <= 2.0)
    assert scipy.stats.kstest(weights[:, 1], scipy.stats.uniform(-5, 10).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(biases, scipy.stats.uniform(-2, 4).cdf).pvalue > 1e-3
    _, default_biases = sample_hidden_parameters(1000, 1, 7.0, np.random.default_rng(1))
    assert 6.5 < np.abs(default_biases).max() <= 7.0  # bias box defaults to the weight box


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_features_match_a_brute_force_loop(activation):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(7, 3))
    weights, biases = rng.normal(size=(5, 3)), rng.normal(size=5)
    expected = np.array([[SCALAR_ACTIVATIONS[activation](float(weights[j] @ x[i] - biases[j])) for j in range(5)]
                         for i in range(7)])
    np.testing.assert_allclose(random_features(x, weights, biases, activation), expected, rtol=1e-12, atol=1e-14)


def test_one_dimensional_inputs_accept_flat_arrays():
    x, weights, biases, _ = problem(6, 4)
    np.testing.assert_array_equal(random_features(x, weights[:, 0], biases), random_features(x[:, None], weights,
                                                                                            biases))


# ---------------------------------------------------------------- the output layer


@pytest.mark.parametrize("n_features", [20, 200])  # fewer and more features than points (primal / dual solve)
def test_output_layer_matches_sklearn_ridge(n_features):
    x, weights, biases, y = problem(60, n_features, n_targets=2)
    phi = random_features(x, weights, biases)
    ridge = 1e-3
    mu = ridge * np.trace(phi.T @ phi) / n_features
    expected = Ridge(alpha=mu, fit_intercept=False, solver="svd").fit(phi, y).coef_.T
    np.testing.assert_allclose(fit_output_layer(phi, y, ridge), expected, rtol=1e-7, atol=1e-9)


def test_output_layer_matches_the_normal_equations_solved_by_scipy():
    x, weights, biases, y = problem(50, 120, seed=3)
    phi = random_features(x, weights, biases, "sigmoid")
    ridge = 1e-4
    mu = ridge * np.sum(phi**2) / phi.shape[1]
    expected = scipy.linalg.solve(phi.T @ phi + mu * np.eye(phi.shape[1]), phi.T @ y)
    np.testing.assert_allclose(fit_output_layer(phi, y, ridge), expected, rtol=1e-6, atol=1e-8)


def test_zero_ridge_is_least_squares():
    x, weights, biases, y = problem(80, 10, seed=4)
    phi = random_features(x, weights, biases)
    np.testing.assert_allclose(fit_output_layer(phi, y, 0.0), np.linalg.lstsq(phi, y, rcond=None)[0], rtol=1e-10)


def test_a_target_that_is_itself_a_random_feature_network_is_fitted_exactly():
    rng = np.random.default_rng(5)
    x_train, x_test = rng.uniform(-1, 1, 400), np.linspace(-1, 1, 1000)
    weights, biases = sample_hidden_parameters(15, 1, 2.0, rng)
    true_coefficients = rng.normal(size=15)
    target = random_features(x_train, weights, biases) @ true_coefficients
    fitted = fit_output_layer(random_features(x_train, weights, biases), target, ridge=1e-14)
    test_features = random_features(x_test, weights, biases)
    assert relative_l2_error(test_features @ fitted, test_features @ true_coefficients) < 1e-6


@settings(max_examples=25, deadline=None)
@given(n_points=st.integers(3, 25), n_features=st.integers(1, 40), log_ridge=st.floats(-6, 0), seed=st.integers(0, 99))
def test_primal_and_dual_solutions_agree_with_sklearn(n_points, n_features, log_ridge, seed):
    x, weights, biases, y = problem(n_points, n_features, seed=seed)
    phi = random_features(x, weights, biases)
    mu = 10**log_ridge * np.sum(phi**2) / n_features
    expected = Ridge(alpha=mu, fit_intercept=False, solver="svd").fit(phi, y).coef_
    np.testing.assert_allclose(phi @ fit_output_layer(phi, y, 10**log_ridge), phi @ expected, rtol=1e-5, atol=1e-7)


def test_ridge_path_matches_single_fits_and_least_squares():
    x, weights, biases, y = problem(70, 30, seed=6, n_targets=2)
    phi = random_features(x, weights, biases)
    ridges = [1e-1, 1e-3, 1e-6, 0.0]
    path = ridge_path(phi, y, ridges)
    assert path.shape == (4, 30, 2)
    for ridge, fit in zip(ridges[:-1], path[:-1], strict=True):
        np.testing.assert_allclose(fit, fit_output_layer(phi, y, ridge), rtol=1e-6, atol=1e-8)
    well_conditioned = np.random.default_rng(6).normal(size=(40, 25))  # lstsq is unique and stable here
    np.testing.assert_allclose(ridge_path(well_conditioned, y[:40], [0.0])[0],
                               np.linalg.lstsq(well_conditioned, y[:40], rcond=None)[0], rtol=1e-9, atol=1e-12)
    wide = well_conditioned.T  # more unknowns than equations: the minimum-norm solution
    np.testing.assert_allclose(ridge_path(wide, y[:25], [0.0])[0], np.linalg.pinv(wide) @ y[:25], rtol=1e-9,
                               atol=1e-12)


def test_relative_error_closed_form():
    target = np.array([[3.0, 1.0], [4.0, 0.0]])
    predicted = np.array([[3.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(relative_l2_error(predicted, target), [3.0 / 5.0, 1.0])
    assert relative_l2_error(target[:, 0], target[:, 0]) == 0.0


# ---------------------------------------------------------------- the limit kernel


def test_box_quadrature_averages_polynomials_exactly():
    for panels in (1, 3):
        a, b, w = box_quadrature(2.0, bias_bound=3.0, quad_n=6, panels=panels)
        assert a.size == (6 * panels) ** 2 and np.isclose(w.sum(), 1.0)
        assert np.isclose(w @ (a**2 * b**4), (2.0**2 / 3) * (3.0**4 / 5))  # E[a^2] E[b^4] for uniforms
        assert np.isclose(w @ (a**3 * b), 0.0, atol=1e-12)


def test_limit_kernel_matches_scipy_double_integration():
    bound = 2.0
    x = np.array([-0.7, 0.1, 0.9])
    kernel = limit_kernel(x, x, bound, "tanh", quad_n=48)
    for i, j in [(0, 0), (0, 2), (1, 2)]:
        def integrand(b, a, u=x[i], v=x[j]):
            return math.tanh(a * u - b) * math.tanh(a * v - b)

        integral = scipy.integrate.dblquad(integrand, -bound, bound, -bound, bound, epsabs=1e-11)[0]
        assert np.isclose(kernel[i, j], integral / (2 * bound) ** 2, rtol=1e-8, atol=1e-10)


def test_monte_carlo_gram_over_width_converges_to_the_limit_kernel():
    x = np.linspace(-1, 1, 25)
    exact = limit_kernel(x, x, 4.0, "sigmoid", quad_n=64)
    errors = []
    for n_features in (1_000, 100_000):
        weights, biases = sample_hidden_parameters(n_features, 1, 4.0, np.random.default_rng(7))
        phi = random_features(x, weights, biases, "sigmoid")
        errors.append(np.abs(phi @ phi.T / n_features - exact).max())
    assert errors[1] < 4 / np.sqrt(100_000)  # Monte-Carlo error of order N^(-1/2) (entries are at most 1)
    assert errors[1] < errors[0] / 4  # a hundred times more features: about ten times smaller


def test_kernel_ridge_coefficients_match_sklearn():
    x = np.linspace(-1, 1, 30)
    gram = limit_kernel(x, x, 3.0, "gaussian", quad_n=32)
    y = np.cos(3 * x)
    expected = KernelRidge(alpha=1e-6, kernel="precomputed").fit(gram, y).dual_coef_
    np.testing.assert_allclose(kernel_ridge_coefficients(gram, y, 1e-6), expected, rtol=1e-6, atol=1e-8)


def test_random_feature_fit_is_kernel_ridge_with_the_monte_carlo_kernel():
    x, weights, biases, y = problem(40, 90, seed=8)
    x_new = np.linspace(-1, 1, 11)
    phi, phi_new = random_features(x, weights, biases), random_features(x_new, weights, biases)
    ridge = 1e-5
    gram = phi @ phi.T / 90
    alpha = kernel_ridge_coefficients(gram, y, ridge * np.trace(gram) / 90)
    np.testing.assert_allclose(phi_new @ fit_output_layer(phi, y, ridge), (phi_new @ phi.T / 90) @ alpha,
                               rtol=1e-6, atol=1e-8)


def test_limit_kernel_prediction_matches_the_explicit_kernel_matrices():
    rng = np.random.default_rng(9)
    x, x_new = rng.uniform(-1, 1, 50), np.linspace(-1, 1, 17)
    y = np.stack([np.sin(4 * x), x**2], axis=1)
    kwargs = dict(activation="tanh", quad_n=20, panels=2)
    alpha = kernel_ridge_coefficients(limit_kernel(x, x, 6.0, **kwargs), y, 1e-4)
    expected = limit_kernel(x_new, x, 6.0, **kwargs) @ alpha
    np.testing.assert_allclose(limit_kernel_ridge_predict(x, y, x_new, 6.0, 1e-4, **kwargs), expected,
                               rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- spectra


def test_energy_of_a_sine_lies_exactly_at_its_frequency():
    n, spacing = 512, 2.0 / 512  # a periodic grid on [-1, 1)
    x = -1 + spacing * np.arange(n)
    sine = np.sin(2 * np.pi * 8 * x)  # angular frequency 16 pi ~ 50.3
    assert spectral_energy_outside(sine, spacing, 40.0) == pytest.approx(1.0)
    assert spectral_energy_outside(sine, spacing, 60.0) < 1e-20
    both = np.stack([sine, np.sin(2 * np.pi * 2 * x) + sine], axis=1)
    np.testing.assert_allclose(spectral_energy_outside(both, spacing, 30.0), [1.0, 0.5], rtol=1e-12)


@pytest.mark.parametrize("weight", [1.5, 4.0])
def test_energy_of_one_gaussian_unit_follows_the_closed_form(weight):
    # |FT of exp(-(a x - b)^2 / 2)|^2 is proportional to exp(-omega^2 / a^2): energy beyond w0 is erfc(w0 / |a|)
    grid = np.linspace(-160, 160, 2**16, endpoint=False)
    unit = random_features(grid, [weight], [0.8], "gaussian")[:, 0]
    bin_width = 2 * np.pi / 320.0
    for target_cutoff in (0.5 * weight, weight, 2 * weight):
        cutoff = (np.floor(target_cutoff / bin_width) + 0.5) * bin_width  # midway between two frequency bins
        expected = scipy.special.erfc(cutoff / weight)
        assert spectral_energy_outside(unit, grid[1] - grid[0], cutoff) == pytest.approx(expected, rel=1e-3)


def test_fitted_gaussian_networks_are_bandlimited():
    rng = np.random.default_rng(10)
    x_train = rng.uniform(-1, 1, 300)
    bound = 5.0
    weights, biases = sample_hidden_parameters(100, 1, bound, rng)
    coefficients = fit_output_layer(random_features(x_train, weights, biases, "gaussian"),
                                    np.sin(2 * np.pi * 8 * x_train))
    grid = np.linspace(-1000, 1000, 2**17, endpoint=False)  # wide enough for the broadest unit (smallest |a|)
    network = random_features(grid, weights, biases, "gaussian") @ coefficients
    # nothing of the network lies beyond ~5 Lambda, while the target (omega ~ 50 = 10 Lambda) lies only there
    assert spectral_energy_outside(network, grid[1] - grid[0], 5 * bound) < 1e-8


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="weight_bound"):
        sample_hidden_parameters(5, 1, 0.0, rng)
    with pytest.raises(ValueError, match="bias_bound"):
        sample_hidden_parameters(5, 1, 1.0, rng, bias_bound=-1.0)
    with pytest.raises(TypeError, match="rng"):
        sample_hidden_parameters(5, 1, 1.0, 3)
    with pytest.raises(ValueError, match="n_features"):
        sample_hidden_parameters(0, 1, 1.0, rng)
    with pytest.raises(ValueError, match="activation"):
        random_features([0.0], [[1.0]], [0.0], "softmax")
    with pytest.raises(ValueError, match="weights"):
        random_features(np.zeros((3, 2)), np.ones((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="biases"):
        random_features([0.0, 1.0], [[1.0]], [0.0, 1.0])
    with pytest.raises(ValueError, match="x must be"):
        random_features([], [[1.0]], [0.0])
    with pytest.raises(ValueError, match="ridge"):
        fit_output_layer(np.ones((3, 2)), np.ones(3), ridge=-1.0)
    with pytest.raises(TypeError, match="ridge"):
        fit_output_layer(np.ones((3, 2)), np.ones(3), ridge="small")
    with pytest.raises(ValueError, match="targets"):
        fit_output_layer(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        fit_output_layer(np.full((3, 2), np.nan), np.ones(3))
    with pytest.raises(ValueError, match="ridges"):
        ridge_path(np.ones((3, 2)), np.ones(3), [])
    with pytest.raises(ValueError, match="same shape"):
        relative_l2_error(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="zero"):
        relative_l2_error(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="quad_n"):
        box_quadrature(1.0, quad_n=0)
    with pytest.raises(ValueError, match="one-dimensional"):
        limit_kernel(np.zeros((3, 2)), np.zeros((3, 2)), 1.0)
    with pytest.raises(ValueError, match="ridge must be > 0"):
        kernel_ridge_coefficients(np.eye(2), np.ones(2), 0.0)
    with pytest.raises(ValueError, match="square"):
        kernel_ridge_coefficients(np.ones((2, 3)), np.ones(2), 1.0)
    with pytest.raises(ValueError, match="cutoff"):
        spectral_energy_outside(np.ones(8), 0.1, -1.0)
    with pytest.raises(ValueError, match="spacing"):
        spectral_energy_outside(np.ones(8), 0.0, 1.0)
    with pytest.raises(ValueError, match="identically zero"):
        spectral_energy_outside(np.zeros(8), 0.1, 1.0)
