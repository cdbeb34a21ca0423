"""Successive over-relaxation (SOR) for the shifted 2-D Laplacian, and Young's theory of the optimal omega.

The systems are ``A = L + c I`` with ``L`` the 5-point Laplacian on an ``m x m`` interior grid (lexicographic
order, zero Dirichlet boundary) and ``c`` a diagonal shift. One SOR iteration is
``x <- x + M^{-1} (b - A x)`` with ``M = D / omega + tril(A, -1)``; it stops at the first ``k`` with
``||r_k|| / ||r_0|| < tol`` (starting from ``x_0 = 0``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from lib.validation import check_positive_int

__all__ = [
    "laplacian_2d",
    "sor_iterations",
    "sor_residual_history",
    "sor_iterations_batch",
    "jacobi_spectral_radius",
    "omega_star",
    "young_spectral_radius",
    "sor_spectral_radius",
]



def _check_omega(omega: float) -> float:
    omega = float(omega)
    if not 0.0 < omega < 2.0:
        raise ValueError(f"omega must lie in the open interval (0, 2), got {omega}")
    return omega


def _check_tol(tol: float) -> float:
    tol = float(tol)
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must lie in the open interval (0, 1), got {tol}")
    return tol


def laplacian_2d(m: int) -> sp.csr_matrix:
    """5-point finite-difference Laplacian on an ``m x m`` interior grid (``n = m**2`` unknowns).

    Diagonal 4, -1 for each of the (up to four) grid neighbours, lexicographic order; the same matrix as
    MATLAB's ``delsq(numgrid('S', m + 2))``.
    """
    m = check_positive_int(m, "m")
    second_difference = sp.diags([-np.ones(m - 1), 2.0 * np.ones(m), -np.ones(m - 1)], [-1, 0, 1])
    identity = sp.identity(m)
    return (sp.kron(identity, second_difference) + sp.kron(second_difference, identity)).tocsr()


def _check_system(A: sp.spmatrix | np.ndarray, b: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    A = sp.csr_matrix(A, dtype=float)
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got shape {A.shape}")
    b = np.asarray(b, dtype=float)
    if b.shape != (A.shape[0],):
        raise ValueError(f"b must have shape ({A.shape[0]},), got {b.shape}")
    if np.any(A.diagonal() == 0):
        raise ValueError("A must have a nonzero diagonal")
    if not np.any(b):
        raise ValueError("b must be nonzero (the stopping rule divides by ||b||)")
    return A, b


def _sor_sweeps(A: sp.csr_matrix, b: np.ndarray, omega: float) -> Iterator[tuple[np.ndarray, float]]:
    """Yield ``(x_k, ||r_k|| / ||r_0||)`` for k = 1, 2, ... from ``x_0 = 0``."""
    splitting = (sp.diags(A.diagonal() / omega) + sp.tril(A, k=-1)).tocsc()
    solve_lower = spla.splu(splitting, permc_spec="NATURAL", diag_pivot_thresh=0.0).solve
    x = np.zeros_like(b)
    residual = b.copy()
    initial_norm = np.linalg.norm(residual)
    while True:
        x = x + solve_lower(residual)
        residual = b - A @ x
        yield x, np.linalg.norm(residual) / initial_norm


def sor_iterations(
    A: sp.spmatrix | np.ndarray, b: np.ndarray, omega: float, tol: float = 1e-8, max_iter: int = 10_000
) -> tuple[int, np.ndarray]:
    """Solve ``A x = b`` by SOR from ``x_0 = 0``; return the iteration count ``k`` and ``x_k``.

    ``k`` is the first iteration with ``||b - A x_k|| / ||b|| < tol``; if that never happens within
    ``max_iter`` iterations, ``k = max_iter`` (the cap, as in the paper's code).
    """
    A, b = _check_system(A, b)
    omega, tol = _check_omega(omega), _check_tol(tol)
    max_iter = check_positive_int(max_iter, "max_iter")
    for k, (x, relative_residual) in enumerate(_sor_sweeps(A, b, omega), start=1):
        if relative_residual < tol or k == max_iter:
            return k, x
    raise AssertionError("unreachable")


def sor_residual_history(
    A: sp.spmatrix | np.ndarray, b: np.ndarray, omega: float, tol: float = 1e-8, max_iter: int = 10_000
) -> np.ndarray:
    """Relative residuals ``||r_k|| / ||r_0||`` for k = 0, 1, ..., up to the SOR stopping iteration."""
    A, b = _check_system(A, b)
    omega, tol = _check_omega(omega), _check_tol(tol)
    max_iter = check_positive_int(max_iter, "max_iter")
    history = [1.0]
    for k, (_, relative_residual) in enumerate(_sor_sweeps(A, b, omega), start=1):
        history.append(relative_residual)
        if relative_residual < tol or k == max_iter:
            return np.array(history)
    raise AssertionError("unreachable")


def _wavefronts(m: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Anti-diagonals ``i + j = s`` of the padded grid: (flat indices, flat indices of their 4 neighbours).

    Updating anti-diagonals in increasing ``s`` reproduces the lexicographic SOR sweep exactly: the neighbours
    above and to the left of a point lie on ``s - 1`` (already updated), those below and to the right on
    ``s + 1`` (not yet updated).
    """
    side = m + 2
    fronts = []
    for s in range(2, 2 * m + 1):
        rows = np.arange(max(1, s - m), min(m, s - 1) + 1)
        points = rows * side + (s - rows)
        neighbours = np.concatenate([points - side, points - 1, points + 1, points + side])
        fronts.append((points, neighbours))
    return fronts


def sor_iterations_batch(
    shifts: np.ndarray,
    rhs: np.ndarray,
    omegas: np.ndarray,
    m: int,
    tol: float = 1e-8,
    max_iter: int = 10_000,
) -> np.ndarray:
    """SOR iteration counts for many systems ``(laplacian_2d(m) + shifts[i] I) x = rhs[i]`` and many omegas.

    Parameters
    ----------
    shifts : (N,) diagonal shifts ``c_i``; each ``A_i`` must be positive definite (``c_i > -lambda_min(L)``).
    rhs : (N, m*m) right-hand sides, each nonzero.
    omegas : (W,) relaxation parameters used for every system, or (N, W) one row per system.
    m, tol, max_iter : grid size and stopping rule of :func:`sor_iterations`.

    Returns
    -------
    (N, W) int array: the count :func:`sor_iterations` returns for each (system, omega) pair. All pairs are
    iterated together, one anti-diagonal of the grid at a time; pairs that converged are dropped.
    """
    m = check_positive_int(m, "m")
    tol = _check_tol(tol)
    max_iter = check_positive_int(max_iter, "max_iter")
    shifts = np.asarray(shifts, dtype=float)
    if shifts.ndim != 1 or shifts.size == 0:
        raise ValueError(f"shifts must be a non-empty 1-D array, got shape {shifts.shape}")
    lambda_min = 4.0 - 4.0 * np.cos(np.pi / (m + 1))
    if np.any(shifts <= -lambda_min):
        raise ValueError(f"shifts must be > {-lambda_min:.6g} so that every A_i is positive definite")
    n_systems = shifts.size
    rhs = np.asarray(rhs, dtype=float)
    if rhs.shape != (n_systems, m * m):
        raise ValueError(f"rhs must have shape ({n_systems}, {m * m}), got {rhs.shape}")
    if np.any(~rhs.any(axis=1)):
        raise ValueError("every row of rhs must be nonzero")
    omegas = np.asarray(omegas, dtype=float)
    if omegas.ndim == 1:
        omegas = np.broadcast_to(omegas, (n_systems, omegas.size))
    if omegas.ndim != 2 or omegas.shape[0] != n_systems or omegas.shape[1] == 0:
        raise ValueError(f"omegas must have shape (W,) or ({n_systems}, W) with W >= 1, got {omegas.shape}")
    if np.any((omegas <= 0.0) | (omegas >= 2.0)):
        raise ValueError("every omega must lie in the open interval (0, 2)")

    n_omegas = omegas.shape[1]
    side = m + 2
    column_omega = omegas.reshape(-1)
    column_diagonal = np.repeat(4.0 + shifts, n_omegas)
    keep_factor = 1.0 - column_omega
    relax_factor = column_omega / column_diagonal
    b = np.zeros((side, side, n_systems * n_omegas))
    b[1:-1, 1:-1] = np.repeat(rhs, n_omegas, axis=0).T.reshape(m, m, -1)
    b = b.reshape(side * side, -1)
    x = np.zeros_like(b)
    threshold = tol * np.linalg.norm(b, axis=0)
    active = np.arange(b.shape[1])
    finished = np.zeros(b.shape[1], dtype=bool)
    counts = np.full(b.shape[1], max_iter, dtype=np.int64)
    fronts = _wavefronts(m)

    for k in range(1, max_iter + 1):
        for points, neighbours in fronts:
            neighbour_sum = x[neighbours].reshape(4, points.size, -1).sum(axis=0)
            x[points] = keep_factor * x[points] + relax_factor * (b[points] + neighbour_sum)
        grid = x.reshape(side, side, -1)
        residual = (
            b.reshape(side, side, -1)[1:-1, 1:-1]
            - column_diagonal * grid[1:-1, 1:-1]
            + grid[:-2, 1:-1]
            + grid[2:, 1:-1]
            + grid[1:-1, :-2]
            + grid[1:-1, 2:]
        )
        newly_converged = (np.sqrt(np.einsum("ijk,ijk->k", residual, residual)) < threshold) & ~finished
        counts[active[newly_converged]] = k
        finished |= newly_converged
        if finished.all():
            break
        if finished.sum() > 0.25 * finished.size:  # drop finished pairs only now and then: copying is costly
            running = ~finished
            active, x, b, finished = active[running], x[:, running], b[:, running], finished[running]
            keep_factor, relax_factor = keep_factor[running], relax_factor[running]
            column_diagonal, threshold = column_diagonal[running], threshold[running]
    return counts.reshape(n_systems, n_omegas)


def jacobi_spectral_radius(m: int, shift: float | np.ndarray) -> float | np.ndarray:
    """Jacobi spectral radius ``mu = 4 cos(pi / (m + 1)) / (4 + c)`` for ``laplacian_2d(m) + c I``.

    Raises if ``mu >= 1`` (the shifted matrix is then not positive definite and SOR need not converge).
    """
    m = check_positive_int(m, "m")
    shift = np.asarray(shift, dtype=float)
    mu = 4.0 * np.cos(np.pi / (m + 1)) / (4.0 + shift)
    if np.any((mu >= 1.0) | (mu < 0.0)):
        raise ValueError(f"shift must be > {4.0 * np.cos(np.pi / (m + 1)) - 4.0:.6g} (positive definite A)")
    return mu if mu.ndim else float(mu)


def _check_mu(mu: float | np.ndarray) -> np.ndarray:
    mu = np.asarray(mu, dtype=float)
    if np.any((mu < 0.0) | (mu >= 1.0)):
        raise ValueError("mu (the Jacobi spectral radius) must lie in [0, 1)")
    return mu


def omega_star(mu: float | np.ndarray) -> float | np.ndarray:
    """Young's optimal relaxation ``omega* = 2 / (1 + sqrt(1 - mu**2))`` for Jacobi spectral radius ``mu``."""
    mu = _check_mu(mu)
    result = 2.0 / (1.0 + np.sqrt(1.0 - mu**2))
    return result if result.ndim else float(result)


def young_spectral_radius(mu: float | np.ndarray, omega: float | np.ndarray) -> float | np.ndarray:
    """Young's closed form of the SOR spectral radius for a consistently ordered matrix.

    ``rho = omega - 1`` for ``omega >= omega*``; below it,
    ``rho = ((omega mu + sqrt(omega**2 mu**2 - 4 (omega - 1))) / 2) ** 2``.
    """
    mu = _check_mu(mu)
    omega = np.asarray(omega, dtype=float)
    if np.any((omega <= 0.0) | (omega >= 2.0)):
        raise ValueError("omega must lie in the open interval (0, 2)")
    discriminant = omega**2 * mu**2 - 4.0 * (omega - 1.0)
    below = ((omega * mu + np.sqrt(np.maximum(discriminant, 0.0))) / 2.0) ** 2
    result = np.where(discriminant > 0.0, below, omega - 1.0)
    return result if result.ndim else float(result)


def sor_spectral_radius(A: sp.spmatrix | np.ndarray, omega: float) -> float:
    """Spectral radius of the SOR iteration matrix ``I - M^{-1} A`` (dense eigenvalues; for small ``A``)."""
    omega = _check_omega(omega)
    A = np.asarray(A.toarray() if sp.issparse(A) else A, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {A.shape}")
    if np.any(np.diag(A) == 0):
        raise ValueError("A must have a nonzero diagonal")
    splitting = np.diag(np.diag(A)) / omega + np.tril(A, k=-1)
    iteration_matrix = np.eye(A.shape[0]) - np.linalg.solve(splitting, A)
    return float(np.max(np.abs(np.linalg.eigvals(iteration_matrix))))
