"""Rejection sampling for synthetic fine-tuning data, vanilla and difficulty-aware (DART-Math, Tong et al. 2024).

A *sampler* is any callable ``sampler(query, rng) -> (response, correct)``: one response of the synthesis model
to the query and whether its final answer is right. Vanilla rejection tuning (VRT) draws the same number of
responses for every query and keeps the correct ones. Difficulty-aware rejection sampling (DARS) keeps drawing
for a query until it has enough correct responses or a trial cap is hit: the same number for every query
(Uniform) or a number that grows with the query's difficulty (Prop2Diff).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lib.validation import check_generator, check_positive_int

Sampler = Callable[[Any, np.random.Generator], tuple[Any, bool]]


@dataclass
class SynthesisResult:
    """What a synthesis run produced: ``data`` = [(query index, response)], and per query the number of
    responses drawn (``n_trials``), of correct responses seen (``n_correct``) and kept (``n_kept``)."""

    data: list[tuple[int, Any]]
    n_trials: np.ndarray
    n_correct: np.ndarray
    n_kept: np.ndarray


def _check_sampler(sampler: object) -> Sampler:
    if not callable(sampler):
        raise TypeError(f"sampler must be callable as sampler(query, rng) -> (response, correct), got "
                        f"{type(sampler).__name__}")
    return sampler


def vanilla_rejection_sampling(queries: Sequence[Any], sampler: Sampler, n_per_query: int,
                               rng: np.random.Generator) -> SynthesisResult:
    """VRT: draw ``n_per_query`` responses for every query and keep all the correct ones."""
    sampler = _check_sampler(sampler)
    n_per_query = check_positive_int(n_per_query, "n_per_query")
    rng = check_generator(rng)
    data, n_correct = [], np.zeros(len(queries), dtype=int)
    for index, query in enumerate(queries):
        for _ in range(n_per_query):
            response, correct = sampler(query, rng)
            if correct:
                data.append((index, response))
                n_correct[index] += 1
    return SynthesisResult(data, np.full(len(queries), n_per_query), n_correct, n_correct.copy())


def dars_finished(n_trials: int, n_correct: int, min_n_correct: int, max_trials: int) -> str | None:
    """The stopping rule of the released DART-Math sampler (``is_dp_dars_finished``): stop when a positive trial
    cap is reached (``n_trials >= max_trials``), or when a positive goal is *exceeded* (``n_correct >
    min_n_correct``); a non-positive cap or goal means "no limit". Returns the reason, or None to go on."""
    for name, value in (("n_trials", n_trials), ("n_correct", n_correct), ("min_n_correct", min_n_correct),
                        ("max_trials", max_trials)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n_trials < 0 or n_correct < 0 or n_correct > n_trials:
        raise ValueError(f"need 0 <= n_correct <= n_trials, got n_correct={n_correct}, n_trials={n_trials}")
    if max_trials > 0 and n_trials >= max_trials:
        return "max_trials"
    if min_n_correct > 0 and n_correct > min_n_correct:
        return "min_n_correct"
    return None


def dars(queries: Sequence[Any], sampler: Sampler, targets: Sequence[int], max_trials: int,
         rng: np.random.Generator) -> SynthesisResult:
    """DARS: for query i, draw responses one at a time until ``dars_finished(n_trials, n_correct, targets[i],
    max_trials)``, then keep its first ``targets[i]`` correct responses (the curation step of the release).

    With the official rule the sampler stops one correct response *past* the goal, so the cost reported in
    ``n_trials`` is that of the released pipeline; a query that hits the cap keeps what it found.
    """
    sampler = _check_sampler(sampler)
    max_trials = check_positive_int(max_trials, "max_trials")
    rng = check_generator(rng)
    targets = np.asarray(targets)
    if targets.shape != (len(queries),) or not np.issubdtype(targets.dtype, np.integer) or (targets < 1).any():
        raise ValueError(f"targets must hold one integer >= 1 per query ({len(queries)}), got {targets!r}")
    data = []
    n_trials, n_correct, n_kept = (np.zeros(len(queries), dtype=int) for _ in range(3))
    for index, query in enumerate(queries):
        goal = int(targets[index])
        while dars_finished(int(n_trials[index]), int(n_correct[index]), goal, max_trials) is None:
            response, correct = sampler(query, rng)
            n_trials[index] += 1
            if correct:
                n_correct[index] += 1
                if n_kept[index] < goal:
                    data.append((index, response))
                    n_kept[index] += 1
    return SynthesisResult(data, n_trials, n_correct, n_kept)


def estimate_fail_rate(queries: Sequence[Any], sampler: Sampler, n_pilot: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Difficulty of each query: the fraction of ``n_pilot`` responses of the synthesis model that are wrong."""
    pilot = vanilla_rejection_sampling(queries, sampler, n_pilot, rng)
    return 1.0 - pilot.n_correct / n_pilot


def dars_uniform_targets(n_queries: int, k_u: int) -> np.ndarray:
    """DARS-Uniform: the same goal of ``k_u`` correct responses for every query."""
    n_queries = check_positive_int(n_queries, "n_queries")
    k_u = check_positive_int(k_u, "k_u")
    return np.full(n_queries, k_u)


def dars_prop2diff_targets(fail_rate: Sequence[float], k_p: int) -> np.ndarray:
    """DARS-Prop2Diff: goals proportional to difficulty, ``max(1, round(k_p * f / max f))`` (round half up), so
    the hardest query gets ``k_p`` and every query at least one; all ones if no query ever failed."""
    k_p = check_positive_int(k_p, "k_p")
    fail_rate = np.asarray(fail_rate, dtype=float)
    if fail_rate.ndim != 1 or fail_rate.size == 0 or ((fail_rate < 0) | (fail_rate > 1)).any():
        raise ValueError("fail_rate must be a non-empty 1-d array of fail rates in [0, 1]")
    hardest = fail_rate.max()
    if hardest == 0:
        return np.ones(fail_rate.size, dtype=int)
    return np.maximum(1, np.floor(k_p * fail_rate / hardest + 0.5)).astype(int)
