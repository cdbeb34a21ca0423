"""Tests of lib/contamination.py: the arithmetic generator against Python's exact integer eval, n-gram counts
against brute-force counting, Witten-Bell probabilities against a recursive dictionary oracle (and summing to
one), exact completion of a memorised string, LCS against rapidfuzz, and the partial-prompt probe on models that
did and did not see the items."""

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import LCSseq

from lib.contamination import (
    NgramLM,
    lcs_length,
    partial_prompt_scores,
    random_calculation,
    rouge_l,
    training_stream,
)

SMALL = "\nab"


@pytest.mark.parametrize("n_steps", [1, 2, 5, 10, 20])
def test_random_calculation_matches_python_eval(n_steps):
    rng = np.random.default_rng(n_steps)
    for _ in range(200):
        text, answer = random_calculation(n_steps, rng)
        assert eval(text) == answer  # the oracle: Python's exact integer arithmetic on the text
        assert sum(text.count(op) for op in "+*") + text.count("-") == n_steps  # operands are positive
        assert set(text) <= set("0123456789+-*()")


def test_random_calculation_is_seeded_and_validates():
    assert random_calculation(4, np.random.default_rng(3)) == random_calculation(4, np.random.default_rng(3))
    with pytest.raises(ValueError, match="n_steps"):
        random_calculation(0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        random_calculation(3, 0)


def brute_force_counts(stream: str, context: str, alphabet: str) -> np.ndarray:
    k = len(context)
    return np.array([sum(stream[i - k : i] == context and stream[i] == a for i in range(k, len(stream)))
                     for a in alphabet])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="ab", min_size=0, max_size=12), min_size=1, max_size=6))
def test_context_counts_match_brute_force(texts):
    lm = NgramLM(SMALL, order=3).fit(texts)
    stream = training_stream(texts)
    for k in range(4):
        for context in map("".join, itertools.product(SMALL, repeat=k)):
            np.testing.assert_array_equal(lm.context_counts(context), brute_force_counts(stream, context, SMALL))


def witten_bell_oracle(stream: str, context: str, alphabet: str, order: int) -> dict[str, float]:
    """Recursive interpolated Witten-Bell from dictionaries of counts, independent of the numpy code."""
    probs = {a: 1 / len(alphabet) for a in alphabet}
    for k in range(min(order, len(context)) + 1):
        history = context[len(context) - k :]
        followers = Counter(stream[i] for i in range(k, len(stream)) if stream[i - k : i] == history)
        total, types = sum(followers.values()), len(followers)
        if total:
            probs = {a: (followers[a] + types * probs[a]) / (total + types) for a in alphabet}
    return probs


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="ab", max_size=10), min_size=1, max_size=5),
       st.lists(st.text(alphabet=SMALL, max_size=6), min_size=1, max_size=4))
def test_witten_bell_probabilities_match_oracle_and_sum_to_one(texts, prefixes):
    lm = NgramLM(SMALL, order=3).fit(texts)
    probs = lm.next_char_probs(prefixes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    stream = training_stream(texts)
    for row, prefix in zip(probs, prefixes, strict=True):
        oracle = witten_bell_oracle(stream, prefix, SMALL, 3)
        np.testing.assert_allclose(row, [oracle[a] for a in SMALL], atol=1e-12)


def test_memorised_string_is_completed_exactly():
    rng = np.random.default_rng(0)
    background = ["".join(rng.choice(list("0123456789+-"), size=30)) for _ in range(200)]
    secret = "((17+4)*3)-58=5"
    lm = NgramLM(order=6).fit(background + [secret] * 2)
    completion = lm.greedy_complete(["\n" + secret[:8]], max_len=40)[0]
    assert completion == secret[8:]
    clean = NgramLM(order=6).fit(background)
    assert clean.greedy_complete(["\n" + secret[:8]], max_len=40)[0] != secret[8:]


def test_greedy_complete_follows_argmax_of_next_char_probs():
    rng = np.random.default_rng(1)
    texts = [random_calculation(int(rng.integers(1, 5)), rng)[0] for _ in range(100)]
    lm = NgramLM(order=4).fit(texts)
    prefixes = ["\n(", "\n12", "\n((3"]
    for prefix, completion in zip(prefixes, lm.greedy_complete(prefixes, max_len=12), strict=True):
        text = prefix
        for _ in range(12):
            char = lm.alphabet[int(np.argmax(lm.next_char_probs([text])[0]))]
            if char == "\n":
                break
            text += char
        assert completion == text[len(prefix) :]


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="abc", max_size=15), st.text(alphabet="abc", max_size=15))
def test_lcs_matches_rapidfuzz(a, b):
    assert lcs_length(a, b) == LCSseq.similarity(a, b)
    expected = 1.0 if not a and not b else 2 * LCSseq.similarity(a, b) / (len(a) + len(b))
    assert rouge_l(a, b) == pytest.approx(expected)


def test_partial_prompt_scores_separate_seen_from_unseen_items():
    rng = np.random.default_rng(2)
    pairs = [random_calculation(6, rng) for _ in range(30)]
    questions, answers = [q for q, _ in pairs], [a for _, a in pairs]
    items = [f"{q}={a}" for q, a in pairs]
    background = [random_calculation(6, rng)[0] for _ in range(300)]
    seen = partial_prompt_scores(NgramLM().fit(background + items * 3), questions, answers, frac=0.6)
    assert seen.exact_match == 1.0 and seen.answer_accuracy == 1.0 and seen.rouge_l == 1.0
    unseen = partial_prompt_scores(NgramLM().fit(background), questions, answers, frac=0.6)
    assert unseen.exact_match == 0.0 and unseen.answer_accuracy == 0.0 and 0 < unseen.rouge_l < 1
    assert unseen.item_rouge_l.shape == (30,) and seen.item_exact.all() and not unseen.item_exact.any()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="alphabet"):
        NgramLM("abca")
    with pytest.raises(ValueError, match="alphabet"):
        NgramLM("ab")  # no end-of-text character
    with pytest.raises(ValueError, match="order"):
        NgramLM(order=40)
    with pytest.raises(RuntimeError, match="fit"):
        NgramLM().context_counts("1")
    lm = NgramLM(order=2).fit(["1+1"])
    with pytest.raises(ValueError, match="not in the alphabet"):
        lm.next_char_probs(["x"])
    with pytest.raises(ValueError, match="at most order"):
        lm.context_counts("123")
    with pytest.raises(TypeError, match="texts"):
        NgramLM().fit("1+1")
    with pytest.raises(ValueError, match="max_len"):
        lm.greedy_complete(["1"], max_len=0)
    with pytest.raises(ValueError, match="frac"):
        partial_prompt_scores(lm, ["1+1"], [2], frac=1.0)
    with pytest.raises(ValueError, match="one answer per question"):
        partial_prompt_scores(lm, ["1+1"], [], frac=0.5)
