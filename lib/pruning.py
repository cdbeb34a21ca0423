"""Unstructured pruning: binary masks over weight matrices, magnitude and random pruning, iterative magnitude
pruning with rewinding to the initial weights (the lottery-ticket procedure), and the pieces of sparse training:
Erdős–Rényi-Kernel layer densities, random masks at given densities, the cubic gradual-magnitude-pruning schedule,
and prune-and-regrow topology updates with a cosine death rate.

A mask set is a ``dict`` from a parameter name (as in ``model.named_parameters()``) to a bool tensor of the
same shape: True keeps the entry, False prunes it. Only weight matrices are pruned (parameters with two or
more dimensions); biases are never pruned. The pruning functions never change their inputs: they return new
masks; a pruned entry stays pruned except in :func:`prune_and_regrow`, which also grows entries back.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Masks = dict[str, torch.Tensor]


def prunable_weights(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The model's weight matrices (parameters with ``ndim >= 2``) by name, except the names in ``ignore``."""
    ignore = set(ignore)
    params = dict(model.named_parameters())
    unknown = ignore - set(params)
    if unknown:
        raise ValueError(f"ignore names parameters the model does not have: {sorted(unknown)}")
    return {name: p for name, p in params.items() if p.ndim >= 2 and name not in ignore}


def full_masks(model: nn.Module, ignore: Iterable[str] = ()) -> Masks:
    """All-True masks over the prunable weights of ``model`` (see :func:`prunable_weights`)."""
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in prunable_weights(model, ignore).items()}


def trained_weights(model: nn.Module, masks: Masks) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters named in ``masks`` (the scores a magnitude pruner looks at)."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().clone() for name in masks}


def check_masks(model: nn.Module, masks: Masks) -> None:
    """Raise if ``masks`` is not a dict of bool tensors matching parameters of ``model`` by name and shape."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict of bool tensors, got {type(masks).__name__}")
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"masks has a key {name!r} that is not a parameter of the model")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"masks[{name!r}] must be a bool tensor")
        if mask.shape != params[name].shape:
            raise ValueError(
                f"masks[{name!r}] has shape {tuple(mask.shape)}, parameter has {tuple(params[name].shape)}"
            )


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero, in place, every parameter entry whose mask is False."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def mask_gradients(model: nn.Module, masks: Masks) -> None:
    """Zero, in place, the gradient of every parameter entry whose mask is False (if it has a gradient)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask)


def remaining_fraction(masks: Masks, names: Iterable[str] | None = None) -> float:
    """Fraction of entries kept, pooled over the masks named in ``names`` (default: all of them)."""
    names = list(masks) if names is None else list(names)
    if not names:
        raise ValueError("names must select at least one mask")
    missing = [n for n in names if n not in masks]
    if missing:
        raise ValueError(f"names not in masks: {missing}")
    kept = sum(int(masks[n].sum()) for n in names)
    total = sum(masks[n].numel() for n in names)
    return kept / total


def _check_rate(name: str, rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(rate).__name__}")
    if not 0 <= rate < 1:
        raise ValueError(f"{name} must be in [0, 1), got {rate}")
    return float(rate)


def _layer_rates(masks: Masks, rates: Mapping[str, float] | float) -> dict[str, float]:
    if isinstance(rates, Mapping):
        if set(rates) != set(masks):
            raise ValueError(f"rates must have the keys of masks, {sorted(masks)}; got {sorted(rates)}")
        return {name: _check_rate(f"rates[{name!r}]", rates[name]) for name in masks}
    rate = _check_rate("rates", rates)
    return dict.fromkeys(masks, rate)


def _check_weights(weights: Mapping[str, torch.Tensor], masks: Masks) -> None:
    for name, mask in masks.items():
        if mask.dtype != torch.bool:
            raise TypeError(f"masks[{name!r}] must be a bool tensor")
        if name not in weights:
            raise ValueError(f"weights has no entry for the mask {name!r}")
        if weights[name].shape != mask.shape:
            raise ValueError(
                f"weights[{name!r}] has shape {tuple(weights[name].shape)}, its mask {tuple(mask.shape)}"
            )


def _smallest_positions(scores: torch.Tensor, candidates: torch.Tensor, n: int) -> torch.Tensor:
    """Flat indices of the ``n`` candidate entries of smallest score, ties broken by the lowest flat index.

    Linear time: the ``n``-th smallest candidate score is found with ``kthvalue``; every candidate below it is
    taken, and the remaining places go to the candidates equal to it in index order (what a stable sort gives).
    """
    candidate_index = candidates.reshape(-1).nonzero().reshape(-1)
    if n == 0:
        return candidate_index[:0]
    candidate_scores = scores.detach().reshape(-1)[candidate_index]
    threshold = torch.kthvalue(candidate_scores, n).values
    below = candidate_index[candidate_scores < threshold]
    tied = candidate_index[candidate_scores == threshold][: n - len(below)]
    return torch.cat([below, tied])


def prune_smallest_scores(scores: torch.Tensor, mask: torch.Tensor, n_remove: int) -> torch.Tensor:
    """A copy of ``mask`` without its ``n_remove`` kept entries of smallest score (ties: lowest flat index).

    The building block of every score-based pruner: magnitude pruning scores ``|w|``, random pruning uniform
    noise, and saliency methods their own scores. Entries already pruned are never chosen.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError("mask must be a bool tensor")
    if scores.shape != mask.shape:
        raise ValueError(f"scores has shape {tuple(scores.shape)}, mask {tuple(mask.shape)}")
    n_kept = int(mask.sum())
    if isinstance(n_remove, bool) or not isinstance(n_remove, int) or not 0 <= n_remove <= n_kept:
        raise ValueError(f"n_remove must be an int in [0, {n_kept}] (the kept entries), got {n_remove!r}")
    new_mask = mask.clone()
    new_mask.view(-1)[_smallest_positions(scores, mask, n_remove)] = False
    return new_mask


def magnitude_prune_layerwise(
    weights: Mapping[str, torch.Tensor], masks: Masks, rates: Mapping[str, float] | float
) -> Masks:
    """Per layer, remove the fraction ``rate`` of the still-kept weights with the smallest ``|w|``.

    Layer ``l`` with ``n_l`` kept entries loses ``round(rate_l * n_l)`` of them (Python's round-half-to-even,
    as ``torch.nn.utils.prune``), those of smallest magnitude, ties broken by the lowest flat index.
    ``rates`` is one rate for every layer or a ``{name: rate}`` dict over the keys of ``masks``. After ``k``
    rounds a layer of ``n`` weights keeps ``round((1 - rate)^k * n)`` entries up to one per round.
    """
    _check_weights(weights, masks)
    layer_rates = _layer_rates(masks, rates)
    new_masks = {}
    for name, mask in masks.items():
        n_remove = round(layer_rates[name] * int(mask.sum()))
        new_masks[name] = prune_smallest_scores(weights[name].abs(), mask, n_remove)
    return new_masks


def magnitude_prune_global(
    weights: Mapping[str, torch.Tensor], masks: Masks, rate: float, ignore: Iterable[str] = ()
) -> Masks:
    """Remove the ``ceil(rate * n)`` smallest-magnitude weights among the ``n`` still kept in all pruned layers.

    One threshold is shared by the layers of ``masks`` not named in ``ignore`` (ignored layers are returned
    unchanged and do not count in ``n``; a network's output layer is often ignored), so layers with many small
    weights lose more. Ties are broken by layer order, then flat index.
    """
    _check_weights(weights, masks)
    rate = _check_rate("rate", rate)
    ignore = set(ignore)
    unknown = ignore - set(masks)
    if unknown:
        raise ValueError(f"ignore names layers that masks does not have: {sorted(unknown)}")
    pruned = [name for name in masks if name not in ignore]
    if not pruned:
        raise ValueError("ignore leaves no layer to prune")
    n_remove = math.ceil(rate * sum(int(masks[name].sum()) for name in pruned))
    return _remove_smallest_globally(weights, masks, pruned, n_remove)


def _remove_smallest_globally(
    weights: Mapping[str, torch.Tensor], masks: Masks, pruned: list[str], n_remove: int
) -> Masks:
    """Remove the ``n_remove`` kept entries of smallest ``|w|`` pooled over the layers ``pruned``."""
    scores = torch.cat([weights[name].detach().abs().reshape(-1) for name in pruned])
    joint_mask = torch.cat([masks[name].reshape(-1) for name in pruned])
    joint_new = prune_smallest_scores(scores, joint_mask, n_remove)
    new_masks = {name: mask.clone() for name, mask in masks.items()}
    offset = 0
    for name in pruned:
        size = masks[name].numel()
        new_masks[name] = joint_new[offset : offset + size].reshape(masks[name].shape)
        offset += size
    return new_masks


def random_prune_layerwise(masks: Masks, rates: Mapping[str, float] | float, seed: int) -> Masks:
    """Per layer, remove ``round(rate * n_kept)`` of the kept entries chosen uniformly at random.

    Starting from :func:`full_masks`, this draws a random mask with an exact number of kept weights per layer.
    """
    layer_rates = _layer_rates(masks, rates)
    generator = torch.Generator().manual_seed(int(seed))
    new_masks = {}
    for name, mask in masks.items():
        n_remove = round(layer_rates[name] * int(mask.sum()))
        scores = torch.rand(mask.shape, generator=generator)
        new_masks[name] = prune_smallest_scores(scores, mask, n_remove)
    return new_masks


def _copy(masks: Masks) -> Masks:
    return {name: mask.clone() for name, mask in masks.items()}


@dataclass(frozen=True)
class ImpRound:
    """One round of iterative magnitude pruning.

    ``masks`` are the masks trained in this round (round 0: dense), ``remaining`` the fraction of the masked
    weights they keep, ``ticket`` what the training function returned for the rewound network (mask applied
    to the original initial weights), ``reinit`` what it returned for the random-reinitialisation control
    with the same masks (None in rounds without a control).
    """

    round: int
    masks: Masks
    remaining: float
    ticket: Any
    reinit: Any | None = None


def iterative_magnitude_pruning(
    initial_model: nn.Module,
    train: Callable[[nn.Module, Masks], Any],
    *,
    rounds: int,
    prune: Callable[[Mapping[str, torch.Tensor], Masks], Masks],
    masks: Masks | None = None,
    reinit: Callable[[int], nn.Module] | None = None,
    reinit_rounds: Iterable[int] = (),
) -> list[ImpRound]:
    """Find winning tickets: train, prune, rewind to the initial weights, repeat (Frankle & Carbin, Alg. 1).

    Round ``k`` (``k = 0 .. rounds``) rewinds to theta_0: it copies ``initial_model`` (weights *and*
    biases), zeroes the entries that ``m_k`` prunes and trains the copy with ``train(model, m_k)``, which must
    train in place, keep masked entries at zero (as :func:`lib.mlp.train_classifier` does) and may return
    anything, e.g. a history. Then ``m_{k+1} = prune(trained weights, m_k)``. ``initial_model`` is never
    modified.

    Parameters
    ----------
    rounds:
        Number of pruning steps; ``rounds + 1`` tickets are trained and ``rounds + 1`` records returned.
    prune:
        ``(weights, masks) -> new masks``, e.g. ``functools.partial(magnitude_prune_layerwise, rates=...)``.
    masks:
        Masks of round 0 (default: :func:`full_masks` of ``initial_model``, i.e. every weight matrix).
    reinit, reinit_rounds:
        Control: in each round ``k`` listed in ``reinit_rounds``, ``reinit(k)`` must return a freshly
        initialised model of the same architecture, which is trained with the same masks ``m_k`` (the ticket's
        sparsity pattern without its initial values).
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an int >= 0, got {rounds!r}")
    reinit_rounds = set(reinit_rounds)
    bad = [k for k in reinit_rounds if not (isinstance(k, int) and 0 <= k <= rounds)]
    if bad:
        raise ValueError(f"reinit_rounds must be ints in [0, {rounds}], got {sorted(bad, key=str)}")
    if reinit_rounds and reinit is None:
        raise ValueError("reinit_rounds needs a reinit function")
    masks = full_masks(initial_model) if masks is None else _copy(masks)
    check_masks(initial_model, masks)

    history = []
    for k in range(rounds + 1):
        ticket_model = copy.deepcopy(initial_model)
        apply_masks(ticket_model, masks)
        ticket_result = train(ticket_model, _copy(masks))
        reinit_result = None
        if k in reinit_rounds:
            control_model = reinit(k)
            check_masks(control_model, masks)
            apply_masks(control_model, masks)
            reinit_result = train(control_model, _copy(masks))
        history.append(ImpRound(k, masks, remaining_fraction(masks), ticket_result, reinit_result))
        if k < rounds:
            masks = prune(trained_weights(ticket_model, masks), masks)
    return history


# --- layerwise densities, schedules and dynamic sparse training


def _check_density(name: str, density: float) -> float:
    if isinstance(density, bool) or not isinstance(density, int | float):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(density).__name__}")
    if not 0 < density <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {density}")
    return float(density)


def erk_densities(
    shapes: Mapping[str, tuple[int, ...]], density: float, *, mode: str = "ERK", power: float = 1.0
) -> dict[str, float]:
    """Per-layer densities of the Erdős–Rényi(-Kernel) rule with an overall density ``density``.

    Layer ``l`` with ``n_l`` weights gets ``density_l = eps * raw_l`` with ``raw_l = (sum(shape) / prod(shape))
    ** power`` ("ERK": every dimension, kernel dimensions included; "ER": the first two dimensions only, the same
    for fully connected layers). ``eps`` is chosen so that ``sum_l density_l n_l = density * sum_l n_l`` exactly;
    a layer whose density would exceed 1 is made dense and ``eps`` is solved again for the others. Small layers
    with many inputs and outputs per weight (such as an output layer) stay denser than large square ones.
    """
    if mode not in ("ERK", "ER"):
        raise ValueError(f"mode must be 'ERK' or 'ER', got {mode!r}")
    density = _check_density("density", density)
    if not shapes:
        raise ValueError("shapes must name at least one layer")
    for name, shape in shapes.items():
        if len(shape) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shapes[{name!r}] must be a tuple of >= 2 positive ints, got {shape!r}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    used = {name: shape if mode == "ERK" else shape[:2] for name, shape in shapes.items()}
    raw = {name: (sum(dims) / math.prod(dims)) ** power for name, dims in used.items()}
    budget = density * sum(sizes.values())
    dense: set[str] = set()
    while True:
        sparse = [name for name in shapes if name not in dense]
        eps = (budget - sum(sizes[name] for name in dense)) / sum(raw[name] * sizes[name] for name in sparse)
        too_dense = [name for name in sparse if eps * raw[name] > 1]
        if not too_dense:
            return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}
        dense.add(max(too_dense, key=lambda name: raw[name]))


def random_masks_at_densities(masks: Masks, densities: Mapping[str, float], seed: int) -> Masks:
    """Random masks keeping exactly ``round(density_l * n_l)`` uniformly chosen entries of each layer.

    ``masks`` gives the layers and shapes (normally :func:`full_masks`, which must keep every entry) and
    ``densities`` a density in (0, 1] for each of its keys, e.g. from :func:`erk_densities`.
    """
    if set(densities) != set(masks):
        raise ValueError(f"densities must have the keys of masks, {sorted(masks)}; got {sorted(densities)}")
    if not all(bool(mask.all()) for mask in masks.values()):
        raise ValueError("masks must keep every entry (start from full_masks)")
    generator = torch.Generator().manual_seed(int(seed))
    new_masks = {}
    for name, mask in masks.items():
        n_keep = round(_check_density(f"densities[{name!r}]", densities[name]) * mask.numel())
        scores = torch.rand(mask.shape, generator=generator)
        new_masks[name] = prune_smallest_scores(scores, mask, mask.numel() - n_keep)
    return new_masks


def gmp_density(step: float, *, d_init: float, d_final: float, t_start: float, t_end: float) -> float:
    """Density of gradual magnitude pruning (Zhu & Gupta's cubic schedule) at ``step``.

    ``d_init`` until ``t_start``, then ``d_final + (d_init - d_final) (1 - progress)^3`` with ``progress =
    (step - t_start) / (t_end - t_start)``, and ``d_final`` from ``t_end`` on: fast pruning early, when the
    network can recover, and slow near the end.
    """
    d_init, d_final = _check_density("d_init", d_init), _check_density("d_final", d_final)
    if d_final > d_init:
        raise ValueError(f"d_final must be <= d_init, got d_final={d_final}, d_init={d_init}")
    if not t_end > t_start:
        raise ValueError(f"t_end must be > t_start, got t_start={t_start}, t_end={t_end}")
    progress = min(max((step - t_start) / (t_end - t_start), 0.0), 1.0)
    return d_final + (d_init - d_final) * (1.0 - progress) ** 3


def cosine_death_rate(step: float, *, total: float, r0: float = 0.5, eta_min: float = 0.005) -> float:
    """Fraction of the active weights that a prune-and-regrow step replaces, annealed from ``r0`` to ``eta_min``.

    ``eta_min + (r0 - eta_min) (1 + cos(pi * step / total)) / 2`` for ``0 <= step <= total``, ``eta_min`` after.
    """
    if not total > 0:
        raise ValueError(f"total must be > 0, got {total}")
    if not 0 <= eta_min <= r0 < 1:
        raise ValueError(f"need 0 <= eta_min <= r0 < 1, got eta_min={eta_min}, r0={r0}")
    fraction = min(max(step / total, 0.0), 1.0)
    return eta_min + (r0 - eta_min) * (1.0 + math.cos(math.pi * fraction)) / 2.0


def prune_to_density_global(weights: Mapping[str, torch.Tensor], masks: Masks, density: float) -> Masks:
    """Keep the ``round(density * n)`` largest-magnitude entries among all ``n`` entries of the masked layers.

    One threshold over every layer (a gradual-magnitude-pruning step); entries already pruned stay pruned, so
    if fewer than that many are kept the masks are returned unchanged.
    """
    _check_weights(weights, masks)
    density = _check_density("density", density)
    total = sum(mask.numel() for mask in masks.values())
    kept = sum(int(mask.sum()) for mask in masks.values())
    return _remove_smallest_globally(weights, masks, list(masks), max(kept - round(density * total), 0))


def _largest_inactive(scores: torch.Tensor, allowed: torch.Tensor, n_grow: int) -> torch.Tensor:
    """Bool tensor marking the ``n_grow`` allowed entries of largest ``|score|`` (ties: lowest flat index)."""
    grown = torch.zeros(scores.numel(), dtype=torch.bool)
    grown[_smallest_positions(-scores.detach().abs(), allowed, n_grow)] = True
    return grown.reshape(scores.shape)


def prune_and_regrow(
    weights: Mapping[str, torch.Tensor],
    masks: Masks,
    gradients: Mapping[str, torch.Tensor],
    death_rate: float,
) -> Masks:
    """One zero-cost topology update of dynamic sparse training (RigL / GraNet's regeneration step).

    Per layer, remove the ``ceil(death_rate * n_active)`` active weights of smallest ``|w|`` ("magnitude
    death"), then activate as many inactive positions with the largest ``|gradient|`` of the dense gradient
    ("gradient growth"); the positions just removed are not eligible. The number of active weights per layer
    is unchanged. Regrown weights must start at zero (they are zero already if the model was kept masked), so
    the network's function does not change at the moment of regrowth.
    """
    _check_weights(weights, masks)
    _check_weights(gradients, masks)
    if isinstance(death_rate, bool) or not isinstance(death_rate, int | float) or not 0 <= death_rate < 1:
        raise ValueError(f"death_rate must be a float in [0, 1), got {death_rate!r}")
    new_masks = {}
    for name, mask in masks.items():
        n_active = int(mask.sum())
        n_change = min(math.ceil(death_rate * n_active), mask.numel() - n_active)
        survivors = prune_smallest_scores(weights[name].abs(), mask, n_change)
        grown = _largest_inactive(gradients[name], ~mask, n_change)
        new_masks[name] = survivors | grown
    return new_masks


def replace_masks(masks: Masks, new_masks: Masks) -> None:
    """Copy ``new_masks`` into the tensors of ``masks`` in place (a training loop that reads them sees it)."""
    if set(new_masks) != set(masks):
        raise ValueError(f"new_masks must have the keys of masks, {sorted(masks)}; got {sorted(new_masks)}")
    for name, mask in masks.items():
        if new_masks[name].shape != mask.shape or new_masks[name].dtype != torch.bool:
            raise ValueError(f"new_masks[{name!r}] must be a bool tensor of shape {tuple(mask.shape)}")
        mask.copy_(new_masks[name])


def mask_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, masks: Masks) -> None:
    """Zero, in place, the optimiser's per-entry state (momentum, Adam moments) of every pruned entry.

    Call it after a topology update, so that a regrown weight starts from a clean state instead of the stale
    momentum of an earlier life.
    """
    check_masks(model, masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        for value in optimizer.state.get(params[name], {}).values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                value.mul_(mask)
