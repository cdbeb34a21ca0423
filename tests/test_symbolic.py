"""Tests of lib.symbolic against sympy (a test-only oracle), numpy references and brute force."""

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy_oracle import to_sympy

from lib.symbolic import (
    Add,
    BinaryDispatch,
    DictExpr,
    Mul,
    Slot,
    Sym,
    Term,
    Tree,
    TreeExpr,
    TreeSym,
    apply,
    arguments,
    brusselator_rhs,
    build_function,
    chain,
    collect_like_terms_rules,
    cse,
    equivalence,
    evaluate,
    fixpoint,
    iscall,
    make_add,
    make_mul,
    maketerm,
    mass_action_rhs,
    match,
    operation,
    postwalk,
    prewalk,
    random_reaction_network,
    rule,
    simplify_classic,
    slots,
    symbols,
    to_string,
    trace,
)


def sympy_equal(a, b) -> bool:
    return sympy.simplify(sympy.expand(to_sympy(a) - to_sympy(b))) == 0


# A random expression is a recipe: nested ("op", left, right) over leaves "x", "y", "z" and small ints.
leaves = st.sampled_from(["x", "y", "z"]) | st.integers(-3, 3)
recipes = st.recursive(
    leaves,
    lambda inner: st.tuples(st.sampled_from(["+", "-", "*", "sq"]), inner, inner),
    max_leaves=12,
)


def build(recipe, env):
    if isinstance(recipe, str):
        return env[recipe]
    if isinstance(recipe, int):
        return recipe
    op, left, right = recipe
    a, b = build(left, env), build(right, env)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a ** 2


def environments():
    dict_syms = dict(zip("xyz", symbols("x y z"), strict=True))
    tree_syms = dict(zip("xyz", symbols("x y z", form="tree"), strict=True))
    sympy_syms = dict(zip("xyz", sympy.symbols("x y z"), strict=True))
    return dict_syms, tree_syms, sympy_syms


def test_binary_dispatch_picks_the_most_specific_pair_of_types():
    table = BinaryDispatch("demo")
    table.register(object, object)(lambda a, b: "generic")
    table.register(int, object)(lambda a, b: "int-any")
    table.register(int, str)(lambda a, b: "int-str")
    assert table(1, "s") == "int-str"
    assert table(1, 2.0) == "int-any"
    assert table("s", 1) == "generic"
    empty = BinaryDispatch("empty")
    with pytest.raises(TypeError, match="empty is not defined for"):
        empty(1, 2)


def test_dictionary_form_merges_like_terms_at_construction():
    x, y = symbols("x y")
    assert x + x == Mul(2, {x: 1})
    assert x * x == Mul(1, {x: 2})
    assert x - x == 0 and x * x ** -1 == 1
    total = 2 * x + 3 * y - x + 1
    assert isinstance(total, Add) and total.const == 1 and total.terms == {x: 1, y: 3}
    assert 2 * (x + y) == make_add(0, {x: 2, y: 2})
    assert make_mul(0, {x: 1}) == 0 and make_mul(3, {}) == 3 and make_add(0, {x: 1}) == x


def test_tree_form_builds_plain_calls():
    x, y = symbols("x y", form="tree")
    assert x + x == Tree("+", (x, x))
    assert -x == Tree("-", (x,)) and x / y == Tree("/", (x, y)) and 2 ** x == Tree("^", (2, x))


@settings(max_examples=60, deadline=None)
@given(recipes)
def test_both_forms_equal_sympy(recipe):
    dict_env, tree_env, sympy_env = environments()
    expected = sympy.expand(build(recipe, sympy_env))
    for env in (dict_env, tree_env):
        built = build(recipe, env)
        assert sympy.expand(to_sympy(built) - expected) == 0


@settings(max_examples=60, deadline=None)
@given(recipes)
def test_classic_simplifier_keeps_the_value_and_is_idempotent(recipe):
    _, tree_env, sympy_env = environments()
    simplified = simplify_classic(build(recipe, tree_env), collect_like_terms_rules())
    assert sympy.expand(to_sympy(simplified) - build(recipe, sympy_env)) == 0
    assert simplify_classic(simplified, collect_like_terms_rules()) == simplified


def test_classic_simplifier_reaches_the_dictionary_form_of_a_quadratic_form():
    rng = np.random.default_rng(0)
    coefficients = rng.integers(1, 9, (4, 4))
    for form in ("tree", "dict"):
        xs = symbols("x0 x1 x2 x3", form=form)
        total = 0
        for i in range(4):
            for j in range(4):
                total = total + int(coefficients[i, j]) * xs[i] * xs[j]
        if form == "tree":
            tree_result = simplify_classic(total, collect_like_terms_rules())
        else:
            dict_result = total
    assert len(arguments(tree_result)) == len(arguments(dict_result)) == 10      # 4 squares + 6 cross terms
    assert sympy_equal(tree_result, dict_result)


def test_mixing_the_two_forms_is_an_error():
    x, = symbols("x")
    y, = symbols("y", form="tree")
    with pytest.raises(TypeError, match="cannot combine the tree form"):
        x + y
    with pytest.raises(TypeError, match="cannot combine the tree form"):
        y * x


def test_interface_on_dictionary_forms():
    x, y = symbols("x y")
    product = 3 * x * y ** 2
    assert iscall(product) and operation(product) == "*"
    assert arguments(product) == (3, x, Mul(1, {y: 2}))
    assert operation(y ** 2) == "^" and arguments(y ** 2) == (y, 2)
    assert operation(x + 1) == "+" and not iscall(x) and not iscall(2.5)
    for term in (product, x + 2 * y + 1, (x + y) ** 3, apply("sin", x + y)):
        assert maketerm(term, operation(term), arguments(term)) == term


def test_interface_errors():
    x, = symbols("x")
    with pytest.raises(TypeError, match="x must be a call"):
        operation(x)
    with pytest.raises(TypeError, match="x must be a call"):
        arguments(3)
    with pytest.raises(TypeError, match="x must be a number or a symbolic expression"):
        iscall("x")
    with pytest.raises(TypeError, match="template must be a symbolic call"):
        maketerm(1, "+", (x, x))
    with pytest.raises(ValueError, match="form must be one of"):
        symbols("x", form="list")
    with pytest.raises(ValueError, match="names must be"):
        symbols("  ")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        Sym("")
    with pytest.raises(ValueError, match="op must be one of"):
        apply("gamma", x)
    with pytest.raises(ValueError, match="op must be a non-empty string"):
        Tree("", (x,))


def test_maketerm_keeps_the_representation_of_the_template():
    x, y = symbols("x y")
    tx, ty = symbols("x y", form="tree")
    assert isinstance(maketerm(x + y, "+", [x, x]), DictExpr) and maketerm(x + y, "+", [x, x]) == 2 * x
    assert maketerm(tx + ty, "+", [tx, tx]) == Tree("+", (tx, tx))
    assert maketerm(x * y, "sin", [x]) == Term("sin", (x,))


def test_evaluate_matches_sympy_lambdify():
    x, y = symbols("x y")
    tx, ty = symbols("x y", form="tree")
    rng = np.random.default_rng(1)
    values = rng.uniform(0.5, 2.0, (2, 50))
    for expr, (a, b) in (((x + 2 * y) ** 2 / (x * y) + apply("sin", x) * apply("exp", y), (x, y)),
                         (-(tx - ty) ** 3 / apply("log", tx + ty) + apply("cos", tx), (tx, ty))):
        reference = sympy.lambdify(sympy.symbols("x y"), to_sympy(expr), "numpy")(*values)
        np.testing.assert_allclose(evaluate(expr, {a: values[0], b: values[1]}), reference, rtol=1e-12)
    with pytest.raises(ValueError, match="env has no value for the symbol"):
        evaluate(x + y, {x: 1.0})
    with pytest.raises(TypeError, match="env must be a dict"):
        evaluate(x, [1.0])
    with pytest.raises(ValueError, match="unknown operation"):
        evaluate(Tree("gamma", (tx,)), {tx: 1.0})


def test_match_binds_slots_and_respects_repeats_and_predicates():
    a, b = slots("a b")
    x, y = symbols("x y", form="tree")
    assert match(a * b + a, x * y + x) == {"a": x, "b": y}
    assert match(a * b + a, x * y + y) is None
    number, = slots("n", predicate=lambda t: isinstance(t, int))
    assert match(number * a, 2 * x) == {"n": 2, "a": x}
    assert match(number * a, y * x) is None
    assert match(a + 1, x + 2) is None


def test_rules_rewrite_and_preserve_value_in_both_forms():
    a, b, c = slots("a b c")
    factor = rule(a * b + a * c, a * (b + c))
    tx, ty, tz = symbols("x y z", form="tree")
    rewritten = factor(tx * ty + tx * tz)
    assert rewritten == Tree("*", (tx, Tree("+", (ty, tz))))
    dx, dy = symbols("x y")
    square = rule(a ** 2, a * a)
    assert square(dx ** 2) == dx * dx and isinstance(square(dx ** 2), DictExpr)
    assert square(dx ** 3) is None
    doubled = rule(a + a, lambda a: 2 * a)
    assert doubled(tx + tx) == Tree("*", (2, tx))


def test_rule_errors():
    a, b = slots("a b")
    with pytest.raises(ValueError, match="lhs must be a call pattern"):
        rule(a, b)
    with pytest.raises(ValueError, match="rhs uses slots"):
        rule(a * 2, b)
    with pytest.raises(TypeError, match="rhs must be a pattern"):
        rule(a * 2, "a")
    assert [r.lhs for r in equivalence(a * b, b * a)] == [a * b, b * a]


def test_postwalk_is_bottom_up_and_prewalk_top_down():
    x, y = symbols("x y", form="tree")
    expr = (x + y) * (x - y)
    visited_post, visited_pre = [], []
    postwalk(lambda t: visited_post.append(to_string(t)))(expr)
    prewalk(lambda t: visited_pre.append(to_string(t)))(expr)
    assert visited_post == ["x", "y", "(x + y)", "x", "y", "(x - y)", "((x + y) * (x - y))"]
    assert visited_pre == ["((x + y) * (x - y))", "(x + y)", "x", "y", "(x - y)", "x", "y"]


def test_fixpoint_and_chain():
    a, = slots("a")
    x, = symbols("x", form="tree")
    unwrap = rule(Tree("f", (a,)), a)
    nested = Tree("f", (Tree("f", (Tree("f", (x,)),)),))
    assert fixpoint(unwrap)(nested) == x
    assert unwrap(x) is None and chain([unwrap])(x) is None
    assert fixpoint(unwrap, max_iter=1)(nested) == Tree("f", (Tree("f", (x,)),))
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        fixpoint(unwrap, max_iter=0)
    with pytest.raises(TypeError, match="rewriters must be callables"):
        chain([unwrap, 3])
    assert simplify_classic(nested, [unwrap]) == x


def test_brusselator_traced_and_compiled_matches_a_numpy_reference():
    n, a, b, alpha = 8, 1.0, 3.4, 0.02
    inputs, outputs = trace(brusselator_rhs, 2 * n)
    compiled = build_function(outputs, inputs)
    states = np.random.default_rng(2).uniform(0.5, 2.0, (2 * n, 30))
    u, v = states[:n], states[n:]
    laplacian = lambda w: np.roll(w, 1, axis=0) - 2 * w + np.roll(w, -1, axis=0)  # noqa: E731
    reference = np.concatenate([a + u ** 2 * v - (b + 1) * u + alpha * laplacian(u),
                                b * u - u ** 2 * v + alpha * laplacian(v)])
    np.testing.assert_allclose(np.array(compiled(*states)), reference, rtol=1e-12)
    scalar = compiled(*states[:, 0].tolist())
    np.testing.assert_allclose(scalar, reference[:, 0], rtol=1e-12)
    np.testing.assert_allclose(brusselator_rhs(states[:, 0].tolist()), reference[:, 0], rtol=1e-12)


def test_cse_shares_repeated_subterms_and_agrees_with_sympy_cse():
    x, y = symbols("x y", form="tree")
    shared = (x + y) * (x + y)
    exprs = [shared + apply("sin", x + y), shared * 2]
    assignments, reduced = cse(exprs)
    right_hand_sides = [node for _, node in assignments]
    assert len(right_hand_sides) == len(set(right_hand_sides))
    assert sum(1 for node in right_hand_sides if node == Tree("+", (x, y))) == 1
    rng = np.random.default_rng(3)
    values = {x: rng.uniform(size=5), y: rng.uniform(size=5)}
    env = dict(values)
    for temp, node in assignments:
        env[temp] = evaluate(node, env)
    ours = [evaluate(r, env) for r in reduced]
    sympy_replacements, sympy_reduced = sympy.cse([to_sympy(e) for e in exprs])
    sx, sy = sympy.symbols("x y")
    sympy_env = {sx: values[x], sy: values[y]}
    for symbol, value in sympy_replacements:
        sympy_env[symbol] = sympy.lambdify(list(sympy_env), value, "numpy")(*sympy_env.values())
    theirs = [sympy.lambdify(list(sympy_env), e, "numpy")(*sympy_env.values()) for e in sympy_reduced]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_build_function_never_puts_user_names_in_the_source():
    weird, = symbols("__import__('os').system('echo')")
    f = build_function([weird * 2 + 1], [weird])
    assert "__import__" not in f.source and f(3.0) == (7.0,)


def test_build_function_and_trace_errors():
    x, y = symbols("x y")
    with pytest.raises(ValueError, match="not among args"):
        build_function([x + y], [x])
    with pytest.raises(TypeError, match="args must be symbols"):
        build_function([x], ["x"])
    with pytest.raises(ValueError, match="args must be distinct"):
        build_function([x], [x, x])
    with pytest.raises(ValueError, match="cannot generate code"):
        build_function([Tree("gamma", (x,))], [x])
    with pytest.raises(TypeError, match="exprs must hold numbers or symbolic terms"):
        cse(["x"])
    with pytest.raises(ValueError, match="n_inputs must be an int >= 1"):
        trace(brusselator_rhs, 0)
    with pytest.raises(TypeError, match="f must be callable"):
        trace(3, 2)
    with pytest.raises(TypeError, match="f must return numbers or symbolic terms"):
        trace(lambda xs: ["a"], 2)
    with pytest.raises(ValueError, match="state must hold 2N values"):
        brusselator_rhs([1.0] * 5)


def test_mass_action_rhs_matches_the_stoichiometric_formula():
    rng = np.random.default_rng(4)
    network = random_reaction_network(6, 9, rng)
    assert np.all(network.reactants.sum(axis=0) == 2) and np.all(network.products.sum(axis=0) >= 1)
    concentrations, rates = rng.uniform(0.5, 1.5, 6), rng.uniform(0.1, 1.0, 9)
    flux = rates * np.prod(concentrations[:, None] ** network.reactants, axis=0)
    expected = network.stoichiometry @ flux
    np.testing.assert_allclose(mass_action_rhs(network, concentrations.tolist(), rates.tolist()), expected,
                               rtol=1e-12)
    u = symbols(" ".join(f"u{i}" for i in range(6)), form="tree")
    k = symbols(" ".join(f"k{i}" for i in range(9)), form="tree")
    symbolic = mass_action_rhs(network, u, k)
    env = {**dict(zip(u, concentrations, strict=True)), **dict(zip(k, rates, strict=True))}
    np.testing.assert_allclose([evaluate(e, env) for e in symbolic], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="need 6 species and 9 rates"):
        mass_action_rhs(network, u[:5], k)
    with pytest.raises(ValueError, match="n_species must be an int >= 2"):
        random_reaction_network(1, 3, rng)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        random_reaction_network(4, 3, 0)


def test_slots_are_tree_patterns():
    a, = slots("a")
    assert isinstance(a, Slot) and isinstance(a + 1, TreeExpr) and to_string(a * 2) == "(~a * 2)"
    assert isinstance(TreeSym("x"), TreeExpr)
