"""A toy world of multi-step arithmetic "math problems" that stands in for a language model's data synthesis.

A *query* is a chain of modular operations on Z_p applied to a start value; its *level* (1-5) sets the chain
length (level + 2) and which skills it needs. A ``NoisySolver`` plays the synthesis model: it executes every step
but slips with a per-skill probability, writing a uniformly random value instead. A ``TableStudent`` plays the
fine-tuned model: a lookup table (state, op, operand) -> next state learned by majority vote from the steps of
the kept traces, which guesses uniformly where the data never showed it the way. This is our own simulation, not
the paper's setting: it isolates *which skills the synthetic data covers*.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lib.validation import check_generator, check_positive_int

OPS = ("+", "-", "*", "^")
OPERANDS = {"+": (1, 2, 3), "-": (1, 2, 3), "*": (2, 3, 4, 5, 6, 7), "^": (2, 3, 4, 5)}
LEVEL_OPS = {1: ("+", "-"), 2: ("+", "-"), 3: ("+", "-", "*"), 4: ("+", "-", "*"), 5: ("+", "-", "*", "^")}
REQUIRED_OP = {3: "*", 4: "*", 5: "^"}
DEFAULT_STEP_ACC = {"+": 0.97, "-": 0.95, "*": 0.70, "^": 0.45}


def _check_modulus(p: object) -> int:
    p = check_positive_int(p, "p", minimum=2)
    if any(p % d == 0 for d in range(2, int(p**0.5) + 1)):
        raise ValueError(f"p must be a prime, got {p}")
    return p


def apply_op(op: str, value: int | np.ndarray, operand: int, p: int) -> int | np.ndarray:
    """One exact step ``value op operand`` in Z_p (``^`` is the power); works on ints and integer arrays."""
    if op == "+":
        return (value + operand) % p
    if op == "-":
        return (value - operand) % p
    if op == "*":
        return (value * operand) % p
    if op == "^":
        return (value**operand) % p
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


@dataclass(frozen=True)
class Query:
    """A chain query: start at ``x0`` and apply ``steps`` = ((op, operand), ...) in Z_p."""

    level: int
    x0: int
    steps: tuple[tuple[str, int], ...]
    p: int

    @cached_property
    def answer(self) -> int:
        """The exact final value of the chain."""
        value = self.x0
        for op, operand in self.steps:
            value = apply_op(op, value, operand, self.p)
        return int(value)


def make_query(level: int, rng: np.random.Generator, p: int = 53) -> Query:
    """Draw a query of the given level (1-5): level + 2 steps, ops {+,-} at levels 1-2, {+,-,*} with at least one
    ``*`` at 3-4, {+,-,*,^} with at least one ``^`` at 5; operands uniform in ``OPERANDS[op]``."""
    level = check_positive_int(level, "level")
    if level not in LEVEL_OPS:
        raise ValueError(f"level must be in 1..5, got {level}")
    rng = check_generator(rng)
    p = _check_modulus(p)
    n_steps = level + 2
    allowed = LEVEL_OPS[level]
    ops = [allowed[i] for i in rng.integers(len(allowed), size=n_steps)]
    if level in REQUIRED_OP:
        ops[int(rng.integers(n_steps))] = REQUIRED_OP[level]
    steps = tuple((op, int(OPERANDS[op][rng.integers(len(OPERANDS[op]))])) for op in ops)
    return Query(level, int(rng.integers(p)), steps, p)


def make_queries(per_level: int, rng: np.random.Generator, p: int = 53) -> list[Query]:
    """``per_level`` queries of each level 1..5, in level order."""
    per_level = check_positive_int(per_level, "per_level")
    return [make_query(level, rng, p) for level in LEVEL_OPS for _ in range(per_level)]


def _check_step_acc(step_acc: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(step_acc, Mapping) or set(step_acc) != set(OPS):
        raise ValueError(f"step_acc must map exactly the ops {OPS} to accuracies")
    checked = {op: float(acc) for op, acc in step_acc.items()}
    if not all(0.0 <= acc <= 1.0 for acc in checked.values()):
        raise ValueError(f"every step accuracy must lie in [0, 1], got {checked}")
    return checked


@dataclass(frozen=True)
class NoisySolver:
    """The stand-in for the synthesis model: each step of a chain is executed exactly with probability
    ``step_acc[op]`` and otherwise replaced by a uniformly random value of Z_p (which may, by luck, be right)."""

    step_acc: Mapping[str, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_acc", _check_step_acc(self.step_acc))

    def sample(self, query: Query, rng: np.random.Generator) -> tuple[tuple[int, ...], bool]:
        """One solution trace (the states x0, x1, ..., xL) and whether its final answer is correct."""
        n_steps, p = len(query.steps), query.p
        uniforms = rng.random(2 * n_steps).tolist()  # one draw for "slip?", one for the random value
        states = [query.x0]
        for (op, operand), u, v in zip(query.steps, uniforms[:n_steps], uniforms[n_steps:], strict=True):
            states.append(apply_op(op, states[-1], operand, p) if u < self.step_acc[op] else int(v * p))
        return tuple(states), states[-1] == query.answer


def success_probability(query: Query, step_acc: Mapping[str, float]) -> float:
    """Exact probability that a ``NoisySolver`` trace ends on the right answer.

    Condition on the last slip: with none, the chain is exact (probability prod_i a_i); if the last slip is at
    step j, the state after it is uniform on Z_p and the exact steps j+1..L map it to the answer for
    ``count_j`` of the p values, so P = prod_i a_i + sum_j (1 - a_j) prod_{i>j} a_i count_j / p.
    """
    step_acc = _check_step_acc(step_acc)
    acc = np.array([step_acc[op] for op, _ in query.steps])
    answer, p = query.answer, query.p
    probability = float(np.prod(acc))
    for j in range(len(query.steps)):
        values = np.arange(p, dtype=np.int64)
        for op, operand in query.steps[j + 1 :]:
            values = apply_op(op, values, operand, p)
        lucky = np.count_nonzero(values == answer) / p
        probability += (1 - acc[j]) * float(np.prod(acc[j + 1 :])) * lucky
    return probability


class TableStudent:
    """The stand-in for the fine-tuned model: a table (state, op, operand) -> next state learned by majority vote
    over every step of the training traces (ties go to the smallest state); unseen entries are guessed
    uniformly at random on Z_p."""

    def __init__(self, p: int = 53) -> None:
        self.p = _check_modulus(p)
        self.table: dict[tuple[int, str, int], int] = {}

    def fit(self, traces: Iterable[tuple[Query, Sequence[int]]]) -> "TableStudent":
        """Learn the table from (query, states) pairs; ``states`` has one more entry than the query has steps."""
        votes: dict[tuple[int, str, int], Counter] = defaultdict(Counter)
        for query, states in traces:
            if not isinstance(query, Query) or query.p != self.p:
                raise ValueError(f"every trace must pair a Query over Z_{self.p} with its states")
            if len(states) != len(query.steps) + 1:
                raise ValueError(f"a trace of {len(query.steps)} steps needs {len(query.steps) + 1} states, "
                                 f"got {len(states)}")
            for (op, operand), before, after in zip(query.steps, states[:-1], states[1:], strict=True):
                votes[int(before), op, operand][int(after)] += 1
        self.table = {key: min(count, key=lambda state: (-count[state], state)) for key, count in votes.items()}
        return self

    def coverage(self, op: str) -> float:
        """Fraction of the (state, operand) entries of ``op`` that the training data showed."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        seen = sum(1 for _, table_op, _ in self.table if table_op == op)
        return seen / (self.p * len(OPERANDS[op]))

    def predict_step(self, state: int, op: str, operand: int, rng: np.random.Generator) -> int:
        """The learned next state, or a uniform guess for an entry never seen in training."""
        key = (int(state), op, int(operand))
        return self.table[key] if key in self.table else int(rng.integers(self.p))


def evaluate_chain(student: TableStudent, queries: Sequence[Query], rng: np.random.Generator) -> np.ndarray:
    """Compose the student's predicted steps along each query; return whether each final answer is right."""
    if not isinstance(student, TableStudent):
        raise TypeError(f"student must be a TableStudent, got {type(student).__name__}")
    rng = check_generator(rng)
    correct = np.zeros(len(queries), dtype=bool)
    for i, query in enumerate(queries):
        state = query.x0
        for op, operand in query.steps:
            state = student.predict_step(state, op, operand, rng)
        correct[i] = state == query.answer
    return correct
