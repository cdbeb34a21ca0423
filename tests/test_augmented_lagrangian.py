"""Tests for lib.augmented_lagrangian against finite differences, known optima, scipy's SLSQP and closed forms."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import null_space
from scipy.optimize import approx_fprime, minimize
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from lib.augmented_lagrangian import (
    adasketch_newton,
    constrained_logistic_regression,
    exact_auglag,
    exact_auglag_grad,
    hs6,
    hs7,
    hs27,
    kkt_matrix,
    kkt_residual,
    modified_hessian,
    random_equality_qp,
)


def logistic_problem():
    data = load_breast_cancer()
    features = StandardScaler().fit_transform(data.data)
    return constrained_logistic_regression(features, 2.0 * data.target - 1.0, n_linear=10,
                                           rng=np.random.default_rng(0))


PROBLEMS = {"HS6": hs6, "HS7": hs7, "HS27": hs27, "logistic": logistic_problem,
            "QP": lambda: random_equality_qp(6, 2, rng=np.random.default_rng(1))}


def slsqp(problem):
    constraint = {"type": "eq", "fun": problem.constraints, "jac": problem.jacobian}
    result = minimize(problem.objective, problem.x0, jac=problem.gradient, constraints=[constraint],
                      method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
    return result.x, result.fun


def least_squares_multipliers(problem, x):
    """The multipliers that minimise ||grad f + G^T lam|| at x."""
    return np.linalg.lstsq(problem.jacobian(x).T, -problem.gradient(x), rcond=None)[0]


def random_point(problem, seed):
    rng = np.random.default_rng(seed)
    return problem.x0 + 0.3 * rng.standard_normal(problem.n), rng.standard_normal(problem.m)


@pytest.mark.parametrize("name", PROBLEMS)
def test_problem_derivatives_match_finite_differences(name):
    problem = PROBLEMS[name]()
    x, lam = random_point(problem, 0)
    np.testing.assert_allclose(problem.gradient(x), approx_fprime(x, problem.objective, 1e-7), rtol=1e-4,
                               atol=1e-5)
    jac_fd = np.array([approx_fprime(x, lambda v, i=i: problem.constraints(v)[i], 1e-7) for i in range(problem.m)])
    np.testing.assert_allclose(problem.jacobian(x), jac_fd, rtol=1e-4, atol=1e-4)
    hess_fd = np.array([approx_fprime(x, lambda v, j=j: problem.lagrangian_gradient(v, lam)[j], 1e-7)
                        for j in range(problem.n)])
    np.testing.assert_allclose(problem.lagrangian_hessian(x, lam), hess_fd, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("eta1, eta2", [(1.0, 0.1), (10.0, 0.01)])
def test_exact_auglag_gradient_matches_finite_differences(name, eta1, eta2):
    problem = PROBLEMS[name]()
    x, lam = random_point(problem, 1)
    n = problem.n
    merit = lambda z: exact_auglag(problem, z[:n], z[n:], eta1, eta2)  # noqa: E731
    numeric = approx_fprime(np.concatenate([x, lam]), merit, 1e-7)
    grad_x, grad_lam = exact_auglag_grad(problem, x, lam, eta1, eta2)
    scale = 1.0 + np.abs(numeric).max()
    np.testing.assert_allclose(np.concatenate([grad_x, grad_lam]), numeric, atol=1e-5 * scale)


def test_exact_auglag_by_hand_on_hs6():
    x, lam = np.array([0.5, 1.0]), np.array([2.0])
    f, c = 0.25, 10.0 * (1.0 - 0.25)
    grad_l = np.array([-1.0, 0.0]) + 2.0 * np.array([-10.0, 10.0])
    expected = f + 2.0 * c + 0.5 * 3.0 * c**2 + 0.5 * 0.2 * grad_l @ grad_l
    assert exact_auglag(hs6(), x, lam, 3.0, 0.2) == pytest.approx(expected)


def test_kkt_residual_closed_form():
    assert kkt_residual(np.array([3.0, 0.0]), np.array([4.0])) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="1-D"):
        kkt_residual(np.ones((2, 2)), np.ones(2))


@pytest.mark.parametrize("name", ["HS6", "HS7", "HS27"])
def test_known_optima_are_kkt_points_and_stationary_for_the_merit(name):
    problem = PROBLEMS[name]()
    x_star = problem.x_star
    lam_star = least_squares_multipliers(problem, x_star)
    assert kkt_residual(problem.lagrangian_gradient(x_star, lam_star), problem.constraints(x_star)) < 1e-10
    grad_x, grad_lam = exact_auglag_grad(problem, x_star, lam_star, 1.0, 0.1)
    assert np.linalg.norm(np.concatenate([grad_x, grad_lam])) < 1e-10


@pytest.mark.parametrize("name", ["HS6", "HS7", "HS27", "QP"])
def test_known_optima_agree_with_slsqp(name):
    problem = PROBLEMS[name]()
    x_slsqp, _ = slsqp(problem)
    np.testing.assert_allclose(x_slsqp, problem.x_star, atol=1e-4)


def test_modified_hessian_keeps_a_hessian_positive_on_the_null_space():
    hess = np.diag([1.0, -1.0])
    jac = np.array([[0.0, 1.0]])  # null space = first axis, where the curvature is +1
    np.testing.assert_array_equal(modified_hessian(hess, jac), hess)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6))
def test_modified_hessian_makes_the_reduced_hessian_positive_definite(seed, n):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, n))
    root = rng.standard_normal((n, n))
    hess = root + root.T
    jac = rng.standard_normal((m, n))
    modified = modified_hessian(hess, jac, xi_b=0.1)
    basis = null_space(jac)
    reduced = basis.T @ hess @ basis
    if np.linalg.eigvalsh(reduced)[0] >= 1e-6:
        np.testing.assert_array_equal(modified, hess)
    else:
        np.testing.assert_allclose(modified, hess + (0.1 + np.linalg.norm(hess, 2)) * np.eye(n))
        assert np.linalg.eigvalsh(basis.T @ modified @ basis)[0] >= 0.1 - 1e-9


def test_kkt_matrix_layout():
    B, G = np.diag([1.0, 2.0, 3.0]), np.array([[1.0, 2.0, 3.0]])
    A = kkt_matrix(B, G)
    np.testing.assert_array_equal(A, A.T)
    np.testing.assert_array_equal(A[:3, :3], B)
    np.testing.assert_array_equal(A[3, :3], G[0])
    assert A[3, 3] == 0.0
    with pytest.raises(ValueError, match="hessian_block"):
        kkt_matrix(np.eye(2), G)


@pytest.mark.parametrize("name", ["HS6", "HS7", "HS27"])
@pytest.mark.parametrize("sketch", ["rk", "gauss"])
def test_adasketch_newton_finds_the_known_optimum(name, sketch):
    problem = PROBLEMS[name]()
    history = adasketch_newton(problem, rng=np.random.default_rng(0), sketch=sketch, kappa=0.3, tol=1e-6)
    assert history.converged
    assert history.kkt[-1] <= 1e-6
    np.testing.assert_allclose(history.x, problem.x_star, atol=1e-4)
    assert len(history.kkt) == history.iterations + 1 == len(history.eta1) + 1


def test_adasketch_newton_matches_slsqp_on_constrained_logistic_regression():
    problem = logistic_problem()
    _, f_slsqp = slsqp(problem)
    history = adasketch_newton(problem, rng=np.random.default_rng(0), kappa=0.3, tol=1e-6)
    assert history.converged
    assert abs(problem.objective(history.x) - f_slsqp) <= 1e-6 * abs(f_slsqp)
    np.testing.assert_allclose(problem.constraints(history.x), 0.0, atol=1e-6)


def test_exact_kkt_solve_takes_one_unit_step_on_a_quadratic_program():
    problem = random_equality_qp(8, 3, rng=np.random.default_rng(2))
    history = adasketch_newton(problem, rng=np.random.default_rng(0), sketch="gauss", kappa=1e-9, tol=1e-7)
    assert history.converged and history.iterations == 1 and history.alpha == [1.0]
    np.testing.assert_allclose(history.x, problem.x_star, atol=1e-7)


def test_paper_accuracy_mode_converges_on_a_tiny_problem():
    history = adasketch_newton(hs7(), rng=np.random.default_rng(0), accuracy="paper", sketch="gauss", tol=1e-6)
    assert history.converged
    np.testing.assert_allclose(history.x, hs7().x_star, atol=1e-5)
    assert max(history.solver_accuracy) < 1e-3  # the paper's condition demands near-exact solves


def test_descent_failures_raise_eta1_and_lower_eta2():
    history = adasketch_newton(hs27(), rng=np.random.default_rng(0), eta1=1e-3, eta2=1.0, kappa=0.3)
    assert sum(history.descent_retries) > 0
    assert history.eta1[-1] > 1e-3 and history.eta2[-1] < 1.0
    assert np.all(np.diff(history.eta1) >= 0) and np.all(np.diff(history.eta2) <= 0)


def test_schedule_callable_is_used():
    seen = []

    def schedule(k, kkt):
        seen.append((k, kkt))
        return 0.5

    history = adasketch_newton(hs6(), rng=np.random.default_rng(0), kappa=schedule, max_iter=3)
    assert [k for k, _ in seen] == [0, 1, 2] and history.status == "max_iter"
    assert [kkt for _, kkt in seen] == history.kkt[:3]


def test_singular_jacobian_stops_the_run():
    """At w = 0 the gradient of ||w||^2 - 1 vanishes, so G G^T is singular and the method must stop."""
    logistic = logistic_problem()
    history = adasketch_newton(logistic, rng=np.random.default_rng(0), x0=np.zeros(logistic.n))
    assert history.status == "singular_jacobian" and history.iterations == 0


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"sketch": "srht"}, ValueError, "sketch must be one of"),
        ({"accuracy": "exact"}, ValueError, "accuracy must be"),
        ({"eta1": 0.0}, ValueError, "eta1 and eta2 must be > 0"),
        ({"beta": 0.5}, ValueError, "beta must lie in"),
        ({"nu": 1.0}, ValueError, "nu must be > 1"),
        ({"tol": 0.0}, ValueError, "tol must be > 0"),
        ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),
        ({"kappa": 1.5}, ValueError, "solver accuracy"),
        ({"x0": np.zeros(3)}, ValueError, "x must have shape"),
        ({"rng": 1}, TypeError, "rng must be a numpy.random.Generator"),
    ],
)
def test_adasketch_newton_bad_inputs(kwargs, error, match):
    arguments = {"rng": np.random.default_rng(0)}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        adasketch_newton(hs6(), **arguments)


def test_other_bad_inputs():
    with pytest.raises(TypeError, match="EqualityProblem"):
        exact_auglag("hs6", np.zeros(2), np.zeros(1), 1.0, 0.1)
    with pytest.raises(ValueError, match="lam must have shape"):
        exact_auglag_grad(hs6(), np.zeros(2), np.zeros(2), 1.0, 0.1)
    with pytest.raises(ValueError, match="xi_b must be > 0"):
        modified_hessian(np.eye(2), np.ones((1, 2)), xi_b=0.0)
    with pytest.raises(ValueError, match="jacobian must have shape"):
        modified_hessian(np.eye(2), np.ones((1, 3)))
    with pytest.raises(ValueError, match="labels must be -1 or"):
        constrained_logistic_regression(np.ones((4, 3)), np.array([0, 1, 0, 1]), n_linear=1,
                                        rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_linear must be <"):
        constrained_logistic_regression(np.ones((4, 3)), np.array([1, -1, 1, -1]), n_linear=3,
                                        rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="m must be < n"):
        random_equality_qp(3, 3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="curvature"):
        random_equality_qp(4, 1, rng=np.random.default_rng(0), curvature=(0.0, 1.0))
