"""Tests for lib.volume_sampling against independent oracles: numpy's Legendre series, scipy quadrature,
closed-form moments of projection DPPs, brute-force enumeration of a finite DPP, DPPy's tridiagonal-matrix
sampler of the Legendre ensemble, tensor-product quadrature of the volume-rescaled density, and sklearn's
weighted linear regression."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.polynomial import legendre as npleg
from scipy.integrate import quad
from scipy.stats import ks_2samp, kstest
from sklearn.linear_model import LinearRegression

from lib.stats import pooled_chisquare_pvalue
from lib.volume_sampling import (
    arcsine_envelope,
    christoffel,
    empirical_gram,
    error_ratio,
    legendre_features,
    optimal_weights,
    projection_coefficients,
    sample_discrete_projection_dpp,
    sample_optimal_density,
    sample_projection_dpp,
    sample_repeated_dpp,
    sample_volume_rescaled,
    squared_l2_error,
    weighted_least_squares,
)


def runge(x):
    return 1.0 / (1.0 + 25.0 * np.asarray(x) ** 2)


def numpy_features(x: np.ndarray, m: int) -> np.ndarray:
    """phi_j = sqrt(2j + 1) P_j evaluated by numpy's Legendre series."""
    return np.stack([np.sqrt(2 * j + 1) * npleg.legval(x, np.eye(m)[j]) for j in range(m)], axis=-1)


def christoffel_series(m: int) -> np.ndarray:
    """Legendre-series coefficients of k_m = sum_j (2j + 1) P_j^2, built with numpy's series product."""
    total = np.zeros(1)
    for j in range(m):
        unit = np.eye(m)[j]
        total = npleg.legadd(total, (2 * j + 1) * npleg.legmul(unit, unit))
    return total


def rho_cdf(m: int):
    """CDF of rho = k_m / m dmu, mu = dx / 2, from the antiderivative of the series."""
    antiderivative = npleg.legint(christoffel_series(m), lbnd=-1.0)
    return lambda x: npleg.legval(x, antiderivative) / (2.0 * m)


def gauss(n_nodes: int = 80) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = npleg.leggauss(n_nodes)
    return nodes, weights / 2.0


# --- features, Christoffel function, weights ---------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=20), st.integers(1, 25))
def test_legendre_features_match_numpy_series(points, m):
    x = np.array(points)
    np.testing.assert_allclose(legendre_features(x, m), numpy_features(x, m), atol=1e-9, rtol=1e-9)


def test_features_are_orthonormal_and_christoffel_closed_forms():
    nodes, weights = gauss()
    for m in [1, 2, 7, 20]:
        features = legendre_features(nodes, m)
        np.testing.assert_allclose(features.T @ (weights[:, None] * features), np.eye(m), atol=1e-12)
        np.testing.assert_allclose(christoffel(np.array([-1.0, 1.0]), m), [m * m, m * m])
        integral, _ = quad(lambda t, m=m: christoffel(np.array(t), m) / 2.0, -1.0, 1.0)
        assert integral == pytest.approx(m, rel=1e-10)
        x = np.linspace(-1, 1, 11)
        np.testing.assert_allclose(christoffel(x, m), npleg.legval(x, christoffel_series(m)), rtol=1e-10)
        np.testing.assert_allclose(optimal_weights(x, m) * npleg.legval(x, christoffel_series(m)), m)


def test_arcsine_envelope_bounds_the_optimal_density():
    x = np.cos(np.linspace(0.0, np.pi, 20_001))
    for m in [1, 2, 3, 5, 10, 20, 40]:
        ratio = np.pi * np.sqrt(1 - x**2) * christoffel(x, m) / (2 * m)  # rho / arcsine density
        assert ratio.max() <= arcsine_envelope(m)
    assert arcsine_envelope(1) == pytest.approx(np.pi / 2)  # tight for m = 1: rho = mu
    assert arcsine_envelope(10) < 2.5


# --- samplers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 3, 10])
def test_optimal_density_sampler_matches_its_cdf(m):
    points = sample_optimal_density(4000, m, np.random.default_rng(m))
    assert points.shape == (4000,)
    assert kstest(points, rho_cdf(m)).pvalue > 1e-3
    assert kstest(points, lambda x: (x + 1) / 2).pvalue < 1e-3 or m == 1  # rho is not uniform for m > 1


def test_projection_dpp_shapes_distinct_points_and_full_rank_design():
    rng = np.random.default_rng(0)
    assert sample_projection_dpp(6, rng).shape == (6,)
    samples = sample_projection_dpp(6, rng, size=500)
    assert samples.shape == (500, 6)
    assert np.all(np.abs(samples) <= 1)
    assert np.all(np.abs(np.linalg.det(legendre_features(samples, 6))) > 0)
    assert np.all(np.diff(np.sort(samples, axis=1), axis=1) > 0)


def test_projection_dpp_linear_statistic_has_closed_form_mean_and_variance():
    """For g(x) = x^2 and S = sum_i g(x_i): E S = <g k_m> and
    Var S = <g^2 k_m> - sum_{a,b} <g phi_a phi_b>^2 (projection kernel), both by Gauss quadrature."""
    m, size = 5, 20_000
    nodes, weights = gauss()
    g = nodes**2
    features = numpy_features(nodes, m)
    mean = weights @ (g * np.sum(features**2, axis=1))
    cross = features.T @ ((weights * g)[:, None] * features)
    variance = weights @ (g**2 * np.sum(features**2, axis=1)) - np.sum(cross**2)
    statistic = np.sum(sample_projection_dpp(m, np.random.default_rng(1), size=size) ** 2, axis=1)
    assert abs(statistic.mean() - mean) < 4 * np.sqrt(variance / size)
    assert statistic.var() == pytest.approx(variance, rel=0.06)
    iid_variance = m * (weights @ (g**2 * np.sum(features**2, axis=1)) / m - (mean / m) ** 2)
    assert variance < 0.5 * iid_variance  # the test would notice independent points


def test_projection_dpp_matches_dppy_legendre_ensemble():
    dppy_ope = pytest.importorskip("dppy.multivariate_jacobi_ope")
    m, size = 4, 800
    ensemble = dppy_ope.MultivariateJacobiOPE(m, np.array([[0.0, 0.0]]))  # Jacobi a = b = 0: Legendre
    state = np.random.RandomState(0)
    reference = np.array([ensemble.sample(random_state=state).ravel() for _ in range(size)])
    ours = sample_projection_dpp(m, np.random.default_rng(2), size=size)
    assert reference.shape == ours.shape
    pick = np.random.default_rng(3).integers(0, m, size)
    statistics = [
        lambda s: s[np.arange(size), pick],                       # one point: distributed as rho
        lambda s: np.diff(np.sort(s, axis=1), axis=1).min(axis=1),  # smallest gap: repulsion
        lambda s: np.sum(s**2, axis=1),                          # a linear statistic
    ]
    for statistic in statistics:
        assert ks_2samp(statistic(ours), statistic(reference)).pvalue > 1e-3
    assert kstest(ours[np.arange(size), pick], rho_cdf(m)).pvalue > 1e-3
    iid = sample_optimal_density(size * m, m, np.random.default_rng(4)).reshape(size, m)
    assert ks_2samp(statistics[1](iid), statistics[1](reference)).pvalue < 1e-3  # power against i.i.d.


def test_discrete_projection_dpp_matches_brute_force_enumeration():
    rng = np.random.default_rng(5)
    features = rng.standard_normal((6, 3))
    basis, _ = np.linalg.qr(features)
    subsets = list(itertools.combinations(range(6), 3))
    probabilities = np.array([np.linalg.det(basis[list(s)]) ** 2 for s in subsets])
    assert probabilities.sum() == pytest.approx(1.0)  # Cauchy-Binet
    draws = [tuple(sorted(sample_discrete_projection_dpp(features, rng))) for _ in range(6000)]
    counts = np.array([draws.count(s) for s in subsets])
    assert pooled_chisquare_pvalue(counts, probabilities) > 1e-3
    assert pooled_chisquare_pvalue(counts, np.full(len(subsets), 1.0)) < 1e-3  # power


def test_volume_rescaled_sampling_matches_its_density_by_tensor_quadrature():
    """E_vol[h] = E_rho[h det G] / E_rho[det G] with G the weighted empirical Gram; m = 2, n = 3."""
    m, n, size = 2, 3, 40_000
    nodes, weights = gauss(40)
    rho = christoffel(nodes, m) / m
    grid = np.stack(np.meshgrid(nodes, nodes, nodes, indexing="ij"), axis=-1).reshape(-1, n)
    mass = np.einsum("i,j,k->ijk", weights * rho, weights * rho, weights * rho).ravel()
    features = legendre_features(grid, m) * np.sqrt(optimal_weights(grid, m))[..., None]
    det_gram = np.linalg.det(np.einsum("pia,pib->pab", features, features) / n)
    expected_det = math.factorial(n) / (math.factorial(n - m) * n**m)  # Cauchy-Binet, E_rho[w phi phi^T] = I
    assert mass @ det_gram == pytest.approx(expected_det, rel=1e-6)

    def spread(x):
        return (x[:, 0] - x[:, 1]) ** 2 + (x[:, 0] - x[:, 2]) ** 2 + (x[:, 1] - x[:, 2]) ** 2

    exact = (mass * det_gram) @ spread(grid) / expected_det
    iid_value = mass @ spread(grid)
    values = spread(sample_volume_rescaled(n, m, np.random.default_rng(6), size=size))
    error = values.std() / np.sqrt(size)
    assert abs(values.mean() - exact) < 4 * error
    assert abs(iid_value - exact) > 10 * error  # the test can tell volume sampling from i.i.d.


def test_volume_rescaled_shapes_and_contains_a_dpp_sample():
    rng = np.random.default_rng(7)
    assert sample_volume_rescaled(5, 5, rng).shape == (5,)
    points = sample_volume_rescaled(9, 4, rng, size=50)
    assert points.shape == (50, 9)
    assert np.all([np.linalg.matrix_rank(legendre_features(x, 4)) == 4 for x in points])


def test_volume_rescaled_least_squares_is_unbiased():
    m, n, size = 4, 6, 20_000
    points = sample_volume_rescaled(n, m, np.random.default_rng(8), size=size)
    coefficients = weighted_least_squares(points, runge(points), m)
    exact = [quad(lambda t, j=j: runge(t) * np.sqrt(2 * j + 1) * npleg.legval(t, np.eye(m)[j]) / 2, -1, 1)[0]
             for j in range(m)]
    standard_error = coefficients.std(axis=0) / np.sqrt(size)
    assert np.all(np.abs(coefficients.mean(axis=0) - exact) < 5 * standard_error)


def test_dpp_interpolation_has_expected_error_ratio_m_plus_one():
    m, size = 3, 20_000
    samples = sample_projection_dpp(m, np.random.default_rng(9), size=size)
    ratios = error_ratio(runge, weighted_least_squares(samples, runge(samples), m))
    assert ratios.mean() == pytest.approx(m + 1, rel=0.05)


def test_repeated_dpp_blocks_are_dpp_samples_and_gram_is_unbiased():
    m, repeats, size = 5, 3, 4000
    points = sample_repeated_dpp(repeats, m, np.random.default_rng(10), size=size)
    assert points.shape == (size, repeats * m)
    assert sample_repeated_dpp(2, m, np.random.default_rng(10)).shape == (2 * m,)
    blocks = points.reshape(size, repeats, m)
    assert np.all(np.abs(np.linalg.det(legendre_features(blocks, m))) > 0)
    grams = empirical_gram(points, m)
    tolerance = 5 * grams.std(axis=0).max() / np.sqrt(size)
    np.testing.assert_allclose(grams.mean(axis=0), np.eye(m), atol=tolerance)
    block_sums = np.sum(blocks**2, axis=2)
    assert abs(np.corrcoef(block_sums[:, 0], block_sums[:, 1])[0, 1]) < 0.06  # independent repetitions


# --- least squares and errors ------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(0, 12), st.integers(0, 2**31))
def test_weighted_least_squares_matches_sklearn(m, extra, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, m + extra)
    y = np.cos(3 * x) + rng.standard_normal(x.size)
    design = numpy_features(x, m)
    weights = m / np.sum(design**2, axis=1)
    reference = LinearRegression(fit_intercept=False).fit(design, y, sample_weight=weights)
    tolerance = 1e-6 * (1 + abs(y).max())
    np.testing.assert_allclose(weighted_least_squares(x, y, m), reference.coef_, atol=tolerance)


def test_weighted_least_squares_reproduces_polynomials_and_interpolates():
    rng = np.random.default_rng(11)
    coefficients = rng.standard_normal(6)
    x = sample_optimal_density(20, 6, rng)
    polynomial_values = legendre_features(x, 6) @ coefficients
    np.testing.assert_allclose(weighted_least_squares(x, polynomial_values, 6), coefficients)
    nodes = sample_projection_dpp(6, rng)
    fitted = weighted_least_squares(nodes, runge(nodes), 6)
    np.testing.assert_allclose(legendre_features(nodes, 6) @ fitted, runge(nodes), atol=1e-10)


def test_batched_fits_and_grams_equal_one_at_a_time():
    rng = np.random.default_rng(12)
    points = sample_optimal_density(7 * 15, 5, rng).reshape(7, 15)
    values = runge(points)
    one_at_a_time = [weighted_least_squares(x, y, 5) for x, y in zip(points, values, strict=True)]
    np.testing.assert_allclose(weighted_least_squares(points, values, 5), one_at_a_time, atol=1e-12)
    np.testing.assert_allclose(empirical_gram(points, 5), [empirical_gram(x, 5) for x in points], atol=1e-12)


def test_empirical_gram_is_the_weighted_sum_of_outer_products():
    x = np.array([-1.0, -0.3, 0.2, 0.9])
    m = 3
    features = [numpy_features(t, m) for t in x]
    expected = sum(m / np.sum(v**2) * np.outer(v, v) for v in features) / x.size
    np.testing.assert_allclose(empirical_gram(x, m), expected)


def test_projection_and_errors_match_scipy_quadrature():
    m = 5
    exact = [quad(lambda t, j=j: np.abs(t) * np.sqrt(2 * j + 1) * npleg.legval(t, np.eye(m)[j]) / 2, -1, 1,
                  points=[0.0])[0] for j in range(m)]
    best = projection_coefficients(np.abs, m)
    np.testing.assert_allclose(best, exact, atol=1e-5)
    norm_squared = quad(lambda t: t**2 / 2, -1, 1)[0]
    assert squared_l2_error(np.abs, np.zeros(m)) == pytest.approx(norm_squared, rel=1e-10)
    best_error = norm_squared - np.sum(np.array(exact) ** 2)  # Pythagoras
    assert squared_l2_error(np.abs, best) == pytest.approx(best_error, rel=1e-3)
    batch = np.stack([best, np.zeros(m), best + 0.1])
    ratios = error_ratio(np.abs, batch)
    assert ratios.shape == (3,)
    assert ratios[0] == pytest.approx(1.0, rel=1e-3)
    assert ratios[1] == pytest.approx(norm_squared / best_error, rel=1e-3)
    assert ratios[2] == pytest.approx(1 + 0.01 * m / best_error, rel=1e-3)  # orthonormal basis


# --- bad inputs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: legendre_features(np.array([0.0, 1.5]), 3), ValueError),
        (lambda: legendre_features(np.array([np.nan]), 3), ValueError),
        (lambda: legendre_features(np.array([0.0]), 0), ValueError),
        (lambda: legendre_features(np.array([0.0]), 2.0), TypeError),
        (lambda: christoffel(np.array([0.0]), True), TypeError),
        (lambda: arcsine_envelope(0), ValueError),
        (lambda: sample_optimal_density(0, 3, np.random.default_rng(0)), ValueError),
        (lambda: sample_optimal_density(5, 3, 0), TypeError),
        (lambda: sample_projection_dpp(0, np.random.default_rng(0)), ValueError),
        (lambda: sample_projection_dpp(3, np.random.default_rng(0), size=0), ValueError),
        (lambda: sample_projection_dpp(3, np.random.RandomState(0)), TypeError),
        (lambda: sample_volume_rescaled(2, 3, np.random.default_rng(0)), ValueError),
        (lambda: sample_repeated_dpp(0, 3, np.random.default_rng(0)), ValueError),
        (lambda: sample_discrete_projection_dpp(np.ones((4, 2)), np.random.default_rng(0)), ValueError),
        (lambda: sample_discrete_projection_dpp(np.eye(3)[:2], np.random.default_rng(0)), ValueError),
        (lambda: sample_discrete_projection_dpp(np.ones(4), np.random.default_rng(0)), ValueError),
        (lambda: weighted_least_squares(np.array([0.0, 0.5]), np.array([1.0, 2.0]), 3), ValueError),
        (lambda: weighted_least_squares(np.array([0.0, 0.5, 0.7]), np.array([1.0, 2.0]), 2), ValueError),
        (lambda: weighted_least_squares(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), 2), ValueError),
        (lambda: weighted_least_squares(np.array([0.1, 0.1, 0.5]), np.ones(3), 3), ValueError),  # singular
        (lambda: empirical_gram(np.array([0.0, 2.0]), 1), ValueError),
        (lambda: squared_l2_error(np.abs, np.zeros((2, 2, 2))), ValueError),
        (lambda: projection_coefficients(np.abs, 3, n_nodes=0), ValueError),
        (lambda: error_ratio(lambda x: x, np.zeros(3)), ValueError),  # f in V_m: the ratio is undefined
    ],
)
def test_bad_inputs_raise(call, error):
    with pytest.raises(error):
        call()
