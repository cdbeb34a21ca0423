"""k-medoids clustering: PAM (BUILD + SWAP), FastPAM1, FasterPAM, LAB initialisation and CLARA.

All functions work on a precomputed dissimilarity matrix ``D`` (n x n, symmetric, non-negative, zero diagonal).
The loss of a medoid set M is the total deviation ``TD(M) = sum_o min_{m in M} D[o, m]``.

Every algorithm also counts the distance look-ups it spends (``n_lookups``): this is the machine-independent
measure of work used to compare PAM, FastPAM1 and FasterPAM (Schubert and Rousseeuw, 2021).
"""

from collections.abc import Callable
from math import ceil, sqrt
from typing import NamedTuple

import numpy as np

from lib.validation import check_generator, check_positive_int

SwapCallback = Callable[[int, np.ndarray, float], None]


class MedoidResult(NamedTuple):
    """Result of a k-medoids run.

    ``labels[o]`` is the position (in ``medoids``) of the medoid nearest to point ``o``; ``n_iter`` counts passes
    over the candidates (including the last, unsuccessful one); ``n_lookups`` counts distance look-ups.
    """

    loss: float
    labels: np.ndarray
    medoids: np.ndarray
    n_iter: int
    n_swap: int
    n_lookups: int


def check_dissimilarity(D: object) -> np.ndarray:
    """Return ``D`` as a float64 array if it is a square, symmetric, finite, non-negative matrix with zero diagonal."""
    if not isinstance(D, np.ndarray):
        raise TypeError(f"D must be a numpy array, got {type(D).__name__}")
    if D.ndim != 2 or D.shape[0] != D.shape[1] or D.shape[0] < 2:
        raise ValueError(f"D must be a square matrix with at least 2 rows, got shape {D.shape}")
    if not np.issubdtype(D.dtype, np.number) or np.issubdtype(D.dtype, np.complexfloating):
        raise TypeError(f"D must hold real numbers, got dtype {D.dtype}")
    D = D.astype(np.float64, copy=False)
    if not np.all(np.isfinite(D)) or np.any(D < 0):
        raise ValueError("D must be finite and non-negative")
    if np.any(np.diag(D) != 0) or not np.allclose(D, D.T):
        raise ValueError("D must be symmetric with a zero diagonal")
    return D


def _check_k(k: object, n: int, minimum: int = 1) -> int:
    k = check_positive_int(k, "k", minimum)
    if k >= n:
        raise ValueError(f"k must be smaller than the number of points n = {n}, got {k}")
    return k


def _check_medoids(medoids: object, n: int, minimum: int = 1) -> np.ndarray:
    if not isinstance(medoids, np.ndarray) or medoids.ndim != 1 or not np.issubdtype(medoids.dtype, np.integer):
        raise TypeError("medoids must be a 1-D numpy array of integer indices")
    _check_k(len(medoids), n, minimum)
    if medoids.min() < 0 or medoids.max() >= n:
        raise ValueError(f"medoids must be indices in [0, {n}), got {medoids.min()}..{medoids.max()}")
    if len(np.unique(medoids)) != len(medoids):
        raise ValueError("medoids must be distinct")
    return medoids.astype(np.intp)


def total_deviation(D: np.ndarray, medoids: np.ndarray) -> float:
    """Loss of a medoid set: ``sum_o min_m D[o, m]``, every point counted with its nearest medoid."""
    D = check_dissimilarity(D)
    medoids = _check_medoids(medoids, len(D))
    return float(D[:, medoids].min(axis=1).sum())


def nearest_two(D: np.ndarray, medoids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every point: position of its nearest medoid, the distance to it, and the distance to the second nearest.

    With a single medoid the second distance is ``inf``.
    """
    D = check_dissimilarity(D)
    medoids = _check_medoids(medoids, len(D))
    return _nearest_two(D, medoids)


def _nearest_two(D: np.ndarray, medoids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(medoids) == 1:
        return np.zeros(len(D), dtype=np.intp), D[:, medoids[0]].copy(), np.full(len(D), np.inf)
    near_idx, d_near, _, d_second = _nearest_two_with_index(D, medoids)
    return near_idx, d_near, d_second


def removal_loss(near_idx: np.ndarray, d_near: np.ndarray, d_second: np.ndarray, k: int) -> np.ndarray:
    """Increase of the loss when medoid ``m`` is removed without replacement, for every m = 0..k-1.

    Each member of m's cluster moves to its second-nearest medoid: ``sum_{o: near(o) = m} d_second(o) - d_near(o)``.
    """
    k = check_positive_int(k, "k", 2)
    near_idx, d_near, d_second = (np.asarray(a) for a in (near_idx, d_near, d_second))
    if not near_idx.shape == d_near.shape == d_second.shape or near_idx.ndim != 1:
        raise ValueError("near_idx, d_near and d_second must be 1-D arrays of the same length")
    if len(near_idx) and (near_idx.min() < 0 or near_idx.max() >= k):
        raise ValueError(f"near_idx must hold medoid positions in [0, {k})")
    return _removal_loss(near_idx, d_near, d_second, k)


def _removal_loss(near_idx: np.ndarray, d_near: np.ndarray, d_second: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(near_idx, weights=d_second - d_near, minlength=k)


def _swap_deltas(
    D: np.ndarray, candidates: np.ndarray, near_idx: np.ndarray, d_near: np.ndarray, d_second: np.ndarray,
    loss_of_removal: np.ndarray,
) -> np.ndarray:
    """Change of the loss for swapping every medoid (columns) with every candidate j (rows): O(n) per candidate.

    The FastPAM1 trick: one pass over the points serves all k medoids. A point o closer to j than to its nearest
    medoid moves to j whichever medoid leaves (a shared gain ``acc``), and no longer pays its removal share; a point
    between its nearest and second-nearest medoid only changes the removal cost of its own nearest medoid.
    """
    k = len(loss_of_removal)
    d_cand = D[candidates]                                            # (B, n): D[j, o]
    gap = d_cand - d_near                                             # < 0: o moves to j
    shared_gain = np.minimum(gap, 0.0).sum(axis=1)                    # acc, one per candidate
    per_point = np.minimum(d_cand, d_second)                          # o between nearest and second: d_oj - d_second
    per_point -= d_second
    np.copyto(per_point, d_near - d_second, where=gap < 0)            # o moves to j: no removal share
    flat_bins = (np.arange(len(candidates))[:, None] * k + near_idx[None, :]).ravel()
    per_medoid = np.bincount(flat_bins, weights=per_point.ravel(), minlength=len(candidates) * k)
    return loss_of_removal[None, :] + per_medoid.reshape(len(candidates), k) + shared_gain[:, None]


def best_swap_for_candidate(
    D: np.ndarray, j: int, near_idx: np.ndarray, d_near: np.ndarray, d_second: np.ndarray,
    loss_of_removal: np.ndarray,
) -> tuple[float, int]:
    """Best medoid to swap with non-medoid ``j``: returns (change of the loss, position of that medoid).

    One O(n) pass over the points, for all k medoids at once (FastPAM1's shared accumulator).
    """
    D = check_dissimilarity(D)
    j = check_positive_int(j, "j", 0)
    if j >= len(D):
        raise ValueError(f"j must be a point index in [0, {len(D)}), got {j}")
    deltas = _swap_deltas(D, np.array([j]), np.asarray(near_idx), np.asarray(d_near), np.asarray(d_second),
                          np.asarray(loss_of_removal, dtype=np.float64))[0]
    best = int(np.argmin(deltas))
    return float(deltas[best]), best


def _result(D: np.ndarray, medoids: np.ndarray, n_iter: int, n_swap: int, n_lookups: int) -> MedoidResult:
    near_idx, d_near, _ = _nearest_two(D, medoids)
    return MedoidResult(float(d_near.sum()), near_idx, medoids, n_iter, n_swap, n_lookups)


def _gain_lost_to_rounding(d_near: np.ndarray, loss_before: float) -> bool:
    """True if a swap chosen for a negative change did not lower the recomputed loss (a tie, e.g. the two
    points of a two-point cluster trading places): the search then stops, as in the reference implementation."""
    return float(d_near.sum()) >= loss_before


def pam_build(D: np.ndarray, k: int) -> MedoidResult:
    """PAM's greedy BUILD: the most central point first, then k-1 times the point that lowers the loss most.

    Each step evaluates every non-medoid against every point: O(n^2) look-ups per medoid.
    """
    D = check_dissimilarity(D)
    n = len(D)
    k = _check_k(k, n)
    medoids = [int(np.argmin(D.sum(axis=0)))]
    d_near = D[:, medoids[0]].copy()
    n_lookups = n * n
    is_medoid = np.zeros(n, dtype=bool)
    is_medoid[medoids[0]] = True
    work = np.empty_like(D)
    for _ in range(k - 1):
        np.subtract(d_near[:, None], D, out=work)
        gain = np.maximum(work, 0.0, out=work).sum(axis=0)          # gain[j] = sum_o max(0, d_near(o) - D[o, j])
        gain[is_medoid] = -np.inf
        n_lookups += (n - len(medoids)) * n
        chosen = int(np.argmax(gain))
        medoids.append(chosen)
        is_medoid[chosen] = True
        d_near = np.minimum(d_near, D[:, chosen])
        n_lookups += n
    return _result(D, np.array(medoids, dtype=np.intp), 0, 0, n_lookups)


def pam_swap(D: np.ndarray, medoids: np.ndarray, max_iter: int = 100) -> MedoidResult:
    """PAM's original SWAP: every iteration evaluates all k(n-k) swaps at O(n) each, then does the best one.

    Vectorised over the candidates, one medoid at a time: O(k n^2) look-ups per iteration.
    """
    D = check_dissimilarity(D)
    medoids = _check_medoids(medoids, len(D), 2).copy()
    max_iter = check_positive_int(max_iter, "max_iter")
    n, k = len(D), len(medoids)
    near_idx, d_near, d_second = _nearest_two(D, medoids)
    n_lookups, n_swap, n_iter, loss = n * k, 0, 0, float(d_near.sum())
    work = np.empty_like(D)
    while n_iter < max_iter:
        n_iter += 1
        deltas = np.empty((k, n))
        for m in range(k):
            remaining = np.where(near_idx == m, d_second, d_near)    # distance to the nearest medoid other than m
            np.minimum(D, remaining[:, None], out=work)               # work[o, j]: distance of o after swap (m, j)
            deltas[m] = work.sum(axis=0) - d_near.sum()
        deltas[:, medoids] = np.inf
        n_lookups += k * (n - k) * n
        m, j = np.unravel_index(int(np.argmin(deltas)), deltas.shape)
        if deltas[m, j] >= 0:
            break
        medoids[m] = j
        n_swap += 1
        near_idx, d_near, d_second = _nearest_two(D, medoids)
        n_lookups += n * k
        if _gain_lost_to_rounding(d_near, loss):
            break
        loss = float(d_near.sum())
    return _result(D, medoids, n_iter, n_swap, n_lookups)


def pam(D: np.ndarray, k: int, max_iter: int = 100) -> MedoidResult:
    """Classic PAM: BUILD, then SWAP until no swap improves the loss; ``n_lookups`` includes both phases."""
    build = pam_build(D, k)
    swap = pam_swap(D, build.medoids, max_iter) if k >= 2 else build
    return swap._replace(n_lookups=build.n_lookups + swap.n_lookups)


def fastpam1(D: np.ndarray, medoids: np.ndarray, max_iter: int = 100, block: int = 256) -> MedoidResult:
    """FastPAM1: the same swaps as :func:`pam_swap`, each candidate evaluated for all k medoids in one O(n) pass.

    O(n^2) look-ups per iteration instead of O(k n^2); candidates are processed ``block`` at a time.
    """
    D = check_dissimilarity(D)
    medoids = _check_medoids(medoids, len(D), 2).copy()
    max_iter = check_positive_int(max_iter, "max_iter")
    block = check_positive_int(block, "block")
    n, k = len(D), len(medoids)
    near_idx, d_near, d_second = _nearest_two(D, medoids)
    n_lookups, n_swap, n_iter, loss = n * k, 0, 0, float(d_near.sum())
    while n_iter < max_iter:
        n_iter += 1
        loss_of_removal = _removal_loss(near_idx, d_near, d_second, k)
        candidates = np.setdiff1d(np.arange(n), medoids)
        best_delta, best_pair = np.inf, (0, 0)
        for start in range(0, len(candidates), block):
            chunk = candidates[start:start + block]
            deltas = _swap_deltas(D, chunk, near_idx, d_near, d_second, loss_of_removal)
            row, m = np.unravel_index(int(np.argmin(deltas)), deltas.shape)
            if deltas[row, m] < best_delta:
                best_delta, best_pair = float(deltas[row, m]), (int(m), int(chunk[row]))
        n_lookups += len(candidates) * n
        if best_delta >= 0:
            break
        medoids[best_pair[0]] = best_pair[1]
        n_swap += 1
        near_idx, d_near, d_second = _nearest_two(D, medoids)
        n_lookups += n * k
        if _gain_lost_to_rounding(d_near, loss):
            break
        loss = float(d_near.sum())
    return _result(D, medoids, n_iter, n_swap, n_lookups)


def _nearest_two_with_index(
    D: np.ndarray, medoids: np.ndarray, rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nearest and second-nearest medoid (positions and distances) of the given rows (all points by default)."""
    to_medoids = D[:, medoids] if rows is None else D[np.ix_(rows, medoids)]
    order = np.argsort(to_medoids, axis=1, kind="stable")[:, :2]
    picked = np.take_along_axis(to_medoids, order, axis=1)
    return order[:, 0], picked[:, 0], order[:, 1], picked[:, 1]


def _update_cache(
    D: np.ndarray, medoids: np.ndarray, near_idx: np.ndarray, d_near: np.ndarray, second_idx: np.ndarray,
    d_second: np.ndarray, position: int,
) -> int:
    """Update the nearest / second-nearest cache in place after ``medoids[position]`` was replaced.

    Only points that lose their nearest or second-nearest medoid without the new one taking its place are
    re-scanned over all k medoids; returns the number of distance look-ups spent.
    """
    d_new = D[:, medoids[position]]
    was_near = near_idx == position
    stays = was_near & (d_new < d_second)                 # the new medoid is still their nearest
    captured = ~was_near & (d_new < d_near)                # the new medoid beats their nearest
    rescan = (was_near & ~stays) | (~was_near & ~captured & (second_idx == position))
    improved = ~was_near & ~captured & ~rescan & (d_new < d_second)

    d_near[stays] = d_new[stays]
    second_idx[captured], d_second[captured] = near_idx[captured], d_near[captured]
    near_idx[captured], d_near[captured] = position, d_new[captured]
    second_idx[improved], d_second[improved] = position, d_new[improved]
    rows = np.flatnonzero(rescan)
    if len(rows):
        near_idx[rows], d_near[rows], second_idx[rows], d_second[rows] = _nearest_two_with_index(D, medoids, rows)
    return len(d_new) + len(rows) * len(medoids)


def fasterpam(
    D: np.ndarray, medoids: np.ndarray, max_iter: int = 100, on_swap: SwapCallback | None = None,
) -> MedoidResult:
    """FasterPAM: visit the candidates j = 0, 1, ..., n-1 cyclically and perform every improving swap at once.

    For each candidate the best medoid to replace is found in one O(n) pass (:func:`best_swap_for_candidate`).
    An iteration is one sweep over j; the search stops when it comes back to the last swap without finding
    another one, or after ``max_iter`` sweeps (a swap that does not lower the loss, a tie, ends its sweep).
    ``on_swap(n_swap, medoids, loss)`` is called after every swap.
    Candidates are evaluated a block at a time and the block is cut at its first improving candidate, which
    gives exactly the sequential order of swaps.
    """
    D = check_dissimilarity(D)
    medoids = _check_medoids(medoids, len(D), 2).copy()
    max_iter = check_positive_int(max_iter, "max_iter")
    n, k = len(D), len(medoids)
    near_idx, d_near, second_idx, d_second = _nearest_two_with_index(D, medoids)
    loss_of_removal = _removal_loss(near_idx, d_near, d_second, k)
    loss = float(d_near.sum())
    is_medoid = np.zeros(n, dtype=bool)
    is_medoid[medoids] = True
    n_lookups, n_swap, n_iter, last_swap, block = n * k, 0, 0, n, 8
    while n_iter < max_iter:
        n_iter += 1
        swaps_before, loss_before, position = n_swap, loss, 0
        while position < (n if n_swap > swaps_before else last_swap):
            end = min(position + block, n if n_swap > swaps_before else last_swap)
            chunk = np.arange(position, end)
            chunk = chunk[~is_medoid[chunk]]
            deltas = _swap_deltas(D, chunk, near_idx, d_near, d_second, loss_of_removal)
            best_m = np.argmin(deltas, axis=1) if len(chunk) else np.zeros(0, dtype=np.intp)
            improving = np.flatnonzero(deltas[np.arange(len(chunk)), best_m] < 0)
            if len(improving) == 0:
                n_lookups += len(chunk) * n
                position, block = end, min(2 * block, 512)
                continue
            first = int(improving[0])
            j, m = int(chunk[first]), int(best_m[first])
            n_lookups += (first + 1) * n
            is_medoid[medoids[m]], is_medoid[j] = False, True
            medoids[m] = j
            n_swap, last_swap, position, block = n_swap + 1, j, j + 1, max(8, block // 4)
            n_lookups += _update_cache(D, medoids, near_idx, d_near, second_idx, d_second, m)
            loss_of_removal = _removal_loss(near_idx, d_near, d_second, k)
            if on_swap is not None:
                on_swap(n_swap, medoids.copy(), float(d_near.sum()))
            if _gain_lost_to_rounding(d_near, loss):
                break
            loss = float(d_near.sum())
        if n_swap == swaps_before or loss >= loss_before:
            break
    return _result(D, medoids, n_iter, n_swap, n_lookups)


def random_init(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct point indices drawn uniformly at random: FasterPAM's cheapest start (no look-ups)."""
    n = check_positive_int(n, "n", 2)
    k = _check_k(k, n)
    return np.sort(check_generator(rng).choice(n, size=k, replace=False)).astype(np.intp)


def lab_init(D: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Linear Approximative BUILD: BUILD's greedy choice, each step made on a fresh subsample only.

    For every medoid a subsample S of 10 + ceil(sqrt(n)) non-medoids is drawn, and the point of S that lowers
    the loss of S most becomes the next medoid: O(k n) look-ups instead of BUILD's O(k n^2). When S holds all
    non-medoids (n <= 14) this is BUILD.
    """
    D = check_dissimilarity(D)
    n = len(D)
    k = _check_k(k, n)
    rng = check_generator(rng)
    sample_size = 10 + ceil(sqrt(n))
    medoids: list[int] = []
    for _ in range(k):
        pool = np.setdiff1d(np.arange(n), medoids)
        sample = rng.choice(pool, size=min(sample_size, len(pool)), replace=False)
        within = D[np.ix_(sample, sample)]                           # (o, j) over the subsample
        if medoids:
            d_near = D[np.ix_(sample, medoids)].min(axis=1)
            score = -np.maximum(d_near[:, None] - within, 0.0).sum(axis=0)
        else:
            score = within.sum(axis=0)
        medoids.append(int(sample[np.argmin(score)]))
    return np.array(medoids, dtype=np.intp)


def clara(
    D: np.ndarray, k: int, rng: np.random.Generator, n_samples: int = 5, sample_size: int | None = None,
) -> MedoidResult:
    """CLARA with FasterPAM: cluster random subsamples, keep the medoids with the lowest loss on all points.

    Every subsample of ``sample_size`` points (default 40 + 2k) contains the best medoids found so far, and
    FasterPAM on it starts from them (from random medoids for the first subsample). ``n_iter`` and ``n_swap``
    add up FasterPAM's passes and swaps over all subsamples; ``n_lookups`` also counts the evaluation of every
    subsample's medoids on all n points.
    """
    D = check_dissimilarity(D)
    n = len(D)
    k = _check_k(k, n, 2)
    rng = check_generator(rng)
    n_samples = check_positive_int(n_samples, "n_samples")
    sample_size = min(40 + 2 * k, n) if sample_size is None else check_positive_int(sample_size, "sample_size")
    if not k < sample_size <= n:
        raise ValueError(f"sample_size must be in ({k}, {n}], got {sample_size}")
    best: MedoidResult | None = None
    n_lookups = n_iter = n_swap = 0
    for _ in range(n_samples):
        keep = np.array([], dtype=np.intp) if best is None else best.medoids
        others = rng.choice(np.setdiff1d(np.arange(n), keep), size=sample_size - len(keep), replace=False)
        sample = np.concatenate([keep, others])
        start = np.arange(k) if best is not None else rng.choice(sample_size, size=k, replace=False)
        local = fasterpam(D[np.ix_(sample, sample)], start.astype(np.intp))
        candidate = _result(D, sample[local.medoids], 0, 0, 0)
        n_lookups, n_iter, n_swap = n_lookups + local.n_lookups + n * k, n_iter + local.n_iter, n_swap + local.n_swap
        if best is None or candidate.loss < best.loss:
            best = candidate
    return best._replace(n_iter=n_iter, n_swap=n_swap, n_lookups=n_lookups)
