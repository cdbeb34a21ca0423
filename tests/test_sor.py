"""Tests for lib.sor against independent oracles: dense linear algebra, scipy's sparse solver, an
element-by-element SOR sweep written out in plain Python, and numpy eigenvalues for Young's theory."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.sor import (
    jacobi_spectral_radius,
    laplacian_2d,
    omega_star,
    sor_iterations,
    sor_iterations_batch,
    sor_residual_history,
    sor_spectral_radius,
    young_spectral_radius,
)


def laplacian_by_loops(m: int) -> np.ndarray:
    """The 5-point Laplacian assembled point by point (row-major numbering of the m x m grid)."""
    n = m * m
    matrix = np.zeros((n, n))
    for i in range(m):
        for j in range(m):
            k = i * m + j
            matrix[k, k] = 4.0
            for di, dj in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
                if 0 <= i + di < m and 0 <= j + dj < m:
                    matrix[k, (i + di) * m + (j + dj)] = -1.0
    return matrix


def sor_by_loops(A: np.ndarray, b: np.ndarray, omega: float, sweeps: int) -> np.ndarray:
    """Textbook SOR: x_i <- (1 - omega) x_i + omega (b_i - sum_{j != i} a_ij x_j) / a_ii, i = 0, 1, ..."""
    x = np.zeros_like(b)
    for _ in range(sweeps):
        for i in range(len(b)):
            off_diagonal = A[i] @ x - A[i, i] * x[i]
            x[i] = (1.0 - omega) * x[i] + omega * (b[i] - off_diagonal) / A[i, i]
    return x


def shifted(m: int, shift: float) -> sp.csr_matrix:
    return (laplacian_2d(m) + shift * sp.identity(m * m)).tocsr()


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_laplacian_matches_pointwise_assembly_and_eigenvalues(m):
    A = laplacian_2d(m)
    assert sp.issparse(A) and A.shape == (m * m, m * m)
    np.testing.assert_array_equal(A.toarray(), laplacian_by_loops(m))
    one_d = 2.0 - 2.0 * np.cos(np.arange(1, m + 1) * np.pi / (m + 1))
    expected = np.sort((one_d[:, None] + one_d[None, :]).ravel())
    np.testing.assert_allclose(np.linalg.eigvalsh(A.toarray()), expected, atol=1e-12)


@pytest.mark.parametrize("omega", [0.7, 1.0, 1.5, 1.9])
def test_sor_iterates_equal_elementwise_sweeps(omega):
    rng = np.random.default_rng(0)
    A = shifted(4, 0.3)
    b = rng.standard_normal(16)
    for sweeps in [1, 2, 7]:
        k, x = sor_iterations(A, b, omega, tol=1e-300, max_iter=sweeps)
        assert k == sweeps
        np.testing.assert_allclose(x, sor_by_loops(A.toarray(), b, omega, sweeps), rtol=1e-12, atol=1e-12)


def test_omega_one_is_gauss_seidel():
    """Gauss-Seidel as the splitting x <- (D + L)^{-1} (b - U x), a different formula from SOR's update."""
    rng = np.random.default_rng(1)
    A = shifted(5, 0.0).toarray()
    b = rng.standard_normal(25)
    lower, upper = np.tril(A), np.triu(A, k=1)
    x = np.zeros(25)
    for _ in range(6):
        x = np.linalg.solve(lower, b - upper @ x)
    _, x_sor = sor_iterations(A, b, 1.0, tol=1e-300, max_iter=6)
    np.testing.assert_allclose(x_sor, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shift", "omega"), [(0.0, 1.0), (0.0, 1.56), (-0.1, 1.8), (0.45, 1.3), (1.0, 0.8)])
def test_sor_solution_matches_spsolve_and_stops_at_first_k(shift, omega):
    rng = np.random.default_rng(2)
    A = shifted(10, shift)
    b = rng.standard_normal(100)
    tol = 1e-8
    k, x = sor_iterations(A, b, omega, tol=tol)
    exact = spla.spsolve(A.tocsc(), b)
    assert np.linalg.norm(b - A @ x) < tol * np.linalg.norm(b)
    condition = np.linalg.cond(A.toarray())
    assert np.linalg.norm(x - exact) <= 2 * condition * tol * np.linalg.norm(exact)
    _, x_before = sor_iterations(A, b, omega, tol=tol, max_iter=k - 1)
    assert np.linalg.norm(b - A @ x_before) >= tol * np.linalg.norm(b)


def test_sor_returns_cap_when_not_converged():
    A = shifted(6, 0.0)
    b = np.ones(36)
    k, x = sor_iterations(A, b, 1.0, tol=1e-12, max_iter=5)
    assert k == 5
    assert np.linalg.norm(b - A @ x) > 1e-12 * np.linalg.norm(b)


def test_residual_history_is_consistent_with_the_stopping_rule():
    rng = np.random.default_rng(3)
    A = shifted(10, 0.05)
    b = rng.standard_normal(100)
    history = sor_residual_history(A, b, 1.4, tol=1e-6)
    k, x = sor_iterations(A, b, 1.4, tol=1e-6)
    assert history.shape == (k + 1,)
    assert history[0] == 1.0
    assert history[-1] < 1e-6 and np.all(history[:-1] >= 1e-6)
    np.testing.assert_allclose(history[-1], np.linalg.norm(b - A @ x) / np.linalg.norm(b))


def test_batch_counts_equal_one_at_a_time_counts():
    rng = np.random.default_rng(4)
    m = 10
    shifts = np.array([-0.12, 0.0, 0.2, 0.45])
    rhs = rng.standard_normal((4, m * m))
    omegas = np.array([1.0, 1.3, 1.6, 1.8, 1.95])
    batch = sor_iterations_batch(shifts, rhs, omegas, m)
    reference = np.array(
        [[sor_iterations(shifted(m, c), b, w)[0] for w in omegas] for c, b in zip(shifts, rhs, strict=True)]
    )
    np.testing.assert_array_equal(batch, reference)


def test_batch_accepts_one_row_of_omegas_per_system():
    rng = np.random.default_rng(5)
    m = 6
    shifts = np.array([0.0, 0.3])
    rhs = rng.standard_normal((2, m * m))
    omegas = np.array([[1.1, 1.7], [1.5, 1.2]])
    batch = sor_iterations_batch(shifts, rhs, omegas, m, tol=1e-7)
    for i in range(2):
        for j in range(2):
            assert batch[i, j] == sor_iterations(shifted(m, shifts[i]), rhs[i], omegas[i, j], tol=1e-7)[0]


def test_batch_cap():
    counts = sor_iterations_batch(
        np.array([0.0]), np.ones((1, 25)), np.array([1.0, 1.5]), 5, tol=1e-12, max_iter=3
    )
    np.testing.assert_array_equal(counts, [[3, 3]])


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(2, 5),
    shift=st.floats(-0.2, 2.0),
    omega=st.floats(0.3, 1.95),
    seed=st.integers(0, 2**16),
)
def test_batch_equals_dense_property(m, shift, omega, seed):
    shift = max(shift, 0.9 * (4 * np.cos(np.pi / (m + 1)) - 4))  # keep A positive definite
    rhs = np.random.default_rng(seed).standard_normal((1, m * m))
    batch = sor_iterations_batch(np.array([shift]), rhs, np.array([omega]), m, tol=1e-6, max_iter=3000)
    assert batch[0, 0] == sor_iterations(shifted(m, shift), rhs[0], omega, tol=1e-6, max_iter=3000)[0]


@pytest.mark.parametrize("shift", [-0.1, 0.0, 0.45])
def test_jacobi_spectral_radius_matches_eigenvalues(shift):
    A = shifted(10, shift).toarray()
    jacobi = np.eye(100) - A / np.diag(A)[:, None]
    assert jacobi_spectral_radius(10, shift) == pytest.approx(
        np.max(np.abs(np.linalg.eigvals(jacobi))), rel=1e-10
    )


@pytest.mark.parametrize("shift", [-0.1, 0.0, 0.45])
def test_young_formula_matches_numpy_eigenvalues(shift):
    A = shifted(10, shift)
    mu = jacobi_spectral_radius(10, shift)
    best = omega_star(mu)
    grid = np.linspace(0.5, 1.95, 30)
    numeric = np.array([sor_spectral_radius(A, w) for w in grid])
    np.testing.assert_allclose(young_spectral_radius(mu, grid), numeric, rtol=1e-6, atol=1e-6)
    # at omega* the spectral radius is omega* - 1, and no omega on a fine grid does better
    assert sor_spectral_radius(A, best) == pytest.approx(best - 1.0, abs=1e-6)
    fine = np.linspace(1.0, 1.95, 96)
    fine_numeric = np.array([sor_spectral_radius(A, w) for w in fine])
    assert abs(fine[np.argmin(fine_numeric)] - best) <= 0.01
    assert fine_numeric.min() >= best - 1.0 - 1e-6


def test_omega_star_closed_form_values():
    assert omega_star(0.0) == 1.0
    assert omega_star(0.6) == pytest.approx(2.0 / 1.8)
    np.testing.assert_allclose(omega_star(np.array([0.0, 0.8])), [1.0, 2.0 / 1.6])


@pytest.mark.parametrize(("shift", "omega"), [(0.0, 1.0), (-0.1, 1.0), (0.0, 1.3), (-0.1, 1.95)])
def test_iteration_count_follows_the_spectral_radius(shift, omega):
    """For many iterations, ||r_k|| ~ rho^k, so k ~ log(tol) / log(rho) (within 20 %)."""
    rng = np.random.default_rng(6)
    A = shifted(10, shift)
    rho = sor_spectral_radius(A, omega)
    predicted = np.log(1e-8) / np.log(rho)
    assert predicted > 100
    k, _ = sor_iterations(A, rng.standard_normal(100), omega)
    assert abs(k - predicted) <= 0.2 * predicted


def test_bad_inputs_raise():
    A, b = shifted(3, 0.0), np.ones(9)
    with pytest.raises(ValueError, match="omega"):
        sor_iterations(A, b, 2.0)
    with pytest.raises(ValueError, match="omega"):
        sor_iterations(A, b, 0.0)
    with pytest.raises(ValueError, match="tol"):
        sor_iterations(A, b, 1.0, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        sor_iterations(A, b, 1.0, max_iter=0)
    with pytest.raises(TypeError, match="max_iter"):
        sor_iterations(A, b, 1.0, max_iter=2.5)
    with pytest.raises(ValueError, match="b must have shape"):
        sor_iterations(A, np.ones(8), 1.0)
    with pytest.raises(ValueError, match="b must be nonzero"):
        sor_residual_history(A, np.zeros(9), 1.0)
    with pytest.raises(ValueError, match="square"):
        sor_iterations(np.ones((2, 3)), np.ones(2), 1.0)
    with pytest.raises(ValueError, match="diagonal"):
        sor_iterations(np.array([[0.0, 1.0], [1.0, 0.0]]), np.ones(2), 1.0)
    with pytest.raises(TypeError, match="m must be an int"):
        laplacian_2d(3.0)
    with pytest.raises(ValueError, match="m must be >= 1"):
        laplacian_2d(0)
    with pytest.raises(ValueError, match="shifts"):
        sor_iterations_batch(np.array([-1.5]), np.ones((1, 9)), np.array([1.0]), 3)
    with pytest.raises(ValueError, match="rhs must have shape"):
        sor_iterations_batch(np.array([0.0]), np.ones((1, 8)), np.array([1.0]), 3)
    with pytest.raises(ValueError, match="every row of rhs"):
        sor_iterations_batch(np.array([0.0]), np.zeros((1, 9)), np.array([1.0]), 3)
    with pytest.raises(ValueError, match="omegas must have shape"):
        sor_iterations_batch(np.array([0.0]), np.ones((1, 9)), np.ones((2, 2)), 3)
    with pytest.raises(ValueError, match="omega must lie"):
        sor_iterations_batch(np.array([0.0]), np.ones((1, 9)), np.array([1.0, 2.5]), 3)
    with pytest.raises(ValueError, match="shift"):
        jacobi_spectral_radius(10, -0.5)
    with pytest.raises(ValueError, match="mu"):
        omega_star(1.0)
    with pytest.raises(ValueError, match="omega"):
        young_spectral_radius(0.5, 2.0)
    with pytest.raises(ValueError, match="square"):
        sor_spectral_radius(np.ones(3), 1.0)
