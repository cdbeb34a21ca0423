import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax as scipy_log_softmax

from lib.data import DataSplit
from lib.stablemax import (
    GrokkingLog,
    bias_free_mlp,
    log_stablemax,
    modular_addition_data,
    nlm_cosine,
    perp_grad_,
    softmax_collapse_fraction,
    softmax_cross_entropy,
    stablemax,
    stablemax_cross_entropy,
    stablemax_score,
    train_grokking,
    zero_gradient_fraction,
)

logit_rows = st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=8)


def numpy_stablemax(x: np.ndarray) -> np.ndarray:
    """Independent float64 oracle: the piecewise score written with numpy, normalised per row."""
    x = np.asarray(x, dtype=np.float64)
    scores = np.empty_like(x)
    scores[x >= 0] = x[x >= 0] + 1
    scores[x < 0] = 1 / (1 - x[x < 0])
    return scores / scores.sum(axis=-1, keepdims=True)


def margin_logits(margin: float, n_classes: int = 10, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with the target at ``margin`` and every other class at 0 (rows with different targets)."""
    targets = torch.arange(n) % n_classes
    logits = torch.zeros(n, n_classes, dtype=torch.float64)
    logits[torch.arange(n), targets] = margin
    return logits, targets


# --- StableMax -------------------------------------------------------------------------------------------


def test_stablemax_score_hand_values():
    x = torch.tensor([-3.0, -1.0, 0.0, 2.0, 1e6], dtype=torch.float64)
    assert stablemax_score(x).tolist() == [0.25, 0.5, 1.0, 3.0, 1e6 + 1]


def test_stablemax_score_gradient_is_finite_and_continuous_at_branch_points():
    x = torch.tensor([-1e-9, 0.0, 1e-9, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(stablemax_score(x).sum(), x)
    # d/dx 1/(1-x) = 1/(1-x)^2 -> 1 at 0-, slope 1 for x >= 0; no NaN from the branch that is not taken
    assert torch.allclose(gradient, torch.ones(5, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(-50, 50, allow_nan=False), min_size=5, max_size=5), min_size=1, max_size=4))
def test_stablemax_matches_numpy_sums_to_one_and_keeps_order(rows):
    x = torch.tensor(rows, dtype=torch.float64)
    probs = stablemax(x)
    np.testing.assert_allclose(probs.numpy(), numpy_stablemax(np.array(rows)), rtol=1e-12)
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, rtol=1e-12)
    order = np.argsort(np.array(rows), axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs.numpy(), order, axis=1)
    assert np.all(np.diff(sorted_probs, axis=1) >= 0)


def test_stablemax_along_other_dim():
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(stablemax(x, dim=0).numpy(), numpy_stablemax(x.numpy().T).T, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(logit_rows)
def test_log_stablemax_is_log_of_the_numpy_oracle(row):
    x = torch.tensor([row], dtype=torch.float64)
    np.testing.assert_allclose(log_stablemax(x).numpy(), np.log(numpy_stablemax(np.array([row]))), rtol=1e-10,
                               atol=1e-12)


def test_stablemax_cross_entropy_closed_form_and_reductions():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 2])
    # row 0: scores 3, 0.5, 1 -> p = 3/4.5; row 1: uniform -> p = 1/3
    expected = torch.tensor([-math.log(3 / 4.5), math.log(3)], dtype=torch.float64)
    losses = stablemax_cross_entropy(logits, targets, reduction="none")
    assert losses.dtype == torch.float64
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(stablemax_cross_entropy(logits, targets), expected.mean())
    torch.testing.assert_close(stablemax_cross_entropy(logits, targets, reduction="sum"), expected.sum())


def test_stablemax_cross_entropy_passes_gradcheck_in_float64():
    generator = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(5, 4, generator=generator, dtype=torch.float64)).requires_grad_(True)
    targets = torch.tensor([0, 3, 1, 1, 2])
    assert torch.autograd.gradcheck(lambda z: stablemax_cross_entropy(z, targets, reduction="none"), (logits,))


def test_stablemax_gradient_survives_logits_scaled_by_1000():
    generator = torch.Generator().manual_seed(2)
    logits = 40 * torch.randn(50, 59, generator=generator, dtype=torch.float64)
    targets = logits.argmax(1)
    assert zero_gradient_fraction(1000 * logits, targets, dtype=torch.float64, activation="stablemax") == 0.0
    assert softmax_collapse_fraction(1000 * logits, targets, dtype=torch.float64, activation="stablemax") == 0.0
    assert softmax_collapse_fraction(1000 * logits, targets, dtype=torch.float64) == 1.0


# --- softmax cross-entropy in a chosen precision -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_softmax_cross_entropy_matches_scipy_for_small_logits(dtype):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(20, 7))
    targets = rng.integers(0, 7, size=20)
    reference = -scipy_log_softmax(logits, axis=1)[np.arange(20), targets]
    ours = softmax_cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets), dtype=dtype, reduction="none")
    assert ours.dtype == dtype
    assert np.max(np.abs(ours.double().numpy() - reference)) < 1e-6


def test_softmax_cross_entropy_rounds_to_zero_at_float32_but_not_float64():
    logits, targets = margin_logits(25.0)
    # the loss is log(1 + 9 e^-25) ~ 1.3e-10: below float32's half-ulp of 1 (2^-24), well inside float64
    assert softmax_cross_entropy(logits, targets, dtype=torch.float32).item() == 0.0
    assert softmax_cross_entropy(logits, targets, dtype=torch.float64).item() == pytest.approx(
        math.log1p(9 * math.exp(-25)), rel=1e-9)


@pytest.mark.parametrize(
    ("margin", "dtype", "expected"),
    [
        (5.0, torch.float16, 0.0), (14.0, torch.float16, 1.0),
        (14.0, torch.float32, 0.0), (25.0, torch.float32, 1.0),
        (25.0, torch.float64, 0.0), (45.0, torch.float64, 1.0),
    ],
)
def test_collapse_fraction_thresholds_follow_each_dtype_epsilon(margin, dtype, expected):
    # collapse when (classes - 1) e^-margin is below half an ulp of 1: margins ~ 10, 19 and 39 for 10 classes
    logits, targets = margin_logits(margin)
    assert softmax_collapse_fraction(logits, targets, dtype=dtype) == expected


def test_collapse_fraction_counts_only_rows_with_zero_loss():
    logits, targets = margin_logits(30.0, n=4)
    logits[1] = 0.0  # a uniform row: loss log(10)
    logits[2, 5] = 60.0  # a wrong class dominates: never collapses
    assert softmax_collapse_fraction(logits, targets, dtype=torch.float32) == 0.5


def test_zero_gradient_needs_the_wrong_classes_to_underflow_too():
    logits, targets = margin_logits(30.0)
    assert softmax_collapse_fraction(logits, targets, dtype=torch.float32) == 1.0
    assert zero_gradient_fraction(logits, targets, dtype=torch.float32) == 0.0  # e^-30 is a normal float32
    logits, targets = margin_logits(200.0)
    assert zero_gradient_fraction(logits, targets, dtype=torch.float32) == 1.0
    assert zero_gradient_fraction(logits, targets, dtype=torch.float64) == 0.0  # e^-200 ~ 1e-87 is not


def test_zero_gradient_fraction_agrees_with_autograd_of_the_float64_loss():
    generator = torch.Generator().manual_seed(4)
    logits = 60 * torch.randn(30, 8, generator=generator, dtype=torch.float64)
    targets = logits.argmax(1)
    leaf = logits.float().requires_grad_(True)
    torch.nn.functional.cross_entropy(leaf, targets, reduction="sum").backward()
    expected = (leaf.grad == 0).all(1).double().mean().item()
    assert zero_gradient_fraction(logits, targets, dtype=torch.float32) == expected


# --- perpGrad and the NLM direction ----------------------------------------------------------------------


def param_with_grad(weights: np.ndarray, gradient: np.ndarray) -> torch.nn.Parameter:
    param = torch.nn.Parameter(torch.tensor(weights, dtype=torch.float64))
    param.grad = torch.tensor(gradient, dtype=torch.float64)
    return param


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 12))
def test_perp_grad_is_orthogonal_to_the_weights_and_keeps_the_norm(seed, size):
    rng = np.random.default_rng(seed)
    weights, gradient = rng.normal(size=(size, 3)), rng.normal(size=(size, 3))
    param = param_with_grad(weights, gradient)
    perp_grad_([param])
    result = param.grad.numpy()
    w, g = weights.ravel(), gradient.ravel()
    expected = g - (w @ g) / (w @ w) * w  # oracle: Gram-Schmidt against w, then the norm of g
    expected *= np.linalg.norm(g) / np.linalg.norm(expected)
    np.testing.assert_allclose(result, expected.reshape(size, 3), rtol=1e-10, atol=1e-12)
    assert abs(w @ result.ravel()) < 1e-6 * np.linalg.norm(w) * np.linalg.norm(g)
    assert np.linalg.norm(result) == pytest.approx(np.linalg.norm(g), rel=1e-12)


def test_perp_grad_works_per_tensor_and_on_edge_cases():
    first = param_with_grad(np.array([1.0, 0.0]), np.array([3.0, 4.0]))
    zero_weights = param_with_grad(np.zeros(2), np.array([1.0, 2.0]))
    parallel = param_with_grad(np.array([1.0, 1.0]), np.array([-2.0, -2.0]))
    no_grad = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    perp_grad_([first, zero_weights, parallel, no_grad])
    assert first.grad.tolist() == [0.0, 5.0]  # the component along w removed, the norm 5 restored
    assert zero_weights.grad.tolist() == [1.0, 2.0]
    assert parallel.grad.tolist() == [0.0, 0.0]
    assert no_grad.grad is None


def test_nlm_cosine_oracles():
    scaling_up = param_with_grad(np.array([1.0, 2.0]), np.array([-0.5, -1.0]))
    assert nlm_cosine([scaling_up]) == pytest.approx(1.0)
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=(3, 2)), rng.normal(size=4)]
    gradients = [rng.normal(size=(3, 2)), rng.normal(size=4)]
    w = np.concatenate([a.ravel() for a in weights])
    g = np.concatenate([a.ravel() for a in gradients])
    params = [param_with_grad(a, b) for a, b in zip(weights, gradients, strict=True)]
    assert nlm_cosine(params) == pytest.approx(-(w @ g) / np.linalg.norm(w) / np.linalg.norm(g), rel=1e-12)
    perp_grad_(params)
    assert nlm_cosine(params) == pytest.approx(0.0, abs=1e-12)


def test_nlm_cosine_of_a_homogeneous_mlp_follows_euler_identity():
    # f(c theta) = c^3 f(theta) for 3 bias-free ReLU layers, so theta . grad L = 3 sum_i dL/dz_i . z_i
    model = bias_free_mlp((6, 5, 4, 3), seed=0).double()
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, targets)
    (logit_gradient,) = torch.autograd.grad(loss, logits, retain_graph=True)
    loss.backward()
    params = list(model.parameters())
    theta_dot_g = 3 * (logit_gradient * logits).sum().item()
    w = torch.cat([p.reshape(-1) for p in params])
    g = torch.cat([p.grad.reshape(-1) for p in params])
    assert nlm_cosine(params) == pytest.approx(-theta_dot_g / (w.norm() * g.norm()).item(), rel=1e-9)


# --- data, model, trainer --------------------------------------------------------------------------------


def test_modular_addition_data_covers_every_pair_once_with_correct_labels():
    p = 7
    data = modular_addition_data(p, 0.4, seed=0)
    assert isinstance(data, DataSplit)
    assert data.X_train.shape == (19, 2 * p) and data.X_test.shape == (30, 2 * p)
    X = torch.cat([data.X_train, data.X_test])
    y = torch.cat([data.y_train, data.y_test])
    a, b = X[:, :p].argmax(1), X[:, p:].argmax(1)
    assert torch.all(X.sum(1) == 2) and X.dtype == torch.float32
    assert torch.equal(y, (a + b) % p)
    assert sorted((a * p + b).tolist()) == list(range(p * p))
    again = modular_addition_data(p, 0.4, seed=0)
    assert torch.equal(again.X_train, data.X_train)
    assert not torch.equal(modular_addition_data(p, 0.4, seed=1).X_train, data.X_train)


def test_bias_free_mlp_is_homogeneous_and_seeded():
    model = bias_free_mlp((8, 6, 4), seed=3)
    assert all(name.endswith("weight") for name, _ in model.named_parameters())
    assert [tuple(p.shape) for p in model.parameters()] == [(6, 8), (4, 6)]
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    scaled = bias_free_mlp((8, 6, 4), seed=3)
    with torch.no_grad():
        for param in scaled.parameters():
            param.mul_(2.0)
        torch.testing.assert_close(scaled(x), 4 * model(x))
    first = next(model.parameters())
    assert first.abs().max() <= 1 / math.sqrt(8)
    assert torch.equal(first, next(bias_free_mlp((8, 6, 4), seed=3).parameters()))


def test_train_grokking_equals_a_hand_written_adamw_loop():
    data = modular_addition_data(5, 0.6, seed=0)
    model = bias_free_mlp((10, 16, 5), seed=0)
    reference = bias_free_mlp((10, 16, 5), seed=0)
    log = train_grokking(model, data, epochs=6, weight_decay=0.5, perp_grad=True, log_every=3, logits_at=(6,))
    optimizer = torch.optim.AdamW(reference.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-25, weight_decay=0.5)
    for _ in range(6):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reference(data.X_train), data.y_train).backward()
        for param in reference.parameters():  # perpGrad written out
            w, g = param.detach().reshape(-1), param.grad.reshape(-1)
            g_perp = g - (w @ g) / (w @ w) * w
            param.grad.copy_((g_perp * g.norm() / g_perp.norm()).view_as(param))
        optimizer.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)
    assert isinstance(log, GrokkingLog)
    assert log.epoch.tolist() == [0, 3, 6]
    torch.testing.assert_close(log.train_logits[6], reference(data.X_train))
    norm = torch.sqrt(sum((p.double() ** 2).sum() for p in reference.parameters())).item()
    assert log.at("weight_norm", 6) == pytest.approx(norm)
    accuracy = (reference(data.X_test).argmax(1) == data.y_test).double().mean().item()
    assert log.at("test_acc", 6) == pytest.approx(accuracy)


def test_train_grokking_with_stablemax_lowers_its_float64_loss():
    data = modular_addition_data(5, 0.6, seed=1)
    model = bias_free_mlp((10, 32, 5), seed=1)
    log = train_grokking(model, data, epochs=40, weight_decay=0.0, loss="stablemax", log_every=40)
    assert log.train_loss[-1] < log.train_loss[0]
    expected = stablemax_cross_entropy(model(data.X_train), data.y_train).item()
    # the last logged loss is that of the final weights
    assert log.train_loss[-1] == pytest.approx(expected)


def test_train_grokking_logs_nan_cosine_when_the_gradient_vanishes():
    data = modular_addition_data(5, 0.6, seed=2)
    model = bias_free_mlp((10, 8, 5), seed=2)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()  # zero weights: zero logits, and every weight gradient is exactly 0
    log = train_grokking(model, data, epochs=1, weight_decay=0.0, perp_grad=True, log_every=1)
    assert np.isnan(log.nlm_cosine).all() and log.weight_norm.tolist() == [0.0, 0.0]
    assert log.train_loss[0] == pytest.approx(math.log(5))


# --- bad inputs ------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    logits, targets = margin_logits(1.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        stablemax_score(np.zeros(3))
    with pytest.raises(TypeError, match="floating-point"):
        stablemax(torch.arange(3))
    with pytest.raises(ValueError, match="dtype must be one of"):
        softmax_cross_entropy(logits, targets, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="reduction must be one of"):
        stablemax_cross_entropy(logits, targets, reduction="max")
    with pytest.raises(ValueError, match="logits must be a float tensor"):
        softmax_cross_entropy(logits[0], targets)
    with pytest.raises(ValueError, match="targets must be an int64 tensor"):
        softmax_cross_entropy(logits, targets[:2])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\)"):
        softmax_cross_entropy(logits, targets + 10)
    with pytest.raises(ValueError, match="activation must be one of"):
        softmax_collapse_fraction(logits, targets, activation="sparsemax")
    with pytest.raises(ValueError, match="at least one tensor with a .grad"):
        perp_grad_([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="undefined"):
        nlm_cosine([param_with_grad(np.ones(2), np.zeros(2))])
    with pytest.raises(ValueError, match="p must be >= 2"):
        modular_addition_data(1, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"train_frac must be in \(0, 1\)"):
        modular_addition_data(7, 1.0, seed=0)
    with pytest.raises(ValueError, match="empty train or test"):
        modular_addition_data(3, 0.01, seed=0)
    with pytest.raises(ValueError, match="widths needs"):
        bias_free_mlp((4,), seed=0)
    with pytest.raises(TypeError, match="each width must be an int"):
        bias_free_mlp((4, 2.5), seed=0)
    data = modular_addition_data(5, 0.5, seed=0)
    model = bias_free_mlp((10, 5), seed=0)
    with pytest.raises(TypeError, match="weight_decay"):
        train_grokking(model, data, epochs=2)  # no silent default: the regulariser must be explicit
    with pytest.raises(ValueError, match="loss must be one of"):
        train_grokking(model, data, epochs=2, weight_decay=0.0, loss="mse")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        train_grokking(model, data, epochs=2, weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"logits_at must lie in \[0, 2\]"):
        train_grokking(model, data, epochs=2, weight_decay=0.0, logits_at=(3,))
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train_grokking(model, data, epochs=0, weight_decay=0.0)
    log = train_grokking(model, data, epochs=2, weight_decay=0.0, log_every=1)
    with pytest.raises(ValueError, match="epoch 5 was not logged"):
        log.at("test_acc", 5)
