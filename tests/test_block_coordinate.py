"""Tests for lib.block_coordinate against independent oracles: numpy/scipy dense linear algebra (lstsq, solve,
eigvalsh, SVD norms, spsolve), brute force over all blocks, explicit loops over graph edges, a hand-written
union-find cycle check, scipy.optimize for the proximal operator and sklearn's Lasso."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from sklearn.linear_model import Lasso

from lib.block_coordinate import (
    FIXED_RULES,
    QuadraticProblem,
    active_set,
    active_set_newton_step,
    comb_forest_partition,
    cyclic_block,
    diag_update,
    forest_structure,
    greedy_forest_block,
    gs_scores,
    gsd_scores,
    gsl_scores,
    gsq_scores,
    label_propagation,
    lasso_objective,
    lattice_adjacency,
    least_squares,
    lipschitz_sampling,
    lipschitz_update,
    matrix_update,
    partition_random,
    partition_sorted,
    prox_lipschitz_update,
    random_block,
    red_black_blocks,
    run_bcd,
    run_forest_bcd,
    run_proximal_bcd,
    soft_threshold,
    stable_support_iteration,
    tree_block_solve,
    vb_top_k,
)


def scaled_least_squares(seed: int, n: int = 40, p: int = 20):
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((n, p)) + 1.0) * rng.uniform(0.2, 5.0, p)
    y = rng.standard_normal(n)
    return A, y, least_squares(A, y)


def has_cycle(n_nodes: int, edges: list[tuple[int, int]]) -> bool:
    """Union-find cycle detection over an explicit edge list."""
    root = list(range(n_nodes))

    def find(a):
        while root[a] != a:
            a = root[a]
        return a

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra == rb:
            return True
        root[ra] = rb
    return False


def induced_edges(adjacency: sp.spmatrix, nodes: np.ndarray) -> list[tuple[int, int]]:
    position = {int(v): k for k, v in enumerate(nodes)}
    coo = sp.triu(adjacency, k=1).tocoo()
    return [(position[a], position[b]) for a, b in zip(coo.row, coo.col, strict=True)
            if a in position and b in position]


def random_tree_spd(seed: int, size: int):
    """A random SPD matrix whose graph is a random tree (parent of k drawn from 0..k-1), and the parents."""
    rng = np.random.default_rng(seed)
    parents = np.array([-1] + [int(rng.integers(k)) for k in range(1, size)])
    H = np.zeros((size, size))
    for k in range(1, size):
        H[k, parents[k]] = H[parents[k], k] = rng.uniform(-1.0, 1.0)
    H += np.diag(np.abs(H).sum(axis=1) + rng.uniform(0.1, 1.0, size))
    return H, parents


def small_lattice_problem(seed: int = 0, rows: int = 6, cols: int = 7):
    rng = np.random.default_rng(seed)
    adjacency = lattice_adjacency(rows, cols, rng)
    labelled = rng.choice(rows * cols, 5, replace=False)
    targets = rng.choice([-1.0, 1.0], 5)
    return adjacency, labelled, targets, label_propagation(adjacency, labelled, targets, lam=3.0, ridge=0.01)


# --- problems -----------------------------------------------------------------------------------------------


def test_least_squares_matches_residual_formulas():
    A, y, problem = scaled_least_squares(0)
    x = np.random.default_rng(1).standard_normal(A.shape[1])
    assert problem.f(x) == pytest.approx(0.5 * np.sum((A @ x - y) ** 2), rel=1e-12)
    np.testing.assert_allclose(problem.grad(x), A.T @ (A @ x - y), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(problem.coord_lipschitz(), np.linalg.norm(A, axis=0) ** 2, rtol=1e-12)
    block = np.array([3, 7, 11])
    np.testing.assert_allclose(problem.block_hessian(block), A[:, block].T @ A[:, block], rtol=1e-12)
    assert problem.block_lipschitz(block) == pytest.approx(np.linalg.norm(A[:, block], 2) ** 2, rel=1e-10)


def test_label_propagation_matches_a_loop_over_edges():
    adjacency, labelled, targets, problem = small_lattice_problem()
    x = np.random.default_rng(2).standard_normal(adjacency.shape[0])
    coo = sp.triu(adjacency, k=1).tocoo()
    expected = 0.5 * sum(w * (x[i] - x[j]) ** 2 for i, j, w in zip(coo.row, coo.col, coo.data, strict=True))
    expected += 0.5 * 3.0 * np.sum((x[labelled] - targets) ** 2) + 0.5 * 0.01 * x @ x
    assert problem.f(x) == pytest.approx(expected, rel=1e-12)
    laplacian = sp.csgraph.laplacian(adjacency).toarray()
    anchor = np.zeros(x.size)
    anchor[labelled] = 3.0
    np.testing.assert_allclose(problem.hessian.toarray(), laplacian + np.diag(anchor + 0.01), atol=1e-12)
    assert problem.block_lipschitz(np.arange(10)) == pytest.approx(
        np.linalg.eigvalsh(problem.hessian.toarray()[:10, :10]).max(), rel=1e-12)


def test_lattice_adjacency_has_the_lattice_edges():
    adjacency = lattice_adjacency(3, 4)
    assert adjacency.nnz == 2 * (3 * 3 + 2 * 4)
    assert adjacency[0, 1] == 1 and adjacency[0, 4] == 1
    assert adjacency[3, 4] == 0  # 3 ends the first row, 4 starts the second


# --- partitions and selection rules -------------------------------------------------------------------------


def test_partition_sorted_groups_coordinates_by_lipschitz_constant():
    L = np.random.default_rng(3).exponential(size=30)
    blocks = partition_sorted(L, 5)
    assert blocks.shape == (6, 5)
    np.testing.assert_array_equal(np.sort(blocks.ravel()), np.arange(30))
    assert np.all(L[blocks].max(axis=1)[:-1] <= L[blocks].min(axis=1)[1:])


def test_partition_random_is_a_partition_and_reproducible():
    blocks = partition_random(20, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(blocks.ravel()), np.arange(20))
    np.testing.assert_array_equal(blocks, partition_random(20, 4, np.random.default_rng(0)))


@given(st.lists(st.floats(-100, 100), min_size=1, max_size=30, unique=True), st.integers(1, 30))
def test_vb_top_k_matches_sorting(values, k):
    k = min(k, len(values))
    score = np.array(values)
    assert set(vb_top_k(score, k)) == set(np.argsort(score)[::-1][:k])


def test_greedy_scores_match_per_block_loops():
    A, y, problem = scaled_least_squares(4)
    grad = problem.grad(np.zeros(A.shape[1]))
    blocks = partition_random(20, 4, np.random.default_rng(0))
    L = problem.coord_lipschitz()
    Lb = np.array([np.linalg.norm(A[:, b], 2) ** 2 for b in blocks])
    inverses = np.stack([np.linalg.inv(A[:, b].T @ A[:, b]) for b in blocks])
    for k, b in enumerate(blocks):
        g = grad[b]
        assert gs_scores(grad, blocks)[k] == pytest.approx(np.linalg.norm(g))
        assert gs_scores(grad, blocks, norm="l1")[k] == pytest.approx(np.abs(g).sum())
        assert gsl_scores(grad, blocks, Lb)[k] == pytest.approx(g @ g / Lb[k])
        assert gsd_scores(grad, blocks, L)[k] == pytest.approx(np.sum(g**2 / L[b]))
        assert gsq_scores(grad, blocks, inverses)[k] == pytest.approx(
            g @ scipy.linalg.solve(A[:, b].T @ A[:, b], g), rel=1e-8)


def test_random_cyclic_and_lipschitz_sampling_frequencies():
    rng = np.random.default_rng(5)
    assert [cyclic_block(t, 3) for t in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    uniform = np.bincount([random_block(4, rng) for _ in range(8000)], minlength=4) / 8000
    np.testing.assert_allclose(uniform, 0.25, atol=0.02)
    weights = np.array([1.0, 3.0, 6.0])
    sampled = np.bincount([lipschitz_sampling(weights, rng) for _ in range(8000)], minlength=3) / 8000
    np.testing.assert_allclose(sampled, weights / weights.sum(), atol=0.02)


# --- update rules -------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_lipschitz_and_diag_updates_satisfy_the_descent_lemma(seed, size):
    A, y, problem = scaled_least_squares(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(A.shape[1])
    block = rng.choice(A.shape[1], size, replace=False)
    grad = problem.grad(x)[block]
    for step in (lipschitz_update(grad, problem.block_lipschitz(block)),
                 diag_update(grad, problem.coord_lipschitz()[block])):
        moved = x.copy()
        moved[block] += step
        # f(x + d) <= f(x) + g^T d + 0.5 d^T D d for the bound D; for d = -D^-1 g that is f(x) + 0.5 g^T d
        assert problem.f(moved) <= problem.f(x) + 0.5 * grad @ step + 1e-9 * abs(problem.f(x))


def test_matrix_update_minimises_the_block_exactly():
    A, y, problem = scaled_least_squares(6)
    x = np.random.default_rng(6).standard_normal(A.shape[1])
    block = np.array([1, 4, 9])
    moved = x.copy()
    moved[block] += matrix_update(problem.grad(x)[block], problem.block_hessian(block))
    other = np.setdiff1d(np.arange(A.shape[1]), block)
    best_block = np.linalg.lstsq(A[:, block], y - A[:, other] @ x[other], rcond=None)[0]
    np.testing.assert_allclose(moved[block], best_block, rtol=1e-8, atol=1e-10)


def test_one_gsq_matrix_step_is_the_best_single_block_with_the_predicted_progress():
    A, y, problem = scaled_least_squares(7)
    blocks = partition_random(20, 4, np.random.default_rng(7))
    run = run_bcd(problem, 1, "gsq", "matrix", blocks=blocks)
    progress = run.objective[0] - run.objective[1]
    best_progress = []
    for b in blocks:  # brute force: minimise over each block with lstsq, everything else fixed at 0
        z = np.linalg.lstsq(A[:, b], y, rcond=None)[0]
        best_progress.append(0.5 * y @ y - 0.5 * np.sum((A[:, b] @ z - y) ** 2))
    assert progress == pytest.approx(max(best_progress), rel=1e-9)
    g = A.T @ -y
    b = run.blocks[0]
    assert progress == pytest.approx(0.5 * g[b] @ np.linalg.solve(A[:, b].T @ A[:, b], g[b]), rel=1e-9)
    np.testing.assert_array_equal(np.sort(b), np.sort(blocks[int(np.argmax(best_progress))]))


@pytest.mark.parametrize("selection", FIXED_RULES)
@pytest.mark.parametrize("update", ["lipschitz", "diag", "matrix"])
def test_fixed_block_bcd_is_monotone_tracks_f_and_approaches_the_lstsq_optimum(selection, update):
    A, y, problem = scaled_least_squares(8)
    f_star = 0.5 * np.sum((A @ np.linalg.lstsq(A, y, rcond=None)[0] - y) ** 2)
    blocks = partition_sorted(problem.coord_lipschitz(), 4)
    run = run_bcd(problem, 400, selection, update, blocks=blocks, rng=np.random.default_rng(0))
    assert np.all(np.diff(run.objective) <= 1e-9 * run.objective[0])
    assert run.objective[-1] == pytest.approx(problem.f(run.x), rel=1e-9)
    assert (run.objective[-1] - f_star) < 0.2 * (run.objective[0] - f_star)


@pytest.mark.parametrize("selection", ["gs", "gsl", "gsd"])
def test_variable_block_bcd_converges_to_the_lstsq_optimum(selection):
    A, y, problem = scaled_least_squares(9)
    f_star = 0.5 * np.sum((A @ np.linalg.lstsq(A, y, rcond=None)[0] - y) ** 2)
    run = run_bcd(problem, 300, selection, "matrix", variable_block_size=5, snapshot_every=100)
    assert run.objective[-1] - f_star < 1e-6 * run.objective[0]
    assert sorted(run.snapshots) == [0, 100, 200, 300]
    grad0 = A.T @ -y
    score = np.abs(grad0) if selection == "gs" else grad0**2 / problem.coord_lipschitz()
    assert set(run.blocks[0]) == set(np.argsort(score)[-5:])


# --- message passing ----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 40))
def test_tree_block_solve_matches_scipy_solve_on_random_trees(seed, size):
    H, parents = random_tree_spd(seed, size)
    rhs = np.random.default_rng(seed).standard_normal(size)
    expected = scipy.linalg.solve(H, rhs, assume_a="pos")
    solution = tree_block_solve(H, rhs, np.arange(size), parents)
    np.testing.assert_allclose(solution, expected, rtol=1e-9, atol=1e-12)


def test_tree_block_solve_on_forest_blocks_of_a_sparse_lattice_matches_spsolve():
    adjacency, _, _, problem = small_lattice_problem(1)
    rhs = np.random.default_rng(1).standard_normal(adjacency.shape[0])
    for block in comb_forest_partition(6, 7) + red_black_blocks(6, 7):
        nodes, parent = forest_structure(adjacency, block)
        expected = spla.spsolve(problem.hessian[nodes][:, nodes].tocsc(), rhs[nodes])
        np.testing.assert_allclose(tree_block_solve(problem.hessian, rhs[nodes], nodes, parent), expected,
                                   rtol=1e-10, atol=1e-12)


def test_forest_structure_orders_parents_first_along_graph_edges_and_rejects_cycles():
    adjacency = lattice_adjacency(5, 5)
    block = comb_forest_partition(5, 5)[0]
    nodes, parent = forest_structure(adjacency, block)
    assert sorted(nodes) == sorted(block)
    for k in np.flatnonzero(parent >= 0):
        assert parent[k] < k and adjacency[nodes[k], nodes[parent[k]]] != 0
    assert np.sum(parent < 0) == 1  # the comb is one tree
    with pytest.raises(ValueError, match="forest"):
        forest_structure(adjacency, np.array([0, 1, 5, 6]))  # a 4-cycle


def test_lattice_blocks_cover_the_graph_and_induce_forests():
    adjacency = lattice_adjacency(8, 9)
    for blocks in (red_black_blocks(8, 9), comb_forest_partition(8, 9)):
        np.testing.assert_array_equal(np.sort(np.concatenate(blocks)), np.arange(72))
        for block in blocks:
            assert not has_cycle(block.size, induced_edges(adjacency, block))
    assert all(len(induced_edges(adjacency, b)) == 0 for b in red_black_blocks(8, 9))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 60))
def test_greedy_forest_block_is_acyclic_and_starts_from_the_best_node(seed, max_size):
    adjacency = lattice_adjacency(8, 8)
    score = np.random.default_rng(seed).random(64)
    block = greedy_forest_block(adjacency, score, max_size)
    assert block.size <= max_size and np.argmax(score) in block
    assert not has_cycle(block.size, induced_edges(adjacency, block))
    if block.size < max_size:  # stopped early: the block is a maximal induced forest
        for node in np.setdiff1d(np.arange(64), block):
            grown = np.append(block, node)
            assert has_cycle(grown.size, induced_edges(adjacency, grown))


def test_forest_bcd_converges_to_the_spsolve_solution():
    adjacency, _, _, problem = small_lattice_problem(2)
    x_star = spla.spsolve(problem.hessian, problem.linear)
    for kwargs in ({"blocks": comb_forest_partition(6, 7)}, {"blocks": red_black_blocks(6, 7)},
                   {"greedy_size": 20}):
        run = run_forest_bcd(problem, adjacency, 2000, **kwargs)
        np.testing.assert_allclose(run.x, x_star, atol=1e-6)
        assert run.objective[-1] == pytest.approx(problem.f(run.x), rel=1e-10)
        assert np.all(np.diff(run.objective) <= 1e-12)


def test_one_forest_step_is_an_exact_block_minimisation():
    adjacency, _, _, problem = small_lattice_problem(3)
    block = comb_forest_partition(6, 7)[0]
    run = run_forest_bcd(problem, adjacency, 1, blocks=[block])
    Q = problem.hessian.toarray()
    expected = np.zeros(42)
    expected[block] = scipy.linalg.solve(Q[np.ix_(block, block)], problem.linear[block])
    np.testing.assert_allclose(run.x, expected, rtol=1e-10, atol=1e-12)


# --- lasso --------------------------------------------------------------------------------------------------


@given(st.floats(-10, 10), st.floats(0, 5))
def test_soft_threshold_is_the_l1_proximal_operator(v, t):
    numeric = minimize_scalar(lambda z: 0.5 * (z - v) ** 2 + t * abs(z), bounds=(-12, 12), method="bounded",
                              options={"xatol": 1e-10}).x
    assert soft_threshold(np.array([v]), t)[0] == pytest.approx(numeric, abs=1e-6)


def lasso_instance(seed: int = 0, n: int = 60, p: int = 40):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, p))
    w = np.zeros(p)
    w[:5] = 3 * rng.standard_normal(5)
    y = A @ w + 0.3 * rng.standard_normal(n)
    lam1 = 0.2 * np.abs(A.T @ y).max()
    reference = Lasso(alpha=lam1 / n, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(A, y).coef_
    return A, y, least_squares(A, y), lam1, reference


@pytest.mark.parametrize("selection", ["gsl", "cyclic", "random"])
def test_proximal_bcd_reaches_the_sklearn_lasso_solution(selection):
    A, y, problem, lam1, reference = lasso_instance()
    blocks = partition_random(40, 4, np.random.default_rng(0))
    run = run_proximal_bcd(problem, lam1, blocks, 1500, selection, rng=np.random.default_rng(1))
    np.testing.assert_allclose(run.x, reference, atol=1e-6)
    assert run.objective[-1] == pytest.approx(lasso_objective(problem, run.x, lam1), rel=1e-10)
    assert np.all(np.diff(run.objective) <= 1e-9)
    assert run.support_size[-1] == np.count_nonzero(reference)
    np.testing.assert_array_equal(active_set(run.x), np.flatnonzero(reference))


def test_prox_update_decreases_the_lasso_objective_and_newton_terminates_on_the_right_support():
    A, y, problem, lam1, reference = lasso_instance(1)
    block = np.arange(4)
    x = np.zeros(40)
    step = prox_lipschitz_update(x[block], problem.grad(x)[block], problem.block_lipschitz(block), lam1)
    moved = x.copy()
    moved[block] += step
    assert lasso_objective(problem, moved, lam1) <= lasso_objective(problem, x, lam1)
    guess = np.sign(reference) * 1e-3  # right support and signs, wrong values
    np.testing.assert_allclose(active_set_newton_step(problem, guess, lam1), reference, atol=1e-6)


def test_stable_support_iteration():
    supports = [np.array(s) for s in ([], [1], [1, 2], [1, 2], [1, 2], [3])]
    assert stable_support_iteration(supports, 2) == 2
    assert stable_support_iteration(supports, 3) is None


# --- bad inputs ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    A, y, problem = scaled_least_squares(0)
    blocks = partition_sorted(problem.coord_lipschitz(), 4)
    with pytest.raises(ValueError, match="square"):
        QuadraticProblem(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="linear"):
        QuadraticProblem(np.eye(3), np.ones(2))
    with pytest.raises(ValueError, match="symmetric"):
        QuadraticProblem(np.array([[1.0, 2.0], [0.0, 1.0]]), np.ones(2))
    with pytest.raises(ValueError, match="y"):
        least_squares(A, y[:-1])
    with pytest.raises(ValueError, match="block_size"):
        partition_sorted(problem.coord_lipschitz(), 3)
    with pytest.raises(TypeError, match="block_size"):
        partition_sorted(problem.coord_lipschitz(), 2.0)
    with pytest.raises(ValueError, match="k must be"):
        vb_top_k(np.ones(3), 4)
    with pytest.raises(ValueError, match="norm"):
        gs_scores(np.ones(20), blocks, norm="linf")
    with pytest.raises(ValueError, match="block_lipschitz"):
        lipschitz_update(np.ones(2), 0.0)
    with pytest.raises(ValueError, match="block_lipschitz"):
        lipschitz_sampling(np.array([1.0, -1.0]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="selection"):
        run_bcd(problem, 10, "gsq", "matrix", variable_block_size=3)
    with pytest.raises(ValueError, match="selection"):
        run_bcd(problem, 10, "best", "matrix", blocks=blocks)
    with pytest.raises(ValueError, match="update"):
        run_bcd(problem, 10, "gs", "newton", blocks=blocks)
    with pytest.raises(ValueError, match="exactly one"):
        run_bcd(problem, 10, "gs", "matrix")
    with pytest.raises(ValueError, match="partition"):
        run_bcd(problem, 10, "gs", "matrix", blocks=blocks[:-1])
    with pytest.raises(TypeError, match="rng"):
        run_bcd(problem, 10, "random", "matrix", blocks=blocks, rng=0)
    with pytest.raises(ValueError, match="n_iters"):
        run_bcd(problem, 0, "gs", "matrix", blocks=blocks)
    with pytest.raises(ValueError, match="same length"):
        tree_block_solve(np.eye(3), np.ones(2), np.arange(3), np.array([-1, 0, 1]))
    with pytest.raises(ValueError, match="earlier position"):
        tree_block_solve(np.eye(3), np.ones(3), np.arange(3), np.array([-1, 2, 0]))
    with pytest.raises(ValueError, match="block indices"):
        forest_structure(lattice_adjacency(2, 2), np.array([0, 0]))
    with pytest.raises(ValueError, match="score"):
        greedy_forest_block(lattice_adjacency(2, 2), np.ones(3), 2)
    with pytest.raises(ValueError, match="symmetric"):
        label_propagation(sp.csr_matrix(np.triu(np.ones((3, 3)), 1)), np.array([0]), np.array([1.0]), 1.0)
    with pytest.raises(ValueError, match="lam"):
        label_propagation(lattice_adjacency(2, 2), np.array([0]), np.array([1.0]), 0.0)
    with pytest.raises(ValueError, match="threshold"):
        soft_threshold(np.ones(2), -1.0)
    with pytest.raises(ValueError, match="lam1"):
        active_set_newton_step(problem, np.ones(20), -1.0)
    with pytest.raises(ValueError, match="selection"):
        run_proximal_bcd(problem, 1.0, blocks, 5, "gsq")
    with pytest.raises(ValueError, match="exactly one"):
        run_forest_bcd(problem, lattice_adjacency(4, 5), 3)
    with pytest.raises(ValueError, match="patience"):
        stable_support_iteration([], 0)
