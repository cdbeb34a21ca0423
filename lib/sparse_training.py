"""Static sparse training from a random mask: layerwise density rules, random masks over a model, a
fan-in-aware initial-weight scaling for masked layers, a per-epoch cosine learning-rate schedule, a
trainer that keeps a fixed mask (a thin wrapper around :func:`lib.mlp.train_classifier`), and the same SGD
training for several MLPs at once, stacked into batched tensors (:func:`train_static_sparse_stacked`).

The mask conventions are those of :mod:`lib.pruning`: a dict from a parameter name to a bool tensor of the same
shape, True = kept. Only weight matrices are masked; biases stay dense.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lib.data import DataSplit
from lib.mlp import MLP, History, make_optimizer, minibatch_order, train_classifier
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


def train_static_sparse_stacked(
    models: Sequence[MLP],
    data: DataSplit,
    masks: Sequence[Masks],
    *,
    seeds: Sequence[int],
    epochs: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    lr_schedule: Callable[[int], float] | None = None,
    scale_init: str | None = "layer",
) -> np.ndarray:
    """Train several MLPs of the same widths side by side, as :func:`train_static_sparse` with SGD would train
    each of them, and return their final test accuracies (fractions, one per model).

    Model ``k`` has the fixed masks ``masks[k]`` and sees the minibatches of
    :func:`lib.mlp.minibatch_order` with ``seeds[k]``; all models share ``epochs``, ``batch_size``, the SGD
    hyper-parameters (``torch.optim.SGD`` semantics: weight decay added to the masked gradient, momentum
    buffer started from the first gradient) and ``lr_schedule``. The parameters of all models are stacked
    into one tensor per layer, so each step is one batched forward and backward pass instead of one per
    model: much faster for many small models, and equal to separate training up to float rounding. The
    trained parameters are copied back into ``models``.
    """
    models, masks, seeds = list(models), list(masks), list(seeds)
    if not models or not all(isinstance(model, MLP) for model in models):
        raise TypeError("models must be a non-empty sequence of lib.mlp.MLP")
    if any(model.widths != models[0].widths for model in models):
        raise ValueError(f"models must all have the same widths, got {sorted({m.widths for m in models})}")
    if len(masks) != len(models) or len(seeds) != len(models):
        raise ValueError(f"masks and seeds need one entry per model ({len(models)}), got {len(masks)} and "
                         f"{len(seeds)}")
    if scale_init is not None and scale_init not in SCALE_GRANULARITIES:
        raise ValueError(f"scale_init must be one of {SCALE_GRANULARITIES} or None, got {scale_init!r}")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    for model, model_masks in zip(models, masks, strict=True):
        check_masks(model, model_masks)
        if scale_init is not None:
            scale_masked_init(model, model_masks, per=scale_init)

    def as_stored(tensor: torch.Tensor) -> torch.Tensor:
        # Weight matrices are stored transposed (in x out), so that the batched matmuls of the forward pass and
        # of the weight gradient read and write them without strided copies.
        return tensor.T if tensor.ndim == 2 else tensor

    names = [name for name, _ in models[0].named_parameters()]
    stacked = {
        name: torch.stack([as_stored(dict(m.named_parameters())[name].detach()) for m in models]).contiguous()
        for name in names
    }
    keep = {  # float 0/1 masks (multiplying by a bool tensor would cast it at every step)
        name: torch.stack([as_stored(m[name]).to(stacked[name].dtype) if name in m
                           else torch.ones_like(stacked[name][0]) for m in masks])
        for name in names if any(name in m for m in masks)
    }
    for name in names:
        stacked[name].mul_(keep.get(name, 1.0))
        stacked[name].grad = torch.zeros_like(stacked[name])
    n_layers = len(models[0].layers)
    weights = [stacked[f"layers.{i}.weight"] for i in range(n_layers)]
    biases = [stacked[f"layers.{i}.bias"] for i in range(n_layers)]
    # The same fused SGD kernel as lib.mlp.train_classifier: the update is elementwise, so stacking the models
    # does not change it. Masking the gradient is enough to keep pruned weights at 0 (their weight decay and
    # momentum stay 0); train_classifier also multiplies the weights by the mask, which changes nothing then.
    opt = make_optimizer(stacked.values(), optimizer="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay)

    def forward(X: torch.Tensor, outputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of every model for its inputs ``X[k]``; the layer outputs go into ``outputs`` if given."""
        for i, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
            out = None if outputs is None else outputs[i]
            X = torch.baddbmm(bias.unsqueeze(1), X, weight, out=out)
            if i < n_layers - 1:
                X = X.relu_()
        return X

    # The backward pass is written out, with the same batched matmuls autograd would run, into buffers
    # allocated once per batch size (layer outputs, their gradients, where the ReLUs are off): with autograd,
    # every step allocates and frees megabytes of activations and gradients, and the page faults that follow
    # add seconds of system time.
    buffers: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = {}

    def batch_buffers(n_batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        if n_batch not in buffers:
            shapes = [(len(models), n_batch, bias.shape[1]) for bias in biases]
            dtype = biases[0].dtype
            buffers[n_batch] = (
                [torch.empty(shape, dtype=dtype) for shape in shapes],
                [torch.empty(shape, dtype=dtype) for shape in shapes[:-1]],
                [torch.empty(shape, dtype=torch.bool) for shape in shapes[:-1]],
            )
        return buffers[n_batch]

    orders = [minibatch_order(data.X_train.shape[0], batch_size, epochs, seed) for seed in seeds]
    for step, idx in enumerate(zip(*orders, strict=True)):
        idx = torch.stack(idx)
        if lr_schedule is not None:
            for group in opt.param_groups:
                group["lr"] = lr * lr_schedule(step)
        X = data.X_train[idx]
        outputs, grad_outputs, inactive = batch_buffers(idx.shape[1])
        logits = forward(X, outputs).detach().requires_grad_(True)
        loss = F.cross_entropy(logits.flatten(0, 1), data.y_train[idx].flatten(), reduction="sum")
        (loss / idx.shape[1]).backward()  # the sum over models of each model's mean loss
        grad = logits.grad
        for i in reversed(range(n_layers)):
            layer_input = X if i == 0 else outputs[i - 1]
            torch.bmm(layer_input.transpose(1, 2), grad, out=weights[i].grad)
            torch.sum(grad, dim=1, out=biases[i].grad)
            if i > 0:  # back through layer i's matmul and the ReLU before it
                grad = torch.bmm(grad, weights[i].transpose(1, 2), out=grad_outputs[i - 1])
                grad.masked_fill_(torch.le(outputs[i - 1], 0, out=inactive[i - 1]), 0.0)
        for name, mask in keep.items():
            stacked[name].grad.mul_(mask)
        opt.step()

    with torch.no_grad():
        X_test = data.X_test.expand(len(models), *data.X_test.shape)
        correct = (forward(X_test).argmax(dim=2) == data.y_test).double().mean(dim=1)
        for k, model in enumerate(models):
            for name, param in model.named_parameters():
                param.copy_(as_stored(stacked[name][k]))
    return correct.numpy()
