"""Equality-constrained optimisation with an exact augmented Lagrangian and sketched Newton steps.

The problem is ``min_x f(x)  s.t.  c(x) = 0`` with ``f: R^n -> R`` and ``c: R^n -> R^m``. Its Lagrangian is
``L(x, lam) = f(x) + lam^T c(x)``; a KKT point has ``grad_x L = 0`` and ``c = 0``. The *exact augmented
Lagrangian*

    L_eta(x, lam) = L(x, lam) + (eta1 / 2) ||c(x)||^2 + (eta2 / 2) ||grad_x L(x, lam)||^2

is a merit function whose stationary points include the KKT points. :func:`adasketch_newton` solves the
Lagrangian Newton (KKT) system only approximately, with a randomized sketch-and-project solver, and takes an
Armijo line search on ``L_eta``; it raises the penalties and sharpens the solver accuracy whenever the inexact
direction is not a descent direction of ``L_eta`` (Hong, Na, Mahoney and Kolar, ICML 2023).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lib.sketch_and_project import SKETCHES, sketch_solve
from lib.validation import check_generator, check_positive_int

__all__ = [
    "EqualityProblem",
    "NewtonHistory",
    "kkt_residual",
    "exact_auglag",
    "exact_auglag_grad",
    "kkt_matrix",
    "modified_hessian",
    "adasketch_newton",
    "hs6",
    "hs7",
    "hs27",
    "constrained_logistic_regression",
    "random_equality_qp",
]

Vector = np.ndarray
Accuracy = float | Callable[[int, float], float]


@dataclass(frozen=True)
class EqualityProblem:
    """``min f(x) s.t. c(x) = 0`` with first and second derivatives.

    ``constraint_curvature(x, lam)`` returns ``sum_i lam_i * Hessian(c_i)(x)``; ``x_star`` is the known solution
    (or None).
    """

    name: str
    objective: Callable[[Vector], float]
    gradient: Callable[[Vector], Vector]
    hessian: Callable[[Vector], np.ndarray]
    constraints: Callable[[Vector], Vector]
    jacobian: Callable[[Vector], np.ndarray]
    constraint_curvature: Callable[[Vector, Vector], np.ndarray]
    x0: Vector
    x_star: Vector | None = None

    @property
    def n(self) -> int:
        """Number of variables."""
        return self.x0.shape[0]

    @property
    def m(self) -> int:
        """Number of equality constraints."""
        return self.constraints(self.x0).shape[0]

    def lagrangian_gradient(self, x: Vector, lam: Vector) -> Vector:
        """``grad_x L(x, lam) = grad f(x) + G(x)^T lam``."""
        return self.gradient(x) + self.jacobian(x).T @ lam

    def lagrangian_hessian(self, x: Vector, lam: Vector) -> np.ndarray:
        """``hess_xx L(x, lam) = hess f(x) + sum_i lam_i hess c_i(x)``."""
        return self.hessian(x) + self.constraint_curvature(x, lam)


def _check_point(problem: EqualityProblem, x: Vector, lam: Vector) -> tuple[Vector, Vector]:
    if not isinstance(problem, EqualityProblem):
        raise TypeError(f"problem must be an EqualityProblem, got {type(problem).__name__}")
    x = np.asarray(x, dtype=float)
    lam = np.asarray(lam, dtype=float)
    if x.shape != (problem.n,):
        raise ValueError(f"x must have shape ({problem.n},), got {x.shape}")
    if lam.shape != (problem.m,):
        raise ValueError(f"lam must have shape ({problem.m},), got {lam.shape}")
    return x, lam


def _check_penalties(eta1: float, eta2: float) -> tuple[float, float]:
    eta1, eta2 = float(eta1), float(eta2)
    if not (eta1 > 0.0 and eta2 > 0.0):
        raise ValueError(f"eta1 and eta2 must be > 0, got eta1={eta1}, eta2={eta2}")
    return eta1, eta2


def kkt_residual(grad_lagrangian: Vector, constraint_values: Vector) -> float:
    """``||(grad_x L, c)||_2``, the distance of a primal-dual pair from satisfying the KKT conditions."""
    grad_lagrangian = np.asarray(grad_lagrangian, dtype=float)
    constraint_values = np.asarray(constraint_values, dtype=float)
    if grad_lagrangian.ndim != 1 or constraint_values.ndim != 1:
        raise ValueError("grad_lagrangian and constraint_values must be 1-D arrays")
    return float(np.sqrt(grad_lagrangian @ grad_lagrangian + constraint_values @ constraint_values))


def exact_auglag(problem: EqualityProblem, x: Vector, lam: Vector, eta1: float, eta2: float) -> float:
    """The exact augmented Lagrangian ``L + (eta1/2)||c||^2 + (eta2/2)||grad_x L||^2`` at ``(x, lam)``."""
    x, lam = _check_point(problem, x, lam)
    eta1, eta2 = _check_penalties(eta1, eta2)
    c = problem.constraints(x)
    grad_l = problem.lagrangian_gradient(x, lam)
    return float(problem.objective(x) + lam @ c + 0.5 * eta1 * (c @ c) + 0.5 * eta2 * (grad_l @ grad_l))


def exact_auglag_grad(
    problem: EqualityProblem, x: Vector, lam: Vector, eta1: float, eta2: float
) -> tuple[Vector, Vector]:
    """Gradient of :func:`exact_auglag` with respect to ``x`` and ``lam``.

    ``d/dx  = grad_x L + eta2 * hess_xx L @ grad_x L + eta1 * G^T c`` and
    ``d/dlam = c + eta2 * G @ grad_x L``, with ``G`` the Jacobian of ``c``.
    """
    x, lam = _check_point(problem, x, lam)
    eta1, eta2 = _check_penalties(eta1, eta2)
    c = problem.constraints(x)
    jac = problem.jacobian(x)
    grad_l = problem.lagrangian_gradient(x, lam)
    grad_x = grad_l + eta2 * problem.lagrangian_hessian(x, lam) @ grad_l + eta1 * jac.T @ c
    grad_lam = c + eta2 * jac @ grad_l
    return grad_x, grad_lam


def modified_hessian(hess_lagrangian: np.ndarray, jacobian: np.ndarray, xi_b: float = 0.1) -> np.ndarray:
    """The Hessian block ``B`` of the Newton system: ``hess_xx L`` if it is positive definite on the null space of
    the Jacobian ``G`` (reduced Hessian ``Z^T H Z`` with smallest eigenvalue >= 1e-6), else
    ``H + (xi_b + ||H||_2) I``.
    """
    hess = np.asarray(hess_lagrangian, dtype=float)
    jac = np.asarray(jacobian, dtype=float)
    if hess.ndim != 2 or hess.shape[0] != hess.shape[1]:
        raise ValueError(f"hess_lagrangian must be square, got shape {hess.shape}")
    if jac.ndim != 2 or jac.shape[1] != hess.shape[0] or jac.shape[0] > jac.shape[1]:
        raise ValueError(f"jacobian must have shape (m, {hess.shape[0]}) with m <= {hess.shape[0]}, got {jac.shape}")
    if not xi_b > 0.0:
        raise ValueError(f"xi_b must be > 0, got {xi_b}")
    m, n = jac.shape
    if m == n:
        return hess
    q, _ = np.linalg.qr(jac.T, mode="complete")
    null_basis = q[:, m:]
    reduced = null_basis.T @ hess @ null_basis
    if np.linalg.eigvalsh(0.5 * (reduced + reduced.T))[0] >= 1e-6:
        return hess
    return hess + (xi_b + np.linalg.norm(hess, 2)) * np.eye(n)


def kkt_matrix(hessian_block: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """The symmetric Lagrangian Newton matrix ``[[B, G^T], [G, 0]]``."""
    m, n = jacobian.shape
    if hessian_block.shape != (n, n):
        raise ValueError(f"hessian_block must have shape ({n}, {n}), got {hessian_block.shape}")
    return np.block([[hessian_block, jacobian.T], [jacobian, np.zeros((m, m))]])


@dataclass
class NewtonHistory:
    """Per-iteration record of :func:`adasketch_newton` (``kkt`` has one more entry than the others)."""

    kkt: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)
    sketch_steps: list[int] = field(default_factory=list)
    eta1: list[float] = field(default_factory=list)
    eta2: list[float] = field(default_factory=list)
    solver_accuracy: list[float] = field(default_factory=list)
    descent_retries: list[int] = field(default_factory=list)
    x: Vector | None = None
    lam: Vector | None = None
    status: str = "running"

    @property
    def converged(self) -> bool:
        """Whether the KKT tolerance was met."""
        return self.status == "converged"

    @property
    def iterations(self) -> int:
        """Number of Newton steps taken."""
        return len(self.alpha)


def _accuracy_at(accuracy: Accuracy, k: int, kkt: float) -> float:
    value = float(accuracy(k, kkt)) if callable(accuracy) else float(accuracy)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"the solver accuracy (kappa or theta) must lie in (0, 1], got {value} at iteration {k}")
    return value


def _delta_bound(eta1: float, eta2: float, beta: float, upsilon: float, psi: float) -> float:
    """The paper's upper bound on the accuracy constant delta that makes the inexact direction a descent one."""
    return (0.5 - beta) * eta2 / ((1.0 + eta1 + eta2) * upsilon**2 * psi**2)


def _armijo_step(
    problem: EqualityProblem, x: Vector, lam: Vector, dx: Vector, dlam: Vector,
    eta1: float, eta2: float, slope: float, beta: float,
) -> float:
    """Largest ``alpha`` in ``{1, 1/2, 1/4, ...}`` (down to 2^-40) with sufficient decrease of ``L_eta``."""
    merit = exact_auglag(problem, x, lam, eta1, eta2)
    alpha = 1.0
    for _ in range(40):
        trial = exact_auglag(problem, x + alpha * dx, lam + alpha * dlam, eta1, eta2)
        if np.isfinite(trial) and trial <= merit + alpha * beta * slope:
            return alpha
        alpha *= 0.5
    return alpha


def adasketch_newton(
    problem: EqualityProblem,
    *,
    rng: np.random.Generator,
    x0: Vector | None = None,
    lam0: Vector | None = None,
    sketch: str = "rk",
    accuracy: str = "relative",
    kappa: Accuracy = 0.1,
    theta: Accuracy = 1.0,
    eta1: float = 1.0,
    eta2: float = 0.1,
    delta: float = 0.1,
    xi_b: float = 0.1,
    beta: float = 0.1,
    nu: float = 1.5,
    tol: float = 1e-4,
    max_iter: int = 200,
    max_sketch_steps: int | None = None,
) -> NewtonHistory:
    """Adaptive sketched Newton method on the exact augmented Lagrangian.

    Each iteration builds the Newton system ``[[B, G^T], [G, 0]] (dx, dlam) = -(grad_x L, c)`` (``B`` from
    :func:`modified_hessian`), solves it with :func:`lib.sketch_and_project.sketch_solve` to a residual
    ``||r|| <= kappa_k ||b||`` (``accuracy="relative"``) or the paper's condition
    ``||A|| psi ||r|| <= theta_k delta ||b||`` (``accuracy="paper"``), and checks the descent condition
    ``grad L_eta^T d <= -(eta2 / 2) ||b||^2``. While it fails: ``eta1 *= nu^2``, ``eta2 /= nu``, the accuracy is
    sharpened (``delta`` via its formula, or ``kappa_k /= nu``) and the solve continues from the current
    direction (at most ``max_sketch_steps`` sketch steps per Newton iteration in all; by default
    ``max(25 000, 1000 N)`` for a KKT system of size ``N = n + m``). Then an Armijo line search on ``L_eta``
    (constant ``beta``) picks the step. ``kappa`` and ``theta`` may be constants or
    functions ``(k, kkt_k) -> value``. Stops when the KKT residual is <= ``tol``.
    """
    rng = check_generator(rng)
    if sketch not in SKETCHES:
        raise ValueError(f"sketch must be one of {SKETCHES}, got {sketch!r}")
    if accuracy not in ("relative", "paper"):
        raise ValueError(f"accuracy must be 'relative' or 'paper', got {accuracy!r}")
    eta1, eta2 = _check_penalties(eta1, eta2)
    for name, value in {"delta": delta, "xi_b": xi_b, "tol": tol}.items():
        if not value > 0.0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if not 0.0 < beta < 0.5:
        raise ValueError(f"beta must lie in (0, 0.5), got {beta}")
    if not nu > 1.0:
        raise ValueError(f"nu must be > 1, got {nu}")
    max_iter = check_positive_int(max_iter, "max_iter")
    x, lam = _check_point(
        problem,
        problem.x0 if x0 is None else x0,
        np.zeros(problem.m) if lam0 is None else lam0,
    )
    x, lam = x.copy(), lam.copy()
    n = problem.n
    if max_sketch_steps is None:
        max_sketch_steps = max(25_000, 1000 * (n + problem.m))
    max_sketch_steps = check_positive_int(max_sketch_steps, "max_sketch_steps")
    history = NewtonHistory()
    for k in range(max_iter + 1):
        c = problem.constraints(x)
        grad_l = problem.lagrangian_gradient(x, lam)
        kkt = kkt_residual(grad_l, c)
        history.kkt.append(kkt)
        if not np.isfinite(kkt):
            history.status = "diverged"
            break
        if kkt <= tol:
            history.status = "converged"
            break
        if k == max_iter:
            history.status = "max_iter"
            break
        jac = problem.jacobian(x)
        xi_g = float(np.linalg.eigvalsh(jac @ jac.T)[0])
        if xi_g < 1e-2:
            history.status = "singular_jacobian"
            break
        hess_l = problem.lagrangian_hessian(x, lam)
        hess_block = modified_hessian(hess_l, jac, xi_b)
        system = kkt_matrix(hess_block, jac)
        rhs = -np.concatenate([grad_l, c])
        rhs_norm = float(np.linalg.norm(rhs))
        if accuracy == "paper":
            psi = 20.0 * max(np.linalg.norm(hess_block, 2) ** 2, 1.0) / (min(xi_g, 1.0) * min(xi_b, 1.0))
            upsilon = max(np.linalg.norm(jac, 2), np.linalg.norm(hess_l, 2), 1.0)
            system_norm = float(np.linalg.norm(system, 2))
            theta_k = _accuracy_at(theta, k, kkt)
            delta = max(1e-6, min(delta, _delta_bound(eta1, eta2, beta, upsilon, psi)))
            solve_tol = theta_k * delta * rhs_norm / (system_norm * psi)
        else:
            kappa_k = _accuracy_at(kappa, k, kkt)
            solve_tol = kappa_k * rhs_norm
        steps, retries, z = 0, 0, None
        while True:
            if steps < max_sketch_steps:  # re-solves continue from the previous direction
                result = sketch_solve(
                    system, rhs, tol=solve_tol, sketch=sketch, rng=rng, z0=z, max_steps=max_sketch_steps - steps
                )
                steps, z = steps + result.n_steps, result.z
            dx, dlam = z[:n], z[n:]
            gx, glam = exact_auglag_grad(problem, x, lam, eta1, eta2)
            slope = float(gx @ dx + glam @ dlam)
            if slope <= -0.5 * eta2 * rhs_norm**2 or retries >= 60:
                break
            retries += 1
            if eta1 <= 1e8 and eta2 >= 1e-8:
                eta1, eta2 = eta1 * nu**2, eta2 / nu
            if accuracy == "paper":
                delta = max(1e-6, min(delta / nu**4, _delta_bound(eta1, eta2, beta, upsilon, psi)))
                solve_tol = theta_k * delta * rhs_norm / (system_norm * psi)
            else:
                solve_tol = max(solve_tol / nu, 1e-12 * rhs_norm)
        alpha = _armijo_step(problem, x, lam, dx, dlam, eta1, eta2, min(slope, 0.0), beta)
        x, lam = x + alpha * dx, lam + alpha * dlam
        history.alpha.append(alpha)
        history.sketch_steps.append(steps)
        history.eta1.append(eta1)
        history.eta2.append(eta2)
        history.solver_accuracy.append(solve_tol / rhs_norm)
        history.descent_retries.append(retries)
    history.x, history.lam = x, lam
    return history


def hs6() -> EqualityProblem:
    """Hock-Schittkowski problem 6: ``min (1 - x1)^2  s.t.  10 (x2 - x1^2) = 0``, ``x* = (1, 1)``."""
    return EqualityProblem(
        name="HS6",
        objective=lambda x: float((1.0 - x[0]) ** 2),
        gradient=lambda x: np.array([-2.0 * (1.0 - x[0]), 0.0]),
        hessian=lambda x: np.array([[2.0, 0.0], [0.0, 0.0]]),
        constraints=lambda x: np.array([10.0 * (x[1] - x[0] ** 2)]),
        jacobian=lambda x: np.array([[-20.0 * x[0], 10.0]]),
        constraint_curvature=lambda x, lam: np.array([[-20.0 * lam[0], 0.0], [0.0, 0.0]]),
        x0=np.array([-1.2, 1.0]),
        x_star=np.array([1.0, 1.0]),
    )


def hs7() -> EqualityProblem:
    """Hock-Schittkowski problem 7: ``min log(1 + x1^2) - x2  s.t.  (1 + x1^2)^2 + x2^2 - 4 = 0``,
    ``x* = (0, sqrt 3)``."""

    def curvature(x: Vector, lam: Vector) -> np.ndarray:
        return lam[0] * np.array([[4.0 * (1.0 + x[0] ** 2) + 8.0 * x[0] ** 2, 0.0], [0.0, 2.0]])

    return EqualityProblem(
        name="HS7",
        objective=lambda x: float(np.log1p(x[0] ** 2) - x[1]),
        gradient=lambda x: np.array([2.0 * x[0] / (1.0 + x[0] ** 2), -1.0]),
        hessian=lambda x: np.array([[2.0 * (1.0 - x[0] ** 2) / (1.0 + x[0] ** 2) ** 2, 0.0], [0.0, 0.0]]),
        constraints=lambda x: np.array([(1.0 + x[0] ** 2) ** 2 + x[1] ** 2 - 4.0]),
        jacobian=lambda x: np.array([[4.0 * x[0] * (1.0 + x[0] ** 2), 2.0 * x[1]]]),
        constraint_curvature=curvature,
        x0=np.array([2.0, 2.0]),
        x_star=np.array([0.0, np.sqrt(3.0)]),
    )


def hs27() -> EqualityProblem:
    """Hock-Schittkowski problem 27: ``min 0.01 (x1 - 1)^2 + (x2 - x1^2)^2  s.t.  x1 + x3^2 + 1 = 0``,
    ``x* = (-1, 1, 0)``."""

    def hessian(x: Vector) -> np.ndarray:
        return np.array([
            [0.02 + 12.0 * x[0] ** 2 - 4.0 * x[1], -4.0 * x[0], 0.0],
            [-4.0 * x[0], 2.0, 0.0],
            [0.0, 0.0, 0.0],
        ])

    return EqualityProblem(
        name="HS27",
        objective=lambda x: float(0.01 * (x[0] - 1.0) ** 2 + (x[1] - x[0] ** 2) ** 2),
        gradient=lambda x: np.array([
            0.02 * (x[0] - 1.0) - 4.0 * x[0] * (x[1] - x[0] ** 2), 2.0 * (x[1] - x[0] ** 2), 0.0,
        ]),
        hessian=hessian,
        constraints=lambda x: np.array([x[0] + x[2] ** 2 + 1.0]),
        jacobian=lambda x: np.array([[1.0, 0.0, 2.0 * x[2]]]),
        constraint_curvature=lambda x, lam: np.diag([0.0, 0.0, 2.0 * lam[0]]),
        x0=np.array([2.0, 2.0, 2.0]),
        x_star=np.array([-1.0, 1.0, 0.0]),
    )


def constrained_logistic_regression(
    features: np.ndarray, labels: np.ndarray, *, n_linear: int, rng: np.random.Generator
) -> EqualityProblem:
    """Logistic loss ``mean log(1 + exp(-y_i a_i^T w))`` subject to ``C w = d`` (``n_linear`` random Gaussian rows,
    ``d = C w0`` for a random unit vector ``w0``, so the set is feasible) and ``||w||^2 = 1``.

    ``labels`` must be -1 or +1. The start is another random unit vector (at ``w = 0`` the Jacobian of
    ``||w||^2`` vanishes); the solution is not known in closed form.
    """
    features = np.asarray(features, dtype=float)
    labels = np.asarray(labels, dtype=float)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be (N, n) and labels (N,), got {features.shape} and {labels.shape}")
    if not np.all(np.isin(labels, (-1.0, 1.0))):
        raise ValueError("labels must be -1 or +1")
    n_samples, n = features.shape
    n_linear = check_positive_int(n_linear, "n_linear")
    if n_linear >= n:
        raise ValueError(f"n_linear must be < the number of features {n}, got {n_linear}")
    rng = check_generator(rng)
    linear = rng.standard_normal((n_linear, n))
    anchor = rng.standard_normal(n)
    offsets = linear @ (anchor / np.linalg.norm(anchor))
    start = rng.standard_normal(n)
    signed = labels[:, None] * features

    def objective(w: Vector) -> float:
        return float(np.mean(np.logaddexp(0.0, -signed @ w)))

    def gradient(w: Vector) -> Vector:
        weights = 0.5 * (1.0 - np.tanh(0.5 * (signed @ w)))  # sigma(-y a^T w), computed stably
        return -(signed.T @ weights) / n_samples

    def hessian(w: Vector) -> np.ndarray:
        p = 0.5 * (1.0 - np.tanh(0.5 * (features @ w)))
        return (features.T * (p * (1.0 - p))) @ features / n_samples

    return EqualityProblem(
        name="logistic",
        objective=objective,
        gradient=gradient,
        hessian=hessian,
        constraints=lambda w: np.concatenate([linear @ w - offsets, [w @ w - 1.0]]),
        jacobian=lambda w: np.vstack([linear, 2.0 * w]),
        constraint_curvature=lambda w, lam: 2.0 * lam[-1] * np.eye(n),
        x0=start / np.linalg.norm(start),
    )


def random_equality_qp(
    n: int, m: int, *, rng: np.random.Generator, curvature: tuple[float, float] = (1.0, 4.0)
) -> EqualityProblem:
    """A random convex quadratic program ``min 1/2 x^T Q x + q^T x  s.t.  G x = h`` whose KKT matrix is equally
    well conditioned at every size: ``Q`` is diagonal with entries uniform in ``curvature``, ``G`` has
    orthonormal rows in a random orientation.

    Its solution solves one linear system, so ``x_star`` is known; the start is ``x = 0``.
    """
    n = check_positive_int(n, "n")
    m = check_positive_int(m, "m")
    if m >= n:
        raise ValueError(f"m must be < n, got m={m}, n={n}")
    low, high = map(float, curvature)
    if not 0.0 < low <= high:
        raise ValueError(f"curvature must be (low, high) with 0 < low <= high, got {curvature}")
    rng = check_generator(rng)
    quadratic = np.diag(rng.uniform(low, high, n))
    linear = rng.standard_normal(n)
    rows, _ = np.linalg.qr(rng.standard_normal((n, m)))
    jac = rows.T
    offsets = rng.standard_normal(m)
    solution = np.linalg.solve(kkt_matrix(quadratic, jac), np.concatenate([-linear, offsets]))
    return EqualityProblem(
        name=f"QP(n={n}, m={m})",
        objective=lambda x: float(0.5 * x @ quadratic @ x + linear @ x),
        gradient=lambda x: quadratic @ x + linear,
        hessian=lambda x: quadratic,
        constraints=lambda x: jac @ x - offsets,
        jacobian=lambda x: jac,
        constraint_curvature=lambda x, lam: np.zeros((n, n)),
        x0=np.zeros(n),
        x_star=solution[:n],
    )
