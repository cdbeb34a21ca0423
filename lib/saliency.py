"""Data-driven saliency scores for pruning at initialisation: SNIP and GraSP, per weight, for any torch module.

Both scores look at the cross-entropy loss ``L(theta)`` of a model on one batch ``(X, y)``, before training:

- **SNIP** (Lee et al. 2019, *connection sensitivity*): ``|theta_i * dL/dtheta_i|``, the first-order change of
  the loss when weight ``i`` is removed. Large scores are kept.
- **GraSP** (Wang et al. 2020, *gradient signal preservation*): ``S_i = -theta_i * (H g)_i``, where ``g`` is the
  gradient of ``L`` and ``H`` its Hessian (both with respect to the scored parameters). Removing a set of weights
  moves them by ``-theta_i``, so ``sum_i S_i`` over the removed weights is the first-order change of the gradient
  norm ``g^T g / 2`` (whose gradient is ``H g``). Weights with the *largest* ``S`` are removed (their removal
  keeps the gradient flow highest). The Hessian-gradient product comes from double back-propagation:
  ``H g = d/dtheta (g(theta) . stop_gradient(g))``. Following the official GraSP code, the logits are divided by
  a temperature ``T`` (200) before the softmax.

The scores are computed on a private copy of the model in its current mode (training mode at initialisation, so
BatchNorm uses the batch statistics): the model's parameters and running statistics are left untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from lib.pruning import prunable_weights
from lib.validation import check_positive_int

Scores = dict[str, torch.Tensor]


def _check_batch(model: object, X: object, y: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("X and y must be torch tensors")
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"X must be (n, d) and y (n,) with the same n >= 1, got {tuple(X.shape)} and {tuple(y.shape)}")
    if y.dtype != torch.int64:
        raise TypeError(f"y must hold int64 class labels, got {y.dtype}")


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"temperature must be a positive number, got {type(temperature).__name__}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def _scored_parameters(model: nn.Module, names: Iterable[str] | None) -> dict[str, nn.Parameter]:
    """The parameters to score: the weight matrices by default, else exactly ``names``."""
    if names is None:
        return prunable_weights(model)
    params = dict(model.named_parameters())
    names = list(names)
    unknown = [n for n in names if n not in params]
    if unknown or not names:
        raise ValueError(f"names must be a non-empty list of parameter names of the model; unknown: {unknown}")
    return {n: params[n] for n in names}


def batch_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of ``model(X) / temperature`` against ``y`` (a differentiable scalar)."""
    _check_batch(model, X, y)
    return F.cross_entropy(model(X) / _check_temperature(temperature), y)


def snip_scores(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, names: Iterable[str] | None = None) -> Scores:
    """SNIP connection sensitivity ``|theta * dL/dtheta|`` of every entry of the scored parameters.

    ``names`` selects the parameters (default: all weight matrices, as in :func:`lib.pruning.prunable_weights`).
    Returns ``{name: non-negative tensor of the parameter's shape}``.
    """
    _check_batch(model, X, y)
    work = copy.deepcopy(model)
    params = _scored_parameters(work, names)
    grads = torch.autograd.grad(batch_loss(work, X, y), list(params.values()), materialize_grads=True)
    return {name: (p.detach() * g).abs() for (name, p), g in zip(params.items(), grads, strict=True)}


def hessian_gradient_product(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    names: Iterable[str] | None = None,
    temperature: float = 1.0,
) -> Scores:
    """``H g`` restricted to the scored parameters, by double back-propagation.

    ``g`` is the gradient and ``H`` the Hessian (with respect to the scored parameters, the others held fixed)
    of :func:`batch_loss` at the given ``temperature``.
    """
    _check_batch(model, X, y)
    work = copy.deepcopy(model)
    params = list(_scored_parameters(work, names).items())
    tensors = [p for _, p in params]
    grads = torch.autograd.grad(
        batch_loss(work, X, y, temperature=temperature), tensors, create_graph=True, materialize_grads=True
    )
    flow = sum((g * g.detach()).sum() for g in grads)
    if not flow.requires_grad:  # the gradient does not depend on the scored parameters: H g = 0
        return {name: torch.zeros_like(p.detach()) for name, p in params}
    products = torch.autograd.grad(flow, tensors, materialize_grads=True)
    return {name: hg.detach() for (name, _), hg in zip(params, products, strict=True)}


def grasp_scores(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    names: Iterable[str] | None = None,
    temperature: float = 200.0,
) -> Scores:
    """GraSP scores ``S = -theta * (H g)`` per entry (signed; the largest are the first to remove).

    ``names`` as in :func:`snip_scores`; ``temperature`` divides the logits (200 in the official code).
    """
    products = hessian_gradient_product(model, X, y, names=names, temperature=temperature)
    params = dict(model.named_parameters())
    return {name: -params[name].detach() * hg for name, hg in products.items()}


def balanced_batch(X: torch.Tensor, y: torch.Tensor, per_class: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A scoring batch with ``per_class`` examples of every class present in ``y``, drawn without replacement
    (seeded), in class order (GraSP scores on 25 examples per class)."""
    _check_batch(nn.Identity(), X, y)
    per_class = check_positive_int(per_class, "per_class")
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for label in torch.unique(y):
        members = torch.nonzero(y == label).reshape(-1)
        if members.numel() < per_class:
            raise ValueError(f"per_class = {per_class} exceeds the {members.numel()} examples of class {int(label)}")
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    idx = torch.cat(chosen)
    return X[idx], y[idx]
