"""Block coordinate descent (BCD): greedy block selection, matrix updates, message passing, active sets.

All smooth problems here are quadratics ``f(x) = 0.5 x^T Q x - c^T x + const`` (least squares, label
propagation); the lasso adds ``lam1 ||x||_1``. A *fixed partition* is an int array of shape
(n_blocks, block_size) whose rows are the blocks; *variable blocks* are re-chosen every iteration.
Rules follow Nutini, Laradji and Schmidt (JMLR 2022).
"""

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from lib.validation import check_generator, check_positive_int

FIXED_RULES = ("random", "cyclic", "lipschitz", "gs", "gsl", "gsd", "gsq")
VARIABLE_RULES = ("gs", "gsl", "gsd")
UPDATE_RULES = ("lipschitz", "diag", "matrix")
PROX_RULES = ("random", "cyclic", "gsl")


class QuadraticProblem:
    """``f(x) = 0.5 x^T Q x - c^T x + const``, ``Q`` symmetric positive semi-definite (dense or sparse)."""

    def __init__(self, hessian: np.ndarray | sp.spmatrix, linear: np.ndarray, constant: float = 0.0) -> None:
        linear = np.asarray(linear, dtype=float)
        if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
            raise ValueError(f"hessian must be a square matrix, got shape {hessian.shape}")
        if linear.shape != (hessian.shape[0],):
            raise ValueError(f"linear must have shape ({hessian.shape[0]},), got {linear.shape}")
        hessian = hessian.tocsr() if sp.issparse(hessian) else np.asarray(hessian, dtype=float)
        asymmetry = abs(hessian - hessian.T).max()
        if asymmetry > 1e-10 * max(abs(hessian).max(), 1e-300):
            raise ValueError(f"hessian must be symmetric, got max |Q - Q^T| = {asymmetry:.3g}")
        self.hessian = hessian
        self.linear = linear
        self.constant = float(constant)
        self.n_features = linear.size

    def f(self, x: np.ndarray) -> float:
        """The objective value at ``x``."""
        return float(0.5 * x @ (self.hessian @ x) - self.linear @ x + self.constant)

    def grad(self, x: np.ndarray) -> np.ndarray:
        """The gradient ``Q x - c``."""
        return np.asarray(self.hessian @ x - self.linear).ravel()

    def coord_lipschitz(self) -> np.ndarray:
        """Coordinate Lipschitz constants ``L_i = Q_ii`` (``||A_:,i||^2`` for least squares)."""
        return np.asarray(self.hessian.diagonal(), dtype=float)

    def block_hessian(self, block: np.ndarray) -> np.ndarray:
        """The dense block Hessian ``Q_bb``."""
        block = _check_block(block, self.n_features)
        if sp.issparse(self.hessian):
            return self.hessian[block][:, block].toarray()
        return self.hessian[np.ix_(block, block)]

    def block_lipschitz(self, block: np.ndarray) -> float:
        """The block Lipschitz constant ``L_b``: the largest eigenvalue of ``Q_bb``."""
        return float(np.linalg.eigvalsh(self.block_hessian(block))[-1])

    def gradient_change(self, block: np.ndarray, step: np.ndarray) -> np.ndarray:
        """``Q_:,b d``, the change of the gradient after the block step ``x_b += d`` (computed from the rows
        ``Q_b,:``, which are contiguous, using the symmetry of ``Q``)."""
        return np.asarray(self.hessian[block].T @ step).ravel()


def least_squares(A: np.ndarray, y: np.ndarray) -> QuadraticProblem:
    """``f(x) = 0.5 ||A x - y||^2`` as a quadratic: ``Q = A^T A``, ``c = A^T y``, ``const = 0.5 ||y||^2``."""
    A = np.asarray(A, dtype=float)
    y = np.asarray(y, dtype=float)
    if A.ndim != 2 or y.shape != (A.shape[0],):
        raise ValueError(f"A must be 2-D and y of length A.shape[0]; got A {A.shape}, y {y.shape}")
    return QuadraticProblem(A.T @ A, A.T @ y, 0.5 * float(y @ y))


def lattice_adjacency(rows: int, cols: int, rng: np.random.Generator | None = None) -> sp.csr_matrix:
    """Symmetric weighted adjacency of a ``rows x cols`` 4-neighbour lattice (node ``i * cols + j``).

    Weights are 1, or uniform on [0.1, 1) if ``rng`` is given.
    """
    rows, cols = check_positive_int(rows, "rows"), check_positive_int(cols, "cols")
    index = np.arange(rows * cols).reshape(rows, cols)
    heads = np.concatenate([index[:, :-1].ravel(), index[:-1, :].ravel()])
    tails = np.concatenate([index[:, 1:].ravel(), index[1:, :].ravel()])
    weights = np.ones(heads.size) if rng is None else check_generator(rng).uniform(0.1, 1.0, heads.size)
    upper = sp.coo_matrix((weights, (heads, tails)), shape=(rows * cols, rows * cols))
    return (upper + upper.T).tocsr()


def label_propagation(
    adjacency: sp.spmatrix, labelled: np.ndarray, targets: np.ndarray, lam: float, ridge: float = 1e-3
) -> QuadraticProblem:
    """Label propagation: ``f(x) = 0.5 sum_edges w_ij (x_i - x_j)^2
    + 0.5 lam sum_(i labelled) (x_i - y_i)^2 + 0.5 ridge ||x||^2``.

    Each undirected edge counts once, so ``Q = (graph Laplacian) + lam P + ridge I``, ``P`` the labelled mask.
    """
    if not sp.issparse(adjacency) or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError("adjacency must be a square scipy.sparse matrix")
    if abs(adjacency - adjacency.T).max() > 0 or adjacency.min() < 0:
        raise ValueError("adjacency must be symmetric with non-negative weights")
    labelled = np.asarray(labelled, dtype=int)
    targets = np.asarray(targets, dtype=float)
    if labelled.shape != targets.shape:
        raise ValueError(f"labelled and targets must have one shape, got {labelled.shape}, {targets.shape}")
    if lam <= 0 or ridge < 0:
        raise ValueError(f"lam must be > 0 and ridge >= 0, got lam={lam}, ridge={ridge}")
    n = adjacency.shape[0]
    anchor = np.zeros(n)
    anchor[labelled] = lam
    laplacian = sp.diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
    hessian = laplacian + sp.diags(anchor + ridge)
    linear = np.zeros(n)
    linear[labelled] = lam * targets
    return QuadraticProblem(hessian.tocsc(), linear, 0.5 * lam * float(targets @ targets))


# --- partitions ---------------------------------------------------------------------------------------------


def partition_sorted(lipschitz: np.ndarray, block_size: int) -> np.ndarray:
    """The "Sort" fixed partition: order coordinates by ``L_i``, cut consecutive blocks of ``block_size``."""
    lipschitz = np.asarray(lipschitz, dtype=float)
    block_size = _check_divides(block_size, lipschitz.size)
    return np.argsort(lipschitz, kind="stable").reshape(-1, block_size)


def partition_random(n_features: int, block_size: int, rng: np.random.Generator) -> np.ndarray:
    """A fixed partition of a random permutation of the coordinates into blocks of ``block_size``."""
    n_features = check_positive_int(n_features, "n_features")
    block_size = _check_divides(block_size, n_features)
    return check_generator(rng).permutation(n_features).reshape(-1, block_size)


def vb_top_k(score: np.ndarray, k: int) -> np.ndarray:
    """A variable block: the ``k`` coordinates with the largest ``score`` (ties broken by index)."""
    score = np.asarray(score, dtype=float)
    k = check_positive_int(k, "k")
    if k > score.size:
        raise ValueError(f"k must be <= len(score) = {score.size}, got {k}")
    return np.sort(np.argsort(-score, kind="stable")[:k])


# --- selection rules ----------------------------------------------------------------------------------------


def random_block(n_blocks: int, rng: np.random.Generator) -> int:
    """A block index drawn uniformly."""
    return int(check_generator(rng).integers(check_positive_int(n_blocks, "n_blocks")))


def cyclic_block(iteration: int, n_blocks: int) -> int:
    """Blocks in order 0, 1, ..., n_blocks - 1, 0, ..."""
    return check_positive_int(iteration, "iteration", minimum=0) % check_positive_int(n_blocks, "n_blocks")


def lipschitz_sampling(block_lipschitz: np.ndarray, rng: np.random.Generator) -> int:
    """A block drawn with probability proportional to its Lipschitz constant ``L_b``."""
    block_lipschitz = _check_positive_array(block_lipschitz, "block_lipschitz")
    return int(check_generator(rng).choice(block_lipschitz.size, p=block_lipschitz / block_lipschitz.sum()))


def gs_scores(grad: np.ndarray, blocks: np.ndarray, norm: str = "l2") -> np.ndarray:
    """Gauss-Southwell: ``||g_b||`` per block (``norm="l1"`` gives the reference code's variant)."""
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    g = np.asarray(grad)[blocks]
    return np.abs(g).sum(axis=1) if norm == "l1" else np.sqrt((g**2).sum(axis=1))


def gsl_scores(grad: np.ndarray, blocks: np.ndarray, block_lipschitz: np.ndarray) -> np.ndarray:
    """Gauss-Southwell-Lipschitz: ``||g_b||^2 / L_b`` per block."""
    block_lipschitz = _check_positive_array(block_lipschitz, "block_lipschitz")
    return (np.asarray(grad)[blocks] ** 2).sum(axis=1) / block_lipschitz


def gsd_scores(grad: np.ndarray, blocks: np.ndarray, coord_lipschitz: np.ndarray) -> np.ndarray:
    """Gauss-Southwell-diagonal: ``||g_b||^2_(D_b^-1) = sum_(i in b) g_i^2 / L_i`` per block."""
    coord_lipschitz = _check_positive_array(coord_lipschitz, "coord_lipschitz")
    return (np.asarray(grad)[blocks] ** 2 / coord_lipschitz[blocks]).sum(axis=1)


def gsq_scores(grad: np.ndarray, blocks: np.ndarray, block_inverse_hessians: np.ndarray) -> np.ndarray:
    """Gauss-Southwell-quadratic: ``g_b^T H_b^-1 g_b`` per block (twice the progress of a matrix update)."""
    g = np.asarray(grad)[blocks]
    if block_inverse_hessians.shape != (*blocks.shape, blocks.shape[1]):
        raise ValueError(f"block_inverse_hessians must have shape {(*blocks.shape, blocks.shape[1])}")
    return np.einsum("bi,bij,bj->b", g, block_inverse_hessians, g)


# --- update rules -------------------------------------------------------------------------------------------


def lipschitz_update(grad_block: np.ndarray, block_lipschitz: float) -> np.ndarray:
    """The step ``d_b = -g_b / L_b``."""
    if not block_lipschitz > 0:
        raise ValueError(f"block_lipschitz must be > 0, got {block_lipschitz}")
    return -np.asarray(grad_block) / block_lipschitz


def diag_update(grad_block: np.ndarray, coord_lipschitz_block: np.ndarray) -> np.ndarray:
    """The step ``d_b = -D_b^-1 g_b`` with ``D_b = |b| diag(L_i)``, a diagonal upper bound on ``Q_bb``.

    ``diag(L_i)`` alone need not bound ``Q_bb``; by Cauchy-Schwarz ``x^T Q_bb x <= |b| sum_i L_i x_i^2`` does.
    """
    coord_lipschitz_block = _check_positive_array(coord_lipschitz_block, "coord_lipschitz_block")
    return -np.asarray(grad_block) / (coord_lipschitz_block.size * coord_lipschitz_block)


def matrix_update(grad_block: np.ndarray, block_hessian: np.ndarray) -> np.ndarray:
    """The Newton step ``d_b = -H_b^-1 g_b`` (exact block minimisation for a quadratic)."""
    return -np.linalg.solve(block_hessian, grad_block)


# --- BCD runs -----------------------------------------------------------------------------------------------


@dataclass
class BCDRun:
    """The history of a BCD run: objective values (entry 0 at the start), blocks updated, final iterate."""

    objective: np.ndarray
    blocks: list[np.ndarray]
    x: np.ndarray
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)


def run_bcd(
    problem: QuadraticProblem,
    n_iters: int,
    selection: str,
    update: str,
    *,
    blocks: np.ndarray | None = None,
    variable_block_size: int | None = None,
    rng: np.random.Generator | None = None,
    snapshot_every: int | None = None,
) -> BCDRun:
    """Run ``n_iters`` iterations of BCD from ``x = 0``.

    Give either a fixed partition ``blocks`` (rules in FIXED_RULES) or ``variable_block_size`` (rules in
    VARIABLE_RULES: the top-k coordinates by ``|g_i|`` for GS, by ``g_i^2 / L_i`` for GSL and GSD).
    ``update`` is one of UPDATE_RULES. ``snapshot_every`` stores ``x`` every that many iterations.
    """
    n_iters = check_positive_int(n_iters, "n_iters")
    if update not in UPDATE_RULES:
        raise ValueError(f"update must be one of {UPDATE_RULES}, got {update!r}")
    if (blocks is None) == (variable_block_size is None):
        raise ValueError("give exactly one of blocks (a fixed partition) or variable_block_size")
    coord_lipschitz = _check_positive_array(problem.coord_lipschitz(), "the coordinate Lipschitz constants")
    if blocks is not None:
        blocks = _check_partition(blocks, problem.n_features)
        if selection not in FIXED_RULES:
            raise ValueError(f"selection must be one of {FIXED_RULES} for fixed blocks, got {selection!r}")
        block_hessians = np.stack([problem.block_hessian(b) for b in blocks])
        block_lipschitz = np.linalg.eigvalsh(block_hessians)[:, -1]
        block_inverses = np.linalg.inv(block_hessians) if update == "matrix" or selection == "gsq" else None
        if selection in ("random", "lipschitz"):
            rng = check_generator(rng)
    else:
        variable_block_size = check_positive_int(variable_block_size, "variable_block_size")
        if selection not in VARIABLE_RULES:
            raise ValueError(f"selection must be one of {VARIABLE_RULES}, got {selection!r}")
    x = np.zeros(problem.n_features)
    grad = problem.grad(x)
    objective = [problem.constant]
    chosen = []
    snapshots = {0: x.copy()} if snapshot_every else {}
    for iteration in range(n_iters):
        if blocks is not None:
            index = _select_fixed(selection, iteration, grad, blocks, coord_lipschitz, block_lipschitz,
                                  block_inverses, rng)
            block = blocks[index]
            hessian, lipschitz = block_hessians[index], block_lipschitz[index]
        else:
            score = np.abs(grad) if selection == "gs" else grad**2 / coord_lipschitz
            block = vb_top_k(score, variable_block_size)
            hessian = problem.block_hessian(block)
            lipschitz = float(np.linalg.eigvalsh(hessian)[-1]) if update == "lipschitz" else None
        if update == "lipschitz":
            step = lipschitz_update(grad[block], lipschitz)
        elif update == "diag":
            step = diag_update(grad[block], coord_lipschitz[block])
        elif blocks is not None:
            step = -block_inverses[index] @ grad[block]
        else:
            step = matrix_update(grad[block], hessian)
        x[block] += step
        grad += problem.gradient_change(block, step)
        objective.append(_objective_from_gradient(problem, x, grad))
        chosen.append(block)
        if snapshot_every and (iteration + 1) % snapshot_every == 0:
            snapshots[iteration + 1] = x.copy()
    return BCDRun(np.array(objective), chosen, x, snapshots)


def _select_fixed(
    selection, iteration, grad, blocks, coord_lipschitz, block_lipschitz, block_inverses, rng
) -> int:
    if selection == "random":
        return random_block(len(blocks), rng)
    if selection == "cyclic":
        return cyclic_block(iteration, len(blocks))
    if selection == "lipschitz":
        return lipschitz_sampling(block_lipschitz, rng)
    scores = {
        "gs": lambda: gs_scores(grad, blocks),
        "gsl": lambda: gsl_scores(grad, blocks, block_lipschitz),
        "gsd": lambda: gsd_scores(grad, blocks, coord_lipschitz),
        "gsq": lambda: gsq_scores(grad, blocks, block_inverses),
    }[selection]()
    return int(np.argmax(scores))


def _objective_from_gradient(problem: QuadraticProblem, x: np.ndarray, grad: np.ndarray) -> float:
    """``f(x)`` from ``g = Q x - c`` in O(p): ``0.5 x^T (g - c) + const``."""
    return float(0.5 * x @ (grad - problem.linear) + problem.constant)


# --- message passing on forest-structured blocks ------------------------------------------------------------


def forest_structure(adjacency: sp.spmatrix, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order ``nodes`` so that every node comes after its parent in the forest they induce in ``adjacency``.

    Returns ``(ordered_nodes, parent)``, ``parent[k]`` the position of node k's parent in ``ordered_nodes``
    (-1 for roots). Raises ValueError if the induced subgraph has a cycle.
    """
    nodes = _check_block(nodes, adjacency.shape[0])
    induced = sp.csr_matrix(adjacency)[nodes][:, nodes]
    induced.setdiag(0)
    induced.eliminate_zeros()
    n_edges = induced.nnz // 2
    n_components, component = sp.csgraph.connected_components(induced, directed=False)
    if n_edges != nodes.size - n_components:
        raise ValueError("nodes must induce a forest (a subgraph without cycles) in adjacency")
    first_of_component = np.unique(component, return_index=True)[1]
    virtual = nodes.size  # one extra node joined to a node of every tree, so that one BFS visits all trees
    n_trees = first_of_component.size
    joins = sp.coo_matrix((np.ones(n_trees), (np.full(n_trees, virtual), first_of_component)),
                          shape=(virtual + 1, virtual + 1))
    augmented = sp.bmat([[induced, None], [None, sp.csr_matrix((1, 1))]]) + joins + joins.T
    visit, predecessors = sp.csgraph.breadth_first_order(augmented.tocsr(), virtual, directed=False)
    order = visit[1:]
    position = np.empty(virtual + 1, dtype=int)
    position[order] = np.arange(nodes.size)
    position[virtual] = -1
    parent = position[predecessors[order]]
    return nodes[order], parent


def tree_block_solve(
    hessian: np.ndarray | sp.spmatrix, rhs: np.ndarray, block_nodes: np.ndarray, parent: np.ndarray
) -> np.ndarray:
    """Solve ``H_bb d = rhs`` in O(|b|) when ``H`` restricted to the block is a forest (message passing).

    ``block_nodes`` must list each node after its parent and ``parent[k]`` is the position of node k's parent
    (-1 for roots), as returned by ``forest_structure``. Leaves are eliminated towards the roots
    (``H_jj -= H_ij^2 / H_ii``, ``rhs_j -= H_ij rhs_i / H_ii``), one depth level at a time, then values are
    back-substituted from the roots outwards.
    """
    block_nodes = np.asarray(block_nodes, dtype=int)
    parent = np.asarray(parent, dtype=int)
    rhs = np.asarray(rhs, dtype=float)
    if parent.shape != block_nodes.shape or rhs.shape != block_nodes.shape:
        raise ValueError("block_nodes, parent and rhs must have the same length")
    has_parent = parent >= 0
    if np.any(parent[has_parent] >= np.flatnonzero(has_parent)):
        raise ValueError("parent[k] must point to an earlier position (list each node after its parent)")
    depth = np.zeros(block_nodes.size, dtype=int)
    for k in np.flatnonzero(has_parent):
        depth[k] = depth[parent[k]] + 1
    diagonal = np.asarray(hessian.diagonal(), dtype=float)[block_nodes]
    child, mother = np.flatnonzero(has_parent), parent[has_parent]
    coupling = np.zeros(block_nodes.size)
    pairs = (block_nodes[child], block_nodes[mother])
    coupling[child] = np.asarray(hessian[pairs]).ravel()
    pivot, reduced = diagonal.copy(), rhs.copy()
    for level in range(depth.max(), 0, -1):
        k = np.flatnonzero(depth == level)
        np.add.at(pivot, parent[k], -coupling[k] ** 2 / pivot[k])
        np.add.at(reduced, parent[k], -coupling[k] * reduced[k] / pivot[k])
    solution = np.empty(block_nodes.size)
    roots = depth == 0
    solution[roots] = reduced[roots] / pivot[roots]
    for level in range(1, depth.max() + 1):
        k = np.flatnonzero(depth == level)
        solution[k] = (reduced[k] - coupling[k] * solution[parent[k]]) / pivot[k]
    return solution


def red_black_blocks(rows: int, cols: int) -> list[np.ndarray]:
    """The two colours of a ``rows x cols`` lattice's checkerboard: each block has no internal edges."""
    rows, cols = check_positive_int(rows, "rows"), check_positive_int(cols, "cols")
    colour = np.add.outer(np.arange(rows), np.arange(cols)).ravel() % 2
    return [np.flatnonzero(colour == 0), np.flatnonzero(colour == 1)]


def comb_forest_partition(rows: int, cols: int) -> list[np.ndarray]:
    """Cover a ``rows x cols`` lattice with two blocks that each induce a forest (two interleaved "combs").

    Block 0: the first row plus every even column (a comb-shaped tree). Block 1: the odd columns without their
    first node (separate vertical chains, since odd columns are never adjacent).
    """
    rows, cols = check_positive_int(rows, "rows"), check_positive_int(cols, "cols")
    i, j = np.divmod(np.arange(rows * cols), cols)
    in_comb = (i == 0) | (j % 2 == 0)
    return [np.flatnonzero(in_comb), np.flatnonzero(~in_comb)]


def greedy_forest_block(adjacency: sp.spmatrix, score: np.ndarray, max_size: int) -> np.ndarray:
    """Grow a forest-inducing block greedily: visit nodes by decreasing ``score`` and add a node when its
    neighbours already in the block lie in different trees (so no cycle forms), up to ``max_size`` nodes."""
    score = np.asarray(score, dtype=float)
    max_size = check_positive_int(max_size, "max_size")
    adjacency = sp.csr_matrix(adjacency)
    if score.shape != (adjacency.shape[0],):
        raise ValueError(f"score must have shape ({adjacency.shape[0]},), got {score.shape}")
    root = np.full(score.size, -1)  # -1: not in the block; otherwise a union-find parent pointer

    def find(node: int) -> int:
        while root[node] != node:
            root[node] = root[root[node]]
            node = root[node]
        return node

    chosen = []
    for node in np.argsort(-score, kind="stable"):
        neighbours = adjacency.indices[adjacency.indptr[node]:adjacency.indptr[node + 1]]
        trees = [find(m) for m in neighbours if m != node and root[m] >= 0]
        if len(trees) != len(set(trees)):
            continue
        root[node] = node
        for tree in trees:
            root[tree] = node
        chosen.append(node)
        if len(chosen) == max_size:
            break
    return np.sort(np.array(chosen, dtype=int))


def run_forest_bcd(
    problem: QuadraticProblem,
    adjacency: sp.spmatrix,
    n_iters: int,
    *,
    blocks: list[np.ndarray] | None = None,
    greedy_size: int | None = None,
    snapshot_every: int | None = None,
) -> BCDRun:
    """BCD with exact block solves by message passing, from ``x = 0``.

    Either cycle through fixed forest blocks ``blocks`` or, with ``greedy_size``, grow a greedy forest of
    that many nodes from the scores ``g_i^2 / L_i`` every iteration.
    """
    n_iters = check_positive_int(n_iters, "n_iters")
    if (blocks is None) == (greedy_size is None):
        raise ValueError("give exactly one of blocks (fixed forest blocks) or greedy_size")
    fixed = [forest_structure(adjacency, b) for b in blocks] if blocks is not None else None
    coord_lipschitz = problem.coord_lipschitz()
    x = np.zeros(problem.n_features)
    grad = problem.grad(x)
    objective, chosen = [problem.constant], []
    snapshots = {0: x.copy()} if snapshot_every else {}
    for iteration in range(n_iters):
        if fixed is not None:
            nodes, parent = fixed[iteration % len(fixed)]
        else:
            block = greedy_forest_block(adjacency, grad**2 / coord_lipschitz, greedy_size)
            nodes, parent = forest_structure(adjacency, block)
        step = tree_block_solve(problem.hessian, -grad[nodes], nodes, parent)
        x[nodes] += step
        grad += problem.gradient_change(nodes, step)
        objective.append(_objective_from_gradient(problem, x, grad))
        chosen.append(nodes)
        if snapshot_every and (iteration + 1) % snapshot_every == 0:
            snapshots[iteration + 1] = x.copy()
    return BCDRun(np.array(objective), chosen, x, snapshots)


# --- lasso: proximal BCD, active set, Newton on the active set ----------------------------------------------


def soft_threshold(v: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """``sign(v) max(|v| - threshold, 0)``, the proximal operator of ``threshold ||.||_1``."""
    if np.any(np.asarray(threshold) < 0):
        raise ValueError("threshold must be >= 0")
    return np.sign(v) * np.maximum(np.abs(v) - threshold, 0.0)


def lasso_objective(problem: QuadraticProblem, x: np.ndarray, lam1: float) -> float:
    """``F(x) = f(x) + lam1 ||x||_1``."""
    return problem.f(x) + lam1 * float(np.abs(x).sum())


def prox_lipschitz_update(x_block: np.ndarray, grad_block: np.ndarray, block_lipschitz: float,
                          lam1: float) -> np.ndarray:
    """The proximal-gradient block step to the new ``x_b = soft(x_b - g_b / L_b, lam1 / L_b)``."""
    if not block_lipschitz > 0 or lam1 < 0:
        raise ValueError(f"block_lipschitz must be > 0 and lam1 >= 0, got {block_lipschitz}, {lam1}")
    return soft_threshold(x_block - grad_block / block_lipschitz, lam1 / block_lipschitz) - x_block


def active_set(x: np.ndarray) -> np.ndarray:
    """Indices of the non-zero coordinates (the support)."""
    return np.flatnonzero(np.asarray(x) != 0)


def active_set_newton_step(problem: QuadraticProblem, x: np.ndarray, lam1: float) -> np.ndarray:
    """Newton's method on the active set with the signs of ``x`` fixed: solve
    ``Q_SS z = c_S - lam1 sign(x_S)`` on ``S = active_set(x)``, zero elsewhere. If ``S`` and the signs are
    those of the lasso solution, this is the solution (finite termination)."""
    if lam1 < 0:
        raise ValueError(f"lam1 must be >= 0, got {lam1}")
    support = active_set(x)
    new_x = np.zeros_like(x, dtype=float)
    if support.size:
        right = problem.linear[support] - lam1 * np.sign(x[support])
        new_x[support] = np.linalg.solve(problem.block_hessian(support), right)
    return new_x


def stable_support_iteration(supports: list[np.ndarray], patience: int) -> int | None:
    """The first iteration ``k`` whose support equals the supports of iterations ``k + 1, ..., k + patience``
    (the point where a solver that waits ``patience`` iterations switches to the active set), or None."""
    patience = check_positive_int(patience, "patience")
    unchanged = 0
    for k in range(1, len(supports)):
        unchanged = unchanged + 1 if np.array_equal(supports[k], supports[k - 1]) else 0
        if unchanged == patience:
            return k - patience
    return None


@dataclass
class ProximalRun:
    """Objective ``F``, support size and support per iteration (entry 0: the start), and the final iterate."""

    objective: np.ndarray
    support_size: np.ndarray
    supports: list[np.ndarray]
    x: np.ndarray


def run_proximal_bcd(
    problem: QuadraticProblem,
    lam1: float,
    blocks: np.ndarray,
    n_iters: int,
    selection: str = "gsl",
    rng: np.random.Generator | None = None,
) -> ProximalRun:
    """Proximal BCD for the lasso with block Lipschitz steps, from ``x = 0``.

    ``selection``: "random", "cyclic", or "gsl", the greedy proximal rule that picks the block whose
    proximal step ``d_b`` has the largest ``L_b ||d_b||^2``.
    """
    n_iters = check_positive_int(n_iters, "n_iters")
    if selection not in PROX_RULES:
        raise ValueError(f"selection must be one of {PROX_RULES}, got {selection!r}")
    if lam1 < 0:
        raise ValueError(f"lam1 must be >= 0, got {lam1}")
    blocks = _check_partition(blocks, problem.n_features)
    if selection == "random":
        rng = check_generator(rng)
    block_lipschitz = np.array([problem.block_lipschitz(b) for b in blocks])
    x = np.zeros(problem.n_features)
    grad = problem.grad(x)
    objective, sizes, supports = [lasso_objective(problem, x, lam1)], [0], [active_set(x)]
    for iteration in range(n_iters):
        if selection == "gsl":
            steps = soft_threshold(x[blocks] - grad[blocks] / block_lipschitz[:, None],
                                   lam1 / block_lipschitz[:, None]) - x[blocks]
            index = int(np.argmax(block_lipschitz * (steps**2).sum(axis=1)))
        elif selection == "cyclic":
            index = cyclic_block(iteration, len(blocks))
        else:
            index = random_block(len(blocks), rng)
        block = blocks[index]
        step = prox_lipschitz_update(x[block], grad[block], block_lipschitz[index], lam1)
        x[block] += step
        grad += problem.gradient_change(block, step)
        objective.append(_objective_from_gradient(problem, x, grad) + lam1 * float(np.abs(x).sum()))
        sizes.append(np.count_nonzero(x))
        supports.append(active_set(x))
    return ProximalRun(np.array(objective), np.array(sizes), supports, x)


# --- input checks -------------------------------------------------------------------------------------------


def _check_block(block: np.ndarray, n_features: int) -> np.ndarray:
    block = np.asarray(block)
    if block.ndim != 1 or block.size == 0 or not np.issubdtype(block.dtype, np.integer):
        raise ValueError("a block must be a non-empty 1-D array of integer indices")
    if block.min() < 0 or block.max() >= n_features or np.unique(block).size != block.size:
        raise ValueError(f"block indices must be distinct and in [0, {n_features}), got {block}")
    return block


def _check_partition(blocks: np.ndarray, n_features: int) -> np.ndarray:
    blocks = np.asarray(blocks)
    if blocks.ndim != 2 or not np.issubdtype(blocks.dtype, np.integer):
        raise ValueError(f"blocks must be a 2-D int array (n_blocks, block_size), got shape {blocks.shape}")
    if not np.array_equal(np.sort(blocks.ravel()), np.arange(n_features)):
        raise ValueError(f"blocks must partition the coordinates 0..{n_features - 1}: each exactly once")
    return blocks


def _check_divides(block_size: int, n_features: int) -> int:
    block_size = check_positive_int(block_size, "block_size")
    if n_features % block_size:
        raise ValueError(f"block_size must divide the number of coordinates {n_features}, got {block_size}")
    return block_size


def _check_positive_array(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or values.size == 0 or not np.all(values > 0):
        raise ValueError(f"{name} must be a non-empty 1-D array of positive values")
    return values
