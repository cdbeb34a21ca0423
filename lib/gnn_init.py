"""Initialising graph convolutional networks: Virgo's graph-aware weight variances (Li et al., ICML 2023).

A graph convolutional network (GCN) layer computes ``Z^l = Ahat H^{l-1} W_l`` and ``H^l = relu(Z^l)``, where
``Ahat = D^{-1/2} (A + I) D^{-1/2}`` is the normalised adjacency with self-loops. Message passing through
``Ahat`` changes the scale of the signal, so a weight variance chosen for a plain network (Xavier, Kaiming)
lets the variance of ``Z^l`` and of the gradients drift with depth. Virgo estimates that change from the
energies ``||Ahat^{l+1} x||^2`` of a one-channel signal ``x`` and rescales each layer's variance to undo it,
forward (``x`` = the node-wise feature mean) and backward (``x`` = all ones), then takes the harmonic mean.

Also here: a contextual stochastic block model (CSBM) to test it on, a small GCN with a sparse ``Ahat``, the
per-layer variances of pre-activations and gradients at initialisation, and a full-batch trainer.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from lib.validation import check_generator, check_positive_int

SCHEMES = ("xavier", "kaiming", "virgo")
MEAN_METHODS = ("harmonic", "arithmetic")


# ----------------------------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class CSBMGraph:
    """A node-classification graph: symmetric 0/1 ``adjacency`` (n x n, no self-loops, scipy CSR),
    ``features`` (n x d, float32) and ``labels`` (n, int64)."""

    adjacency: sp.csr_array
    features: np.ndarray
    labels: np.ndarray


def _check_probability(value: float, name: str) -> float:
    if not isinstance(value, int | float | np.floating) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def csbm_graph(
    n_nodes: int,
    n_classes: int,
    n_features: int,
    p_in: float,
    p_out: float,
    mean_scale: float,
    rng: np.random.Generator,
) -> CSBMGraph:
    """Sample a contextual stochastic block model.

    Labels are balanced (``n_nodes`` nodes split as evenly as possible over ``n_classes``, in random order).
    Each unordered pair of distinct nodes is an edge with probability ``p_in`` if the two share a class and
    ``p_out`` otherwise. Each class has a random mean ``mu_c ~ N(0, I_d)``; a node of class c has features
    ``mean_scale * mu_c + N(0, I_d)``.
    """
    n_nodes = check_positive_int(n_nodes, "n_nodes", minimum=2)
    n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
    n_features = check_positive_int(n_features, "n_features")
    if n_classes > n_nodes:
        raise ValueError(f"n_classes must be <= n_nodes ({n_nodes}), got {n_classes}")
    p_in, p_out = _check_probability(p_in, "p_in"), _check_probability(p_out, "p_out")
    if (
        not isinstance(mean_scale, int | float | np.floating)
        or isinstance(mean_scale, bool)
        or mean_scale < 0
    ):
        raise ValueError(f"mean_scale must be a float >= 0, got {mean_scale!r}")
    rng = check_generator(rng)

    labels = rng.permutation(np.arange(n_nodes) % n_classes).astype(np.int64)
    same_class = labels[:, None] == labels[None, :]
    edge_probability = np.where(same_class, p_in, p_out)
    upper = np.triu(rng.random((n_nodes, n_nodes)) < edge_probability, k=1)
    adjacency = sp.csr_array((upper | upper.T).astype(np.float64))
    class_means = rng.standard_normal((n_classes, n_features))
    features = mean_scale * class_means[labels] + rng.standard_normal((n_nodes, n_features))
    return CSBMGraph(adjacency=adjacency, features=features.astype(np.float32), labels=labels)


@dataclass(frozen=True)
class NodeSplit:
    """Disjoint index arrays of the training, validation and test nodes."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def random_node_split(n_nodes: int, fractions: Sequence[float], rng: np.random.Generator) -> NodeSplit:
    """Split ``range(n_nodes)`` at random into train/val/test parts of the given ``fractions`` (summing to 1);
    the test part takes what rounding leaves."""
    n_nodes = check_positive_int(n_nodes, "n_nodes", minimum=3)
    fractions = tuple(fractions)
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    rng = check_generator(rng)
    order = rng.permutation(n_nodes)
    n_train = max(1, round(fractions[0] * n_nodes))
    n_val = max(1, round(fractions[1] * n_nodes))
    if n_train + n_val >= n_nodes:
        raise ValueError(f"n_nodes={n_nodes} is too small for the fractions {fractions}")
    return NodeSplit(
        train=order[:n_train], val=order[n_train : n_train + n_val], test=order[n_train + n_val :]
    )


# ---------------------------------------------------------------------------------- normalisation and Virgo
def _as_sparse_square(matrix: object, name: str) -> sp.csr_array:
    if isinstance(matrix, np.ndarray) or sp.issparse(matrix):
        matrix = sp.csr_array(matrix, dtype=np.float64)
    else:
        raise TypeError(f"{name} must be a numpy array or a scipy sparse matrix, got {type(matrix).__name__}")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix.data)):
        raise ValueError(f"{name} has non-finite entries")
    return matrix


def gcn_norm_adj(adjacency: np.ndarray | sp.sparray | sp.spmatrix) -> sp.csr_array:
    """The GCN propagation matrix ``Ahat = D^{-1/2} (A + I) D^{-1/2}``, D the degree matrix of ``A + I``.

    ``adjacency`` is a symmetric, non-negative (weighted or 0/1) matrix without self-loops; the loops are
    added here. Returns a float64 CSR array.
    """
    adjacency = _as_sparse_square(adjacency, "adjacency")
    if adjacency.data.size and adjacency.data.min() < 0:
        raise ValueError("adjacency must be non-negative")
    if abs(adjacency - adjacency.T).sum() > 1e-12 * max(1.0, abs(adjacency).sum()):
        raise ValueError("adjacency must be symmetric (an undirected graph)")
    if np.any(adjacency.diagonal() != 0):
        raise ValueError("adjacency must have a zero diagonal: gcn_norm_adj adds the self-loops itself")
    with_loops = adjacency + sp.eye_array(adjacency.shape[0], format="csr")
    inv_sqrt_degree = 1.0 / np.sqrt(np.asarray(with_loops.sum(axis=1)).ravel())
    scale = sp.diags_array(inv_sqrt_degree)
    return sp.csr_array(scale @ with_loops @ scale)


def aggregated_energies(
    propagation: np.ndarray | sp.sparray, signal: np.ndarray, n_layers: int
) -> np.ndarray:
    """``c5[l] = ||Ahat^{l+1} x||^2`` for ``l = 0 .. n_layers - 1``: the energy of a one-channel signal ``x``
    after ``l + 1`` rounds of weight-free message passing with ``Ahat = propagation``."""
    propagation = _as_sparse_square(propagation, "propagation")
    n_layers = check_positive_int(n_layers, "n_layers")
    signal = np.asarray(signal, dtype=np.float64)
    if signal.shape != (propagation.shape[0],):
        raise ValueError(f"signal must have shape ({propagation.shape[0]},), got {signal.shape}")
    energies = np.empty(n_layers)
    for layer in range(n_layers):
        signal = propagation @ signal
        energies[layer] = signal @ signal
    if np.any(energies <= 0):
        raise ValueError("the signal vanishes under message passing; its energies must be positive")
    return energies


def virgo_forward_var(
    propagation: np.ndarray | sp.sparray, features: np.ndarray, hidden_dim: int, n_layers: int
) -> np.ndarray:
    """Forward Virgo variances ``c2_for[l]`` of the ``n_layers`` weight matrices.

    ``c2_for[0] = 2 / m_0`` (m_0 = number of input features); for ``l >= 1``,
    ``c2_for[l] = (2 / m) * c5[l-1] / c5[l]`` with m = ``hidden_dim`` and ``c5`` the aggregated energies of
    the node-wise feature mean ``x = features.mean(axis=1)``: the ratio undoes the energy lost (or gained) in
    one more round of message passing, the factor 2/m is He's correction for ReLU.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D (nodes x features) array, got shape {features.shape}")
    hidden_dim = check_positive_int(hidden_dim, "hidden_dim")
    energies = aggregated_energies(propagation, features.mean(axis=1), n_layers)
    variances = np.empty(n_layers)
    variances[0] = 2.0 / features.shape[1]
    variances[1:] = 2.0 / hidden_dim * energies[:-1] / energies[1:]
    return variances


def virgo_backward_var(
    propagation: np.ndarray | sp.sparray, n_classes: int, hidden_dim: int, n_layers: int
) -> np.ndarray:
    """Backward Virgo variances ``c2_back[l]`` of the ``n_layers`` weight matrices (entry l for layer l).

    Gradients flow from the output back, so the recursion runs over reversed layers with the all-ones signal:
    the output layer gets ``n / ((n_classes - 1) * c5[0])``, and the layer k steps before it
    ``(2 / m) * c5[k-1] / c5[k]``.
    """
    propagation = _as_sparse_square(propagation, "propagation")
    n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
    hidden_dim = check_positive_int(hidden_dim, "hidden_dim")
    n_nodes = propagation.shape[0]
    energies = aggregated_energies(propagation, np.ones(n_nodes), n_layers)
    from_output = np.empty(n_layers)
    from_output[0] = n_nodes / ((n_classes - 1) * energies[0])
    from_output[1:] = 2.0 / hidden_dim * energies[:-1] / energies[1:]
    return from_output[::-1].copy()


def virgo_variances(
    propagation: np.ndarray | sp.sparray,
    features: np.ndarray,
    n_classes: int,
    hidden_dim: int,
    n_layers: int,
    mean_method: str = "harmonic",
) -> np.ndarray:
    """Virgo's weight variance per layer: the harmonic (default) or arithmetic mean of the forward and
    backward variances, ``c2 = 2 / (1 / c2_for + 1 / c2_back)``."""
    if mean_method not in MEAN_METHODS:
        raise ValueError(f"mean_method must be one of {MEAN_METHODS}, got {mean_method!r}")
    forward = virgo_forward_var(propagation, features, hidden_dim, n_layers)
    backward = virgo_backward_var(propagation, n_classes, hidden_dim, n_layers)
    if mean_method == "harmonic":
        return 2.0 / (1.0 / forward + 1.0 / backward)
    return (forward + backward) / 2.0


def uniform_bound(variance: float | np.ndarray) -> float | np.ndarray:
    """The half-width a of ``U(-a, a)`` with the given variance: ``a = sqrt(3 * variance)``."""
    variance = np.asarray(variance, dtype=np.float64)
    if np.any(~np.isfinite(variance)) or np.any(variance < 0):
        raise ValueError(f"variance must be finite and >= 0, got {variance}")
    bound = np.sqrt(3.0 * variance)
    return float(bound) if bound.ndim == 0 else bound


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Validate GCN widths ``(input features, hidden, ..., hidden, classes)``: at least two positive ints."""
    widths = tuple(widths)
    if len(widths) < 2:
        raise ValueError(f"widths needs at least an input and an output width, got {widths}")
    if any(isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 1 for w in widths):
        raise ValueError(f"widths must be positive ints, got {widths}")
    return tuple(int(w) for w in widths)


def initial_weight_variances(
    scheme: str,
    widths: Sequence[int],
    propagation: np.ndarray | sp.sparray | None = None,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Variance of the entries of each weight matrix ``W_l`` (``widths[l] x widths[l+1]``) under a scheme.

    ``"xavier"``: ``2 / (fan_in + fan_out)``; ``"kaiming"``: ``2 / fan_in`` (ReLU gain, fan-in mode);
    ``"virgo"``: :func:`virgo_variances` with the hidden width ``widths[1]`` and ``widths[-1]`` classes, which
    needs the graph's ``propagation`` matrix and the node ``features``.
    """
    widths = check_widths(widths)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    fan_in, fan_out = np.array(widths[:-1], float), np.array(widths[1:], float)
    if scheme == "xavier":
        return 2.0 / (fan_in + fan_out)
    if scheme == "kaiming":
        return 2.0 / fan_in
    if propagation is None or features is None:
        raise ValueError("scheme 'virgo' needs the propagation matrix and the node features")
    if np.shape(features)[1] != widths[0]:
        raise ValueError(f"features have {np.shape(features)[1]} columns but widths[0] = {widths[0]}")
    return virgo_variances(propagation, features, widths[-1], widths[1], len(widths) - 1)


# -------------------------------------------------------------------------------------------------- the GCN
def to_torch_propagation(propagation: np.ndarray | sp.sparray | sp.spmatrix) -> torch.Tensor:
    """A symmetric propagation matrix (such as ``Ahat``) as a float32 torch sparse CSR tensor for a GCN."""
    propagation = _as_sparse_square(propagation, "propagation")
    if abs(propagation - propagation.T).sum() > 1e-9 * max(1.0, abs(propagation).sum()):
        raise ValueError("propagation must be symmetric (GCN's backward pass multiplies by it again)")
    propagation.sort_indices()
    with warnings.catch_warnings():  # torch marks its sparse CSR support as beta; matmul is all we use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(propagation.indptr.astype(np.int64)),
            torch.from_numpy(propagation.indices.astype(np.int64)),
            torch.from_numpy(propagation.data.astype(np.float32)),
            size=propagation.shape,
            check_invariants=True,
        )


class _SymmetricPropagation(torch.autograd.Function):
    """``Ahat @ h`` for a symmetric sparse ``Ahat``: the backward pass is ``Ahat @ grad`` (no transpose)."""

    @staticmethod
    def forward(ctx, propagation: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        ctx.propagation = propagation
        return propagation @ hidden

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.propagation @ grad_output


def _propagate(propagation: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    if propagation.layout == torch.sparse_csr:
        return _SymmetricPropagation.apply(propagation, hidden)
    return propagation @ hidden


class GCN(nn.Module):
    """A bias-free GCN: ``Z^l = Ahat H^{l-1} W_l``, ``H^l = relu(Z^l)``, ``H^0 = X``; the logits are ``Z^L``.

    ``widths = (m_0, m, ..., m, n_classes)`` gives ``len(widths) - 1`` layers; ``weights[l]`` has shape
    ``widths[l] x widths[l+1]``. The weights start at zero: draw them with :func:`init_gcn_`. The propagation
    matrix ``Ahat`` is a dense tensor or the symmetric sparse tensor of :func:`to_torch_propagation`.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.widths = check_widths(widths)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.zeros(w_in, w_out)) for w_in, w_out in pairwise(self.widths)
        )

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def pre_activations(self, propagation: torch.Tensor, features: torch.Tensor) -> list[torch.Tensor]:
        """All ``Z^1 .. Z^L`` (the last one is the logits)."""
        if features.ndim != 2 or features.shape[1] != self.widths[0]:
            raise ValueError(f"features must have shape (n, {self.widths[0]}), got {tuple(features.shape)}")
        if propagation.shape != (features.shape[0], features.shape[0]):
            raise ValueError(
                f"propagation must be {features.shape[0]} x {features.shape[0]}, "
                f"got {tuple(propagation.shape)}"
            )
        hidden, outputs = features, []
        for layer, weight in enumerate(self.weights):
            if layer > 0:
                hidden = torch.relu(outputs[-1])
            outputs.append(_propagate(propagation, hidden @ weight))
        return outputs

    def forward(self, propagation: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.pre_activations(propagation, features)[-1]


def init_gcn_(model: GCN, variances: Sequence[float] | np.ndarray, generator: torch.Generator) -> GCN:
    """Draw every ``W_l`` in place from ``U(-a_l, a_l)``, ``a_l = sqrt(3 * variances[l])``; returns model."""
    if not isinstance(model, GCN):
        raise TypeError(f"model must be a GCN, got {type(model).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    bounds = np.atleast_1d(uniform_bound(np.asarray(variances, dtype=np.float64)))
    if bounds.shape != (model.n_layers,):
        raise ValueError(f"variances must have one entry per layer ({model.n_layers}), got {bounds.shape[0]}")
    with torch.no_grad():
        for weight, bound in zip(model.weights, bounds, strict=True):
            weight.uniform_(-float(bound), float(bound), generator=generator)
    return model


def _check_labels_and_nodes(
    labels: torch.Tensor, nodes: np.ndarray | torch.Tensor, n_nodes: int
) -> torch.Tensor:
    if labels.shape != (n_nodes,):
        raise ValueError(f"labels must have shape ({n_nodes},), got {tuple(labels.shape)}")
    nodes = torch.as_tensor(nodes, dtype=torch.long)
    if nodes.ndim != 1 or nodes.numel() == 0 or nodes.min() < 0 or nodes.max() >= n_nodes:
        raise ValueError(f"train_nodes must be a non-empty 1-D index array into {n_nodes} nodes")
    return nodes


def pre_activations_and_gradients(
    model: GCN,
    propagation: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    train_nodes: np.ndarray | torch.Tensor,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``Z^l`` and ``dLoss/dZ^l`` for every layer; the loss is the mean cross-entropy over ``train_nodes``."""
    train_nodes = _check_labels_and_nodes(labels, train_nodes, features.shape[0])
    outputs = model.pre_activations(propagation, features)
    loss = F.cross_entropy(outputs[-1][train_nodes], labels[train_nodes])
    gradients = torch.autograd.grad(loss, outputs)
    return [z.detach().numpy() for z in outputs], [g.numpy() for g in gradients]


def layer_variances(
    widths: Sequence[int],
    variances: Sequence[float] | np.ndarray,
    propagation: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    train_nodes: np.ndarray | torch.Tensor,
    n_draws: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer variances at initialisation, over ``n_draws`` weight draws: ``forward[l] = E[Z^l_ij^2]`` and
    ``backward[l] = E[(dLoss/dZ^l_ij)^2]``, averaged over the entries and the draws.

    Every pre-activation has mean zero over the draws (the weights do), so its mean square is its variance;
    for the gradients the mean square is the quantity the variance analysis tracks.
    """
    n_draws = check_positive_int(n_draws, "n_draws")
    model = GCN(widths)
    generator = torch.Generator().manual_seed(seed)
    forward, backward = np.zeros(model.n_layers), np.zeros(model.n_layers)
    for _ in range(n_draws):
        init_gcn_(model, variances, generator)
        outputs, gradients = pre_activations_and_gradients(model, propagation, features, labels, train_nodes)
        forward += [np.mean(z.astype(np.float64) ** 2) for z in outputs]
        backward += [np.mean(g.astype(np.float64) ** 2) for g in gradients]
    return forward / n_draws, backward / n_draws


# --------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class GCNTraining:
    """Accuracies per epoch (measured before that epoch's update) and the two summary test accuracies."""

    train_loss: np.ndarray
    val_acc: np.ndarray
    test_acc: np.ndarray

    @property
    def selected_test_acc(self) -> float:
        """Test accuracy at the first epoch of best validation accuracy (model selection on validation)."""
        return float(self.test_acc[int(np.argmax(self.val_acc))])

    @property
    def last_test_acc(self) -> float:
        return float(self.test_acc[-1])


def train_gcn(
    model: GCN,
    propagation: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    split: NodeSplit,
    epochs: int = 200,
    lr: float = 1e-2,
) -> GCNTraining:
    """Full-batch Adam on the mean cross-entropy of the training nodes; every epoch first records the
    validation and test accuracy of the current weights (from the same forward pass), then steps."""
    epochs = check_positive_int(epochs, "epochs")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    train = _check_labels_and_nodes(labels, split.train, features.shape[0])
    val, test = (torch.as_tensor(nodes, dtype=torch.long) for nodes in (split.val, split.test))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train_loss, val_acc, test_acc = np.empty(epochs), np.empty(epochs), np.empty(epochs)
    for epoch in range(epochs):
        logits = model(propagation, features)
        loss = F.cross_entropy(logits[train], labels[train])
        with torch.no_grad():
            predicted = logits.argmax(dim=1)
            val_acc[epoch] = (predicted[val] == labels[val]).float().mean().item()
            test_acc[epoch] = (predicted[test] == labels[test]).float().mean().item()
        train_loss[epoch] = loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return GCNTraining(train_loss=train_loss, val_acc=val_acc, test_acc=test_acc)
