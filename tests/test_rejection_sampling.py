"""Tests of lib/rejection_sampling.py and lib/toy_chains.py.

Oracles: the noisy solver's per-step accuracy a + (1 - a)/p and per-query success rate against the closed form
of ``success_probability``, itself checked against brute-force enumeration of every step outcome; the VRT count
per query against ``scipy.stats.binom``; DARS trials per query against a truncated ``scipy.stats.nbinom`` sum;
the official stopping rule and the Prop2Diff targets on hand cases; the table student against every entry of
fully covered tables."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lib.rejection_sampling import (
    SynthesisResult,
    dars,
    dars_finished,
    dars_prop2diff_targets,
    dars_uniform_targets,
    estimate_fail_rate,
    vanilla_rejection_sampling,
)
from lib.toy_chains import (
    DEFAULT_STEP_ACC,
    LEVEL_OPS,
    OPERANDS,
    OPS,
    NoisySolver,
    Query,
    TableStudent,
    apply_op,
    evaluate_chain,
    make_queries,
    make_query,
    success_probability,
)


def bernoulli_sampler(probabilities):
    """A sampler over query indices whose responses are correct with the given probabilities."""
    return lambda index, rng: (index, bool(rng.random() < probabilities[index]))


def within(observed, expected, sd, z=4.5):
    return abs(observed - expected) <= z * sd


# ---------------------------------------------------------------- the toy world


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_make_query_follows_the_level_rules(level):
    rng = np.random.default_rng(level)
    for _ in range(200):
        query = make_query(level, rng)
        ops = [op for op, _ in query.steps]
        assert query.level == level and len(query.steps) == level + 2 and 0 <= query.x0 < 53
        assert set(ops) <= set(LEVEL_OPS[level])
        assert all(operand in OPERANDS[op] for op, operand in query.steps)
        if level >= 3:
            assert ("*" if level < 5 else "^") in ops
        value = query.x0
        for op, operand in query.steps:
            value = {"+": value + operand, "-": value - operand, "*": value * operand,
                     "^": pow(value, operand, 53)}[op] % 53
        assert query.answer == value


def test_make_queries_orders_levels_and_is_seeded():
    queries = make_queries(4, np.random.default_rng(0))
    assert [q.level for q in queries] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4
    assert queries == make_queries(4, np.random.default_rng(0))


def brute_force_success(query, step_acc):
    """Sum over every outcome of every step: exact (weight a) or a slip to value v (weight (1 - a)/p)."""
    p, total = query.p, 0.0
    outcomes = [[None, *range(p)] for _ in query.steps]
    for choice in itertools.product(*outcomes):
        weight, value = 1.0, query.x0
        for (op, operand), slip in zip(query.steps, choice, strict=True):
            acc = step_acc[op]
            if slip is None:
                weight *= acc
                value = apply_op(op, value, operand, p)
            else:
                weight *= (1 - acc) / p
                value = slip
        total += weight * (value == query.answer)
    return total


@pytest.mark.parametrize("seed", range(6))
def test_success_probability_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    step_acc = dict(zip(OPS, rng.uniform(0.2, 0.95, size=4), strict=True))
    level = [1, 1, 2, 3, 3, 5][seed]
    # short chains over a small prime keep the enumeration small; level 5 is cut to 3 steps
    query = make_query(level, rng, p=7 if level == 5 else 11)
    if len(query.steps) > 4:
        query = Query(level, query.x0, query.steps[:3], query.p)
    assert success_probability(query, step_acc) == pytest.approx(brute_force_success(query, step_acc), abs=1e-12)


def test_success_probability_counts_non_bijective_lucky_guesses():
    # x -> x^2 on Z_7 maps {3, 4} to 2: a slip just before it is lucky with probability 2/7
    query = Query(5, 3, (("+", 0), ("^", 2)), 7)
    step_acc = {"+": 0.5, "-": 1.0, "*": 1.0, "^": 1.0}
    assert query.answer == 2 and success_probability(query, step_acc) == pytest.approx(0.5 + 0.5 * 2 / 7)


def test_solver_per_step_accuracy_and_success_rate():
    rng = np.random.default_rng(1)
    solver = NoisySolver(DEFAULT_STEP_ACC)
    for op in OPS:
        query = Query(5, 10, ((op, OPERANDS[op][1]),), 53)
        hits = sum(solver.sample(query, rng)[1] for _ in range(4000))
        a = DEFAULT_STEP_ACC[op]
        expected = a + (1 - a) / 53
        assert within(hits / 4000, expected, np.sqrt(expected * (1 - expected) / 4000))
    for query in make_queries(2, rng):
        traces = [solver.sample(query, rng) for _ in range(3000)]
        assert all(len(states) == len(query.steps) + 1 and states[0] == query.x0 for states, _ in traces)
        assert all(correct == (states[-1] == query.answer) for states, correct in traces)
        rate, exact = np.mean([c for _, c in traces]), success_probability(query, DEFAULT_STEP_ACC)
        assert within(rate, exact, np.sqrt(exact * (1 - exact) / 3000) + 1e-9)


def test_perfect_solver_is_always_right():
    rng = np.random.default_rng(2)
    solver = NoisySolver(dict.fromkeys(OPS, 1.0))
    for query in make_queries(3, rng):
        states, correct = solver.sample(query, rng)
        assert correct and success_probability(query, dict.fromkeys(OPS, 1.0)) == 1.0


def test_table_student_is_exact_on_fully_covered_tables():
    p = 11
    traces = []
    for op in OPS:
        for operand in OPERANDS[op]:
            for state in range(p):
                query = Query(5, state, ((op, operand),), p)
                traces.append((query, (state, apply_op(op, state, operand, p))))
    student = TableStudent(p).fit(traces)
    rng = np.random.default_rng(0)
    for op in OPS:
        assert student.coverage(op) == 1.0
        for operand in OPERANDS[op]:
            for state in range(p):
                assert student.predict_step(state, op, operand, rng) == apply_op(op, state, operand, p)
    queries = make_queries(20, rng, p=p)
    assert evaluate_chain(student, queries, rng).all()


def test_table_student_majority_vote_ties_and_unseen_entries():
    query = Query(1, 4, (("+", 1),), 53)
    student = TableStudent().fit([(query, (4, 5)), (query, (4, 9)), (query, (4, 9)), (query, (4, 2)),
                                  (query, (4, 2))])
    assert student.table == {(4, "+", 1): 2}  # 9 and 2 tie with two votes; the smaller state wins
    assert student.coverage("+") == pytest.approx(1 / (53 * 3)) and student.coverage("^") == 0.0
    guesses = [student.predict_step(0, "^", 2, np.random.default_rng(s)) for s in range(400)]
    assert 40 <= len(set(guesses)) <= 53  # unseen entries are guessed uniformly on Z_53
    empty = TableStudent()
    accuracy = evaluate_chain(empty, make_queries(200, np.random.default_rng(3)), np.random.default_rng(4)).mean()
    assert within(accuracy, 1 / 53, np.sqrt(1 / 53 / 1000))


# ---------------------------------------------------------------- rejection sampling


def test_vrt_counts_are_binomial():
    rng = np.random.default_rng(5)
    probabilities = np.array([0.05, 0.3, 0.8])
    n, repeats = 8, 3000
    counts = np.array([vanilla_rejection_sampling(range(3), bernoulli_sampler(probabilities), n, rng).n_kept
                       for _ in range(repeats)])
    for q, prob in enumerate(probabilities):
        law = stats.binom(n, prob)
        assert within(counts[:, q].mean(), law.mean(), law.std() / np.sqrt(repeats))
        zero = law.pmf(0)
        assert within((counts[:, q] == 0).mean(), zero, np.sqrt(zero * (1 - zero) / repeats))


def test_vrt_keeps_exactly_the_correct_responses():
    rng = np.random.default_rng(6)
    solver = NoisySolver(DEFAULT_STEP_ACC)
    queries = make_queries(3, rng)
    result = vanilla_rejection_sampling(queries, solver.sample, 5, rng)
    assert isinstance(result, SynthesisResult) and (result.n_trials == 5).all()
    assert len(result.data) == result.n_kept.sum()
    assert all(states[-1] == queries[i].answer for i, states in result.data)
    assert np.array_equal(np.bincount([i for i, _ in result.data], minlength=len(queries)), result.n_kept)


@pytest.mark.parametrize(("n_trials", "n_correct", "goal", "cap", "expected"), [
    (0, 0, 5, 10, None),
    (9, 5, 5, 10, None),               # the goal must be exceeded, not just reached
    (9, 6, 5, 10, "min_n_correct"),
    (10, 0, 5, 10, "max_trials"),
    (10, 6, 5, 10, "max_trials"),      # the cap is checked first
    (500, 3, 5, 0, None),              # a non-positive cap means no cap
    (7, 7, 0, 8, None),                # a non-positive goal means sample until the cap
    (8, 7, 0, 8, "max_trials"),
    (3, 2, 1, 0, "min_n_correct"),
])
def test_dars_stopping_rule_on_hand_cases(n_trials, n_correct, goal, cap, expected):
    assert dars_finished(n_trials, n_correct, goal, cap) == expected


def test_dars_trials_follow_truncated_negative_binomial():
    rng = np.random.default_rng(7)
    probabilities = np.array([0.9, 0.4, 0.1, 0.02])
    goal, cap, repeats = 3, 40, 1500
    runs = [dars(range(4), bernoulli_sampler(probabilities), np.full(4, goal), cap, rng) for _ in range(repeats)]
    trials = np.array([r.n_trials for r in runs])
    for q, prob in enumerate(probabilities):
        # T = (goal + 1) + failures before the (goal + 1)-th success; E[min(T, cap)] = sum_{t < cap} P(T > t)
        survival = [stats.nbinom.sf(t - (goal + 1), goal + 1, prob) for t in range(cap)]
        expected = float(np.sum(survival))
        second = float(np.sum([(2 * t + 1) * s for t, s in enumerate(survival)]))  # E[min(T, cap)^2]
        sd = np.sqrt(max(second - expected**2, 1e-12) / repeats)
        assert within(trials[:, q].mean(), expected, sd)
    kept = np.array([r.n_kept for r in runs])
    assert (kept <= goal).all() and (kept[:, 0] == goal).all()
    assert all(len(r.data) == r.n_kept.sum() for r in runs)
    reached = stats.binom(cap, probabilities[3]).sf(goal - 1)  # P(at least goal successes within the cap)
    assert within((kept[:, 3] == goal).mean(), reached, np.sqrt(reached * (1 - reached) / repeats))


def test_dars_keeps_first_correct_responses_in_order():
    outcomes = iter([False, True, True, False, True, True])  # query 0; goal 2 -> stops after the 3rd correct
    sampler = lambda query, rng: (next(counter), next(outcomes))  # noqa: E731
    counter = itertools.count()
    result = dars(["q"], sampler, [2], 100, np.random.default_rng(0))
    assert result.data == [(0, 1), (0, 2)] and result.n_trials[0] == 5 and result.n_correct[0] == 3


def test_prop2diff_targets_by_hand():
    assert dars_prop2diff_targets([0.0, 0.1, 0.25, 0.5, 1.0], 10).tolist() == [1, 1, 3, 5, 10]
    assert dars_prop2diff_targets([0.2, 0.4], 5).tolist() == [3, 5]  # 2.5 rounds half up
    assert dars_prop2diff_targets([0.0, 0.0], 7).tolist() == [1, 1]
    assert dars_uniform_targets(3, 4).tolist() == [4, 4, 4]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=30), st.integers(1, 50))
def test_prop2diff_targets_are_monotone_and_bounded(fail_rate, k_p):
    targets = dars_prop2diff_targets(fail_rate, k_p)
    order = np.argsort(fail_rate, kind="stable")
    assert (np.diff(targets[order]) >= 0).all() and targets.min() >= 1 and targets.max() <= k_p
    if max(fail_rate) > 0:
        assert targets[int(np.argmax(fail_rate))] == k_p


def test_estimate_fail_rate_is_binomial():
    probabilities = np.array([0.0, 0.5, 1.0])
    fail = np.array([estimate_fail_rate(range(3), bernoulli_sampler(probabilities), 8, np.random.default_rng(s))
                     for s in range(2000)])
    assert (fail[:, 0] == 1).all() and (fail[:, 2] == 0).all()
    assert within(fail[:, 1].mean(), 0.5, 0.5 / np.sqrt(8 * 2000))


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    sampler = bernoulli_sampler([0.5])
    with pytest.raises(ValueError, match="level"):
        make_query(6, rng)
    with pytest.raises(ValueError, match="prime"):
        make_query(1, rng, p=51)
    with pytest.raises(TypeError, match="rng"):
        make_query(1, 0)
    with pytest.raises(ValueError, match="step_acc"):
        NoisySolver({"+": 0.9})
    with pytest.raises(ValueError, match="accuracy"):
        NoisySolver({"+": 1.2, "-": 0.9, "*": 0.9, "^": 0.9})
    with pytest.raises(ValueError, match="op"):
        apply_op("/", 3, 2, 53)
    with pytest.raises(ValueError, match="states"):
        TableStudent().fit([(Query(1, 0, (("+", 1),), 53), (0, 1, 2))])
    with pytest.raises(ValueError, match="Z_53"):
        TableStudent().fit([(Query(1, 0, (("+", 1),), 11), (0, 1))])
    with pytest.raises(TypeError, match="student"):
        evaluate_chain(object(), [], rng)
    with pytest.raises(TypeError, match="sampler"):
        vanilla_rejection_sampling([0], None, 3, rng)
    with pytest.raises(ValueError, match="n_per_query"):
        vanilla_rejection_sampling([0], sampler, 0, rng)
    with pytest.raises(ValueError, match="targets"):
        dars([0], sampler, [0], 10, rng)
    with pytest.raises(ValueError, match="targets"):
        dars([0, 0], sampler, [1], 10, rng)
    with pytest.raises(ValueError, match="max_trials"):
        dars([0], sampler, [1], 0, rng)
    with pytest.raises(ValueError, match="n_correct"):
        dars_finished(3, 4, 1, 10)
    with pytest.raises(TypeError, match="n_trials"):
        dars_finished(1.0, 0, 1, 10)
    with pytest.raises(ValueError, match="fail_rate"):
        dars_prop2diff_targets([0.5, 1.5], 3)
    with pytest.raises(ValueError, match="k_p"):
        dars_prop2diff_targets([0.5], 0)
    with pytest.raises(ValueError, match="k_u"):
        dars_uniform_targets(3, 0)
