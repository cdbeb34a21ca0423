"""Bidirectional synthesis of (problem text, optimisation model) pairs, in miniature (OptMATH).

Seed families of linear and integer programs generate *problem data* (PD) at a controlled size; a complexity score
measures each instance; a proportional controller tunes the generator until the scores fall in a target band; a
template writer turns PD into text ("back-translation") through a random corruption channel that stands in for the
slips of a language model; a template parser turns text back into a model ("forward modelling") through its own
slip channel; and a pair is accepted when a forward model's optimal objective matches the one of the PD.
No language model is involved anywhere: writer, critic and parser are deterministic templates plus explicit noise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from lib.validation import check_generator, check_positive_int

RELATIONS = ("<=", ">=", "=")
CORRUPTIONS = ("drop_constraint", "perturb_coefficient", "flip_relation", "flip_sense", "drop_integrality")


# --------------------------------------------------------------------------------------------------- problem data
@dataclass(frozen=True)
class ProblemData:
    """A linear or mixed-integer program ``sense c.x`` s.t. ``A[i].x rel[i] b[i]``, ``0 <= x <= ub``.

    ``integrality[j]`` is 1 for an integer variable (binary when ``ub[j] == 1``) and 0 for a continuous one;
    ``ub`` may hold ``inf``. ``var_names`` and ``con_names`` name the entities the text talks about.
    """

    family: str
    sense: str
    c: np.ndarray
    A: np.ndarray
    b: np.ndarray
    rel: tuple[str, ...]
    ub: np.ndarray
    integrality: np.ndarray
    var_names: tuple[str, ...]
    con_names: tuple[str, ...]
    objective_noun: str = "cost"

    def __post_init__(self) -> None:
        if self.sense not in ("min", "max"):
            raise ValueError(f"sense must be 'min' or 'max', got {self.sense!r}")
        m, n = np.shape(self.A)
        if np.shape(self.c) != (n,) or np.shape(self.ub) != (n,) or np.shape(self.integrality) != (n,):
            raise ValueError(f"c, ub and integrality must have shape ({n},) to match A with {n} columns")
        if np.shape(self.b) != (m,) or len(self.rel) != m or len(self.con_names) != m:
            raise ValueError(f"b, rel and con_names must have length {m} to match A with {m} rows")
        if len(self.var_names) != n:
            raise ValueError(f"var_names must have length {n}")
        if any(r not in RELATIONS for r in self.rel):
            raise ValueError(f"rel entries must be in {RELATIONS}, got {set(self.rel)}")

    @property
    def n_vars(self) -> int:
        return len(self.c)

    @property
    def n_cons(self) -> int:
        return len(self.b)

    def same_model(self, other: ProblemData) -> bool:
        """True if ``other`` is exactly the same mathematical model (names and numbers)."""
        return (
            self.sense == other.sense and self.rel == other.rel and self.var_names == other.var_names
            and self.con_names == other.con_names and np.shape(self.A) == np.shape(other.A)
            and np.array_equal(self.c, other.c) and np.array_equal(self.A, other.A)
            and np.array_equal(self.b, other.b) and np.array_equal(self.ub, other.ub)
            and np.array_equal(self.integrality, other.integrality)
        )


def _r2(x: np.ndarray | float) -> np.ndarray | float:
    return np.round(x, 2)


# --------------------------------------------------------------------------------------------------- seed families
@dataclass
class SeedFamily:
    """A seed formulation with an instance generator; ``sizes`` maps each size parameter to its (low, high) range."""

    name: str
    sizes: dict[str, tuple[int, int]]

    def draw_sizes(self, rng: np.random.Generator) -> dict[str, int]:
        return {k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in self.sizes.items()}

    def generate(self, rng: np.random.Generator, sizes: dict[str, int] | None = None) -> ProblemData:
        """Draw one instance (sizes drawn from the ranges unless given)."""
        check_generator(rng)
        sizes = self.draw_sizes(rng) if sizes is None else sizes
        for k in self.sizes:
            check_positive_int(sizes.get(k), f"sizes[{k!r}]")
        return self._build(rng, **sizes)

    def _build(self, rng: np.random.Generator, **sizes: int) -> ProblemData:  # pragma: no cover - abstract
        raise NotImplementedError


class DietLP(SeedFamily):
    """Choose food amounts of least cost with each nutrient between 30% and 80% of its total and a volume cap."""

    def __init__(self, sizes: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__("diet", sizes or {"n_foods": (5, 10), "n_nutrients": (3, 5)})

    def _build(self, rng, n_foods: int, n_nutrients: int) -> ProblemData:
        cost = rng.integers(1, 11, n_foods).astype(float)
        content = rng.integers(1, 51, (n_nutrients, n_foods)).astype(float)
        volume = rng.integers(1, 6, n_foods).astype(float)
        total = content.sum(axis=1)
        A = np.vstack([content, content, volume[None, :]])
        b = _r2(np.concatenate([0.3 * total, 0.8 * total, [0.7 * volume.sum()]]))
        rel = (">=",) * n_nutrients + ("<=",) * n_nutrients + ("<=",)
        names = tuple(f"food {j + 1}" for j in range(n_foods))
        cons = (tuple(f"nutrient {i + 1} minimum" for i in range(n_nutrients))
                + tuple(f"nutrient {i + 1} maximum" for i in range(n_nutrients)) + ("volume",))
        return ProblemData(self.name, "min", cost, A, b, rel, np.full(n_foods, np.inf), np.zeros(n_foods, int),
                           names, cons, "cost")


class ProductionMIP(SeedFamily):
    """Integer production plan of most profit under resource capacities and a minimum total output."""

    def __init__(self, sizes: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__("production", sizes or {"n_products": (3, 6), "n_resources": (2, 4)})

    def _build(self, rng, n_products: int, n_resources: int) -> ProblemData:
        profit = rng.integers(5, 31, n_products).astype(float)
        use = rng.integers(1, 11, (n_resources, n_products)).astype(float)
        ub = rng.integers(5, 21, n_products).astype(float)
        cap = np.round(0.4 * use @ ub)
        A = np.vstack([use, np.ones((1, n_products))])
        b = np.concatenate([cap, [np.round(0.2 * ub.sum())]])
        rel = ("<=",) * n_resources + (">=",)
        names = tuple(f"product {j + 1}" for j in range(n_products))
        cons = tuple(f"resource {i + 1}" for i in range(n_resources)) + ("total output",)
        return ProblemData(self.name, "max", profit, A, b, rel, ub, np.ones(n_products, int), names, cons,
                           "profit")


class Knapsack01(SeedFamily):
    """Multi-dimensional 0/1 knapsack: pick items of most value, each weight dimension within half its total."""

    def __init__(self, sizes: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__("knapsack", sizes or {"n_items": (8, 15), "n_dims": (1, 2)})

    def _build(self, rng, n_items: int, n_dims: int) -> ProblemData:
        value = rng.integers(10, 101, n_items).astype(float)
        weight = rng.integers(1, 31, (n_dims, n_items)).astype(float)
        b = np.round(0.5 * weight.sum(axis=1))
        names = tuple(f"item {j + 1}" for j in range(n_items))
        cons = tuple(f"weight {i + 1}" for i in range(n_dims))
        return ProblemData(self.name, "max", value, weight, b, ("<=",) * n_dims, np.ones(n_items),
                           np.ones(n_items, int), names, cons, "value")


class TransportLP(SeedFamily):
    """Ship goods from sources (supply caps) to sinks (demands) at least cost."""

    def __init__(self, sizes: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__("transport", sizes or {"n_sources": (2, 4), "n_sinks": (3, 5)})

    def _build(self, rng, n_sources: int, n_sinks: int) -> ProblemData:
        cost = rng.integers(1, 21, (n_sources, n_sinks)).astype(float)
        demand = rng.integers(10, 51, n_sinks).astype(float)
        share = rng.dirichlet(np.ones(n_sources))
        supply = np.ceil(1.2 * demand.sum() * share) + 1.0
        n = n_sources * n_sinks
        A = np.zeros((n_sources + n_sinks, n))
        for i in range(n_sources):
            A[i, i * n_sinks:(i + 1) * n_sinks] = 1.0
        for j in range(n_sinks):
            A[n_sources + j, j::n_sinks] = 1.0
        names = tuple(f"route S{i + 1}-D{j + 1}" for i in range(n_sources) for j in range(n_sinks))
        cons = tuple(f"supply S{i + 1}" for i in range(n_sources)) + tuple(f"demand D{j + 1}" for j in range(n_sinks))
        rel = ("<=",) * n_sources + (">=",) * n_sinks
        return ProblemData(self.name, "min", cost.ravel(), A, np.concatenate([supply, demand]), rel,
                           np.full(n, np.inf), np.zeros(n, int), names, cons, "cost")


def seed_families() -> list[SeedFamily]:
    """The four seed families with their default (official-like, small) size ranges."""
    return [DietLP(), ProductionMIP(), Knapsack01(), TransportLP()]


# --------------------------------------------------------------------------------------------------- solving
def solve(pd: ProblemData) -> tuple[str, float]:
    """Solve with HiGHS (``scipy.optimize.milp``); return (status, objective in the problem's own sense).

    status is one of 'optimal', 'infeasible', 'unbounded', 'error'; objective is nan unless optimal.
    """
    if not isinstance(pd, ProblemData):
        raise TypeError(f"pd must be a ProblemData, got {type(pd).__name__}")
    sign = 1.0 if pd.sense == "min" else -1.0
    rel = np.array(pd.rel)
    lo = np.where(rel == "<=", -np.inf, pd.b)
    hi = np.where(rel == ">=", np.inf, pd.b)
    cons = [LinearConstraint(pd.A, lo, hi)] if pd.n_cons else []
    res = milp(sign * pd.c, constraints=cons, integrality=pd.integrality, bounds=Bounds(0.0, pd.ub))
    if res.status == 0:
        return "optimal", float(sign * res.fun)
    return {2: "infeasible", 3: "unbounded"}.get(res.status, "error"), float("nan")


# --------------------------------------------------------------------------------------------------- complexity
@dataclass(frozen=True)
class ComplexityWeights:
    """Weights of the complexity score (the defaults of the official scorer)."""

    binary: float = 1.0
    integer: float = 1.5
    continuous: float = 0.5
    linear: float = 0.5
    indicator: float = 2.0
    quadratic: float = 2.5
    general: float = 3.0
    big_m: float = 5.0
    expr_length: float = 0.1


def complexity_score(pd: ProblemData, w: ComplexityWeights = ComplexityWeights()) -> float:
    """S = a_bin N_bin + a_int N_int + a_cont N_cont + b_lin N_lin + d_expr L_avg (+ terms that are 0 here).

    Our families have only linear constraints and no Big-M, indicator, quadratic or general constraints, so those
    terms vanish. L_avg is the mean number of nonzero terms per constraint.
    """
    if not isinstance(pd, ProblemData):
        raise TypeError(f"pd must be a ProblemData, got {type(pd).__name__}")
    is_int = pd.integrality == 1
    n_bin = int(np.sum(is_int & (pd.ub == 1)))
    n_int = int(np.sum(is_int)) - n_bin
    n_cont = pd.n_vars - n_bin - n_int
    l_avg = float(np.count_nonzero(pd.A, axis=1).mean()) if pd.n_cons else 0.0
    return (w.binary * n_bin + w.integer * n_int + w.continuous * n_cont + w.linear * pd.n_cons
            + w.expr_length * l_avg)


# --------------------------------------------------------------------------------------------------- feedback control
@dataclass
class FeedbackTrace:
    """What the controller saw: per iteration the size ranges used and the scores of the batch."""

    ranges: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    feasible: list[np.ndarray] = field(default_factory=list)
    kept: list[ProblemData] = field(default_factory=list)


def in_band(scores: np.ndarray, target: tuple[float, float]) -> np.ndarray:
    return (np.asarray(scores) >= target[0]) & (np.asarray(scores) <= target[1])


def feedback_generate(family: SeedFamily, rng: np.random.Generator, target: tuple[float, float] = (12.0, 36.0),
                      n_per_iter: int = 10, max_iter: int = 5, min_share: float = 1.0
                      ) -> tuple[SeedFamily, FeedbackTrace]:
    """Tune ``family``'s size ranges from batch feedback (our stand-in for the LLM of Algorithm 1).

    Each iteration draws ``n_per_iter`` instances, keeps the feasible ones whose score is in ``target``, and
    stops once a share >= ``min_share`` of the batch (by default all of it) is feasible and in the band. Otherwise
    it rescales every range end by (target_mid / batch mean)^(1/k), k the number of size parameters (the score
    grows roughly like the product of the sizes), and, if the batch's scores spread wider than the band
    (max/min above high/low), it also halves each range's width around its centre. Returns the tuned family and
    the trace (``trace.kept``).
    """
    check_generator(rng)
    check_positive_int(n_per_iter, "n_per_iter")
    check_positive_int(max_iter, "max_iter")
    if not (0 < target[0] < target[1]):
        raise ValueError(f"target must be (low, high) with 0 < low < high, got {target}")
    fam = type(family)(dict(family.sizes))
    trace = FeedbackTrace()
    mid = 0.5 * (target[0] + target[1])
    for _ in range(max_iter):
        batch = [fam.generate(rng) for _ in range(n_per_iter)]
        scores = np.array([complexity_score(p) for p in batch])
        feas = np.array([solve(p)[0] == "optimal" for p in batch])
        good = feas & in_band(scores, target)
        trace.ranges.append(dict(fam.sizes))
        trace.scores.append(scores)
        trace.feasible.append(feas)
        trace.kept += [p for p, ok in zip(batch, good, strict=True) if ok]
        if good.mean() >= min_share:
            break
        factor = (mid / scores.mean()) ** (1.0 / len(fam.sizes))
        narrow = 0.5 if scores.max() / scores.min() > target[1] / target[0] else 1.0
        new = {}
        for k, (lo, hi) in fam.sizes.items():
            centre, half = factor * (lo + hi) / 2, narrow * factor * (hi - lo) / 2
            new[k] = (max(1, round(centre - half)), max(1, round(centre + half)))
        fam = type(fam)(new)
    return fam, trace


# --------------------------------------------------------------------------------------------------- corruption
def corrupt(pd: ProblemData, rng: np.random.Generator, kind: str | None = None) -> tuple[ProblemData, str]:
    """Apply one slip to the model: drop a constraint, perturb a coefficient by +-20%, flip a <=/>=,
    swap min/max, or drop integrality (only kinds that apply to ``pd`` are drawn). Returns (model, kind)."""
    check_generator(rng)
    kinds = applicable_corruptions(pd)
    if kind is None:
        kind = kinds[int(rng.integers(len(kinds)))]
    elif kind not in kinds:
        raise ValueError(f"kind must be one of {kinds} for this problem, got {kind!r}")
    if kind == "drop_constraint":
        i = int(rng.integers(pd.n_cons))
        keep = np.arange(pd.n_cons) != i
        return replace(pd, A=pd.A[keep], b=pd.b[keep], rel=tuple(np.array(pd.rel)[keep]),
                       con_names=tuple(np.array(pd.con_names)[keep])), kind
    if kind == "perturb_coefficient":
        factor = 1.2 if rng.random() < 0.5 else 0.8
        rows, cols = np.nonzero(pd.A)
        k = int(rng.integers(pd.n_vars + len(rows)))
        if k < pd.n_vars:
            c = pd.c.copy()
            c[k] = _r2(c[k] * factor)
            return replace(pd, c=c), kind
        A = pd.A.copy()
        A[rows[k - pd.n_vars], cols[k - pd.n_vars]] = _r2(A[rows[k - pd.n_vars], cols[k - pd.n_vars]] * factor)
        return replace(pd, A=A), kind
    if kind == "flip_relation":
        idx = [i for i, r in enumerate(pd.rel) if r != "="]
        i = idx[int(rng.integers(len(idx)))]
        rel = list(pd.rel)
        rel[i] = "<=" if rel[i] == ">=" else ">="
        return replace(pd, rel=tuple(rel)), kind
    if kind == "flip_sense":
        return replace(pd, sense="max" if pd.sense == "min" else "min"), kind
    return replace(pd, integrality=np.zeros(pd.n_vars, int)), kind


def applicable_corruptions(pd: ProblemData) -> tuple[str, ...]:
    kinds = ["perturb_coefficient", "flip_sense"]
    if pd.n_cons:
        kinds.insert(0, "drop_constraint")
    if any(r != "=" for r in pd.rel):
        kinds.append("flip_relation")
    if pd.integrality.any():
        kinds.append("drop_integrality")
    return tuple(k for k in CORRUPTIONS if k in kinds)


# --------------------------------------------------------------------------------------------------- text writer
def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.2f}".rstrip("0").rstrip(".")


_STORY = {"diet": "A dietitian plans a daily menu.", "production": "A workshop plans next week's production.",
          "knapsack": "A hiker packs a rucksack.", "transport": "A company ships goods from depots to shops."}
_GOAL = {"min": ("The goal is to minimise the total {n}.", "Find the plan with the lowest total {n}."),
         "max": ("The goal is to maximise the total {n}.", "Find the plan with the highest total {n}.")}
_VAR = ("Each unit of '{v}' adds {c} to the {n}.", "Decision '{v}' has {n} {c} per unit.")
_REL = {"<=": ("must not exceed", "can be at most"), ">=": ("must be at least", "has to reach"),
        "=": ("must equal exactly", "must equal exactly")}
_ROW = ("Limit '{r}': {terms} {rel} {b}.", "Requirement '{r}': the total of {terms} {rel} {b}.")


def write_text(pd: ProblemData, rng: np.random.Generator) -> str:
    """Describe ``pd`` in our template language (a phrasing drawn at random for each sentence)."""
    check_generator(rng)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    lines = [_STORY.get(pd.family, "A planner has a decision to make."), "All quantities are non-negative.",
             pick(_GOAL[pd.sense]).format(n=pd.objective_noun)]
    for j, v in enumerate(pd.var_names):
        lines.append(pick(_VAR).format(v=v, c=_num(pd.c[j]), n=pd.objective_noun))
        if pd.integrality[j] and pd.ub[j] == 1:
            lines.append(f"'{v}' is a yes-or-no choice.")
            continue
        if np.isfinite(pd.ub[j]):
            lines.append(f"'{v}' can be at most {_num(pd.ub[j])}.")
        if pd.integrality[j]:
            lines.append(f"'{v}' must be a whole number.")
    for i, r in enumerate(pd.con_names):
        terms = ", ".join(f"{_num(a)} per unit of '{pd.var_names[j]}'" for j, a in enumerate(pd.A[i]) if a != 0)
        lines.append(pick(_ROW).format(r=r, terms=terms, rel=pick(_REL[pd.rel[i]]), b=_num(pd.b[i])))
    return "\n".join(lines)


@dataclass(frozen=True)
class Translation:
    """A back-translated problem text with its ground truth: was the text faithful, and which slip if not."""

    text: str
    faithful: bool
    corruption: str | None
    described: ProblemData


def back_translate(pd: ProblemData, rng: np.random.Generator, err_rate: float) -> Translation:
    """Write ``pd`` as text; with probability ``err_rate`` the writer slips once (see :func:`corrupt`)."""
    check_generator(rng)
    if not 0.0 <= err_rate <= 1.0:
        raise ValueError(f"err_rate must be in [0, 1], got {err_rate}")
    if rng.random() < err_rate:
        described, kind = corrupt(pd, rng)
        return Translation(write_text(described, rng), False, kind, described)
    return Translation(write_text(pd, rng), True, None, pd)


def self_refine(pd: ProblemData, tr: Translation, rng: np.random.Generator, rounds: int = 3,
                fix_prob: float = 0.5) -> Translation:
    """Critic-and-refine rounds: each round a critic that compares text and PD spots an existing slip with
    probability ``fix_prob`` and the writer rewrites the text faithfully."""
    check_generator(rng)
    check_positive_int(rounds, "rounds", minimum=0)
    if not 0.0 <= fix_prob <= 1.0:
        raise ValueError(f"fix_prob must be in [0, 1], got {fix_prob}")
    for _ in range(rounds):
        if tr.faithful:
            break
        if rng.random() < fix_prob:
            tr = Translation(write_text(pd, rng), True, None, pd)
    return tr


# --------------------------------------------------------------------------------------------------- text parser
_RE_GOAL = re.compile(r"(minimise|lowest|maximise|highest) (?:the )?total (.+?)\.$")
_RE_VAR = re.compile(r"^(?:Each unit of '(.+?)' adds (\S+) to the .+|Decision '(.+?)' has .+ (\S+) per unit)\.$")
_RE_UB = re.compile(r"^'(.+?)' can be at most (\S+)\.$")
_RE_ROW = re.compile(r"^(?:Limit|Requirement) '(.+?)': (?:the total of )?(.+) "
                     r"(must not exceed|can be at most|must be at least|has to reach|must equal exactly) (\S+)\.$")
_RE_TERM = re.compile(r"(\S+) per unit of '(.+?)'")
_REL_OF = {p: r for r, ps in _REL.items() for p in ps}
_FAMILY_OF = {s: f for f, s in _STORY.items()}


def parse_text(text: str) -> ProblemData:
    """Read a text of our template language back into a model (raises ValueError if it has no goal)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    sense, noun, family = None, "cost", "unknown"
    c: dict[str, float] = {}
    ub: dict[str, float] = {}
    integer: set[str] = set()
    rows: list[tuple[str, dict[str, float], str, float]] = []
    for line in text.splitlines():
        if line in _FAMILY_OF:
            family = _FAMILY_OF[line]
        elif m := _RE_GOAL.search(line):
            sense, noun = ("min" if m.group(1) in ("minimise", "lowest") else "max"), m.group(2)
        elif m := _RE_VAR.match(line):
            name, val = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            c[name] = float(val)
        elif m := _RE_UB.match(line):
            ub[m.group(1)] = float(m.group(2))
        elif line.endswith("' must be a whole number."):
            integer.add(line[1:-len("' must be a whole number.")])
        elif line.endswith("' is a yes-or-no choice."):
            name = line[1:-len("' is a yes-or-no choice.")]
            integer.add(name)
            ub[name] = 1.0
        elif m := _RE_ROW.match(line):
            coefs = {v: float(a) for a, v in _RE_TERM.findall(m.group(2))}
            rows.append((m.group(1), coefs, _REL_OF[m.group(3)], float(m.group(4))))
    if sense is None:
        raise ValueError("text has no objective sentence")
    names = tuple(c)
    index = {v: j for j, v in enumerate(names)}
    A = np.zeros((len(rows), len(names)))
    for i, (_, coefs, _, _) in enumerate(rows):
        for v, a in coefs.items():
            A[i, index[v]] = a
    return ProblemData(family, sense, np.array([c[v] for v in names]), A, np.array([r[3] for r in rows]),
                       tuple(r[2] for r in rows), np.array([ub.get(v, np.inf) for v in names]),
                       np.array([int(v in integer) for v in names]), names, tuple(r[0] for r in rows), noun)


def forward_model(text: str, rng: np.random.Generator, n_samples: int = 3, slip: float = 0.1) -> list[ProblemData]:
    """Stand-in for an LLM modeller sampled ``n_samples`` times: parse the text, then each sample slips once
    with probability ``slip`` (same slip kinds as the writer)."""
    check_generator(rng)
    check_positive_int(n_samples, "n_samples")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must be in [0, 1], got {slip}")
    parsed = parse_text(text)
    return [corrupt(parsed, rng)[0] if rng.random() < slip else parsed for _ in range(n_samples)]


# --------------------------------------------------------------------------------------------------- acceptance
def objectives_match(gt: tuple[str, float], pred: tuple[str, float], rtol: float = 0.05) -> bool:
    """Official-style check on rounded objectives: |round(p) - round(g)| <= rtol |round(g)| (<= rtol if
    round(g) == 0); a non-optimal status matches only the same status."""
    if gt[0] != "optimal" or pred[0] != "optimal":
        return gt[0] == pred[0]
    g, p = round(gt[1]), round(pred[1])
    return abs(p - g) <= (rtol * abs(g) if g != 0 else rtol)


def accept(gt: tuple[str, float], preds: list[tuple[str, float]], rtol: float = 0.05, rule: str = "any") -> bool:
    """Accept a pair if any (``rule='any'``) or a strict majority (``'majority'``) of the forward models match."""
    if rule not in ("any", "majority"):
        raise ValueError(f"rule must be 'any' or 'majority', got {rule!r}")
    if not preds:
        raise ValueError("preds must be non-empty")
    if not rtol >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    hits = sum(objectives_match(gt, p, rtol) for p in preds)
    return hits >= 1 if rule == "any" else hits > len(preds) / 2


# --------------------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class PairRecord:
    """One synthesised pair: the PD's score and optimum ``gt``, the text's truth flag and slip, the forward
    models' optima ``preds``, and the optimum of the model the text actually describes."""

    family: str
    score: float
    gt: tuple[str, float]
    faithful: bool
    corruption: str | None
    preds: tuple[tuple[str, float], ...]
    described: tuple[str, float]
    text_length: int


class SolveCache:
    """Memoised :func:`solve`: a forward model identical to an already-solved model is not solved again."""

    def __init__(self) -> None:
        self._store: dict[bytes, tuple[str, float]] = {}
        self.calls = 0

    def __call__(self, pd: ProblemData) -> tuple[str, float]:
        key = repr((pd.sense, pd.rel)).encode() + b"".join(
            np.ascontiguousarray(a, dtype=float).tobytes() for a in (pd.c, pd.A, pd.b, pd.ub, pd.integrality))
        key += str(pd.A.shape).encode()
        if key not in self._store:
            self.calls += 1
            self._store[key] = solve(pd)
        return self._store[key]


def synthesize_pairs(pds: list[ProblemData], rng: np.random.Generator, err_rate: float = 0.3,
                     n_samples: int = 3, slip: float = 0.1, refine_rounds: int = 0, fix_prob: float = 0.5,
                     cache: SolveCache | None = None) -> list[PairRecord]:
    """Back-translate every PD (optionally self-refine), forward-model it ``n_samples`` times, and solve all."""
    check_generator(rng)
    cache = cache or SolveCache()
    records = []
    for pd in pds:
        tr = back_translate(pd, rng, err_rate)
        if refine_rounds:
            tr = self_refine(pd, tr, rng, refine_rounds, fix_prob)
        preds = tuple(cache(m) for m in forward_model(tr.text, rng, n_samples, slip))
        records.append(PairRecord(pd.family, complexity_score(pd), cache(pd), tr.faithful, tr.corruption, preds,
                                  cache(tr.described), len(tr.text)))
    return records


def split_accepted(records: list[PairRecord], rtol: float = 0.05, rule: str = "any",
                   n_samples: int | None = None) -> np.ndarray:
    """Boolean mask of accepted records (using only the first ``n_samples`` forward models if given)."""
    return np.array([accept(r.gt, list(r.preds[:n_samples]), rtol, rule) for r in records], dtype=bool)


def same_optimum(a: tuple[str, float], b: tuple[str, float], rel: float = 1e-6) -> bool:
    """True if two solve results are the same status and (if optimal) the same objective up to ``rel``."""
    if a[0] != b[0]:
        return False
    return a[0] != "optimal" or abs(a[1] - b[1]) <= rel * max(1.0, abs(a[1]))
