"""Adversarial bandits that choose among K actions (e.g. SOR omegas) from cost feedback alone.

The learners run against a cost table ``costs[r, t, k]``: the cost action ``k`` would incur in round ``t`` of
run ``r``. Only the entry of the action actually played is read (bandit feedback), so the table is a handy
way to replay one sequence against several learners and comparators. Runs ``r`` are independent and simulated
side by side with vectorised numpy.

Both learners are scale free: importance-weighted cost estimates are divided by the running mean of the costs
seen, so that one unit of normalised cost is "a typical round".
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "tsallis_inf_probabilities",
    "tsallis_inf",
    "binned_tsallis_inf",
    "context_bins",
    "exp3",
]


def _check_costs(costs: np.ndarray) -> np.ndarray:
    costs = np.asarray(costs, dtype=float)
    if costs.ndim != 3 or min(costs.shape) == 0:
        raise ValueError(f"costs must be a non-empty (runs, rounds, actions) array, got shape {costs.shape}")
    if not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise ValueError("costs must be finite and non-negative")
    return costs


def _check_rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, bool) or not isinstance(rng, np.random.Generator | int | np.integer):
        raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")
    return np.random.default_rng(rng)


def _sample(probabilities: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling of one action per row."""
    cumulative = np.cumsum(probabilities, axis=-1)
    return np.minimum(
        (cumulative < uniforms[:, None] * cumulative[:, -1:]).sum(axis=-1), probabilities.shape[-1] - 1
    )


def tsallis_inf_probabilities(
    loss_estimates: np.ndarray, eta: float | np.ndarray, tol: float = 1e-12
) -> np.ndarray:
    """Action probabilities of 1/2-Tsallis-INF (Zimmert & Seldin).

    ``p_i = 4 / (eta (L_i - x))**2`` with the normaliser ``x < min_i L_i`` chosen so that ``sum_i p_i = 1``;
    this is the minimiser of ``<p, L> - (4 / eta) sum_i sqrt(p_i)`` over the simplex. ``x`` is found by
    Newton's method started at ``min L - 2 / eta``, where the sum is >= 1; the sum is convex and increasing in
    ``x``, so the iterates decrease monotonically to the root.

    Parameters
    ----------
    loss_estimates : (..., K) cumulative loss estimates ``L``.
    eta : learning rate(s) > 0, broadcastable to ``loss_estimates.shape[:-1]``.
    """
    losses = np.asarray(loss_estimates, dtype=float)
    if losses.ndim == 0 or losses.shape[-1] == 0 or not np.all(np.isfinite(losses)):
        raise ValueError("loss_estimates must be a finite array with a non-empty last axis")
    eta = np.broadcast_to(np.asarray(eta, dtype=float), losses.shape[:-1])[..., None]
    if np.any(eta <= 0) or not np.all(np.isfinite(eta)):
        raise ValueError("eta must be positive and finite")
    x = losses.min(axis=-1, keepdims=True) - 2.0 / eta
    for _ in range(100):
        probabilities = 4.0 / (eta * (losses - x)) ** 2
        excess = probabilities.sum(axis=-1, keepdims=True) - 1.0
        if np.all(np.abs(excess) < tol):
            break
        x -= excess / (eta * (probabilities**1.5).sum(axis=-1, keepdims=True))
    return probabilities / probabilities.sum(axis=-1, keepdims=True)


def context_bins(contexts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each context: bin ``j`` holds ``edges[j-1] <= context < edges[j]`` (``len(edges) + 1`` bins).

    ``edges`` are the increasing interior boundaries, e.g. ``np.linspace(low, high, n + 1)[1:-1]`` for ``n``
    equal-width bins or quantiles of the context distribution for equal-mass bins.
    """
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
        raise ValueError("edges must be a 1-D, finite, strictly increasing array (it may be empty: one bin)")
    return np.searchsorted(edges, np.asarray(contexts, dtype=float), side="right").astype(np.int64)


def binned_tsallis_inf(
    costs: np.ndarray, bins: np.ndarray, rng: np.random.Generator | int
) -> tuple[np.ndarray, np.ndarray]:
    """Contextual bandit: an independent 1/2-Tsallis-INF learner per context bin.

    In round ``t`` run ``r`` consults (and then updates) only the learner of bin ``bins[r, t]``. That learner,
    on its ``s``-th visit, uses ``eta_s = 2 / sqrt(s)``, samples an action ``k`` from
    :func:`tsallis_inf_probabilities` of its normalised loss estimates, and adds the importance-weighted cost
    ``cost / p_k`` to the estimate of ``k``.

    Parameters
    ----------
    costs : (R, T, K) cost table; only the played entries are read.
    bins : (R, T) non-negative int bin of each round (e.g. from :func:`context_bins`).
    rng : numpy Generator or int seed.

    Returns
    -------
    actions : (R, T) int, the action played each round.
    paid : (R, T) float, the cost incurred each round.
    """
    costs = _check_costs(costs)
    bins = np.asarray(bins)
    if bins.shape != costs.shape[:2] or not np.issubdtype(bins.dtype, np.integer) or np.any(bins < 0):
        raise ValueError(f"bins must be a non-negative int array of shape {costs.shape[:2]}")
    uniforms = _check_rng(rng).random(costs.shape[:2])
    n_runs, n_rounds, n_actions = costs.shape
    n_bins = int(bins.max()) + 1
    loss_estimates = np.zeros((n_runs, n_bins, n_actions))
    visits = np.zeros((n_runs, n_bins))
    cost_sums = np.zeros((n_runs, n_bins))
    runs = np.arange(n_runs)
    actions = np.zeros((n_runs, n_rounds), dtype=np.int64)
    paid = np.zeros((n_runs, n_rounds))
    for t in range(n_rounds):
        current = bins[:, t]
        seen = visits[runs, current]
        scale = np.where(seen > 0, cost_sums[runs, current] / np.maximum(seen, 1), 1.0)
        scale = np.where(scale > 0, scale, 1.0)
        probabilities = tsallis_inf_probabilities(
            loss_estimates[runs, current] / scale[:, None], 2.0 / np.sqrt(seen + 1.0)
        )
        action = _sample(probabilities, uniforms[:, t])
        cost = costs[runs, t, action]
        loss_estimates[runs, current, action] += cost / probabilities[runs, action]
        visits[runs, current] += 1.0
        cost_sums[runs, current] += cost
        actions[:, t], paid[:, t] = action, cost
    return actions, paid


def tsallis_inf(costs: np.ndarray, rng: np.random.Generator | int) -> tuple[np.ndarray, np.ndarray]:
    """1/2-Tsallis-INF with ``eta_t = 2 / sqrt(t)`` on a (R, T, K) cost table; returns ``(actions, paid)``.

    The non-contextual special case of :func:`binned_tsallis_inf` (a single bin).
    """
    costs = _check_costs(costs)
    return binned_tsallis_inf(costs, np.zeros(costs.shape[:2], dtype=np.int64), rng)


def exp3(costs: np.ndarray, rng: np.random.Generator | int) -> tuple[np.ndarray, np.ndarray]:
    """Exp3 (exponential weights on importance-weighted costs) with ``eta_t = sqrt(ln K / (K t))``.

    ``p_k`` is proportional to ``exp(-eta_t L_k / scale)`` with the same normalised estimates as
    :func:`tsallis_inf`; returns ``(actions, paid)`` for a (R, T, K) cost table.
    """
    costs = _check_costs(costs)
    uniforms = _check_rng(rng).random(costs.shape[:2])
    n_runs, n_rounds, n_actions = costs.shape
    loss_estimates = np.zeros((n_runs, n_actions))
    cost_sum = np.zeros(n_runs)
    runs = np.arange(n_runs)
    actions = np.zeros((n_runs, n_rounds), dtype=np.int64)
    paid = np.zeros((n_runs, n_rounds))
    for t in range(n_rounds):
        scale = cost_sum / t if t > 0 else np.ones(n_runs)
        scale = np.where(scale > 0, scale, 1.0)
        eta = np.sqrt(np.log(n_actions) / (n_actions * (t + 1)))
        logits = -eta * loss_estimates / scale[:, None]
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = weights / weights.sum(axis=1, keepdims=True)
        action = _sample(probabilities, uniforms[:, t])
        cost = costs[runs, t, action]
        loss_estimates[runs, action] += cost / probabilities[runs, action]
        cost_sum += cost
        actions[:, t], paid[:, t] = action, cost
    return actions, paid
