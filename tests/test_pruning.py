"""Tests of lib/pruning.py: masks against torch.nn.utils.prune (layerwise and global), brute force on tiny
inputs, invariants (monotone masks, remaining counts, exact zeros) and iterative magnitude pruning."""

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from lib.data import DataSplit
from lib.mlp import MLP, train_classifier
from lib.pruning import (
    ImpRound,
    apply_masks,
    check_masks,
    full_masks,
    iterative_magnitude_pruning,
    magnitude_prune_global,
    magnitude_prune_layerwise,
    mask_gradients,
    prunable_weights,
    prune_smallest_scores,
    random_prune_layerwise,
    remaining_fraction,
    trained_weights,
)

WIDTHS = (12, 20, 16, 5)
NAMES = ("layers.0.weight", "layers.1.weight", "layers.2.weight")
SHAPES = {"layers.0.weight": (20, 12), "layers.1.weight": (16, 20), "layers.2.weight": (5, 16)}


def random_weights(seed, shapes=SHAPES):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def ones(shapes=SHAPES):
    return {name: torch.ones(shape, dtype=torch.bool) for name, shape in shapes.items()}


# --- masks and their helpers


def test_prunable_weights_are_the_weight_matrices():
    model = MLP(WIDTHS)
    assert list(prunable_weights(model)) == list(NAMES)
    assert list(prunable_weights(model, ignore=["layers.2.weight"])) == list(NAMES[:2])
    with pytest.raises(ValueError, match="ignore"):
        prunable_weights(model, ignore=["out.weight"])


def test_full_masks_keep_everything():
    masks = full_masks(MLP(WIDTHS))
    assert {n: tuple(m.shape) for n, m in masks.items()} == SHAPES
    assert all(m.dtype == torch.bool and bool(m.all()) for m in masks.values())


def test_apply_masks_and_mask_gradients_zero_exactly_the_pruned_entries():
    model = MLP(WIDTHS, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_prune_layerwise(full_masks(model), 0.5, seed=0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    apply_masks(model, masks)
    mask_gradients(model, masks)
    for name, p in model.named_parameters():
        mask = masks.get(name, torch.ones_like(p, dtype=torch.bool))
        assert torch.equal(p.detach(), torch.where(mask, before[name], torch.zeros(())))
        assert torch.equal(p.grad, mask.float())


def test_remaining_fraction_by_hand():
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.tensor([[True, True], [True, False]])}
    assert remaining_fraction(masks) == pytest.approx(4 / 8)
    assert remaining_fraction(masks, ["b"]) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="names"):
        remaining_fraction(masks, ["c"])
    with pytest.raises(ValueError, match="names"):
        remaining_fraction(masks, [])


@pytest.mark.parametrize(
    ("masks", "error"),
    [
        ([], TypeError),
        ({"layers.7.weight": torch.ones(2, 2, dtype=torch.bool)}, ValueError),
        ({"layers.0.weight": torch.ones(12, 20, dtype=torch.bool)}, ValueError),
        ({"layers.0.weight": torch.ones(20, 12)}, TypeError),
    ],
)
def test_check_masks_rejects_bad_masks(masks, error):
    with pytest.raises(error):
        check_masks(MLP(WIDTHS), masks)


def test_trained_weights_are_detached_copies():
    model = MLP(WIDTHS, seed=0)
    weights = trained_weights(model, full_masks(model))
    assert torch.equal(weights["layers.1.weight"], model.layers[1].weight)
    weights["layers.1.weight"].zero_()
    assert torch.count_nonzero(model.layers[1].weight) > 0


# --- the score-based building block


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.0, 1.0, 2.0, -1.0, float("inf")]), min_size=1, max_size=12),
    data=st.data(),
)
def test_prune_smallest_scores_matches_brute_force(scores, data):
    mask = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    kept = [i for i in range(len(scores)) if mask[i]]
    n_remove = data.draw(st.integers(0, len(kept)))
    # brute force: sort the kept indices by (score, index) and drop the first n_remove
    dropped = set(sorted(kept, key=lambda i: (scores[i], i))[:n_remove])
    expected = [mask[i] and i not in dropped for i in range(len(scores))]
    result = prune_smallest_scores(torch.tensor(scores), torch.tensor(mask), n_remove)
    assert result.tolist() == expected


@pytest.mark.parametrize(
    ("scores", "mask", "n_remove", "error"),
    [
        (torch.zeros(3), torch.ones(3), 1, TypeError),
        (torch.zeros(3), torch.ones(2, dtype=torch.bool), 1, ValueError),
        (torch.zeros(3), torch.tensor([True, False, True]), 3, ValueError),
        (torch.zeros(3), torch.ones(3, dtype=torch.bool), -1, ValueError),
        (torch.zeros(3), torch.ones(3, dtype=torch.bool), 1.0, ValueError),
    ],
)
def test_prune_smallest_scores_rejects_bad_input(scores, mask, n_remove, error):
    with pytest.raises(error):
        prune_smallest_scores(scores, mask, n_remove)


# --- layerwise magnitude pruning


def test_layerwise_by_hand():
    weights = {"w": torch.tensor([[0.5, -0.1, 2.0], [-3.0, 0.05, 0.4]])}
    masks = {"w": torch.tensor([[True, True, True], [True, False, True]])}
    # kept magnitudes 0.5, 0.1, 2.0, 3.0, 0.4: round(0.4 * 5) = 2 smallest are 0.1 and 0.4
    new = magnitude_prune_layerwise(weights, masks, 0.4)
    assert new["w"].tolist() == [[True, False, True], [True, False, False]]
    assert masks["w"].tolist() == [[True, True, True], [True, False, True]]  # input untouched


def test_layerwise_ties_go_to_the_lowest_index():
    new = magnitude_prune_layerwise({"w": torch.ones(2, 3)}, {"w": torch.ones(2, 3, dtype=torch.bool)}, 0.5)
    assert new["w"].tolist() == [[False, False, False], [True, True, True]]


def torch_layerwise_rounds(weights_per_round, rates):
    """The oracle: torch.nn.utils.prune.l1_unstructured applied round after round to nn.Linear modules."""
    modules = {name: nn.Linear(shape[1], shape[0]) for name, shape in SHAPES.items()}
    masks_per_round = []
    for weights in weights_per_round:
        for name, module in modules.items():
            with torch.no_grad():
                if hasattr(module, "weight_orig"):
                    module.weight_orig.copy_(weights[name])
                else:
                    module.weight.copy_(weights[name])
            # refresh module.weight from weight_orig: torch scores the stale module.weight otherwise
            module(torch.zeros(1, module.in_features))
            torch_prune.l1_unstructured(module, "weight", amount=rates[name])
        masks_per_round.append({name: module.weight_mask.bool().clone() for name, module in modules.items()})
    return masks_per_round


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_layerwise_matches_torch_l1_unstructured_over_rounds(seed):
    rates = {"layers.0.weight": 0.2, "layers.1.weight": 0.2, "layers.2.weight": 0.1}
    weights_per_round = [random_weights(100 * seed + k) for k in range(11)]
    expected = torch_layerwise_rounds(weights_per_round, rates)
    masks = ones()
    for k, weights in enumerate(weights_per_round):
        masks = magnitude_prune_layerwise(weights, masks, rates)
        for name in NAMES:
            assert torch.equal(masks[name], expected[k][name]), (k, name)


def test_layerwise_remaining_counts_follow_the_geometric_law():
    rates = {"layers.0.weight": 0.2, "layers.1.weight": 0.2, "layers.2.weight": 0.1}
    masks = ones()
    for k in range(1, 12):
        previous = masks
        masks = magnitude_prune_layerwise(random_weights(k), masks, rates)
        for name, shape in SHAPES.items():
            n = math.prod(shape)
            kept = int(masks[name].sum())
            assert abs(kept - round((1 - rates[name]) ** k * n)) <= k
            assert kept == int(previous[name].sum()) - round(rates[name] * int(previous[name].sum()))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(0.0, 0.95), density=st.floats(0.05, 1.0))
def test_layerwise_masks_are_monotone_and_drop_the_smallest(seed, rate, density):
    weights = random_weights(seed)
    masks = random_prune_layerwise(ones(), 1 - density if density < 1 else 0.0, seed=seed)
    new = magnitude_prune_layerwise(weights, masks, rate)
    for name in NAMES:
        assert not torch.any(new[name] & ~masks[name])  # pruned stays pruned
        removed = masks[name] & ~new[name]
        kept = new[name]
        if removed.any() and kept.any():
            assert weights[name][removed].abs().max() <= weights[name][kept].abs().min()


def test_layerwise_rate_zero_changes_nothing():
    masks = random_prune_layerwise(ones(), 0.3, seed=0)
    new = magnitude_prune_layerwise(random_weights(0), masks, 0.0)
    assert all(torch.equal(new[n], masks[n]) for n in NAMES)


@pytest.mark.parametrize(
    ("rates", "error"),
    [
        (1.0, ValueError),
        (-0.1, ValueError),
        ("0.2", TypeError),
        ({"layers.0.weight": 0.2}, ValueError),
    ],
)
def test_layerwise_rejects_bad_rates(rates, error):
    with pytest.raises(error):
        magnitude_prune_layerwise(random_weights(0), ones(), rates)


def test_layerwise_rejects_mismatched_weights_and_masks():
    weights = random_weights(0)
    weights["layers.0.weight"] = torch.randn(3, 3)
    with pytest.raises(ValueError, match="shape"):
        magnitude_prune_layerwise(weights, ones(), 0.2)
    with pytest.raises(ValueError, match="no entry"):
        magnitude_prune_layerwise({}, ones(), 0.2)
    with pytest.raises(TypeError, match="bool"):
        magnitude_prune_layerwise(random_weights(0), {n: m.float() for n, m in ones().items()}, 0.2)


# --- global magnitude pruning


@pytest.mark.parametrize("ignore", [(), ("layers.2.weight",)])
def test_global_matches_torch_global_unstructured_over_rounds(ignore):
    rate = 0.2
    modules = {name: nn.Linear(shape[1], shape[0]) for name, shape in SHAPES.items()}
    pruned = [name for name in NAMES if name not in ignore]
    masks = ones()
    for k in range(8):
        weights = random_weights(k)
        for name, module in modules.items():
            with torch.no_grad():
                target = module.weight_orig if hasattr(module, "weight_orig") else module.weight
                target.copy_(weights[name])
            module(torch.zeros(1, module.in_features))
        n_kept = sum(int(masks[name].sum()) for name in pruned)
        torch_prune.global_unstructured(
            [(modules[name], "weight") for name in pruned],
            pruning_method=torch_prune.L1Unstructured,
            amount=math.ceil(rate * n_kept),
        )
        masks = magnitude_prune_global(weights, masks, rate, ignore=ignore)
        for name in pruned:
            assert torch.equal(masks[name], modules[name].weight_mask.bool()), (k, name)
        for name in ignore:
            assert bool(masks[name].all())


def test_global_by_hand_prunes_the_layer_with_small_weights():
    weights = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([1.0, 2.0, 0.25])}
    masks = {"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(3, dtype=torch.bool)}
    # ceil(0.5 * 6) = 3 smallest overall: 0.1, 0.2, 0.25
    new = magnitude_prune_global(weights, masks, 0.5)
    assert new["a"].tolist() == [False, False, True] and new["b"].tolist() == [True, True, False]


def test_global_rejects_bad_input():
    with pytest.raises(ValueError, match="ignore"):
        magnitude_prune_global(random_weights(0), ones(), 0.2, ignore=["out.weight"])
    with pytest.raises(ValueError, match="no layer"):
        magnitude_prune_global(random_weights(0), ones(), 0.2, ignore=NAMES)
    with pytest.raises(ValueError, match="rate"):
        magnitude_prune_global(random_weights(0), ones(), 1.5)


# --- random pruning


def test_random_pruning_counts_subset_and_seed():
    masks = random_prune_layerwise(ones(), 0.5, seed=0)
    new = random_prune_layerwise(
        masks, {"layers.0.weight": 0.2, "layers.1.weight": 0.5, "layers.2.weight": 0.0}, 1
    )
    for name, rate in zip(NAMES, (0.2, 0.5, 0.0), strict=True):
        before = int(masks[name].sum())
        assert int(new[name].sum()) == before - round(rate * before)
        assert not torch.any(new[name] & ~masks[name])
    again = random_prune_layerwise(ones(), 0.5, seed=0)
    other = random_prune_layerwise(ones(), 0.5, seed=1)
    assert all(torch.equal(again[n], masks[n]) for n in NAMES)
    assert not all(torch.equal(other[n], masks[n]) for n in NAMES)


def test_random_pruning_is_uniform_over_entries():
    shapes = {"w": (4, 5)}
    removals = torch.zeros(4, 5)
    trials = 2000
    for seed in range(trials):
        removals += (~random_prune_layerwise(ones(shapes), 0.25, seed=seed)["w"]).float()
    frequency = (removals / trials).numpy()
    # each entry is removed with probability 5 / 20; binomial standard error ~ 0.0097
    assert np.all(np.abs(frequency - 0.25) < 0.045)


# --- iterative magnitude pruning


class FakeTraining:
    """Records what it receives and 'trains' by adding a fixed, seeded perturbation to every parameter."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, masks):
        self.calls.append(({n: p.detach().clone() for n, p in model.named_parameters()}, masks))
        generator = torch.Generator().manual_seed(len(self.calls))
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(torch.randn(p.shape, generator=generator))
                if name in masks:
                    p.mul_(masks[name])
        return {name: p.detach().clone() for name, p in model.named_parameters()}


RATES = {"layers.0.weight": 0.2, "layers.1.weight": 0.2, "layers.2.weight": 0.1}


def run_fake_imp(rounds=5, reinit_rounds=(0, 2, 5)):
    initial = MLP(WIDTHS, seed=0)
    theta_0 = {n: p.detach().clone() for n, p in initial.named_parameters()}
    training = FakeTraining()
    history = iterative_magnitude_pruning(
        initial,
        training,
        rounds=rounds,
        prune=functools.partial(magnitude_prune_layerwise, rates=RATES),
        reinit=lambda k: MLP(WIDTHS, seed=1000 + k),
        reinit_rounds=reinit_rounds,
    )
    return initial, theta_0, training, history


def calls_per_round(training, history):
    """Pair each round with the (start parameters, masks) its ticket and its control were trained from."""
    calls = iter(training.calls)
    return [(next(calls), next(calls) if record.reinit is not None else None) for record in history]


def test_imp_rewinds_to_theta_0_on_the_kept_entries():
    initial, theta_0, training, history = run_fake_imp()
    assert len(history) == 6 and len(training.calls) == 6 + 3
    for record, ((start, masks), _) in zip(history, calls_per_round(training, history), strict=True):
        assert all(torch.equal(masks[n], record.masks[n]) for n in NAMES)
        for name, p0 in theta_0.items():
            mask = record.masks.get(name)
            expected = p0 if mask is None else torch.where(mask, p0, torch.zeros(()))
            assert torch.equal(start[name], expected), (record.round, name)  # biases rewound too
    assert all(torch.equal(p, theta_0[n]) for n, p in initial.named_parameters())


def test_imp_prunes_the_trained_weights_and_masks_are_monotone():
    _, _, training, history = run_fake_imp()
    ticket_results = [r.ticket for r in history]
    for previous, record, trained in zip(history, history[1:], ticket_results, strict=False):
        expected = magnitude_prune_layerwise({n: trained[n] for n in NAMES}, previous.masks, RATES)
        assert all(torch.equal(record.masks[n], expected[n]) for n in NAMES)
        assert all(not torch.any(record.masks[n] & ~previous.masks[n]) for n in NAMES)
    assert history[0].remaining == 1.0 and all(bool(m.all()) for m in history[0].masks.values())
    total = sum(math.prod(s) for s in SHAPES.values())
    for record in history:
        kept = sum(int(record.masks[n].sum()) for n in NAMES)
        assert record.remaining == pytest.approx(kept / total)


def test_imp_reinit_control_uses_the_same_masks_and_a_fresh_init():
    _, theta_0, training, history = run_fake_imp()
    assert [r.round for r in history if r.reinit is not None] == [0, 2, 5]
    assert all(isinstance(r, ImpRound) for r in history)
    for record, (_, control) in zip(history, calls_per_round(training, history), strict=True):
        if control is None:
            continue
        control_start, control_masks = control
        fresh = dict(MLP(WIDTHS, seed=1000 + record.round).named_parameters())
        for name in NAMES:
            assert torch.equal(control_masks[name], record.masks[name])
            expected = torch.where(record.masks[name], fresh[name].detach(), torch.zeros(()))
            assert torch.equal(control_start[name], expected)
            assert not torch.equal(control_start[name], torch.where(record.masks[name], theta_0[name], 0.0))


def test_imp_with_real_training_keeps_pruned_weights_at_zero():
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(80, WIDTHS[0], generator=generator)
    y = torch.arange(80) % WIDTHS[-1]
    data = DataSplit(X_train=X, y_train=y, X_test=X[:20], y_test=y[:20], X_val=X[20:40], y_val=y[20:40])
    trained_models = []

    def train(model, masks):
        history = train_classifier(model, data, epochs=3, lr=0.01, batch_size=32, masks=masks)
        trained_models.append((model, masks))
        return history

    history = iterative_magnitude_pruning(
        MLP(WIDTHS, seed=0), train, rounds=3, prune=functools.partial(magnitude_prune_layerwise, rates=RATES)
    )
    assert len(history) == 4 and all(r.reinit is None for r in history)
    for model, masks in trained_models:
        for name, mask in masks.items():
            assert torch.count_nonzero(dict(model.named_parameters())[name][~mask]) == 0
    assert history[-1].remaining < history[0].remaining


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rounds": -1}, "rounds"),
        ({"rounds": 2, "reinit_rounds": [3], "reinit": lambda k: MLP(WIDTHS)}, "reinit_rounds"),
        ({"rounds": 2, "reinit_rounds": [1]}, "reinit function"),
    ],
)
def test_imp_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        iterative_magnitude_pruning(
            MLP(WIDTHS),
            FakeTraining(),
            prune=functools.partial(magnitude_prune_layerwise, rates=0.2),
            **kwargs,
        )
