"""Layer pruning of a residual MLP: remove whole residual blocks (or inner units) and keep the initial weights.

The network is ``x -> h_0 = relu(stem(x))``, then ``h_{b+1} = h_b + f_b(h_b)`` for blocks ``b = 0 .. B-1`` with
the residual branch ``f_b = fc2 . relu . norm . fc1`` (Linear ``width -> hidden_b``, BatchNorm, ReLU, Linear
``hidden_b -> width``), then ``logits = head(h_B)``. Because every block adds to a running state of fixed width,
a block can be deleted and the network still composes: a *layer ticket* is the shallower network made of the
kept blocks with their initial weights. A *filter ticket* instead keeps every block but only some of the
``hidden_b`` inner units of each (the structured-pruning analogue of removing a convolution's filters).

Which blocks (units) to keep is decided by an importance per block (unit), highest kept: the sum of per-weight
SNIP scores, minus the sum of GraSP scores (GraSP removes the largest), the L1 norm of the weights (on a trained
network: the lottery-ticket criterion, followed by rewinding to the initial weights) or a random number.
Parameter names follow ``stem.*``, ``blocks.<b>.fc1.*``, ``blocks.<b>.norm.*``, ``blocks.<b>.fc2.*``, ``head.*``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lib.saliency import grasp_scores, snip_scores
from lib.validation import check_positive_int

CRITERIA = ("snip", "grasp", "l1", "random")
DATA_CRITERIA = ("snip", "grasp")
_BLOCK_NAME = re.compile(r"^blocks\.(\d+)\.")


class ResidualBlock(nn.Module):
    """``h + fc2(relu(norm(fc1(h))))``: ``fc1`` maps width -> hidden, BatchNorm over hidden, ``fc2`` maps back."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.relu(self.norm(self.fc1(h))))


class ResidualMLP(nn.Module):
    """Stem, ``n_blocks`` residual blocks and a linear head (see the module docstring).

    Parameters
    ----------
    d_in, width, n_blocks, n_classes:
        Input features, width of the residual stream, number of blocks (0 allowed), number of classes.
    hidden:
        Inner width of every block (default ``width``), or one inner width per block.
    seed:
        Seed of a private ``torch.Generator``; the linear layers get PyTorch's default initialisation (weights
        and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), drawn in the order stem, blocks (fc1, fc2), head;
        BatchNorm starts at scale 1 and shift 0.
    """

    def __init__(
        self,
        d_in: int,
        width: int,
        n_blocks: int,
        n_classes: int,
        *,
        hidden: int | Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        d_in, width = check_positive_int(d_in, "d_in"), check_positive_int(width, "width")
        n_blocks = check_positive_int(n_blocks, "n_blocks", minimum=0)
        n_classes = check_positive_int(n_classes, "n_classes")
        if hidden is None:
            hidden = width
        if isinstance(hidden, Sequence):
            if len(hidden) != n_blocks:
                raise ValueError(f"hidden needs one inner width per block ({n_blocks}), got {len(hidden)}")
            hidden_widths = tuple(check_positive_int(h, "every entry of hidden") for h in hidden)
        else:
            hidden_widths = (check_positive_int(hidden, "hidden"),) * n_blocks
        self.d_in, self.width, self.n_classes = d_in, width, n_classes
        self.hidden_widths = hidden_widths
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, h) for h in hidden_widths)
        self.head = nn.Linear(width, n_classes)
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for layer in self.linear_layers():
                bound = 1.0 / math.sqrt(layer.weight.shape[1])
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    @property
    def n_blocks(self) -> int:
        """Number of residual blocks."""
        return len(self.blocks)

    def linear_layers(self) -> list[nn.Linear]:
        """The linear layers in forward order: stem, ``fc1, fc2`` of every block, head."""
        inner = [layer for block in self.blocks for layer in (block.fc1, block.fc2)]
        return [self.stem, *inner, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def _check_model(model: object) -> ResidualMLP:
    if not isinstance(model, ResidualMLP):
        raise TypeError(f"model must be a ResidualMLP, got {type(model).__name__}")
    return model


def _check_indices(name: str, indices: object, size: int, *, allow_empty: bool) -> list[int]:
    """``indices`` as a list of strictly increasing ints in ``[0, size)``."""
    if isinstance(indices, torch.Tensor | np.ndarray):
        indices = indices.tolist()
    if not isinstance(indices, Sequence) or isinstance(indices, str):
        raise TypeError(f"{name} must be a sequence of ints, got {type(indices).__name__}")
    if any(isinstance(i, bool) or not isinstance(i, int | np.integer) for i in indices):
        raise TypeError(f"{name} must hold ints, got {list(indices)}")
    values = [int(i) for i in indices]
    if not allow_empty and not values:
        raise ValueError(f"{name} must not be empty")
    increasing = all(b > a for a, b in zip(values[:-1], values[1:], strict=True))
    if not increasing or (values and not 0 <= values[0] <= values[-1] < size):
        raise ValueError(f"{name} must be strictly increasing indices in [0, {size}), got {values}")
    return values


def _copy_state(target: nn.Module, source: nn.Module, *, training: bool) -> None:
    target.load_state_dict(source.state_dict())
    target.train(training)


def drop_blocks(model: ResidualMLP, keep: Sequence[int]) -> ResidualMLP:
    """The shallower network made of the blocks ``keep`` (sorted indices) of ``model``.

    The new network has ``model``'s stem and head and, in order, copies of the kept blocks (weights, BatchNorm
    parameters and running statistics); ``model`` is not changed. Applied to a network at initialisation this
    is a layer ticket.
    """
    model = _check_model(model)
    keep = _check_indices("keep", keep, model.n_blocks, allow_empty=True)
    hidden = [model.hidden_widths[b] for b in keep]
    small = ResidualMLP(model.d_in, model.width, len(keep), model.n_classes, hidden=hidden)
    small.to(model.stem.weight.dtype)
    _copy_state(small.stem, model.stem, training=model.training)
    _copy_state(small.head, model.head, training=model.training)
    for new_block, b in zip(small.blocks, keep, strict=True):
        _copy_state(new_block, model.blocks[b], training=model.training)
    small.train(model.training)
    return small


def shrink_blocks(model: ResidualMLP, kept_units: Sequence[Sequence[int]]) -> ResidualMLP:
    """The network whose block ``b`` keeps only the inner units ``kept_units[b]`` (sorted indices) of ``model``.

    Unit ``j`` of block ``b`` is row ``j`` of ``fc1`` (and its bias), entry ``j`` of the BatchNorm parameters and
    statistics, and column ``j`` of ``fc2``; all are copied, as are the stem, the head and ``fc2``'s bias.
    Applied to a network at initialisation this is a filter ticket.
    """
    model = _check_model(model)
    if not isinstance(kept_units, Sequence) or len(kept_units) != model.n_blocks:
        raise ValueError(f"kept_units must hold one index list per block ({model.n_blocks})")
    kept = [
        torch.tensor(_check_indices(f"kept_units[{b}]", units, h, allow_empty=False), dtype=torch.long)
        for b, (units, h) in enumerate(zip(kept_units, model.hidden_widths, strict=True))
    ]
    narrow = ResidualMLP(model.d_in, model.width, model.n_blocks, model.n_classes, hidden=[len(k) for k in kept])
    narrow.to(model.stem.weight.dtype)
    _copy_state(narrow.stem, model.stem, training=model.training)
    _copy_state(narrow.head, model.head, training=model.training)
    with torch.no_grad():
        for big, small, idx in zip(model.blocks, narrow.blocks, kept, strict=True):
            small.fc1.weight.copy_(big.fc1.weight[idx])
            small.fc1.bias.copy_(big.fc1.bias[idx])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(small.norm, name).copy_(getattr(big.norm, name)[idx])
            small.norm.num_batches_tracked.copy_(big.norm.num_batches_tracked)
            small.fc2.weight.copy_(big.fc2.weight[:, idx])
            small.fc2.bias.copy_(big.fc2.bias)
    narrow.train(model.training)
    return narrow


def block_index(name: str) -> int | None:
    """The block a parameter name belongs to (``"blocks.3.fc1.weight"`` -> 3), or None (stem, head)."""
    match = _BLOCK_NAME.match(name)
    return int(match.group(1)) if match else None


def sum_per_block(scores: Mapping[str, torch.Tensor], n_blocks: int) -> np.ndarray:
    """Per block, the sum (float64) of all score entries whose parameter belongs to it; others are ignored."""
    n_blocks = check_positive_int(n_blocks, "n_blocks", minimum=0)
    totals = np.zeros(n_blocks)
    for name, values in scores.items():
        b = block_index(name)
        if b is None:
            continue
        if b >= n_blocks:
            raise ValueError(f"scores names block {b} but n_blocks = {n_blocks}")
        totals[b] += values.double().sum().item()
    return totals


def _check_criterion(criterion: object, X: object, y: object) -> str:
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion in DATA_CRITERIA and (X is None or y is None):
        raise ValueError(f"criterion {criterion!r} needs a batch: pass X and y")
    return str(criterion)


def weight_scores(
    model: ResidualMLP,
    criterion: str,
    X: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    seed: int = 0,
    temperature: float = 200.0,
) -> dict[str, torch.Tensor]:
    """Per-weight importance of every weight matrix of ``model``, higher = keep.

    ``"snip"``: ``|theta g|`` on the batch ``(X, y)``; ``"grasp"``: ``theta (H g)`` at ``temperature`` (minus the
    GraSP score, since GraSP removes the largest scores first); ``"l1"``: ``|theta|``; ``"random"``: uniform(0, 1)
    numbers from ``seed``.
    """
    model = _check_model(model)
    criterion = _check_criterion(criterion, X, y)
    weights = {name: p for name, p in model.named_parameters() if p.ndim >= 2}
    if criterion == "snip":
        return snip_scores(model, X, y)
    if criterion == "grasp":
        return {name: -s for name, s in grasp_scores(model, X, y, temperature=temperature).items()}
    if criterion == "l1":
        return {name: p.detach().abs() for name, p in weights.items()}
    generator = torch.Generator().manual_seed(int(seed))
    return {name: torch.rand(p.shape, generator=generator, dtype=torch.float64) for name, p in weights.items()}


def block_importance(
    model: ResidualMLP,
    criterion: str,
    X: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    seed: int = 0,
    temperature: float = 200.0,
) -> np.ndarray:
    """One importance per block (higher = keep): :func:`weight_scores` summed over the block's weights.

    For ``"random"`` the block importances are ``n_blocks`` uniform numbers from ``seed``.
    """
    model = _check_model(model)
    if _check_criterion(criterion, X, y) == "random":
        return np.random.default_rng(seed).random(model.n_blocks)
    scores = weight_scores(model, criterion, X, y, seed=seed, temperature=temperature)
    return sum_per_block(scores, model.n_blocks)


def blocks_to_keep(importance: Sequence[float] | np.ndarray, n_remove: int) -> list[int]:
    """Sorted indices of the blocks left after removing the ``n_remove`` of lowest importance (ties: the
    later block goes first)."""
    importance = np.asarray(importance, dtype=np.float64)
    if importance.ndim != 1 or not np.all(np.isfinite(importance)):
        raise ValueError("importance must be a 1-d array of finite numbers")
    n_remove = check_positive_int(n_remove, "n_remove", minimum=0)
    if n_remove > importance.size:
        raise ValueError(f"n_remove must be at most the number of blocks ({importance.size}), got {n_remove}")
    order = np.lexsort((-np.arange(importance.size), importance))  # ascending importance, later block first
    return sorted(int(b) for b in order[n_remove:])


def unit_importance(
    model: ResidualMLP,
    criterion: str,
    X: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    seed: int = 0,
    temperature: float = 200.0,
) -> list[np.ndarray]:
    """Per block, one importance per inner unit (higher = keep): :func:`weight_scores` summed over the unit's
    incoming row of ``fc1`` and outgoing column of ``fc2``."""
    model = _check_model(model)
    scores = weight_scores(model, criterion, X, y, seed=seed, temperature=temperature)
    return [
        (
            scores[f"blocks.{b}.fc1.weight"].double().sum(dim=1) + scores[f"blocks.{b}.fc2.weight"].double().sum(dim=0)
        ).numpy()
        for b in range(model.n_blocks)
    ]


def units_to_keep(importance: Sequence[np.ndarray], n_keep: int) -> list[list[int]]:
    """Per block, the sorted indices of the ``n_keep`` units of highest importance (ties: the earlier unit)."""
    n_keep = check_positive_int(n_keep, "n_keep")
    kept = []
    for b, values in enumerate(importance):
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1 or n_keep > values.size:
            raise ValueError(f"importance[{b}] must be 1-d with at least n_keep = {n_keep} entries")
        kept.append(sorted(int(j) for j in np.argsort(-values, kind="stable")[:n_keep]))
    return kept


def multiply_adds(model: ResidualMLP) -> int:
    """Multiply-adds of one forward pass per example in the linear layers:
    ``d_in * width + sum_b 2 * width * hidden_b + width * n_classes`` (BatchNorm, ReLU and additions excluded)."""
    model = _check_model(model)
    return sum(layer.in_features * layer.out_features for layer in model.linear_layers())


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """``(fn(*args, **kwargs), CPU seconds of this process, wall seconds)`` for one call.

    CPU time counts only the work of this process, so it is not inflated when other processes share the cores
    (unlike wall time); it does include the work of all of this process's threads.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.process_time() - cpu_start, time.perf_counter() - wall_start
