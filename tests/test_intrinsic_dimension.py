"""Tests of lib/intrinsic_dimension.py against independent oracles."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parameters_to_vector

from lib.data import digits_split
from lib.intrinsic_dimension import (
    SubspaceModel,
    flatten_params,
    full_training_sweep,
    intrinsic_dim_90,
    linear_intrinsic_dim,
    low_rank_design,
    random_projection,
    subspace_lstsq_gap,
    subspace_sweep,
    unflatten_params,
)
from lib.mlp import MLP, train_classifier


@pytest.fixture(scope="module")
def data():
    return digits_split()


def tiny_mlp(seed: int = 0, hidden: int = 8) -> MLP:
    return MLP((64, hidden, 10), seed=seed)


class ConvNet(nn.Module):
    """A module of another kind, to check that the wrapper is not tied to the MLP."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 3, kernel_size=5)
        self.head = nn.Linear(3 * 60, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x[:, None, :])).flatten(1))


# --- flatten / unflatten ---------------------------------------------------------------------------------


def test_flatten_matches_torch_parameters_to_vector():
    model = ConvNet()
    assert torch.equal(flatten_params(model), parameters_to_vector(model.parameters()).detach())


def test_unflatten_inverts_flatten_and_keeps_names_and_shapes():
    model = tiny_mlp()
    flat = torch.arange(sum(p.numel() for p in model.parameters()), dtype=torch.float32)
    pieces = unflatten_params(flat, model)
    assert list(pieces) == [name for name, _ in model.named_parameters()]
    for (name, p), piece in zip(model.named_parameters(), pieces.values(), strict=True):
        assert piece.shape == p.shape, name
    assert torch.equal(torch.cat([piece.reshape(-1) for piece in pieces.values()]), flat)


def test_flatten_and_unflatten_reject_bad_input():
    with pytest.raises(TypeError, match="model"):
        flatten_params("not a model")
    with pytest.raises(ValueError, match="no parameters"):
        flatten_params(nn.ReLU())
    with pytest.raises(ValueError, match="flat"):
        unflatten_params(torch.zeros(3), tiny_mlp())
    with pytest.raises(TypeError, match="model"):
        unflatten_params(torch.zeros(3), None)


# --- random projection -----------------------------------------------------------------------------------


def test_projection_columns_have_unit_norm_and_are_nearly_orthogonal():
    n_params, d = 4810, 60
    projection = random_projection(n_params, d, seed=3)
    assert projection.shape == (n_params, d) and projection.dtype == torch.float32
    np.testing.assert_allclose(projection.norm(dim=0).numpy(), 1.0, atol=1e-5)
    gram = (projection.T.double() @ projection.double()).numpy()
    off_diagonal = gram[~np.eye(d, dtype=bool)]
    assert np.abs(off_diagonal).max() < 5 / math.sqrt(n_params)
    # a random unit vector's overlap with another has variance 1/D
    assert 0.7 / n_params < off_diagonal.var() < 1.3 / n_params


def test_projection_is_far_from_orthogonal_when_d_is_comparable_to_D():
    projection = random_projection(100, 100, seed=0).double()
    gram = projection.T @ projection
    assert (gram - torch.eye(100)).abs().max() > 0.2


def test_projection_is_reproducible_by_seed():
    assert torch.equal(random_projection(50, 4, seed=1), random_projection(50, 4, seed=1))
    assert not torch.equal(random_projection(50, 4, seed=1), random_projection(50, 4, seed=2))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(n_params=0, d=1, seed=0), ValueError),
        (dict(n_params=10, d=0, seed=0), ValueError),
        (dict(n_params=10, d=11, seed=0), ValueError),
        (dict(n_params=10, d=2.0, seed=0), TypeError),
        (dict(n_params=10, d=2, seed=-1), ValueError),
    ],
)
def test_projection_rejects_bad_input(kwargs, error):
    n_params, d = kwargs.pop("n_params"), kwargs.pop("d")
    with pytest.raises(error):
        random_projection(n_params, d, **kwargs)


# --- the subspace model ----------------------------------------------------------------------------------


def test_subspace_model_starts_at_theta_0_and_moves_along_P(data):
    model = ConvNet()
    subspace = SubspaceModel(model, 7, seed=4)
    torch.testing.assert_close(subspace(data.X_test), model(data.X_test), rtol=0, atol=0)
    assert [name for name, p in subspace.named_parameters() if p.requires_grad] == ["z"]
    z = torch.randn(7, generator=torch.Generator().manual_seed(0))
    subspace.z.data.copy_(z)
    expected = flatten_params(model) + random_projection(subspace.n_params, 7, seed=4) @ z
    torch.testing.assert_close(subspace.theta().detach(), expected)
    moved = ConvNet()
    nn.utils.vector_to_parameters(expected, moved.parameters())
    torch.testing.assert_close(subspace(data.X_test), moved(data.X_test))


def test_gradient_wrt_z_is_P_transpose_gradient_wrt_theta(data):
    model = tiny_mlp(seed=2)
    subspace = SubspaceModel(model, 12, seed=5)
    subspace.z.data.normal_(generator=torch.Generator().manual_seed(1))
    F.cross_entropy(subspace(data.X_train), data.y_train).backward()
    # the oracle: autograd on a plain copy of the model sitting at theta = theta_0 + P z
    plain = tiny_mlp(seed=2)
    nn.utils.vector_to_parameters(subspace.theta().detach(), plain.parameters())
    F.cross_entropy(plain(data.X_train), data.y_train).backward()
    grad_theta = torch.cat([p.grad.reshape(-1) for p in plain.parameters()])
    torch.testing.assert_close(subspace.z.grad, subspace.projection.T @ grad_theta, rtol=1e-5, atol=1e-6)


def test_identity_projection_with_d_equal_D_trains_exactly_like_the_full_model(data):
    full = tiny_mlp(seed=1)
    n_params = sum(p.numel() for p in full.parameters())
    subspace = SubspaceModel(full, n_params, projection=torch.eye(n_params))
    full_path, subspace_path = [], []
    kwargs = dict(epochs=15, lr=0.05, batch_size=300, seed=3)
    train_classifier(full, data, on_step=lambda step, m, opt: full_path.append(flatten_params(m)), **kwargs)
    train_classifier(
        subspace,
        data,
        on_step=lambda step, m, opt: subspace_path.append(m.theta().detach().clone()),
        **kwargs,
    )
    assert len(full_path) == len(subspace_path) == 60
    for step, (a, b) in enumerate(zip(full_path, subspace_path, strict=True)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=f"paths differ at step {step + 1}")


def test_subspace_training_leaves_the_wrapped_model_unchanged(data):
    model = tiny_mlp()
    before = flatten_params(model)
    subspace = SubspaceModel(model, 5)
    train_classifier(subspace, data, epochs=1, lr=0.1)
    assert torch.equal(flatten_params(model), before)
    assert subspace.z.abs().sum() > 0


def test_subspace_model_rejects_bad_input():
    model = tiny_mlp()
    n_params = sum(p.numel() for p in model.parameters())
    with pytest.raises(TypeError, match="model"):
        SubspaceModel(object(), 3)
    with pytest.raises(ValueError, match="d must be <= D"):
        SubspaceModel(model, n_params + 1)
    with pytest.raises(ValueError, match="d must be >= 1"):
        SubspaceModel(model, 0)
    with pytest.raises(ValueError, match="projection"):
        SubspaceModel(model, 3, projection=torch.zeros(n_params, 4))


# --- batched sweeps --------------------------------------------------------------------------------------


def test_subspace_sweep_equals_subspace_models_trained_one_by_one(data):
    models = [tiny_mlp(seed=0), tiny_mlp(seed=1)]
    dims, lrs, steps = [3, 20], (0.01, 0.1), 12
    sweep = subspace_sweep(models, dims, data, projection_seeds=[7, 8], steps=steps, lrs=lrs)
    assert sweep.train_loss.shape == (2, 2, 2)
    n_params = sum(p.numel() for p in models[0].parameters())
    for i, (model, seed) in enumerate(zip(models, [7, 8], strict=True)):
        projection = random_projection(n_params, max(dims), seed=seed)
        for j, d in enumerate(dims):
            for k, lr in enumerate(lrs):
                subspace = SubspaceModel(model, d, projection=projection[:, :d])
                history = train_classifier(
                    subspace,
                    data,
                    epochs=steps,
                    lr=lr,
                    batch_size=10_000,
                    record_train=True,
                    eval_every=steps,
                )
                np.testing.assert_allclose(sweep.train_loss[i, j, k], history.final("train_loss"), rtol=1e-4)
                np.testing.assert_allclose(sweep.train_acc[i, j, k], history.final("train_acc"), atol=1e-9)
                np.testing.assert_allclose(sweep.test_acc[i, j, k], history.final("test_acc"), atol=1e-9)


def test_full_training_sweep_equals_plain_training(data):
    models = [tiny_mlp(seed=0), tiny_mlp(seed=4)]
    sweep = full_training_sweep(models, data, steps=10, lrs=(0.003, 0.03))
    assert sweep.train_loss.shape == (2, 1, 2) and sweep.dims.tolist() == [64 * 8 + 8 + 8 * 10 + 10]
    for i, seed in enumerate([0, 4]):
        for k, lr in enumerate([0.003, 0.03]):
            history = train_classifier(
                tiny_mlp(seed=seed),
                data,
                epochs=10,
                lr=lr,
                batch_size=10_000,
                record_train=True,
                eval_every=10,
            )
            np.testing.assert_allclose(sweep.train_loss[i, 0, k], history.final("train_loss"), rtol=1e-4)
            np.testing.assert_allclose(sweep.test_acc[i, 0, k], history.final("test_acc"), atol=1e-9)


def test_best_picks_the_learning_rate_with_the_lowest_training_loss(data):
    sweep = subspace_sweep([tiny_mlp()], [4, 30], data, projection_seeds=[0], steps=5, lrs=(1e-4, 0.1, 1e-3))
    for j in range(2):
        k = int(np.argmin(sweep.train_loss[0, j]))
        assert sweep.best("test_acc")[0, j] == sweep.test_acc[0, j, k]
        assert sweep.best("train_loss")[0, j] == sweep.train_loss[0, j].min()
    with pytest.raises(ValueError, match="metric"):
        sweep.best("val_acc")


def test_sweeps_reject_bad_input(data):
    models = [tiny_mlp()]
    with pytest.raises(TypeError, match="models"):
        subspace_sweep([], [3], data, projection_seeds=[])
    with pytest.raises(ValueError, match="same parameter shapes"):
        full_training_sweep([tiny_mlp(hidden=8), tiny_mlp(hidden=9)], data)
    with pytest.raises(ValueError, match="dims"):
        subspace_sweep(models, [0, 3], data, projection_seeds=[0])
    with pytest.raises(ValueError, match="dims"):
        subspace_sweep(models, [1.5], data, projection_seeds=[0])
    with pytest.raises(ValueError, match="projection_seeds"):
        subspace_sweep(models, [3], data, projection_seeds=[0, 1])
    with pytest.raises(ValueError, match="lrs"):
        subspace_sweep(models, [3], data, projection_seeds=[0], lrs=(0.1, -1.0))
    with pytest.raises(ValueError, match="lrs"):
        full_training_sweep(models, data, lrs=())
    with pytest.raises(ValueError, match="steps"):
        full_training_sweep(models, data, steps=0)


# --- d_int90 ---------------------------------------------------------------------------------------------


def test_intrinsic_dim_90_interpolates_in_log_d_by_hand():
    # threshold 0.9 lies 0.4 / 0.45 of the way from 0.5 (d = 10) to 0.95 (d = 100), one decade
    d_int = intrinsic_dim_90([10, 100, 1000], [0.5, 0.95, 0.99], 1.0)
    assert d_int == pytest.approx(10 ** (1 + 0.4 / 0.45))
    assert intrinsic_dim_90([10, 100], [0.5, 0.95], 1.0, scale="linear") == pytest.approx(
        10 + 90 * 0.4 / 0.45
    )
    assert intrinsic_dim_90([10, 20], [0.4, 0.6], 0.8, fraction=0.625) == pytest.approx(10 * 2**0.5)


def test_intrinsic_dim_90_edge_cases():
    assert intrinsic_dim_90([5, 10], [0.95, 0.97], 1.0) == 5
    assert intrinsic_dim_90([5, 10], [0.5, 0.6], 1.0) == math.inf
    assert intrinsic_dim_90([5, 10, 20], [0.95, 0.5, 0.95], 1.0) == 5  # the first crossing counts
    assert intrinsic_dim_90([5, 10, 20], [0.5, 0.9, 0.95], 1.0) == pytest.approx(10)  # exactly at a tested d


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8), st.floats(0.3, 1.0))
def test_intrinsic_dim_90_lies_between_the_bracketing_dims(accs, baseline):
    dims = np.cumsum(np.arange(1, len(accs) + 1)) * 3.0
    d_int = intrinsic_dim_90(dims, accs, baseline)
    reached = np.flatnonzero(np.asarray(accs) >= 0.9 * baseline)
    if reached.size == 0:
        assert d_int == math.inf
    else:
        i = reached[0]
        assert dims[max(i - 1, 0)] - 1e-9 <= d_int <= dims[i] + 1e-9


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([10, 5], [0.1, 0.2], 1.0), {}, "increasing"),
        (([0, 5], [0.1, 0.2], 1.0), {}, "positive"),
        (([5, 10], [0.1], 1.0), {}, "same non-zero length"),
        (([5, 10], [0.1, np.nan], 1.0), {}, "finite"),
        (([5, 10], [0.1, 0.2], 0.0), {}, "baseline_acc"),
        (([5, 10], [0.1, 0.2], 1.0), {"fraction": 1.5}, "fraction"),
        (([5, 10], [0.1, 0.2], 1.0), {"scale": "cubic"}, "scale"),
    ],
)
def test_intrinsic_dim_90_rejects_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        intrinsic_dim_90(*args, **kwargs)


# --- the linear least-squares toy ------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.data())
def test_low_rank_design_has_the_requested_rank(n_rows, n_cols, draw):
    rank = draw.draw(st.integers(1, min(n_rows, n_cols)))
    design = low_rank_design(n_rows, n_cols, rank, np.random.default_rng(rank))
    assert design.shape == (n_rows, n_cols)
    assert np.linalg.matrix_rank(design) == rank


def projector_residual(matrix: np.ndarray, vector: np.ndarray) -> float:
    """Squared distance of ``vector`` from the column space of ``matrix``, via an orthonormal basis (SVD)."""
    basis = scipy.linalg.orth(matrix)
    return float(np.sum((vector - basis @ (basis.T @ vector)) ** 2))


def test_subspace_gap_matches_orthogonal_projections():
    rng = np.random.default_rng(0)
    design = low_rank_design(15, 10, 6, rng)
    target, theta_0 = rng.standard_normal(15), rng.standard_normal(10)
    for d in (1, 3, 6, 9):
        projection = rng.standard_normal((10, d))
        expected = projector_residual(design @ projection, target - design @ theta_0)
        expected -= projector_residual(design, target)
        assert subspace_lstsq_gap(design, target, projection, theta_0) == pytest.approx(expected, abs=1e-9)
    assert subspace_lstsq_gap(design, target, np.eye(10), theta_0) == pytest.approx(0, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 14), st.integers(3, 14), st.integers(0, 2**16), st.data())
def test_linear_intrinsic_dim_equals_matrix_rank(n_rows, n_cols, seed, draw):
    rank = draw.draw(st.integers(1, min(n_rows, n_cols)))
    rng = np.random.default_rng(seed)
    design = low_rank_design(n_rows, n_cols, rank, rng)
    target = rng.standard_normal(n_rows)
    assert linear_intrinsic_dim(design, target, seed=seed) == np.linalg.matrix_rank(design)


def test_linear_toy_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rank"):
        low_rank_design(3, 4, 5, rng)
    with pytest.raises(TypeError, match="rng"):
        low_rank_design(3, 4, 2, 0)
    design = np.ones((4, 3))
    with pytest.raises(ValueError, match="target"):
        subspace_lstsq_gap(design, np.ones(3), np.ones((3, 1)))
    with pytest.raises(ValueError, match="projection"):
        subspace_lstsq_gap(design, np.ones(4), np.ones((4, 1)))
    with pytest.raises(ValueError, match="theta_0"):
        subspace_lstsq_gap(design, np.ones(4), np.ones((3, 1)), np.ones(4))
    with pytest.raises(ValueError, match="design"):
        linear_intrinsic_dim(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="rtol"):
        linear_intrinsic_dim(design, np.ones(4), rtol=0.0)
