"""Static sparse training from a random mask: layerwise density rules, random masks over a model, a
fan-in-aware initial-weight scaling for masked layers, a per-epoch cosine learning-rate schedule, and a
trainer that keeps a fixed mask (a thin wrapper around :func:`lib.mlp.train_classifier`).

The mask conventions are those of :mod:`lib.pruning`: a dict from a parameter name to a bool tensor of the same
shape, True = kept. Only weight matrices are masked; biases stay dense.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lib.data import DataSplit
from lib.mlp import History, train_classifier
from lib.pruning import Masks, check_masks, erk_densities, full_masks, random_masks_at_densities
from lib.validation import check_positive_int

DISTRIBUTIONS = ("ERK", "ER", "uniform")
SCALE_GRANULARITIES = ("layer", "unit")


def layerwise_densities(
    shapes: Mapping[str, tuple[int, ...]], density: float, *, distribution: str = "ERK"
) -> dict[str, float]:
    """Per-layer densities with an overall density ``density`` (kept weights / all weights).

    ``"uniform"`` gives every layer ``density``; ``"ERK"`` and ``"ER"`` are the Erdős–Rényi(-Kernel) rules of
    :func:`lib.pruning.erk_densities` (small layers with many inputs and outputs per weight stay denser).
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if distribution != "uniform":
        return erk_densities(shapes, density, mode=distribution)
    if isinstance(density, bool) or not isinstance(density, int | float):
        raise TypeError(f"density must be a float in (0, 1], got {type(density).__name__}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not shapes:
        raise ValueError("shapes must name at least one layer")
    for name, shape in shapes.items():
        if len(shape) < 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shapes[{name!r}] must be a tuple of >= 2 positive ints, got {shape!r}")
    return dict.fromkeys(shapes, float(density))


def random_sparse_masks(model: nn.Module, density: float, *, distribution: str = "ERK", seed: int) -> Masks:
    """Random masks over the weight matrices of ``model`` at overall density ``density``.

    Each layer keeps exactly ``round(density_l * n_l)`` uniformly chosen entries, with ``density_l`` from
    :func:`layerwise_densities` (``distribution`` is "ERK", "ER" or "uniform"); ``seed`` fixes the draw.
    """
    masks = full_masks(model)
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    return random_masks_at_densities(masks, layerwise_densities(shapes, density, distribution=distribution), seed)


def masked_init_scale(mask: torch.Tensor, *, per: str = "layer") -> torch.Tensor:
    """Factor ``1 / sqrt(kept fan-in / fan-in)`` that restores the dense pre-activation variance of a layer.

    A unit that sums ``k`` of its ``n`` inputs with i.i.d. zero-mean weights has ``k / n`` of the dense
    pre-activation variance; multiplying its weights by ``sqrt(n / k)`` gives it back. ``per="layer"`` uses
    the layer's density ``k / n`` averaged over its units (a scalar tensor: the variance is restored on
    average over the units), ``per="unit"`` each output unit's own ``k / n`` (a tensor of shape
    ``(out, 1, ...)``: restored unit by unit). The fan-in is every dimension after the first (out x in,
    or out x in x kernel). A layer or unit that keeps nothing gets the factor 1.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim < 2:
        raise TypeError("mask must be a bool tensor with >= 2 dimensions (out, in, ...)")
    if per not in SCALE_GRANULARITIES:
        raise ValueError(f"per must be one of {SCALE_GRANULARITIES}, got {per!r}")
    if per == "layer":
        kept_fraction = mask.double().mean()
    else:
        kept_fraction = mask.double().flatten(1).mean(dim=1).reshape(-1, *([1] * (mask.ndim - 1)))
    scale = kept_fraction.rsqrt()
    scale[kept_fraction == 0] = 1.0
    return scale


def scale_masked_init(model: nn.Module, masks: Masks, *, per: str = "layer") -> None:
    """Multiply, in place, each masked weight matrix of ``model`` by :func:`masked_init_scale` of its mask.

    Call it on freshly initialised weights: without it a sparse layer starts with a smaller signal than the
    dense one (by ``sqrt(density)`` per layer), and a deep net without normalisation starts nearly silent.
    With all-True masks the weights are unchanged, bit for bit.
    """
    check_masks(model, masks)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            factor = masked_init_scale(mask, per=per).to(params[name].dtype)
            params[name].mul_(factor)


def cosine_epoch_schedule(*, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate factor ``(1 + cos(pi * e / epochs)) / 2`` at step ``t`` (0-based) of epoch ``e = t //
    steps_per_epoch``: a cosine decay to 0 stepped once per epoch, like ``CosineAnnealingLR(T_max=epochs)``.

    Pass the result as ``lr_schedule=`` of :func:`lib.mlp.train_classifier`.
    """
    epochs = check_positive_int(epochs, "epochs")
    steps_per_epoch = check_positive_int(steps_per_epoch, "steps_per_epoch")

    def factor(step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        epoch = min(step // steps_per_epoch, epochs)
        return (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0

    return factor


def train_static_sparse(
    model: nn.Module,
    data: DataSplit,
    masks: Masks,
    *,
    scale_init: str | None = "layer",
    **train_kwargs: Any,
) -> History:
    """Train ``model`` in place with the fixed sparse connectivity ``masks`` and return its :class:`History`.

    The weights are first rescaled by :func:`scale_masked_init` (granularity ``scale_init``: "layer", "unit",
    or None for no rescaling); then :func:`lib.mlp.train_classifier` zeroes the pruned entries and keeps them
    at zero after every optimiser step. ``train_kwargs`` go to ``train_classifier`` (``epochs``, ``lr``,
    ``optimizer``, ``seed``, ...). With all-True masks this is dense training, bit for bit.
    """
    if "masks" in train_kwargs:
        raise TypeError("pass the masks as the third argument, not as a keyword of train_kwargs")
    if scale_init is not None and scale_init not in SCALE_GRANULARITIES:
        raise ValueError(f"scale_init must be one of {SCALE_GRANULARITIES} or None, got {scale_init!r}")
    check_masks(model, masks)
    if scale_init is not None:
        scale_masked_init(model, masks, per=scale_init)
    return train_classifier(model, data, masks=masks, **train_kwargs)
