"""Tests of lib.granet against independent oracles: the closed-form cubic schedule, brute-force magnitude
death, a hand-written SGD loop for the plasticity branches, and step-for-step equality of special cases."""

import copy
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lib.data import digits_split
from lib.granet import (
    pruning_plasticity,
    random_erk_masks,
    train_sparse,
    update_topology,
)
from lib.mlp import MLP, minibatch_order, train_classifier
from lib.pruning import erk_densities, full_masks

WIDTHS = (64, 48, 32, 10)
SGD = dict(lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=5e-4)


@pytest.fixture(scope="module")
def data():
    return digits_split()


def closed_form_density(step, d_init, d_final, t_end):
    """Zhu & Gupta's cubic schedule, written out independently of lib.pruning.gmp_density."""
    progress = min(step / t_end, 1.0)
    return d_final + (d_init - d_final) * (1 - progress) ** 3


def test_gmp_density_follows_the_closed_form_at_every_update(data):
    run = train_sparse(
        MLP(WIDTHS, seed=0), data, method="gmp", density=0.05, epochs=4, batch_size=120, update_every=3,
        prune_end=0.6, seed=0, **SGD,
    )
    total = sum(mask.numel() for mask in run.masks.values())
    t_end = 0.6 * 40
    assert list(run.update_steps) == list(range(3, 40, 3))
    for step, kept in zip(run.update_steps, run.nnz.sum(axis=1), strict=True):
        assert kept == round(closed_form_density(step, 1.0, 0.05, t_end) * total)
    assert run.densities[-1] == pytest.approx(0.05, abs=1 / total)
    assert run.regrown.sum() == 0


def test_regrowth_keeps_every_layer_count_and_replaces_weights(data):
    model = MLP(WIDTHS, seed=1)
    start = random_erk_masks(MLP(WIDTHS, seed=1), 0.1, seed=3)
    run = train_sparse(
        model, data, method="rigl", density=0.1, epochs=3, batch_size=120, update_every=5, mask_seed=3, seed=1,
        **SGD,
    )
    start_counts = [int(mask.sum()) for mask in start.values()]
    assert (run.nnz == np.array(start_counts)).all()
    assert [int(mask.sum()) for mask in run.masks.values()] == start_counts
    assert (run.regrown > 0).all()
    assert any(not torch.equal(run.masks[name], start[name]) for name in start)
    for name, param in model.named_parameters():
        if name in run.masks:
            assert (param[~run.masks[name]] == 0).all()


def test_static_run_keeps_its_erk_mask_and_rescales_the_init(data):
    model, reference = MLP(WIDTHS, seed=2), MLP(WIDTHS, seed=2)
    run = train_sparse(
        model, data, method="static", density=0.2, epochs=1, batch_size=120, mask_seed=5, seed=0, lr=1e-12,
        optimizer="sgd",
    )
    shapes = {name: tuple(mask.shape) for name, mask in run.masks.items()}
    densities = erk_densities(shapes, 0.2)
    assert run.update_steps.size == 0
    ref_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        if name in run.masks:
            mask = run.masks[name]
            assert int(mask.sum()) == round(densities[name] * mask.numel())
            expected = ref_params[name].detach() * mask / math.sqrt(mask.double().mean().item())
            torch.testing.assert_close(param.detach(), expected.float(), atol=1e-6, rtol=1e-5)


def test_granet_with_death_rate_zero_is_gmp_step_for_step(data):
    runs = {}
    for method in ("gmp", "granet"):
        model = MLP(WIDTHS, seed=4)
        run = train_sparse(
            model, data, method=method, density=0.05, epochs=3, batch_size=120, update_every=4, death_rate=0.0,
            death_rate_min=0.0, seed=4, eval_every=1, **SGD,
        )
        runs[method] = (run, model)
    (gmp, gmp_model), (granet, granet_model) = runs["gmp"], runs["granet"]
    np.testing.assert_array_equal(gmp.history.test_loss, granet.history.test_loss)
    np.testing.assert_array_equal(gmp.nnz, granet.nnz)
    for a, b in zip(gmp_model.parameters(), granet_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_granet_regrows_and_reaches_the_final_density(data):
    run = train_sparse(
        MLP(WIDTHS, seed=5), data, method="granet", density=0.05, d_init=0.5, epochs=4, batch_size=120,
        update_every=5, mask_seed=1, seed=5, **SGD,
    )
    total = sum(mask.numel() for mask in run.masks.values())
    assert run.nnz[0].sum() <= round(0.5 * total)
    assert run.nnz[-1].sum() == round(0.05 * total)
    assert (run.regrown > 0).all()


def brute_force_survivors(weights, mask, death_rate):
    """Mask without the ceil(death_rate * n_active) active entries of smallest |w| (by a plain numpy sort)."""
    w = weights.numpy().ravel()
    m = mask.numpy().ravel().copy()
    active = np.flatnonzero(m)
    n_remove = math.ceil(death_rate * active.size)
    order = active[np.argsort(np.abs(w[active]), kind="stable")]
    m[order[:n_remove]] = False
    return torch.from_numpy(m.reshape(mask.shape))


def test_regrown_weights_start_at_zero_so_outputs_do_not_change():
    torch.manual_seed(0)
    model = MLP((6, 20, 5), seed=0)
    masks = random_erk_masks(model, 0.4, seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    x = torch.randn(8, 6)
    F.cross_entropy(model(x), torch.arange(8) % 5).backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    old = {name: mask.clone() for name, mask in masks.items()}
    params = dict(model.named_parameters())
    survivors = {name: brute_force_survivors(params[name].detach(), old[name], 0.3) for name in masks}
    after_death = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in after_death.named_parameters():
            if name in masks:
                param.mul_(survivors[name])

    n_regrown = update_topology(model, optimizer, masks, death_rate=0.3)

    assert n_regrown == sum(int((masks[n] & ~old[n]).sum()) for n in masks) > 0
    for name in masks:
        assert torch.equal(masks[name] & old[name], survivors[name])
        assert int(masks[name].sum()) == int(old[name].sum())
        assert (params[name][masks[name] & ~old[name]] == 0).all()
        grad = params[name].grad.abs()
        regrown = masks[name] & ~old[name]
        candidates = ~old[name]
        assert grad[regrown].min() >= grad[candidates & ~regrown].max()
    with torch.no_grad():
        torch.testing.assert_close(model(x), after_death(x), rtol=0, atol=0)


def test_update_topology_needs_gradients():
    model = MLP((4, 3, 2), seed=0)
    masks = full_masks(model)
    with pytest.raises(ValueError, match="gradients"):
        update_topology(model, torch.optim.SGD(model.parameters(), lr=0.1), masks, death_rate=0.2)


def reference_sgd(model, data, batches, lr_factors, state):
    """A plain SGD-with-momentum loop (torch.optim.SGD, not fused) over the given minibatches."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for param, buffer in zip(model.parameters(), state, strict=True):
        if buffer is not None:
            optimizer.state[param]["momentum_buffer"] = buffer.clone()
    for idx, factor in zip(batches, lr_factors, strict=True):
        optimizer.param_groups[0]["lr"] = 0.1 * factor
        optimizer.zero_grad()
        F.cross_entropy(model(data.X_train[idx]), data.y_train[idx]).backward()
        optimizer.step()
    return [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]


def test_plasticity_branch_continues_the_dense_run(data):
    """Density 1: the branch at epoch 2 must be the dense prefix, then the rest of the schedule with the
    momentum carried over and fresh minibatches drawn with the same seed."""
    epochs, spe = 4, 10
    schedule = lambda step: 1.0 - step / 50  # noqa: E731
    model = MLP(WIDTHS, seed=6)
    dense, branches = pruning_plasticity(
        model, data, prune_epochs=[0, 2], density=1.0, epochs=epochs, lr_schedule=schedule, batch_size=120,
        seed=7, eval_every=5, **SGD,
    )
    at_zero, at_two = branches
    np.testing.assert_array_equal(at_zero.history.test_acc, dense.test_acc)
    np.testing.assert_array_equal(at_two.history.step, dense.step)

    oracle = copy.deepcopy(model)
    n = data.X_train.shape[0]
    prefix = minibatch_order(n, 120, 2, 7)
    state = reference_sgd(oracle, data, prefix, [schedule(t) for t in range(2 * spe)], [None] * 6)
    suffix = minibatch_order(n, 120, epochs - 2, 7)
    reference_sgd(oracle, data, suffix, [schedule(t + 2 * spe) for t in range(len(suffix))], state)
    logits = oracle(data.X_test)
    accuracy = (logits.argmax(1) == data.y_test).double().mean().item()
    assert at_two.history.test_acc[-1] == pytest.approx(accuracy, abs=2 / len(data.y_test))
    assert at_two.history.test_loss[-1] == pytest.approx(F.cross_entropy(logits, data.y_test).item(), rel=1e-4)
    assert model.layers[0].weight.grad is None  # the input model is untouched


def test_plasticity_prunes_each_layer_and_regrowth_keeps_the_counts(data):
    dense, branches = pruning_plasticity(
        MLP(WIDTHS, seed=8), data, prune_epochs=[1], density=0.1, epochs=2, regrow=(False, True), lr=0.05,
        optimizer="sgd", momentum=0.9, batch_size=120, update_every=3, seed=0, eval_every=5,
    )
    assert [(b.prune_epoch, b.regrow) for b in branches] == [(1, False), (1, True)]
    assert dense.step[-1] == branches[0].history.step[-1] == 20
    for branch in branches:
        for mask in branch.masks.values():
            assert int(mask.sum()) == round(0.1 * mask.numel())
    assert any(not torch.equal(branches[0].masks[n], branches[1].masks[n]) for n in branches[0].masks)
    _, (global_branch,) = pruning_plasticity(
        MLP(WIDTHS, seed=8), data, prune_epochs=[1], density=0.1, epochs=2, pruning="global", lr=0.05,
        optimizer="sgd", batch_size=120, seed=0, eval_every=20,
    )
    total = sum(mask.numel() for mask in global_branch.masks.values())
    assert sum(int(mask.sum()) for mask in global_branch.masks.values()) == round(0.1 * total)
    # right after pruning at step 10 (the first record of the branch) the accuracy differs from dense
    at_prune = branches[0].history.step.tolist().index(10)
    assert branches[0].history.test_loss[at_prune] != dense.test_loss[dense.step.tolist().index(10)]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(method="snip"), ValueError),
        (dict(density=0.0), ValueError),
        (dict(density=1.5), ValueError),
        (dict(density="0.1"), TypeError),
        (dict(method="gmp", d_init=0.01), ValueError),
        (dict(prune_end=0.0), ValueError),
        (dict(update_every=0), ValueError),
        (dict(death_rate=1.0), ValueError),
        (dict(death_rate=0.1, death_rate_min=0.2), ValueError),
        (dict(epochs=0), ValueError),
        (dict(masks={}), TypeError),
    ],
)
def test_train_sparse_rejects_bad_input(data, kwargs, error):
    arguments = dict(method="granet", density=0.05, epochs=1, lr=0.1) | kwargs
    with pytest.raises(error):
        train_sparse(MLP(WIDTHS, seed=0), data, **arguments)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(prune_epochs=[]), ValueError),
        (dict(prune_epochs=[3]), ValueError),
        (dict(prune_epochs=[-1]), ValueError),
        (dict(density=0.0), ValueError),
        (dict(regrow=[]), ValueError),
        (dict(regrow=["yes"]), ValueError),
        (dict(death_rate=1.2), ValueError),
        (dict(on_step=print), TypeError),
        (dict(pruning="random"), ValueError),
    ],
)
def test_pruning_plasticity_rejects_bad_input(data, kwargs, error):
    arguments = dict(prune_epochs=[1], density=0.5, epochs=3, lr=0.1) | kwargs
    with pytest.raises(error):
        pruning_plasticity(MLP(WIDTHS, seed=0), data, **arguments)


def test_train_sparse_is_deterministic(data):
    finals = [
        train_sparse(
            MLP(WIDTHS, seed=9), data, method="granet", density=0.1, epochs=2, batch_size=120, update_every=4,
            seed=1, **SGD,
        ).history.test_loss
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*finals)


def test_train_classifier_unchanged_when_static_density_is_one(data):
    model, reference = MLP(WIDTHS, seed=3), MLP(WIDTHS, seed=3)
    run = train_sparse(model, data, method="static", density=1.0, epochs=2, batch_size=120, seed=2, **SGD)
    history = train_classifier(reference, data, epochs=2, batch_size=120, seed=2, **SGD)
    np.testing.assert_array_equal(run.history.test_loss, history.test_loss)
