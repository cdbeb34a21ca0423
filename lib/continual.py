"""Task-incremental continual learning by parameter isolation with (dynamic) sparse subnetworks.

A multi-head MLP learns a sequence of tasks (here: pairs of digit classes). Task ``t`` trains only the weights
of its own sparse mask ``m_t``, drawn at random over the shared body and grown and pruned during training by
dynamic sparse training (DST); the weights that an earlier task uses (the union of ``m_0 .. m_{t-1}``) may be
read through ``m_t`` but are frozen, and every task has its own output rows and its own biases. Evaluating
task ``s`` applies ``m_s`` to the stored weights and selects the head of task ``s``, so no later task can
change its predictions: backward transfer is exactly zero.

Masks follow :mod:`lib.pruning` (a dict from a parameter name to a bool tensor, True = active). The topology
update is :func:`lib.pruning.prune_and_regrow` (magnitude death, growth by the largest score) with the growth
scores chosen here: the dense gradient, uniform noise (random growth) or an Adam-style running average of the
dense gradient (momentum growth).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lib.data import DataSplit
from lib.mlp import MLP, train_classifier
from lib.pruning import (
    Masks,
    cosine_death_rate,
    erk_densities,
    full_masks,
    mask_optimizer_state,
    prune_and_regrow,
    random_masks_at_densities,
    replace_masks,
)
from lib.sparse_training import masked_init_scale
from lib.validation import check_positive_int

DISTRIBUTIONS = ("ERK", "uniform")
GROWTH_MODES = ("static", "random", "gradient", "momentum")


# --- tasks and the multi-head model


def split_tasks(data: DataSplit, classes_per_task: int = 2) -> list[DataSplit]:
    """Cut a classification split into tasks of consecutive classes: task ``t`` holds the classes
    ``t*c .. t*c + c - 1`` (``c = classes_per_task``), relabelled ``0 .. c-1`` (the task's own head)."""
    classes_per_task = check_positive_int(classes_per_task, "classes_per_task", minimum=2)
    if data.n_classes % classes_per_task:
        raise ValueError(
            f"classes_per_task must divide the number of classes {data.n_classes}, got {classes_per_task}"
        )

    def part(X: torch.Tensor | None, y: torch.Tensor | None, low: int):
        if X is None:
            return None, None
        keep = (y >= low) & (y < low + classes_per_task)
        return X[keep], y[keep] - low

    tasks = []
    for low in range(0, data.n_classes, classes_per_task):
        X_train, y_train = part(data.X_train, data.y_train, low)
        X_test, y_test = part(data.X_test, data.y_test, low)
        X_val, y_val = part(data.X_val, data.y_val, low)
        tasks.append(DataSplit(X_train, y_train, X_test, y_test, X_val, y_val))
    return tasks


class MultiHeadMLP(MLP):
    """ReLU MLP ``body_widths[0] -> ... -> body_widths[-1] -> n_tasks * classes_per_task``, a head per task.

    The output layer holds the heads side by side; with task ``t`` selected (:meth:`select_task`) the forward
    pass returns only the logits ``t*c .. (t+1)*c - 1``, so a task's loss and predictions never involve
    another task's output rows. Parameters are named as in :class:`lib.mlp.MLP` (``layers.<i>.weight``,
    ``layers.<i>.bias``).
    """

    def __init__(
        self,
        body_widths: Sequence[int],
        *,
        n_tasks: int,
        classes_per_task: int,
        init: str = "torch_default",
        seed: int = 0,
    ) -> None:
        self.n_tasks = check_positive_int(n_tasks, "n_tasks")
        self.classes_per_task = check_positive_int(classes_per_task, "classes_per_task", minimum=2)
        if len(tuple(body_widths)) < 2:
            raise ValueError(f"body_widths needs an input and at least one hidden width, got {body_widths}")
        super().__init__((*body_widths, self.n_tasks * self.classes_per_task), init=init, seed=seed)
        self.task: int | None = None

    @property
    def head_name(self) -> str:
        """Name of the output (head) weight matrix."""
        return f"layers.{len(self.layers) - 1}.weight"

    @property
    def body_names(self) -> list[str]:
        """Names of the weight matrices shared by all tasks (every layer but the heads)."""
        return [f"layers.{i}.weight" for i in range(len(self.layers) - 1)]

    def select_task(self, task: int) -> MultiHeadMLP:
        """Route the forward pass through the head of ``task``; returns the model."""
        self.task = _check_task(task, self.n_tasks)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task is None:
            raise RuntimeError("select a task first (model.select_task(t)): each task has its own head")
        c = self.classes_per_task
        return super().forward(x)[:, self.task * c : (self.task + 1) * c]


def _check_task(task: int, n_tasks: int) -> int:
    if isinstance(task, bool) or not isinstance(task, int | np.integer):
        raise TypeError(f"task must be an int, got {type(task).__name__}")
    if not 0 <= task < n_tasks:
        raise ValueError(f"task must be in [0, {n_tasks - 1}], got {task}")
    return int(task)


# --- per-task masks and capacity


def body_densities(
    shapes: Mapping[str, tuple[int, ...]], density: float, distribution: str
) -> dict[str, float]:
    """Per-layer densities of a task's mask with overall density ``density`` over the layers ``shapes``.

    ``"uniform"``: every layer gets ``density``; ``"ERK"``: :func:`lib.pruning.erk_densities` (layers with
    many inputs and outputs per weight get more).
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if distribution == "ERK":
        return erk_densities(shapes, density)
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0 < density <= 1:
        raise ValueError(f"density must be a float in (0, 1], got {density!r}")
    if not shapes:
        raise ValueError("shapes must name at least one layer")
    return dict.fromkeys(shapes, float(density))


def task_mask(model: MultiHeadMLP, task: int, densities: Mapping[str, float], seed: int) -> Masks:
    """A fresh mask for ``task``: in each body layer exactly ``round(d_l n_l)`` positions drawn uniformly
    (from all positions, used or not), and in the head layer the task's own output rows, dense."""
    task = _check_task(task, model.n_tasks)
    all_masks = full_masks(model)
    body = {name: all_masks[name] for name in model.body_names}
    masks = random_masks_at_densities(body, densities, seed)
    head = torch.zeros_like(all_masks[model.head_name])
    c = model.classes_per_task
    head[task * c : (task + 1) * c] = True
    masks[model.head_name] = head
    return masks


def union_masks(masks_list: Sequence[Masks], like: Masks) -> Masks:
    """Entrywise OR of the masks in ``masks_list`` over the keys of ``like`` (all False for an empty list)."""
    union = {name: torch.zeros_like(mask, dtype=torch.bool) for name, mask in like.items()}
    for masks in masks_list:
        missing = set(like) - set(masks)
        if missing:
            raise ValueError(f"every mask set must have the keys {sorted(like)}; one lacks {sorted(missing)}")
        for name in union:
            union[name] |= masks[name]
    return union


def used_fraction(masks_list: Sequence[Masks], names: Sequence[str]) -> float:
    """Fraction of the weights of the layers ``names`` that at least one mask of ``masks_list`` uses."""
    if not masks_list:
        raise ValueError("masks_list must hold at least one mask set")
    if not names:
        raise ValueError("names must select at least one layer")
    missing = [name for name in names if name not in masks_list[0]]
    if missing:
        raise ValueError(f"names not in the masks: {missing}")
    union = union_masks(masks_list, {name: masks_list[0][name] for name in names})
    return sum(int(mask.sum()) for mask in union.values()) / sum(mask.numel() for mask in union.values())


def expected_used_fraction(densities: Mapping[str, float], sizes: Mapping[str, int], n_tasks: int) -> float:
    """``sum_l n_l (1 - (1 - d_l)^t) / sum_l n_l``: the expected used fraction after ``t = n_tasks``
    independent uniformly random masks of densities ``d_l`` over layers of ``n_l`` weights."""
    n_tasks = check_positive_int(n_tasks, "n_tasks", minimum=0)
    if set(densities) != set(sizes) or not sizes:
        raise ValueError(f"densities and sizes must have the same non-empty keys, got {sorted(densities)}")
    if any(not 0 <= d <= 1 for d in densities.values()):
        raise ValueError(f"densities must lie in [0, 1], got {dict(densities)}")
    used = sum(sizes[name] * (1 - (1 - densities[name]) ** n_tasks) for name in sizes)
    return used / sum(sizes.values())


def owner_map(masks_list: Sequence[Masks], name: str) -> torch.Tensor:
    """For each entry of layer ``name``: the first task whose mask uses it, or -1 if no task does."""
    if not masks_list:
        raise ValueError("masks_list must hold at least one mask set")
    owner = torch.full(masks_list[0][name].shape, -1, dtype=torch.int64)
    for task, masks in enumerate(masks_list):
        owner[(owner < 0) & masks[name]] = task
    return owner


def isolate_gradients(params: Mapping[str, nn.Parameter], used: Masks) -> None:
    """Zero, in place, the gradient of every weight entry that ``used`` marks (frozen: read, not changed).

    ``params`` maps names to parameters, e.g. ``dict(model.named_parameters())``.
    """
    for name, frozen in used.items():
        if name not in params:
            raise ValueError(f"used has a key {name!r} that is not in params")
        if params[name].grad is not None:
            params[name].grad.masked_fill_(frozen, 0.0)


# --- growth scores for prune_and_regrow


class GradientMomentum:
    """Adam-style running moments of the *dense* gradient, for momentum growth.

    ``m <- b1 m + (1 - b1) g`` and ``v <- b2 v + (1 - b2) g^2`` entrywise, updated every step from the dense
    gradient (inactive positions included, which the optimiser's own state never sees because the trainer
    masks their gradients). The growth score is ``|m| / (sqrt(v) + eps)`` (no bias correction: it rescales a
    whole layer alike up to ``eps``).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], *, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8) -> None:
        if not (0 <= b1 < 1 and 0 <= b2 < 1 and eps > 0):
            raise ValueError(f"need 0 <= b1, b2 < 1 and eps > 0, got b1={b1}, b2={b2}, eps={eps}")
        self.b1, self.b2, self.eps = b1, b2, eps
        self.m = {name: torch.zeros(shape) for name, shape in shapes.items()}
        self.v = {name: torch.zeros(shape) for name, shape in shapes.items()}

    def update(self, gradients: Mapping[str, torch.Tensor]) -> None:
        """Fold one dense gradient (a dict over the tracked names) into the moments."""
        if set(gradients) != set(self.m):
            raise ValueError(f"gradients must have the keys {sorted(self.m)}, got {sorted(gradients)}")
        for name, grad in gradients.items():
            self.m[name].mul_(self.b1).add_(grad, alpha=1 - self.b1)
            self.v[name].mul_(self.b2).addcmul_(grad, grad, value=1 - self.b2)

    def scores(self) -> dict[str, torch.Tensor]:
        """``|m| / (sqrt(v) + eps)`` per tracked layer."""
        return {name: self.m[name].abs() / (self.v[name].sqrt() + self.eps) for name in self.m}


def growth_scores(
    growth: str,
    gradients: Mapping[str, torch.Tensor],
    *,
    generator: torch.Generator | None = None,
    momentum: GradientMomentum | None = None,
) -> dict[str, torch.Tensor]:
    """Scores whose largest values :func:`lib.pruning.prune_and_regrow` grows, for the mode ``growth``.

    ``"gradient"``: ``|dense gradient|`` (RigL); ``"random"``: i.i.d. uniform noise from ``generator``, so the
    grown positions are a uniform sample of the eligible ones; ``"momentum"``: ``momentum.scores()``.
    """
    if growth == "gradient":
        return {name: grad.abs() for name, grad in gradients.items()}
    if growth == "random":
        if not isinstance(generator, torch.Generator):
            raise TypeError("random growth needs generator=torch.Generator")
        return {name: torch.rand(grad.shape, generator=generator) for name, grad in gradients.items()}
    if growth == "momentum":
        if not isinstance(momentum, GradientMomentum):
            raise TypeError("momentum growth needs momentum=GradientMomentum")
        return momentum.scores()
    raise ValueError(f"growth must be one of {GROWTH_MODES[1:]}, got {growth!r}")


# --- the continual learner


@dataclass(frozen=True)
class TaskConfig:
    """How one task is trained: ``density`` and ``distribution`` of its body mask, ``growth`` mode
    (``"static"`` keeps the mask), ``epochs``, Adam ``lr``, ``batch_size``, a topology update every
    ``update_every`` steps with death rate annealed by :func:`lib.pruning.cosine_death_rate` from ``r0``
    to ``eta_min`` over the task's steps."""

    density: float = 0.2
    distribution: str = "uniform"
    growth: str = "gradient"
    epochs: int = 25
    lr: float = 2e-3
    batch_size: int = 64
    update_every: int = 10
    r0: float = 0.5
    eta_min: float = 0.005

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")
        if self.growth not in GROWTH_MODES:
            raise ValueError(f"growth must be one of {GROWTH_MODES}, got {self.growth!r}")
        density = self.density
        if isinstance(density, bool) or not isinstance(density, int | float) or not 0 < density <= 1:
            raise ValueError(f"density must be a float in (0, 1], got {self.density!r}")
        for name in ("epochs", "batch_size", "update_every"):
            check_positive_int(getattr(self, name), name)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


class SparseContinualNet:
    """A multi-head MLP whose weights are shared out among tasks by per-task masks.

    ``store`` holds every weight: trained values where some task's mask uses them, untouched initial values
    elsewhere. ``task_masks[t]`` and ``task_biases[t]`` are the final mask and the biases of task ``t``.
    """

    def __init__(self, body_widths: Sequence[int], *, n_tasks: int, classes_per_task: int = 2, seed: int = 0):
        self.store = MultiHeadMLP(body_widths, n_tasks=n_tasks, classes_per_task=classes_per_task, seed=seed)
        self.task_masks: list[Masks] = []
        self.task_biases: list[dict[str, torch.Tensor]] = []

    @property
    def n_learned(self) -> int:
        """Number of tasks learned so far."""
        return len(self.task_masks)

    def used(self) -> Masks:
        """Union of the masks of the tasks learned so far (the frozen weights)."""
        return union_masks(self.task_masks, full_masks(self.store))

    def task_network(self, task: int) -> MultiHeadMLP:
        """A stand-alone copy of the network of a learned ``task``: stored weights times its mask, its own
        biases, its head selected."""
        learned = self.n_learned
        if isinstance(task, bool) or not isinstance(task, int | np.integer) or not 0 <= task < learned:
            raise ValueError(f"task must be a learned task, an int in [0, {learned - 1}], got {task!r}")
        net = copy.deepcopy(self.store).select_task(int(task))
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, mask in self.task_masks[task].items():
                params[name].mul_(mask)
            for name, bias in self.task_biases[task].items():
                params[name].copy_(bias)
        return net

    def logits(self, task: int, X: torch.Tensor) -> torch.Tensor:
        """Logits of the head of ``task`` on inputs ``X`` (n x d)."""
        net = self.task_network(task).eval()
        with torch.inference_mode():
            return net(X)

    def accuracy(self, task: int, X: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of ``X`` that task ``task``'s network classifies as ``y`` (labels local to the task)."""
        return (self.logits(task, X).argmax(dim=1) == y).double().mean().item()

    def learn_task(self, data: DataSplit, config: TaskConfig, *, seed: int) -> MultiHeadMLP:
        """Learn the next task on ``data`` (local labels) and freeze its weights; returns the trained network
        (whose outputs :meth:`task_network` reproduces from the store).

        1. Draw the task's mask (:func:`task_mask`); new weights (not used by earlier tasks) start from the
           stored initial values times ``1/sqrt(d_l)``, shared ones at their trained values.
        2. Train with :func:`lib.mlp.train_classifier` on a working copy, the frozen weights' gradients zeroed
           (:func:`isolate_gradients`). Unless ``growth="static"``, every ``update_every`` steps replace the
           ``ceil(r * n_active)`` smallest active weights of each body layer by the inactive positions of
           largest growth score (:func:`growth_scores`, :func:`lib.pruning.prune_and_regrow`); a position
           grown onto a frozen weight reads its stored value, a new one starts at zero.
        3. Write the task's new weights into the store and keep its final mask and biases.
        """
        if not isinstance(config, TaskConfig):
            raise TypeError(f"config must be a TaskConfig, got {type(config).__name__}")
        task = self.n_learned
        if task >= self.store.n_tasks:
            raise ValueError(f"all {self.store.n_tasks} tasks are learned already")
        body = self.store.body_names
        shapes = {name: tuple(p.shape) for name, p in self.store.named_parameters() if name in body}
        masks = task_mask(self.store, task, body_densities(shapes, config.density, config.distribution), seed)
        used = self.used()
        frozen = {name: mask for name, mask in used.items() if mask.any()}
        stored = {name: p.detach() for name, p in self.store.named_parameters()}
        work = copy.deepcopy(self.store).select_task(task)
        params = dict(work.named_parameters())
        with torch.no_grad():
            for name in body:
                params[name][masks[name] & ~used[name]] *= masked_init_scale(masks[name]).item()

        n_steps = config.epochs * math.ceil(data.X_train.shape[0] / config.batch_size)
        generator = torch.Generator().manual_seed(int(seed) + 1)
        momentum = GradientMomentum(shapes) if config.growth == "momentum" else None

        def on_gradients(step: int, model: nn.Module, opt: torch.optim.Optimizer) -> None:
            dense = {name: params[name].grad for name in body}
            if momentum is not None:
                momentum.update(dense)
            if config.growth != "static" and step % config.update_every == 0 and step < n_steps:
                rate = cosine_death_rate(step, total=n_steps, r0=config.r0, eta_min=config.eta_min)
                scores = growth_scores(config.growth, dense, generator=generator, momentum=momentum)
                weights = {name: params[name].detach() for name in body}
                new = prune_and_regrow(weights, {name: masks[name] for name in body}, scores, rate)
                with torch.no_grad():
                    for name in body:
                        reread = new[name] & ~masks[name] & used[name]
                        params[name][reread] = stored[name][reread]
                replace_masks(masks, new | {self.store.head_name: masks[self.store.head_name]})
                mask_optimizer_state(opt, model, masks)
            isolate_gradients(params, frozen)

        train_classifier(
            work, data, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=seed,
            masks=masks, eval_every=n_steps, on_gradients=on_gradients,
        )
        with torch.no_grad():
            for name, mask in masks.items():
                new_weights = mask & ~used[name]
                stored[name][new_weights] = params[name].detach()[new_weights]
        self.task_masks.append({name: mask.clone() for name, mask in masks.items()})
        biases = {name: p.detach().clone() for name, p in params.items() if name.endswith("bias")}
        self.task_biases.append(biases)
        return work.eval()


# --- continual-learning metrics and a whole run


def cl_metrics(acc_matrix: np.ndarray) -> tuple[float, float]:
    """Average accuracy and backward transfer of a T x T accuracy matrix ``R`` (``R[i, j]``: accuracy on task
    ``j`` after learning task ``i``; entries above the diagonal are ignored).

    ``ACC = mean_j R[T-1, j]``; ``BWT = mean_{j < T-1} (R[T-1, j] - R[j, j])`` (0 for a single task);
    negative BWT is forgetting.
    """
    R = np.asarray(acc_matrix, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"acc_matrix must be a non-empty square matrix, got shape {R.shape}")
    if np.isnan(np.tril(R)).any():
        raise ValueError("acc_matrix must be finite on and below the diagonal")
    T = R.shape[0]
    acc = float(R[-1].mean())
    bwt = float(np.mean(R[-1, :-1] - np.diag(R)[:-1])) if T > 1 else 0.0
    return acc, bwt


@dataclass(frozen=True)
class ContinualRun:
    """A whole task sequence: ``acc_matrix[i, j]`` is the test accuracy on task ``j`` after learning task
    ``i`` (NaN for ``j > i``), ``used[i]`` the used fraction of the body after task ``i``, ``net`` the
    learner."""

    acc_matrix: np.ndarray
    used: np.ndarray
    net: SparseContinualNet

    @property
    def acc(self) -> float:
        """Average final accuracy over the tasks (ACC)."""
        return cl_metrics(self.acc_matrix)[0]

    @property
    def bwt(self) -> float:
        """Backward transfer (BWT); 0 means no forgetting."""
        return cl_metrics(self.acc_matrix)[1]


def run_continual(
    tasks: Sequence[DataSplit], body_widths: Sequence[int], config: TaskConfig, *, seed: int
) -> ContinualRun:
    """Learn ``tasks`` in order with one :class:`SparseContinualNet` (initial weights from ``seed``), each
    with ``config`` (task ``t`` draws its mask and minibatch order from ``1000 * seed + t``); evaluate every
    learned task on its test set after each task."""
    if not tasks:
        raise ValueError("tasks must hold at least one task")
    classes = {int(task.y_train.max()) + 1 for task in tasks}
    if len(classes) != 1:
        raise ValueError(f"every task must have the same number of classes, got {sorted(classes)}")
    net = SparseContinualNet(body_widths, n_tasks=len(tasks), classes_per_task=classes.pop(), seed=seed)
    T = len(tasks)
    acc_matrix = np.full((T, T), np.nan)
    used = np.zeros(T)
    for i, task_data in enumerate(tasks):
        net.learn_task(task_data, config, seed=1000 * seed + i)
        for j in range(i + 1):
            acc_matrix[i, j] = net.accuracy(j, tasks[j].X_test, tasks[j].y_test)
        used[i] = used_fraction(net.task_masks, net.store.body_names)
    return ContinualRun(acc_matrix, used, net)
