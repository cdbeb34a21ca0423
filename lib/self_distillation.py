"""Self-distillation into a frozen random teacher (DINO-style, one view, no augmentation), and probes.

A *teacher* and a *student* share one architecture: an encoder (an MLP whose output is the representation
we probe) followed by a DINO projection head (MLP -> L2-normalised bottleneck -> weight-normalised linear
layer to ``out_dim`` logits). The teacher is drawn at random and never trained. The student starts from a
mixture of the teacher and a fresh draw (:func:`init_student`) and is trained to match the teacher's softened
output distribution on unlabelled inputs (:func:`distill_loss`, :func:`distill`). The representations are
judged by probes fitted on a few labels per class (:func:`linear_probe`, :func:`knn_probe`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torch.nn import functional as F

from lib.mlp import minibatch_order
from lib.validation import check_generator, check_positive_int

LOSSES = ("CE", "KL")
INIT_MODES = ("interpolated", "neighborhood")


def _check_widths(widths: Sequence[int], name: str) -> tuple[int, ...]:
    widths = tuple(widths)
    for width in widths:
        check_positive_int(width, name)
    return widths


class WeightNormLinear(nn.Module):
    """Bias-free linear layer ``y = x W^T`` with rows ``W_i = g_i v_i / ||v_i||`` (weight normalisation).

    Parameters
    ----------
    in_dim, out_dim:
        Input and output sizes.
    fix_norm:
        If True (DINO's choice for its last layer) the row norms ``g`` are fixed at 1 and only the directions
        ``v`` are trained; otherwise ``g`` starts at ``||v_i||`` and is trained too.
    """

    def __init__(self, in_dim: int, out_dim: int, *, fix_norm: bool = True) -> None:
        super().__init__()
        check_positive_int(in_dim, "in_dim")
        check_positive_int(out_dim, "out_dim")
        direction = torch.empty(out_dim, in_dim)
        nn.init.kaiming_uniform_(direction, a=math.sqrt(5))
        self.direction = nn.Parameter(direction)
        norm = torch.ones(out_dim) if fix_norm else direction.norm(dim=1).detach().clone()
        self.norm = nn.Parameter(norm, requires_grad=not fix_norm)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight matrix ``g_i v_i / ||v_i||`` (shape out_dim x in_dim)."""
        return self.norm[:, None] * self.direction / self.direction.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class DinoHead(nn.Module):
    """DINO projection head: MLP with GELU -> linear to ``bottleneck`` -> L2 normalisation -> weight-normed
    linear layer (norms fixed at 1) to ``out_dim`` logits.

    Because both the bottleneck vector and the last layer's rows have unit norm, every logit lies in [-1, 1];
    temperatures well below 1 are needed to make the softmax over ``out_dim`` classes anything but uniform.
    """

    def __init__(
        self, in_dim: int, hidden: Sequence[int] = (512,), bottleneck: int = 64, out_dim: int = 1024
    ) -> None:
        super().__init__()
        check_positive_int(in_dim, "in_dim")
        hidden = _check_widths(hidden, "hidden")
        check_positive_int(bottleneck, "bottleneck")
        check_positive_int(out_dim, "out_dim")
        layers: list[nn.Module] = []
        for width_in, width_out in zip((in_dim, *hidden[:-1]), hidden, strict=True):
            layers += [nn.Linear(width_in, width_out), nn.GELU()]
        layers.append(nn.Linear(hidden[-1] if hidden else in_dim, bottleneck))
        self.mlp = nn.Sequential(*layers)
        self.last = WeightNormLinear(bottleneck, out_dim, fix_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def mlp_encoder(widths: Sequence[int], *, batchnorm: bool = False) -> nn.Sequential:
    """ReLU MLP ``widths[0] -> ... -> widths[-1]`` with a ReLU after every layer (optionally
    Linear -> BatchNorm -> ReLU); its output is the representation that the probes see."""
    widths = _check_widths(widths, "widths")
    if len(widths) < 2:
        raise ValueError(f"widths needs an input and at least one layer width, got {widths}")
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers.append(nn.Linear(width_in, width_out))
        if batchnorm:
            layers.append(nn.BatchNorm1d(width_out))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DinoNet(nn.Module):
    """Encoder followed by a :class:`DinoHead`; ``embed`` gives the encoder's representation."""

    def __init__(self, encoder: nn.Module, head: DinoHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> np.ndarray:
        """Encoder features of ``x`` in eval mode (BatchNorm uses running statistics), as a numpy array."""
        was_training = self.training
        self.eval()
        features = self.encoder(x).numpy()
        self.train(was_training)
        return features


def make_dino_net(
    encoder_widths: Sequence[int] = (64, 256, 256),
    *,
    head_hidden: Sequence[int] = (512,),
    bottleneck: int = 64,
    out_dim: int = 1024,
    batchnorm: bool = False,
    seed: int = 0,
) -> DinoNet:
    """A randomly initialised :class:`DinoNet` (PyTorch default initialisations) drawn from ``seed`` only."""
    check_positive_int(seed, "seed", minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = mlp_encoder(encoder_widths, batchnorm=batchnorm)
        head = DinoHead(int(encoder_widths[-1]), head_hidden, bottleneck, out_dim)
    return DinoNet(encoder, head)


def interpolation_scale(alpha: float) -> float:
    """``sqrt((1 - alpha)^2 + alpha^2)``: the standard deviation of ``(1 - alpha) a + alpha b`` for
    independent ``a, b`` of unit standard deviation (the divisor that makes the interpolation
    variance-preserving)."""
    return math.sqrt(2 * alpha**2 - 2 * alpha + 1)


def init_student(
    teacher: nn.Module,
    fresh: nn.Module,
    *,
    mode: str = "interpolated",
    alpha: float | None = None,
    eps: float | None = None,
    var_preserving: bool = True,
) -> nn.Module:
    """A new student built from the teacher's parameters and those of an independent fresh draw.

    ``mode="interpolated"``: ``theta_S = (1 - alpha) theta_T + alpha theta_fresh``, divided by
    ``sqrt(2 alpha^2 - 2 alpha + 1)`` if ``var_preserving``; alpha = 0 is an exact copy of the teacher and
    alpha = 1 the fresh network. ``mode="neighborhood"``: ``theta_S = theta_T + eps theta_fresh``, divided by
    ``sqrt(1 + eps^2)`` if ``var_preserving``.

    Only trainable parameters that differ between the two networks are mixed: frozen parameters, buffers (e.g.
    BatchNorm running statistics) and constant initialisations that both networks share (BatchNorm's scale 1
    and shift 0) are copied from the teacher, since the variance correction assumes independent random draws.
    Neither input is modified.
    """
    if mode not in INIT_MODES:
        raise ValueError(f"mode must be one of {INIT_MODES}, got {mode!r}")
    if mode == "interpolated":
        if alpha is None or eps is not None:
            raise ValueError("mode='interpolated' takes alpha (in [0, 1]) and no eps")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        weights = (1.0 - alpha, alpha)
        scale = interpolation_scale(alpha) if var_preserving else 1.0
    else:
        if eps is None or alpha is not None:
            raise ValueError("mode='neighborhood' takes eps (>= 0) and no alpha")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        weights = (1.0, eps)
        scale = math.sqrt(1.0 + eps**2) if var_preserving else 1.0
    teacher_params = dict(teacher.named_parameters())
    fresh_params = dict(fresh.named_parameters())
    if {n: p.shape for n, p in teacher_params.items()} != {n: p.shape for n, p in fresh_params.items()}:
        raise ValueError("teacher and fresh must have the same parameter names and shapes")
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for name, param in student.named_parameters():
            t_value, f_value = teacher_params[name], fresh_params[name]
            if not param.requires_grad or torch.equal(t_value, f_value):
                continue
            param.copy_((weights[0] * t_value + weights[1] * f_value) / scale)
    return student


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    t_temp: float = 0.04,
    s_temp: float = 0.1,
    loss: str = "CE",
) -> torch.Tensor:
    """Mean over the batch of ``-sum_k p_k log q_k`` with ``p = softmax(t / t_temp)`` (no gradient through the
    teacher) and ``q = softmax(s / s_temp)``; ``loss="KL"`` subtracts the teacher's entropy, so it is
    ``KL(p || q) >= 0``, zero exactly when ``q = p``."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    for name, value in (("t_temp", t_temp), ("s_temp", s_temp)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must both be (batch, classes), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    teacher_probs = F.softmax(teacher_logits.detach() / t_temp, dim=-1)
    student_log_probs = F.log_softmax(student_logits / s_temp, dim=-1)
    per_sample = -(teacher_probs * student_log_probs).sum(dim=-1)
    if loss == "KL":
        per_sample = per_sample + (teacher_probs * torch.log(teacher_probs.clamp_min(1e-30))).sum(dim=-1)
    return per_sample.mean()


@dataclass(frozen=True)
class DistillationRun:
    """What :func:`distill` recorded: the loss of every step and the student's encoder features on the
    probe inputs at ``checkpoint_steps`` (features[i] has shape (n_probe, width))."""

    loss: np.ndarray
    checkpoint_steps: np.ndarray
    features: list[np.ndarray]


def distill(
    student: DinoNet,
    teacher: DinoNet,
    inputs: torch.Tensor,
    *,
    steps: int = 600,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    t_temp: float = 0.04,
    s_temp: float = 0.1,
    loss: str = "CE",
    seed: int = 0,
    probe_inputs: torch.Tensor | None = None,
    checkpoint_every: int | None = None,
) -> DistillationRun:
    """Train ``student`` in place (AdamW) to match the frozen ``teacher`` on minibatches of ``inputs``.

    The teacher is in eval mode and receives no gradient (it is never updated); the student is in train mode,
    so with BatchNorm the two differ even when their parameters are equal. Each step feeds the same batch
    (one view, no augmentation) to both networks; since the teacher is frozen and deterministic, its logits
    are computed once for all inputs. If ``probe_inputs`` is given, the student's encoder features
    on it are stored at step 0, every ``checkpoint_every`` steps and at the end.
    """
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(seed, "seed", minimum=0)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if inputs.ndim != 2:
        raise ValueError(f"inputs must be (n, features), got shape {tuple(inputs.shape)}")
    if checkpoint_every is not None:
        check_positive_int(checkpoint_every, "checkpoint_every")
        if probe_inputs is None:
            raise ValueError("checkpoint_every needs probe_inputs")
    n = inputs.shape[0]
    epochs = math.ceil(steps * batch_size / n) + 1
    batches = minibatch_order(n, batch_size, epochs, seed)
    batches = [b for b in batches if len(b) > 1][:steps]  # BatchNorm needs two samples per batch
    teacher.eval()
    with torch.no_grad():  # the teacher is frozen and sees every input unchanged: compute its logits once
        teacher_logits = teacher(inputs)
    optimizer = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay, fused=True
    )
    losses = np.empty(steps)
    checkpoint_steps: list[int] = []
    features: list[np.ndarray] = []

    def checkpoint(step: int) -> None:
        if probe_inputs is not None:
            checkpoint_steps.append(step)
            features.append(student.embed(probe_inputs))

    checkpoint(0)
    student.train()
    for step, idx in enumerate(batches, start=1):
        value = distill_loss(
            student(inputs[idx]), teacher_logits[idx], t_temp=t_temp, s_temp=s_temp, loss=loss
        )
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses[step - 1] = value.item()
        if checkpoint_every is not None and step % checkpoint_every == 0 and step != steps:
            checkpoint(step)
    checkpoint(steps)
    return DistillationRun(losses, np.array(checkpoint_steps, dtype=np.int64), features)


def sample_per_class(labels: np.ndarray, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n_per_class`` points drawn without replacement from every class in ``labels``."""
    check_positive_int(n_per_class, "n_per_class")
    check_generator(rng)
    labels = np.asarray(labels)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < n_per_class:
            raise ValueError(f"n_per_class={n_per_class} exceeds the {members.size} points of class {label}")
        chosen.append(rng.choice(members, size=n_per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _check_probe_inputs(train_features, train_labels, test_features, test_labels) -> None:
    if (
        train_features.ndim != 2
        or test_features.ndim != 2
        or train_features.shape[1] != test_features.shape[1]
    ):
        raise ValueError(
            "train_features and test_features must be (n, d) with the same d, got "
            f"{train_features.shape} and {test_features.shape}"
        )
    if train_labels.shape != (train_features.shape[0],) or test_labels.shape != (test_features.shape[0],):
        raise ValueError("train_labels and test_labels must be 1-d with one label per row of the features")


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    n_per_class: int,
    n_draws: int,
    rng: np.random.Generator,
    standardize: bool = False,
    C: float = 1.0,
) -> np.ndarray:
    """Test accuracy of a multinomial logistic regression (scikit-learn, L2 strength ``C``) fitted on
    ``n_per_class`` labelled points per class, for each of ``n_draws`` random labelled subsets.

    The features are used as they are (``standardize=False``), so the probe also sees their scale; with
    ``standardize=True`` they are centred and scaled by the statistics of the labelled subset first.
    """
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    _check_probe_inputs(train_features, train_labels, test_features, test_labels)
    check_positive_int(n_draws, "n_draws")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C}")
    accuracies = np.empty(n_draws)
    for draw in range(n_draws):
        chosen = sample_per_class(train_labels, n_per_class, rng)
        X_fit, X_test = train_features[chosen], test_features
        if standardize:
            mean, std = X_fit.mean(axis=0), X_fit.std(axis=0)
            std[std == 0] = 1.0
            X_fit, X_test = (X_fit - mean) / std, (X_test - mean) / std
        model = LogisticRegression(C=C, max_iter=1000).fit(X_fit, train_labels[chosen])
        accuracies[draw] = model.score(X_test, test_labels)
    return accuracies


def knn_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    n_per_class: int,
    n_draws: int,
    rng: np.random.Generator,
    k: int = 20,
) -> np.ndarray:
    """Test accuracy of a ``k``-nearest-neighbour majority vote under cosine distance (scikit-learn), with
    ``n_per_class`` labelled points per class, for each of ``n_draws`` random labelled subsets (``k`` is
    capped at the number of labelled points)."""
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    _check_probe_inputs(train_features, train_labels, test_features, test_labels)
    check_positive_int(n_draws, "n_draws")
    check_positive_int(k, "k")
    accuracies = np.empty(n_draws)
    for draw in range(n_draws):
        chosen = sample_per_class(train_labels, n_per_class, rng)
        neighbours = min(k, chosen.size)
        model = KNeighborsClassifier(n_neighbors=neighbours, metric="cosine", algorithm="brute")
        model.fit(train_features[chosen], train_labels[chosen])
        accuracies[draw] = model.score(test_features, test_labels)
    return accuracies
