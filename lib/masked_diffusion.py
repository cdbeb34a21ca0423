"""Masked diffusion models (MDMs) without the time variable: samplers, their exact output laws, the ELBO.

A sequence of ``L`` tokens from a vocabulary of ``V`` is generated from all-[MASK] (``MASK = -1`` here). A
*denoiser* maps a batch of partly masked sequences ``(B, L)`` to ``(B, L, V)`` probabilities of each position's
token given the unmasked ones; it never sees a time. Everything here is exact for tiny ``V ** L``, with a
first-order Markov chain standing in for a trained network (its conditionals are computed by forward-backward).

* ``mdlm_ancestral_sampler``: MDLM's sampler with the linear schedule: going from ``t = k/N`` to ``s = (k-1)/N``
  each masked position is revealed with probability ``(t - s)/t`` and drawn from the denoiser.
* ``first_hitting_sampler``: reveal exactly one uniformly chosen masked position per denoiser call, at the
  time the continuous-time process would first reveal one (``L`` calls in all).
* ``sampler_output_distribution``: the exact law of either sampler's output.
* ``mdm_elbo_time`` / ``mdm_elbo_count``: the continuous-time ELBO and its time-free form.
* ``mdlm_token_distribution``: the token law an MDLM sampler with Gumbel-max in finite precision produces from
  a context-free model, followed over thousands of steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from math import comb, factorial

import numpy as np
from scipy.special import roots_legendre

from lib.categorical_sampling import _check_bits, _check_weights, unmasking_race_probs
from lib.validation import check_generator, check_positive_int

__all__ = [
    "MASK",
    "SamplerRun",
    "all_sequences",
    "markov_chain_joint",
    "markov_conditionals",
    "markov_denoiser",
    "first_hitting_sampler",
    "mdlm_ancestral_sampler",
    "sampler_output_distribution",
    "mdm_elbo_time",
    "mdm_elbo_count",
    "mdlm_token_distribution",
]

MASK = -1
Denoiser = Callable[[np.ndarray], np.ndarray]




def _check_chain(initial: object, transition: object) -> tuple[np.ndarray, np.ndarray]:
    initial = np.asarray(initial, dtype=float)
    transition = np.asarray(transition, dtype=float)
    if initial.ndim != 1 or transition.shape != (initial.size, initial.size):
        raise ValueError(f"initial must be (V,) and transition (V, V), got {initial.shape} and {transition.shape}")
    stochastic = np.allclose(initial.sum(), 1) and np.allclose(transition.sum(axis=1), 1)
    if np.any(initial < 0) or np.any(transition < 0) or not stochastic:
        raise ValueError("initial and every row of transition must be probability vectors")
    return initial, transition


def all_sequences(vocab_size: int, length: int) -> np.ndarray:
    """Every sequence in lexicographic order, shape ``(vocab_size ** length, length)``."""
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    length = check_positive_int(length, "length")
    return np.array(list(itertools.product(range(vocab_size), repeat=length)), dtype=np.int64)


def markov_chain_joint(initial: np.ndarray, transition: np.ndarray, length: int) -> np.ndarray:
    """Probabilities of all sequences of a first-order Markov chain, in the order of ``all_sequences``."""
    initial, transition = _check_chain(initial, transition)
    seqs = all_sequences(initial.size, length)
    probs = initial[seqs[:, 0]].copy()
    for i in range(1, seqs.shape[1]):
        probs *= transition[seqs[:, i - 1], seqs[:, i]]
    return probs


def markov_conditionals(x: np.ndarray, initial: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """``p(x_i = v | unmasked positions of x)`` for every position of every row of ``x`` (forward-backward).

    ``x``: int array ``(B, L)`` with ``MASK`` at masked positions. Returns ``(B, L, V)``; an unmasked position
    gets the one-hot of its token.
    """
    initial, transition = _check_chain(initial, transition)
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"x must be a 2-D int array, got shape {x.shape} and dtype {x.dtype}")
    vocab = initial.size
    if np.any((x != MASK) & ((x < 0) | (x >= vocab))):
        raise ValueError(f"tokens in x must be in [0, {vocab}) or MASK ({MASK})")
    batch, length = x.shape
    evidence = np.where((x == MASK)[..., None], 1.0, np.eye(vocab)[np.clip(x, 0, None)])
    forward = np.empty((batch, length, vocab))
    backward = np.ones((batch, length, vocab))
    with np.errstate(invalid="ignore", divide="ignore"):  # a zero-probability x shows up as NaN, checked below
        message = initial * evidence[:, 0]
        forward[:, 0] = message / message.sum(axis=1, keepdims=True)
        for i in range(1, length):
            message = (forward[:, i - 1] @ transition) * evidence[:, i]
            forward[:, i] = message / message.sum(axis=1, keepdims=True)
        for i in range(length - 2, -1, -1):
            message = (evidence[:, i + 1] * backward[:, i + 1]) @ transition.T
            backward[:, i] = message / message.sum(axis=1, keepdims=True)
        posterior = forward * backward
        posterior /= posterior.sum(axis=2, keepdims=True)
    if not np.all(np.isfinite(posterior)):
        raise ValueError("x has probability zero under the chain")
    return posterior


def markov_denoiser(initial: np.ndarray, transition: np.ndarray) -> Denoiser:
    """The exact denoiser of a Markov chain: ``x -> markov_conditionals(x, initial, transition)``."""
    initial, transition = _check_chain(initial, transition)
    return lambda x: markov_conditionals(x, initial, transition)


@dataclass(frozen=True)
class SamplerRun:
    """Samples ``(B, L)``, denoiser calls per sequence, categorical draws per sequence, and (first-hitting
    sampler only) the time at which each position was revealed, ``(B, L)``."""

    samples: np.ndarray
    calls_per_sequence: float
    draws_per_sequence: float
    reveal_times: np.ndarray | None = None


def _draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One exact categorical draw per row of ``probs`` (inverse CDF in float64)."""
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[:-1]) * cdf[..., -1]
    return np.minimum((cdf < u[..., None]).sum(axis=-1), probs.shape[-1] - 1)


def first_hitting_sampler(denoise_fn: Denoiser, length: int, n_samples: int, rng: np.random.Generator) -> SamplerRun:
    """The first-hitting sampler for the linear schedule: with ``n`` masked tokens at time ``t`` the next
    reveal happens at ``t * u**(1/n)`` (the first of ``n`` uniform reveal times below ``t``); one masked position,
    chosen uniformly, is revealed with a token drawn from the denoiser. The denoiser never sees the time."""
    length = check_positive_int(length, "length")
    n_samples = check_positive_int(n_samples, "n_samples")
    rng = check_generator(rng)
    x = np.full((n_samples, length), MASK, dtype=np.int64)
    reveal_times = np.zeros((n_samples, length))
    t = np.ones(n_samples)
    rows = np.arange(n_samples)
    for n_masked in range(length, 0, -1):
        t = t * rng.random(n_samples) ** (1.0 / n_masked)
        masked = x == MASK
        rank = rng.integers(0, n_masked, size=n_samples)  # which masked position, uniformly
        position = np.argmax(np.cumsum(masked, axis=1) > rank[:, None], axis=1)
        probs = denoise_fn(x)[rows, position]
        x[rows, position] = _draw(probs, rng)
        reveal_times[rows, position] = t
    return SamplerRun(x, float(length), float(length), reveal_times)


def mdlm_ancestral_sampler(
    denoise_fn: Denoiser, length: int, n_steps: int, n_samples: int, rng: np.random.Generator, *, cache: bool = True
) -> SamplerRun:
    """MDLM's ancestral sampler with ``n_steps`` steps of the linear schedule. Every masked position is
    revealed with probability ``(t - s)/t`` and, if so, drawn from the denoiser, all positions of a step
    independently. With ``cache`` the denoiser is re-evaluated only for sequences that changed."""
    length = check_positive_int(length, "length")
    n_steps = check_positive_int(n_steps, "n_steps")
    n_samples = check_positive_int(n_samples, "n_samples")
    rng = check_generator(rng)
    x = np.full((n_samples, length), MASK, dtype=np.int64)
    stale = np.ones(n_samples, dtype=bool)
    probs = None
    rows_evaluated = 0
    draws = 0
    for k in range(n_steps, 0, -1):
        if probs is None or not cache:
            probs = denoise_fn(x)
            rows_evaluated += n_samples
        elif stale.any():
            probs[stale] = denoise_fn(x[stale])
            rows_evaluated += int(stale.sum())
        masked = x == MASK
        draws += int(masked.sum())
        reveal = masked & (rng.random(x.shape) < 1.0 / k)  # (t - s) / t with t = k/N, s = (k-1)/N
        tokens = _draw(probs, rng)
        x = np.where(reveal, tokens, x)
        stale = reveal.any(axis=1)
    return SamplerRun(x, rows_evaluated / n_samples, draws / n_samples)


def _ordered_partitions(items: tuple[int, ...]) -> Iterator[list[tuple[int, ...]]]:
    """Every ordered set partition of ``items`` (sequences of disjoint non-empty blocks covering them)."""
    if not items:
        yield []
        return
    for size in range(1, len(items) + 1):
        for block in itertools.combinations(items, size):
            rest = tuple(i for i in items if i not in block)
            for tail in _ordered_partitions(rest):
                yield [block, *tail]


def sampler_output_distribution(joint: np.ndarray, vocab_size: int, length: int, n_steps: int | None) -> np.ndarray:
    """Exact law of the sequences an MDM sampler produces when its denoiser is the exact conditional of ``joint``.

    Under the linear schedule each position is revealed at an independent, uniform step among ``n_steps``, so
    the sampler reveals an ordered partition of the positions into blocks, with probability
    ``comb(n_steps, blocks) / n_steps**length``, drawing each block's tokens independently given what came
    before. ``n_steps=None`` is the first-hitting sampler (blocks of one, every order equally likely).
    """
    vocab_size = check_positive_int(vocab_size, "vocab_size")
    length = check_positive_int(length, "length")
    joint = np.asarray(joint, dtype=float)
    if joint.shape != (vocab_size**length,) or np.any(joint < 0) or not np.isclose(joint.sum(), 1):
        raise ValueError(f"joint must be a probability vector of length vocab_size ** length = {vocab_size**length}")
    if n_steps is not None:
        n_steps = check_positive_int(n_steps, "n_steps")
    table = joint.reshape((vocab_size,) * length)
    marginals: dict[frozenset[int], np.ndarray] = {}

    def marginal(subset: frozenset[int]) -> np.ndarray:
        """``p(x_subset)`` evaluated at every full sequence."""
        if subset not in marginals:
            summed = table.sum(axis=tuple(i for i in range(length) if i not in subset), keepdims=True)
            marginals[subset] = np.broadcast_to(summed, table.shape).ravel()
        return marginals[subset]

    def conditional(new: tuple[int, ...], known: frozenset[int]) -> np.ndarray:
        """Product over ``new`` of ``p(x_i | x_known)``: the block is drawn independently."""
        out = np.ones_like(joint)
        below = marginal(known)
        for i in new:
            above = marginal(known | {i})
            out *= np.divide(above, below, out=np.zeros_like(joint), where=below > 0)
        return out

    result = np.zeros_like(joint)
    for blocks in _ordered_partitions(tuple(range(length))):
        if n_steps is None:
            if len(blocks) < length:
                continue
            weight = 1.0 / factorial(length)
        else:
            weight = comb(n_steps, len(blocks)) / n_steps**length
            if weight == 0:
                continue
        law = np.ones_like(joint)
        known: frozenset[int] = frozenset()
        for block in blocks:
            law *= conditional(block, known)
            known = known | set(block)
        result += weight * law
    return result


def _check_sequence(x: object) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or x.size < 1 or not np.issubdtype(x.dtype, np.integer) or np.any(x < 0):
        raise ValueError("x must be a non-empty 1-D array of token ids (no MASK)")
    return x


def _masked_losses(denoise_fn: Denoiser, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every non-empty mask set M: its size, and sum over i in M of -log p(x_i | x with M masked)."""
    length = x.size
    masks = np.array(list(itertools.product([False, True], repeat=length)))[1:]
    inputs = np.where(masks, MASK, x[None, :])
    probs = denoise_fn(inputs)[:, np.arange(length), x]
    with np.errstate(divide="ignore"):
        losses = np.where(masks, -np.log(probs), 0.0).sum(axis=1)
    return masks.sum(axis=1), losses


def mdm_elbo_count(denoise_fn: Denoiser, x: np.ndarray) -> float:
    """The time-free ELBO (negative, in nats): ``sum_k (1/k) E_{|M| = k}[sum_{i in M} -log p(x_i | x_M)]``,
    with ``M`` uniform among the masks of size ``k`` (exhaustive enumeration: for small ``L``)."""
    x = _check_sequence(x)
    sizes, losses = _masked_losses(denoise_fn, x)
    weights = np.array([1.0 / (k * comb(x.size, k)) for k in sizes])
    return float(weights @ losses)


def mdm_elbo_time(denoise_fn: Denoiser, x: np.ndarray, *, n_nodes: int = 32) -> float:
    """The continuous-time ELBO (negative, in nats) of MDLM's linear schedule,
    ``int_0^1 (1/t) E_{M ~ Bernoulli(t)^L}[sum_{i in M} -log p(x_i | x_M)] dt``, with the expectation over
    masks enumerated exactly and the time integral by ``n_nodes``-point Gauss-Legendre quadrature."""
    x = _check_sequence(x)
    n_nodes = check_positive_int(n_nodes, "n_nodes")
    sizes, losses = _masked_losses(denoise_fn, x)
    nodes, weights = roots_legendre(n_nodes)
    t = (nodes + 1) / 2
    mask_probs = t[:, None] ** sizes[None, :] * (1 - t[:, None]) ** (x.size - sizes[None, :])
    integrand = (mask_probs @ losses) / t
    return float(integrand @ weights / 2)


def _step_grid(max_steps: int, n_evaluated: int | None) -> np.ndarray:
    """Steps at which the per-step race is evaluated: every step up to 32, then log-spaced."""
    if n_evaluated is None or n_evaluated >= max_steps:
        return np.arange(1, max_steps + 1)
    dense = np.arange(1, 33)
    spaced = np.round(np.geomspace(32, max_steps, max(2, n_evaluated - 32))).astype(int)
    return np.unique(np.concatenate([dense, spaced]))


def mdlm_token_distribution(
    p: np.ndarray,
    n_steps: Sequence[int],
    *,
    bits: int | None = 24,
    eps: float = 1e-10,
    n_evaluated_steps: int | None = 80,
) -> np.ndarray:
    """Law of the token an MDLM sampler generates at one position when the model's prediction is always ``p``
    (a context-free model) and every categorical draw is Gumbel-max with ``bits``-bit uniforms.

    At step ``k`` (time ``k/N`` to ``(k-1)/N``) a masked position races tokens ``p`` against [MASK] with weight
    ``k - 1``; the generated token is the winner of the first race a token wins. Since the race at step ``k``
    does not depend on ``N``, one pass gives every ``N`` in ``n_steps``. The race is evaluated at
    ``n_evaluated_steps`` steps (``None``: all) and interpolated in ``log k`` between them.
    ``bits=None`` is exact sampling (the answer is ``p``). Returns ``(len(n_steps), V)``.
    """
    p = _check_weights(p, "p")
    p = p / p.sum()
    steps = [check_positive_int(n, "n_steps entries") for n in np.atleast_1d(n_steps).tolist()]
    if bits is not None:
        bits = _check_bits(bits)
    if n_evaluated_steps is not None:
        n_evaluated_steps = check_positive_int(n_evaluated_steps, "n_evaluated_steps")
    max_steps = max(steps)
    grid = _step_grid(max_steps, n_evaluated_steps)
    if bits is None:
        ratio = np.ones((grid.size, p.size))
    else:
        probs = unmasking_race_probs(p, grid - 1.0, bits=bits, eps=eps)
        ratio = np.divide(probs * grid[:, None], p, out=np.zeros_like(probs), where=p > 0)
        if grid[0] == 1:  # with no [MASK] left a token always wins: normalise away quadrature error
            ratio[0] /= ratio[0] @ p
    # linear interpolation in log k: step k's ratio = weights[k - 1] @ ratio
    k = np.arange(1, max_steps + 1)
    upper = np.clip(np.searchsorted(grid, k), 1, grid.size - 1)
    lower = upper - 1
    frac = np.clip((np.log(k) - np.log(grid[lower])) / (np.log(grid[upper]) - np.log(grid[lower])), 0, 1)
    weights = np.zeros((max_steps, grid.size))
    weights[k - 1, lower] = 1 - frac
    weights[k - 1, upper] += frac
    unmask = np.clip(weights @ (ratio @ p) / k, 0, 1)  # P(a token wins the race at step k)
    out = np.empty((len(steps), p.size))
    for row, n in enumerate(steps):
        with np.errstate(divide="ignore"):
            log_stay = np.log1p(-unmask[:n])
        later = np.concatenate([np.cumsum(log_stay[::-1])[::-1][1:], [0.0]])  # sum over steps k+1..n
        out[row] = p * (((np.exp(later) / k[:n]) @ weights[:n]) @ ratio)
    return out
