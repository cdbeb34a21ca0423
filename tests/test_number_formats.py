"""Tests of lib/number_formats.py: round trips of every number format (hypothesis), the 3-digit chunking against
a hand-written reference, task labels against Python's integer and float arithmetic, the eq/safe/trap split by
brute force over all short fractions, teacher-forced exact match against greedy generation, and the metrics on
hand-computed examples."""

import itertools
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.number_formats import (
    CHUNK_ALPHABET,
    COMPARISON_ALPHABET,
    NumberFormat,
    addition_example,
    chunk_digits,
    chunk_to_symbol,
    comparison_answer,
    comparison_category,
    comparison_example,
    decode_or_none,
    digit_metrics,
    sample_decimal_pairs,
    sample_operands,
    symbol_to_chunk,
)
from lib.tiny_lm import CharTokenizer, prompt_answer_batch

FORMATS = [NumberFormat(reverse=r, digits_per_token=d, index_hints=h)
           for r, d, h in itertools.product([False, True], [1, 3], [False, True])]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 10**18), extra=st.integers(0, 6), fmt=st.sampled_from(FORMATS), pad=st.booleans())
def test_every_format_round_trips(n, extra, fmt, pad):
    width = len(str(n)) + extra if pad else None
    text = fmt.encode(n, width)
    assert fmt.decode(text) == n
    assert set(text) <= set(fmt.alphabet)
    assert CharTokenizer(fmt.alphabet + "+=").decode(CharTokenizer(fmt.alphabet + "+=").encode(text)) == text


def reference_chunks_from_right(digits, size):
    """Hand-written: peel ``size`` digits off the end until nothing is left."""
    chunks = []
    while digits:
        chunks.insert(0, digits[-size:])
        digits = digits[:-size]
    return chunks


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=1, max_size=20), st.integers(1, 5))
def test_chunking_matches_a_hand_written_reference(digits, size):
    assert chunk_digits(digits, size, "right") == reference_chunks_from_right(digits, size)
    left = chunk_digits(digits, size, "left")
    assert "".join(left) == digits and all(len(c) == size for c in left[:-1])


def test_chunking_examples_and_symbols():
    assert chunk_digits("10000", 3) == ["10", "000"]
    assert chunk_digits("10000", 3, "left") == ["100", "00"]
    assert chunk_digits("1234567", 3) == ["1", "234", "567"]
    assert len(CHUNK_ALPHABET) == 10 + 100 + 1000 == len(set(CHUNK_ALPHABET))
    assert all(0xE000 <= ord(s) <= 0xF8FF for s in CHUNK_ALPHABET)  # Unicode private-use area
    assert chunk_to_symbol("05") != chunk_to_symbol("5")
    for chunk in ["0", "9", "00", "05", "999", "000"]:
        assert symbol_to_chunk(chunk_to_symbol(chunk)) == chunk


def test_format_examples_written_by_hand():
    s = {c: chunk_to_symbol(c) for c in ["1", "12", "234", "567", "001"]}
    assert NumberFormat().encode(123) == "123"
    assert NumberFormat(reverse=True).encode(123) == "321"
    assert NumberFormat().encode(7, width=3) == "007"
    assert NumberFormat(reverse=True).encode(7, width=3) == "700"
    assert NumberFormat(index_hints=True).encode(123) == "c1b2a3"
    assert NumberFormat(reverse=True, index_hints=True).encode(123) == "a3b2c1"
    assert NumberFormat(digits_per_token=3).encode(1234567) == s["1"] + s["234"] + s["567"]
    assert NumberFormat(reverse=True, digits_per_token=3).encode(1234567) == s["567"] + s["234"] + s["1"]
    assert NumberFormat(digits_per_token=3).encode(12) == s["12"]
    assert NumberFormat(digits_per_token=3).encode(1001) == s["1"] + s["001"]


def test_format_bad_inputs():
    with pytest.raises(ValueError, match="digits_per_token"):
        NumberFormat(digits_per_token=2)
    with pytest.raises(TypeError, match="bools"):
        NumberFormat(reverse=1)
    with pytest.raises(ValueError, match="non-negative"):
        NumberFormat().encode(-3)
    with pytest.raises(ValueError, match="non-negative"):
        NumberFormat().encode(True)
    with pytest.raises(ValueError, match="width"):
        NumberFormat().encode(1234, width=3)
    with pytest.raises(ValueError, match="index hints"):
        NumberFormat(index_hints=True).encode(10**26)
    with pytest.raises(ValueError, match="not digits"):
        NumberFormat().decode("12a")
    with pytest.raises(ValueError, match="non-empty"):
        NumberFormat().decode("")
    with pytest.raises(ValueError, match="index hints"):
        NumberFormat(index_hints=True).decode("a1b2")  # the hints of 12 are "b1a2"
    with pytest.raises(ValueError, match="chunk"):
        NumberFormat(digits_per_token=3).decode(chunk_to_symbol("1") + chunk_to_symbol("2"))
    with pytest.raises(ValueError, match="chunk symbol"):
        NumberFormat(digits_per_token=3).decode("12")
    with pytest.raises(ValueError, match="size"):
        chunk_digits("123", 0)
    with pytest.raises(ValueError, match="direction"):
        chunk_digits("123", 3, "up")
    with pytest.raises(ValueError, match="digits"):
        chunk_digits("12x", 3)
    with pytest.raises(ValueError, match="chunk"):
        chunk_to_symbol("1234")
    assert decode_or_none(NumberFormat(), "1+2") is None and decode_or_none(NumberFormat(), "042") == 42


def test_operands_follow_the_digit_count_distribution():
    operands = sample_operands(np.random.default_rng(0), 30_000, max_digits=3)
    assert operands.shape == (30_000, 2) and operands.min() >= 0 and operands.max() <= 999
    n_digits = np.vectorize(lambda x: len(str(x)))(operands)
    assert np.allclose(np.bincount(n_digits.ravel())[1:] / operands.size, 1 / 3, atol=0.01)
    with pytest.raises(TypeError, match="rng"):
        sample_operands(0, 5)
    with pytest.raises(ValueError, match="max_digits"):
        sample_operands(np.random.default_rng(0), 5, max_digits=0)


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, 999), b=st.integers(0, 999), fmt=st.sampled_from(FORMATS), pad=st.booleans())
def test_addition_labels_are_python_sums(a, b, fmt, pad):
    prompt, answer = addition_example(a, b, fmt, operand_width=3 if pad else None)
    left, right = prompt[:-1].split("+")
    assert prompt.endswith("=") and fmt.decode(left) == a and fmt.decode(right) == b
    assert fmt.decode(answer) == a + b
    if pad and fmt.digits_per_token == 1 and not fmt.index_hints:
        assert len(left) == len(right) == 3 and len(answer) == 4


def test_addition_example_cache_keeps_values_and_input_checks():
    for fmt in FORMATS:
        for a, b in [(7, 45), (np.int64(7), np.int64(45)), (999, 1)]:
            expected = (f"{fmt.encode(int(a))}+{fmt.encode(int(b))}=", fmt.encode(int(a) + int(b)))
            assert addition_example(a, b, fmt) == addition_example(a, b, fmt) == expected
    addition_example(3, 1, NumberFormat())  # cached; values equal to 3 must still be checked
    for bad in [3.0, True, -3]:
        with pytest.raises(ValueError, match="non-negative int"):
            addition_example(bad, 1, NumberFormat())
    with pytest.raises(ValueError, match="width"):
        addition_example(1234, 1, NumberFormat(), operand_width=3)


def float_order(a, b):
    return ">" if float(a) > float(b) else "<"


def test_comparison_labels_agree_with_float_comparison():
    pairs = sample_decimal_pairs(np.random.default_rng(1), 3000, p_unequal=0.5)
    assert all(comparison_answer(a, b) == float_order(a, b) for a, b in pairs)
    assert comparison_answer("9.11", "9.9") == "<" and comparison_answer("9.9", "9.11") == ">"
    for a, b in pairs[:200]:
        for width in (None, 3, 4):
            prompt, answer = comparison_example(a, b, fraction_width=width)
            x, y = prompt[:-1].split(",")
            assert float(x) == float(a) and float(y) == float(b) and answer == float_order(a, b)
            assert set(prompt + answer) <= set(COMPARISON_ALPHABET)
            if width:
                assert len(x.split(".")[1]) == len(y.split(".")[1]) == width
    assert comparison_example("9.9", "9.11", fraction_width=3) == ("9.900,9.110=", ">")


def test_eq_safe_trap_split_by_brute_force():
    fractions = [f for size in (1, 2, 3) for f in map("".join, itertools.product("0123456789", repeat=size))
                 if f[-1] != "0"]
    counts = {"eq": 0, "safe": 0, "trap": 0}
    for fa, fb in itertools.product(fractions[:99], fractions):  # all fractions of 1-2 digits vs all of 1-3
        if fa == fb:
            continue
        a, b = "9." + fa, "9." + fb
        as_integers = (int(fa) > int(fb), int(fa) < int(fb))
        as_numbers = (float(a) > float(b), float(a) < float(b))
        expected = "eq" if len(fa) == len(fb) else "safe" if as_integers == as_numbers else "trap"
        category = comparison_category(a, b)
        assert category == expected, (a, b)
        counts[category] += 1
    # one digit vs two digits, counted again with integer arithmetic on the digits and exact decimals
    one_vs_two = sum(comparison_category("9." + d, "9." + ef) == "trap" for d in "123456789"
                     for ef in (f"{e}{f}" for e in "0123456789" for f in "123456789"))
    by_hand = sum(1 for d in range(1, 10) for e in range(10) for f in range(1, 10)
                  if (d > 10 * e + f) != (Decimal(f"0.{d}") > Decimal(f"0.{e}{f}")))
    assert one_vs_two == by_hand
    assert comparison_category("9.11", "9.9") == "trap" and comparison_category("9.25", "9.3") == "trap"
    assert comparison_category("9.2", "9.25") == "safe" and comparison_category("9.12", "9.34") == "eq"
    assert comparison_category("0.1", "0.01") == "trap"  # as integers 1 == 1: the naive rule gives no order
    assert min(counts.values()) > 1000


def test_decimal_pairs_obey_their_constraints():
    rng = np.random.default_rng(2)
    equal = sample_decimal_pairs(rng, 2000, p_unequal=0.0)
    unequal = sample_decimal_pairs(rng, 2000, p_unequal=1.0)
    assert {comparison_category(a, b) for a, b in equal} == {"eq"}
    categories = [comparison_category(a, b) for a, b in unequal]
    assert set(categories) == {"safe", "trap"}
    for a, b in equal + unequal:
        assert a != b and a.split(".")[0] == b.split(".")[0] and 0 <= int(a.split(".")[0]) <= 99
        assert a[-1] != "0" and b[-1] != "0" and 1 <= len(a.split(".")[1]) <= 3
    mixed = sample_decimal_pairs(rng, 4000, p_unequal=0.05)
    share = np.mean([comparison_category(a, b) != "eq" for a, b in mixed])
    assert 0.035 < share < 0.065
    assert sample_decimal_pairs(np.random.default_rng(5), 10, p_unequal=0.3) == \
        sample_decimal_pairs(np.random.default_rng(5), 10, p_unequal=0.3)


def test_comparison_bad_inputs():
    with pytest.raises(ValueError, match="decimal"):
        comparison_answer("9.10", "9.2")
    with pytest.raises(ValueError, match="decimal"):
        comparison_answer("9", "9.2")
    with pytest.raises(ValueError, match="differ"):
        comparison_answer("9.2", "9.2")
    with pytest.raises(ValueError, match="integer part"):
        comparison_category("8.2", "9.25")
    with pytest.raises(ValueError, match="fraction_width"):
        comparison_example("9.25", "9.2", fraction_width=1)
    with pytest.raises(ValueError, match="p_unequal"):
        sample_decimal_pairs(np.random.default_rng(0), 3, p_unequal=1.5)
    with pytest.raises(ValueError, match="max_fraction_digits"):
        sample_decimal_pairs(np.random.default_rng(0), 3, p_unequal=0.5, max_fraction_digits=1)


def test_lm_batch_masks_exactly_the_answer_and_eos():
    tokenizer = CharTokenizer("0123456789+=")
    tokens, mask = prompt_answer_batch(tokenizer, [("1+2=", "3"), ("12+34=", "46")])
    assert tokens.shape == (2, 10)
    assert tokenizer.decode(tokens[1]) == "12+34=46"
    assert mask[0].tolist() == [False] * 5 + [True, True] + [False] * 3
    assert mask[1].tolist() == [False] * 7 + [True, True, True]
    assert tokens[0, mask[0]].tolist() == tokenizer.encode("3", eos=True)
    with pytest.raises(ValueError, match="empty"):
        prompt_answer_batch(tokenizer, [])


def test_digit_metrics_on_hand_computed_examples():
    metrics = digit_metrics([1579, 1569, 579, None, 12345], [1579, 1579, 1579, 42, 1345])
    assert metrics["exact"].tolist() == [True, False, False, False, False]
    assert np.allclose(metrics["digit_match"], [1.0, 0.75, 0.75, 0.0, 0.75])
    assert metrics["dlength"].tolist() == [0, 0, 1, 2, 1]
    with pytest.raises(ValueError, match="length"):
        digit_metrics([1], [1, 2])
