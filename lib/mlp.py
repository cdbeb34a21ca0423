"""A tiny multilayer perceptron, its training loop and its evaluation, shared by the book's chapters.

The trainer is deliberately plain: minibatches by tensor indexing in a seeded order, Adam or SGD, and
optional binary masks that keep pruned weights at exactly zero (their gradients are zeroed before every step
and the weights are multiplied by the mask after it). Two hooks, one between the backward pass and the step
(it sees the dense gradient) and one after the step, let a chapter freeze weights, prune and regrow, or change
the masks or the learning rate without copying the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lib.data import DataSplit
from lib.pruning import Masks, apply_masks, check_masks, mask_gradients

INITS = ("torch_default", "glorot_normal", "kaiming_normal")
OPTIMIZERS = ("adam", "sgd")
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


class MLP(nn.Module):
    """Fully connected ReLU network ``widths[0] -> widths[1] -> ... -> widths[-1]`` (logits, no softmax).

    Parameters are named ``layers.<i>.weight`` (shape out x in) and ``layers.<i>.bias``. With two widths the
    model is a linear (softmax-regression) classifier.

    Parameters
    ----------
    widths:
        Layer widths, input first, number of classes last, e.g. ``(64, 128, 64, 10)``.
    init:
        ``"torch_default"`` (PyTorch's ``nn.Linear`` initialisation: weights Kaiming-uniform with
        a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
        ``"glorot_normal"`` (weights N(0, 2/(fan_in+fan_out)), biases 0) or ``"kaiming_normal"``
        (weights N(0, 2/fan_in), biases 0).
    seed:
        Seed of a private ``torch.Generator`` that draws the initial parameters; the global RNG is not used.
        With ``init="torch_default"`` the parameters equal those of ``nn.Linear`` layers created in order
        after ``torch.manual_seed(seed)``.
    """

    def __init__(self, widths: Sequence[int], *, init: str = "torch_default", seed: int = 0) -> None:
        super().__init__()
        widths = tuple(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least an input and an output width, got {widths}")
        if any(isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 1 for w in widths):
            raise ValueError(f"widths must be positive ints, got {widths}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.widths = widths
        self.layers = nn.ModuleList(
            nn.Linear(n_in, n_out, device="meta") for n_in, n_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.layers = self.layers.to_empty(device="cpu")
        initialise(self, init=init, seed=seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


def initialise(model: MLP, *, init: str, seed: int) -> None:
    """Draw all parameters of ``model`` afresh with the scheme ``init`` (see :class:`MLP`) from ``seed``."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for layer in model.layers:
            fan_in = layer.weight.shape[1]
            if init == "torch_default":
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
            elif init == "glorot_normal":
                nn.init.xavier_normal_(layer.weight, generator=generator)
                nn.init.zeros_(layer.bias)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(layer.bias)


@dataclass(frozen=True)
class History:
    """Metrics recorded during training, one entry per evaluation.

    ``step[i]`` is the number of optimiser steps taken before evaluation ``i`` (0 = before training). Losses
    are mean cross-entropies, accuracies fractions in [0, 1]; validation entries are NaN without a validation
    split, training entries NaN unless they were requested.
    """

    step: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray

    def metric(self, name: str) -> np.ndarray:
        """The recorded values of metric ``name`` (one of ``METRICS``)."""
        if name not in METRICS:
            raise ValueError(f"name must be one of {METRICS}, got {name!r}")
        return getattr(self, name)

    def final(self, name: str) -> float:
        """Value of metric ``name`` at the last evaluation (the end of training)."""
        return float(self.metric(name)[-1])

    def early_stop_step(self) -> int:
        """Step of the minimum validation loss (the first if tied): the paper's early-stopping iteration."""
        if np.isnan(self.val_loss).all():
            raise ValueError("early_stop_step needs a validation split; this history has none")
        return int(self.step[int(np.nanargmin(self.val_loss))])

    def steps_to_reach(self, name: str, threshold: float) -> int | None:
        """First recorded step at which metric ``name`` reaches ``threshold``, or None if it never does.

        Losses reach it from above (value <= threshold), accuracies from below (value >= threshold).
        """
        values = self.metric(name)
        reached = values <= threshold if name.endswith("loss") else values >= threshold
        hits = np.flatnonzero(reached)
        return int(self.step[hits[0]]) if hits.size else None


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy (fraction correct; ties go to the lowest class) and mean cross-entropy of a classifier."""
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"X must be (n, d) and y (n,) with the same n, got {tuple(X.shape)} and {tuple(y.shape)}"
        )
    return _evaluate_parts(model, X, y, [X.shape[0]])[0]


def _evaluate_parts(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, sizes: list[int]
) -> list[tuple[float, float]]:
    """(accuracy, loss) of consecutive parts of ``X, y`` of the given sizes, from one forward pass."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        logits = model(X)
        losses = F.cross_entropy(logits, y, reduction="none").double()
        correct = (logits.argmax(dim=1) == y).double()
    model.train(was_training)
    parts = zip(correct.split(sizes), losses.split(sizes), strict=True)
    return [(part_correct.mean().item(), part_loss.mean().item()) for part_correct, part_loss in parts]


def minibatch_order(n: int, batch_size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """Index tensors of every minibatch: each epoch is a fresh seeded permutation of ``range(n)`` cut into
    ``ceil(n / batch_size)`` consecutive batches (the last one may be smaller)."""
    for name, value in (("n", n), ("batch_size", batch_size), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    generator = torch.Generator().manual_seed(int(seed))
    batches: list[torch.Tensor] = []
    for _ in range(epochs):
        batches.extend(torch.randperm(n, generator=generator).split(batch_size))
    return batches


def make_optimizer(
    params, *, optimizer: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (default betas and eps) or ``torch.optim.SGD`` over ``params``.

    Both use PyTorch's fused CPU kernels (the same update rule, about a quarter faster on tiny models).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if optimizer == "adam":
        if momentum:
            raise ValueError("momentum applies to optimizer='sgd' only; Adam uses its default betas")
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)


StepHook = Callable[[int, nn.Module, torch.optim.Optimizer], None]


def train_classifier(
    model: nn.Module,
    data: DataSplit,
    *,
    epochs: int,
    lr: float,
    optimizer: str = "adam",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    masks: Masks | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    eval_every: int = 1,
    record_train: bool = False,
    on_gradients: StepHook | None = None,
    on_step: StepHook | None = None,
) -> History:
    """Train ``model`` in place with minibatch cross-entropy and return the recorded :class:`History`.

    Parameters
    ----------
    epochs, batch_size, seed:
        ``epochs * ceil(n_train / batch_size)`` steps over minibatches in the order of :func:`minibatch_order`
        with ``seed`` (the seed fixes the data order only; the initial weights belong to the model). A
        ``batch_size`` of at least ``n_train`` gives full-batch training.
    lr, optimizer, momentum, weight_decay:
        See :func:`make_optimizer`.
    masks:
        Optional ``{parameter name: bool tensor}``; entries that are False are set to 0 before training, their
        gradients are zeroed before every optimiser step and the weights are multiplied by the mask after it,
        so they stay exactly 0. The tensors are read at every step: a hook may change them in place.
    lr_schedule:
        Optional ``step -> factor``; the learning rate of step ``t`` (0-based) is ``lr * lr_schedule(t)``.
    eval_every, record_train:
        Evaluate on the validation and test sets (and, if ``record_train``, on the whole training set;
        otherwise the training metrics are NaN) before training, every ``eval_every`` steps and after the
        last step.
    on_gradients:
        Optional ``hook(step, model, optimizer)`` called after the backward pass of step ``step`` (1-based),
        before the masked gradients are zeroed and before the optimiser step: it sees the dense gradient
        (e.g. for gradient-based regrowth) and may change it (e.g. zero the gradient of frozen weights).
    on_step:
        Optional ``hook(step, model, optimizer)`` called after each step (and after the masks are applied),
        with ``step`` = steps taken so far.
    """
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be a positive int, got {eval_every!r}")
    if masks is not None:
        check_masks(model, masks)
    batches = minibatch_order(data.X_train.shape[0], batch_size, epochs, seed)
    opt = make_optimizer(
        model.parameters(), optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    if masks is not None:
        apply_masks(model, masks)

    eval_sets = [(data.X_train, data.y_train)] if record_train else []
    if data.has_validation:
        eval_sets.append((data.X_val, data.y_val))
    eval_sets.append((data.X_test, data.y_test))
    X_eval = torch.cat([X for X, _ in eval_sets])
    y_eval = torch.cat([y for _, y in eval_sets])
    eval_sizes = [len(y) for _, y in eval_sets]
    records: list[tuple[float, ...]] = []

    def record(step: int) -> None:
        parts = _evaluate_parts(model, X_eval, y_eval, eval_sizes)
        metrics = [value for accuracy, loss in parts for value in (loss, accuracy)]
        nan_pair = [math.nan, math.nan]
        train = metrics[:2] if record_train else nan_pair
        val = metrics[-4:-2] if data.has_validation else nan_pair
        records.append((step, *train, *val, *metrics[-2:]))

    record(0)
    model.train()
    for step, idx in enumerate(batches, start=1):
        if lr_schedule is not None:
            for group in opt.param_groups:
                group["lr"] = lr * lr_schedule(step - 1)
        opt.zero_grad()
        F.cross_entropy(model(data.X_train[idx]), data.y_train[idx]).backward()
        if on_gradients is not None:
            on_gradients(step, model, opt)
        if masks is not None:
            mask_gradients(model, masks)
        opt.step()
        if masks is not None:
            apply_masks(model, masks)
        if on_step is not None:
            on_step(step, model, opt)
        if step % eval_every == 0 or step == len(batches):
            record(step)

    columns = np.array(records, dtype=np.float64).T
    return History(columns[0].astype(np.int64), *columns[1:])
