"""Tests for lib.masked_diffusion: Markov-chain denoiser, first-hitting and MDLM samplers, their exact output
laws, the two forms of the ELBO, and the float32 token law of MDLM sampling.

Oracles: brute-force enumeration of the chain's joint, direct enumeration of every reveal-step assignment,
the chain rule (the ELBO of the exact model is -log p(x)), chi-square tests of the samplers, and
``race_probs`` (the general race) for the per-step races of the token law.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kstest

from lib.categorical_sampling import entropy, race_probs
from lib.masked_diffusion import (
    MASK,
    all_sequences,
    first_hitting_sampler,
    markov_chain_joint,
    markov_conditionals,
    markov_denoiser,
    mdlm_ancestral_sampler,
    mdlm_token_distribution,
    mdm_elbo_count,
    mdm_elbo_time,
    sampler_output_distribution,
)
from lib.stats import pooled_chisquare_pvalue

INITIAL = np.array([0.5, 0.3, 0.2])
TRANSITION = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]])
V, L = 3, 4


def zipf(size: int) -> np.ndarray:
    p = 1.0 / np.arange(1, size + 1)
    return p / p.sum()


def brute_force_conditional(x: np.ndarray, joint: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    consistent = np.all((x == MASK) | (seqs == x), axis=1)
    weights = joint * consistent
    out = np.zeros((x.size, V))
    for i in range(x.size):
        out[i] = np.bincount(seqs[:, i], weights=weights, minlength=V)
    return out / out.sum(axis=1, keepdims=True)


def sequence_index(samples: np.ndarray) -> np.ndarray:
    return samples @ (V ** np.arange(samples.shape[1] - 1, -1, -1))



# --- the chain ---------------------------------------------------------------------------------------------------


def test_all_sequences_and_joint():
    seqs = all_sequences(V, L)
    assert seqs.shape == (V**L, L) and np.array_equal(seqs[1], [0, 0, 0, 1])
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    assert joint.sum() == pytest.approx(1)
    x = [2, 0, 0, 1]
    assert joint[sequence_index(np.array([x]))[0]] == pytest.approx(0.2 * 0.25 * 0.7 * 0.2)


@given(st.lists(st.integers(MASK, V - 1), min_size=L, max_size=L))
@settings(max_examples=60, deadline=None)
def test_markov_conditionals_match_brute_force_enumeration(x):
    x = np.array(x)
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    got = markov_conditionals(x[None, :], INITIAL, TRANSITION)[0]
    assert np.allclose(got, brute_force_conditional(x, joint, all_sequences(V, L)), atol=1e-12)


@pytest.mark.parametrize(
    ("x", "initial", "transition", "error"),
    [
        (np.array([[0, 3, MASK, MASK]]), INITIAL, TRANSITION, ValueError),
        (np.array([0, 1, MASK, MASK]), INITIAL, TRANSITION, ValueError),
        (np.array([[0.0, 1.0, 1.0, 1.0]]), INITIAL, TRANSITION, ValueError),
        (np.array([[0, 1, 1, 1]]), INITIAL[:2], TRANSITION, ValueError),
        (np.array([[0, 1, 1, 1]]), INITIAL, TRANSITION * 2, ValueError),
        (np.array([[1, 0, MASK, MASK]]), INITIAL, np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]), ValueError),
    ],
)
def test_markov_conditionals_reject_bad_input(x, initial, transition, error):
    with pytest.raises(error):
        markov_conditionals(x, initial, transition)


# --- samplers and their exact laws -------------------------------------------------------------------------------


def reveal_assignment_law(joint: np.ndarray, n_steps: int) -> np.ndarray:
    """Independent oracle: average over every assignment of reveal steps (uniform in 1..N per position) of the
    law of revealing, step by step from N down to 1, the positions due, each drawn given the earlier ones."""
    seqs = all_sequences(V, L)
    table = joint.reshape((V,) * L)

    def marginal(known):
        summed = table.sum(axis=tuple(i for i in range(L) if i not in known), keepdims=True)
        return np.broadcast_to(summed, table.shape).ravel()

    total = np.zeros_like(joint)
    for steps in itertools.product(range(1, n_steps + 1), repeat=L):
        law = np.ones_like(joint)
        known: set[int] = set()
        for step in range(n_steps, 0, -1):
            due = [i for i in range(L) if steps[i] == step]
            below = marginal(known)
            for i in due:
                law *= marginal(known | {i}) / below
            known |= set(due)
        total += law
    assert seqs.shape[0] == joint.size
    return total / n_steps**L


@pytest.mark.parametrize("n_steps", [1, 2, 3])
def test_sampler_output_distribution_matches_enumeration_of_reveal_steps(n_steps):
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    assert np.allclose(sampler_output_distribution(joint, V, L, n_steps), reveal_assignment_law(joint, n_steps))


def test_first_hitting_law_is_the_joint_and_one_step_law_is_the_product_of_marginals():
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    assert np.allclose(sampler_output_distribution(joint, V, L, None), joint, atol=1e-15)
    seqs = all_sequences(V, L)
    marginals = [np.bincount(seqs[:, i], weights=joint, minlength=V) for i in range(L)]
    product = np.prod([marginals[i][seqs[:, i]] for i in range(L)], axis=0)
    assert np.allclose(sampler_output_distribution(joint, V, L, 1), product)


def test_mdlm_law_approaches_the_joint_as_steps_grow():
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    tvs = [0.5 * np.abs(sampler_output_distribution(joint, V, L, n) - joint).sum() for n in (1, 4, 16, 256)]
    assert all(a > b for a, b in zip(tvs, tvs[1:], strict=False)) and tvs[-1] < 0.01 < tvs[0]


def test_sampler_output_distribution_rejects_bad_input():
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    with pytest.raises(ValueError):
        sampler_output_distribution(joint[:-1], V, L, 4)
    with pytest.raises(ValueError):
        sampler_output_distribution(joint, V, L, 0)


def test_first_hitting_sampler_samples_the_joint_with_exactly_l_calls():
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    calls = []

    def counting_denoiser(x):
        calls.append(x.shape[0])
        return markov_conditionals(x, INITIAL, TRANSITION)

    run = first_hitting_sampler(counting_denoiser, L, 20_000, np.random.default_rng(0))
    assert len(calls) == L and run.calls_per_sequence == L and run.draws_per_sequence == L
    assert np.all(run.samples != MASK)
    counts = np.bincount(sequence_index(run.samples), minlength=V**L)
    assert pooled_chisquare_pvalue(counts, joint) > 1e-3
    times = np.sort(run.reveal_times, axis=1)[:, ::-1]
    assert np.all((times > 0) & (times < 1))
    assert kstest(times[:, 0], lambda t: t**L).pvalue > 1e-3  # the first reveal: the largest of L uniforms
    assert kstest(times[:, -1], lambda t: 1 - (1 - t) ** L).pvalue > 1e-3  # the last: the smallest


@pytest.mark.parametrize("cache", [True, False])
def test_mdlm_sampler_matches_its_exact_law(cache):
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    run = mdlm_ancestral_sampler(markov_denoiser(INITIAL, TRANSITION), L, 3, 20_000, np.random.default_rng(1),
                                 cache=cache)
    counts = np.bincount(sequence_index(run.samples), minlength=V**L)
    assert pooled_chisquare_pvalue(counts, sampler_output_distribution(joint, V, L, 3)) > 1e-3
    assert pooled_chisquare_pvalue(counts, joint) < 1e-3  # three steps are visibly not exact
    if cache:
        assert 1 <= run.calls_per_sequence < 3
    else:
        assert run.calls_per_sequence == 3
    assert 0 < run.draws_per_sequence <= 3 * L


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda d, rng: first_hitting_sampler(d, 0, 10, rng), ValueError),
        (lambda d, rng: first_hitting_sampler(d, L, 10, 0), TypeError),
        (lambda d, rng: mdlm_ancestral_sampler(d, L, 0, 10, rng), ValueError),
        (lambda d, rng: mdlm_ancestral_sampler(d, L, 2.5, 10, rng), TypeError),
    ],
)
def test_samplers_reject_bad_input(call, error):
    with pytest.raises(error):
        call(markov_denoiser(INITIAL, TRANSITION), np.random.default_rng(0))


# --- the ELBO -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x", [[0, 0, 1, 2], [2, 2, 2, 2], [1, 0, 2, 1]])
def test_elbo_of_the_exact_denoiser_is_the_negative_log_likelihood(x):
    joint = markov_chain_joint(INITIAL, TRANSITION, L)
    nll = -np.log(joint[sequence_index(np.array([x]))[0]])
    denoiser = markov_denoiser(INITIAL, TRANSITION)
    assert mdm_elbo_count(denoiser, np.array(x)) == pytest.approx(nll, rel=1e-12)
    assert mdm_elbo_time(denoiser, np.array(x)) == pytest.approx(nll, rel=1e-12)


def test_time_and_count_forms_agree_for_an_imperfect_denoiser():
    wrong = markov_denoiser(np.ones(V) / V, 0.5 * TRANSITION + 0.5 / V)
    x = np.array([0, 2, 1, 1, 0, 2])
    count = mdm_elbo_count(wrong, x)
    assert mdm_elbo_time(wrong, x) == pytest.approx(count, rel=1e-12)
    assert mdm_elbo_time(wrong, x, n_nodes=2) != pytest.approx(count, rel=1e-6)  # too few nodes for degree L-1


def test_elbo_rejects_bad_sequences():
    denoiser = markov_denoiser(INITIAL, TRANSITION)
    with pytest.raises(ValueError):
        mdm_elbo_count(denoiser, np.array([0, MASK, 1]))
    with pytest.raises(ValueError):
        mdm_elbo_time(denoiser, np.array([[0, 1]]))
    with pytest.raises(ValueError):
        mdm_elbo_time(denoiser, np.array([0, 1]), n_nodes=0)


# --- the token law of MDLM sampling in finite precision -----------------------------------------------------------


def test_token_law_is_exact_without_rounding_and_in_float64():
    p = zipf(2000)
    assert np.allclose(mdlm_token_distribution(p, [1, 7, 300], bits=None), p, atol=1e-15)
    assert np.allclose(mdlm_token_distribution(p, [1, 64, 1024], bits=53), p, rtol=1e-9, atol=0)


def test_token_law_for_one_and_two_steps_matches_the_general_race():
    p = zipf(300)
    one, two = mdlm_token_distribution(p, [1, 2], bits=24)
    assert np.allclose(one, race_probs(p, "grid"), rtol=1e-4)
    step_two = race_probs(np.append(p, 1.0), "grid")  # step 2 of 2: tokens p against [MASK] of weight 1
    expected = step_two[:-1] + step_two[-1] * race_probs(p, "grid")
    assert np.allclose(two, expected / expected.sum(), rtol=1e-4)


def test_token_law_interpolation_in_steps_agrees_with_every_step():
    p = zipf(500)
    every = mdlm_token_distribution(p, [64, 600], bits=24, n_evaluated_steps=None)
    interpolated = mdlm_token_distribution(p, [64, 600], bits=24, n_evaluated_steps=60)
    assert np.abs(every - interpolated).max() < 5e-6


def test_token_law_loses_entropy_monotonically_with_steps_in_float32():
    p = zipf(4096)
    laws = mdlm_token_distribution(p, [16, 64, 256, 1024], bits=24)
    assert np.allclose(laws.sum(axis=1), 1)
    drops = [entropy(p) - entropy(law) for law in laws]
    assert all(0 < a < b for a, b in zip(drops, drops[1:], strict=False))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_steps": [0]}, ValueError),
        ({"n_steps": [2.5]}, TypeError),
        ({"bits": 0}, ValueError),
        ({"p": np.array([-1.0, 2.0])}, ValueError),
        ({"n_evaluated_steps": 0}, ValueError),
    ],
)
def test_token_law_rejects_bad_input(kwargs, error):
    args = {"p": np.ones(5), "n_steps": [4]} | kwargs
    with pytest.raises(error):
        mdlm_token_distribution(args.pop("p"), args.pop("n_steps"), **args)
