"""Structured pruning of MLPs: remove whole hidden units and build the narrower network.

Structured pruning of a fully connected network deletes hidden units (the MLP analogue of a convolutional
network's channels or filters): unit ``j`` of hidden layer ``l`` is row ``j`` of ``layers.l.weight`` and of its
bias, entry ``j`` of the BatchNorm parameters and running statistics of that layer, and column ``j`` of
``layers.(l+1).weight``. Two rules choose which units survive:

- **L1-norm pruning** (Li et al., a predefined target width): in each hidden layer keep the units whose
  incoming weight row has the largest L1 norm.
- **Network slimming** (Liu et al. 2017, an automatically found width): train with an L1 penalty
  ``s * sum |gamma|`` on the BatchNorm scales ``gamma``, then remove, across all layers at once, the units whose
  ``|gamma|`` is at or below one global quantile.

Either rule gives, per hidden layer, the sorted indices of the kept units; :func:`extract_submodel` copies
those units into a new, narrower :class:`BatchNormMLP`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lib.validation import check_positive_int

KeptUnits = list[torch.Tensor]


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    widths = tuple(widths)
    if len(widths) < 3:
        raise ValueError(f"widths needs an input, at least one hidden and an output width, got {widths}")
    for w in widths:
        check_positive_int(w, "every entry of widths")
    return tuple(int(w) for w in widths)


class BatchNormMLP(nn.Module):
    """ReLU MLP with BatchNorm after every hidden linear layer: ``Linear -> BatchNorm1d -> ReLU``, then a
    linear output layer (logits).

    Parameters are named ``layers.<i>.weight`` / ``layers.<i>.bias`` (linear layers, shape out x in) and
    ``norms.<i>.weight`` (the scales gamma) / ``norms.<i>.bias`` (the shifts beta) for hidden layer ``i``.

    Parameters
    ----------
    widths:
        Layer widths, input first, number of classes last, e.g. ``(64, 256, 256, 10)``.
    seed:
        Seed of a private ``torch.Generator`` for the linear layers (PyTorch's default ``nn.Linear``
        initialisation); BatchNorm starts at gamma = 1, beta = 0.
    """

    def __init__(self, widths: Sequence[int], *, seed: int = 0) -> None:
        super().__init__()
        self.widths = _check_widths(widths)
        pairs = list(zip(self.widths[:-1], self.widths[1:], strict=True))
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out, device="meta") for n_in, n_out in pairs)
        self.layers = self.layers.to_empty(device="cpu")
        self.norms = nn.ModuleList(nn.BatchNorm1d(n_out) for _, n_out in pairs[:-1])
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for layer in self.layers:
                bound = 1.0 / math.sqrt(layer.weight.shape[1])
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        """Widths of the hidden layers (the prunable ones)."""
        return self.widths[1:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, norm in zip(self.layers[:-1], self.norms, strict=True):
            x = F.relu(norm(layer(x)))
        return self.layers[-1](x)


def _check_model(model: object) -> BatchNormMLP:
    if not isinstance(model, BatchNormMLP):
        raise TypeError(f"model must be a BatchNormMLP, got {type(model).__name__}")
    return model


def _check_fraction(name: str, value: object, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        raise ValueError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), got {value}")
    return float(value)


def top_k_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted indices of the ``k`` largest entries of the 1-d ``scores`` (ties: the lower index wins)."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 1:
        raise ValueError("scores must be a 1-d tensor")
    k = check_positive_int(k, "k")
    if k > scores.numel():
        raise ValueError(f"k must be at most len(scores) = {scores.numel()}, got {k}")
    order = torch.sort(-scores.detach(), stable=True).indices
    return torch.sort(order[:k]).values


def unit_l1_norms(model: BatchNormMLP) -> list[torch.Tensor]:
    """Per hidden layer, the L1 norm of each unit's incoming weights (row sums of ``|layers.l.weight|``)."""
    model = _check_model(model)
    return [layer.weight.detach().abs().sum(dim=1) for layer in model.layers[:-1]]


def n_kept_units(width: int, prune_fraction: float) -> int:
    """Units a layer of ``width`` keeps when ``round(prune_fraction * width)`` are removed (at least one)."""
    width = check_positive_int(width, "width")
    prune_fraction = _check_fraction("prune_fraction", prune_fraction)
    return max(1, width - round(prune_fraction * width))


def l1_norm_kept_units(model: BatchNormMLP, prune_fraction: float | Sequence[float]) -> KeptUnits:
    """L1-norm pruning (predefined widths): in hidden layer ``l`` keep the ``n_kept_units(width_l, f_l)``
    units with the largest incoming-weight L1 norm. ``prune_fraction`` is one ``f`` for every hidden layer
    or one per hidden layer."""
    norms = unit_l1_norms(model)
    if isinstance(prune_fraction, Sequence) and not isinstance(prune_fraction, str):
        if len(prune_fraction) != len(norms):
            raise ValueError(f"prune_fraction needs {len(norms)} entries (one per hidden layer)")
        fractions = list(prune_fraction)
    else:
        fractions = [prune_fraction] * len(norms)
    return [top_k_indices(n, n_kept_units(n.numel(), f)) for n, f in zip(norms, fractions, strict=True)]


def bn_scales(model: BatchNormMLP) -> list[torch.Tensor]:
    """Detached copies of the BatchNorm scales gamma, one tensor per hidden layer."""
    model = _check_model(model)
    return [norm.weight.detach().clone() for norm in model.norms]


def add_slimming_gradient(model: BatchNormMLP, s: float) -> None:
    """Add ``s * sign(gamma)``, the (sub)gradient of the penalty ``s * sum |gamma|``, to the gradient of
    every BatchNorm scale, in place (network slimming's sparsity term; call it after ``backward``)."""
    model = _check_model(model)
    if isinstance(s, bool) or not isinstance(s, int | float) or not s >= 0:
        raise ValueError(f"s must be a float >= 0, got {s!r}")
    for norm in model.norms:
        if norm.weight.grad is None:
            raise ValueError("the BatchNorm scales have no gradient yet: call backward() first")
        norm.weight.grad.add_(torch.sign(norm.weight.detach()), alpha=float(s))


def slimming_hook(s: float) -> Callable[[int, nn.Module, torch.optim.Optimizer], None]:
    """An ``on_gradients`` hook for :func:`lib.mlp.train_classifier` that applies :func:`add_slimming_gradient`."""
    if isinstance(s, bool) or not isinstance(s, int | float) or not s >= 0:
        raise ValueError(f"s must be a float >= 0, got {s!r}")

    def hook(step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        add_slimming_gradient(model, s)

    return hook


def global_scale_threshold(scales: Sequence[torch.Tensor], percent: float) -> float:
    """The ``percent`` quantile of all ``|gamma|`` pooled over the layers, as the inverse of the empirical CDF:
    the smallest value ``t`` with at least ``percent * n`` of the ``n`` magnitudes at or below it."""
    percent = _check_fraction("percent", percent, allow_zero=False)
    if not scales:
        raise ValueError("scales must hold at least one tensor")
    pooled = torch.cat([g.detach().abs().reshape(-1) for g in scales]).double()
    ordered = torch.sort(pooled).values
    return float(ordered[math.ceil(percent * ordered.numel()) - 1])


def slimming_kept_units(model: BatchNormMLP, percent: float) -> KeptUnits:
    """Network-slimming pruning: remove every unit whose ``|gamma|`` is at or below
    :func:`global_scale_threshold` (one threshold for all layers, so layers get different widths). A layer
    that would lose every unit keeps its unit of largest ``|gamma|``."""
    scales = bn_scales(model)
    threshold = global_scale_threshold(scales, percent)
    kept = []
    for gamma in scales:
        above = torch.nonzero(gamma.abs() > threshold).reshape(-1)
        kept.append(above if above.numel() else top_k_indices(gamma.abs(), 1))
    return kept


def _check_kept(model: BatchNormMLP, kept: KeptUnits) -> KeptUnits:
    model = _check_model(model)
    widths = model.hidden_widths
    if not isinstance(kept, Sequence) or len(kept) != len(widths):
        raise ValueError(f"kept must hold one index tensor per hidden layer ({len(widths)})")
    checked = []
    for layer, (idx, width) in enumerate(zip(kept, widths, strict=True)):
        idx = torch.as_tensor(idx)
        if idx.ndim != 1 or idx.numel() == 0 or idx.dtype in (torch.bool, torch.float32, torch.float64):
            raise ValueError(f"kept[{layer}] must be a non-empty 1-d integer tensor")
        if not (torch.all(idx[1:] > idx[:-1]) and 0 <= int(idx[0]) and int(idx[-1]) < width):
            raise ValueError(f"kept[{layer}] must be strictly increasing indices in [0, {width})")
        checked.append(idx.long())
    return checked


def extract_submodel(model: BatchNormMLP, kept: KeptUnits) -> BatchNormMLP:
    """The narrower :class:`BatchNormMLP` made of the units ``kept[l]`` of each hidden layer ``l``.

    It inherits the surviving units' incoming rows and biases, their BatchNorm parameters and running
    statistics, and the matching columns of the next layer; ``model`` is not changed.
    """
    kept = _check_kept(model, kept)
    dtype = model.layers[0].weight.dtype
    small = BatchNormMLP((model.widths[0], *[len(k) for k in kept], model.widths[-1])).to(dtype)
    rows = [*kept, torch.arange(model.widths[-1])]
    cols = [torch.arange(model.widths[0]), *kept]
    with torch.no_grad():
        for big_layer, small_layer, r, c in zip(model.layers, small.layers, rows, cols, strict=True):
            small_layer.weight.copy_(big_layer.weight[r][:, c])
            small_layer.bias.copy_(big_layer.bias[r])
        for big_norm, small_norm, r in zip(model.norms, small.norms, kept, strict=True):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(small_norm, name).copy_(getattr(big_norm, name)[r])
            small_norm.num_batches_tracked.copy_(big_norm.num_batches_tracked)
    small.train(model.training)
    return small


def zero_removed_units(model: BatchNormMLP, kept: KeptUnits) -> BatchNormMLP:
    """A copy of ``model`` in which every unit not in ``kept`` is cut off: its incoming row, bias, gamma,
    beta and outgoing column are zero, so it can influence nothing downstream (the masked big model)."""
    kept = _check_kept(model, kept)
    masked = BatchNormMLP(model.widths).to(model.layers[0].weight.dtype)
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer_idx, idx in enumerate(kept):
            removed = torch.ones(model.hidden_widths[layer_idx], dtype=torch.bool)
            removed[idx] = False
            masked.layers[layer_idx].weight[removed] = 0
            masked.layers[layer_idx].bias[removed] = 0
            masked.norms[layer_idx].weight[removed] = 0
            masked.norms[layer_idx].bias[removed] = 0
            masked.layers[layer_idx + 1].weight[:, removed] = 0
    masked.train(model.training)
    return masked


def mlp_flops(widths: Sequence[int], *, batchnorm: bool = True) -> int:
    """Multiply-adds per example of an MLP: ``sum in * out`` over the linear layers, plus one per hidden unit
    for the BatchNorm scaling (when ``batchnorm``)."""
    widths = _check_widths(widths)
    linear = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
    return linear + (sum(widths[1:-1]) if batchnorm else 0)


def scratch_b_epochs(base_epochs: int, base_flops: int, pruned_flops: int, *, cap: float = 2.0) -> int:
    """Epochs of Scratch-B: ``base_epochs`` times the FLOPs saving ``base_flops / pruned_flops``, with the
    factor capped at ``cap`` (the paper caps it at 2), rounded to the nearest epoch."""
    base_epochs = check_positive_int(base_epochs, "base_epochs")
    base_flops = check_positive_int(base_flops, "base_flops")
    pruned_flops = check_positive_int(pruned_flops, "pruned_flops")
    if pruned_flops > base_flops:
        raise ValueError(f"pruned_flops ({pruned_flops}) must not exceed base_flops ({base_flops})")
    if isinstance(cap, bool) or not isinstance(cap, int | float) or not cap >= 1:
        raise ValueError(f"cap must be a number >= 1, got {cap!r}")
    return round(base_epochs * min(cap, base_flops / pruned_flops))


def step_decay(total_steps: int, *, milestones: Sequence[float] = (0.5, 0.75), factor: float = 0.1):
    """A ``step -> learning-rate factor`` schedule: 1, multiplied by ``factor`` once step ``t`` (0-based)
    reaches each ``milestone * total_steps`` (the paper's divide-by-10 at 50 % and 75 % of training)."""
    total_steps = check_positive_int(total_steps, "total_steps")
    if not all(0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
        raise ValueError(f"milestones must be increasing fractions in (0, 1), got {milestones}")
    if not 0 < factor <= 1:
        raise ValueError(f"factor must be in (0, 1], got {factor}")
    boundaries = [round(m * total_steps) for m in milestones]

    def schedule(step: int) -> float:
        return factor ** sum(step >= b for b in boundaries)

    return schedule
