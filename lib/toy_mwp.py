"""A toy generator of math word problems: templates with numeric slots, a reference program per template.

Each :class:`Template` is a question with named slots ``{n0}, {n1}, ...``, a *kind* per slot that fixes its
range of values, a reference expression over the slots (e.g. ``"n0*(1-n1/100)"``), and explicit consistency
constraints (e.g. ``n1 <= n0`` when ``n1`` things are taken away from ``n0``). :func:`sample_problem` draws
values that satisfy the constraints (rejection sampling) and returns the question text, the values and the
answer. :func:`reference_program` turns the expression into a ``def solve(n0, n1, ...)`` function that
:func:`lib.safe_exec.safe_execute_many` can run.

Slot kinds and their default ranges (inclusive):

- ``"count"``: 10..999 (two or three digits), the number of objects;
- ``"price"``: 10..999 dollars, written ``${n0}``;
- ``"small"``: 2..9, a multiplier or a divisor;
- ``"percent"``: 5..95 in steps of 5, written ``{n1}%``.

Several chapters use this module (program synthesis, program prompting, number-free programs, partial
correctness); it knows nothing about how a model is trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lib.validation import check_generator, check_positive_int

SLOT_KINDS = ("count", "price", "small", "percent")
DEFAULT_RANGES = {"count": (10, 999), "price": (10, 999), "small": (2, 9), "percent": (5, 95)}


@dataclass(frozen=True)
class Template:
    """One kind of word problem.

    Attributes
    ----------
    name:
        Short identifier, e.g. ``"discount"``.
    question:
        Text with slots ``{n0}``, ``{n1}``, ... in order of appearance.
    kinds:
        Kind of each slot (one of :data:`SLOT_KINDS`), in slot order.
    expression:
        Python expression over ``n0, n1, ...`` that answers the question.
    constraints:
        Python boolean expressions over the slots that a consistent question satisfies (besides the ranges).
    counts_objects:
        True if the answer counts things, so a consistent answer is a whole number.
    """

    name: str
    question: str
    kinds: tuple[str, ...]
    expression: str
    constraints: tuple[str, ...] = field(default=())
    counts_objects: bool = True

    @property
    def n_slots(self) -> int:
        """Number of numeric slots."""
        return len(self.kinds)

    @property
    def slot_names(self) -> tuple[str, ...]:
        """``("n0", "n1", ...)``."""
        return tuple(f"n{i}" for i in range(self.n_slots))


TEMPLATES: tuple[Template, ...] = (
    Template("add", "Ann has {n0} marbles and finds {n1}. How many marbles?",
             ("count", "count"), "n0+n1"),
    Template("sell", "A shop had {n0} pens, sold {n1}. How many pens left?",
             ("count", "count"), "n0-n1", ("n1 <= n0",)),
    Template("boxes", "{n0} boxes of {n1} eggs each. How many eggs?",
             ("small", "count"), "n0*n1"),
    Template("share", "{n0} cakes shared by {n1} kids. How many cakes each?",
             ("count", "small"), "n0/n1", ("n0 % n1 == 0",)),
    Template("bus", "A bus has {n0}; {n1} get off, {n2} get on. How many riders?",
             ("count", "count", "count"), "n0-n1+n2", ("n1 <= n0",)),
    Template("discount", "A coat is ${n0}, {n1}% off. What is the coat price?",
             ("price", "percent"), "n0*(1-n1/100)", (), False),
    Template("walkers", "A school has {n0} pupils, {n1}% walk. How many walkers?",
             ("count", "percent"), "n0*n1/100", ("n0*n1 % 100 == 0",)),
    Template("shopping", "A pen is ${n0}, a book ${n1}. Cost of {n2} pens and a book?",
             ("price", "price", "small"), "n0*n2+n1", (), False),
    Template("drive", "A car goes {n0} miles a day for {n1} days. How many miles?",
             ("count", "small"), "n0*n1"),
    Template("savings", "Tom earns ${n0} a week, saves ${n1}, for {n2} weeks. How much spent?",
             ("price", "price", "small"), "(n0-n1)*n2", ("n1 <= n0",), False),
    Template("taller", "Mia is {n0} cm, Leo {n1} cm. How many cm taller is Mia?",
             ("count", "count"), "n0-n1", ("n1 <= n0",)),
    Template("orchard", "A farm has {n0} rows of {n1} trees; {n2} are cut. How many trees left?",
             ("count", "small", "count"), "n0*n1-n2", ("n2 <= n0*n1",)),
)


def template_by_name(name: str) -> Template:
    """The template called ``name`` in :data:`TEMPLATES`."""
    for template in TEMPLATES:
        if template.name == name:
            return template
    raise ValueError(f"name must be one of {[t.name for t in TEMPLATES]}, got {name!r}")


def slot_values(template: Template, values: Sequence[float]) -> dict[str, float]:
    """``{"n0": values[0], ...}``; raises if the number of values does not match the template's slots."""
    if len(values) != template.n_slots:
        raise ValueError(f"values must have {template.n_slots} entries for template {template.name!r}, "
                         f"got {len(values)}")
    return dict(zip(template.slot_names, values, strict=True))


def evaluate_expression(template: Template, values: Sequence[float]) -> float:
    """The reference answer: ``template.expression`` evaluated on ``values`` (trusted, in-process)."""
    return eval(template.expression, {"__builtins__": {}}, slot_values(template, values))  # noqa: S307


def satisfies_constraints(template: Template, values: Sequence[float]) -> bool:
    """True if ``values`` satisfy the template's explicit constraints (not its slot ranges)."""
    names = slot_values(template, values)
    return all(eval(c, {"__builtins__": {}}, names) for c in template.constraints)  # noqa: S307


def is_consistent(template: Template, values: Sequence[float]) -> bool:
    """Brute-force validity of a filled-in question: slot kinds respected and constraints satisfied.

    Every value is a whole number >= 1 and percentages are at most 99; the constraints hold; and the answer is a
    whole number when the question counts objects. This is the ground truth a generic filter is judged by.
    """
    for kind, value in zip(template.kinds, slot_values(template, values).values(), strict=True):
        if value != int(value):
            return False
        if kind == "percent" and not 1 <= value <= 99:
            return False
        if value < 1:
            return False
    if not satisfies_constraints(template, values):
        return False
    answer = evaluate_expression(template, values)
    return not template.counts_objects or math.isclose(answer, round(answer), abs_tol=1e-9)


def fill_question(template: Template, values: Sequence[float]) -> str:
    """The question text with the slots replaced by the values (whole numbers written without decimals)."""
    return template.question.format(**{k: format_number(v) for k, v in slot_values(template, values).items()})


def format_number(value: float) -> str:
    """``12`` for whole numbers, otherwise the shortest decimal representation."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def slot_ranges(template: Template, digits: int | None = None) -> list[tuple[int, int]]:
    """Inclusive ranges of the slots; with ``digits``, counts and prices get exactly that many digits."""
    ranges = []
    for kind in template.kinds:
        low, high = DEFAULT_RANGES[kind]
        if digits is not None and kind in ("count", "price"):
            low, high = 10 ** (digits - 1), 10**digits - 1
        ranges.append((low, high))
    return ranges


def draw_values(template: Template, ranges: Sequence[tuple[int, int]], rng: np.random.Generator) -> list[int]:
    """One value per slot, uniform on its range (percentages on multiples of 5)."""
    values = []
    for kind, (low, high) in zip(template.kinds, ranges, strict=True):
        if kind == "percent" and low % 5 == 0 and high % 5 == 0:
            values.append(int(rng.integers(low // 5, high // 5 + 1)) * 5)
        else:
            values.append(int(rng.integers(low, high + 1)))
    return values


@dataclass(frozen=True)
class Problem:
    """A filled-in question with its template, slot values and reference answer."""

    template: Template
    values: tuple[int, ...]
    question: str
    answer: float


def sample_problem(template: Template, rng: np.random.Generator, *, digits: int | None = None,
                   max_tries: int = 10_000) -> Problem:
    """A consistent problem of ``template`` with values drawn from :func:`slot_ranges` by rejection sampling."""
    check_generator(rng)
    if digits is not None:
        check_positive_int(digits, "digits")
    ranges = slot_ranges(template, digits)
    for _ in range(max_tries):
        values = draw_values(template, ranges, rng)
        if is_consistent(template, values):
            return Problem(template, tuple(values), fill_question(template, values),
                           evaluate_expression(template, values))
    raise RuntimeError(f"no consistent values for template {template.name!r} in {max_tries} tries")


def sample_problems(per_template: int, rng: np.random.Generator, *, templates: Sequence[Template] = TEMPLATES,
                    digits: int | None = None) -> list[Problem]:
    """``per_template`` consistent problems of every template, template by template."""
    check_positive_int(per_template, "per_template")
    return [sample_problem(t, rng, digits=digits) for t in templates for _ in range(per_template)]


def reference_program(template: Template) -> str:
    """``def solve(n0, n1, ...): return <expression>`` for the sandbox."""
    return f"def solve({', '.join(template.slot_names)}):\n    return {template.expression}\n"


def answers_match(value: object, gold: float, rel_tol: float = 1e-6) -> bool:
    """True if ``value`` is a finite number equal to ``gold`` up to a relative tolerance."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and math.isclose(value, gold, rel_tol=rel_tol, abs_tol=1e-9)

