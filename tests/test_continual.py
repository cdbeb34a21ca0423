"""Tests of lib/continual.py: exact zero forgetting (bit-identical predictions after later tasks), the
used-capacity formula by Monte Carlo, growth modes against brute-force top-k and a uniformity test, the
continual-learning metrics on a hand-made accuracy matrix, and the bad-input errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.continual import (
    GradientMomentum,
    MultiHeadMLP,
    SparseContinualNet,
    TaskConfig,
    body_densities,
    cl_metrics,
    expected_used_fraction,
    growth_scores,
    isolate_gradients,
    owner_map,
    run_continual,
    split_tasks,
    task_mask,
    union_masks,
    used_fraction,
)
from lib.data import DataSplit, digits_split
from lib.pruning import erk_densities, prune_and_regrow
from lib.stats import pooled_chisquare_pvalue

BODY = (64, 24, 12)
BODY_NAMES = ["layers.0.weight", "layers.1.weight"]
HEAD = "layers.2.weight"


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def tasks(digits):
    return split_tasks(digits)


def small_tasks(tasks, n=3, n_train=80):
    """The first ``n`` tasks with ``n_train`` training points each: enough to train in milliseconds."""
    return [DataSplit(t.X_train[:n_train], t.y_train[:n_train], t.X_test, t.y_test) for t in tasks[:n]]


# --- tasks and the multi-head model


def test_split_tasks_holds_each_class_pair_with_local_labels(digits, tasks):
    assert len(tasks) == 5
    y_train, y_test = digits.y_train.numpy(), digits.y_test.numpy()
    for t, task in enumerate(tasks):
        keep = np.isin(y_train, [2 * t, 2 * t + 1])
        np.testing.assert_array_equal(task.X_train.numpy(), digits.X_train.numpy()[keep])
        np.testing.assert_array_equal(task.y_train.numpy(), y_train[keep] - 2 * t)
        assert len(task.y_test) == np.isin(y_test, [2 * t, 2 * t + 1]).sum()
        assert set(task.y_test.tolist()) == {0, 1}


def test_split_tasks_rejects_a_class_count_that_does_not_divide(digits):
    with pytest.raises(ValueError, match="classes_per_task"):
        split_tasks(digits, classes_per_task=3)
    with pytest.raises(ValueError, match="classes_per_task"):
        split_tasks(digits, classes_per_task=1)


def test_multi_head_forward_is_the_task_slice_of_a_hand_computed_network():
    model = MultiHeadMLP(BODY, n_tasks=4, classes_per_task=3, seed=2)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    h = x
    for layer in model.layers[:-1]:
        h = torch.clamp(h @ layer.weight.T + layer.bias, min=0)
    full = h @ model.layers[-1].weight.T + model.layers[-1].bias
    for task in range(4):
        torch.testing.assert_close(model.select_task(task)(x), full[:, 3 * task : 3 * task + 3])
    assert model.body_names == BODY_NAMES and model.head_name == HEAD


def test_multi_head_needs_a_task_and_checks_it():
    model = MultiHeadMLP(BODY, n_tasks=2, classes_per_task=2)
    with pytest.raises(RuntimeError, match="select a task"):
        model(torch.zeros(1, 64))
    with pytest.raises(ValueError, match="task"):
        model.select_task(2)
    with pytest.raises(TypeError, match="task"):
        model.select_task(1.0)
    with pytest.raises(ValueError, match="body_widths"):
        MultiHeadMLP((64,), n_tasks=2, classes_per_task=2)
    with pytest.raises(ValueError, match="classes_per_task"):
        MultiHeadMLP(BODY, n_tasks=2, classes_per_task=1)


# --- masks and capacity


def test_body_densities_uniform_and_erk():
    shapes = {"a": (128, 64), "b": (32, 128)}
    assert body_densities(shapes, 0.1, "uniform") == {"a": 0.1, "b": 0.1}
    assert body_densities(shapes, 0.1, "ERK") == erk_densities(shapes, 0.1)
    with pytest.raises(ValueError, match="distribution"):
        body_densities(shapes, 0.1, "ER")
    with pytest.raises(ValueError, match="density"):
        body_densities(shapes, 0.0, "uniform")


def test_task_mask_has_exact_body_counts_and_the_tasks_dense_head_rows():
    model = MultiHeadMLP(BODY, n_tasks=5, classes_per_task=2)
    densities = {"layers.0.weight": 0.1, "layers.1.weight": 0.3}
    masks = task_mask(model, 3, densities, seed=4)
    assert int(masks["layers.0.weight"].sum()) == round(0.1 * 24 * 64)
    assert int(masks["layers.1.weight"].sum()) == round(0.3 * 12 * 24)
    expected_head = torch.zeros(10, 12, dtype=torch.bool)
    expected_head[6:8] = True
    assert torch.equal(masks[HEAD], expected_head)


def test_expected_used_fraction_matches_monte_carlo_of_random_task_masks():
    model = MultiHeadMLP(BODY, n_tasks=5, classes_per_task=2)
    densities = {"layers.0.weight": 0.15, "layers.1.weight": 0.4}
    sizes = {name: math.prod(model.get_parameter(name).shape) for name in BODY_NAMES}
    draws = []
    for trial in range(200):
        masks_list = [task_mask(model, t, densities, seed=1000 * trial + t) for t in range(4)]
        draws.append(used_fraction(masks_list, BODY_NAMES))
    draws = np.array(draws)
    exact_d = {name: round(d * sizes[name]) / sizes[name] for name, d in densities.items()}
    expected = expected_used_fraction(exact_d, sizes, 4)
    assert abs(draws.mean() - expected) < 4 * draws.std() / math.sqrt(len(draws)) + 1e-12
    assert expected_used_fraction(exact_d, sizes, 0) == 0.0


def test_used_fraction_and_owner_map_against_brute_force():
    generator = np.random.default_rng(0)
    masks_list = [{"w": torch.as_tensor(generator.random((6, 7)) < 0.3)} for _ in range(4)]
    arrays = [m["w"].numpy() for m in masks_list]
    assert used_fraction(masks_list, ["w"]) == np.logical_or.reduce(arrays).mean()
    owner = owner_map(masks_list, "w").numpy()
    for i in range(6):
        for j in range(7):
            users = [t for t, a in enumerate(arrays) if a[i, j]]
            assert owner[i, j] == (users[0] if users else -1)
    assert torch.equal(union_masks([], {"w": masks_list[0]["w"]})["w"], torch.zeros(6, 7, dtype=torch.bool))


def test_capacity_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="masks_list"):
        used_fraction([], ["w"])
    with pytest.raises(ValueError, match="names"):
        used_fraction([{"w": torch.ones(2, 2, dtype=torch.bool)}], ["v"])
    with pytest.raises(ValueError, match="densities"):
        expected_used_fraction({"w": 1.5}, {"w": 4}, 2)
    with pytest.raises(ValueError, match="densities and sizes"):
        expected_used_fraction({"w": 0.5}, {"v": 4}, 2)
    with pytest.raises(ValueError, match="masks_list"):
        owner_map([], "w")


def test_isolate_gradients_zeroes_exactly_the_used_entries():
    model = MultiHeadMLP(BODY, n_tasks=2, classes_per_task=2).select_task(0)
    model(torch.randn(4, 64)).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    used = {name: torch.rand(before[name].shape) < 0.5 for name in [*BODY_NAMES, HEAD]}
    isolate_gradients(dict(model.named_parameters()), used)
    for name, p in model.named_parameters():
        expected = torch.where(used[name], 0.0, before[name]) if name in used else before[name]
        assert torch.equal(p.grad, expected)
    with pytest.raises(ValueError, match="used"):
        isolate_gradients(dict(model.named_parameters()), {"layers.9.weight": used[HEAD]})


# --- growth modes


def brute_force_regrow(weights, mask, scores, rate):
    """Magnitude death then growth by the largest score, by sorting Python lists (ties: lowest index)."""
    w, m, s = weights.reshape(-1).tolist(), mask.reshape(-1).tolist(), scores.reshape(-1).tolist()
    n = math.ceil(rate * sum(m))
    active = sorted((i for i in range(len(m)) if m[i]), key=lambda i: (abs(w[i]), i))
    dead = set(active[:n])
    inactive = sorted((i for i in range(len(m)) if not m[i]), key=lambda i: (-abs(s[i]), i))
    new = [m[i] and i not in dead for i in range(len(m))]
    for i in inactive[:n]:
        new[i] = True
    return torch.tensor(new).reshape(mask.shape)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(0.05, 0.6))
def test_gradient_and_momentum_growth_grow_the_brute_force_top_k(seed, rate):
    generator = torch.Generator().manual_seed(seed)
    weights = {"w": torch.randn(6, 9, generator=generator)}
    masks = {"w": torch.rand(6, 9, generator=generator) < 0.4}
    gradients = [{"w": torch.randn(6, 9, generator=generator)} for _ in range(3)]
    momentum = GradientMomentum({"w": (6, 9)}, b1=0.8, b2=0.9, eps=1e-3)
    m, v = np.zeros((6, 9)), np.zeros((6, 9))
    for grad in gradients:
        momentum.update(grad)
        g = grad["w"].numpy().astype(np.float64)
        m, v = 0.8 * m + 0.2 * g, 0.9 * v + 0.1 * g**2
    momentum_scores = np.abs(m) / (np.sqrt(v) + 1e-3)
    np.testing.assert_allclose(momentum.scores()["w"].numpy(), momentum_scores, rtol=1e-4, atol=1e-6)  # float32
    # the float32 scores (checked above) decide the growth; the oracle ranks them by brute force
    oracles = (("gradient", gradients[-1]["w"]), ("momentum", momentum.scores()["w"]))
    for mode, oracle_scores in oracles:
        scores = growth_scores(mode, gradients[-1], momentum=momentum)
        new = prune_and_regrow(weights, masks, scores, rate)["w"]
        assert torch.equal(new, brute_force_regrow(weights["w"], masks["w"], oracle_scores, rate))


def test_random_growth_picks_uniform_positions():
    weights = {"w": torch.arange(1.0, 21.0).reshape(4, 5)}  # magnitude death removes the smallest: index 0, 1
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask.view(-1)[:8] = True
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(20)
    for _ in range(3000):
        scores = growth_scores("random", {"w": torch.zeros(4, 5)}, generator=generator)
        new = prune_and_regrow(weights, {"w": mask}, scores, 0.25)["w"]
        assert int(new.sum()) == 8 and not new.view(-1)[:2].any()
        counts += (new & ~mask).reshape(-1).double()
    eligible = counts[8:].numpy()  # the 12 positions that were inactive; 2 are grown each time
    assert counts[:8].sum() == 0
    assert pooled_chisquare_pvalue(eligible, np.ones(12)) > 1e-3


def test_growth_scores_reject_bad_modes_and_missing_state():
    gradients = {"w": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="growth"):
        growth_scores("static", gradients)
    with pytest.raises(TypeError, match="generator"):
        growth_scores("random", gradients)
    with pytest.raises(TypeError, match="momentum"):
        growth_scores("momentum", gradients)
    with pytest.raises(ValueError, match="b1"):
        GradientMomentum({"w": (2, 2)}, b1=1.0)
    with pytest.raises(ValueError, match="keys"):
        GradientMomentum({"w": (2, 2)}).update({"v": torch.zeros(2, 2)})


# --- the continual learner


@pytest.mark.parametrize("growth", ["static", "random", "gradient", "momentum"])
def test_earlier_tasks_predict_bit_identically_after_later_tasks(tasks, growth):
    data = small_tasks(tasks)
    config = TaskConfig(density=0.1, distribution="ERK", growth=growth, epochs=6, update_every=2)
    net = SparseContinualNet(BODY, n_tasks=3, seed=0)
    logits_after_own_task, store_before = [], []
    for t, task_data in enumerate(data):
        store_before.append({n: p.detach().clone() for n, p in net.store.named_parameters()})
        trained = net.learn_task(task_data, config, seed=t)
        logits_after_own_task.append(net.logits(t, task_data.X_test))
        with torch.inference_mode():  # the stand-alone network of the task is the network that was trained
            assert torch.equal(trained(task_data.X_test), logits_after_own_task[t])
        used_before = union_masks(net.task_masks[:t], net.task_masks[0])
        for name, p in net.store.named_parameters():
            if name in used_before:  # frozen weights are untouched by the later task
                assert torch.equal(p.detach()[used_before[name]], store_before[t][name][used_before[name]])
    for t, task_data in enumerate(data):
        assert torch.equal(net.logits(t, task_data.X_test), logits_after_own_task[t])


def test_run_has_zero_backward_transfer_and_dst_keeps_the_mask_counts(tasks):
    data = small_tasks(tasks)
    config = TaskConfig(density=0.1, distribution="uniform", growth="gradient", epochs=6, update_every=2)
    run = run_continual(data, BODY, config, seed=3)
    assert run.bwt == 0.0
    assert np.isnan(run.acc_matrix[np.triu_indices(3, 1)]).all()
    for j in range(3):
        assert (run.acc_matrix[j:, j] == run.acc_matrix[j, j]).all()
    assert run.acc == pytest.approx(run.acc_matrix[-1].mean())
    shapes = {name: tuple(run.net.store.get_parameter(name).shape) for name in BODY_NAMES}
    initial = [task_mask(run.net.store, t, dict.fromkeys(BODY_NAMES, 0.1), 3000 + t) for t in range(3)]
    for t, masks in enumerate(run.net.task_masks):
        for name in BODY_NAMES:
            assert int(masks[name].sum()) == round(0.1 * math.prod(shapes[name]))
        assert any(not torch.equal(masks[n], initial[t][n]) for n in BODY_NAMES)  # DST moved the mask
    np.testing.assert_array_equal(
        run.used, [used_fraction(run.net.task_masks[: t + 1], BODY_NAMES) for t in range(3)]
    )


def test_static_masks_are_the_drawn_masks(tasks):
    data = small_tasks(tasks, n=2)
    config = TaskConfig(density=0.2, distribution="ERK", growth="static", epochs=2)
    run = run_continual(data, BODY, config, seed=1)
    shapes = {name: tuple(run.net.store.get_parameter(name).shape) for name in BODY_NAMES}
    densities = erk_densities(shapes, 0.2)
    for t in range(2):
        drawn = task_mask(run.net.store, t, densities, 1000 + t)
        assert all(torch.equal(run.net.task_masks[t][n], drawn[n]) for n in drawn)


def test_learner_rejects_bad_input(tasks):
    data = small_tasks(tasks, n=1)
    net = SparseContinualNet(BODY, n_tasks=1)
    with pytest.raises(ValueError, match="learned task"):
        net.task_network(0)
    with pytest.raises(TypeError, match="config"):
        net.learn_task(data[0], {"density": 0.1}, seed=0)
    net.learn_task(data[0], TaskConfig(epochs=1), seed=0)
    with pytest.raises(ValueError, match="all 1 tasks"):
        net.learn_task(data[0], TaskConfig(epochs=1), seed=0)
    with pytest.raises(ValueError, match="tasks"):
        run_continual([], BODY, TaskConfig(), seed=0)
    for bad, match in (
        ({"density": 0.0}, "density"),
        ({"distribution": "ER"}, "distribution"),
        ({"growth": "random_unfired"}, "growth"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
    ):
        with pytest.raises(ValueError, match=match):
            TaskConfig(**bad)


# --- metrics


def test_cl_metrics_on_a_hand_made_matrix():
    R = np.array([[0.9, np.nan, np.nan], [0.7, 0.8, np.nan], [0.6, 0.8, 0.95]])
    acc, bwt = cl_metrics(R)
    assert acc == pytest.approx((0.6 + 0.8 + 0.95) / 3)
    assert bwt == pytest.approx(((0.6 - 0.9) + (0.8 - 0.8)) / 2)
    assert cl_metrics(np.array([[0.5]])) == (0.5, 0.0)


def test_cl_metrics_rejects_bad_matrices():
    with pytest.raises(ValueError, match="square"):
        cl_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        cl_metrics(np.array([[0.5, 0.1], [np.nan, 0.4]]))
