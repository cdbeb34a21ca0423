"""Unstructured pruning: binary masks over weight matrices, magnitude and random pruning, and iterative
magnitude pruning with rewinding to the initial weights (the lottery-ticket procedure).

A mask set is a ``dict`` from a parameter name (as in ``model.named_parameters()``) to a bool tensor of the
same shape: True keeps the entry, False prunes it. Only weight matrices are pruned (parameters with two or
more dimensions); biases are never pruned. The pruning functions never change their inputs: they return new
masks, and a pruned entry stays pruned (masks only lose entries).
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
    by_score = torch.sort(scores.detach().reshape(-1), stable=True).indices
    kept_first = torch.sort((~mask.reshape(-1)[by_score]).to(torch.uint8), stable=True).indices
    order = by_score[kept_first]
    new_mask = mask.clone()
    new_mask.view(-1)[order[:n_remove]] = False
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
    scores = torch.cat([weights[name].detach().abs().reshape(-1) for name in pruned])
    joint_mask = torch.cat([masks[name].reshape(-1) for name in pruned])
    n_remove = math.ceil(rate * int(joint_mask.sum()))
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
