"""Shallow random networks: hidden parameters drawn from a bounded box and frozen, only the output layer fitted.

A depth-2 network of width ``N`` computes ``f(x) = sum_j c_j sigma(a_j . x - b_j)``. Here the hidden weights
``a_j`` and biases ``b_j`` are drawn uniformly from a box (``|a_j,i| <= weight_bound``, ``|b_j| <= bias_bound``)
and frozen; the output coefficients ``c`` are a ridge least-squares fit. When ``N`` grows, ``Phi Phi^T / N``
converges to the *limit kernel* ``k(x, z) = E[sigma(a x - b) sigma(a z - b)]`` of the box, computed here by
Gauss-Legendre quadrature.
"""

from collections.abc import Callable

import numpy as np
import scipy.linalg

from lib.validation import check_generator, check_positive_int, check_positive_real


def _gaussian(t: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * t**2)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _relu(t: np.ndarray) -> np.ndarray:
    return np.maximum(t, 0.0)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": _relu,
    "gaussian": _gaussian,
}


def _check_activation(activation: object) -> Callable[[np.ndarray], np.ndarray]:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return ACTIVATIONS[activation]


def _check_ridge(ridge: object) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, int | float | np.integer | np.floating):
        raise TypeError(f"ridge must be a real number, got {type(ridge).__name__}")
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge}")
    return float(ridge)


def _as_inputs(x: object, name: str = "x") -> np.ndarray:
    """Inputs as a float array (n, d); a 1-d array is read as n points in one dimension."""
    array = np.asarray(x, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty array of shape (n,) or (n, d), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def sample_hidden_parameters(
    n_features: int, dim: int, weight_bound: float, rng: np.random.Generator, bias_bound: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw hidden weights ``a ~ U[-weight_bound, weight_bound]^dim`` and biases ``b ~ U[-bias_bound, bias_bound]``.

    ``bias_bound`` defaults to ``weight_bound`` (the box ``[-Lambda, Lambda]^(dim + 1)``).
    Returns ``(weights, biases)`` of shapes ``(n_features, dim)`` and ``(n_features,)``.
    """
    n_features = check_positive_int(n_features, "n_features")
    dim = check_positive_int(dim, "dim")
    weight_bound = check_positive_real(weight_bound, "weight_bound")
    bias_bound = weight_bound if bias_bound is None else check_positive_real(bias_bound, "bias_bound")
    rng = check_generator(rng)
    weights = rng.uniform(-weight_bound, weight_bound, size=(n_features, dim))
    biases = rng.uniform(-bias_bound, bias_bound, size=n_features)
    return weights, biases


def random_features(x: object, weights: object, biases: object, activation: str = "tanh") -> np.ndarray:
    """The hidden layer: ``Phi[i, j] = sigma(a_j . x_i - b_j)``, an array of shape ``(n_points, n_features)``."""
    sigma = _check_activation(activation)
    points = _as_inputs(x)
    weights = np.asarray(weights, dtype=float)
    if weights.ndim == 1:
        weights = weights[:, None]
    biases = np.asarray(biases, dtype=float)
    if weights.ndim != 2 or weights.shape[1] != points.shape[1]:
        raise ValueError(f"weights must have shape (n_features, {points.shape[1]}), got {weights.shape}")
    if biases.shape != (weights.shape[0],):
        raise ValueError(f"biases must have shape ({weights.shape[0]},), got {biases.shape}")
    return sigma(points @ weights.T - biases)


def fit_output_layer(features: object, targets: object, ridge: float = 1e-8) -> np.ndarray:
    """Ridge fit of the output layer with a ridge *relative* to the features' scale.

    Returns ``c = (Phi^T Phi + mu I)^(-1) Phi^T y`` with ``mu = ridge * trace(Phi^T Phi) / N`` (``ridge`` times
    the mean eigenvalue of ``Phi^T Phi``). When there are more features than points the identical solution
    ``c = Phi^T (Phi Phi^T + mu I)^(-1) y`` is used, a smaller system. ``targets`` may be ``(n,)`` or ``(n, m)``
    (``m`` targets fitted at once). ``ridge = 0`` asks for the minimum-norm least-squares solution.
    """
    phi = np.asarray(features, dtype=float)
    y = np.asarray(targets, dtype=float)
    if phi.ndim != 2 or phi.size == 0:
        raise ValueError(f"features must be a non-empty 2-d array (n_points, n_features), got shape {phi.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != phi.shape[0]:
        raise ValueError(f"targets must have shape ({phi.shape[0]},) or ({phi.shape[0]}, m), got {y.shape}")
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(y))):
        raise ValueError("features and targets must be finite")
    ridge = _check_ridge(ridge)
    if ridge == 0:
        return np.linalg.lstsq(phi, y, rcond=None)[0]
    n_points, n_features = phi.shape
    shift = ridge * np.einsum("ij,ij->", phi, phi) / n_features
    if shift == 0:
        return np.zeros((n_features, *y.shape[1:]))
    if n_features <= n_points:
        gram = phi.T @ phi
        gram[np.diag_indices_from(gram)] += shift
        return scipy.linalg.solve(gram, phi.T @ y, assume_a="pos")
    gram = phi @ phi.T
    gram[np.diag_indices_from(gram)] += shift
    return phi.T @ scipy.linalg.solve(gram, y, assume_a="pos")


def ridge_path(features: object, targets: object, ridges: object) -> np.ndarray:
    """Output-layer fits for several relative ridges from one singular value decomposition.

    Same estimator as ``fit_output_layer`` (``mu = ridge * trace(Phi^T Phi) / N``), computed as
    ``c = V diag(s / (s^2 + mu)) U^T y``, which stays accurate for ridges far below the conditioning limit of the
    normal equations. A ridge of 0 gives the minimum-norm least-squares solution (singular values below
    ``max(n, N) * eps * s_max`` dropped, as ``numpy.linalg.lstsq`` does). Returns shape ``(len(ridges), N, ...)``.
    """
    phi = np.asarray(features, dtype=float)
    y = np.asarray(targets, dtype=float)
    if phi.ndim != 2 or phi.size == 0:
        raise ValueError(f"features must be a non-empty 2-d array (n_points, n_features), got shape {phi.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != phi.shape[0]:
        raise ValueError(f"targets must have shape ({phi.shape[0]},) or ({phi.shape[0]}, m), got {y.shape}")
    ridge_values = np.atleast_1d(np.asarray(ridges, dtype=float))
    if ridge_values.ndim != 1 or ridge_values.size == 0:
        raise ValueError("ridges must be a non-empty 1-d list of numbers")
    for ridge in ridge_values:
        _check_ridge(ridge)
    u, s, vt = np.linalg.svd(phi, full_matrices=False)
    projected = u.T @ y
    scale = np.sum(s**2) / phi.shape[1]
    kept = s > max(phi.shape) * np.finfo(float).eps * s[0]
    fits = []
    for ridge in ridge_values:
        shift = ridge * scale
        gain = np.where(kept, s / (s**2 + shift), 0.0) if shift > 0 else np.where(kept, 1 / np.where(kept, s, 1), 0)
        fits.append(vt.T @ (gain[:, None] * projected if y.ndim == 2 else gain * projected))
    return np.stack(fits)


def relative_l2_error(predicted: object, target: object) -> float | np.ndarray:
    """``||predicted - target|| / ||target||`` over the points (axis 0); one number per column for 2-d input."""
    predicted = np.asarray(predicted, dtype=float)
    target = np.asarray(target, dtype=float)
    if predicted.shape != target.shape or target.ndim not in (1, 2) or target.shape[0] == 0:
        raise ValueError(f"predicted and target must have the same shape (n,) or (n, m), got "
                         f"{predicted.shape} and {target.shape}")
    norm = np.linalg.norm(target, axis=0)
    if np.any(norm == 0):
        raise ValueError("target must not be identically zero (the relative error is undefined)")
    return np.linalg.norm(predicted - target, axis=0) / norm


def box_quadrature(weight_bound: float, bias_bound: float | None = None, quad_n: int = 64,
                   panels: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes for the *average* over the box ``|a| <= weight_bound``, ``|b| <= bias_bound``.

    Each side is cut into ``panels`` equal pieces with ``quad_n`` nodes each (a composite rule, for integrands that
    change fast, e.g. steep tanh units). Returns ``(weights, biases, quadrature_weights)``, flat arrays over the
    ``(panels * quad_n)^2`` nodes, with quadrature weights summing to 1.
    """
    weight_bound = check_positive_real(weight_bound, "weight_bound")
    bias_bound = weight_bound if bias_bound is None else check_positive_real(bias_bound, "bias_bound")
    quad_n = check_positive_int(quad_n, "quad_n")
    panels = check_positive_int(panels, "panels")
    nodes, node_weights = np.polynomial.legendre.leggauss(quad_n)  # on [-1, 1], weights sum to 2
    edges = np.linspace(-1.0, 1.0, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    unit_nodes = ((edges[:-1] + half)[:, None] + half[:, None] * nodes).ravel()
    unit_weights = (half[:, None] * node_weights).ravel() / 2.0  # sums to 1: the uniform average on [-1, 1]
    a, b = np.meshgrid(weight_bound * unit_nodes, bias_bound * unit_nodes, indexing="ij")
    return a.ravel(), b.ravel(), np.outer(unit_weights, unit_weights).ravel()


def limit_kernel(x: object, z: object, weight_bound: float, activation: str = "tanh", quad_n: int = 64,
                 bias_bound: float | None = None, panels: int = 1) -> np.ndarray:
    """Infinite-width kernel of the box for one-dimensional inputs, by Gauss-Legendre quadrature.

    ``k(x, z) = E[sigma(a x - b) sigma(a z - b)]`` with ``a ~ U[-weight_bound, weight_bound]`` and
    ``b ~ U[-bias_bound, bias_bound]``; the limit of ``Phi(x) Phi(z)^T / N`` as the width ``N`` grows.
    Returns the matrix of shape ``(len(x), len(z))``.
    """
    x_points, z_points = _as_inputs(x, "x"), _as_inputs(z, "z")
    if x_points.shape[1] != 1 or z_points.shape[1] != 1:
        raise ValueError("limit_kernel handles one-dimensional inputs: x and z must have shape (n,) or (n, 1)")
    a, b, w = box_quadrature(weight_bound, bias_bound, quad_n, panels)
    phi_x = random_features(x_points, a, b, activation)
    phi_z = phi_x if z is x else random_features(z_points, a, b, activation)
    return (phi_x * w) @ phi_z.T


def kernel_ridge_coefficients(gram: object, targets: object, ridge: float) -> np.ndarray:
    """Dual coefficients ``alpha = (K + ridge I)^(-1) y`` of kernel ridge regression (absolute ``ridge``).

    The prediction at new points is ``K(new, train) @ alpha``. The random-feature fit of ``fit_output_layer``
    equals this with ``K = Phi Phi^T / N`` and ``ridge = ridge_rel * trace(K) / N``.
    """
    gram = np.asarray(gram, dtype=float)
    y = np.asarray(targets, dtype=float)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"gram must be a non-empty square matrix, got shape {gram.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != gram.shape[0]:
        raise ValueError(f"targets must have shape ({gram.shape[0]},) or ({gram.shape[0]}, m), got {y.shape}")
    ridge = _check_ridge(ridge)
    if ridge == 0:
        raise ValueError("ridge must be > 0 for kernel ridge regression (the Gram matrix may be singular)")
    return scipy.linalg.solve(gram + ridge * np.eye(gram.shape[0]), y, assume_a="pos")


def limit_kernel_ridge_predict(x_train: object, targets: object, x_new: object, weight_bound: float, ridge: float,
                               activation: str = "tanh", quad_n: int = 64, bias_bound: float | None = None,
                               panels: int = 1) -> np.ndarray:
    """Kernel ridge regression with the limit kernel of the box, predicted at ``x_new`` (one-dimensional inputs).

    Fits ``alpha = (K + ridge I)^(-1) y`` on the training points (absolute ``ridge``) and returns
    ``K(x_new, x_train) @ alpha``. The kernel at new points is never formed: the prediction is a sum over the
    quadrature nodes, ``sum_q w_q sigma(a_q x - b_q) (sum_i sigma(a_q x_i - b_q) alpha_i)``.
    """
    train, new = _as_inputs(x_train, "x_train"), _as_inputs(x_new, "x_new")
    if train.shape[1] != 1 or new.shape[1] != 1:
        raise ValueError("limit_kernel_ridge_predict handles one-dimensional inputs of shape (n,) or (n, 1)")
    a, b, w = box_quadrature(weight_bound, bias_bound, quad_n, panels)
    phi_train = random_features(train, a, b, activation)
    alpha = kernel_ridge_coefficients((phi_train * w) @ phi_train.T, targets, ridge)
    node_weights = w[:, None] * (phi_train.T @ alpha.reshape(train.shape[0], -1))
    prediction = random_features(new, a, b, activation) @ node_weights
    return prediction.reshape((new.shape[0], *np.shape(targets)[1:]))


def spectral_energy_outside(values: object, spacing: float, cutoff: float) -> float | np.ndarray:
    """Fraction of a sampled function's energy at angular frequencies ``|omega| > cutoff``.

    ``values`` are samples on a uniform grid of step ``spacing`` (shape ``(n,)``, or ``(n, m)`` for m functions);
    the spectrum is the discrete Fourier transform, with angular frequencies ``omega = 2 pi k / (n spacing)``.
    A unit ``sigma(a x - b)`` oscillates at angular frequencies of order ``|a|``, so ``cutoff`` is in the units of
    the hidden weights.
    """
    samples = np.asarray(values, dtype=float)
    if samples.ndim not in (1, 2) or samples.shape[0] < 2:
        raise ValueError(f"values must have shape (n,) or (n, m) with n >= 2, got {samples.shape}")
    spacing = check_positive_real(spacing, "spacing")
    if isinstance(cutoff, bool) or not isinstance(cutoff, int | float | np.integer | np.floating) or cutoff < 0:
        raise ValueError(f"cutoff must be a real number >= 0, got {cutoff!r}")
    power = np.abs(np.fft.rfft(samples, axis=0)) ** 2
    omega = 2 * np.pi * np.fft.rfftfreq(samples.shape[0], d=spacing)
    multiplicity = np.full(omega.shape, 2.0)  # rfft keeps one of each +/- pair of frequencies
    multiplicity[0] = 1.0
    if samples.shape[0] % 2 == 0:
        multiplicity[-1] = 1.0
    weighted = power * (multiplicity if samples.ndim == 1 else multiplicity[:, None])
    total = weighted.sum(axis=0)
    if np.any(total == 0):
        raise ValueError("values must not be identically zero")
    return weighted[omega > cutoff].sum(axis=0) / total
