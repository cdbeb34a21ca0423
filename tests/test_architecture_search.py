import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm, ttest_1samp

from lib.architecture_search import (
    copy_network,
    extract_subnetwork,
    hidden_widths,
    holm_adjust,
    masked_network,
    minimum_detectable_difference,
    node_weight_masks,
    paired_t_power,
    random_search,
    sample_node_masks,
    score_at_init,
    steps_to_threshold,
    train_stacked,
)
from lib.data import DataSplit
from lib.mlp import MLP, train_classifier

WIDTHS = (6, 9, 7, 4)


def toy_data(n=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, WIDTHS[0], generator=gen)
    y = torch.randint(0, WIDTHS[-1], (n,), generator=gen)
    return X, y


# --- node masks ------------------------------------------------------------------------------------------


@given(width=st.integers(1, 300), sparsity=st.floats(0, 0.999), seed=st.integers(0, 10**6))
@settings(max_examples=60, deadline=None)
def test_sample_node_masks_keeps_exactly_round_one_minus_s_units(width, sparsity, seed):
    masks = sample_node_masks([width, width + 3], sparsity, np.random.default_rng(seed))
    for mask, w in zip(masks, [width, width + 3], strict=True):
        assert mask.dtype == bool and mask.shape == (w,)
        expected = max(1, w - round(sparsity * w))
        assert mask.sum() == expected
        if (1 - sparsity) * w % 1 != 0.5:  # no tie: the spec's round((1 - s) w)
            assert mask.sum() == max(1, round((1 - sparsity) * w))


def test_sample_node_masks_is_uniform_over_units():
    rng = np.random.default_rng(0)
    counts = sum(sample_node_masks([10], 0.7, rng)[0].astype(int) for _ in range(3000))
    # each unit is kept with probability 3/10: 900 expected, binomial sd ~25
    assert np.all(np.abs(counts - 900) < 5 * np.sqrt(3000 * 0.3 * 0.7))


def test_sample_node_masks_bad_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="sparsity"):
        sample_node_masks([5], 1.0, rng)
    with pytest.raises(ValueError, match="sparsity"):
        sample_node_masks([5], -0.1, rng)
    with pytest.raises(TypeError, match="sparsity"):
        sample_node_masks([5], "0.5", rng)
    with pytest.raises(TypeError, match="rng"):
        sample_node_masks([5], 0.5, 0)
    with pytest.raises(ValueError, match="widths"):
        sample_node_masks([], 0.5, rng)
    with pytest.raises(ValueError, match="widths"):
        sample_node_masks([0], 0.5, rng)


def test_node_weight_masks_match_a_loop_over_entries():
    model = MLP(WIDTHS, seed=0)
    node = sample_node_masks(hidden_widths(model), 0.5, np.random.default_rng(1))
    masks = node_weight_masks(model, node)
    keep = [np.ones(WIDTHS[0], bool), *node, np.ones(WIDTHS[-1], bool)]
    for i in range(len(WIDTHS) - 1):
        w = masks[f"layers.{i}.weight"].numpy()
        for r, c in itertools.product(range(WIDTHS[i + 1]), range(WIDTHS[i])):
            assert w[r, c] == (keep[i + 1][r] and keep[i][c])
        assert np.array_equal(masks[f"layers.{i}.bias"].numpy(), keep[i + 1])


@given(seed=st.integers(0, 10**6), sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95]))
@settings(max_examples=25, deadline=None)
def test_extracted_network_equals_masked_network(seed, sparsity):
    model = MLP(WIDTHS, seed=seed)
    node = sample_node_masks(hidden_widths(model), sparsity, np.random.default_rng(seed))
    X, _ = toy_data(seed=seed)
    small, masked = extract_subnetwork(model, node), masked_network(model, node)
    assert small.widths == (WIDTHS[0], *[int(m.sum()) for m in node], WIDTHS[-1])
    torch.testing.assert_close(small(X), masked(X), atol=1e-6, rtol=0)


def test_masked_network_equals_deleting_units_by_hand():
    model = MLP(WIDTHS, seed=3)
    node = [np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], bool), np.array([0, 1, 1, 0, 0, 0, 1], bool)]
    X, _ = toy_data()
    W = [layer.weight.detach().double() for layer in model.layers]
    b = [layer.bias.detach().double() for layer in model.layers]
    h = torch.relu(X.double() @ W[0].T + b[0]) * torch.as_tensor(node[0])
    h = torch.relu(h @ W[1].T + b[1]) * torch.as_tensor(node[1])
    expected = h @ W[2].T + b[2]
    torch.testing.assert_close(masked_network(model, node)(X).double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(model.layers[0].weight, MLP(WIDTHS, seed=3).layers[0].weight)  # input unchanged


def test_training_the_extracted_network_matches_training_the_masked_parent():
    model = MLP(WIDTHS, seed=4)
    node = sample_node_masks(hidden_widths(model), 0.5, np.random.default_rng(4))
    X, y = toy_data(n=60)
    data = DataSplit(X, y, X[:10], y[:10])
    parent = copy_network(model)
    train_classifier(parent, data, epochs=30, lr=1e-2, batch_size=60, masks=node_weight_masks(model, node))
    small = extract_subnetwork(model, node)
    train_classifier(small, data, epochs=30, lr=1e-2, batch_size=60)
    torch.testing.assert_close(small(X), parent(X), atol=1e-5, rtol=0)


def test_node_mask_bad_inputs():
    model = MLP(WIDTHS, seed=0)
    good = sample_node_masks(hidden_widths(model), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="one per hidden layer"):
        extract_subnetwork(model, good[:1])
    with pytest.raises(ValueError, match=r"node_masks\[1\]"):
        extract_subnetwork(model, [good[0], np.ones(3, bool)])
    with pytest.raises(ValueError, match="keeps no unit"):
        masked_network(model, [good[0], np.zeros(7, bool)])
    with pytest.raises(TypeError, match="node_masks"):
        extract_subnetwork(model, np.ones((2, 9), bool))
    with pytest.raises(TypeError, match="model"):
        extract_subnetwork(torch.nn.Linear(3, 3), good)
    with pytest.raises(ValueError, match="hidden layer"):
        hidden_widths(MLP((3, 2)))


# --- scoring and search ------------------------------------------------------------------------------------


def test_score_at_init_matches_a_numpy_cross_entropy_and_error():
    model = MLP(WIDTHS, seed=5)
    node = sample_node_masks(hidden_widths(model), 0.4, np.random.default_rng(5))
    X, y = toy_data(seed=5)
    logits = masked_network(model, node)(X).detach().double().numpy()
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected_loss = -log_probs[np.arange(len(y)), y.numpy()].mean()
    assert score_at_init(model, node, X, y) == pytest.approx(expected_loss, abs=1e-6)
    expected_error = np.mean(logits.argmax(axis=1) != y.numpy())
    assert score_at_init(model, node, X, y, metric="error") == pytest.approx(expected_error)
    with pytest.raises(ValueError, match="metric"):
        score_at_init(model, node, X, y, metric="accuracy")
    with pytest.raises(ValueError, match="X must be"):
        score_at_init(model, node, X[:, :3], y)


def test_random_search_returns_the_brute_force_argmin():
    model = MLP(WIDTHS, seed=6)
    X, y = toy_data(seed=6)
    result = random_search(
        hidden_widths(model), 0.6, lambda m: score_at_init(model, m, X, y), n_candidates=12,
        rng=np.random.default_rng(6),
    )
    rescored = [score_at_init(model, c, X, y) for c in result.candidates]
    assert len(result.candidates) == 12
    assert result.best_index == min(range(12), key=lambda i: rescored[i])
    assert result.best is result.candidates[result.best_index]
    np.testing.assert_array_equal(result.scores, rescored)
    again = sample_node_masks(hidden_widths(model), 0.6, np.random.default_rng(6))  # the first candidate
    assert all(np.array_equal(a, b) for a, b in zip(again, result.candidates[0], strict=True))


def test_random_search_breaks_ties_towards_the_first_and_checks_inputs():
    result = random_search([5], 0.4, lambda m: 1.0, n_candidates=4, rng=np.random.default_rng(0))
    assert result.best_index == 0
    with pytest.raises(ValueError, match="n_candidates"):
        random_search([5], 0.4, lambda m: 1.0, n_candidates=0, rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="score_fn"):
        random_search([5], 0.4, None, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-finite"):
        random_search([5], 0.4, lambda m: float("nan"), rng=np.random.default_rng(0))


# --- training ----------------------------------------------------------------------------------------------


def test_train_stacked_matches_train_classifier_network_by_network():
    X, y = toy_data(n=50, seed=7)
    data = DataSplit(X, y, X[:5], y[:5])
    nets = [extract_subnetwork(MLP(WIDTHS, seed=s), sample_node_masks((9, 7), 0.3, np.random.default_rng(s)))
            for s in range(3)]
    trained, train_acc = train_stacked(nets, X, y, steps=25, lr=5e-3)
    assert train_acc.shape == (3, 26)
    for net, stacked, acc in zip(nets, trained, train_acc, strict=True):
        reference = copy_network(net)
        history = train_classifier(reference, data, epochs=25, lr=5e-3, batch_size=50, record_train=True)
        for p, q in zip(reference.parameters(), stacked.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
        np.testing.assert_allclose(acc, history.train_acc)
    assert not torch.equal(nets[0].layers[0].weight, trained[0].layers[0].weight)  # inputs unchanged, copies out


def test_train_stacked_accuracy_breaks_ties_towards_the_lowest_class_like_argmax():
    X, y = toy_data(n=60, seed=3)
    tied = MLP(WIDTHS, seed=0)
    with torch.no_grad():
        tied.layers[-1].weight.zero_()
        tied.layers[-1].bias.fill_(0.5)  # every logit equal before the first step: argmax says class 0
    _, train_acc = train_stacked([tied, MLP(WIDTHS, seed=1)], X, y, steps=1, lr=1e-3)
    assert train_acc[0, 0] == pytest.approx(float((y == 0).double().mean()))
    assert train_acc[1, 0] == pytest.approx(float((MLP(WIDTHS, seed=1)(X).argmax(dim=1) == y).double().mean()))


def test_train_stacked_bad_inputs():
    X, y = toy_data()
    with pytest.raises(TypeError, match="networks"):
        train_stacked(MLP(WIDTHS), X, y, steps=2, lr=1e-3)
    with pytest.raises(ValueError, match="widths"):
        train_stacked([MLP(WIDTHS), MLP((6, 5, 4))], X, y, steps=2, lr=1e-3)
    with pytest.raises(ValueError, match="steps"):
        train_stacked([MLP(WIDTHS)], X, y, steps=0, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        train_stacked([MLP(WIDTHS)], X, y, steps=2, lr=0.0)
    with pytest.raises(ValueError, match="X must be"):
        train_stacked([MLP(WIDTHS)], X[:, :2], y, steps=2, lr=1e-3)


def test_steps_to_threshold_against_a_loop():
    curve = [0.1, 0.5, 0.89, 0.9, 0.85, 0.95]
    assert steps_to_threshold(curve, 0.9) == 3
    assert steps_to_threshold(curve, 0.0) == 0
    assert steps_to_threshold(curve, 0.99) is None
    with pytest.raises(ValueError, match="curve"):
        steps_to_threshold([], 0.5)


# --- statistics --------------------------------------------------------------------------------------------


def holm_rejections_brute_force(p, alpha):
    """Holm's procedure as written: test the sorted p-values in turn against alpha / (m - i), stop at the
    first that fails."""
    order = np.argsort(p, kind="stable")
    rejected = np.zeros(len(p), bool)
    for i, j in enumerate(order):
        if p[j] > alpha / (len(p) - i):
            break
        rejected[j] = True
    return rejected


@given(st.lists(st.floats(0, 1), min_size=1, max_size=8), st.sampled_from([0.01, 0.05, 0.1, 0.2]))
@settings(max_examples=200, deadline=None)
def test_holm_adjusted_pvalues_reject_exactly_what_the_step_down_procedure_rejects(p, alpha):
    p = np.array(p)
    adjusted = holm_adjust(p)
    assert np.all(adjusted >= p - 1e-15) and np.all(adjusted <= 1)
    expected = holm_rejections_brute_force(p, alpha)
    decided = adjusted <= alpha
    clear = np.abs(adjusted - alpha) > 1e-12  # away from floating-point ties at the boundary
    np.testing.assert_array_equal(decided[clear], expected[clear])


def test_holm_on_a_hand_example_and_bad_inputs():
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    with pytest.raises(ValueError, match="pvalues"):
        holm_adjust([])
    with pytest.raises(ValueError, match="pvalues"):
        holm_adjust([0.2, 1.5])


def test_minimum_detectable_difference_has_the_requested_power_by_simulation():
    n, sd = 5, 0.8
    mdd = minimum_detectable_difference(sd, n)
    rng = np.random.default_rng(0)
    samples = rng.normal(mdd, sd, size=(40_000, n))
    rejected = ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    assert paired_t_power(mdd, sd, n) == pytest.approx(0.8, abs=1e-9)
    assert paired_t_power(0.0, sd, n) == pytest.approx(0.05, abs=1e-9)  # the size of the test


def test_minimum_detectable_difference_tends_to_the_normal_formula():
    sd, n = 1.3, 300
    z_formula = (norm.ppf(0.975) + norm.ppf(0.8)) * sd / np.sqrt(n)
    assert minimum_detectable_difference(sd, n) == pytest.approx(z_formula, rel=1e-2)
    assert minimum_detectable_difference(sd, n) > z_formula  # t quantiles exceed normal ones
    assert minimum_detectable_difference(2 * sd, 9) == pytest.approx(2 * minimum_detectable_difference(sd, 9))
    assert minimum_detectable_difference(sd, 5, alpha=0.0125) > minimum_detectable_difference(sd, 5)


def test_power_bad_inputs():
    with pytest.raises(ValueError, match="sd"):
        minimum_detectable_difference(0.0, 5)
    with pytest.raises(ValueError, match="n"):
        minimum_detectable_difference(1.0, 1)
    with pytest.raises(ValueError, match="alpha"):
        paired_t_power(1.0, 1.0, 5, alpha=1.5)
    with pytest.raises(ValueError, match="power"):
        minimum_detectable_difference(1.0, 5, power=0.01)
