"""Weighted least squares on random points: i.i.d. optimal sampling, projection DPPs, volume sampling.

The setting is one-dimensional: the domain is [-1, 1] with the uniform probability measure mu(dx) = dx / 2,
and V_m is the space of polynomials of degree < m with the orthonormal basis phi_j(x) = sqrt(2j + 1) P_j(x),
j = 0, ..., m - 1 (P_j the Legendre polynomials). The Christoffel function (inverse Christoffel function in
some texts) k_m(x) = sum_j phi_j(x)^2 integrates to m; rho = k_m / m dmu is the optimal sampling density of
i.i.d. weighted least squares, with weights w = m / k_m.

A projection DPP for V_m draws exactly m points with joint density det[phi_j(x_i)]^2 / m! with respect to
mu^m; its one-point intensity is k_m. Volume-rescaled sampling of n >= m points (density proportional to
det(sum_i w(x_i) phi(x_i) phi(x_i)^T) times rho^n) is the union of one projection DPP and n - m i.i.d. points
from rho, in random order.
"""

from collections.abc import Callable

import numpy as np

from lib.validation import check_generator, check_positive_int

Function = Callable[[np.ndarray], np.ndarray]


def _check_points(x: object, name: str = "x") -> np.ndarray:
    points = np.asarray(x, dtype=float)
    if not np.all(np.isfinite(points)) or np.any(np.abs(points) > 1.0):
        raise ValueError(f"{name} must contain finite points in [-1, 1]")
    return points


def legendre_features(x: np.ndarray, m: int) -> np.ndarray:
    """Orthonormal Legendre features phi_j(x) = sqrt(2j + 1) P_j(x), j < m, of points in [-1, 1].

    Returns an array of shape ``x.shape + (m,)``; the P_j come from the three-term recurrence
    (j + 1) P_{j+1} = (2j + 1) x P_j - j P_{j-1}.
    """
    m = check_positive_int(m, "m")
    x = _check_points(x)
    legendre = np.empty(x.shape + (m,))
    legendre[..., 0] = 1.0
    if m > 1:
        legendre[..., 1] = x
    for j in range(1, m - 1):
        legendre[..., j + 1] = ((2 * j + 1) * x * legendre[..., j] - j * legendre[..., j - 1]) / (j + 1)
    return legendre * np.sqrt(2 * np.arange(m) + 1.0)


def christoffel(x: np.ndarray, m: int) -> np.ndarray:
    """Christoffel function k_m(x) = sum_{j<m} phi_j(x)^2: about 2 m / pi at x = 0 and m^2 at x = +-1."""
    return np.sum(legendre_features(x, m) ** 2, axis=-1)


def optimal_weights(x: np.ndarray, m: int) -> np.ndarray:
    """Least-squares weights w(x) = m / k_m(x), the density of mu with respect to the optimal density rho."""
    return m / christoffel(x, m)


def arcsine_envelope(m: int) -> float:
    """A constant M_m with k_m(x) / m <= M_m * a(x) on [-1, 1], a(x) = 2 / (pi sqrt(1 - x^2)) the arcsine
    (Chebyshev) density with respect to mu.

    From Bernstein's inequality sqrt(sin t) |P_j(cos t)| < sqrt(2 / (pi j)) for j >= 1:
    sqrt(1 - x^2) k_m(x) <= 1 + sum_{j=1}^{m-1} (4 + 2 / j) / pi, hence
    M_m = (pi + 4 (m - 1) + 2 H_{m-1}) / (2 m), about 2.2 for m = 10 (H the harmonic numbers).
    """
    m = check_positive_int(m, "m")
    harmonic = float(np.sum(1.0 / np.arange(1, m)))
    return (np.pi + 4.0 * (m - 1) + 2.0 * harmonic) / (2.0 * m)


def _arcsine_proposals(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points from the arcsine density and sqrt(1 - x^2) at them (x = cos(pi U))."""
    angles = np.pi * rng.random(shape)
    return np.cos(angles), np.sin(angles)


def _sample_optimal(count: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` i.i.d. points from rho = k_m / m dmu, by rejection from the arcsine density.

    A proposal x is accepted with probability rho(x) / (M_m a(x)) = pi sqrt(1 - x^2) k_m(x) / (2 m M_m).
    """
    scale = np.pi / (2.0 * m * arcsine_envelope(m))
    accepted = [np.empty(0)]
    missing = count
    while missing > 0:
        proposals, sines = _arcsine_proposals((int(2.5 * missing) + 8,), rng)
        keep = proposals[rng.random(proposals.size) < scale * sines * christoffel(proposals, m)]
        accepted.append(keep[:missing])
        missing -= accepted[-1].size
    return np.concatenate(accepted)


def sample_optimal_density(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """n i.i.d. points from the optimal density rho(x) = k_m(x) / m with respect to mu, by rejection."""
    n = check_positive_int(n, "n")
    m = check_positive_int(m, "m")
    return _sample_optimal(n, m, check_generator(rng))


def sample_projection_dpp(m: int, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """Exact samples of the projection DPP of V_m: m points with joint density det[phi_j(x_i)]^2 / m! on mu^m.

    Chain rule: once x_1, ..., x_{k-1} are drawn and Q holds an orthonormal basis of their features, x_k has
    density ||(I - Q Q^T) phi(x)||^2 / (m - k + 1) with respect to mu, at most m M_m / (m - k + 1) times the
    arcsine density a (see ``arcsine_envelope``). We draw it by rejection: propose x from a and accept with
    probability pi sqrt(1 - x^2) ||(I - Q Q^T) phi(x)||^2 / (2 m M_m). ``size`` independent samples are drawn
    together, each replica keeping its own Q.

    Returns shape (m,) if ``size`` is None, else (size, m); points are in the order they were drawn.
    """
    m = check_positive_int(m, "m")
    check_generator(rng)
    replicas = 1 if size is None else check_positive_int(size, "size")
    scale = np.pi / (2.0 * m * arcsine_envelope(m))
    points = np.empty((replicas, m))
    basis = np.zeros((replicas, m, m))  # rows 0..k-1: orthonormal basis of the features drawn so far
    for k in range(m):
        pending = np.arange(replicas)
        batch = int(np.ceil(1.5 * m * arcsine_envelope(m) / (m - k))) + 2  # proposals per replica and round
        while pending.size:
            proposals, sines = _arcsine_proposals((pending.size, batch), rng)
            features = legendre_features(proposals, m)
            coords = np.einsum("rbj,rkj->rbk", features, basis[pending, :k])
            residual = np.sum(features**2, axis=-1) - np.sum(coords**2, axis=-1)
            accepted = rng.random(residual.shape) < scale * sines * residual
            done = accepted.any(axis=1)
            rows, first = pending[done], accepted[done].argmax(axis=1)
            points[rows, k] = proposals[done, first]
            basis[rows, k] = _orthonormal_complement(features[done, first], basis[rows, :k])
            pending = pending[~done]
    return points[0] if size is None else points


def _orthonormal_complement(vectors: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Normalised part of each vector (r, m) orthogonal to the rows of its basis (r, k, m), two passes."""
    for _ in range(2):
        vectors = vectors - np.einsum("rk,rkj->rj", np.einsum("rkj,rj->rk", bases, vectors), bases)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def sample_discrete_projection_dpp(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices drawn by the projection DPP of a finite ground set whose rows are ``features`` (N, r).

    The kernel is the orthogonal projection K = U U^T onto the column span of ``features`` (U from a QR
    factorisation), so a set S of r indices has probability det(U_S)^2. Chain rule: index i is drawn with
    probability ||(I - P) u_i||^2 / (r - k), P the projection onto the span of the rows already drawn.
    Returns the r indices in the order they were drawn.
    """
    features = np.asarray(features, dtype=float)
    check_generator(rng)
    if features.ndim != 2 or features.shape[0] < features.shape[1] or not np.all(np.isfinite(features)):
        raise ValueError(f"features must be a finite (N, r) array with N >= r, got shape {features.shape}")
    if np.linalg.matrix_rank(features) < features.shape[1]:
        raise ValueError("features must have full column rank")
    rows, _ = np.linalg.qr(features)
    residual = rows.copy()
    drawn = []
    for _ in range(rows.shape[1]):
        probabilities = np.clip(np.sum(residual**2, axis=1), 0.0, None)
        probabilities[drawn] = 0.0
        index = int(rng.choice(len(probabilities), p=probabilities / probabilities.sum()))
        direction = residual[index] / np.linalg.norm(residual[index])
        residual = residual - np.outer(residual @ direction, direction)
        drawn.append(index)
    return np.array(drawn)


def sample_volume_rescaled(n: int, m: int, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """n >= m points from volume-rescaled sampling for V_m with weights w = m / k_m.

    Its density with respect to rho^n is det(G) / E[det(G)], G = (1/n) sum_i w(x_i) phi(x_i) phi(x_i)^T; it is
    drawn as one projection-DPP sample plus n - m i.i.d. points from rho, in random order (the
    Derezinski-Warmuth-Hsu decomposition). Returns shape (n,) if ``size`` is None, else (size, n).
    """
    n = check_positive_int(n, "n")
    m = check_positive_int(m, "m")
    if n < m:
        raise ValueError(f"n must be >= m = {m} for volume-rescaled sampling, got {n}")
    check_generator(rng)
    replicas = 1 if size is None else check_positive_int(size, "size")
    dpp_points = sample_projection_dpp(m, rng, size=replicas)
    iid_points = _sample_optimal(replicas * (n - m), m, rng).reshape(replicas, n - m)
    points = rng.permuted(np.concatenate([dpp_points, iid_points], axis=1), axis=1)
    return points[0] if size is None else points


def sample_repeated_dpp(
    repeats: int, m: int, rng: np.random.Generator, size: int | None = None
) -> np.ndarray:
    """The union of ``repeats`` independent projection-DPP samples of V_m: n = repeats * m points.

    Returns shape (n,) if ``size`` is None, else (size, n); each block of m consecutive points is one
    DPP sample.
    """
    repeats = check_positive_int(repeats, "repeats")
    replicas = 1 if size is None else check_positive_int(size, "size")
    points = sample_projection_dpp(m, rng, size=replicas * repeats).reshape(replicas, repeats * m)
    return points[0] if size is None else points


def _check_sample(x: object, m: int) -> np.ndarray:
    points = _check_points(x)
    if points.ndim not in (1, 2) or points.shape[-1] < m:
        raise ValueError(f"x must have shape (n,) or (R, n) with n >= m = {m}, got shape {points.shape}")
    return points


def empirical_gram(x: np.ndarray, m: int) -> np.ndarray:
    """G = (1/n) sum_i w(x_i) phi(x_i) phi(x_i)^T; its expectation is the identity for i.i.d. rho points.

    ``x`` of shape (n,) gives one (m, m) matrix, (R, n) one matrix per row.
    """
    m = check_positive_int(m, "m")
    points = _check_sample(x, m)
    features = legendre_features(points, m)
    weighted = features * optimal_weights(points, m)[..., None]
    return np.einsum("...ni,...nj->...ij", weighted, features) / points.shape[-1]


def weighted_least_squares(x: np.ndarray, fx: np.ndarray, m: int) -> np.ndarray:
    """Coefficients c in the basis phi of argmin_{v in V_m} sum_i w(x_i) (f(x_i) - v(x_i))^2, w = m / k_m.

    Solved through a QR factorisation of the sqrt(w)-scaled design; with n = m points it interpolates.
    ``x`` and ``fx`` of shape (n,) give m coefficients, (R, n) one fit per row, shape (R, m).
    """
    m = check_positive_int(m, "m")
    points = _check_sample(x, m)
    values = np.asarray(fx, dtype=float)
    if values.shape != points.shape or not np.all(np.isfinite(values)):
        raise ValueError(f"fx must be finite with the shape of x {points.shape}, got {values.shape}")
    scale = np.sqrt(optimal_weights(points, m))
    q, r = np.linalg.qr(legendre_features(points, m) * scale[..., None])
    diagonal = np.abs(np.diagonal(r, axis1=-2, axis2=-1))
    if np.any(diagonal <= 1e-14 * diagonal.max(axis=-1, keepdims=True)):
        raise ValueError(f"x must contain at least m = {m} distinct points (the design is singular)")
    rhs = np.einsum("...nj,...n->...j", q, values * scale)
    return np.linalg.solve(r, rhs[..., None])[..., 0]


def _quadrature(n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(check_positive_int(n_nodes, "n_nodes"))
    return nodes, weights / 2.0  # weights of the probability measure mu


def projection_coefficients(f: Function, m: int, n_nodes: int = 400) -> np.ndarray:
    """Coefficients of the best approximation P_m f = sum_j <f, phi_j> phi_j (Gauss-Legendre quadrature)."""
    nodes, weights = _quadrature(n_nodes)
    return legendre_features(nodes, m).T @ (weights * f(nodes))


def _check_coefficients(coefficients: object) -> np.ndarray:
    coefficients = np.asarray(coefficients, dtype=float)
    if coefficients.ndim not in (1, 2) or coefficients.shape[-1] < 1 or not np.all(np.isfinite(coefficients)):
        raise ValueError(f"coefficients must be finite of shape (m,) or (R, m), got {coefficients.shape}")
    return coefficients


def squared_l2_error(f: Function, coefficients: np.ndarray, n_nodes: int = 400) -> np.ndarray:
    """||f - sum_j c_j phi_j||^2 in L^2(mu) for coefficients of shape (m,) or (R, m) (one error per row)."""
    coefficients = _check_coefficients(coefficients)
    nodes, weights = _quadrature(n_nodes)
    approximation = coefficients @ legendre_features(nodes, coefficients.shape[-1]).T
    return (f(nodes) - approximation) ** 2 @ weights


def error_ratio(f: Function, coefficients: np.ndarray, n_nodes: int = 400) -> np.ndarray:
    """||f - f_hat||^2 / ||f - P_m f||^2 in L^2(mu): 1 is the best possible value.

    Interpolation at a projection-DPP sample (n = m) has expected ratio m + 1.
    """
    coefficients = _check_coefficients(coefficients)
    best = projection_coefficients(f, coefficients.shape[-1], n_nodes)
    best_error = squared_l2_error(f, best, n_nodes)
    if best_error <= 1e-24 * squared_l2_error(f, np.zeros_like(best), n_nodes):
        raise ValueError("f must not lie in V_m: its best-approximation error is zero up to rounding")
    return squared_l2_error(f, coefficients, n_nodes) / best_error
