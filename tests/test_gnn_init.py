"""Tests of lib/gnn_init.py: the normalisation against a dense entry-by-entry reference (and networkx when it
is installed), Virgo's variances against closed forms on the complete and on regular graphs, U(-a, a)
variances by sampling, the GCN and its gradients against a numpy forward/backward pass, the variance recursion
by Monte Carlo, the CSBM's edge densities, the trainer, and the input errors."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.gnn_init import (
    GCN,
    aggregated_energies,
    csbm_graph,
    gcn_norm_adj,
    init_gcn_,
    initial_weight_variances,
    layer_variances,
    pre_activations_and_gradients,
    random_node_split,
    to_torch_propagation,
    train_gcn,
    uniform_bound,
    virgo_backward_var,
    virgo_forward_var,
    virgo_variances,
)

# --- oracles and small graphs


def exact_close(ours, expected) -> bool:
    """Equal up to floating-point rounding (relative 1e-12, no absolute slack)."""
    return np.allclose(ours, expected, rtol=1e-12, atol=0)


def dense_gcn_norm(adjacency: np.ndarray) -> np.ndarray:
    """Ahat_ij = (A + I)_ij / sqrt(d_i d_j), entry by entry, with d_i the row sums of A + I."""
    with_loops = adjacency + np.eye(len(adjacency))
    degree = with_loops.sum(axis=1)
    n = len(adjacency)
    return np.array([[with_loops[i, j] / np.sqrt(degree[i] * degree[j]) for j in range(n)] for i in range(n)])


def complete_graph(n: int) -> np.ndarray:
    return np.ones((n, n)) - np.eye(n)


def circulant_graph(n: int, offsets: tuple[int, ...]) -> np.ndarray:
    """A (2 * len(offsets))-regular graph: node i is joined to i +- each offset (mod n)."""
    adjacency = np.zeros((n, n))
    for i in range(n):
        for offset in offsets:
            adjacency[i, (i + offset) % n] = adjacency[(i + offset) % n, i] = 1.0
    return adjacency


def random_graph(n: int, p: float, seed: int) -> np.ndarray:
    upper = np.triu(np.random.default_rng(seed).random((n, n)) < p, k=1)
    return (upper | upper.T).astype(float)


def numpy_gcn_forward_backward(weights, propagation, features, labels, train_nodes):
    """Z^l = P relu(Z^{l-1}) W_l and dLoss/dZ^l by hand (float64); mean cross-entropy on train_nodes."""
    hidden, outputs = features, []
    for layer, weight in enumerate(weights):
        if layer > 0:
            hidden = np.maximum(outputs[-1], 0.0)
        outputs.append(propagation @ hidden @ weight)
    logits = outputs[-1]
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    gradient = np.zeros_like(logits)
    gradient[train_nodes] = probabilities[train_nodes]
    gradient[train_nodes, labels[train_nodes]] -= 1.0
    gradient /= len(train_nodes)
    gradients = [gradient]
    for layer in range(len(weights) - 1, 0, -1):
        gradient = (propagation.T @ gradient @ weights[layer].T) * (outputs[layer - 1] > 0)
        gradients.insert(0, gradient)
    return outputs, gradients


# --- the graph


def test_csbm_graph_is_a_simple_undirected_graph_with_balanced_labels():
    graph = csbm_graph(90, 3, 5, 0.2, 0.05, 1.0, np.random.default_rng(0))
    dense = graph.adjacency.toarray()
    assert np.array_equal(dense, dense.T) and np.all(np.diag(dense) == 0)
    assert set(np.unique(dense)) <= {0.0, 1.0}
    assert np.array_equal(np.bincount(graph.labels), [30, 30, 30])
    assert graph.features.shape == (90, 5) and graph.features.dtype == np.float32
    again = csbm_graph(90, 3, 5, 0.2, 0.05, 1.0, np.random.default_rng(0))
    assert (graph.adjacency != again.adjacency).nnz == 0 and np.array_equal(graph.features, again.features)


def test_csbm_with_p_in_one_and_p_out_zero_is_one_clique_per_class():
    graph = csbm_graph(12, 3, 2, 1.0, 0.0, 0.0, np.random.default_rng(1))
    same_class = graph.labels[:, None] == graph.labels[None, :]
    assert np.array_equal(graph.adjacency.toarray(), (same_class & ~np.eye(12, dtype=bool)).astype(float))


def test_csbm_edge_densities_match_p_in_and_p_out():
    p_in, p_out = 0.08, 0.02
    graph = csbm_graph(600, 3, 2, p_in, p_out, 0.0, np.random.default_rng(2))
    dense = graph.adjacency.toarray().astype(bool)
    same_class = graph.labels[:, None] == graph.labels[None, :]
    upper = np.triu(np.ones_like(dense), k=1)
    for mask, p in [(same_class & upper, p_in), (~same_class & upper, p_out)]:
        pairs = mask.sum()
        observed = dense[mask].mean()
        assert abs(observed - p) < 5 * np.sqrt(p * (1 - p) / pairs)


def test_csbm_features_are_scaled_class_means_plus_unit_noise():
    graph = csbm_graph(3000, 2, 4, 0.0, 0.0, 0.0, np.random.default_rng(3))
    assert np.allclose(graph.features.mean(axis=0), 0.0, atol=0.1)
    assert np.allclose(graph.features.var(axis=0), 1.0, atol=0.1)
    scaled = csbm_graph(3000, 2, 4, 0.0, 0.0, 5.0, np.random.default_rng(3))
    class_gap = scaled.features[scaled.labels == 0].mean(axis=0) - scaled.features[scaled.labels == 1].mean(
        axis=0
    )
    assert (
        np.linalg.norm(class_gap) > 2.0
    )  # 5 * |mu_0 - mu_1| is far above the noise of a mean of 1500 samples


def test_random_node_split_is_a_partition_with_the_requested_sizes():
    split = random_node_split(600, (0.3, 0.2, 0.5), np.random.default_rng(0))
    assert (len(split.train), len(split.val), len(split.test)) == (180, 120, 300)
    assert np.array_equal(np.sort(np.concatenate([split.train, split.val, split.test])), np.arange(600))


# --- normalisation


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), p=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_gcn_norm_adj_equals_the_dense_entrywise_formula(n, p, seed):
    adjacency = random_graph(n, p, seed)
    assert np.allclose(gcn_norm_adj(adjacency).toarray(), dense_gcn_norm(adjacency), atol=1e-14)
    assert np.allclose(
        gcn_norm_adj(sp.csr_matrix(adjacency)).toarray(), dense_gcn_norm(adjacency), atol=1e-14
    )


def test_gcn_norm_adj_equals_identity_minus_networkx_normalized_laplacian_with_self_loops():
    networkx = pytest.importorskip("networkx")
    adjacency = random_graph(15, 0.3, 4)
    graph = networkx.from_numpy_array(adjacency + np.eye(15))  # self-loops as edges of weight 1
    expected = np.eye(15) - networkx.normalized_laplacian_matrix(graph, nodelist=range(15)).toarray()
    assert np.allclose(gcn_norm_adj(adjacency).toarray(), expected, atol=1e-12)


def test_gcn_norm_adj_of_the_complete_graph_is_the_averaging_matrix():
    assert np.allclose(gcn_norm_adj(complete_graph(7)).toarray(), np.full((7, 7), 1 / 7))


@pytest.mark.parametrize(
    ("adjacency", "error", "match"),
    [
        (np.ones((2, 3)), ValueError, "square"),
        (np.array([[0.0, 1.0], [0.0, 0.0]]), ValueError, "symmetric"),
        (np.array([[0.0, -1.0], [-1.0, 0.0]]), ValueError, "non-negative"),
        (np.array([[1.0, 1.0], [1.0, 0.0]]), ValueError, "zero diagonal"),
        (np.array([[0.0, np.nan], [np.nan, 0.0]]), ValueError, "non-finite"),
        ([[0, 1], [1, 0]], TypeError, "numpy array"),
    ],
)
def test_gcn_norm_adj_rejects_bad_adjacency(adjacency, error, match):
    with pytest.raises(error, match=match):
        gcn_norm_adj(adjacency)


# --- energies and Virgo's variances


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 10), seed=st.integers(0, 10_000), n_layers=st.integers(1, 5))
def test_aggregated_energies_equal_matrix_power_norms(n, seed, n_layers):
    propagation = dense_gcn_norm(random_graph(n, 0.5, seed))
    signal = np.random.default_rng(seed).random(n) + 0.1  # positive: no energy can vanish
    expected = [np.sum((np.linalg.matrix_power(propagation, k + 1) @ signal) ** 2) for k in range(n_layers)]
    assert exact_close(aggregated_energies(propagation, signal, n_layers), expected)


def test_aggregated_energies_on_the_complete_graph_are_n_times_the_squared_mean():
    signal = np.array([1.0, 2.0, 3.0, 6.0])
    propagation = gcn_norm_adj(complete_graph(4))
    assert np.allclose(aggregated_energies(propagation, signal, 3), [4 * 3.0**2] * 3)


@pytest.mark.parametrize(("n_layers", "hidden", "n_classes"), [(1, 8, 2), (4, 16, 3), (6, 64, 5)])
def test_virgo_on_the_complete_graph_has_closed_forms(n_layers, hidden, n_classes):
    n, n_features = 9, 5
    propagation = gcn_norm_adj(complete_graph(n))
    features = np.random.default_rng(0).random((n, n_features))
    forward = np.array([2 / n_features] + [2 / hidden] * (n_layers - 1))
    backward = np.array([2 / hidden] * (n_layers - 1) + [1 / (n_classes - 1)])
    assert exact_close(virgo_forward_var(propagation, features, hidden, n_layers), forward)
    assert exact_close(virgo_backward_var(propagation, n_classes, hidden, n_layers), backward)
    assert exact_close(
        virgo_variances(propagation, features, n_classes, hidden, n_layers),
        2 * forward * backward / (forward + backward),
    )
    assert exact_close(
        virgo_variances(propagation, features, n_classes, hidden, n_layers, "arithmetic"),
        (forward + backward) / 2,
    )


@pytest.mark.parametrize("offsets", [(1,), (1, 2), (1, 3, 5)])
def test_virgo_on_a_regular_graph_reduces_to_he_scaling(offsets):
    """Ahat 1 = 1 on a k-regular graph: every energy ratio is 1, so hidden layers get He's 2/m exactly."""
    n, hidden, n_classes, n_layers = 14, 32, 4, 5
    propagation = gcn_norm_adj(circulant_graph(n, offsets))
    assert np.allclose(propagation @ np.ones(n), 1.0)
    expected_backward = [2 / hidden] * (n_layers - 1) + [1 / (n_classes - 1)]
    assert exact_close(virgo_backward_var(propagation, n_classes, hidden, n_layers), expected_backward)
    constant_rows = np.tile(np.arange(1.0, 7.0), (n, 1))  # every node has the same feature mean
    assert exact_close(
        virgo_forward_var(propagation, constant_rows, hidden, n_layers),
        [2 / 6] + [2 / hidden] * (n_layers - 1),
    )


def test_virgo_forward_var_matches_its_definition_on_a_random_graph():
    propagation = dense_gcn_norm(random_graph(20, 0.25, 5))
    features = np.random.default_rng(5).normal(size=(20, 3)) + 1.0
    mean_signal = features.mean(axis=1)
    energies = [np.sum((np.linalg.matrix_power(propagation, k) @ mean_signal) ** 2) for k in (1, 2, 3, 4)]
    expected = [2 / 3] + [2 / 16 * energies[k - 1] / energies[k] for k in (1, 2, 3)]
    assert exact_close(virgo_forward_var(propagation, features, 16, 4), expected)


def test_virgo_rejects_bad_arguments():
    propagation = gcn_norm_adj(complete_graph(4))
    features = np.ones((4, 2))
    with pytest.raises(ValueError, match="mean_method"):
        virgo_variances(propagation, features, 3, 8, 2, mean_method="geometric")
    with pytest.raises(ValueError, match="n_classes"):
        virgo_backward_var(propagation, 1, 8, 2)
    with pytest.raises(ValueError, match="n_layers"):
        virgo_forward_var(propagation, features, 8, 0)
    with pytest.raises(ValueError, match="features"):
        virgo_forward_var(propagation, np.ones(4), 8, 2)
    with pytest.raises(ValueError, match="signal"):
        aggregated_energies(propagation, np.ones(3), 2)
    with pytest.raises(ValueError, match="vanishes"):
        aggregated_energies(propagation, np.array([1.0, -1.0, 2.0, -2.0]), 2)


# --- weight variances and initialisation


def test_uniform_bound_gives_a_uniform_law_of_the_requested_variance():
    variances = np.array([0.5, 2 / 64, 3.0])
    bounds = uniform_bound(variances)
    assert np.allclose(bounds**2 / 3, variances)
    samples = np.random.default_rng(0).uniform(-bounds[1], bounds[1], size=200_000)
    assert abs(samples.var() / variances[1] - 1) < 0.01
    assert uniform_bound(0.75) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="variance"):
        uniform_bound(-1.0)


def test_initial_weight_variances_have_the_textbook_values():
    widths = (10, 20, 20, 4)
    assert np.allclose(initial_weight_variances("xavier", widths), [2 / 30, 2 / 40, 2 / 24])
    assert np.allclose(initial_weight_variances("kaiming", widths), [2 / 10, 2 / 20, 2 / 20])
    propagation = gcn_norm_adj(random_graph(30, 0.2, 6))
    features = np.random.default_rng(6).normal(size=(30, 10))
    assert np.allclose(
        initial_weight_variances("virgo", widths, propagation, features),
        virgo_variances(propagation, features, 4, 20, 3),
    )
    with pytest.raises(ValueError, match="scheme"):
        initial_weight_variances("orthogonal", widths)
    with pytest.raises(ValueError, match="propagation"):
        initial_weight_variances("virgo", widths)
    with pytest.raises(ValueError, match="widths"):
        initial_weight_variances("xavier", (10,))
    with pytest.raises(ValueError, match="columns"):
        initial_weight_variances("virgo", (3, 20, 4), propagation, features)


def test_init_gcn_draws_uniform_weights_of_the_requested_variances():
    model = GCN((400, 300, 200))
    variances = np.array([0.01, 0.5])
    init_gcn_(model, variances, torch.Generator().manual_seed(0))
    for weight, variance in zip(model.weights, variances, strict=True):
        values = weight.detach().double().numpy().ravel()
        assert np.abs(values).max() <= np.sqrt(3 * variance) + 1e-6
        assert abs(values.var() / variance - 1) < 0.02
    first = [w.detach().clone() for w in model.weights]
    init_gcn_(model, variances, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(first, model.weights, strict=True))
    with pytest.raises(ValueError, match="one entry per layer"):
        init_gcn_(model, [0.1], torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        init_gcn_(model, variances, np.random.default_rng(0))


# --- the GCN, its gradients and the variance recursion


def small_problem(n=25, widths=(4, 6, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    propagation = gcn_norm_adj(random_graph(n, 0.2, seed))
    features = rng.normal(size=(n, widths[0]))
    labels = rng.integers(0, widths[-1], size=n)
    train_nodes = np.sort(rng.choice(n, size=n // 2, replace=False))
    model = init_gcn_(
        GCN(widths), initial_weight_variances("kaiming", widths), torch.Generator().manual_seed(seed)
    )
    return model, propagation, features, labels, train_nodes


@pytest.mark.parametrize("sparse", [True, False])
def test_gcn_outputs_and_gradients_match_a_numpy_forward_and_backward_pass(sparse):
    model, propagation, features, labels, train_nodes = small_problem()
    if sparse:  # float32, as in the chapter
        torch_propagation, torch_features = to_torch_propagation(propagation), torch.tensor(features).float()
    else:  # float64 throughout
        model = model.double()
        torch_propagation, torch_features = torch.tensor(propagation.toarray()), torch.tensor(features)
    outputs, gradients = pre_activations_and_gradients(
        model, torch_propagation, torch_features, torch.tensor(labels), train_nodes
    )
    weights = [w.detach().double().numpy() for w in model.weights]
    expected_outputs, expected_gradients = numpy_gcn_forward_backward(
        weights, propagation.toarray(), features, labels, train_nodes
    )
    tolerance = 1e-4 if sparse else 1e-10
    for ours, theirs in zip(outputs + gradients, expected_outputs + expected_gradients, strict=True):
        assert np.allclose(ours, theirs, rtol=tolerance, atol=tolerance * np.abs(theirs).max())


def test_sparse_propagation_gives_the_same_weight_gradients_as_dense():
    model, propagation, features, labels, train_nodes = small_problem(seed=3)
    x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(labels)
    grads = []
    for torch_propagation in (to_torch_propagation(propagation), torch.tensor(propagation.toarray()).float()):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(torch_propagation, x)[train_nodes], y[train_nodes]).backward()
        grads.append([w.grad.clone() for w in model.weights])
    for sparse_grad, dense_grad in zip(*grads, strict=True):
        assert torch.allclose(sparse_grad, dense_grad, rtol=1e-4, atol=1e-7)


def test_to_torch_propagation_rejects_a_non_symmetric_matrix():
    with pytest.raises(ValueError, match="symmetric"):
        to_torch_propagation(np.array([[0.5, 0.5], [0.0, 1.0]]))


def test_first_layer_variance_matches_its_closed_form():
    """E_W[mean_ij (Ahat X W)_ij^2] = c2 ||Ahat X||_F^2 / n for weights of variance c2 (X fixed)."""
    n, widths = 40, (6, 16, 3)
    propagation = gcn_norm_adj(random_graph(n, 0.15, 7))
    features = np.random.default_rng(7).normal(size=(n, 6)).astype(np.float32)
    variances = np.array([0.3, 0.05])
    forward, _ = layer_variances(
        widths,
        variances,
        to_torch_propagation(propagation),
        torch.tensor(features),
        torch.zeros(n, dtype=torch.long),
        np.arange(10),
        n_draws=400,
        seed=0,
    )
    expected = variances[0] * np.sum((propagation @ features.astype(np.float64)) ** 2) / n
    assert forward[0] == pytest.approx(expected, rel=0.05)


def test_second_layer_variance_follows_the_recursion():
    """Given H^1 = relu(Z^1), E[mean (Ahat H^1 W_2)^2] = c2_2 ||Ahat H^1||_F^2 / n; checked by Monte Carlo."""
    n, widths = 40, (6, 32, 32)
    propagation = gcn_norm_adj(random_graph(n, 0.15, 8))
    torch_propagation = to_torch_propagation(propagation)
    features = torch.tensor(np.random.default_rng(8).normal(size=(n, 6)), dtype=torch.float32)
    variances = np.array([0.3, 0.05])
    model, generator = GCN(widths), torch.Generator().manual_seed(1)
    measured, predicted = [], []
    for _ in range(300):
        init_gcn_(model, variances, generator)
        first, second = (
            z.detach().double().numpy() for z in model.pre_activations(torch_propagation, features)
        )
        measured.append(np.mean(second**2))
        predicted.append(variances[1] * np.sum((propagation @ np.maximum(first, 0)) ** 2) / n)
    assert np.mean(measured) == pytest.approx(np.mean(predicted), rel=0.05)


def test_layer_variances_average_the_squared_outputs_and_gradients_over_draws():
    model, propagation, features, labels, train_nodes = small_problem(seed=4)
    widths, variances = model.widths, [0.2, 0.1, 0.3]
    args = (
        to_torch_propagation(propagation),
        torch.tensor(features, dtype=torch.float32),
        torch.tensor(labels),
    )
    forward, backward = layer_variances(widths, variances, *args, train_nodes, n_draws=3, seed=9)
    generator, model = torch.Generator().manual_seed(9), GCN(widths)
    squares = []
    for _ in range(3):
        init_gcn_(model, variances, generator)
        outputs, gradients = pre_activations_and_gradients(model, *args, train_nodes)
        squares.append([np.mean(np.square(a, dtype=np.float64)) for a in outputs + gradients])
    assert np.allclose(np.concatenate([forward, backward]), np.mean(squares, axis=0), rtol=1e-6)


def test_gcn_rejects_bad_shapes():
    model, propagation, features, labels, train_nodes = small_problem()
    torch_propagation = to_torch_propagation(propagation)
    with pytest.raises(ValueError, match="features"):
        model(torch_propagation, torch.zeros(25, 5))
    with pytest.raises(ValueError, match="propagation"):
        model(torch.eye(24), torch.zeros(25, 4))
    with pytest.raises(ValueError, match="labels"):
        pre_activations_and_gradients(
            model, torch_propagation, torch.zeros(25, 4), torch.zeros(24).long(), [0]
        )
    with pytest.raises(ValueError, match="train_nodes"):
        pre_activations_and_gradients(
            model, torch_propagation, torch.zeros(25, 4), torch.zeros(25).long(), [25]
        )
    with pytest.raises(ValueError, match="widths"):
        GCN((4, 0, 3))


# --- training


def test_train_gcn_learns_an_easy_graph_and_selects_by_validation():
    rng = np.random.default_rng(0)
    graph = csbm_graph(150, 3, 8, 0.15, 0.005, 1.5, rng)
    split = random_node_split(150, (0.3, 0.2, 0.5), rng)
    widths = (8, 16, 3)
    model = init_gcn_(
        GCN(widths), initial_weight_variances("kaiming", widths), torch.Generator().manual_seed(0)
    )
    result = train_gcn(
        model,
        to_torch_propagation(gcn_norm_adj(graph.adjacency)),
        torch.tensor(graph.features),
        torch.tensor(graph.labels),
        split,
        epochs=60,
        lr=0.02,
    )
    assert result.train_loss[-1] < 0.5 * result.train_loss[0]
    assert result.selected_test_acc > 0.9
    assert result.selected_test_acc == result.test_acc[np.argmax(result.val_acc)]
    assert result.last_test_acc == result.test_acc[-1]


def test_train_gcn_and_the_generators_reject_bad_arguments():
    model, propagation, features, labels, _ = small_problem()
    split = random_node_split(25, (0.4, 0.2, 0.4), np.random.default_rng(0))
    args = (
        model,
        to_torch_propagation(propagation),
        torch.tensor(features).float(),
        torch.tensor(labels),
        split,
    )
    with pytest.raises(ValueError, match="epochs"):
        train_gcn(*args, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        train_gcn(*args, lr=0.0)
    with pytest.raises(ValueError, match="p_in"):
        csbm_graph(10, 2, 2, 1.5, 0.1, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="mean_scale"):
        csbm_graph(10, 2, 2, 0.5, 0.1, -1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_classes"):
        csbm_graph(3, 4, 2, 0.5, 0.1, 1.0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        csbm_graph(10, 2, 2, 0.5, 0.1, 1.0, 0)
    with pytest.raises(ValueError, match="fractions"):
        random_node_split(10, (0.5, 0.5), np.random.default_rng(0))
    with pytest.raises(ValueError, match="too small"):
        random_node_split(3, (0.5, 0.4, 0.1), np.random.default_rng(0))
