"""How numbers are written for a language model, and small number tasks to train one on (Number Cookbook, P47).

A :class:`NumberFormat` turns a non-negative integer into the text a tiny model reads and writes: digits
most-significant first or reversed (least-significant first), zero-padded to a width, one token per digit or one
token per chunk of three digits (grouped from the least-significant end, each chunk one symbol of a private-use
Unicode range, so that :class:`lib.tiny_lm.CharTokenizer` still reads one token per character), and optionally an
index hint (a letter naming the place value) before every token.

The tasks are integer addition and the comparison of two decimals that share their integer part (the
"9.11 vs 9.9" case), with their labels, the split of comparisons into ``eq`` / ``safe`` / ``trap`` pairs,
and the paper's metrics of predicted numbers (exact match, digit match, length difference).
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from lib.validation import check_generator, check_positive_int

DIGITS = "0123456789"
MAX_CHUNK = 3
CHUNK_SYMBOL_BASE = 0xE000  # start of Unicode's private-use area
CHUNKS = ["".join(c) for size in range(1, MAX_CHUNK + 1) for c in itertools.product(DIGITS, repeat=size)]
CHUNK_ALPHABET = "".join(chr(CHUNK_SYMBOL_BASE + i) for i in range(len(CHUNKS)))
_SYMBOL_OF_CHUNK = dict(zip(CHUNKS, CHUNK_ALPHABET, strict=True))
_CHUNK_OF_SYMBOL = dict(zip(CHUNK_ALPHABET, CHUNKS, strict=True))
HINT_LETTERS = "abcdefghijklmnopqrstuvwxyz"
COMPARISON_ALPHABET = DIGITS + ".,=<>"
COMPARISON_CATEGORIES = ("eq", "safe", "trap")
_DECIMAL = re.compile(r"(\d+)\.(\d*[1-9])")


def chunk_digits(digits: str, size: int, direction: str = "right") -> list[str]:
    """Split a digit string into chunks of ``size`` digits.

    ``direction="right"`` groups from the least-significant end (``"10000"`` -> ``["10", "000"]``, the usual
    thousands grouping), ``"left"`` from the most-significant end (``["100", "00"]``). Only the first (right) or
    last (left) chunk can be shorter than ``size``.
    """
    if not isinstance(digits, str) or not digits or not set(digits) <= set(DIGITS):
        raise ValueError(f"digits must be a non-empty string of 0-9, got {digits!r}")
    check_positive_int(size, "size")
    if direction not in ("right", "left"):
        raise ValueError(f"direction must be 'right' or 'left', got {direction!r}")
    if direction == "left":
        return [digits[i:i + size] for i in range(0, len(digits), size)]
    head = len(digits) % size or size
    return [digits[:head]] + [digits[i:i + size] for i in range(head, len(digits), size)]


def chunk_to_symbol(chunk: str) -> str:
    """The single private-use character that stands for a chunk of 1-3 digits (``"05"`` and ``"5"`` differ)."""
    if chunk not in _SYMBOL_OF_CHUNK:
        raise ValueError(f"chunk must be a string of 1-{MAX_CHUNK} digits, got {chunk!r}")
    return _SYMBOL_OF_CHUNK[chunk]


def symbol_to_chunk(symbol: str) -> str:
    """The digit chunk a private-use symbol stands for (inverse of :func:`chunk_to_symbol`)."""
    if symbol not in _CHUNK_OF_SYMBOL:
        raise ValueError(f"symbol {symbol!r} is not a chunk symbol")
    return _CHUNK_OF_SYMBOL[symbol]


@dataclass(frozen=True)
class NumberFormat:
    """How a non-negative integer is written as text for a character-level model.

    Parameters
    ----------
    reverse:
        Write the tokens least-significant first (``123`` -> ``"321"``).
    digits_per_token:
        1 (one token per digit) or 3 (one symbol per chunk of up to three digits, grouped from the right).
    index_hints:
        Put before every token a letter naming its place: ``a`` for the least-significant token, ``b`` for the
        next (``123`` -> ``"c1b2a3"``).
    """

    reverse: bool = False
    digits_per_token: int = 1
    index_hints: bool = False

    def __post_init__(self):
        if not isinstance(self.reverse, bool) or not isinstance(self.index_hints, bool):
            raise TypeError("reverse and index_hints must be bools")
        if self.digits_per_token not in (1, MAX_CHUNK):
            raise ValueError(f"digits_per_token must be 1 or {MAX_CHUNK}, got {self.digits_per_token!r}")

    @property
    def alphabet(self) -> str:
        """Every character this format can write."""
        symbols = DIGITS if self.digits_per_token == 1 else CHUNK_ALPHABET
        return symbols + (HINT_LETTERS if self.index_hints else "")

    def encode(self, n: int, width: int | None = None) -> str:
        """The text of ``n``, zero-padded to ``width`` digits first if ``width`` is given."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        digits = str(int(n))
        if width is not None:
            check_positive_int(width, "width")
            if width < len(digits):
                raise ValueError(f"width {width} is shorter than the {len(digits)} digits of {n}")
            digits = digits.zfill(width)
        chunks = chunk_digits(digits, self.digits_per_token, "right")
        tokens = chunks if self.digits_per_token == 1 else [chunk_to_symbol(c) for c in chunks]
        if self.index_hints:
            if len(tokens) > len(HINT_LETTERS):
                raise ValueError(f"index hints cover at most {len(HINT_LETTERS)} tokens, {n} needs {len(tokens)}")
            tokens = [HINT_LETTERS[len(tokens) - 1 - i] + t for i, t in enumerate(tokens)]
        return "".join(reversed(tokens) if self.reverse else tokens)

    def decode(self, text: str) -> int:
        """The integer written by ``text`` in this format; ValueError if ``text`` is not a valid encoding."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"text must be a non-empty string, got {text!r}")
        tokens = list(text)
        if self.index_hints:
            letters, tokens = tokens[0::2], tokens[1::2]
            places = list(range(len(tokens))) if self.reverse else list(range(len(tokens) - 1, -1, -1))
            if len(letters) != len(tokens) or letters != [HINT_LETTERS[p] for p in places[: len(letters)]]:
                raise ValueError(f"{text!r} does not carry the index hints of this format")
        if self.reverse:
            tokens.reverse()
        if self.digits_per_token == 1:
            chunks = tokens
            if not set(chunks) <= set(DIGITS):
                raise ValueError(f"{text!r} has characters that are not digits")
        else:
            chunks = [symbol_to_chunk(t) for t in tokens]
            if any(len(c) != MAX_CHUNK for c in chunks[1:]):
                raise ValueError(f"{text!r}: every chunk but the most significant must have {MAX_CHUNK} digits")
        return int("".join(chunks))


def sample_operands(rng: np.random.Generator, n: int, *, max_digits: int = 3) -> np.ndarray:
    """``n`` pairs of non-negative integers, shape (n, 2): each operand's number of digits is uniform in
    1..``max_digits``, then its value uniform among the integers with that many digits (0-9 for one digit)."""
    check_generator(rng)
    check_positive_int(n, "n")
    check_positive_int(max_digits, "max_digits")
    n_digits = rng.integers(1, max_digits + 1, size=(n, 2))
    low = np.where(n_digits == 1, 0, 10 ** (n_digits - 1))
    return rng.integers(low, 10**n_digits)


def addition_example(a: int, b: int, fmt: NumberFormat, *, operand_width: int | None = None) -> tuple[str, str]:
    """``(prompt, answer)`` of ``a + b`` in format ``fmt``: ``"a+b="`` and the sum.

    With ``operand_width`` the operands are zero-padded to that many digits and the sum to one more.
    """
    answer_width = None if operand_width is None else operand_width + 1
    prompt = f"{_encode(fmt, a, operand_width)}+{_encode(fmt, b, operand_width)}="
    return prompt, _encode(fmt, int(a) + int(b), answer_width)


@functools.lru_cache(maxsize=1 << 16)
def _encode_cached(fmt: NumberFormat, n: int, width: int | None) -> str:
    return fmt.encode(n, width)


def _encode(fmt: NumberFormat, n: int, width: int | None) -> str:
    """``fmt.encode(n, width)``, cached for integers: training draws the same few thousand numbers again and again."""
    if isinstance(n, int | np.integer) and not isinstance(n, bool):
        return _encode_cached(fmt, int(n), width)
    return fmt.encode(n, width)


def _check_decimal(x: str, name: str) -> tuple[str, str]:
    match = _DECIMAL.fullmatch(x) if isinstance(x, str) else None
    if match is None:
        raise ValueError(f"{name} must be a decimal string like '9.11' with no trailing zero, got {x!r}")
    return match.group(1), match.group(2)


def comparison_answer(a: str, b: str) -> str:
    """``">"`` if the decimal ``a`` is larger than ``b``, ``"<"`` if smaller (exact decimal arithmetic)."""
    _check_decimal(a, "a")
    _check_decimal(b, "b")
    if Decimal(a) == Decimal(b):
        raise ValueError(f"a and b must differ, got {a!r} twice")
    return ">" if Decimal(a) > Decimal(b) else "<"


def comparison_category(a: str, b: str) -> str:
    """Split a pair of decimals with the same integer part by how hard it is to compare.

    ``"eq"``: the fractional parts have equal length. Otherwise ``"safe"`` if reading the fractional digits as
    integers (11 vs 9) happens to give the right order, ``"trap"`` if it does not (9.11 vs 9.9).
    """
    (int_a, frac_a), (int_b, frac_b) = _check_decimal(a, "a"), _check_decimal(b, "b")
    if int(int_a) != int(int_b):
        raise ValueError(f"a and b must share their integer part, got {a!r} and {b!r}")
    if len(frac_a) == len(frac_b):
        return "eq"
    naive = ">" if int(frac_a) > int(frac_b) else "<" if int(frac_a) < int(frac_b) else "="
    return "safe" if naive == comparison_answer(a, b) else "trap"


def sample_decimal_pairs(rng: np.random.Generator, n: int, *, p_unequal: float, max_fraction_digits: int = 3,
                         max_integer: int = 99) -> list[tuple[str, str]]:
    """``n`` distinct pairs of decimals that share an integer part uniform in 0..``max_integer``.

    Each fractional part has no trailing zero. With probability ``p_unequal`` a pair's fractional lengths are an
    ordered pair of different lengths (uniform among them), otherwise one common length (uniform in
    1..``max_fraction_digits``); the digits are uniform.
    """
    check_generator(rng)
    check_positive_int(n, "n")
    check_positive_int(max_fraction_digits, "max_fraction_digits")
    check_positive_int(max_integer, "max_integer", minimum=0)
    if not 0 <= p_unequal <= 1:
        raise ValueError(f"p_unequal must be in [0, 1], got {p_unequal}")
    if p_unequal > 0 and max_fraction_digits < 2:
        raise ValueError("unequal fraction lengths need max_fraction_digits >= 2")
    lengths = range(1, max_fraction_digits + 1)
    unequal = np.array([(i, j) for i in lengths for j in lengths if i != j]).reshape(-1, 2)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        size = n - len(pairs)
        same = np.repeat(rng.integers(1, max_fraction_digits + 1, size=size)[:, None], 2, axis=1)
        different = unequal[rng.integers(len(unequal), size=size)] if len(unequal) else same
        fraction_lengths = np.where((rng.random(size) < p_unequal)[:, None], different, same)
        integers = rng.integers(0, max_integer + 1, size=size)
        digits = rng.integers(0, 10, size=(size, 2, max_fraction_digits))
        last_digits = rng.integers(1, 10, size=(size, 2))
        for row in range(size):
            a, b = (f"{integers[row]}." + "".join(map(str, digits[row, k, : fraction_lengths[row, k] - 1]))
                    + str(last_digits[row, k]) for k in (0, 1))
            if a != b:
                pairs.append((a, b))
    return pairs


def comparison_example(a: str, b: str, *, fraction_width: int | None = None) -> tuple[str, str]:
    """``(prompt, answer)`` of comparing ``a`` and ``b``: ``"a,b="`` and ``">"`` or ``"<"``.

    With ``fraction_width`` both fractional parts are zero-padded on the right to that many digits (9.9 -> 9.900).
    """
    answer = comparison_answer(a, b)
    if fraction_width is not None:
        check_positive_int(fraction_width, "fraction_width")
        texts = []
        for x in (a, b):
            integer, fraction = _check_decimal(x, "a or b")
            if len(fraction) > fraction_width:
                raise ValueError(f"fraction_width {fraction_width} is shorter than the fraction of {x!r}")
            texts.append(f"{integer}.{fraction.ljust(fraction_width, '0')}")
        a, b = texts
    return f"{a},{b}=", answer


def decode_or_none(fmt: NumberFormat, text: str) -> int | None:
    """``fmt.decode(text)``, or None if a model wrote something that is not a number in this format."""
    try:
        return fmt.decode(text)
    except ValueError:
        return None


def digit_metrics(predicted: Sequence[int | None], target: Sequence[int]) -> dict[str, np.ndarray]:
    """The paper's per-example metrics of predicted numbers (None: unreadable output) against the targets.

    ``exact``: equal numbers; ``digit_match``: the fraction of the target's digits that the prediction has at
    the same place value (digits aligned at the least-significant end; 0 for None); ``dlength``: the absolute
    difference of the numbers of digits (the target's length for None).
    """
    if len(predicted) != len(target):
        raise ValueError(f"predicted and target differ in length: {len(predicted)} vs {len(target)}")
    exact, match, dlength = [], [], []
    for p, t in zip(predicted, target, strict=True):
        true_digits = str(t)[::-1]
        guess = "" if p is None else str(p)[::-1]
        exact.append(p is not None and p == t)
        match.append(sum(g == d for g, d in zip(guess, true_digits, strict=False)) / len(true_digits))
        dlength.append(abs(len(guess) - len(true_digits)))
    return {"exact": np.array(exact), "digit_match": np.array(match), "dlength": np.array(dlength)}
