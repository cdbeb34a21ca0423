"""Tests for lib.categorical_sampling: Gumbel-max sampling in finite precision and its exact win probabilities.

Oracles: exact enumeration of every grid value of the noise (tiny grids), brute-force sampling (chi-square),
real float32 ``torch.rand`` (stratified), closed forms for two-way races, scipy/torch references.
"""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy

from lib.categorical_sampling import (
    effective_temperature,
    entropy,
    gumbel_argmax,
    noise_dtype,
    race_probs,
    temperature_scaled,
    unmasking_race_probs,
)
from lib.stats import pooled_chisquare_pvalue

EPS = 1e-10


def zipf(size: int) -> np.ndarray:
    p = 1.0 / np.arange(1, size + 1)
    return p / p.sum()


def grid_energies(bits: int) -> np.ndarray:
    """Every value of eps - log(u + eps) over the 2**-bits grid, in the arithmetic of that grid, sorted."""
    dtype = np.float32 if bits <= 24 else np.float64
    u = (np.arange(2**bits) * 2.0**-bits).astype(dtype)
    return np.sort((dtype(EPS) - np.log(u + dtype(EPS))).astype(np.float64))


def enumerated_race(q: np.ndarray, bits: int) -> np.ndarray:
    """P(i wins) = mean over all grid values E of prod_{j != i} P(E_j > y_j E / y_i), counted exactly."""
    energies = grid_energies(bits)
    y = q / q.sum()
    out = np.zeros_like(y)
    for i in range(y.size):
        times = energies / y[i]
        prod = np.ones_like(times)
        for j in range(y.size):
            if j != i:
                prod *= 1 - np.searchsorted(energies, y[j] * times, side="right") / energies.size
        out[i] = prod.mean()
    return out



# --- gumbel_argmax ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [None, 53])
def test_gumbel_argmax_exact_and_float64_match_the_normalised_weights(bits):
    q = np.array([5.0, 3.0, 1.0, 0.5, 0.25, 0.25])
    draws = gumbel_argmax(q, 200_000, np.random.default_rng(0), bits=bits)
    assert pooled_chisquare_pvalue(np.bincount(draws, minlength=q.size), q) > 1e-3


def test_gumbel_argmax_coarse_grid_matches_enumeration_of_all_uniforms_with_first_index_ties():
    q = np.array([1.0, 2.0, 2.0])
    bits = 2
    grid = np.arange(4) / 4.0
    counts = np.zeros(3)
    for u in itertools.product(grid, repeat=3):
        e = np.float32(EPS) - np.log(np.array(u, dtype=np.float32) + np.float32(EPS))
        counts[np.argmax(q.astype(np.float32) / e)] += 1
    draws = gumbel_argmax(q, 100_000, np.random.default_rng(1), bits=bits)
    assert pooled_chisquare_pvalue(np.bincount(draws, minlength=3), counts) > 1e-3


def test_gumbel_argmax_is_reproducible_and_in_range():
    q = zipf(50)
    a = gumbel_argmax(q, 1000, np.random.default_rng(3))
    b = gumbel_argmax(q, 1000, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() < 50 and a.dtype == np.int64


def test_noise_dtype():
    assert noise_dtype(24) is np.float32 and noise_dtype(25) is np.float64


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"q": np.array([1.0, -1.0])}, ValueError),
        ({"q": np.zeros(3)}, ValueError),
        ({"q": np.ones((2, 2))}, ValueError),
        ({"q": np.array([1.0, np.nan])}, ValueError),
        ({"bits": 0}, ValueError),
        ({"bits": 54}, ValueError),
        ({"bits": True}, TypeError),
        ({"bits": 24.0}, TypeError),
        ({"n_samples": 0}, ValueError),
        ({"rng": 0}, TypeError),
        ({"eps": -1.0}, ValueError),
    ],
)
def test_gumbel_argmax_rejects_bad_input(kwargs, error):
    args = {"q": np.ones(3), "n_samples": 10, "rng": np.random.default_rng(0)} | kwargs
    with pytest.raises(error):
        gumbel_argmax(args.pop("q"), args.pop("n_samples"), args.pop("rng"), **args)


# --- race_probs -------------------------------------------------------------------------------------------------


def test_race_probs_exact_is_the_normalised_weights():
    q = np.array([0.0, 2.0, 6.0])
    assert np.allclose(race_probs(q, "exact"), [0.0, 0.25, 0.75])


def test_race_probs_grid_matches_exact_enumeration_on_a_coarse_grid():
    """bits = 10: 1024 grid values, 64 Zipf tokens with weight 1/32 against a [MASK] of weight 1."""
    q = np.append(zipf(64) / 32, 1.0)
    truth = enumerated_race(q, 10)
    model = race_probs(q, "grid", bits=10)
    assert 0.5 * np.abs(model[:-1] - truth[:-1]).sum() <= 1e-6  # the tokens: exact atoms
    assert 0.5 * np.abs(model - truth).sum() <= 5e-5  # [MASK]: quadrature over its continuous part
    assert 0.5 * np.abs(q / q.sum() - truth).sum() > 1e-2  # and the effect itself is large


def test_race_probs_grid_matches_exact_enumeration_where_the_quadrature_matters():
    """bits = 16 with shares around 2**-16: most of each entry's law goes through the Gauss-Legendre part."""
    q = np.array([2e-6, 1.5e-5, 1e-4, 3e-3, 0.2, 0.8])
    truth = enumerated_race(q, 16)
    model = race_probs(q, "grid", bits=16, n_atoms=32)
    assert np.allclose(model, truth, rtol=2e-4, atol=1e-9)


def test_race_probs_tiny_share_against_one_big_entry_matches_the_closed_form():
    """float32, share a = 2**-24: P = sum_m 2**-24 exp(-(1 - a) E_m / a) (the big entry is smooth at this
    scale), about 0.58 a rather than a."""
    a = 2.0**-24
    m = np.arange(1, 200)
    e = (np.float32(EPS) - np.log(np.float32(1) - (m * a).astype(np.float32))).astype(float)
    closed = a * np.exp(-(1 - a) * e / a).sum()
    model = race_probs(np.array([a, 1 - a]), "grid", bits=24)
    assert model[0] == pytest.approx(closed, rel=1e-6)
    assert model[0] / a == pytest.approx(0.581, abs=0.002)


def test_race_probs_truncated_matches_the_two_way_closed_form():
    bits, y = 12, 3e-4
    e_min = 2.0**-bits
    lam = (1 - y) / y
    closed = -np.expm1(-e_min) * np.exp(-lam * e_min) + np.exp(-(1 + lam) * e_min) / (1 + lam)
    model = race_probs(np.array([y, 1 - y]), "truncated", bits=bits)
    assert model[0] == pytest.approx(closed, rel=1e-6)
    # the big entry integrates across the small one's jump at e_min: Gauss-Legendre is good to ~1e-5 there
    assert model.sum() == pytest.approx(1, abs=1e-5)


def test_race_probs_float64_grid_is_exact_for_practical_purposes():
    q = np.append(zipf(100) / 1000, 1.0)
    assert np.allclose(race_probs(q, "grid", bits=53), q / q.sum(), rtol=1e-9, atol=0)


def test_race_probs_grid_but_not_truncation_explains_brute_force_sampling():
    """The discriminating check: bits = 10, V = 256 Zipf tokens at weight 1/32 against [MASK], 10**6 draws."""
    q = np.append(zipf(256) / 32, 1.0)
    counts = np.bincount(gumbel_argmax(q, 1_000_000, np.random.default_rng(2024), bits=10), minlength=q.size)
    assert pooled_chisquare_pvalue(counts, race_probs(q, "grid", bits=10)) > 0.01
    assert pooled_chisquare_pvalue(counts, race_probs(q, "truncated", bits=10)) < 1e-3
    assert pooled_chisquare_pvalue(counts, race_probs(q, "exact")) < 1e-3


def test_real_float32_torch_rand_behaves_like_the_grid_model():
    """torch.rand in float32 is on the 2**-24 grid, and a two-way race run in torch float32 (stratified over
    the first grid values of the tiny entry) wins at the rate of the grid model, not the truncation model."""
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(100_000, generator=gen, dtype=torch.float32).double() * 2.0**24
    assert torch.equal(u, torch.round(u))
    a = 2.0**-24
    q = torch.tensor([a, 1 - a], dtype=torch.float32)
    eps = torch.tensor(EPS, dtype=torch.float32)
    n, estimate, variance = 200_000, 0.0, 0.0
    for m in range(1, 26):  # the tiny entry's uniform is 1 - m 2**-24; m > 25 adds < e**-25
        u_tiny = torch.full((n,), 1 - m * a, dtype=torch.float32)
        u_big = torch.rand(n, generator=gen, dtype=torch.float32)
        noise = eps - torch.log(torch.stack([u_tiny, u_big], dim=1) + eps)
        wins = (torch.argmax(q / noise, dim=1) == 0).double().mean().item()
        estimate += wins
        variance += wins * (1 - wins) / n
    grid_model = race_probs(np.array([a, 1 - a]), "grid", bits=24)[0] / a
    truncated_model = race_probs(np.array([a, 1 - a]), "truncated", bits=24)[0] / a
    assert abs(estimate - grid_model) < 4 * np.sqrt(variance)
    assert abs(estimate - truncated_model) > 0.1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"noise": "float32"}, ValueError),
        ({"bits": 60}, ValueError),
        ({"n_atoms": 0}, ValueError),
        ({"n_nodes": 1.5}, TypeError),
        ({"q": np.array([-1.0, 2.0])}, ValueError),
    ],
)
def test_race_probs_rejects_bad_input(kwargs, error):
    args = {"q": np.ones(3)} | kwargs
    with pytest.raises(error):
        race_probs(args.pop("q"), **args)


# --- unmasking_race_probs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [24, 20])
def test_unmasking_race_probs_agrees_with_the_general_race(bits):
    p = zipf(300)
    weights = [0.0, 3.0, 99.0]
    fast = unmasking_race_probs(p, weights, bits=bits)
    for row, w in enumerate(weights):
        slow = race_probs(np.append(p, w), "grid", bits=bits)[:-1]
        relevant = slow > 1e-12
        assert np.allclose(fast[row][relevant], slow[relevant], rtol=1e-3 if bits == 20 else 2e-5)
        assert 0.5 * np.abs(fast[row] - slow).sum() < 1e-6


def test_unmasking_race_probs_equal_weights_and_zero_weights():
    p = np.array([1.0, 1.0, 1.0, 0.0])
    out = unmasking_race_probs(p, [2.0], bits=24)[0]
    assert out[3] == 0 and np.allclose(out[:3], out[0])
    assert out[:3].sum() == pytest.approx(race_probs(np.array([1.0, 1.0, 1.0, 6.0]), "grid")[:3].sum(), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mask_weights": [-1.0]}, ValueError),
        ({"mask_weights": [[1.0]]}, ValueError),
        ({"p": np.array([0.0, 0.0])}, ValueError),
        ({"bits": 0}, ValueError),
        ({"n_shares": 2}, ValueError),
    ],
)
def test_unmasking_race_probs_rejects_bad_input(kwargs, error):
    args = {"p": np.ones(4), "mask_weights": [1.0]} | kwargs
    with pytest.raises(error):
        unmasking_race_probs(args.pop("p"), args.pop("mask_weights"), **args)


# --- temperature, entropy, effective temperature -----------------------------------------------------------------


@given(st.floats(0.2, 5.0))
@settings(max_examples=30, deadline=None)
def test_temperature_scaled_matches_torch_softmax(tau):
    p = zipf(40)
    reference = torch.softmax(torch.log(torch.tensor(p, dtype=torch.float64)) / tau, dim=0).numpy()
    assert np.allclose(temperature_scaled(p, tau), reference, rtol=1e-12, atol=1e-15)


def test_temperature_scaled_keeps_zeros_and_rejects_bad_tau():
    assert temperature_scaled(np.array([0.0, 1.0, 3.0]), 0.5)[0] == 0
    for tau in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError):
            temperature_scaled(np.ones(3), tau)


def test_entropy_matches_scipy():
    p = np.array([0.5, 0.25, 0.25, 0.0])
    assert entropy(p) == pytest.approx(scipy_entropy(p))
    assert entropy(zipf(1000)) == pytest.approx(scipy_entropy(zipf(1000)))


@given(st.floats(0.3, 3.0))
@settings(max_examples=25, deadline=None)
def test_effective_temperature_recovers_the_temperature_that_made_the_distribution(t0):
    p = zipf(500)
    assert effective_temperature(p, temperature_scaled(p, t0)) == pytest.approx(t0, abs=1e-6)


def test_effective_temperature_is_the_kl_minimiser_found_by_brute_force():
    p = zipf(200)
    distorted = temperature_scaled(p, 0.9) * np.linspace(1.2, 0.6, 200)
    distorted /= distorted.sum()
    grid = np.linspace(0.5, 1.5, 20001)
    candidates = torch.softmax(torch.log(torch.tensor(p))[None, :] / torch.tensor(grid)[:, None], dim=1).numpy()
    kls = scipy_entropy(distorted[None, :], candidates, axis=1)
    assert effective_temperature(p, distorted) == pytest.approx(grid[np.argmin(kls)], abs=1e-4)


def test_effective_temperature_rejects_bad_input():
    with pytest.raises(ValueError):
        effective_temperature(np.ones(3), np.ones(4))
    with pytest.raises(ValueError):
        effective_temperature(np.array([0.0, 1.0]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError):
        effective_temperature(np.ones(3), np.ones(3), bounds=(2.0, 1.0))
