"""Random Search over the *node* space of an MLP, and the paired statistics that compare it with a random pick.

A node mask keeps, in each hidden layer of a :class:`lib.mlp.MLP`, a subset of the hidden units (inputs and
outputs are always kept). The sub-network it selects can be computed two ways that give the same outputs: the
*masked* parent, in which every removed unit's incoming row, bias and outgoing column are zero, and the
*extracted* network, a physically narrower MLP made of the kept rows and columns. Random Search samples
``n_candidates`` node masks at one sparsity, scores each untrained sub-network (e.g. its validation
cross-entropy at initialisation) and keeps the best one.

The statistics compare two paired samples (one pair per seed): the Holm step-down correction of several
p-values, and the smallest mean difference a two-sided paired t-test could detect with a given power.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import nct
from scipy.stats import t as student_t
from torch.nn import functional as F

from lib.mlp import MLP, make_optimizer
from lib.pruning import Masks
from lib.structured_pruning import n_kept_units
from lib.validation import check_generator, check_positive_int

NodeMasks = list[np.ndarray]
SCORE_METRICS = ("loss", "error")


def _check_sparsity(sparsity: object) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float | np.floating):
        raise TypeError(f"sparsity must be a float in [0, 1), got {type(sparsity).__name__}")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


def _check_mlp(model: object) -> MLP:
    if not isinstance(model, MLP):
        raise TypeError(f"model must be a lib.mlp.MLP, got {type(model).__name__}")
    if len(model.widths) < 3:
        raise ValueError(f"model needs at least one hidden layer, got widths {model.widths}")
    return model


def hidden_widths(model: MLP) -> tuple[int, ...]:
    """Widths of the hidden layers of ``model`` (the layers whose units a node mask selects)."""
    return _check_mlp(model).widths[1:-1]


def sample_node_masks(widths: Sequence[int], sparsity: float, rng: np.random.Generator) -> NodeMasks:
    """One bool vector per hidden layer of width ``w`` with exactly ``w - round(sparsity * w)`` (at least one)
    True entries, chosen uniformly without replacement.

    The count is :func:`lib.structured_pruning.n_kept_units`, i.e. ``round((1 - sparsity) * w)`` except at
    exact ties of the rounding.
    """
    sparsity = _check_sparsity(sparsity)
    rng = check_generator(rng)
    if isinstance(widths, str) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise ValueError(f"widths must be a non-empty sequence of hidden widths, got {widths!r}")
    masks = []
    for width in widths:
        width = check_positive_int(width, "every entry of widths")
        mask = np.zeros(width, dtype=bool)
        mask[rng.choice(width, size=n_kept_units(width, sparsity), replace=False)] = True
        masks.append(mask)
    return masks


def _check_node_masks(model: MLP, node_masks: NodeMasks) -> NodeMasks:
    widths = hidden_widths(model)
    if isinstance(node_masks, np.ndarray) or not isinstance(node_masks, Sequence):
        raise TypeError("node_masks must be a list of bool arrays, one per hidden layer")
    if len(node_masks) != len(widths):
        raise ValueError(f"node_masks needs {len(widths)} entries (one per hidden layer), got {len(node_masks)}")
    checked = []
    for layer, (mask, width) in enumerate(zip(node_masks, widths, strict=True)):
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (width,):
            raise ValueError(f"node_masks[{layer}] must be a bool array of shape ({width},), got {mask.dtype} "
                             f"{mask.shape}")
        if not mask.any():
            raise ValueError(f"node_masks[{layer}] keeps no unit; keep at least one")
        checked.append(mask)
    return checked


def node_weight_masks(model: MLP, node_masks: NodeMasks) -> Masks:
    """Parameter masks (``lib.pruning`` format, for ``train_classifier(masks=...)``) that cut every removed
    unit off: its incoming weight row, its bias and its outgoing weight column are False."""
    node_masks = _check_node_masks(model, node_masks)
    keep_in = [np.ones(model.widths[0], dtype=bool), *node_masks]
    keep_out = [*node_masks, np.ones(model.widths[-1], dtype=bool)]
    masks: Masks = {}
    for i, (rows, cols) in enumerate(zip(keep_out, keep_in, strict=True)):
        masks[f"layers.{i}.weight"] = torch.as_tensor(np.outer(rows, cols))
        masks[f"layers.{i}.bias"] = torch.as_tensor(rows.copy())
    return masks


def masked_network(model: MLP, node_masks: NodeMasks) -> MLP:
    """A copy of ``model`` whose removed units are cut off (zero incoming row, bias and outgoing column)."""
    masks = node_weight_masks(model, node_masks)
    masked = MLP(model.widths)
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, param in masked.named_parameters():
            param.mul_(masks[name])
    return masked


def _kept_weights(model: MLP, node_masks: NodeMasks) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each layer of the sub-network: the kept units' rows and the kept inputs' columns."""
    node_masks = _check_node_masks(model, node_masks)
    kept = [torch.as_tensor(np.flatnonzero(m)) for m in node_masks]
    rows = [*kept, torch.arange(model.widths[-1])]
    cols = [torch.arange(model.widths[0]), *kept]
    return [(layer.weight.detach()[r][:, c], layer.bias.detach()[r])
            for layer, r, c in zip(model.layers, rows, cols, strict=True)]


def extract_subnetwork(model: MLP, node_masks: NodeMasks) -> MLP:
    """The narrower :class:`lib.mlp.MLP` made of the kept units: it inherits their incoming rows and biases and
    the matching columns of the next layer, and computes the same outputs as :func:`masked_network`."""
    parts = _kept_weights(model, node_masks)
    small = MLP((model.widths[0], *[w.shape[0] for w, _ in parts[:-1]], model.widths[-1]))
    with torch.no_grad():
        for little, (weight, bias) in zip(small.layers, parts, strict=True):
            little.weight.copy_(weight)
            little.bias.copy_(bias)
    return small


def score_at_init(
    model: MLP, node_masks: NodeMasks, X: torch.Tensor, y: torch.Tensor, metric: str = "loss"
) -> float:
    """Score of the *untrained* sub-network selected by ``node_masks`` on ``(X, y)``; lower is better.

    ``metric="loss"`` gives the mean cross-entropy (nats), ``metric="error"`` the fraction misclassified.
    """
    if metric not in SCORE_METRICS:
        raise ValueError(f"metric must be one of {SCORE_METRICS}, got {metric!r}")
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[1] != model.widths[0]:
        raise ValueError(f"X must be (n, {model.widths[0]}) and y (n,), got {tuple(X.shape)}, {tuple(y.shape)}")
    parts = _kept_weights(model, node_masks)
    with torch.inference_mode():
        logits = X
        for i, (weight, bias) in enumerate(parts):
            logits = F.linear(logits if i == 0 else F.relu(logits), weight, bias)
        if metric == "loss":
            return float(F.cross_entropy(logits.double(), y))
        return float((logits.argmax(dim=1) != y).double().mean())


@dataclass(frozen=True)
class SearchResult:
    """All candidates Random Search sampled, their scores (lower is better) and the index of the best."""

    candidates: list[NodeMasks]
    scores: np.ndarray
    best_index: int

    @property
    def best(self) -> NodeMasks:
        """The node masks of the best-scoring candidate."""
        return self.candidates[self.best_index]


def random_search(
    widths: Sequence[int],
    sparsity: float,
    score_fn: Callable[[NodeMasks], float],
    *,
    n_candidates: int = 20,
    rng: np.random.Generator,
) -> SearchResult:
    """Random Search: sample ``n_candidates`` node masks with :func:`sample_node_masks`, score each with
    ``score_fn`` and keep the lowest score (the first one if tied)."""
    n_candidates = check_positive_int(n_candidates, "n_candidates")
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
    candidates = [sample_node_masks(widths, sparsity, rng) for _ in range(n_candidates)]
    scores = np.array([float(score_fn(c)) for c in candidates])
    if not np.isfinite(scores).all():
        raise ValueError("score_fn returned a non-finite score")
    return SearchResult(candidates, scores, int(np.argmin(scores)))


def copy_network(model: MLP) -> MLP:
    """An independent copy of ``model`` (same widths and parameters)."""
    copy = MLP(_check_mlp(model).widths)
    copy.load_state_dict(model.state_dict())
    return copy


def _stacked_accuracy(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Fraction of the ``n`` samples each of ``K`` networks gets right, from logits of shape ``(K, classes, n)``.

    A sample counts as right when its first largest logit is the label's (ties go to the lowest class, as in
    ``argmax``); this avoids ``argmax`` over the middle axis, which is slow on the CPU.
    """
    classes = logits.shape[1]
    is_max = logits == logits.amax(dim=1, keepdim=True)
    first_max = classes - (is_max * torch.arange(classes, 0, -1, dtype=logits.dtype)[:, None]).amax(dim=1)
    return (first_max == y).double().mean(dim=1).numpy()


def train_stacked(
    networks: Sequence[MLP], X: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float
) -> tuple[list[MLP], np.ndarray]:
    """Train ``K`` MLPs of equal widths side by side, each with full-batch Adam on its own mean cross-entropy.

    The weights of the ``K`` networks are stacked into ``(K, out, in)`` tensors and trained with one batched
    forward pass per step. Adam acts entrywise and the gradient of the summed losses with respect to network
    ``k`` is the gradient of network ``k``'s own loss, so each network follows the same trajectory as when
    trained alone (``lib.mlp.train_classifier`` with a full batch), up to floating-point rounding; this is
    only faster for small networks. The inputs are not changed.

    The activations are kept transposed, ``(K, width, n)``: the first layer of all ``K`` networks is then one
    matrix product with the shared inputs, and the logits come out as ``(K, classes, n)``, a layout in which
    PyTorch's CPU softmax over the classes is several times faster than over a last axis of 10.

    Returns the trained networks and their training accuracies, shape ``(K, steps + 1)``: column ``t`` is the
    accuracy after ``t`` steps (read off the forward pass of step ``t + 1``, and a last pass at the end).
    """
    steps = check_positive_int(steps, "steps")
    if isinstance(networks, MLP) or not isinstance(networks, Sequence) or len(networks) == 0:
        raise TypeError("networks must be a non-empty list of lib.mlp.MLP")
    widths = _check_mlp(networks[0]).widths
    for net in networks:
        if _check_mlp(net).widths != widths:
            raise ValueError(f"every network must have widths {widths}, got {net.widths}")
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[1] != widths[0]:
        raise ValueError(f"X must be (n, {widths[0]}) and y (n,), got {tuple(X.shape)}, {tuple(y.shape)}")
    k, n = len(networks), X.shape[0]
    weights = [torch.stack([net.layers[i].weight.detach() for net in networks]).clone().requires_grad_()
               for i in range(len(widths) - 1)]
    biases = [torch.stack([net.layers[i].bias.detach() for net in networks])[:, :, None].clone().requires_grad_()
              for i in range(len(widths) - 1)]
    optimizer = make_optimizer([*weights, *biases], optimizer="adam", lr=lr)
    inputs = X.t().contiguous()
    targets = y.expand(k, n)

    def forward() -> torch.Tensor:
        first = torch.addmm(biases[0].reshape(-1, 1), weights[0].reshape(-1, widths[0]), inputs)
        h = first.view(k, widths[1], n)
        for w, b in zip(weights[1:], biases[1:], strict=True):
            h = torch.baddbmm(b, w, F.relu(h))
        return h

    train_acc = np.empty((k, steps + 1))
    for step in range(steps):
        optimizer.zero_grad()
        logits = forward()
        train_acc[:, step] = _stacked_accuracy(logits.detach(), y)
        (F.cross_entropy(logits, targets, reduction="sum") / n).backward()
        optimizer.step()
    with torch.no_grad():
        train_acc[:, steps] = _stacked_accuracy(forward(), y)
    trained = []
    for j in range(k):
        net = MLP(widths)
        with torch.no_grad():
            for i, layer in enumerate(net.layers):
                layer.weight.copy_(weights[i][j])
                layer.bias.copy_(biases[i][j, :, 0])
        trained.append(net)
    return trained, train_acc


def steps_to_threshold(curve: Sequence[float], threshold: float) -> int | None:
    """The first index ``t`` with ``curve[t] >= threshold`` (steps taken, if ``curve[t]`` is the value after
    ``t`` steps), or None if the curve never gets there."""
    curve = np.asarray(curve, dtype=float)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(f"curve must be a non-empty 1-d sequence, got shape {curve.shape}")
    hits = np.flatnonzero(curve >= threshold)
    return int(hits[0]) if hits.size else None


def holm_adjust(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: sort ``p_(1) <= ... <= p_(m)``, set
    ``q_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))`` and return them in the input order. Rejecting every
    hypothesis with ``q <= alpha`` controls the family-wise error rate at ``alpha``."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"pvalues must be a non-empty 1-d sequence, got shape {p.shape}")
    if not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"pvalues must lie in [0, 1], got {p}")
    order = np.argsort(p, kind="stable")
    m = p.size
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def _check_test_setup(n: int, alpha: float) -> tuple[int, float]:
    n = check_positive_int(n, "n", minimum=2)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return n, float(alpha)


def paired_t_power(difference: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs when the true mean difference
    is ``difference`` and the differences have standard deviation ``sd``: ``P(|T| > t_crit)`` for ``T`` a
    noncentral t with ``n - 1`` degrees of freedom and noncentrality ``difference * sqrt(n) / sd``."""
    n, alpha = _check_test_setup(n, alpha)
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd}")
    critical = student_t.ppf(1 - alpha / 2, n - 1)
    shift = difference * np.sqrt(n) / sd
    upper_tail, lower_tail = nct.sf(critical, n - 1, abs(shift)), nct.cdf(-critical, n - 1, abs(shift))
    return float(upper_tail + np.nan_to_num(lower_tail))  # scipy gives NaN for a negligible far tail


def minimum_detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The mean paired difference at which the two-sided paired t-test at level ``alpha`` with ``n`` pairs
    (differences of standard deviation ``sd``) has the given ``power`` (solves :func:`paired_t_power`)."""
    n, alpha = _check_test_setup(n, alpha)
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd}")
    if not alpha < power < 1:
        raise ValueError(f"power must be in (alpha, 1) = ({alpha}, 1), got {power}")
    upper = 4 * sd / np.sqrt(n)
    while paired_t_power(upper, sd, n, alpha) < power:
        upper *= 2
    return float(brentq(lambda d: paired_t_power(d, sd, n, alpha) - power, 0.0, upper, xtol=1e-12 * sd))
