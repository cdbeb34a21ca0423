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
from lib.mlp import MLP, make_optimizer, train_classifier
from lib.pruning import (
    ImpRound,
    apply_masks,
    check_masks,
    cosine_death_rate,
    erk_densities,
    full_masks,
    gmp_density,
    iterative_magnitude_pruning,
    magnitude_prune_global,
    magnitude_prune_layerwise,
    mask_gradients,
    mask_optimizer_state,
    prunable_weights,
    prune_and_regrow,
    prune_smallest_scores,
    prune_to_density_global,
    random_masks_at_densities,
    random_prune_layerwise,
    remaining_fraction,
    replace_masks,
    trained_weights,
)
from lib.stats import pooled_chisquare_pvalue

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


# --- layerwise densities, schedules and dynamic sparse training


def erk_by_root_finding(shapes, density):
    """Independent oracle: the eps with sum_l min(1, eps raw_l) n_l = density * sum_l n_l, by bisection."""
    from scipy.optimize import brentq

    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    budget = density * sum(sizes.values())

    def excess(eps):
        return sum(min(1.0, eps * raw[n]) * sizes[n] for n in shapes) - budget

    eps = brentq(excess, 0.0, 1.0 / min(raw.values()) + 1.0, xtol=1e-14)
    return {n: min(1.0, eps * raw[n]) for n in shapes}


def test_erk_densities_by_hand():
    densities = erk_densities({"a": (64, 256), "b": (256, 10)}, 0.1)
    assert densities["a"] == pytest.approx(0.063140, abs=1e-6)
    assert densities["b"] == pytest.approx(0.335904, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=5),
    st.floats(0.01, 1.0),
)
def test_erk_densities_match_root_finding_and_keep_the_budget(dims, density):
    shapes = {f"layer{i}": shape for i, shape in enumerate(dims)}
    densities = erk_densities(shapes, density)
    oracle = erk_by_root_finding(shapes, density)
    assert all(0 < d <= 1 for d in densities.values())
    for name in shapes:
        assert densities[name] == pytest.approx(oracle[name], rel=1e-7, abs=1e-9)
    kept = sum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(density * sum(math.prod(s) for s in shapes.values()), rel=1e-9)


def test_erk_makes_small_layers_dense_and_er_ignores_kernel_dimensions():
    densities = erk_densities({"big": (1000, 1000), "small": (2, 10)}, 0.5)
    assert densities["small"] == 1.0
    assert densities["big"] == pytest.approx((0.5 * 1_000_020 - 20) / 1_000_000)
    conv = {"conv": (16, 8, 3, 3), "fc": (10, 64)}
    assert erk_densities(conv, 0.2, mode="ER") != erk_densities(conv, 0.2, mode="ERK")
    two_dims = {"conv": (16, 8), "fc": (10, 64)}
    er, er_2d = erk_densities(conv, 0.2, mode="ER"), erk_densities(two_dims, 0.2, mode="ER")
    assert er["conv"] / er["fc"] == pytest.approx(er_2d["conv"] / er_2d["fc"])
    assert erk_densities(two_dims, 0.2, mode="ER") == erk_densities(two_dims, 0.2, mode="ERK")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shapes": {"a": (4, 4)}, "density": 0.0}, "density"),
        ({"shapes": {"a": (4, 4)}, "density": 1.5}, "density"),
        ({"shapes": {"a": (4, 4)}, "density": 0.5, "mode": "erk"}, "mode"),
        ({"shapes": {}, "density": 0.5}, "shapes"),
        ({"shapes": {"a": (4,)}, "density": 0.5}, "shapes"),
        ({"shapes": {"a": (4, 0)}, "density": 0.5}, "shapes"),
    ],
)
def test_erk_densities_reject_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        erk_densities(**kwargs)


def test_random_masks_at_densities_keep_exact_counts_uniformly():
    densities = {"layers.0.weight": 0.25, "layers.1.weight": 0.5, "layers.2.weight": 1.0}
    counts = torch.zeros(SHAPES["layers.0.weight"])
    for seed in range(400):
        masks = random_masks_at_densities(ones(), densities, seed=seed)
        for name, d in densities.items():
            assert int(masks[name].sum()) == round(d * math.prod(SHAPES[name]))
        counts += masks["layers.0.weight"]
    assert not torch.equal(
        random_masks_at_densities(ones(), densities, 0)["layers.0.weight"],
        random_masks_at_densities(ones(), densities, 1)["layers.0.weight"],
    )
    probs = np.full(counts.numel(), 1 / counts.numel())
    assert pooled_chisquare_pvalue(counts.reshape(-1).numpy(), probs) > 1e-3


def test_random_masks_at_densities_reject_bad_input():
    with pytest.raises(ValueError, match="keys"):
        random_masks_at_densities(ones(), {"layers.0.weight": 0.5}, seed=0)
    with pytest.raises(ValueError, match="densities"):
        random_masks_at_densities(ones(), dict.fromkeys(NAMES, 0.0), seed=0)
    half = random_masks_at_densities(ones(), dict.fromkeys(NAMES, 0.5), seed=0)
    with pytest.raises(ValueError, match="full_masks"):
        random_masks_at_densities(half, dict.fromkeys(NAMES, 0.5), seed=0)


def test_gmp_density_closed_form():
    kwargs = {"d_init": 1.0, "d_final": 0.02, "t_start": 10, "t_end": 110}
    assert gmp_density(0, **kwargs) == 1.0
    assert gmp_density(10, **kwargs) == 1.0
    assert gmp_density(60, **kwargs) == pytest.approx(0.02 + 0.98 / 8)
    assert gmp_density(110, **kwargs) == pytest.approx(0.02)
    assert gmp_density(500, **kwargs) == pytest.approx(0.02)
    values = [gmp_density(t, **kwargs) for t in range(0, 120)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    with pytest.raises(ValueError, match="d_final"):
        gmp_density(0, d_init=0.5, d_final=0.6, t_start=0, t_end=1)
    with pytest.raises(ValueError, match="t_end"):
        gmp_density(0, d_init=1.0, d_final=0.1, t_start=5, t_end=5)


def test_cosine_death_rate_closed_form():
    assert cosine_death_rate(0, total=100) == pytest.approx(0.5)
    assert cosine_death_rate(50, total=100) == pytest.approx((0.5 + 0.005) / 2)
    assert cosine_death_rate(100, total=100) == pytest.approx(0.005)
    assert cosine_death_rate(250, total=100) == pytest.approx(0.005)
    with pytest.raises(ValueError, match="total"):
        cosine_death_rate(0, total=0)
    with pytest.raises(ValueError, match="eta_min"):
        cosine_death_rate(0, total=10, r0=0.1, eta_min=0.2)


def test_prune_to_density_global_matches_torch_global_unstructured():
    weights = random_weights(3)
    density = 0.3
    model = MLP(WIDTHS)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in weights:
                p.copy_(weights[name])
    total = sum(w.numel() for w in weights.values())
    modules = [(model.layers[i], "weight") for i in range(3)]
    torch_prune.global_unstructured(
        modules, pruning_method=torch_prune.L1Unstructured, amount=total - round(density * total)
    )
    masks = prune_to_density_global(weights, ones(), density)
    for i, name in enumerate(NAMES):
        assert torch.equal(masks[name], model.layers[i].weight_mask.bool())
    again = prune_to_density_global(weights, masks, 0.5)
    assert all(torch.equal(again[n], masks[n]) for n in NAMES)


def test_prune_and_regrow_against_brute_force():
    weights = random_weights(4)
    gradients = random_weights(5)
    masks = random_masks_at_densities(ones(), dict.fromkeys(NAMES, 0.4), seed=2)
    new = prune_and_regrow(weights, masks, gradients, death_rate=0.3)
    for name in NAMES:
        mask, w, g = masks[name].reshape(-1), weights[name].reshape(-1), gradients[name].reshape(-1)
        active = [i for i in range(mask.numel()) if mask[i]]
        inactive = [i for i in range(mask.numel()) if not mask[i]]
        n_change = math.ceil(0.3 * len(active))
        died = set(sorted(active, key=lambda i: abs(float(w[i])))[:n_change])
        grown = set(sorted(inactive, key=lambda i: -abs(float(g[i])))[:n_change])
        expected = (set(active) - died) | grown
        assert set(torch.nonzero(new[name].reshape(-1)).reshape(-1).tolist()) == expected
        assert int(new[name].sum()) == int(masks[name].sum())
        assert not died & grown


def test_prune_and_regrow_reject_bad_input():
    with pytest.raises(ValueError, match="death_rate"):
        prune_and_regrow(random_weights(0), ones(), random_weights(1), death_rate=1.0)
    with pytest.raises(ValueError, match="weights"):
        prune_and_regrow({"layers.0.weight": torch.zeros(20, 12)}, ones(), random_weights(1), 0.1)


def test_replace_masks_in_place_and_mask_optimizer_state():
    model = MLP(WIDTHS, seed=0)
    masks = full_masks(model)
    alias = masks["layers.0.weight"]
    half = random_prune_layerwise(masks, 0.5, seed=1)
    replace_masks(masks, half)
    assert alias is masks["layers.0.weight"] and torch.equal(alias, half["layers.0.weight"])
    with pytest.raises(ValueError, match="keys"):
        replace_masks(masks, {"layers.0.weight": half["layers.0.weight"]})
    for name, opt_kwargs in [("sgd", {"momentum": 0.9}), ("adam", {})]:
        opt = make_optimizer(model.parameters(), optimizer=name, lr=0.1, **opt_kwargs)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        mask_optimizer_state(opt, model, masks)
        params = dict(model.named_parameters())
        for pname, mask in masks.items():
            for value in opt.state[params[pname]].values():
                if value.shape == mask.shape:
                    assert bool((value[~mask] == 0).all()) and bool((value[mask] != 0).all())


def test_dynamic_sparse_training_keeps_the_density():
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(64, 12, generator=generator)
    y = torch.randint(0, 5, (64,), generator=generator)
    data = DataSplit(X, y, X, y)
    model = MLP(WIDTHS, seed=0)
    masks = random_masks_at_densities(full_masks(model), dict.fromkeys(NAMES, 0.3), seed=0)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    changed = []

    def regrow(step, model, opt):
        params = dict(model.named_parameters())
        grads = {n: params[n].grad.clone() for n in masks}
        new = prune_and_regrow(trained_weights(model, masks), masks, grads, 0.2)
        changed.append(sum(int((new[n] != masks[n]).sum()) for n in masks))
        replace_masks(masks, new)
        mask_optimizer_state(opt, model, masks)

    train_classifier(model, data, epochs=3, lr=0.05, optimizer="sgd", momentum=0.9, batch_size=32, masks=masks,
                     on_gradients=regrow)
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    assert min(changed) > 0
    params = dict(model.named_parameters())
    assert all(bool((params[n][~m] == 0).all()) for n, m in masks.items())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=40), st.data())
def test_prune_smallest_scores_breaks_ties_by_the_lowest_index(entries, data):
    scores = torch.tensor([float(s) for s, _ in entries])
    mask = torch.tensor([kept for _, kept in entries])
    n_remove = data.draw(st.integers(0, int(mask.sum())))
    kept = [i for i in range(len(entries)) if entries[i][1]]
    removed = sorted(kept, key=lambda i: (entries[i][0], i))[:n_remove]
    expected = mask.clone()
    expected[removed] = False
    assert torch.equal(prune_smallest_scores(scores, mask, n_remove), expected)
