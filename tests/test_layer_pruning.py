"""Tests of lib.layer_pruning: exact identities of block removal, hand counts, brute-force selections."""

import itertools
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib.layer_pruning import (
    ResidualMLP,
    block_importance,
    block_index,
    blocks_to_keep,
    drop_blocks,
    multiply_adds,
    shrink_blocks,
    sum_per_block,
    timed,
    unit_importance,
    units_to_keep,
    weight_scores,
)
from lib.saliency import grasp_scores, snip_scores


def tiny(seed: int = 0, n_blocks: int = 4, hidden=None) -> ResidualMLP:
    return ResidualMLP(6, 5, n_blocks, 3, hidden=hidden, seed=seed).double()


def batch(seed: int = 0, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=generator, dtype=torch.float64), torch.randint(0, 3, (n,), generator=generator)


def reference_forward(model: ResidualMLP, X: torch.Tensor) -> torch.Tensor:
    """The forward pass written out by hand from the definition (BatchNorm in training mode)."""
    h = torch.relu(X @ model.stem.weight.T + model.stem.bias)
    for block in model.blocks:
        z = h @ block.fc1.weight.T + block.fc1.bias
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + block.norm.eps)
        z = torch.relu(block.norm.weight * z + block.norm.bias)
        h = h + z @ block.fc2.weight.T + block.fc2.bias
    return h @ model.head.weight.T + model.head.bias


def test_forward_matches_the_definition_written_by_hand():
    model, (X, _) = tiny(), batch()
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference_forward(model, X))


def test_initialisation_is_seeded_and_uses_the_default_linear_bounds():
    a, b, c = tiny(seed=3), tiny(seed=3), tiny(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.stem.weight, c.stem.weight)
    for layer in a.linear_layers():
        bound = 1 / np.sqrt(layer.in_features)
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound


@pytest.mark.parametrize("training", [True, False])
def test_removing_a_block_with_a_zero_residual_branch_changes_no_output(training):
    model, (X, _) = tiny(seed=1), batch(1)
    with torch.no_grad():
        model.blocks[2].fc2.weight.zero_()
        model.blocks[2].fc2.bias.zero_()
    model.train(training)
    shallow = drop_blocks(model, [0, 1, 3])
    assert shallow.n_blocks == 3 and shallow.training == training
    with torch.no_grad():
        assert torch.equal(model(X), shallow(X))


def test_drop_blocks_copies_the_kept_blocks_and_leaves_the_model_alone():
    model = tiny(seed=2, n_blocks=5, hidden=[2, 3, 4, 5, 6])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = drop_blocks(model, [1, 4])
    assert ticket.hidden_widths == (3, 6)
    for new_name, old_name in (("blocks.0", "blocks.1"), ("blocks.1", "blocks.4"), ("stem", "stem"), ("head", "head")):
        new_state, old_state = ticket.get_submodule(new_name).state_dict(), model.get_submodule(old_name).state_dict()
        assert all(torch.equal(new_state[k], old_state[k]) for k in old_state)
    with torch.no_grad():
        ticket.blocks[0].fc1.weight.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert drop_blocks(model, []).n_blocks == 0
    full = drop_blocks(model, range(5))
    X, _ = batch()
    with torch.no_grad():
        assert torch.equal(full(X), model(X))


@pytest.mark.parametrize("training", [True, False])
def test_shrinking_equals_cutting_off_the_removed_units(training):
    model, (X, _) = tiny(seed=5, n_blocks=3), batch(5)
    with torch.no_grad():  # non-trivial running statistics for the eval-mode case
        model(X)
    kept = [[0, 2], [1, 3, 4], [4]]
    narrow = shrink_blocks(model, kept)
    assert narrow.hidden_widths == (2, 3, 1)
    cut = tiny(seed=5, n_blocks=3)
    cut.load_state_dict(model.state_dict())
    with torch.no_grad():
        for block, units in zip(cut.blocks, kept, strict=True):
            removed = torch.ones(5, dtype=torch.bool)
            removed[units] = False
            block.fc2.weight[:, removed] = 0
    model.train(training), cut.train(training), narrow.train(training)
    with torch.no_grad():
        torch.testing.assert_close(narrow(X), cut(X), rtol=1e-12, atol=1e-12)


def test_multiply_adds_match_a_hand_count_and_the_linear_layers_actually_run():
    assert multiply_adds(ResidualMLP(64, 64, 12, 10)) == 64 * 64 + 12 * 2 * 64 * 64 + 64 * 10 == 103_040
    model = ResidualMLP(7, 5, 3, 4, hidden=[2, 3, 9])
    assert multiply_adds(model) == 7 * 5 + 2 * (5 * 2 + 5 * 3 + 5 * 9) + 5 * 4
    counted = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: counted.append(i[0].shape[1] * o.shape[1]))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    model(torch.randn(2, 7))
    for hook in hooks:
        hook.remove()
    assert sum(counted) == multiply_adds(model)
    assert multiply_adds(ResidualMLP(7, 5, 0, 4)) == 7 * 5 + 5 * 4


def test_block_index_and_sum_per_block():
    assert block_index("blocks.11.fc2.weight") == 11
    assert block_index("stem.weight") is None and block_index("head.blocks.1") is None
    scores = {
        "stem.weight": torch.ones(3),
        "blocks.0.fc1.weight": torch.full((2, 2), 0.5),
        "blocks.2.norm.bias": torch.tensor([1.0, -3.0]),
        "blocks.0.fc2.bias": torch.tensor([2.0]),
    }
    np.testing.assert_array_equal(sum_per_block(scores, 3), [4.0, 0.0, -2.0])
    with pytest.raises(ValueError, match="n_blocks"):
        sum_per_block(scores, 2)


def test_l1_importance_sums_the_absolute_block_weights():
    model = tiny(seed=6)
    expected = [block.fc1.weight.abs().sum().item() + block.fc2.weight.abs().sum().item() for block in model.blocks]
    np.testing.assert_allclose(block_importance(model, "l1"), expected)
    units = unit_importance(model, "l1")
    for block, values in zip(model.blocks, units, strict=True):
        for j in range(5):
            row, column = block.fc1.weight[j].abs().sum(), block.fc2.weight[:, j].abs().sum()
            assert values[j] == pytest.approx((row + column).item())


def test_data_criteria_aggregate_the_saliency_scores_with_the_right_sign():
    model, (X, y) = tiny(seed=7), batch(7)
    snip = snip_scores(model, X, y)
    grasp = grasp_scores(model, X, y, temperature=50.0)
    for b in range(model.n_blocks):
        names = [f"blocks.{b}.fc1.weight", f"blocks.{b}.fc2.weight"]
        assert block_importance(model, "snip", X, y)[b] == pytest.approx(sum(snip[n].sum().item() for n in names))
        assert block_importance(model, "grasp", X, y, temperature=50.0)[b] == pytest.approx(
            -sum(grasp[n].sum().item() for n in names)
        )
    assert set(weight_scores(model, "snip", X, y)) == {n for n, p in model.named_parameters() if p.ndim == 2}


def test_random_importance_is_seeded():
    model = tiny()
    a, b = block_importance(model, "random", seed=1), block_importance(model, "random", seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, block_importance(model, "random", seed=2))
    assert ((a >= 0) & (a < 1)).all()
    units = unit_importance(model, "random", seed=3)
    assert len(units) == model.n_blocks and units[0].shape == (5,)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.integers(-50, 50), min_size=1, max_size=7, unique=True), data=st.data())
def test_blocks_to_keep_maximises_the_kept_importance(values, data):
    n_remove = data.draw(st.integers(0, len(values)))
    keep = blocks_to_keep(values, n_remove)
    best = max(
        itertools.combinations(range(len(values)), len(values) - n_remove),
        key=lambda subset: sum(values[i] for i in subset),
    )
    assert keep == list(best)


def test_blocks_to_keep_breaks_ties_by_removing_later_blocks_first():
    assert blocks_to_keep([1.0, 1.0, 1.0, 2.0], 2) == [0, 3]


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.lists(st.integers(-20, 20), min_size=4, max_size=4, unique=True), min_size=1, max_size=3),
    n_keep=st.integers(1, 4),
)
def test_units_to_keep_takes_the_top_units_of_every_block(values, n_keep):
    kept = units_to_keep([np.array(v, dtype=float) for v in values], n_keep)
    for v, k in zip(values, kept, strict=True):
        assert k == sorted(sorted(range(4), key=lambda j: -v[j])[:n_keep])


def test_timed_separates_cpu_time_from_waiting():
    result, cpu, wall = timed(time.sleep, 0.2)
    assert result is None and wall >= 0.2 and cpu < 0.1
    total, cpu, wall = timed(lambda n: sum(i * i for i in range(n)), 200_000)
    assert total == sum(i * i for i in range(200_000)) and cpu > 0 and wall > 0


def test_bad_inputs_raise_clear_errors():
    model, (X, y) = tiny(), batch()
    with pytest.raises(ValueError, match="width"):
        ResidualMLP(6, 0, 2, 3)
    with pytest.raises(TypeError, match="n_blocks"):
        ResidualMLP(6, 5, 2.0, 3)
    with pytest.raises(ValueError, match="hidden"):
        ResidualMLP(6, 5, 2, 3, hidden=[4])
    with pytest.raises(TypeError, match="ResidualMLP"):
        drop_blocks(nn.Linear(2, 2), [0])
    for keep in ([1, 0], [0, 4], [-1], [2, 2]):
        with pytest.raises(ValueError, match="keep"):
            drop_blocks(model, keep)
    with pytest.raises(TypeError, match="keep"):
        drop_blocks(model, [0.0])
    with pytest.raises(ValueError, match="kept_units"):
        shrink_blocks(model, [[0]])
    with pytest.raises(ValueError, match="kept_units"):
        shrink_blocks(model, [[0], [], [1], [2]])
    with pytest.raises(ValueError, match="criterion"):
        block_importance(model, "magnitude")
    with pytest.raises(ValueError, match="X and y"):
        block_importance(model, "grasp")
    with pytest.raises(ValueError, match="n_remove"):
        blocks_to_keep([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="importance"):
        blocks_to_keep([1.0, np.nan], 1)
    with pytest.raises(ValueError, match="n_keep"):
        units_to_keep([np.zeros(3)], 4)
    with pytest.raises(TypeError, match="fn"):
        timed(3)
    with pytest.raises(ValueError, match="X must be"):
        block_importance(model, "snip", X[:, :1].T, y)
