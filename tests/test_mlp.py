"""Tests of lib/mlp.py: initialisation against nn.Linear, one optimiser step against its closed form, a
trained linear model against sklearn's logistic regression, evaluation against sklearn metrics, masks, hooks,
errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss
from torch import nn

from lib.data import DataSplit
from lib.mlp import MLP, History, evaluate, initialise, make_optimizer, minibatch_order, train_classifier
from lib.pruning import full_masks


def tiny_split(n=60, d=3, classes=3, seed=0, with_val=True):
    """Overlapping Gaussian blobs: a small problem whose logistic regression has a unique optimum."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = rng.normal(size=(classes, d))
    X = centres[y] + 1.5 * rng.normal(size=(n, d))
    X_t, y_t = torch.tensor(X, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    val = {"X_val": X_t[:20], "y_val": y_t[:20]} if with_val else {}
    return DataSplit(X_train=X_t, y_train=y_t, X_test=X_t[:30], y_test=y_t[:30], **val)


def softmax_regression_gradient(W, b, X, y):
    """Closed-form gradient of the mean cross-entropy of softmax(X W^T + b) (float64)."""
    logits = X @ W.T + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p.T @ X / len(y), p.mean(axis=0)


# --- the model


def test_torch_default_init_equals_nn_linear():
    torch.manual_seed(7)
    reference = [nn.Linear(5, 4), nn.Linear(4, 3)]
    model = MLP((5, 4, 3), seed=7)
    for ours, theirs in zip(model.layers, reference, strict=True):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)


@pytest.mark.parametrize(
    ("init", "expected_std"),
    [("glorot_normal", math.sqrt(2 / (300 + 200))), ("kaiming_normal", math.sqrt(2 / 300))],
)
def test_normal_inits_have_the_right_scale(init, expected_std):
    layer = MLP((300, 200), init=init, seed=0).layers[0]
    assert abs(layer.weight.std().item() - expected_std) < 0.02 * expected_std
    assert abs(layer.weight.mean().item()) < 0.01 * expected_std
    assert torch.count_nonzero(layer.bias) == 0


def test_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = MLP((6, 5, 2), seed=3)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = MLP((6, 5, 2), seed=3)
    c = MLP((6, 5, 2), seed=4)
    assert torch.equal(a.layers[0].weight, b.layers[0].weight)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    initialise(c, init="torch_default", seed=3)
    assert torch.equal(a.layers[1].bias, c.layers[1].bias)


def test_forward_is_relu_mlp_by_hand():
    model = MLP((4, 6, 5, 3), seed=1)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    h = x
    params = [(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in model.layers]
    h = x.numpy()
    for i, (W, b) in enumerate(params):
        h = h @ W.T + b
        if i < len(params) - 1:
            h = np.maximum(h, 0)
    np.testing.assert_allclose(model(x).detach().numpy(), h, rtol=1e-5, atol=1e-6)
    assert [name for name, _ in model.named_parameters()] == [
        f"layers.{i}.{kind}" for i in range(3) for kind in ("weight", "bias")
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": (5,)}, "widths"),
        ({"widths": (5, 0)}, "widths"),
        ({"widths": (5, 2.0)}, "widths"),
        ({"widths": (5, 2), "init": "xavier"}, "init"),
    ],
)
def test_mlp_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


# --- evaluation and data order


def test_evaluate_matches_sklearn_metrics():
    data = tiny_split()
    model = MLP((3, 8, 3), seed=0)
    accuracy, loss = evaluate(model, data.X_train, data.y_train)
    logits = model(data.X_train).detach().double()
    probs = torch.softmax(logits, dim=1).numpy()
    assert accuracy == pytest.approx(accuracy_score(data.y_train.numpy(), probs.argmax(axis=1)))
    assert loss == pytest.approx(log_loss(data.y_train.numpy(), probs, labels=[0, 1, 2]), rel=1e-5)


def test_evaluate_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same n"):
        evaluate(MLP((3, 2)), torch.zeros(4, 3), torch.zeros(5, dtype=torch.int64))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 50), batch_size=st.integers(1, 60), epochs=st.integers(1, 3), seed=st.integers(0, 99))
def test_minibatch_order_is_a_permutation_per_epoch(n, batch_size, epochs, seed):
    batches = minibatch_order(n, batch_size, epochs, seed)
    per_epoch = math.ceil(n / batch_size)
    assert len(batches) == epochs * per_epoch
    for e in range(epochs):
        epoch = torch.cat(batches[e * per_epoch : (e + 1) * per_epoch])
        assert sorted(epoch.tolist()) == list(range(n))
        assert all(len(b) == batch_size for b in batches[e * per_epoch : (e + 1) * per_epoch - 1])
    again = minibatch_order(n, batch_size, epochs, seed)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_minibatch_order_depends_on_the_seed():
    assert not torch.equal(minibatch_order(100, 100, 1, 0)[0], minibatch_order(100, 100, 1, 1)[0])


@pytest.mark.parametrize("bad", [{"n": 0}, {"batch_size": 0}, {"epochs": 0}, {"n": 2.5}])
def test_minibatch_order_rejects_bad_input(bad):
    kwargs = {"n": 10, "batch_size": 3, "epochs": 1, "seed": 0} | bad
    with pytest.raises(ValueError):
        minibatch_order(**kwargs)


# --- one step against the closed form


def one_full_batch_step(optimizer, lr, **kwargs):
    data = tiny_split(with_val=False)
    model = MLP((3, 3), seed=2)
    W0 = model.layers[0].weight.detach().double().numpy().copy()
    b0 = model.layers[0].bias.detach().double().numpy().copy()
    train_classifier(model, data, epochs=1, lr=lr, optimizer=optimizer, batch_size=60, eval_every=1, **kwargs)
    gW, gb = softmax_regression_gradient(W0, b0, data.X_train.double().numpy(), data.y_train.numpy())
    return model, (W0, b0), (gW, gb)


def test_one_adam_step_is_lr_times_sign_of_gradient():
    # first Adam step: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps)
    lr, eps = 0.01, 1e-8
    model, (W0, b0), (gW, gb) = one_full_batch_step("adam", lr)
    np.testing.assert_allclose(
        model.layers[0].weight.detach().numpy(), W0 - lr * gW / (np.abs(gW) + eps), atol=1e-6
    )
    np.testing.assert_allclose(
        model.layers[0].bias.detach().numpy(), b0 - lr * gb / (np.abs(gb) + eps), atol=1e-6
    )


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_one_sgd_step_with_weight_decay(momentum):
    lr, wd = 0.5, 0.1
    model, (W0, b0), (gW, gb) = one_full_batch_step("sgd", lr, momentum=momentum, weight_decay=wd)
    np.testing.assert_allclose(model.layers[0].weight.detach().numpy(), W0 - lr * (gW + wd * W0), atol=1e-6)
    np.testing.assert_allclose(model.layers[0].bias.detach().numpy(), b0 - lr * (gb + wd * b0), atol=1e-6)


def test_lr_schedule_scales_the_step():
    lr = 0.5
    model, (W0, _), (gW, _) = one_full_batch_step("sgd", lr, lr_schedule=lambda step: 0.25)
    np.testing.assert_allclose(model.layers[0].weight.detach().numpy(), W0 - 0.25 * lr * gW, atol=1e-6)


def test_on_step_hook_sees_every_step_and_the_scheduled_lr():
    seen = []
    train_classifier(
        MLP((3, 3), seed=0),
        tiny_split(),
        epochs=2,
        lr=0.1,
        optimizer="sgd",
        batch_size=25,
        lr_schedule=lambda step: 1.0 / (step + 1),
        on_step=lambda step, model, opt: seen.append((step, opt.param_groups[0]["lr"])),
    )
    assert [s for s, _ in seen] == list(range(1, 7))
    np.testing.assert_allclose([lr for _, lr in seen], [0.1 / s for s in range(1, 7)])


# --- training to convergence against sklearn


def test_linear_model_converges_to_sklearn_logistic_regression():
    data = tiny_split(n=90)
    model = MLP((3, 3), seed=0)
    train_classifier(model, data, epochs=3000, lr=0.05, batch_size=90, eval_every=3000)
    ours = torch.softmax(model(data.X_train), dim=1).detach().numpy()
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000)
    reference.fit(data.X_train.double().numpy(), data.y_train.numpy())
    theirs = reference.predict_proba(data.X_train.double().numpy())
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


# --- masks


def random_masks(model, density, seed):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.shape, generator=generator) < density for name, m in full_masks(model).items()}


@pytest.mark.parametrize(
    "opt_kwargs", [{"optimizer": "adam"}, {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-3}]
)
def test_masked_weights_stay_exactly_zero(opt_kwargs):
    data = tiny_split()
    model = MLP((3, 16, 8, 3), seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_masks(model, 0.5, seed=1)
    grads_seen = []

    def check_grads(step, model, opt):
        grads_seen.extend(
            torch.count_nonzero(dict(model.named_parameters())[n].grad[~m]).item() for n, m in masks.items()
        )

    train_classifier(
        model, data, epochs=5, lr=0.05, batch_size=16, masks=masks, on_step=check_grads, **opt_kwargs
    )
    for name, mask in masks.items():
        weight = dict(model.named_parameters())[name]
        assert torch.count_nonzero(weight[~mask]) == 0
        # kept weights train (a few may sit behind a dead ReLU unit and keep their start value)
        assert (weight[mask] != start[name][mask]).double().mean() > 0.5
    assert grads_seen and max(grads_seen) == 0


def test_all_true_masks_change_nothing():
    data = tiny_split()
    a, b = MLP((3, 10, 3), seed=5), MLP((3, 10, 3), seed=5)
    history_a = train_classifier(a, data, epochs=4, lr=0.01, batch_size=16, seed=3)
    history_b = train_classifier(b, data, epochs=4, lr=0.01, batch_size=16, seed=3, masks=full_masks(b))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    np.testing.assert_array_equal(history_a.test_acc, history_b.test_acc)


def test_a_hook_may_change_the_masks_in_place():
    model = MLP((3, 10, 3), seed=0)
    masks = full_masks(model)

    def prune_first_row_at_step_2(step, model, opt):
        if step == 2:
            masks["layers.0.weight"][0] = False

    train_classifier(
        model, tiny_split(), epochs=3, lr=0.01, batch_size=20, masks=masks, on_step=prune_first_row_at_step_2
    )
    first_row = model.layers[0].weight[0]
    assert torch.count_nonzero(first_row) == 0


def test_on_gradients_sees_dense_gradients_and_can_freeze_weights():
    data = tiny_split()
    model = MLP((3, 10, 3), seed=0)
    masks = full_masks(model)
    masks["layers.0.weight"][:5] = False  # prune the first five rows
    frozen_before = model.layers[1].weight.detach().clone()
    pruned_grad_sizes = []

    def look_and_freeze(step, model, opt):
        pruned_grad_sizes.append(model.layers[0].weight.grad[:5].abs().sum().item())
        model.layers[1].weight.grad.zero_()

    train_classifier(
        model,
        data,
        epochs=3,
        lr=0.05,
        optimizer="sgd",
        batch_size=20,
        masks=masks,
        on_gradients=look_and_freeze,
    )
    assert len(pruned_grad_sizes) == 9
    # pruned weights are 0, but their gradient is not: the hook sees it before the mask zeroes it
    assert min(pruned_grad_sizes) > 0
    assert torch.equal(model.layers[1].weight, frozen_before)
    assert torch.count_nonzero(model.layers[0].weight[:5]) == 0


@pytest.mark.parametrize(
    ("masks", "error"),
    [
        ({"layers.9.weight": torch.ones(2, 3, dtype=torch.bool)}, ValueError),
        ({"layers.0.weight": torch.ones(3, 2, dtype=torch.bool)}, ValueError),
        ({"layers.0.weight": torch.ones(3, 3)}, TypeError),
    ],
)
def test_bad_masks_are_rejected(masks, error):
    with pytest.raises(error):
        train_classifier(MLP((3, 3)), tiny_split(), epochs=1, lr=0.1, masks=masks)


# --- the history


def test_history_records_the_evaluation_schedule_and_final_metrics():
    data = tiny_split()
    model = MLP((3, 8, 3), seed=0)
    history = train_classifier(model, data, epochs=3, lr=0.01, batch_size=25, eval_every=4, record_train=True)
    assert history.step.tolist() == [0, 4, 8, 9]
    assert history.final("test_acc") == pytest.approx(evaluate(model, data.X_test, data.y_test)[0])
    assert history.final("val_loss") == pytest.approx(evaluate(model, data.X_val, data.y_val)[1], rel=1e-6)
    train_loss = evaluate(model, data.X_train, data.y_train)[1]
    assert history.final("train_loss") == pytest.approx(train_loss, rel=1e-6)


def test_history_without_validation_or_train_is_nan():
    history = train_classifier(MLP((3, 3)), tiny_split(with_val=False), epochs=1, lr=0.1)
    assert np.isnan(history.val_loss).all() and np.isnan(history.train_acc).all()
    with pytest.raises(ValueError, match="validation"):
        history.early_stop_step()


def test_training_is_deterministic():
    data = tiny_split()

    def run(seed):
        return train_classifier(MLP((3, 8, 3), seed=1), data, epochs=3, lr=0.01, batch_size=16, seed=seed)

    runs = [run(2), run(2)]
    np.testing.assert_array_equal(runs[0].val_loss, runs[1].val_loss)
    other = run(3)
    assert not np.array_equal(runs[0].val_loss, other.val_loss)


def hand_history():
    nan = np.full(5, np.nan)
    return History(
        step=np.array([0, 2, 4, 6, 8]),
        train_loss=nan,
        train_acc=nan,
        val_loss=np.array([2.0, 0.5, 0.1, 0.1, 0.3]),
        val_acc=np.array([0.1, 0.6, 0.9, 0.95, 0.9]),
        test_loss=nan,
        test_acc=np.array([0.1, 0.5, 0.8, 0.9, 0.85]),
    )


def test_history_queries_on_a_hand_made_history():
    history = hand_history()
    assert history.early_stop_step() == 4
    assert history.steps_to_reach("val_loss", 0.5) == 2
    assert history.steps_to_reach("val_loss", 0.05) is None
    assert history.steps_to_reach("val_acc", 0.9) == 4
    assert history.final("test_acc") == 0.85
    with pytest.raises(ValueError, match="name"):
        history.metric("accuracy")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"lr": 0.0}, "lr"),
        ({"momentum": 1.0, "optimizer": "sgd"}, "momentum"),
        ({"momentum": 0.9}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_make_optimizer_rejects_bad_input(kwargs, match):
    kwargs = {"optimizer": "adam", "lr": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        make_optimizer(MLP((2, 2)).parameters(), **kwargs)


def test_train_rejects_bad_eval_every():
    with pytest.raises(ValueError, match="eval_every"):
        train_classifier(MLP((3, 3)), tiny_split(), epochs=1, lr=0.1, eval_every=0)
