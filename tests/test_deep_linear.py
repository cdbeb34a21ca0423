"""Tests of lib.deep_linear against independent oracles: solve_ivp, root finding, finite differences."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from lib.deep_linear import (
    analytic_mode_2layer,
    decoupled_gradient_descent,
    deep_mode_rhs,
    deep_mode_trajectory,
    deep_time_to_learn,
    depth_sweep,
    end_to_end,
    init_decoupled,
    init_gaussian,
    init_orthogonal,
    init_small_random,
    jacobian_spectrum,
    layer_gradients,
    make_task,
    mode_strengths,
    population_loss,
    time_to_learn,
    train_linear_net,
)


@pytest.fixture
def task():
    return make_task(5, 4, (3.0, 2.0, 1.0), np.random.default_rng(0))


# --- the task and the loss -------------------------------------------------------------------------------


def test_make_task_inputs_are_whitened_and_targets_have_the_chosen_correlation(task):
    n_samples = task.inputs.shape[1]
    np.testing.assert_allclose(task.inputs @ task.inputs.T / n_samples, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(task.targets @ task.inputs.T / n_samples, task.correlation, atol=1e-12)
    np.testing.assert_allclose(task.U.T @ task.U, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(task.V.T @ task.V, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(
        np.linalg.svd(task.correlation, compute_uv=False), [3.0, 2.0, 1.0, 0.0], atol=1e-12
    )


def test_population_loss_equals_the_data_loss_of_a_noiseless_teacher(task):
    rng = np.random.default_rng(1)
    product = rng.standard_normal((4, 5))
    residual = task.targets - product @ task.inputs
    data_loss = 0.5 * np.mean(np.sum(residual**2, axis=0))
    assert population_loss(product, task.correlation) == pytest.approx(data_loss, rel=1e-12)


def test_more_samples_stay_whitened():
    task = make_task(3, 3, (1.0,), np.random.default_rng(2), n_samples=7)
    np.testing.assert_allclose(task.inputs @ task.inputs.T / 7, np.eye(3), atol=1e-12)


def test_end_to_end_is_the_product_with_the_input_layer_first():
    rng = np.random.default_rng(3)
    w1, w2, w3 = rng.standard_normal((4, 3)), rng.standard_normal((2, 4)), rng.standard_normal((5, 2))
    np.testing.assert_allclose(end_to_end([w1, w2, w3]), w3 @ w2 @ w1)


# --- gradients and training ------------------------------------------------------------------------------


def test_layer_gradients_match_finite_differences_on_a_three_layer_net():
    rng = np.random.default_rng(4)
    weights = [rng.standard_normal((3, 3)) for _ in range(3)]
    correlation = rng.standard_normal((3, 3))
    gradients = layer_gradients(weights, correlation)
    step = 1e-6
    for layer in range(3):
        numeric = np.zeros((3, 3))
        for i in range(3):
            for j in range(3):
                plus = [w.copy() for w in weights]
                minus = [w.copy() for w in weights]
                plus[layer][i, j] += step
                minus[layer][i, j] -= step
                numeric[i, j] = (
                    population_loss(end_to_end(plus), correlation)
                    - population_loss(end_to_end(minus), correlation)
                ) / (2 * step)
        np.testing.assert_allclose(gradients[layer], numeric, rtol=1e-6, atol=1e-7)


def test_layer_gradients_of_rectangular_layers_match_finite_differences():
    rng = np.random.default_rng(5)
    weights = [rng.standard_normal((2, 4)), rng.standard_normal((3, 2))]
    correlation = rng.standard_normal((3, 4))
    gradient = layer_gradients(weights, correlation)[0]
    direction = rng.standard_normal((2, 4))
    step = 1e-6
    plus = population_loss(end_to_end([weights[0] + step * direction, weights[1]]), correlation)
    minus = population_loss(end_to_end([weights[0] - step * direction, weights[1]]), correlation)
    assert np.sum(gradient * direction) == pytest.approx((plus - minus) / (2 * step), rel=1e-6)


def test_training_a_two_layer_net_converges_to_the_correlation_mode_by_mode():
    task = make_task(4, 4, (2.0, 1.5, 1.0, 0.5), np.random.default_rng(6))
    start = init_small_random(4, 2, 0.1, np.random.default_rng(7))
    run = train_linear_net(start, task.correlation, lr=0.05, n_steps=3000, record_every=1000)
    np.testing.assert_allclose(run.products[-1], task.correlation, atol=1e-6)
    np.testing.assert_allclose(
        mode_strengths(run.products[-1], task.U, task.V), [2.0, 1.5, 1.0, 0.5], atol=1e-6
    )
    assert run.losses[-1] < 1e-10
    np.testing.assert_array_equal(run.steps, [0, 1000, 2000, 3000])


def test_one_gradient_step_by_hand():
    rng = np.random.default_rng(8)
    weights = [rng.standard_normal((2, 2)) for _ in range(2)]
    correlation = rng.standard_normal((2, 2))
    error = correlation - weights[1] @ weights[0]
    expected = [weights[0] + 0.1 * weights[1].T @ error, weights[1] + 0.1 * error @ weights[0].T]
    run = train_linear_net(weights, correlation, lr=0.1, n_steps=1)
    for got, want in zip(run.weights, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-14)
    assert run.losses[0] == pytest.approx(0.5 * np.sum(error**2))


def test_mode_strengths_recover_the_diagonal_of_a_map_built_from_the_modes(task):
    coefficients = np.array([0.5, -1.0, 2.0, 0.25])
    product = (task.U * coefficients) @ task.V[:, :4].T
    np.testing.assert_allclose(mode_strengths(product, task.U, task.V), coefficients, atol=1e-12)
    stacked = mode_strengths(np.stack([product, 2 * product]), task.U, task.V)
    np.testing.assert_allclose(stacked, [coefficients, 2 * coefficients], atol=1e-12)


# --- the exact 2-layer solution --------------------------------------------------------------------------


@pytest.mark.parametrize(("s", "u0", "tau"), [(4.0, 1e-3, 1000.0), (1.0, 0.3, 10.0), (2.0, 3.0, 5.0)])
def test_analytic_sigmoid_solves_the_mode_ode(s, u0, tau):
    times = np.linspace(0, 5 * tau / s, 40)
    solution = integrate.solve_ivp(
        lambda _, u: 2 * u * (s - u) / tau, (0, times[-1]), [u0], t_eval=times, rtol=1e-10, atol=1e-14
    )
    np.testing.assert_allclose(analytic_mode_2layer(times, s, u0, tau), solution.y[0], rtol=1e-7)


def test_analytic_sigmoid_stays_finite_for_very_long_times():
    assert analytic_mode_2layer(1e9, 2.0, 1e-3, 1.0) == pytest.approx(2.0)


@pytest.mark.parametrize(("s", "u0", "uf"), [(4.0, 1e-3, 2.0), (1.0, 1e-6, 0.99), (2.0, 3.0, 2.5)])
def test_time_to_learn_matches_a_root_of_the_sigmoid(s, u0, uf):
    tau = 100.0
    root = optimize.brentq(lambda t: analytic_mode_2layer(t, s, u0, tau) - uf, 0, 1e6, xtol=1e-12)
    assert time_to_learn(s, u0, uf, tau) == pytest.approx(root, rel=1e-9)


@settings(max_examples=50, deadline=None)
@given(
    s=st.floats(0.1, 10),
    start=st.floats(1e-6, 3.0).filter(lambda x: abs(x - 1) > 1e-3),
    fraction=st.floats(0.01, 0.99),
    tau=st.floats(0.1, 1e4),
)
def test_time_to_learn_inverts_the_sigmoid(s, start, fraction, tau):
    """From below or from above s, the sigmoid passes uf = u0 + fraction (s - u0) at time_to_learn."""
    u0 = start * s
    uf = u0 + fraction * (s - u0)
    time = time_to_learn(s, u0, uf, tau)
    assert time > 0
    assert analytic_mode_2layer(time, s, u0, tau) == pytest.approx(uf, rel=1e-8)


def test_time_to_learn_refuses_a_target_the_sigmoid_never_reaches():
    with pytest.raises(ValueError, match="uf"):
        time_to_learn(1.0, 0.75, 0.5, 1.0)


# --- the deep reduction ----------------------------------------------------------------------------------


def test_deep_rhs_with_two_layers_is_the_two_layer_ode():
    u = np.linspace(0.0, 3.0, 13)
    np.testing.assert_allclose(deep_mode_rhs(u, 2.0, 2), 2 * u * (2.0 - u), atol=1e-14)


@pytest.mark.parametrize("depth", [3, 5])
def test_deep_rhs_matches_the_balanced_layer_system(depth):
    """Integrate the D separate layer strengths tau da_l/dt = prod_{k != l} a_k (s - prod a) and compare."""
    s, tau = 1.5, 1.0
    strengths0 = np.full(depth, 0.4)

    def layer_system(_, a):
        product = np.prod(a)
        return np.array([np.prod(np.delete(a, layer)) for layer in range(depth)]) * (s - product) / tau

    times = np.linspace(0, 30, 25)
    layers = integrate.solve_ivp(layer_system, (0, 30), strengths0, t_eval=times, rtol=1e-10, atol=1e-13)
    u = deep_mode_trajectory(times, s, 0.4**depth, depth, tau)
    np.testing.assert_allclose(u, np.prod(layers.y, axis=0), rtol=1e-6, atol=1e-10)


def test_deep_trajectory_with_two_layers_is_the_sigmoid():
    times = np.linspace(0, 3000, 50)
    np.testing.assert_allclose(
        deep_mode_trajectory(times, 4.0, 1e-3, 2, 1000.0),
        analytic_mode_2layer(times, 4.0, 1e-3, 1000.0),
        rtol=1e-6,
    )


def test_deep_time_to_learn_with_two_layers_is_the_closed_form():
    assert deep_time_to_learn(3.0, 0.01, 2.7, 2, 50.0) == pytest.approx(
        time_to_learn(3.0, 0.01, 2.7, 50.0), rel=1e-9
    )


@pytest.mark.parametrize(
    ("depth", "u0", "uf"), [(4, 0.05, 1.8), (16, 0.05, 1.8), (16, 1e-6, 1.0), (5, 3.0, 2.2)]
)
def test_deep_time_to_learn_matches_the_event_time_of_the_ode(depth, u0, uf):
    s, tau = 2.0, 7.0

    def reached(_, u):
        return u[0] - uf

    reached.terminal = True
    solution = integrate.solve_ivp(
        lambda _, u: deep_mode_rhs(u, s, depth) / tau, (0, 1e6), [u0], events=reached, rtol=1e-11, atol=1e-14
    )
    assert deep_time_to_learn(s, u0, uf, depth, tau) == pytest.approx(solution.t_events[0][0], rel=1e-7)


def test_infinite_depth_time_is_the_closed_form_integral():
    s, u0, uf, tau = 2.0, 0.1, 1.5, 3.0

    def antiderivative(u):  # of 1 / (u^2 (s - u))
        return -1 / (s * u) + np.log(u / (s - u)) / s**2

    expected = tau * (antiderivative(uf) - antiderivative(u0))
    assert deep_time_to_learn(s, u0, uf, np.inf, tau) == pytest.approx(expected, rel=1e-9)
    scaled = [deep_time_to_learn(s, u0, uf, depth, tau * depth) for depth in (64, 1024)]
    assert abs(scaled[1] - expected) < abs(scaled[0] - expected) < 0.05 * expected


def test_gradient_descent_from_a_decoupled_start_follows_the_scalar_recursion():
    task = make_task(4, 4, (3.0, 2.0, 1.0, 0.5), np.random.default_rng(9))
    depth, lr, a0 = 4, 0.01, np.array([0.6, 0.5, 0.7, 0.4])
    start = init_decoupled(task.U, task.V, a0, depth, rng=np.random.default_rng(10))
    run = train_linear_net(start, task.correlation, lr=lr, n_steps=200, record_every=50)
    a = a0.copy()
    expected = [a**depth]
    for step in range(1, 201):
        a = a + lr * a ** (depth - 1) * (task.singular_values - a**depth)
        if step % 50 == 0:
            expected.append(a**depth)
    np.testing.assert_allclose(mode_strengths(run.products, task.U, task.V), expected, rtol=1e-10, atol=1e-12)


def test_scalar_decoupled_descent_equals_full_gradient_descent_from_a_decoupled_start():
    task = make_task(5, 5, (2.5, 1.0, 0.5), np.random.default_rng(17))
    depth, lr, a0 = 3, 0.02, np.array([0.3, 0.2, 0.5, 0.1, 0.4])
    start = init_decoupled(task.U, task.V, a0, depth, rng=np.random.default_rng(18))
    full = mode_strengths(
        train_linear_net(start, task.correlation, lr=lr, n_steps=150).products, task.U, task.V
    )
    scalar = decoupled_gradient_descent(task.singular_values, a0, depth, lr, 150)
    assert scalar.shape == (151, 5)
    np.testing.assert_allclose(scalar, full, rtol=1e-9, atol=1e-12)


def test_scalar_decoupled_descent_broadcasts_over_starts():
    many = decoupled_gradient_descent(np.array([2.0, 1.0]), np.array([[0.1], [0.2]]), 2, 0.01, 5)
    assert many.shape == (6, 2, 2)
    np.testing.assert_allclose(many[:, 1, 0], decoupled_gradient_descent(2.0, 0.2, 2, 0.01, 5))


# --- initialisations and the Jacobian spectrum -----------------------------------------------------------


def test_decoupled_start_has_the_chosen_mode_strengths(task):
    start = init_decoupled(task.U, task.V, 0.5, 3)
    assert [w.shape for w in start] == [(4, 5), (4, 4), (4, 4)]
    np.testing.assert_allclose(end_to_end(start), (task.U * 0.125) @ task.V[:, :4].T, atol=1e-12)
    rotated = init_decoupled(task.U, task.V, 0.5, 3, rng=np.random.default_rng(0))
    np.testing.assert_allclose(end_to_end(rotated), end_to_end(start), atol=1e-12)
    assert not np.allclose(rotated[1], start[1])


def test_orthogonal_layers_are_orthogonal_and_give_an_isometry():
    layers = init_orthogonal(6, 5, np.random.default_rng(11), gain=2.0)
    for layer in layers:
        np.testing.assert_allclose(layer.T @ layer, 4.0 * np.eye(6), atol=1e-12)
    np.testing.assert_allclose(jacobian_spectrum(layers), np.full(6, 2.0**5), rtol=1e-10)


def test_gaussian_and_small_random_layers_have_the_chosen_variance():
    gaussian = np.concatenate([w.ravel() for w in init_gaussian(50, 20, np.random.default_rng(12), gain=1.5)])
    assert np.var(gaussian) == pytest.approx(1.5**2 / 50, rel=0.03)
    small = np.concatenate([w.ravel() for w in init_small_random(50, 20, 0.01, np.random.default_rng(13))])
    assert np.std(small) == pytest.approx(0.01, rel=0.03)


def test_jacobian_spectrum_is_the_svd_of_the_product():
    rng = np.random.default_rng(14)
    layers = [rng.standard_normal((3, 3)) for _ in range(3)]
    product = layers[2] @ layers[1] @ layers[0]
    eigenvalues = np.sort(np.linalg.eigvalsh(product.T @ product))[::-1]
    np.testing.assert_allclose(jacobian_spectrum(layers), np.sqrt(eigenvalues), rtol=1e-10)


# --- the depth sweep -------------------------------------------------------------------------------------


def test_depth_sweep_of_a_single_layer_matches_the_geometric_decay():
    """With one layer the error shrinks by (1 - lr) per step, so L_k = L_0 (1 - lr)^(2k)."""
    task = make_task(4, 4, (2.0, 1.0), np.random.default_rng(15))
    lrs = [0.05, 0.2, 0.5, 2.5]
    sweep = depth_sweep(task.correlation, [1], "gaussian", lrs, seed=0, criterion=1e-2, max_steps=500)
    expected = [np.ceil(np.log(1e-2) / (2 * np.log(abs(1 - lr)))) for lr in lrs[:3]]
    np.testing.assert_array_equal(sweep.steps[0, :3], expected)
    assert sweep.steps[0, 3] == np.inf  # |1 - 2.5| > 1: diverges
    assert sweep.best_steps[0] == expected[2] and sweep.best_lr_index[0] == 2
    curve = sweep.losses[0, 0, :10]
    np.testing.assert_allclose(curve, curve[0] * (1 - 0.05) ** (2 * np.arange(10)), rtol=1e-10)
    assert np.isnan(sweep.losses[0, 2, int(expected[2]) + 1])


def test_depth_sweep_agrees_with_single_runs_and_reports_never_as_inf():
    task = make_task(4, 4, (2.0, 1.0, 0.5, 0.5), np.random.default_rng(16))
    sweep = depth_sweep(task.correlation, [3], "orthogonal", [0.01, 0.05], seed=3, max_steps=300)
    start = init_orthogonal(4, 3, np.random.default_rng([3, 3]))
    for index, lr in enumerate([0.01, 0.05]):
        losses = train_linear_net(start, task.correlation, lr=lr, n_steps=300).losses
        below = np.flatnonzero(losses <= 1e-2 * losses[0])
        assert sweep.steps[0, index] == (below[0] if below.size else np.inf)
    slow = depth_sweep(task.correlation, [3], "orthogonal", [1e-5], seed=3, max_steps=20)
    assert slow.steps[0, 0] == np.inf and slow.best_lr_index[0] == 0


# --- bad inputs ------------------------------------------------------------------------------------------


def test_bad_inputs_raise_errors_that_name_the_argument(task):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="singular_values"):
        make_task(3, 3, (1.0, 2.0, 3.0, 4.0), rng)
    with pytest.raises(ValueError, match="singular_values"):
        make_task(3, 3, (-1.0,), rng)
    with pytest.raises(TypeError, match="rng"):
        make_task(3, 3, (1.0,), 0)
    with pytest.raises(ValueError, match="n_samples"):
        make_task(3, 3, (1.0,), rng, n_samples=2)
    with pytest.raises(ValueError, match="weights\\[1\\]"):
        end_to_end([np.ones((2, 3)), np.ones((2, 3))])
    with pytest.raises(TypeError, match="weights"):
        end_to_end([])
    with pytest.raises(ValueError, match="correlation"):
        layer_gradients([np.ones((2, 2))], np.ones((3, 2)))
    with pytest.raises(ValueError, match="lr"):
        train_linear_net([np.ones((2, 2))], np.eye(2), lr=-0.1, n_steps=3)
    with pytest.raises(TypeError, match="n_steps"):
        train_linear_net([np.ones((2, 2))], np.eye(2), lr=0.1, n_steps=2.5)
    with pytest.raises(ValueError, match="product"):
        mode_strengths(np.ones((3, 3)), task.U, task.V)
    with pytest.raises(ValueError, match="u0"):
        analytic_mode_2layer(1.0, 2.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="tau"):
        analytic_mode_2layer(1.0, 2.0, 0.1, 0.0)
    with pytest.raises(ValueError, match="uf"):
        time_to_learn(2.0, 0.1, 3.0, 1.0)
    with pytest.raises(ValueError, match="depth"):
        deep_mode_rhs(0.5, 1.0, 1)
    with pytest.raises(ValueError, match="u must be"):
        deep_mode_rhs(-0.5, 1.0, 3)
    with pytest.raises(ValueError, match="t must"):
        deep_mode_trajectory(np.array([2.0, 1.0]), 1.0, 0.1, 3, 1.0)
    with pytest.raises(ValueError, match="uf"):
        deep_time_to_learn(1.0, 0.1, 0.1, 3, 1.0)
    with pytest.raises(ValueError, match="a0"):
        decoupled_gradient_descent(1.0, np.nan, 2, 0.1, 3)
    with pytest.raises(ValueError, match="a0"):
        init_decoupled(task.U, task.V, [0.1, 0.2], 3)
    with pytest.raises(ValueError, match="gain"):
        init_gaussian(3, 2, rng, gain=0.0)
    with pytest.raises(ValueError, match="n must be"):
        init_orthogonal(1, 2, rng)
    with pytest.raises(ValueError, match="scale"):
        init_small_random(3, 2, -1.0, rng)
    with pytest.raises(ValueError, match="init"):
        depth_sweep(np.eye(3), [2], "uniform", [0.1], seed=0)
    with pytest.raises(ValueError, match="criterion"):
        depth_sweep(np.eye(3), [2], "gaussian", [0.1], seed=0, criterion=1.5)
    with pytest.raises(ValueError, match="square"):
        depth_sweep(np.ones((2, 3)), [2], "gaussian", [0.1], seed=0)
    with pytest.raises(ValueError, match="lrs"):
        depth_sweep(np.eye(3), [2], "gaussian", [0.0], seed=0)
