import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from lib.optimization_synthesis import (
    DietLP,
    Knapsack01,
    ProblemData,
    ProductionMIP,
    TransportLP,
    accept,
    applicable_corruptions,
    back_translate,
    complexity_score,
    corrupt,
    feedback_generate,
    forward_model,
    in_band,
    objectives_match,
    parse_text,
    same_optimum,
    seed_families,
    self_refine,
    solve,
    split_accepted,
    synthesize_pairs,
    write_text,
)


def _linprog(pd):
    sign = 1.0 if pd.sense == "min" else -1.0
    rel = np.array(pd.rel)
    A_ub = np.vstack([pd.A[rel == "<="], -pd.A[rel == ">="]])
    b_ub = np.concatenate([pd.b[rel == "<="], -pd.b[rel == ">="]])
    eq = rel == "="
    res = linprog(sign * pd.c, A_ub=A_ub, b_ub=b_ub, A_eq=pd.A[eq] if eq.any() else None,
                  b_eq=pd.b[eq] if eq.any() else None, bounds=list(zip(np.zeros(pd.n_vars), pd.ub, strict=True)),
                  method="highs-ipm")
    return res.status, (sign * res.fun if res.status == 0 else None)


def _enumerate_integer(pd):
    """Brute force over all integer points 0..ub (small instances only)."""
    grids = [np.arange(int(u) + 1) for u in pd.ub]
    X = np.array(list(itertools.product(*grids)), dtype=float)
    lhs = X @ pd.A.T
    ok = np.ones(len(X), bool)
    for i, r in enumerate(pd.rel):
        ok &= lhs[:, i] <= pd.b[i] + 1e-9 if r == "<=" else lhs[:, i] >= pd.b[i] - 1e-9
    vals = X[ok] @ pd.c
    return vals.min() if pd.sense == "min" else vals.max()


@pytest.mark.parametrize("family", [DietLP(), TransportLP()])
@pytest.mark.parametrize("seed", range(6))
def test_solve_matches_linprog_on_pure_lps(family, seed):
    pd = family.generate(np.random.default_rng(seed))
    status, obj = solve(pd)
    ref_status, ref_obj = _linprog(pd)
    assert status == "optimal" and ref_status == 0
    assert obj == pytest.approx(ref_obj, rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("seed", range(8))
def test_solve_matches_enumeration_on_small_knapsacks(seed):
    rng = np.random.default_rng(seed)
    pd = Knapsack01().generate(rng, {"n_items": int(rng.integers(3, 13)), "n_dims": int(rng.integers(1, 3))})
    assert solve(pd) == ("optimal", pytest.approx(_enumerate_integer(pd)))


@pytest.mark.parametrize("seed", range(4))
def test_solve_matches_enumeration_on_small_production_plans(seed):
    rng = np.random.default_rng(seed)
    pd = ProductionMIP().generate(rng, {"n_products": 3, "n_resources": 2})
    assert solve(pd) == ("optimal", pytest.approx(_enumerate_integer(pd)))


def _tiny(sense="min", rel=("<=", ">="), b=(4.0, 2.0), ub=(1.0, 5.0, np.inf), integrality=(1, 1, 0)):
    A = np.array([[1.0, 1.0, 0.0], [1.0, 2.0, 3.0]])
    return ProblemData("toy", sense, np.array([1.0, 2.0, 3.0]), A, np.array(b), rel, np.array(ub),
                       np.array(integrality), ("x", "y", "z"), ("r1", "r2"))


def test_solve_reports_infeasible_and_unbounded_like_linprog():
    infeasible = _tiny(rel=("<=", ">="), b=(-1.0, 2.0), integrality=(0, 0, 0))
    unbounded = _tiny(sense="max", integrality=(0, 0, 0))
    assert solve(infeasible)[0] == "infeasible" and _linprog(infeasible)[0] == 2
    assert solve(unbounded)[0] == "unbounded" and _linprog(unbounded)[0] == 3


def test_complexity_score_by_hand():
    # x binary, y integer, z continuous; 2 linear rows with 2 and 3 terms
    expected = 1.0 * 1 + 1.5 * 1 + 0.5 * 1 + 0.5 * 2 + 0.1 * (2 + 3) / 2
    assert complexity_score(_tiny()) == pytest.approx(expected)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(range(4)))
def test_round_trip_with_zero_error_reproduces_the_instance(seed, which):
    rng = np.random.default_rng(seed)
    pd = seed_families()[which].generate(rng)
    tr = back_translate(pd, rng, err_rate=0.0)
    assert tr.faithful and tr.corruption is None
    models = forward_model(tr.text, rng, n_samples=3, slip=0.0)
    assert all(m.same_model(pd) for m in models)
    assert all(solve(m) == solve(pd) for m in models)


@pytest.mark.parametrize("kind", ["drop_constraint", "perturb_coefficient", "flip_relation", "flip_sense",
                                  "drop_integrality"])
def test_each_corruption_changes_exactly_one_aspect(kind):
    rng = np.random.default_rng(3)
    pd = ProductionMIP().generate(rng)
    bad, got = corrupt(pd, rng, kind)
    assert got == kind and not bad.same_model(pd)
    if kind == "drop_constraint":
        assert bad.n_cons == pd.n_cons - 1
    elif kind == "perturb_coefficient":
        diff = np.concatenate([bad.c - pd.c, (bad.A - pd.A).ravel()])
        changed = np.flatnonzero(diff)
        assert len(changed) == 1
        old = np.concatenate([pd.c, pd.A.ravel()])[changed[0]]
        assert abs(diff[changed[0]]) == pytest.approx(0.2 * old, abs=0.006)
    elif kind == "flip_relation":
        assert sum(a != b for a, b in zip(bad.rel, pd.rel, strict=True)) == 1
    elif kind == "flip_sense":
        assert bad.sense != pd.sense
    else:
        assert not bad.integrality.any()
    # the corrupted text is parsed back to the corrupted model
    assert parse_text(write_text(bad, rng)).same_model(bad)


def test_drop_integrality_does_not_apply_to_lps():
    pd = DietLP().generate(np.random.default_rng(0))
    assert "drop_integrality" not in applicable_corruptions(pd)
    with pytest.raises(ValueError, match="kind"):
        corrupt(pd, np.random.default_rng(0), "drop_integrality")


def test_back_translation_error_rate_is_respected():
    rng = np.random.default_rng(0)
    pd = Knapsack01().generate(rng)
    flags = [back_translate(pd, rng, 0.3).faithful for _ in range(2000)]
    assert np.mean(flags) == pytest.approx(0.7, abs=0.035)
    assert not back_translate(pd, rng, 1.0).faithful


def test_self_refine_repairs_with_the_given_probability():
    rng = np.random.default_rng(1)
    pd = TransportLP().generate(rng)
    bad = back_translate(pd, rng, 1.0)
    assert self_refine(pd, bad, rng, rounds=1, fix_prob=1.0).faithful
    assert self_refine(pd, bad, rng, rounds=3, fix_prob=0.0) is bad
    fixed = [self_refine(pd, bad, rng, rounds=3, fix_prob=0.5).faithful for _ in range(2000)]
    assert np.mean(fixed) == pytest.approx(1 - 0.5 ** 3, abs=0.03)


def test_objective_match_rule_by_hand():
    assert objectives_match(("optimal", 100.4), ("optimal", 104.6))      # 100 vs 105: 5 % exactly
    assert not objectives_match(("optimal", 100.4), ("optimal", 105.6))  # 100 vs 106
    assert objectives_match(("optimal", 0.3), ("optimal", -0.2))          # both round to 0
    assert not objectives_match(("optimal", 0.3), ("optimal", 1.0))
    assert objectives_match(("infeasible", np.nan), ("infeasible", np.nan))
    assert not objectives_match(("optimal", 1.0), ("infeasible", np.nan))
    gt, hit, miss = ("optimal", 50.0), ("optimal", 50.0), ("optimal", 80.0)
    assert accept(gt, [miss, miss, hit], rule="any") and not accept(gt, [miss, miss, hit], rule="majority")
    assert accept(gt, [hit, miss, hit], rule="majority")


def test_same_optimum_by_hand():
    assert same_optimum(("optimal", 100.0), ("optimal", 100.00005))
    assert not same_optimum(("optimal", 100.0), ("optimal", 100.01))
    assert same_optimum(("infeasible", np.nan), ("infeasible", np.nan))
    assert not same_optimum(("optimal", 1.0), ("unbounded", np.nan))


def test_dropping_a_slack_constraint_keeps_the_optimum():
    # x + y <= 4 and x + 2y + 3z >= 2 with min x + 2y + 3z: the optimum 2 does not use the first row's slack
    pd = _tiny(integrality=(0, 0, 0))
    drops = [corrupt(pd, np.random.default_rng(s), "drop_constraint")[0] for s in range(20)]
    slack_dropped = [d for d in drops if d.con_names == ("r2",)]
    binding_dropped = [d for d in drops if d.con_names == ("r1",)]
    assert slack_dropped and binding_dropped
    assert same_optimum(solve(pd), solve(slack_dropped[0]))
    assert not same_optimum(solve(pd), solve(binding_dropped[0]))


def test_pipeline_with_no_noise_accepts_every_faithful_pair():
    rng = np.random.default_rng(0)
    pds = [f.generate(rng) for f in seed_families() for _ in range(3)]
    recs = synthesize_pairs(pds, rng, err_rate=0.0, slip=0.0)
    assert all(r.faithful for r in recs) and split_accepted(recs).all()
    flipped = synthesize_pairs(pds, rng, err_rate=1.0, slip=0.0)
    for r in flipped:  # a flipped objective sense changes the optimum of every family here
        if r.corruption == "flip_sense":
            assert not accept(r.gt, list(r.preds))


def test_feedback_controller_moves_scores_into_the_band():
    rng = np.random.default_rng(0)
    target = (12.0, 36.0)
    tuned, trace = feedback_generate(DietLP(), rng, target=target, max_iter=5)
    assert len(trace.scores) <= 5
    assert all(in_band([complexity_score(p)], target)[0] and solve(p)[0] == "optimal" for p in trace.kept)
    scores = np.array([complexity_score(tuned.generate(rng)) for _ in range(60)])
    default = np.array([complexity_score(DietLP().generate(rng)) for _ in range(60)])
    assert default.max() < target[0]  # the default diet instances are all too small
    assert in_band(scores, target).mean() >= 0.8


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    pd = Knapsack01().generate(rng)
    with pytest.raises(ValueError, match="err_rate"):
        back_translate(pd, rng, 1.5)
    with pytest.raises(ValueError, match="n_samples"):
        forward_model(write_text(pd, rng), rng, n_samples=0)
    with pytest.raises(ValueError, match="slip"):
        forward_model(write_text(pd, rng), rng, slip=-0.1)
    with pytest.raises(ValueError, match="rule"):
        accept(("optimal", 1.0), [("optimal", 1.0)], rule="vote")
    with pytest.raises(ValueError, match="preds"):
        accept(("optimal", 1.0), [])
    with pytest.raises(ValueError, match="sense"):
        _tiny(sense="minimize")
    with pytest.raises(ValueError, match="shape"):
        ProblemData("x", "min", np.ones(2), np.ones((1, 3)), np.ones(1), ("<=",), np.ones(3), np.zeros(3, int),
                    ("a", "b", "c"), ("r",))
    with pytest.raises(ValueError, match="objective"):
        parse_text("Nothing to optimise here.")
    with pytest.raises(TypeError, match="pd"):
        solve("not a model")
    with pytest.raises(TypeError, match="rng"):
        back_translate(pd, 0, 0.1)
    with pytest.raises(ValueError, match="target"):
        feedback_generate(DietLP(), rng, target=(10.0, 5.0))
    with pytest.raises(ValueError, match="fix_prob"):
        self_refine(pd, back_translate(pd, rng, 1.0), rng, fix_prob=2.0)
    with pytest.raises(ValueError, match="sizes"):
        DietLP().generate(rng, {"n_foods": 0, "n_nutrients": 3})
