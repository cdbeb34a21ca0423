"""InfinityMATH in miniature: number-independent programs and cheap re-instantiation of math problems.

The pipeline of Zhang et al. (2024), on the toy problems of :mod:`lib.toy_mwp`:

1. :func:`mask_numbers` replaces every number of a question by a slot ``{n0}, {n1}, ...`` (a *generic* question);
2. a program of the slots, ``def solve(n0, n1): ...``, solves it. The paper asks GPT-4 for it; here the template's
   reference expression stands in, with an optional error channel (:func:`program_of_variables`) so that
   :func:`verify` -- run the program on the original numbers and compare with the known answer -- has something
   to reject;
3. :func:`reinstantiate` draws new numbers for the slots, computes the answers by running the program in the
   sandbox, and keeps only the tuples that pass a generic *consistency filter* (:func:`passes_filter`).

For a learner, the same question has two program targets: a *literal* one with the digits written in
(``345+27``, program-of-thought style) and a *variable* one (``n0+n1``) whose numbers are bound from the
question at execution time (:func:`program_from_target`). :func:`make_plus_set` builds GSM8K+-style test sets that
change only the numbers.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lib.safe_exec import ExecResult, safe_execute_many
from lib.tiny_lm import (
    CharTokenizer,
    TinyDecoder,
    complete_texts,
    prompt_answer_batch,
    teacher_forced_exact_match,
    train_lm,
)
from lib.toy_mwp import (
    TEMPLATES,
    Problem,
    Template,
    answers_match,
    format_number,
    reference_program,
    sample_problem,
)
from lib.validation import check_generator, check_positive_int

NUMBER = re.compile(r"\d+(?:\.\d+)?")
SLOT = re.compile(r"\{n(\d+)\}")
FORMATS = ("literal", "variable")
PLUS_MODES = ("resample", "wider", "more_digits")
SEPARATOR = "|"
ALPHABET = "".join(sorted(set("".join(t.question for t in TEMPLATES) + "0123456789n+-*/()." + SEPARATOR)
                          - set("{}")))


def mask_numbers(question: str) -> tuple[str, list[float]]:
    """Replace each number of ``question`` by ``{n0}``, ``{n1}``, ... in order; return the generic text and values.

    Integers, decimals, money (``$12``: the ``$`` stays in the text) and percentages (``20%``: the ``%`` stays) are
    recognised. Integers come back as ``int``, decimals as ``float``.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if "{" in question or "}" in question:
        raise ValueError("question must not contain braces: they mark slots in the generic question")
    values: list[float] = []

    def to_slot(match: re.Match) -> str:
        text = match.group()
        values.append(float(text) if "." in text else int(text))
        return f"{{n{len(values) - 1}}}"

    return NUMBER.sub(to_slot, question), values


def unmask(generic: str, values: Sequence[float]) -> str:
    """Put ``values`` back into the slots of ``generic`` (the inverse of :func:`mask_numbers`)."""
    slots = [int(i) for i in SLOT.findall(generic)]
    if sorted(slots) != list(range(len(values))):
        raise ValueError(f"generic has slots {slots} but {len(values)} values were given")
    return SLOT.sub(lambda m: format_number(values[int(m.group(1))]), generic)


def variable_target(template: Template) -> str:
    """The number-independent target: the template's expression over ``n0, n1, ...``."""
    return template.expression


def literal_target(template: Template, values: Sequence[float]) -> str:
    """The literal target: the expression with each slot replaced by its number's digits."""
    if len(values) != template.n_slots:
        raise ValueError(f"values must have {template.n_slots} entries, got {len(values)}")
    return re.sub(r"n(\d+)", lambda m: format_number(values[int(m.group(1))]), template.expression)


def program_from_target(target: str, fmt: str, question: str) -> tuple[str, tuple]:
    """The sandbox program and its arguments for a model's ``target`` text in format ``fmt``.

    ``"literal"``: ``def solve(): return <target>`` with no arguments. ``"variable"``: ``def solve(n0, ...)``
    with one parameter per number of ``question``, called with those numbers.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "literal":
        return f"def solve():\n    return {target}\n", ()
    _, values = mask_numbers(question)
    parameters = ", ".join(f"n{i}" for i in range(len(values)))
    return f"def solve({parameters}):\n    return {target}\n", tuple(values)


OPERATOR_SWAPS = {"+": "-", "-": "+", "*": "/", "/": "*"}


def program_of_variables(template: Template, *, error_rate: float = 0.0,
                         rng: np.random.Generator | None = None) -> str:
    """The program of the slots that the LLM would write; here the template's reference program.

    With probability ``error_rate`` (needs ``rng``) the first arithmetic operator is swapped (``+`` with ``-``,
    ``*`` with ``/``): a stand-in for a wrong LLM program that :func:`verify` should catch.
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    program = reference_program(template)
    if error_rate > 0:
        check_generator(rng)
        if rng.random() < error_rate:
            expression = template.expression
            position = next(i for i, ch in enumerate(expression) if ch in OPERATOR_SWAPS)
            wrong = expression[:position] + OPERATOR_SWAPS[expression[position]] + expression[position + 1:]
            program = program.replace(f"return {expression}", f"return {wrong}")
    return program


def verify(program: str, values: Sequence[float], gold: float) -> bool:
    """True if ``program``'s ``solve(*values)`` runs in the sandbox and returns ``gold``."""
    result = safe_execute_many([program], args=[tuple(values)])[0]
    return result.ok and answers_match(result.value, gold)


def passes_filter(generic: str, values: Sequence[float], result: ExecResult) -> bool:
    """The generic consistency filter: judged from the question text and the program's outcome only.

    A tuple passes if the program ran (no division by zero), every number is positive, every percentage is
    below 100, the answer is non-negative, and the answer is a whole number when the question asks "How many".
    """
    if not result.ok or isinstance(result.value, bool) or not isinstance(result.value, int | float):
        return False
    answer = float(result.value)
    if not math.isfinite(answer) or answer < 0 or any(v <= 0 for v in values):
        return False
    for match in re.finditer(r"\{n(\d+)\}%", generic):
        if values[int(match.group(1))] >= 100:
            return False
    return "How many" not in generic or math.isclose(answer, round(answer), abs_tol=1e-9)


def digit_ranges(values: Sequence[float]) -> list[tuple[int, int]]:
    """For each number, the range ``0 .. 10**d - 1`` of numbers with at most its ``d`` digits."""
    return [(0, 10 ** len(str(int(v))) - 1) for v in values]


@dataclass(frozen=True)
class Reinstantiation:
    """New value tuples for one generic question, their sandboxed answers and whether each passed the filter."""

    generic: str
    values: list[tuple[int, ...]]
    results: list[ExecResult]
    kept: np.ndarray

    def kept_problems(self) -> list[tuple[str, tuple[int, ...], float]]:
        """``(question, values, answer)`` of every tuple that passed the filter."""
        return [(unmask(self.generic, v), v, float(r.value))
                for v, r, keep in zip(self.values, self.results, self.kept, strict=True) if keep]


def reinstantiate(generic: str, program: str, k: int, ranges: Sequence[tuple[int, int]],
                  rng: np.random.Generator) -> Reinstantiation:
    """Draw ``k`` value tuples (each slot uniform on its inclusive range), run ``program`` on each, filter them."""
    return reinstantiate_many([generic], [program], k, [ranges], rng)[0]


def reinstantiate_many(generics: Sequence[str], programs: Sequence[str], k: int,
                       ranges: Sequence[Sequence[tuple[int, int]]], rng: np.random.Generator) -> list[Reinstantiation]:
    """:func:`reinstantiate` for many generic questions at once (one sandbox session for all programs)."""
    check_positive_int(k, "k")
    check_generator(rng)
    if not len(generics) == len(programs) == len(ranges):
        raise ValueError("generics, programs and ranges must have the same length")
    all_values, jobs = [], []
    for generic, program, slot_ranges in zip(generics, programs, ranges, strict=True):
        n_slots = len(SLOT.findall(generic))
        if len(slot_ranges) != n_slots:
            raise ValueError(f"ranges must have one (low, high) per slot: {n_slots} slots, {len(slot_ranges)} ranges")
        if any(low > high for low, high in slot_ranges):
            raise ValueError(f"every range needs low <= high, got {list(slot_ranges)}")
        values = [tuple(int(rng.integers(low, high + 1)) for low, high in slot_ranges) for _ in range(k)]
        all_values.append(values)
        jobs += [(program, v) for v in values]
    results = safe_execute_many([p for p, _ in jobs], args=[v for _, v in jobs])
    out = []
    for i, (generic, values) in enumerate(zip(generics, all_values, strict=True)):
        chunk = results[i * k:(i + 1) * k]
        kept = np.array([passes_filter(generic, v, r) for v, r in zip(values, chunk, strict=True)])
        out.append(Reinstantiation(generic, values, chunk, kept))
    return out


def make_plus_set(problems: Sequence[Problem], rng: np.random.Generator, *, mode: str = "resample",
                  digits: int | None = None) -> list[Problem]:
    """A "+" variant of a test set: same templates, only the numbers change.

    ``"resample"``: fresh values from the usual ranges; ``"wider"``: counts and prices with 1 to 4 digits;
    ``"more_digits"``: counts and prices with exactly ``digits`` digits.
    """
    check_generator(rng)
    if mode not in PLUS_MODES:
        raise ValueError(f"mode must be one of {PLUS_MODES}, got {mode!r}")
    if (mode == "more_digits") != (digits is not None):
        raise ValueError("digits must be given for mode='more_digits' and only then")
    plus = []
    for problem in problems:
        size = digits if mode == "more_digits" else int(rng.integers(1, 5)) if mode == "wider" else None
        plus.append(sample_problem(problem.template, rng, digits=size))
    return plus


# --- the learner: the book's tiny decoder as a seq2seq model (prompt = question, target = program) ---------------

def training_pairs(problems: Sequence[Problem], fmt: str) -> list[tuple[str, str]]:
    """``(question + "|", target)`` pairs in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return [(p.question + SEPARATOR, literal_target(p.template, p.values) if fmt == "literal"
             else variable_target(p.template)) for p in problems]


def train_program_model(pairs: Sequence[tuple[str, str]], *, steps: int, seed: int, batch_size: int = 32,
                        d_model: int = 64, n_layers: int = 2, lr: float = 3e-3,
                        start_from: TinyDecoder | None = None) -> tuple[TinyDecoder, np.ndarray]:
    """Train a :class:`TinyDecoder` on ``<bos> prompt target <eos>`` with the loss on ``target <eos>`` only.

    With ``start_from``, a copy of that model is trained further (``d_model`` and ``n_layers`` are then ignored):
    the continued fine-tuning of a model on a larger data set. The model passed in is left unchanged.
    """
    tokenizer = CharTokenizer(ALPHABET)
    if start_from is None:
        max_len = max(len(p) + len(t) for p, t in pairs) + 2 + 40  # + <bos> and <eos>
        model = TinyDecoder(tokenizer.vocab_size, max_len=max_len, d_model=d_model, n_layers=n_layers, seed=seed)
    elif isinstance(start_from, TinyDecoder):
        model = copy.deepcopy(start_from)
    else:
        raise TypeError(f"start_from must be a TinyDecoder or None, got {type(start_from).__name__}")

    def batch(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return prompt_answer_batch(tokenizer, [pairs[i] for i in rng.integers(0, len(pairs), batch_size)])

    log = train_lm(model, batch, steps=steps, lr=lr, warmup=min(50, steps // 5), seed=seed)
    return model, log.losses


def greedy_matches_target(model: TinyDecoder, problems: Sequence[Problem], fmt: str) -> np.ndarray:
    """Per problem, whether greedy decoding would write exactly the reference target (and then ``<eos>``): one
    teacher-forced pass (:func:`lib.tiny_lm.teacher_forced_exact_match`) instead of token-by-token decoding."""
    if not problems:
        raise ValueError("problems must not be empty")
    return teacher_forced_exact_match(model, CharTokenizer(ALPHABET), training_pairs(problems, fmt))


def solve_rate(model: TinyDecoder, problems: Sequence[Problem], fmt: str, *,
               max_new_tokens: int = 24) -> tuple[np.ndarray, list[str]]:
    """Per problem, whether the model's greedy program runs in the sandbox and returns the reference answer.

    Returns the verdicts and the greedy programs. Problems whose greedy program is the reference target
    (:func:`greedy_matches_target`) are not decoded token by token: their program is the target.
    """
    matched = greedy_matches_target(model, problems, fmt)
    pairs = training_pairs(problems, fmt)
    targets = [target for _, target in pairs]
    if max_new_tokens <= max(len(target) for target in targets):
        raise ValueError(f"max_new_tokens must exceed the longest target, got {max_new_tokens}")
    to_decode = [i for i in range(len(problems)) if not matched[i]]
    if to_decode:
        decoded = complete_texts(model, CharTokenizer(ALPHABET), [pairs[i][0] for i in to_decode],
                                 max_new_tokens=max_new_tokens)
        for i, text in zip(to_decode, decoded, strict=True):
            targets[i] = text
    jobs = [program_from_target(t, fmt, p.question) for t, p in zip(targets, problems, strict=True)]
    results = safe_execute_many([source for source, _ in jobs], args=[args for _, args in jobs])
    correct = np.array([r.ok and answers_match(r.value, p.answer) for r, p in zip(results, problems, strict=True)])
    return correct, targets
