"""Tests of lib.egraph: hand-computed costs, e-graph invariants, numerical soundness, and sympy as an oracle."""

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy_oracle import to_sympy

from lib.egraph import LEAF, OP_COSTS, EGraph, cpu_cost_rules, expression_cost, node_cost, optimize, shared_cost
from lib.symbolic import Slot, Tree, apply, evaluate, iscall, mass_action_rhs, random_reaction_network, rule, slots
from lib.symbolic import symbols as make_symbols


def tree_symbols(names):
    return make_symbols(names, form="tree")


def test_costs_follow_the_table():
    a, b, c, x, y, z = tree_symbols("a b c x y z")
    assert node_cost("^") == 100 and node_cost("sin") == 134 and node_cost("unknown") == 1 and node_cost(LEAF) == 0
    assert expression_cost((a * b + a * c) / (x * y + x * z)) == 24 + 2 * (1 + 3 + 3)
    assert expression_cost(apply("sin", x) ** 2) == 134 + 100
    assert expression_cost(x) == 0 and expression_cost(2.0) == 0


def test_shared_cost_counts_each_distinct_subterm_once():
    x, y = tree_symbols("x y")
    square = (x + y) * (x + y)
    assert expression_cost(square) == 1 + 1 + 3 and shared_cost([square]) == 1 + 3
    assert shared_cost([square, x + y]) == 4 and shared_cost([x * y * x + 1]) == 3 + 3 + 1


def test_factoring_example_extracts_to_cost_32():
    a, b, c, x, y, z = tree_symbols("a b c x y z")
    original = (a * b + a * c) / (x * y + x * z)
    graph = EGraph()
    root = graph.add(original)
    assert graph.extract(root)[0] == 38
    graph.saturate(cpu_cost_rules(), max_iter=3)
    cost, best = graph.extract(root)
    assert cost == 32 == expression_cost(best)
    assert sympy.simplify(to_sympy(best) - to_sympy(a * (b + c) / (x * (y + z)))) == 0


def test_hash_consing_shares_equal_subterms():
    x, y = tree_symbols("x y")
    graph = EGraph()
    first = graph.add((x + y) * (x + y))
    assert graph.add((x + y) * (x + y)) == first
    assert graph.n_classes == 4 and graph.n_nodes == 4          # x, y, x + y, (x + y) * (x + y)


def test_ematch_finds_every_binding_of_a_pattern():
    a, b, c, x, y = tree_symbols("a b c x y")
    p, q, r = slots("p q r")
    graph = EGraph()
    root = graph.add(a * b + a * c)
    bindings = graph.ematch(p * q + p * r, root)
    assert bindings == [{"p": graph.add(a), "q": graph.add(b), "r": graph.add(c)}]
    assert graph.ematch(p * q + q * r, root) == []
    assert graph.ematch(p + p, graph.add(x + x)) == [{"p": graph.add(x)}]
    assert graph.ematch(p + 1, graph.add(x + y)) == []


def test_rebuild_restores_congruence():
    x, y = tree_symbols("x y")
    graph = EGraph()
    fx, fy = graph.add(apply("sin", x)), graph.add(apply("sin", y))
    assert graph.find(fx) != graph.find(fy)
    graph.merge(graph.add(x), graph.add(y))
    graph.rebuild()
    assert graph.find(fx) == graph.find(fy)


def assert_congruence_closed(graph):
    owner = {}
    for class_id, nodes in graph.classes().items():
        assert graph.find(class_id) == class_id
        for node in nodes:
            canonical = node if node[0] == LEAF else (node[0], *(graph.find(c) for c in node[1:]))
            assert canonical == node
            assert owner.setdefault(canonical, class_id) == class_id, "one e-node in two e-classes"


def test_saturation_proves_commutativity_and_keeps_invariants():
    a, b, c = tree_symbols("a b c")
    graph = EGraph()
    left, right = graph.add(a + b * c), graph.add(c * b + a)
    report = graph.saturate(cpu_cost_rules(), max_iter=2)
    assert graph.find(left) == graph.find(right)
    assert len(report.n_nodes) == 2
    assert_congruence_closed(graph)


def test_saturation_stops_when_saturated_or_at_the_node_limit():
    x, y = tree_symbols("x y")
    a, b = slots("a b")
    graph = EGraph()
    graph.add(x + y)
    report = graph.saturate([rule(a + b, b + a)], max_iter=8)
    assert report.stop_reason == "saturated" and graph.n_nodes == 4
    big = EGraph()
    big.add(sum((s * s for s in tree_symbols("p q r s t u")), start=0))
    report = big.saturate(cpu_cost_rules(), max_iter=8, node_limit=300)
    assert report.stop_reason == "node_limit" or big.n_nodes <= 300 + 20
    assert big.n_nodes <= 300 + 20


def test_every_rule_preserves_the_value():
    rng = np.random.default_rng(0)
    for r in cpu_cost_rules():
        names = sorted(_slot_names(r.lhs))
        env = {Slot(name): rng.uniform(0.3, 1.2) for name in names}
        assert np.isclose(evaluate(r.lhs, env), evaluate(r.rhs, env), rtol=1e-12), r


def _slot_names(pattern):
    if isinstance(pattern, Slot):
        return {pattern.name}
    if not isinstance(pattern, Tree):
        return set()
    return set().union(*(_slot_names(a) for a in pattern.args))


leaves = st.sampled_from(["x", "y", "z"]) | st.integers(1, 3)
recipes = st.recursive(leaves, lambda inner: st.tuples(st.sampled_from(["+", "*", "/", "sq", "sin"]), inner, inner),
                       max_leaves=7)


def build(recipe, env):
    if isinstance(recipe, str):
        return env[recipe]
    if isinstance(recipe, int):
        return recipe
    op, left, right = recipe
    a, b = build(left, env), build(right, env)
    if op == "sq":
        return (a + b) ** 2
    if op == "sin":
        return apply("sin", a + b)
    return {"+": a + b, "*": a * b, "/": a / (b + 4)}[op]


@settings(max_examples=25, deadline=None)
@given(recipes)
def test_extraction_keeps_the_value_and_never_costs_more(recipe):
    env = dict(zip("xyz", tree_symbols("x y z"), strict=True))
    term = build(recipe, env)
    if not iscall(term):
        return
    graph = EGraph()
    root = graph.add(term)
    graph.saturate(cpu_cost_rules(), max_iter=3, node_limit=800)
    cost, best = graph.extract(root)
    assert cost <= expression_cost(term)
    assert cost == expression_cost(best)
    values = {s: np.random.default_rng(1).uniform(0.5, 1.5, 8) for s in env.values()}
    np.testing.assert_allclose(evaluate(best, values), evaluate(term, values), rtol=1e-10)


def test_optimize_reaction_network_agrees_with_sympy():
    rng = np.random.default_rng(5)
    network = random_reaction_network(4, 6, rng)
    u, k = tree_symbols("u0 u1 u2 u3"), tree_symbols("k0 k1 k2 k3 k4 k5")
    rhs = mass_action_rhs(network, u, k)
    optimized, report = optimize(rhs, cpu_cost_rules(), max_iter=4, node_limit=2000)
    assert report.n_nodes and sum(map(expression_cost, optimized)) < sum(map(expression_cost, rhs))
    for before, after in zip(rhs, optimized, strict=True):
        assert sympy.expand(to_sympy(before) - to_sympy(after)) == 0


def test_errors():
    x, = tree_symbols("x")
    graph = EGraph()
    graph.add(x)
    with pytest.raises(ValueError, match="class_id must be an e-class id"):
        graph.find(5)
    with pytest.raises(TypeError, match="term must be a number or a symbolic expression"):
        graph.add("x")
    with pytest.raises(ValueError, match="max_iter must be an int >= 0"):
        graph.saturate(cpu_cost_rules(), max_iter=-1)
    with pytest.raises(ValueError, match="node_limit must be an int >= 1"):
        graph.saturate(cpu_cost_rules(), node_limit=0)
    a, = slots("a")
    with pytest.raises(TypeError, match="rules must be Rule objects"):
        graph.saturate([rule(a + a, lambda a: 2 * a)])
    assert OP_COSTS["/"] == 24
