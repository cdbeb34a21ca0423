"""Dense-to-sparse and sparse-to-sparse training with neuroregeneration (GraNet), its baselines, and the
pruning-plasticity experiment, as compositions of :mod:`lib.pruning` and :func:`lib.mlp.train_classifier`.

Every ``update_every`` optimiser steps a *topology update* may (1) prune to the density of the cubic gradual
magnitude pruning (GMP) schedule with one global magnitude threshold, then (2) replace a fraction of each layer's
active weights: drop the smallest magnitudes and regrow as many inactive positions where the dense gradient is
largest, at value zero, with a cosine-annealed death rate. The methods differ only in which step they run:

- ``"gmp"``: step 1 only, from the dense network (Zhu & Gupta);
- ``"granet"``: steps 1 and 2, from the dense network (``d_init=1``) or from a random ERK mask (``d_init < 1``);
- ``"rigl"``: step 2 only, at a constant density from a random ERK mask;
- ``"static"``: no update, a fixed random ERK mask.

Random masks start from rescaled weights (:func:`lib.sparse_training.scale_masked_init`), so a sparse layer
begins with the pre-activation variance of the dense one.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lib.data import DataSplit
from lib.mlp import History, train_classifier
from lib.pruning import (
    Masks,
    apply_masks,
    check_masks,
    cosine_death_rate,
    erk_densities,
    full_masks,
    gmp_density,
    magnitude_prune_layerwise,
    mask_optimizer_state,
    prune_and_regrow,
    prune_to_density_global,
    random_masks_at_densities,
    replace_masks,
    trained_weights,
)
from lib.sparse_training import scale_masked_init
from lib.validation import check_positive_int

METHODS = ("gmp", "granet", "rigl", "static")


def _check_fraction(name: str, value: float, *, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    ok = (0 < value <= 1) if low_open else (0 <= value < 1)
    if not ok:
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1)'}, got {value}")
    return float(value)


def update_topology(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    masks: Masks,
    *,
    density: float | None = None,
    death_rate: float | None = None,
) -> int:
    """One topology update, in place on ``masks``, the model's weights and the optimiser's momentum.

    With ``density``: keep the ``round(density * n)`` largest ``|w|`` over all masked layers (a GMP step) and zero
    the rest. With ``death_rate``: then, per layer, drop ``ceil(death_rate * n_active)`` of the smallest active
    ``|w|`` and activate as many inactive positions of largest ``|gradient|`` (the dense gradient in
    ``param.grad``, as seen before the trainer masks it). Regrown weights are zero (every inactive weight is), so
    regrowth leaves the network's outputs unchanged. Finally the momentum of inactive entries is zeroed.
    Returns the number of regrown weights.
    """
    check_masks(model, masks)
    total = sum(mask.numel() for mask in masks.values())
    if density is not None and sum(int(mask.sum()) for mask in masks.values()) > round(density * total):
        replace_masks(masks, prune_to_density_global(trained_weights(model, masks), masks, density))
        apply_masks(model, masks)
    n_regrown = 0
    if death_rate is not None:
        params = dict(model.named_parameters())
        missing = [name for name in masks if params[name].grad is None]
        if missing:
            raise ValueError(f"regrowth needs the gradients of {missing}; call it after a backward pass")
        gradients = {name: params[name].grad for name in masks}
        new_masks = prune_and_regrow(trained_weights(model, masks), masks, gradients, death_rate)
        n_regrown = sum(int((new_masks[name] & ~masks[name]).sum()) for name in masks)
        replace_masks(masks, new_masks)
        apply_masks(model, masks)
    mask_optimizer_state(optimizer, model, masks)
    return n_regrown


@dataclass(frozen=True)
class SparseRun:
    """A sparse training run: its :class:`~lib.mlp.History`, its final masks, and per topology update the
    step, the active weights of each layer (``nnz[i, l]``, layers in the order of ``masks``) and the number of
    weights regrown."""

    history: History
    masks: Masks
    update_steps: np.ndarray
    nnz: np.ndarray
    regrown: np.ndarray

    @property
    def densities(self) -> np.ndarray:
        """Overall density (active / all masked weights) after each update."""
        total = sum(mask.numel() for mask in self.masks.values())
        return self.nnz.sum(axis=1) / total


def random_erk_masks(model: nn.Module, density: float, *, seed: int) -> Masks:
    """Random masks over the model's weight matrices with the ERK layer densities of overall ``density``."""
    masks = full_masks(model)
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    return random_masks_at_densities(masks, erk_densities(shapes, density), seed)


def train_sparse(
    model: nn.Module,
    data: DataSplit,
    *,
    method: str,
    density: float,
    epochs: int,
    batch_size: int = 128,
    d_init: float = 1.0,
    prune_end: float = 0.6,
    update_every: int = 20,
    death_rate: float = 0.5,
    death_rate_min: float = 0.005,
    mask_seed: int = 0,
    **train_kwargs: Any,
) -> SparseRun:
    """Train ``model`` in place with the sparse method ``method`` (see the module docstring) to ``density``.

    Parameters
    ----------
    method:
        "gmp", "granet", "rigl" or "static".
    density:
        Final fraction of the weight-matrix entries kept, in (0, 1].
    d_init:
        Initial density of "gmp" / "granet" (1 = dense-to-sparse); below 1 the start is a random ERK mask.
    prune_end:
        Fraction of the training steps at which the GMP schedule reaches ``density`` (it starts at step 0).
    update_every:
        Steps between topology updates; none happens at the last step.
    death_rate, death_rate_min:
        The regrowth fraction of "granet" / "rigl", annealed by a cosine from ``death_rate`` at step 0 to
        ``death_rate_min`` at the end of training.
    mask_seed:
        Seed of the random ERK mask (ignored when training starts dense).
    train_kwargs:
        Passed to :func:`lib.mlp.train_classifier` (``lr``, ``optimizer``, ``momentum``, ``seed``, ...).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    density = _check_fraction("density", density)
    d_init = _check_fraction("d_init", d_init)
    prune_end = _check_fraction("prune_end", prune_end)
    if method in ("gmp", "granet") and d_init < density:
        raise ValueError(f"d_init must be >= density, got d_init={d_init}, density={density}")
    if not 0 <= death_rate_min <= death_rate < 1:
        raise ValueError(f"need 0 <= death_rate_min <= death_rate < 1, got {death_rate_min}, {death_rate}")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    update_every = check_positive_int(update_every, "update_every")
    if "masks" in train_kwargs or "on_gradients" in train_kwargs:
        raise TypeError("train_sparse sets masks and on_gradients itself")

    total_steps = epochs * math.ceil(data.X_train.shape[0] / batch_size)
    start_density = d_init if method in ("gmp", "granet") else density
    if start_density < 1:
        masks = random_erk_masks(model, start_density, seed=mask_seed)
        scale_masked_init(model, masks)
    else:
        masks = full_masks(model)
    prunes = method in ("gmp", "granet")
    regrows = method in ("granet", "rigl")
    update_steps, nnz, regrown = [], [], []

    def on_gradients(step: int, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if method == "static" or step % update_every or step >= total_steps:
            return
        target = None
        if prunes:
            target = gmp_density(step, d_init=d_init, d_final=density, t_start=0, t_end=prune_end * total_steps)
        rate = None
        if regrows:
            rate = cosine_death_rate(step, total=total_steps, r0=death_rate, eta_min=death_rate_min)
        regrown.append(update_topology(net, optimizer, masks, density=target, death_rate=rate))
        update_steps.append(step)
        nnz.append([int(mask.sum()) for mask in masks.values()])

    history = train_classifier(
        model, data, epochs=epochs, batch_size=batch_size, masks=masks, on_gradients=on_gradients, **train_kwargs
    )
    return SparseRun(
        history=history,
        masks=masks,
        update_steps=np.array(update_steps, dtype=np.int64),
        nnz=np.array(nnz, dtype=np.int64).reshape(len(update_steps), len(masks)),
        regrown=np.array(regrown, dtype=np.int64),
    )


@dataclass(frozen=True)
class PlasticityBranch:
    """A run pruned once at ``prune_epoch`` (with or without regrowth afterwards); ``history`` covers the
    whole run, the dense part included, with steps counted from the start of training; ``masks`` are the
    final masks."""

    prune_epoch: int
    regrow: bool
    history: History
    masks: Masks


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, dict[str, torch.Tensor]]:
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    momentum = {}
    if optimizer is not None:
        for name, param in model.named_parameters():
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                momentum[name] = buffer.clone()
    return {"state": state, "momentum": momentum}


def _joined_history(prefix: History, suffix: History, offset: int) -> History:
    """``prefix`` before step ``offset`` followed by ``suffix`` with its steps shifted by ``offset``."""
    keep = prefix.step < offset
    metrics = [
        np.concatenate([getattr(prefix, field)[keep], getattr(suffix, field)])
        for field in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
    ]
    return History(np.concatenate([prefix.step[keep], suffix.step + offset]), *metrics)


def pruning_plasticity(
    model: nn.Module,
    data: DataSplit,
    *,
    prune_epochs: Iterable[int],
    density: float,
    epochs: int,
    lr: float,
    lr_schedule: Callable[[int], float] | None = None,
    regrow: Iterable[bool] = (False,),
    pruning: str = "layer",
    batch_size: int = 128,
    update_every: int = 20,
    death_rate: float = 0.5,
    death_rate_min: float = 0.005,
    seed: int = 0,
    **train_kwargs: Any,
) -> tuple[History, list[PlasticityBranch]]:
    """Pruning plasticity: train a copy of ``model`` densely, and branch off at each epoch of ``prune_epochs``.

    A branch takes the dense weights and momentum at the start of its prune epoch, prunes every weight matrix
    to ``density`` by magnitude (``pruning="layer"``: layer by layer, ``round(density * n_l)`` kept;
    ``"global"``: one threshold over all layers), and trains on to ``epochs`` with the rest of the same
    learning-rate schedule (``lr * lr_schedule(step)``, steps counted from the start). With ``regrow=True`` it
    also runs a prune-and-regrow update every ``update_every`` steps, with GraNet's death rate: a cosine over the
    whole run, from ``death_rate`` at step 0 to ``death_rate_min`` at the end. The branch's
    minibatches are drawn afresh with ``seed`` (as if the rest of training were a new run). ``regrow`` lists
    the variants to run per prune epoch. ``model`` itself is not changed.

    Returns the dense run's history and the branches, ordered by prune epoch and then by ``regrow``.
    """
    density = _check_fraction("density", density)
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    update_every = check_positive_int(update_every, "update_every")
    prune_epochs = sorted(set(prune_epochs))
    if not prune_epochs or any(
        isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < epochs for e in prune_epochs
    ):
        raise ValueError(f"prune_epochs must be non-empty ints in [0, {epochs}), got {prune_epochs}")
    if pruning not in ("layer", "global"):
        raise ValueError(f"pruning must be 'layer' or 'global', got {pruning!r}")
    regrow = list(regrow)
    if not regrow or any(not isinstance(r, bool) for r in regrow):
        raise ValueError(f"regrow must be a non-empty list of bools, got {regrow}")
    if not 0 <= death_rate_min <= death_rate < 1:
        raise ValueError(f"need 0 <= death_rate_min <= death_rate < 1, got {death_rate_min}, {death_rate}")
    if "masks" in train_kwargs or "on_gradients" in train_kwargs or "on_step" in train_kwargs:
        raise TypeError("pruning_plasticity sets masks and the hooks itself")
    steps_per_epoch = math.ceil(data.X_train.shape[0] / batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = lr_schedule if lr_schedule is not None else (lambda step: 1.0)
    common = dict(lr=lr, batch_size=batch_size, seed=seed, **train_kwargs)

    dense_model = copy.deepcopy(model)
    snapshots = {0: _snapshot(dense_model, None)} if 0 in prune_epochs else {}

    def save(step: int, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step % steps_per_epoch == 0 and step // steps_per_epoch in prune_epochs:
            snapshots[step // steps_per_epoch] = _snapshot(net, optimizer)

    dense = train_classifier(dense_model, data, epochs=epochs, lr_schedule=schedule, on_step=save, **common)

    branches = []
    for prune_epoch in prune_epochs:
        offset = prune_epoch * steps_per_epoch
        for with_regrowth in regrow:
            history, masks = _train_branch(
                model, data, snapshots[prune_epoch], offset=offset, epochs_left=epochs - prune_epoch,
                density=density, pruning=pruning, schedule=schedule, regrow=with_regrowth,
                update_every=update_every, death_rates=(death_rate, death_rate_min), total_steps=total_steps,
                common=common,
            )
            joined = _joined_history(dense, history, offset)
            branches.append(PlasticityBranch(prune_epoch, with_regrowth, joined, masks))
    return dense, branches


def _train_branch(
    model: nn.Module,
    data: DataSplit,
    snapshot: dict[str, dict[str, torch.Tensor]],
    *,
    offset: int,
    epochs_left: int,
    density: float,
    pruning: str,
    schedule: Callable[[int], float],
    regrow: bool,
    update_every: int,
    death_rates: tuple[float, float],
    total_steps: int,
    common: dict[str, Any],
) -> tuple[History, Masks]:
    """Prune the snapshot's weights to ``density`` and train the pruned network for ``epochs_left`` epochs."""
    branch = copy.deepcopy(model)
    branch.load_state_dict(snapshot["state"])
    everything = full_masks(branch)
    weights = trained_weights(branch, everything)
    if pruning == "layer":
        masks = magnitude_prune_layerwise(weights, everything, rates=1.0 - density)
    else:
        masks = prune_to_density_global(weights, everything, density)
    params = dict(branch.named_parameters())

    def on_gradients(step: int, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step == 1:
            for name, buffer in snapshot["momentum"].items():
                optimizer.state[params[name]]["momentum_buffer"] = buffer.clone()
            mask_optimizer_state(optimizer, net, masks)
        if regrow and step % update_every == 0 and step + offset < total_steps:
            rate = cosine_death_rate(step + offset, total=total_steps, r0=death_rates[0], eta_min=death_rates[1])
            update_topology(net, optimizer, masks, death_rate=rate)

    history = train_classifier(
        branch, data, epochs=epochs_left, masks=masks, lr_schedule=lambda step: schedule(step + offset),
        on_gradients=on_gradients, **common,
    )
    return history, masks
