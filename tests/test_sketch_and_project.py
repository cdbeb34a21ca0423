"""Tests for lib.sketch_and_project: convergence to numpy's solve, the projection property, flop counts, errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.sketch_and_project import default_check_every, sketch_solve, sketch_step_flops


def well_conditioned_system(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n)) + 3.0 * np.sqrt(n) * np.eye(n)
    return A, rng.standard_normal(n)


@pytest.mark.parametrize("sketch, rows", [("rk", "norm"), ("rk", "uniform"), ("gauss", "norm")])
def test_converges_to_numpy_solve(sketch, rows):
    A, b = well_conditioned_system(12, 0)
    result = sketch_solve(A, b, tol=1e-10, sketch=sketch, rows=rows, rng=np.random.default_rng(1))
    assert result.converged and result.residual_norm <= 1e-10
    np.testing.assert_allclose(result.z, np.linalg.solve(A, b), atol=1e-9)


def test_symmetric_indefinite_kkt_system():
    rng = np.random.default_rng(3)
    B = np.diag([1.0, 2.0, 3.0, 4.0])
    G = rng.standard_normal((2, 4))
    A = np.block([[B, G.T], [G, np.zeros((2, 2))]])
    b = rng.standard_normal(6)
    result = sketch_solve(A, b, tol=1e-9, rng=np.random.default_rng(0))
    np.testing.assert_allclose(result.z, np.linalg.solve(A, b), atol=1e-7)


def test_relative_tolerance_is_met_and_looser_tolerance_needs_fewer_steps():
    A, b = well_conditioned_system(20, 5)
    tight = sketch_solve(A, b, tol=1e-3 * np.linalg.norm(b), rng=np.random.default_rng(0))
    loose = sketch_solve(A, b, tol=0.5 * np.linalg.norm(b), rng=np.random.default_rng(0))
    assert np.linalg.norm(A @ tight.z - b) <= 1e-3 * np.linalg.norm(b)
    assert loose.n_steps < tight.n_steps


def test_max_steps_is_respected_and_reported():
    A, b = well_conditioned_system(10, 2)
    result = sketch_solve(A, b, tol=0.0, rng=np.random.default_rng(0), max_steps=7, check_every=3)
    assert result.n_steps == 7 and not result.converged
    assert result.residual_norm == pytest.approx(np.linalg.norm(A @ result.z - b))


def test_warm_start_at_the_solution_takes_no_step():
    A, b = well_conditioned_system(8, 4)
    result = sketch_solve(A, b, tol=1e-8, rng=np.random.default_rng(0), z0=np.linalg.solve(A, b))
    assert result.n_steps == 0 and result.converged


def test_same_seed_same_result():
    A, b = well_conditioned_system(9, 6)
    first = sketch_solve(A, b, tol=1e-4, sketch="gauss", rng=np.random.default_rng(11))
    second = sketch_solve(A, b, tol=1e-4, sketch="gauss", rng=np.random.default_rng(11))
    assert first.n_steps == second.n_steps
    np.testing.assert_array_equal(first.z, second.z)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), sketch=st.sampled_from(["rk", "gauss"]), n=st.integers(2, 8))
def test_every_step_is_a_projection_so_the_error_never_grows(seed, sketch, n):
    """Each step projects onto a set that contains the solution, so ||z - z*|| is non-increasing."""
    A, b = well_conditioned_system(n, seed)
    solution = np.linalg.solve(A, b)
    z, errors = np.zeros(n), [np.linalg.norm(solution)]
    rng = np.random.default_rng(seed)
    for _ in range(15):
        z = sketch_solve(A, b, tol=0.0, sketch=sketch, rng=rng, z0=z, max_steps=1).z
        errors.append(np.linalg.norm(z - solution))
    assert np.all(np.diff(errors) <= 1e-12 * (1.0 + errors[0]))


def test_one_kaczmarz_step_solves_one_row_exactly():
    A, b = well_conditioned_system(5, 8)
    z = sketch_solve(A, b, tol=0.0, rng=np.random.default_rng(0), max_steps=1).z
    assert np.min(np.abs(A @ z - b)) < 1e-12


def test_mean_error_of_kaczmarz_decreases_in_expectation():
    A, b = well_conditioned_system(6, 9)
    solution = np.linalg.solve(A, b)

    def mean_error(steps: int) -> float:
        return np.mean([
            np.linalg.norm(sketch_solve(A, b, tol=0.0, rng=np.random.default_rng(s), max_steps=steps).z - solution)
            for s in range(30)
        ])

    assert mean_error(40) < 0.5 * mean_error(5)


def test_flop_model():
    assert default_check_every(3) == 1 and default_check_every(100) == 25
    assert sketch_step_flops(100, "rk") == 4 * 100 + 2 * 100**2 / 25
    assert sketch_step_flops(100, "gauss") == 2 * 100**2 + 6 * 100 + 2 * 100**2 / 25


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"A": np.ones((2, 3))}, ValueError, "square"),
        ({"b": np.ones(3)}, ValueError, "b must have shape"),
        ({"z0": np.ones(3)}, ValueError, "z0 must have shape"),
        ({"A": np.array([[1.0, 0.0], [0.0, 0.0]])}, ValueError, "zero row"),
        ({"sketch": "count"}, ValueError, "sketch must be one of"),
        ({"rows": "leverage"}, ValueError, "rows must be"),
        ({"tol": -1.0}, ValueError, "tol must be >= 0"),
        ({"rng": 0}, TypeError, "rng must be a numpy.random.Generator"),
        ({"max_steps": 0}, ValueError, "max_steps must be >= 1"),
        ({"check_every": 1.5}, TypeError, "check_every must be an int"),
    ],
)
def test_bad_inputs(kwargs, error, match):
    arguments = {"A": np.eye(2), "b": np.ones(2), "tol": 1e-6, "rng": np.random.default_rng(0)}
    arguments.update(kwargs)
    A, b = arguments.pop("A"), arguments.pop("b")
    with pytest.raises(error, match=match):
        sketch_solve(A, b, **arguments)


def test_bad_flop_model_inputs():
    with pytest.raises(ValueError, match="sketch must be one of"):
        sketch_step_flops(10, "srht")
    with pytest.raises(ValueError, match="n must be >= 1"):
        sketch_step_flops(0, "rk")
