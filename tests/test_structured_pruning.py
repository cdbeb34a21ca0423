"""Tests of lib/structured_pruning.py: the extracted small model against the masked big model, L1-norm unit
selection against brute force and torch.nn.utils.prune.ln_structured, the slimming threshold against
numpy.quantile, the slimming gradient against autograd, FLOPs against forward hooks, and bad inputs."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune

from lib.structured_pruning import (
    BatchNormMLP,
    add_slimming_gradient,
    bn_scales,
    extract_submodel,
    global_scale_threshold,
    l1_norm_kept_units,
    mlp_flops,
    n_kept_units,
    scratch_b_epochs,
    slimming_hook,
    slimming_kept_units,
    step_decay,
    top_k_indices,
    unit_l1_norms,
    zero_removed_units,
)

WIDTHS = (6, 9, 7, 4)


def trained_like(seed: int, widths=WIDTHS) -> BatchNormMLP:
    """A float64 BatchNormMLP with random gamma, beta and running statistics (as after training)."""
    model = BatchNormMLP(widths, seed=seed).double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for norm in model.norms:
            n = norm.weight.numel()
            norm.weight.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
            norm.bias.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
            norm.running_mean.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
            norm.running_var.copy_(torch.rand(n, generator=generator, dtype=torch.float64) + 0.5)
    return model


def random_kept(data, widths=WIDTHS):
    return [
        torch.tensor(sorted(data.draw(st.sets(st.integers(0, w - 1), min_size=1, max_size=w))))
        for w in widths[1:-1]
    ]


# --- the model --------------------------------------------------------------------------------------------


def test_linear_layers_match_nn_linear_after_manual_seed():
    model = BatchNormMLP(WIDTHS, seed=5)
    torch.manual_seed(5)
    reference = [nn.Linear(a, b) for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True)]
    for ours, theirs in zip(model.layers, reference, strict=True):
        assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    assert all(torch.equal(n.weight, torch.ones(w)) for n, w in zip(model.norms, WIDTHS[1:-1], strict=True))
    assert model.hidden_widths == (9, 7)


def test_model_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    BatchNormMLP((64, 256, 256, 10), seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_forward_is_linear_batchnorm_relu_by_hand():
    model = trained_like(0).eval()
    x = torch.randn(5, WIDTHS[0], dtype=torch.float64)
    h = x
    for layer, norm in zip(model.layers[:-1], model.norms, strict=True):
        z = h @ layer.weight.T + layer.bias
        z_hat = (z - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
        h = torch.relu(z_hat * norm.weight + norm.bias)
    expected = h @ model.layers[-1].weight.T + model.layers[-1].bias
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-12)


# --- extraction of the small model --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 1000), train_mode=st.booleans())
def test_extracted_model_reproduces_the_masked_big_model(data, seed, train_mode):
    model = trained_like(seed).train(train_mode)
    kept = random_kept(data)
    x = torch.randn(8, WIDTHS[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    small = extract_submodel(model, kept)
    masked = zero_removed_units(model, kept)
    assert small.widths == (WIDTHS[0], *[len(k) for k in kept], WIDTHS[-1])
    assert small.training == train_mode
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-12)


def test_removed_units_matter_unless_cut_off():
    model = trained_like(3).eval()
    kept = [torch.tensor([0, 2, 4]), torch.tensor([1, 2])]
    x = torch.randn(16, WIDTHS[0], dtype=torch.float64)
    assert not torch.allclose(extract_submodel(model, kept)(x), model(x))
    everything = [torch.arange(w) for w in WIDTHS[1:-1]]
    assert torch.equal(zero_removed_units(model, everything)(x), model(x))


def test_extraction_copies_the_kept_entries_and_leaves_the_model_alone():
    model = trained_like(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept = [torch.tensor([1, 5, 8]), torch.tensor([0, 6])]
    small = extract_submodel(model, kept)
    assert torch.equal(small.layers[1].weight, model.layers[1].weight[[[0], [6]], [1, 5, 8]])
    assert torch.equal(small.norms[0].running_var, model.norms[0].running_var[[1, 5, 8]])
    assert torch.equal(small.layers[2].weight, model.layers[2].weight[:, [0, 6]])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- L1-norm pruning -----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.integers(-3, 3), min_size=1, max_size=7), data=st.data())
def test_top_k_is_the_best_subset_with_lowest_indices_on_ties(scores, data):
    k = data.draw(st.integers(1, len(scores)))
    subsets = itertools.combinations(range(len(scores)), k)
    best = max(subsets, key=lambda c: (sum(scores[i] for i in c), [-i for i in c]))
    assert top_k_indices(torch.tensor(scores, dtype=torch.float32), k).tolist() == list(best)


def test_unit_l1_norms_are_row_sums_of_absolute_weights():
    model = trained_like(2)
    for norms, layer in zip(unit_l1_norms(model), model.layers[:-1], strict=True):
        expected = [sum(abs(float(w)) for w in row) for row in layer.weight.detach()]
        np.testing.assert_allclose(norms.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.75])
def test_l1_kept_rows_match_torch_ln_structured(fraction):
    model = BatchNormMLP((10, 24, 16, 3), seed=4)
    kept = l1_norm_kept_units(model, fraction)
    for layer, idx in zip(model.layers[:-1], kept, strict=True):
        reference = nn.Linear(layer.in_features, layer.out_features)
        reference.weight.data.copy_(layer.weight)
        n_prune = layer.out_features - n_kept_units(layer.out_features, fraction)
        torch_prune.ln_structured(reference, "weight", amount=n_prune, n=1, dim=0)
        kept_rows = torch.nonzero(reference.weight_mask.any(dim=1)).reshape(-1)
        assert torch.equal(idx, kept_rows)


def test_l1_fractions_per_layer_and_rounding():
    model = BatchNormMLP((5, 10, 8, 2), seed=0)
    assert [len(k) for k in l1_norm_kept_units(model, [0.25, 0.5])] == [8, 4]  # round(2.5) = 2
    assert n_kept_units(3, 0.9) == 1 and n_kept_units(256, 0.75) == 64


# --- network slimming --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=2, max_size=20),
    percent=st.floats(0.01, 0.99),
)
def test_threshold_is_numpy_inverted_cdf_quantile(values, percent):
    split = len(values) // 2
    scales = [torch.tensor(values[:split]), torch.tensor(values[split:])]
    expected = np.quantile(np.abs(np.array(values, dtype=np.float64)), percent, method="inverted_cdf")
    assert global_scale_threshold(scales, percent) == pytest.approx(float(expected), rel=0, abs=0)


def test_slimming_removes_the_global_smallest_scales():
    model = BatchNormMLP((4, 5, 5, 2), seed=0)
    gammas = [torch.tensor([0.9, -0.1, 0.5, 0.05, 0.7]), torch.tensor([0.3, -0.8, 0.2, 0.6, 0.01])]
    with torch.no_grad():
        for norm, g in zip(model.norms, gammas, strict=True):
            norm.weight.copy_(g)
    kept = slimming_kept_units(model, 0.4)  # removes the 4 smallest |gamma|: 0.01, 0.05, 0.1, 0.2
    assert [k.tolist() for k in kept] == [[0, 2, 4], [0, 1, 3]]
    assert [torch.equal(a, b) for a, b in zip(bn_scales(model), gammas, strict=True)] == [True, True]


def test_slimming_keeps_one_unit_in_a_layer_it_would_empty():
    model = BatchNormMLP((4, 3, 5, 2), seed=0)
    with torch.no_grad():
        model.norms[0].weight.copy_(torch.tensor([0.01, -0.03, 0.02]))
        model.norms[1].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    kept = slimming_kept_units(model, 0.5)
    assert [k.tolist() for k in kept] == [[1], [1, 2, 3, 4]]


@pytest.mark.parametrize("s", [0.0, 1e-4, 0.3])
def test_slimming_gradient_is_autograd_of_the_l1_penalty(s):
    model = trained_like(7)
    with torch.no_grad():
        model.norms[0].weight[0] = 0.0  # sign(0) = 0, as the subgradient autograd uses for |x| at 0
    x = torch.randn(12, WIDTHS[0], dtype=torch.float64)
    y = torch.randint(0, WIDTHS[-1], (12,))
    F.cross_entropy(model(x), y).backward()
    add_slimming_gradient(model, s)
    ours = [n.weight.grad.clone() for n in model.norms]
    model.zero_grad()
    penalty = s * sum(n.weight.abs().sum() for n in model.norms)
    (F.cross_entropy(model(x), y) + penalty).backward()
    for a, n in zip(ours, model.norms, strict=True):
        torch.testing.assert_close(a, n.weight.grad, rtol=0, atol=1e-15)


def test_slimming_hook_adds_the_same_gradient():
    model = trained_like(8)
    model(torch.randn(4, WIDTHS[0], dtype=torch.float64)).sum().backward()
    before = [n.weight.grad.clone() for n in model.norms]
    slimming_hook(0.5)(1, model, None)
    for b, n in zip(before, model.norms, strict=True):
        torch.testing.assert_close(n.weight.grad - b, 0.5 * torch.sign(n.weight.detach()))


# --- budgets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("widths", [(64, 256, 256, 10), (3, 1, 2), (5, 4, 7, 2, 3)])
def test_flops_count_multiply_adds_of_a_forward_pass(widths):
    model = BatchNormMLP(widths).eval()
    counted = []

    def count(module, inputs, output):
        if isinstance(module, nn.Linear):
            counted.append(module.in_features * module.out_features)
        else:
            counted.append(output.shape[1])

    for module in [*model.layers, *model.norms]:
        module.register_forward_hook(count)
    model(torch.zeros(1, widths[0]))
    assert mlp_flops(widths) == sum(counted)
    assert mlp_flops(widths, batchnorm=False) == sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def test_scratch_b_epochs():
    assert scratch_b_epochs(40, mlp_flops((64, 256, 256, 10)), mlp_flops((64, 128, 128, 10))) == 80
    assert scratch_b_epochs(40, 100, 80) == 50
    assert scratch_b_epochs(40, 100, 100) == 40
    assert scratch_b_epochs(10, 300, 100, cap=5) == 30


def test_step_decay_divides_by_ten_at_half_and_three_quarters():
    schedule = step_decay(8)
    assert [schedule(t) for t in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    model = nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    torch_schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[50, 75], gamma=0.1)
    ours = step_decay(100)
    for t in range(100):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * ours(t))
        opt.step()
        torch_schedule.step()


# --- bad inputs ----------------------------------------------------------------------------------------------


def test_bad_inputs_raise_naming_the_argument():
    model = BatchNormMLP(WIDTHS)
    with pytest.raises(ValueError, match="widths"):
        BatchNormMLP((4, 2))
    with pytest.raises(ValueError, match="widths"):
        BatchNormMLP((4, 0, 2))
    with pytest.raises(TypeError, match="model"):
        unit_l1_norms(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="prune_fraction"):
        l1_norm_kept_units(model, 1.0)
    with pytest.raises(ValueError, match="prune_fraction"):
        l1_norm_kept_units(model, [0.5])
    with pytest.raises(TypeError, match="prune_fraction"):
        l1_norm_kept_units(model, "half")
    with pytest.raises(ValueError, match="percent"):
        slimming_kept_units(model, 0.0)
    with pytest.raises(ValueError, match="scales"):
        global_scale_threshold([], 0.5)
    with pytest.raises(ValueError, match="k must"):
        top_k_indices(torch.ones(3), 4)
    with pytest.raises(ValueError, match="scores"):
        top_k_indices(torch.ones(2, 2), 1)
    with pytest.raises(ValueError, match="kept"):
        extract_submodel(model, [torch.tensor([0, 1])])
    with pytest.raises(ValueError, match=r"kept\[0\]"):
        extract_submodel(model, [torch.tensor([1, 0]), torch.tensor([0])])
    with pytest.raises(ValueError, match=r"kept\[1\]"):
        zero_removed_units(model, [torch.tensor([0]), torch.tensor([7])])
    with pytest.raises(ValueError, match=r"kept\[1\]"):
        extract_submodel(model, [torch.tensor([0]), torch.tensor([], dtype=torch.long)])
    with pytest.raises(ValueError, match="s must"):
        slimming_hook(-1.0)
    with pytest.raises(ValueError, match="backward"):
        add_slimming_gradient(model, 1e-4)
    with pytest.raises(ValueError, match="pruned_flops"):
        scratch_b_epochs(40, 100, 200)
    with pytest.raises(ValueError, match="cap"):
        scratch_b_epochs(40, 200, 100, cap=0.5)
    with pytest.raises(ValueError, match="milestones"):
        step_decay(10, milestones=(0.75, 0.5))
    with pytest.raises(ValueError, match="factor"):
        step_decay(10, factor=0.0)
    with pytest.raises(TypeError, match="total_steps"):
        step_decay(10.0)
    assert math.isfinite(mlp_flops((2, 3, 4)))
