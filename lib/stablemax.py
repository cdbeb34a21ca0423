"""Grokking at the edge of numerical stability: StableMax, Softmax Collapse and perpendicular gradients.

Without regularisation, a network that has fitted its training set keeps lowering the cross-entropy by scaling
its logits up. In floating point the softmax of the correct class then rounds to exactly 1, the loss and its
gradient for that class become exactly 0 ("Softmax Collapse"), and learning stops. This module holds the pieces
of Prieto et al. (ICLR 2025) that a miniature needs:

- :func:`stablemax` and :func:`stablemax_cross_entropy`: a softmax whose scores grow linearly (not
  exponentially) with the logit, so scaling the logits cannot round the loss to zero;
- :func:`softmax_cross_entropy` in a chosen float dtype, :func:`softmax_collapse_fraction` and
  :func:`zero_gradient_fraction`, to see when a dtype collapses;
- :func:`nlm_cosine`, the alignment of the gradient with "naive loss minimisation" (growing the weights along
  themselves), and :func:`perp_grad_`, which removes that component from each gradient ("perpGrad");
- modular-addition data, the bias-free MLP of the paper's algorithmic tasks, and a full-batch AdamW trainer
  that logs all of the above.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lib.data import DataSplit
from lib.validation import check_positive_int

FLOAT_DTYPES = (torch.float16, torch.float32, torch.float64)
ACTIVATIONS = ("softmax", "stablemax")
REDUCTIONS = ("mean", "sum", "none")


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_dtype(dtype: object) -> torch.dtype:
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    return dtype


def _check_logits_and_targets(logits: object, targets: object) -> tuple[torch.Tensor, torch.Tensor]:
    logits = _check_tensor("logits", logits)
    targets = _check_tensor("targets", targets)
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor of shape (n, classes), got {tuple(logits.shape)} "
                         f"{logits.dtype}")
    if targets.shape != (logits.shape[0],) or targets.dtype != torch.int64:
        raise ValueError(f"targets must be an int64 tensor of shape ({logits.shape[0]},), got "
                         f"{tuple(targets.shape)} {targets.dtype}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= logits.shape[1]):
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}), got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    return logits, targets


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses


def stablemax_score(x: torch.Tensor) -> torch.Tensor:
    """The score s(x) of StableMax: x + 1 for x >= 0 and 1 / (1 - x) for x < 0.

    s is positive, increasing, continuously differentiable (slope 1 on both sides of 0) and grows only linearly,
    where softmax uses exp(x). Each branch is evaluated on its own half-line, so the gradient is finite
    everywhere (no division by zero in the branch that is not taken).
    """
    x = _check_tensor("x", x)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    return torch.where(x >= 0, x.clamp(min=0) + 1, 1 / (1 - x.clamp(max=0)))


def stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """StableMax(x)_i = s(x_i) / sum_j s(x_j) along ``dim``: probabilities that sum to 1 and keep the order."""
    scores = stablemax_score(x)
    return scores / scores.sum(dim=dim, keepdim=True)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log StableMax(x) along ``dim``, as log s(x_i) - log sum_j s(x_j)."""
    scores = stablemax_score(x)
    return scores.log() - scores.sum(dim=dim, keepdim=True).log()


def stablemax_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, dtype: torch.dtype = torch.float64, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy -log StableMax(logits)_target, computed in ``dtype`` (float64 by default, as in the paper).

    ``logits`` is (n, classes), ``targets`` (n,) int64; ``reduction`` is "mean", "sum" or "none".
    """
    logits, targets = _check_logits_and_targets(logits, targets)
    log_probs = log_stablemax(logits.to(_check_dtype(dtype)), dim=1)
    return _reduce(-log_probs.gather(1, targets[:, None])[:, 0], reduction)


def softmax_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, *, dtype: torch.dtype = torch.float32, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy -log softmax(logits)_target with the log-softmax computed in ``dtype`` (16, 32 or 64 bit).

    The logits are cast to ``dtype`` first, so the rounding of that dtype decides when the loss becomes 0.
    """
    logits, targets = _check_logits_and_targets(logits, targets)
    log_probs = torch.log_softmax(logits.to(_check_dtype(dtype)), dim=1)
    return _reduce(-log_probs.gather(1, targets[:, None])[:, 0], reduction)


def _per_sample_losses(logits: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype, activation: str):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    loss = softmax_cross_entropy if activation == "softmax" else stablemax_cross_entropy
    return loss(logits, targets, dtype=dtype, reduction="none")


def softmax_collapse_fraction(
    logits: torch.Tensor, targets: torch.Tensor, *, dtype: torch.dtype = torch.float32,
    activation: str = "softmax",
) -> float:
    """Fraction of samples whose cross-entropy, computed in ``dtype``, is exactly 0 (Softmax Collapse).

    A loss of exactly 0 means the correct class's probability rounded to 1, so the gradient with respect to the
    correct-class logit is exactly 0 as well. ``activation`` is "softmax" or "stablemax".
    """
    with torch.no_grad():
        losses = _per_sample_losses(logits, targets, dtype, activation)
    return float((losses == 0).double().mean()) if losses.numel() else 0.0


def zero_gradient_fraction(
    logits: torch.Tensor, targets: torch.Tensor, *, dtype: torch.dtype = torch.float32,
    activation: str = "softmax",
) -> float:
    """Fraction of samples whose whole gradient of the loss with respect to their logits is exactly 0 in ``dtype``.

    Stricter than :func:`softmax_collapse_fraction`: the wrong-class probabilities must also underflow to 0.
    """
    leaf = _check_tensor("logits", logits).detach().to(_check_dtype(dtype)).requires_grad_(True)
    losses = _per_sample_losses(leaf, targets, dtype, activation)
    if not losses.numel():
        return 0.0
    (gradient,) = torch.autograd.grad(losses.sum(), leaf)
    return float((gradient == 0).all(dim=1).double().mean())


def _with_gradients(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    for index, param in enumerate(params):
        _check_tensor(f"params[{index}]", param)
    with_grad = [param for param in params if param.grad is not None]
    if not with_grad:
        raise ValueError("params must contain at least one tensor with a .grad (call backward() first)")
    return with_grad


@torch.no_grad()
def perp_grad_(params: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's gradient g by its part orthogonal to the weights w, rescaled to the norm of g.

    Per tensor: g_perp = g - (w.g / w.w) w, then g <- g_perp * |g| / |g_perp| (the paper's perpGrad, used in
    front of any optimiser). The removed part is the naive-loss-minimisation direction of that tensor: growing
    (or shrinking) w along itself. Tensors with w = 0 or g parallel to w keep g (resp. get 0). In place.
    """
    for param in _with_gradients(params):
        weights, gradient = param.reshape(-1), param.grad.reshape(-1)
        weight_sq = torch.dot(weights, weights)
        if weight_sq == 0:
            continue
        orthogonal = gradient - (torch.dot(weights, gradient) / weight_sq) * weights
        orthogonal_norm = orthogonal.norm()
        scale = gradient.norm() / orthogonal_norm if orthogonal_norm > 0 else 0.0
        param.grad.copy_((orthogonal * scale).view_as(param.grad))


@torch.no_grad()
def nlm_cosine(params: Iterable[torch.Tensor]) -> float:
    """Cosine between the descent direction -g and the weights theta, over all parameters with a gradient.

    1 means a gradient step only scales the weights up along themselves (naive loss minimisation); 0 means it
    is orthogonal to them.
    """
    params = _with_gradients(params)
    weights = torch.cat([param.reshape(-1) for param in params]).double()
    gradient = torch.cat([param.grad.reshape(-1) for param in params]).double()
    denominator = weights.norm() * gradient.norm()
    if denominator == 0:
        raise ValueError("nlm_cosine is undefined when the weights or the gradient are all zero")
    return float(-torch.dot(weights, gradient) / denominator)


def _nlm_cosine_or_nan(params: list[torch.Tensor]) -> float:
    if all(not param.grad.any() for param in params):
        return math.nan
    return nlm_cosine(params)


def modular_addition_data(p: int, train_frac: float, seed: int) -> DataSplit:
    """All pairs (a, b) in [0, p)^2 labelled (a + b) mod p, split at random into train and test.

    Inputs are the concatenated one-hot codes of a and b (float32, length 2p); ``floor(train_frac * p^2)``
    random pairs (seeded) form the training set, the rest the test set.
    """
    p = check_positive_int(p, "p", minimum=2)
    if not 0 < train_frac < 1:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    n_pairs = p * p
    n_train = math.floor(train_frac * n_pairs)
    if not 1 <= n_train < n_pairs:
        raise ValueError(f"train_frac={train_frac} leaves an empty train or test set for p={p}")
    a, b = torch.arange(n_pairs) // p, torch.arange(n_pairs) % p
    inputs = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).float()
    labels = (a + b) % p
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n_pairs))
    train, test = order[:n_train], order[n_train:]
    return DataSplit(inputs[train], labels[train], inputs[test], labels[test])


def bias_free_mlp(widths: Sequence[int], *, seed: int) -> nn.Sequential:
    """ReLU MLP ``widths[0] -> ... -> widths[-1]`` without biases (a positively homogeneous network).

    Weights follow PyTorch's ``nn.Linear`` default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from a private
    generator seeded with ``seed``. Scaling every weight by c > 0 scales the logits by c^(number of layers).
    """
    widths = tuple(widths)
    if len(widths) < 2:
        raise ValueError(f"widths needs at least an input and an output width, got {widths}")
    for width in widths:
        check_positive_int(width, "each width")
    generator = torch.Generator().manual_seed(int(seed))
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        linear = nn.Linear(n_in, n_out, bias=False)
        with torch.no_grad():
            bound = 1 / math.sqrt(n_in)
            linear.weight.uniform_(-bound, bound, generator=generator)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@dataclass(frozen=True)
class GrokkingLog:
    """Metrics of one training run, one entry per logged epoch (epoch 0 = before training).

    Accuracies are fractions; ``train_loss`` is the training objective; ``weight_norm`` the L2 norm of all
    weights; ``nlm_cosine`` that of the raw training gradient (before any projection; NaN if that gradient is
    exactly zero); ``collapse_fraction`` the float32 softmax collapse fraction of the training set.
    ``train_logits`` maps the epochs requested in ``logits_at`` to the float32 training logits at that epoch.
    """

    epoch: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    train_loss: np.ndarray
    weight_norm: np.ndarray
    nlm_cosine: np.ndarray
    collapse_fraction: np.ndarray
    train_logits: dict[int, torch.Tensor] = field(default_factory=dict)

    def at(self, name: str, epoch: int) -> float:
        """Value of metric ``name`` at a logged ``epoch``."""
        hits = np.flatnonzero(self.epoch == epoch)
        if not hits.size:
            raise ValueError(f"epoch {epoch} was not logged; logged epochs are {self.epoch.tolist()}")
        return float(getattr(self, name)[hits[0]])


def train_grokking(
    model: nn.Module,
    data: DataSplit,
    *,
    epochs: int,
    weight_decay: float,
    lr: float = 0.01,
    loss: str = "softmax",
    perp_grad: bool = False,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-25,
    log_every: int = 25,
    logits_at: Sequence[int] = (),
) -> GrokkingLog:
    """Full-batch AdamW training of ``model`` in place; returns a :class:`GrokkingLog`.

    ``weight_decay`` has no default on purpose: torch's AdamW would otherwise add 0.01, a regulariser. ``loss``
    is "softmax" (float32 cross-entropy) or "stablemax" (float64 StableMax cross-entropy); ``perp_grad`` applies
    :func:`perp_grad_` to the gradients before each step. Metrics are logged at epoch 0, every ``log_every``
    epochs and at the end.
    """
    epochs = check_positive_int(epochs, "epochs")
    log_every = check_positive_int(log_every, "log_every")
    if loss not in ACTIVATIONS:
        raise ValueError(f"loss must be one of {ACTIVATIONS}, got {loss!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if any(not 0 <= epoch <= epochs for epoch in logits_at):
        raise ValueError(f"logits_at must lie in [0, {epochs}], got {list(logits_at)}")
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    objective = softmax_cross_entropy if loss == "softmax" else stablemax_cross_entropy
    objective_dtype = torch.float32 if loss == "softmax" else torch.float64
    rows, saved_logits = [], {}
    model.train()
    for epoch in range(epochs + 1):
        optimizer.zero_grad()
        logits = model(data.X_train)
        train_loss = objective(logits, data.y_train, dtype=objective_dtype)
        train_loss.backward()
        if epoch in logits_at:
            saved_logits[epoch] = logits.detach().clone()
        if epoch % log_every == 0 or epoch == epochs:
            with torch.no_grad():
                test_acc = (model(data.X_test).argmax(1) == data.y_test).double().mean().item()
                weight_norm = torch.sqrt(sum((param.double() ** 2).sum() for param in params)).item()
            rows.append((
                epoch,
                (logits.argmax(1) == data.y_train).double().mean().item(),
                test_acc,
                train_loss.item(),
                weight_norm,
                _nlm_cosine_or_nan(params),
                softmax_collapse_fraction(logits.detach(), data.y_train, dtype=torch.float32),
            ))
        if epoch == epochs:
            break
        if perp_grad:
            perp_grad_(params)
        optimizer.step()
    columns = np.array(rows, dtype=np.float64).T
    return GrokkingLog(columns[0].astype(np.int64), *columns[1:], train_logits=saved_logits)
