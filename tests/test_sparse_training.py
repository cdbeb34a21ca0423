"""Tests of lib/sparse_training.py: layerwise densities against hand-computed ERK counts and the density budget,
the init scaling against the analytic pre-activation variance of a dense layer (Monte Carlo over weights and
masks), the cosine schedule against torch's CosineAnnealingLR, and the static-sparse trainer against dense
training (bit for bit with all-True masks)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib.data import DataSplit
from lib.mlp import MLP, evaluate, train_classifier
from lib.pruning import erk_densities, full_masks, random_masks_at_densities
from lib.sparse_training import (
    cosine_epoch_schedule,
    layerwise_densities,
    masked_init_scale,
    random_sparse_masks,
    scale_masked_init,
    train_static_sparse,
    train_static_sparse_stacked,
)

# --- layerwise densities and random masks


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 200), st.integers(1, 200)), min_size=1, max_size=4),
    st.floats(0.01, 1.0),
    st.sampled_from(["ERK", "ER", "uniform"]),
)
def test_layerwise_densities_keep_the_budget(dims, density, distribution):
    shapes = {f"layer{i}": shape for i, shape in enumerate(dims)}
    densities = layerwise_densities(shapes, density, distribution=distribution)
    assert all(0 < d <= 1 + 1e-12 for d in densities.values())
    kept = sum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(density * sum(math.prod(s) for s in shapes.values()), rel=1e-9)
    if distribution == "uniform":
        assert set(densities.values()) == {density}


def test_er_and_erk_agree_for_fully_connected_layers_and_favour_small_layers():
    shapes = {"in": (512, 64), "hidden": (512, 512), "out": (10, 512)}
    erk = layerwise_densities(shapes, 0.1, distribution="ERK")
    assert erk == layerwise_densities(shapes, 0.1, distribution="ER")
    assert erk["hidden"] < 0.1 < erk["in"] < erk["out"]
    # density_l / density_k = raw_l / raw_k with raw = (n_in + n_out) / (n_in n_out)
    assert erk["in"] / erk["hidden"] == pytest.approx((576 / 32768) / (1024 / 262144))


def test_random_sparse_masks_keep_the_hand_computed_counts():
    # Layers 64 -> 256 and 256 -> 10 at density 0.1: eps (320 + 266) = 0.1 (16384 + 2560), so the first layer
    # keeps 1894.4 * 320 / 586 = 1034.48 -> 1034 weights and the second 1894.4 * 266 / 586 = 859.92 -> 860.
    model = MLP((64, 256, 10), seed=0)
    masks = random_sparse_masks(model, 0.1, distribution="ERK", seed=3)
    assert {name: int(m.sum()) for name, m in masks.items()} == {"layers.0.weight": 1034, "layers.1.weight": 860}
    uniform = random_sparse_masks(model, 0.1, distribution="uniform", seed=3)
    assert {name: int(m.sum()) for name, m in uniform.items()} == {"layers.0.weight": 1638, "layers.1.weight": 256}
    assert all(torch.equal(masks[n], random_sparse_masks(model, 0.1, seed=3)[n]) for n in masks)
    assert not torch.equal(masks["layers.0.weight"], random_sparse_masks(model, 0.1, seed=4)["layers.0.weight"])
    assert all(bool(m.all()) for m in random_sparse_masks(model, 1.0, seed=0).values())


def test_random_sparse_masks_are_uniform_over_positions():
    model = MLP((8, 6, 4), seed=0)
    counts = torch.zeros(6, 8)
    draws = 600
    for seed in range(draws):
        counts += random_sparse_masks(model, 0.25, distribution="uniform", seed=seed)["layers.0.weight"]
    # each entry is kept with probability 12/48; a binomial count has sd sqrt(600 * 0.25 * 0.75) = 10.6
    assert (counts - draws * 0.25).abs().max() <= 5 * math.sqrt(draws * 0.25 * 0.75)
    assert counts.sum() == draws * 12


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"shapes": {"a": (4, 4)}, "density": 0.0}, ValueError, "density"),
        ({"shapes": {"a": (4, 4)}, "density": 1.5}, ValueError, "density"),
        ({"shapes": {"a": (4, 4)}, "density": True}, TypeError, "density"),
        ({"shapes": {"a": (4, 4)}, "density": 0.5, "distribution": "erk"}, ValueError, "distribution"),
        ({"shapes": {}, "density": 0.5, "distribution": "uniform"}, ValueError, "shapes"),
        ({"shapes": {"a": (4,)}, "density": 0.5, "distribution": "uniform"}, ValueError, "shapes"),
        ({"shapes": {"a": (4, 0)}, "density": 0.5}, ValueError, "shapes"),
    ],
)
def test_layerwise_densities_reject_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        layerwise_densities(**kwargs)


# --- init scaling


def test_masked_init_scale_by_hand():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert masked_init_scale(mask).item() == pytest.approx(1 / math.sqrt(3 / 12))
    per_unit = masked_init_scale(mask, per="unit")
    assert per_unit.shape == (3, 1)
    assert per_unit.flatten().tolist() == pytest.approx([math.sqrt(2), 2.0, 1.0])
    conv = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    conv[0, 0] = True  # unit 0 keeps 4 of its 12 inputs, unit 1 none
    assert masked_init_scale(conv, per="unit").flatten().tolist() == pytest.approx([math.sqrt(3), 1.0])
    assert masked_init_scale(torch.zeros(2, 2, dtype=torch.bool)).item() == 1.0


@pytest.mark.parametrize(
    ("mask", "per", "error"),
    [
        (torch.ones(3, 3), "layer", TypeError),
        (torch.ones(3, dtype=torch.bool), "layer", TypeError),
        (torch.ones(3, 3, dtype=torch.bool), "row", ValueError),
    ],
)
def test_masked_init_scale_rejects_bad_input(mask, per, error):
    with pytest.raises(error):
        masked_init_scale(mask, per=per)


def preactivation_second_moments(layer: nn.Linear, mask: torch.Tensor, n_inputs: int, seed: int) -> torch.Tensor:
    """Per unit, the Monte Carlo mean of z^2 for z = (mask * W) x, x ~ N(0, I) (no bias)."""
    x = torch.randn(n_inputs, layer.in_features, generator=torch.Generator().manual_seed(seed))
    z = x @ (layer.weight.detach() * mask).T
    return (z**2).mean(dim=0)


def test_layer_scaling_restores_the_dense_preactivation_variance():
    # nn.Linear's default weights are U(-1/sqrt(n_in), 1/sqrt(n_in)): Var(z) = n_in * 1 / (3 n_in) = 1/3 for
    # a dense layer with x ~ N(0, I); masking to density d without rescaling gives d / 3.
    n_in, n_out, density = 200, 50, 0.1
    scaled, unscaled = [], []
    for seed in range(40):
        layer = MLP((n_in, n_out), seed=seed)
        masks = random_sparse_masks(layer, density, distribution="uniform", seed=100 + seed)
        unscaled.append(preactivation_second_moments(layer.layers[0], masks["layers.0.weight"], 400, seed))
        scale_masked_init(layer, masks)
        scaled.append(preactivation_second_moments(layer.layers[0], masks["layers.0.weight"], 400, seed))
    # 2000 units, each a sum of 20 weights: the mean of z^2 is within a few percent of its expectation
    assert torch.cat(scaled).mean().item() == pytest.approx(1 / 3, rel=0.05)
    assert torch.cat(unscaled).mean().item() == pytest.approx(density / 3, rel=0.05)


def test_unit_scaling_restores_the_variance_of_every_unit():
    n_in = 100
    mask = torch.zeros(4, n_in, dtype=torch.bool)
    for unit, kept in enumerate((2, 10, 50, 100)):
        mask[unit, :kept] = True
    by_layer, by_unit = torch.zeros(4), torch.zeros(4)
    n_models = 300
    for seed in range(n_models):
        for per, total in (("layer", by_layer), ("unit", by_unit)):
            model = MLP((n_in, 4), seed=seed)
            scale_masked_init(model, {"layers.0.weight": mask}, per=per)
            # exact in x: E_x z_i^2 = sum_j (m_ij w_ij)^2
            total += ((model.layers[0].weight.detach() * mask) ** 2).sum(dim=1)
    expected = torch.full((4,), 1 / 3)
    torch.testing.assert_close(by_unit / n_models, expected, rtol=0.12, atol=0)
    layer_density = mask.double().mean().item()
    kept_fraction = mask.double().mean(dim=1).float()
    torch.testing.assert_close(by_layer / n_models, kept_fraction / layer_density / 3, rtol=0.12, atol=0)


def test_scale_masked_init_leaves_dense_layers_bit_for_bit_and_checks_masks():
    model = MLP((5, 7, 3), seed=1)
    before = [p.detach().clone() for p in model.parameters()]
    scale_masked_init(model, full_masks(model), per="layer")
    scale_masked_init(model, full_masks(model), per="unit")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(ValueError, match="shape"):
        scale_masked_init(model, {"layers.0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="per"):
        scale_masked_init(model, full_masks(model), per="row")


# --- schedule


@pytest.mark.parametrize(("epochs", "steps_per_epoch"), [(1, 3), (4, 1), (40, 10), (7, 5)])
def test_cosine_epoch_schedule_matches_torch_cosine_annealing(epochs, steps_per_epoch):
    schedule = cosine_epoch_schedule(epochs=epochs, steps_per_epoch=steps_per_epoch)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    torch_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            assert schedule(step) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        opt.step()
        torch_schedule.step()
    assert schedule(epochs * steps_per_epoch + 5) == pytest.approx(0.0, abs=1e-12)


def test_cosine_epoch_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="epochs"):
        cosine_epoch_schedule(epochs=0, steps_per_epoch=3)
    with pytest.raises(TypeError, match="steps_per_epoch"):
        cosine_epoch_schedule(epochs=2, steps_per_epoch=2.5)
    with pytest.raises(ValueError, match="step"):
        cosine_epoch_schedule(epochs=2, steps_per_epoch=2)(-1)


# --- static sparse training


def tiny_data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(96, 6, generator=generator)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 1).long()
    return DataSplit(X[:64], y[:64], X[64:], y[64:])


TRAIN = {"epochs": 3, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 16}


@pytest.mark.parametrize("scale_init", ["layer", "unit", None])
def test_all_true_masks_reproduce_dense_training_bit_for_bit(scale_init):
    data = tiny_data()
    dense, sparse = MLP((6, 16, 16, 3), seed=2), MLP((6, 16, 16, 3), seed=2)
    schedule = cosine_epoch_schedule(epochs=3, steps_per_epoch=4)
    dense_history = train_classifier(dense, data, seed=5, lr_schedule=schedule, **TRAIN)
    sparse_history = train_static_sparse(
        sparse, data, full_masks(sparse), scale_init=scale_init, seed=5, lr_schedule=schedule, **TRAIN
    )
    assert all(torch.equal(a, b) for a, b in zip(dense.parameters(), sparse.parameters(), strict=True))
    assert (dense_history.test_loss == sparse_history.test_loss).all()


def test_static_sparse_training_scales_the_init_and_keeps_the_mask():
    data = tiny_data()
    model, reference = MLP((6, 16, 16, 3), seed=2), MLP((6, 16, 16, 3), seed=2)
    densities = {"layers.0.weight": 0.5, "layers.1.weight": 0.25, "layers.2.weight": 0.75}
    masks = random_masks_at_densities(full_masks(model), densities, seed=0)
    first_weights = {}

    def capture(step, model, opt):
        if step == 1:
            first_weights.update({n: p.detach().clone() for n, p in model.named_parameters()})

    train_static_sparse(model, data, masks, seed=1, on_gradients=capture, **TRAIN)
    params = dict(reference.named_parameters())
    for name, mask in masks.items():
        expected = params[name].detach() * mask / math.sqrt(densities[name])
        torch.testing.assert_close(first_weights[name], expected, rtol=1e-6, atol=0)
        trained = dict(model.named_parameters())[name].detach()
        assert (trained[~mask] == 0).all() and (trained[mask] != 0).all()
    torch.testing.assert_close(first_weights["layers.0.bias"], params["layers.0.bias"].detach())

    unscaled, plain = MLP((6, 16, 16, 3), seed=2), MLP((6, 16, 16, 3), seed=2)
    history = train_static_sparse(unscaled, data, masks, scale_init=None, seed=1, **TRAIN)
    plain_history = train_classifier(plain, data, masks=masks, seed=1, **TRAIN)
    assert all(torch.equal(a, b) for a, b in zip(unscaled.parameters(), plain.parameters(), strict=True))
    assert (history.test_acc == plain_history.test_acc).all()


def test_train_static_sparse_rejects_bad_input():
    data, model = tiny_data(), MLP((6, 4, 3), seed=0)
    masks = full_masks(model)
    with pytest.raises(TypeError, match="masks"):
        train_static_sparse(model, data, masks, masks=masks, **TRAIN)
    with pytest.raises(ValueError, match="scale_init"):
        train_static_sparse(model, data, masks, scale_init="row", **TRAIN)
    with pytest.raises(ValueError, match="not a parameter"):
        train_static_sparse(model, data, {"w": torch.ones(4, 6, dtype=torch.bool)}, **TRAIN)
    with pytest.raises(TypeError, match="bool"):
        train_static_sparse(model, data, {"layers.0.weight": torch.ones(4, 6)}, **TRAIN)


def test_erk_densities_is_what_random_sparse_masks_use():
    model = MLP((64, 32, 32, 10), seed=0)
    shapes = {name: tuple(m.shape) for name, m in full_masks(model).items()}
    densities = erk_densities(shapes, 0.05)
    masks = random_sparse_masks(model, 0.05, seed=0)
    for name, mask in masks.items():
        assert int(mask.sum()) == round(densities[name] * mask.numel())


# --- several networks trained side by side


def stacked_cases():
    """Four 6 -> 16 -> 16 -> 3 networks: dense, two random masks, one mask on the middle layer only."""
    models = [MLP((6, 16, 16, 3), seed=seed) for seed in (2, 3, 4, 5)]
    densities = {"layers.0.weight": 0.5, "layers.1.weight": 0.25, "layers.2.weight": 0.75}
    masks = [
        full_masks(models[0]),
        random_masks_at_densities(full_masks(models[1]), densities, seed=0),
        random_masks_at_densities(full_masks(models[2]), densities, seed=1),
        {"layers.1.weight": torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) < 0.3},
    ]
    return models, masks, [7, 8, 7, 9]


@pytest.mark.parametrize(
    ("momentum", "weight_decay", "scheduled", "scale_init"),
    [(0.9, 5e-4, True, "layer"), (0.0, 0.0, False, None), (0.5, 1e-2, True, "unit")],
)
def test_stacked_training_matches_training_each_network_alone(momentum, weight_decay, scheduled, scale_init):
    data = tiny_data()
    settings_ = {"epochs": 3, "lr": 0.05, "momentum": momentum, "weight_decay": weight_decay, "batch_size": 16,
                 "lr_schedule": cosine_epoch_schedule(epochs=3, steps_per_epoch=4) if scheduled else None}
    models, masks, seeds = stacked_cases()
    accuracies = train_static_sparse_stacked(models, data, masks, seeds=seeds, scale_init=scale_init, **settings_)
    alone, _, _ = stacked_cases()
    for model, reference, run_masks, seed, accuracy in zip(models, alone, masks, seeds, accuracies, strict=True):
        history = train_static_sparse(
            reference, data, run_masks, scale_init=scale_init, seed=seed, optimizer="sgd", **settings_
        )
        for (name, param), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(param, expected, rtol=1e-5, atol=1e-6, msg=name)
            if name in run_masks:
                assert (param[~run_masks[name]] == 0).all()
        assert accuracy == history.final("test_acc") == evaluate(model, data.X_test, data.y_test)[0]


def test_stacked_training_does_not_mix_the_networks():
    # The same network and seed twice, next to a different one: both copies end up identical, and trained.
    data = tiny_data()
    models = [MLP((6, 16, 3), seed=1), MLP((6, 16, 3), seed=9), MLP((6, 16, 3), seed=1)]
    initial = [p.detach().clone() for p in models[0].parameters()]
    masks = [full_masks(model) for model in models]
    accuracies = train_static_sparse_stacked(models, data, masks, seeds=[0, 4, 0], epochs=5, lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[2].parameters(), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(models[0].parameters(), initial, strict=True))
    assert accuracies[0] == accuracies[2]


def test_train_static_sparse_stacked_rejects_bad_input():
    data = tiny_data()
    models, masks, seeds = stacked_cases()
    good = {"seeds": seeds, "epochs": 1, "lr": 0.1}
    with pytest.raises(TypeError, match="models"):
        train_static_sparse_stacked([], data, [], seeds=[], epochs=1, lr=0.1)
    with pytest.raises(TypeError, match="models"):
        train_static_sparse_stacked([nn.Linear(6, 3)], data, [{}], seeds=[0], epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="same widths"):
        train_static_sparse_stacked([models[0], MLP((6, 8, 3))], data, masks[:2], seeds=[0, 1], epochs=1, lr=0.1)
    with pytest.raises(ValueError, match="one entry per model"):
        train_static_sparse_stacked(models, data, masks[:3], **good)
    with pytest.raises(ValueError, match="one entry per model"):
        train_static_sparse_stacked(models, data, masks, **(good | {"seeds": seeds[:2]}))
    with pytest.raises(ValueError, match="scale_init"):
        train_static_sparse_stacked(models, data, masks, scale_init="row", **good)
    with pytest.raises(ValueError, match="epochs"):
        train_static_sparse_stacked(models, data, masks, **(good | {"epochs": 0}))
    with pytest.raises(ValueError, match="lr"):
        train_static_sparse_stacked(models, data, masks, **(good | {"lr": -1.0}))
    with pytest.raises(ValueError, match="momentum"):
        train_static_sparse_stacked(models, data, masks, momentum=1.0, **good)
    with pytest.raises(ValueError, match="not a parameter"):
        train_static_sparse_stacked(models, data, [{"w": torch.ones(1, dtype=torch.bool)}] * 4, **good)
