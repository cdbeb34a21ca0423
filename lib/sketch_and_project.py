"""Randomized sketch-and-project solvers for a square linear system ``A z = b``.

One step draws a random sketch ``s`` and projects the iterate onto the solution set of the sketched equation
``s^T A z = s^T b``:

    z <- z - (s^T (A z - b) / ||A^T s||^2) A^T s .

Two sketches are offered: ``"rk"`` (randomized Kaczmarz, ``s`` a coordinate vector, row ``i`` drawn with
probability proportional to ``||A_i||^2``, or uniformly) and ``"gauss"`` (``s ~ N(0, I)``). A Kaczmarz step
touches one row, ``O(N)`` flops; a Gaussian step needs ``A^T s``, ``O(N^2)`` flops. The full residual is checked
only every ``check_every`` steps, so that the check adds ``O(N)`` flops per step on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib.validation import check_generator, check_positive_int

__all__ = ["SKETCHES", "SketchResult", "sketch_solve", "sketch_step_flops", "default_check_every"]

SKETCHES = ("rk", "gauss")


@dataclass(frozen=True)
class SketchResult:
    """Outcome of :func:`sketch_solve`: the iterate, the steps taken, the final residual norm ``||A z - b||``."""

    z: np.ndarray
    n_steps: int
    residual_norm: float
    converged: bool


def default_check_every(n: int) -> int:
    """How often (in steps) the full residual is checked: every ``max(1, n // 4)`` steps for an ``n x n`` system,
    so that the check (``2 n^2`` flops) adds at most ``8 n`` flops per step on average."""
    return max(1, n // 4)


def sketch_step_flops(n: int, sketch: str) -> float:
    """Flops of one sketch-and-project step on an ``n x n`` dense system, including the amortised residual check.

    Kaczmarz: a row dot product and an axpy (``4 n``); Gaussian: ``A^T s`` (``2 n^2``) plus three length-``n``
    products (``6 n``). The residual check ``A z - b`` (``2 n^2``) every ``default_check_every(n)`` steps adds
    ``2 n^2 / check_every`` (about ``8 n``).
    """
    n = check_positive_int(n, "n")
    if sketch not in SKETCHES:
        raise ValueError(f"sketch must be one of {SKETCHES}, got {sketch!r}")
    per_step = 4.0 * n if sketch == "rk" else 2.0 * n * n + 6.0 * n
    return per_step + 2.0 * n * n / default_check_every(n)


def _check_system(A: np.ndarray, b: np.ndarray, z0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    A = np.asarray(A, dtype=float)
    b = np.asarray(b, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square 2-D array, got shape {A.shape}")
    if b.shape != (A.shape[0],):
        raise ValueError(f"b must have shape ({A.shape[0]},), got {b.shape}")
    z = np.zeros_like(b) if z0 is None else np.array(z0, dtype=float)
    if z.shape != b.shape:
        raise ValueError(f"z0 must have shape {b.shape}, got {z.shape}")
    row_norms = np.einsum("ij,ij->i", A, A)
    if np.any(row_norms == 0.0):
        raise ValueError("A must have no zero row (a zero row makes the system singular)")
    return A, b, z


def _kaczmarz_directions(
    A: np.ndarray, b: np.ndarray, rows: np.ndarray, row_norms: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sketched rows ``A^T s = A_i``, their squared norms and sketched right-hand sides ``b_i`` for drawn rows."""
    return A[rows], row_norms[rows], b[rows]


def _gaussian_directions(
    A: np.ndarray, b: np.ndarray, sketches: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A^T s_j`` (as rows), their squared norms and ``s_j^T b`` for the Gaussian sketches (rows of ``sketches``)."""
    directions = sketches @ A
    return directions, np.einsum("ij,ij->i", directions, directions), sketches @ b


def _project_until(
    A: np.ndarray, b: np.ndarray, z: np.ndarray, sketched: tuple[np.ndarray, np.ndarray, np.ndarray],
    check_every: int, tol: float, budget: int,
) -> tuple[int, float]:
    """Apply the projection steps ``z <- z - ((d_j^T z - rhs_j) / ||d_j||^2) d_j`` in order, in place, checking
    ``||A z - b|| <= tol`` every ``check_every`` steps; stop there or after ``budget`` steps.

    Returns the number of steps taken and the last residual norm.
    """
    directions, squared_norms, rhs = sketched
    steps = min(budget, len(rhs))
    for j in range(steps):
        direction = directions[j]
        z -= ((direction @ z - rhs[j]) / squared_norms[j]) * direction
        if (j + 1) % check_every == 0 or j + 1 == steps:
            residual = A @ z - b
            residual_norm = float(np.sqrt(residual @ residual))
            if residual_norm <= tol:
                return j + 1, residual_norm
    return steps, residual_norm


def sketch_solve(
    A: np.ndarray,
    b: np.ndarray,
    *,
    tol: float,
    sketch: str = "rk",
    rng: np.random.Generator,
    z0: np.ndarray | None = None,
    max_steps: int = 200_000,
    rows: str = "norm",
    check_every: int | None = None,
) -> SketchResult:
    """Solve ``A z = b`` by sketch-and-project until ``||A z - b|| <= tol`` or ``max_steps`` steps.

    Parameters
    ----------
    A, b : the square system (``A`` need not be symmetric, but must have no zero row).
    tol : absolute tolerance on the residual norm, >= 0 (checked every ``check_every`` steps).
    sketch : ``"rk"`` (randomized Kaczmarz) or ``"gauss"`` (Gaussian vector sketch).
    rng : the random generator that draws rows or sketches.
    z0 : starting point (zeros by default).
    rows : for ``"rk"``, ``"norm"`` (probabilities proportional to ``||A_i||^2``) or ``"uniform"``.
    check_every : steps between residual checks (default :func:`default_check_every`).
    """
    A, b, z = _check_system(A, b, z0)
    if sketch not in SKETCHES:
        raise ValueError(f"sketch must be one of {SKETCHES}, got {sketch!r}")
    if rows not in ("norm", "uniform"):
        raise ValueError(f"rows must be 'norm' or 'uniform', got {rows!r}")
    tol = float(tol)
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    rng = check_generator(rng)
    max_steps = check_positive_int(max_steps, "max_steps")
    n = b.shape[0]
    check_every = default_check_every(n) if check_every is None else check_positive_int(check_every, "check_every")
    row_norms = np.einsum("ij,ij->i", A, A)
    probabilities = row_norms / row_norms.sum() if rows == "norm" else np.full(n, 1.0 / n)
    block = check_every * max(1, 256 // check_every)  # random draws are made a block at a time
    steps = 0
    residual_norm = float(np.linalg.norm(A @ z - b))
    while residual_norm > tol and steps < max_steps:
        if sketch == "rk":
            sketched = _kaczmarz_directions(A, b, rng.choice(n, size=block, p=probabilities), row_norms)
        else:
            sketched = _gaussian_directions(A, b, rng.standard_normal((block, n)))
        taken, residual_norm = _project_until(A, b, z, sketched, check_every, tol, max_steps - steps)
        steps += taken
    return SketchResult(z=z, n_steps=steps, residual_norm=residual_norm, converged=residual_norm <= tol)
