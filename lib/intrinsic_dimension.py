"""Intrinsic dimension of an objective landscape (Li et al., 2018).

A model with D parameters is trained only inside a random d-dimensional affine subspace of its parameter
space,

    theta = theta_0 + P z,

where theta_0 is the model's usual random initialisation (frozen), P is a fixed random D x d matrix whose
columns are Gaussian directions of unit length, and only z (d numbers, starting at 0) is trained. The
intrinsic dimension d_int90 is the smallest d at which the subspace-trained model reaches 90 % of the accuracy
of full training.

The wrapper :class:`SubspaceModel` works on any ``torch.nn.Module``: it evaluates the wrapped module with the
parameters ``theta_0 + P z`` through ``torch.func.functional_call``. A linear least-squares toy, whose
intrinsic dimension is exactly the rank of its design, checks the definition in closed form.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from lib.data import DataSplit
from lib.validation import check_generator, check_positive_int

SCALES = ("log", "linear")


def flatten_params(model: nn.Module) -> torch.Tensor:
    """All parameters of ``model`` concatenated (``named_parameters`` order) into one detached 1-d tensor."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = [p.detach().reshape(-1) for p in model.parameters()]
    if not params:
        raise ValueError("model has no parameters")
    return torch.cat(params).clone()


def unflatten_params(flat: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    """Cut a flat vector into ``{name: tensor}`` views shaped like the parameters of ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = list(model.named_parameters())
    n_params = sum(p.numel() for _, p in named)
    if not isinstance(flat, torch.Tensor) or flat.ndim != 1 or flat.numel() != n_params:
        shape = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise ValueError(f"flat must be a 1-d tensor of the model's {n_params} parameters, got {shape}")
    pieces = flat.split([p.numel() for _, p in named])
    return {name: piece.view(p.shape) for (name, p), piece in zip(named, pieces, strict=True)}


def random_projection(n_params: int, d: int, *, seed: int) -> torch.Tensor:
    """A dense ``n_params x d`` float32 matrix of i.i.d. N(0, 1) entries, every column scaled to unit length.

    Columns of unit length make a step of size 1 in any coordinate of z move theta by distance 1. For
    ``d << n_params`` the columns are also nearly orthogonal (off-diagonal entries of P^T P are of order
    1/sqrt(n_params)).
    """
    n_params = check_positive_int(n_params, "n_params")
    d = check_positive_int(d, "d")
    if d > n_params:
        raise ValueError(f"d must be <= n_params = {n_params}, got {d}")
    generator = torch.Generator().manual_seed(check_positive_int(seed, "seed", minimum=0))
    directions = torch.randn(n_params, d, generator=generator)
    return directions / directions.norm(dim=0, keepdim=True)


class SubspaceModel(nn.Module):
    """Train ``model`` only along a random d-dimensional affine subspace: theta = theta_0 + P z.

    Parameters
    ----------
    model:
        Any module; a frozen copy is kept, and its current parameters are theta_0. The module passed in is not
        changed.
    d:
        Dimension of the subspace (1 <= d <= D, the number of parameters of ``model``).
    seed:
        Seed of the random projection P (see :func:`random_projection`).
    projection:
        Optional explicit D x d matrix to use instead of a random one (e.g. the identity for a check).

    The only trainable parameter is ``z`` (d numbers, initially 0, so the wrapped model starts at theta_0).
    """

    def __init__(
        self, model: nn.Module, d: int, *, seed: int = 0, projection: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        d = check_positive_int(d, "d")
        self.base = copy.deepcopy(model).requires_grad_(False)
        theta_0 = flatten_params(self.base)
        n_params = theta_0.numel()
        if d > n_params:
            raise ValueError(f"d must be <= D = {n_params} (the model's number of parameters), got {d}")
        if projection is None:
            projection = random_projection(n_params, d, seed=seed)
        elif not isinstance(projection, torch.Tensor) or tuple(projection.shape) != (n_params, d):
            shape = (
                tuple(projection.shape) if isinstance(projection, torch.Tensor) else type(projection).__name__
            )
            raise ValueError(f"projection must be a tensor of shape (D, d) = ({n_params}, {d}), got {shape}")
        self.register_buffer("theta_0", theta_0)
        self.register_buffer("projection", projection.detach().to(theta_0.dtype).clone())
        self.z = nn.Parameter(torch.zeros(d, dtype=theta_0.dtype))

    @property
    def d(self) -> int:
        """Dimension of the subspace."""
        return self.z.numel()

    @property
    def n_params(self) -> int:
        """D, the number of parameters of the wrapped model."""
        return self.theta_0.numel()

    def theta(self) -> torch.Tensor:
        """The wrapped model's current parameter vector theta_0 + P z (differentiable in z)."""
        return self.theta_0 + self.projection @ self.z

    def forward(self, *args, **kwargs):
        return functional_call(self.base, unflatten_params(self.theta(), self.base), args, kwargs)


@dataclass(frozen=True)
class SweepResult:
    """Final metrics of a batch of full-batch Adam runs, indexed ``[model, dimension, learning rate]``.

    ``dims`` are the subspace dimensions (for full training: the single entry D), ``lrs`` the learning rates.
    Losses are mean cross-entropies, accuracies fractions in [0, 1].
    """

    dims: np.ndarray
    lrs: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray

    def best_lr_index(self) -> np.ndarray:
        """Index of the learning rate with the lowest final training loss, per (model, dimension)."""
        return np.argmin(self.train_loss, axis=2)

    def best(self, metric: str) -> np.ndarray:
        """``metric`` (train_loss, train_acc or test_acc) of the best learning rate, shape (models, dims).

        The learning rate is chosen on the training loss only, so the test set plays no part in the choice.
        """
        if metric not in ("train_loss", "train_acc", "test_acc"):
            raise ValueError(f"metric must be train_loss, train_acc or test_acc, got {metric!r}")
        values = getattr(self, metric)
        return np.take_along_axis(values, self.best_lr_index()[..., None], axis=2)[..., 0]


def _check_models(models: Sequence[nn.Module]) -> list[nn.Module]:
    models = list(models)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise TypeError("models must be a non-empty sequence of torch.nn.Module")
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in models]
    if any(shape != shapes[0] for shape in shapes):
        raise ValueError("all models must have the same parameter shapes (one architecture, several inits)")
    return models


def _check_lrs(lrs: Sequence[float]) -> np.ndarray:
    lrs = tuple(lrs)
    if not lrs or not all(isinstance(lr, int | float) and not isinstance(lr, bool) and lr > 0 for lr in lrs):
        raise ValueError(f"lrs must be a non-empty sequence of positive learning rates, got {lrs}")
    return np.asarray(lrs, dtype=np.float64)


def _train_batched(
    base: nn.Module, thetas, params: list[torch.Tensor], lrs: np.ndarray, data: DataSplit, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-batch Adam on ``params`` (one tensor per learning rate) of the loss summed over all models.

    ``thetas()`` returns the parameter vectors of all K models, shape (K, D). The models do not interact: the
    summed loss gives each model its own gradient, and Adam acts coordinate by coordinate. Returns the final
    training loss, training accuracy and test accuracy of each model, each of shape (K,).
    """

    def logits_of(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return functional_call(base, unflatten_params(theta, base), (X,))

    batched_logits = torch.func.vmap(logits_of, in_dims=(0, None))
    X, y = data.X_train, data.y_train
    optimizer = torch.optim.Adam(
        [{"params": [p], "lr": float(lr)} for p, lr in zip(params, lrs, strict=True)]
    )
    for _ in range(check_positive_int(steps, "steps")):
        optimizer.zero_grad()
        logits = batched_logits(thetas(), X)  # (K, n, classes)
        # classes on dim 1: the same loss as flattening the models, several times faster on a CPU
        loss = F.cross_entropy(logits.transpose(1, 2), y.expand(logits.shape[0], -1), reduction="sum")
        (loss / X.shape[0]).backward()
        optimizer.step()
    with torch.inference_mode():
        final = thetas()
        train_logits = batched_logits(final, X)
        train_loss = torch.stack([F.cross_entropy(lg, y) for lg in train_logits]).double()
        train_acc = (train_logits.argmax(-1) == y).double().mean(-1)
        test_acc = (batched_logits(final, data.X_test).argmax(-1) == data.y_test).double().mean(-1)
    return train_loss.numpy(), train_acc.numpy(), test_acc.numpy()


def subspace_sweep(
    models: Sequence[nn.Module],
    dims: Sequence[int],
    data: DataSplit,
    *,
    projection_seeds: Sequence[int],
    steps: int = 200,
    lrs: Sequence[float] = (1e-2, 1e-1),
) -> SweepResult:
    """Train every model in every subspace dimension with every learning rate, all in one batch.

    Model ``i`` (its current parameters are its theta_0) gets one projection of ``max(dims)`` columns from
    :func:`random_projection` with seed ``projection_seeds[i]``; dimension d uses its first d columns, so the
    subspaces of one model are nested. Each run is full-batch Adam from z = 0 for ``steps`` steps, exactly as
    :class:`SubspaceModel` trained alone; batching only shares the work of the many small runs.
    """
    models = _check_models(models)
    lrs = _check_lrs(lrs)
    dims = np.asarray(dims)
    n_params = sum(p.numel() for p in models[0].parameters())
    if dims.ndim != 1 or dims.size == 0 or not np.issubdtype(dims.dtype, np.integer):
        raise ValueError(f"dims must be a non-empty 1-d sequence of ints, got {dims.tolist()}")
    if dims.min() < 1 or dims.max() > n_params:
        raise ValueError(f"dims must lie in [1, D = {n_params}], got {dims.tolist()}")
    projection_seeds = list(projection_seeds)
    if len(projection_seeds) != len(models):
        raise ValueError(
            f"projection_seeds needs one seed per model ({len(models)}), got {len(projection_seeds)}"
        )
    d_max = int(dims.max())
    theta_0 = torch.stack([flatten_params(m) for m in models])[:, None, :]  # (S, 1, D)
    # P^T stored row-major: theta^T = theta_0^T + z^T P^T is a much faster matrix product than P z on a CPU
    projections_t = torch.stack(
        [random_projection(n_params, d_max, seed=s).T.contiguous() for s in projection_seeds]
    )
    used = (torch.as_tensor(dims)[:, None] > torch.arange(d_max)[None, :]).float()  # (n_dims, d_max)
    zs = [torch.zeros(len(models), dims.size, d_max, requires_grad=True) for _ in lrs]

    def thetas() -> torch.Tensor:
        z = torch.cat([zz * used for zz in zs], dim=1)  # (S, n_lrs * n_dims, d_max)
        return torch.baddbmm(theta_0, z, projections_t).reshape(-1, n_params)

    metrics = _train_batched(copy.deepcopy(models[0]), thetas, zs, lrs, data, steps)
    shape = (len(models), lrs.size, dims.size)
    return SweepResult(dims, lrs, *(m.reshape(shape).transpose(0, 2, 1) for m in metrics))


def full_training_sweep(
    models: Sequence[nn.Module], data: DataSplit, *, steps: int = 200, lrs: Sequence[float] = (1e-2, 1e-1)
) -> SweepResult:
    """The baseline: train all D parameters of every model with every learning rate (protocol of
    :func:`subspace_sweep`). The result has a single "dimension", D."""
    models = _check_models(models)
    lrs = _check_lrs(lrs)
    theta_0 = torch.stack([flatten_params(m) for m in models])  # (S, D)
    n_params = theta_0.shape[1]
    params = [theta_0.clone().requires_grad_(True) for _ in lrs]

    def thetas() -> torch.Tensor:
        return torch.stack(params, dim=1).reshape(-1, n_params)

    metrics = _train_batched(copy.deepcopy(models[0]), thetas, params, lrs, data, steps)
    shape = (len(models), 1, lrs.size)
    return SweepResult(np.array([n_params]), lrs, *(m.reshape(shape) for m in metrics))


def intrinsic_dim_90(
    dims: Sequence[float],
    accs: Sequence[float],
    baseline_acc: float,
    *,
    fraction: float = 0.9,
    scale: str = "log",
) -> float:
    """The smallest d at which the accuracy curve first reaches ``fraction * baseline_acc``.

    ``dims`` are the tested subspace dimensions (strictly increasing), ``accs`` the accuracies measured there.
    Between the last d below the threshold and the first d at or above it, the curve is interpolated linearly
    in log d (``scale="log"``) or in d (``scale="linear"``). Returns ``dims[0]`` if the first point already
    reaches the threshold and ``inf`` if no tested d reaches it.
    """
    dims = np.asarray(dims, dtype=np.float64)
    accs = np.asarray(accs, dtype=np.float64)
    if dims.ndim != 1 or dims.size == 0 or dims.shape != accs.shape:
        raise ValueError(
            f"dims and accs must be 1-d of the same non-zero length, got {dims.shape}, {accs.shape}"
        )
    if not (np.all(dims > 0) and np.all(np.diff(dims) > 0)):
        raise ValueError(f"dims must be positive and strictly increasing, got {dims.tolist()}")
    if not np.all(np.isfinite(accs)):
        raise ValueError("accs must be finite")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not baseline_acc > 0:
        raise ValueError(f"baseline_acc must be > 0, got {baseline_acc}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    threshold = fraction * baseline_acc
    reached = np.flatnonzero(accs >= threshold)
    if reached.size == 0:
        return math.inf
    i = int(reached[0])
    if i == 0:
        return float(dims[0])
    x = np.log(dims) if scale == "log" else dims
    t = (threshold - accs[i - 1]) / (accs[i] - accs[i - 1])
    crossing = x[i - 1] + t * (x[i] - x[i - 1])
    return float(np.exp(crossing) if scale == "log" else crossing)


def low_rank_design(n_rows: int, n_cols: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """A Gaussian ``n_rows x n_cols`` matrix U V^T of rank exactly ``rank`` (with probability 1)."""
    n_rows = check_positive_int(n_rows, "n_rows")
    n_cols = check_positive_int(n_cols, "n_cols")
    rank = check_positive_int(rank, "rank")
    if rank > min(n_rows, n_cols):
        raise ValueError(f"rank must be <= min(n_rows, n_cols) = {min(n_rows, n_cols)}, got {rank}")
    rng = check_generator(rng)
    return rng.standard_normal((n_rows, rank)) @ rng.standard_normal((rank, n_cols))


def _residual_sq(matrix: np.ndarray, target: np.ndarray) -> float:
    solution = np.linalg.lstsq(matrix, target, rcond=None)[0]
    return float(np.sum((target - matrix @ solution) ** 2))


def subspace_lstsq_gap(
    design: np.ndarray, target: np.ndarray, projection: np.ndarray, theta_0: np.ndarray | None = None
) -> float:
    """How much worse the best point of the subspace theta_0 + P z is than the global least-squares optimum.

    Returns ``min_z ||A (theta_0 + P z) - b||^2 - min_theta ||A theta - b||^2`` (>= 0 up to rounding), with
    ``A = design`` (n x D), ``b = target`` (n,), ``P = projection`` (D x d), ``theta_0`` (D,) or 0. Both
    minima are solved in closed form (least squares, float64).
    """
    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    projection = np.asarray(projection, dtype=np.float64)
    if design.ndim != 2:
        raise ValueError(f"design must be a 2-d array (n, D), got shape {design.shape}")
    n_rows, n_cols = design.shape
    if target.shape != (n_rows,):
        raise ValueError(f"target must have shape ({n_rows},), got {target.shape}")
    if projection.ndim != 2 or projection.shape[0] != n_cols:
        raise ValueError(f"projection must have shape ({n_cols}, d), got {projection.shape}")
    theta_0 = np.zeros(n_cols) if theta_0 is None else np.asarray(theta_0, dtype=np.float64)
    if theta_0.shape != (n_cols,):
        raise ValueError(f"theta_0 must have shape ({n_cols},), got {theta_0.shape}")
    return _residual_sq(design @ projection, target - design @ theta_0) - _residual_sq(design, target)


def linear_intrinsic_dim(design: np.ndarray, target: np.ndarray, *, seed: int = 0, rtol: float = 1e-8) -> int:
    """The smallest d whose random subspace (through theta_0 = 0) reaches the least-squares optimum.

    For d = 1, 2, ..., D a projection from :func:`random_projection` (seed ``seed + d``) is drawn and the
    optimum is counted as reached when :func:`subspace_lstsq_gap` <= ``rtol * ||b||^2``. For a generic target
    the answer is the rank of ``design``, with probability 1.
    """
    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if design.ndim != 2:
        raise ValueError(f"design must be a 2-d array (n, D), got shape {design.shape}")
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    seed = check_positive_int(seed, "seed", minimum=0)
    n_cols = design.shape[1]
    tolerance = rtol * max(float(np.sum(target**2)), np.finfo(np.float64).tiny)
    for d in range(1, n_cols + 1):
        projection = random_projection(n_cols, d, seed=seed + d).double().numpy()
        if subspace_lstsq_gap(design, target, projection) <= tolerance:
            return d
    return n_cols
