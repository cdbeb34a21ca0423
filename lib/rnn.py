"""A continuous-time recurrent network (CTRNN), a two-alternative decision task, and low-rank initializations.

The network follows the rate model common in computational neuroscience,

    h_t = relu((1 - alpha) h_{t-1} + alpha (W_in x_t + W h_{t-1})),      y_t = W_out h_t,

with no biases and h_0 = 0. The task is a small re-implementation of a perceptual decision: two noisy
evidence channels are shown for a few steps while a fixation cue is on; when the cue goes off the network must
report which channel was stronger. Everything random takes a ``numpy.random.Generator``.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lib.validation import check_generator, check_positive_int

COHERENCES = (0.0, 6.4, 12.8, 25.6, 51.2)
FIXATE, CHOICE_ONE, CHOICE_TWO = 0, 1, 2




def _as_matrix(name: str, value: object) -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {array.shape}")
    return array


class CTRNN(nn.Module):
    """Continuous-time ReLU RNN without biases; every weight is a trainable parameter.

    Parameters
    ----------
    input_weights : (n_units, n_inputs) array, ``W_in``.
    recurrent_weights : (n_units, n_units) array, ``W``.
    readout_weights : (n_outputs, n_units) array, ``W_out``.
    alpha : float in (0, 1], the Euler step dt / tau (1 gives a discrete-time RNN).
    """

    def __init__(
        self,
        input_weights: np.ndarray,
        recurrent_weights: np.ndarray,
        readout_weights: np.ndarray,
        *,
        alpha: float = 1.0,
    ) -> None:
        super().__init__()
        w_in = _as_matrix("input_weights", input_weights)
        w_rec = _as_matrix("recurrent_weights", recurrent_weights)
        w_out = _as_matrix("readout_weights", readout_weights)
        n_units = w_rec.shape[0]
        if w_rec.shape != (n_units, n_units):
            raise ValueError(f"recurrent_weights must be square, got shape {w_rec.shape}")
        if w_in.shape[0] != n_units:
            raise ValueError(f"input_weights must have {n_units} rows (one per unit), got shape {w_in.shape}")
        if w_out.shape[1] != n_units:
            raise ValueError(f"readout_weights must have {n_units} columns, got shape {w_out.shape}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.input_weights = nn.Parameter(torch.tensor(w_in, dtype=torch.float32))
        self.recurrent_weights = nn.Parameter(torch.tensor(w_rec, dtype=torch.float32))
        self.readout_weights = nn.Parameter(torch.tensor(w_out, dtype=torch.float32))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the network on ``inputs`` of shape (time, trials, n_inputs).

        Returns the outputs (time, trials, n_outputs) and the hidden states (time, trials, n_units).
        """
        if inputs.ndim != 3 or inputs.shape[-1] != self.input_weights.shape[1]:
            raise ValueError(
                f"inputs must have shape (time, trials, {self.input_weights.shape[1]}), "
                f"got {tuple(inputs.shape)}"
            )
        drive = inputs @ self.input_weights.T
        hidden = drive.new_zeros(drive.shape[1:])
        states = []
        for drive_t in drive:
            total_drive = torch.addmm(drive_t, hidden, self.recurrent_weights.T)
            leaky = total_drive if self.alpha == 1.0 else (1 - self.alpha) * hidden + self.alpha * total_drive
            hidden = torch.relu(leaky)
            states.append(hidden)
        states = torch.stack(states)
        return states @ self.readout_weights.T, states


def init_io_weights(
    n_inputs: int, n_units: int, n_outputs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Input and readout weights drawn uniformly in +-1/sqrt(fan_in), as torch's ``nn.Linear`` default."""
    n_inputs = check_positive_int(n_inputs, "n_inputs")
    n_units = check_positive_int(n_units, "n_units")
    n_outputs = check_positive_int(n_outputs, "n_outputs")
    check_generator(rng)
    input_weights = rng.uniform(-1, 1, (n_units, n_inputs)) / np.sqrt(n_inputs)
    readout_weights = rng.uniform(-1, 1, (n_outputs, n_units)) / np.sqrt(n_units)
    return input_weights, readout_weights


@dataclass(frozen=True)
class DecisionTrials:
    """A batch of two-alternative decision trials.

    inputs : (time, trials, 3) float32 -- [fixation cue, evidence for choice 1, evidence for choice 2].
    labels : (time, trials) int64 -- 0 (fixate) on stimulus steps, the correct choice (1 or 2) on the last.
    choice : (trials,) the correct choice; coherence : (trials,) the signal strength in percent.
    """

    inputs: np.ndarray
    labels: np.ndarray
    choice: np.ndarray
    coherence: np.ndarray


def decision_trials(
    n_trials: int,
    rng: np.random.Generator,
    *,
    n_stimulus_steps: int = 7,
    coherences: tuple[float, ...] = COHERENCES,
    noise_std: float = 0.1,
) -> DecisionTrials:
    """Draw trials of the two-alternative perceptual decision task.

    On each of the ``n_stimulus_steps`` stimulus steps the input is
    ``[1, 0.5 + c/200 + noise, 0.5 - c/200 + noise]`` for a trial whose correct choice is 1 (channels swapped
    for choice 2), with coherence ``c`` drawn uniformly from ``coherences`` and independent Gaussian noise of
    std ``noise_std`` on both evidence channels. One decision step with zero input follows, on which the label
    is the correct choice.
    """
    n_trials = check_positive_int(n_trials, "n_trials")
    n_stimulus_steps = check_positive_int(n_stimulus_steps, "n_stimulus_steps")
    check_generator(rng)
    if len(coherences) == 0 or min(coherences) < 0 or max(coherences) > 100:
        raise ValueError(f"coherences must be a non-empty tuple of percentages in [0, 100], got {coherences}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    choice = rng.choice([CHOICE_ONE, CHOICE_TWO], size=n_trials)
    coherence = rng.choice(np.asarray(coherences, dtype=float), size=n_trials)
    signed = np.where(choice == CHOICE_ONE, 1.0, -1.0) * coherence / 200.0
    n_steps = n_stimulus_steps + 1
    inputs = np.zeros((n_steps, n_trials, 3))
    inputs[:n_stimulus_steps, :, 0] = 1.0
    noise = noise_std * rng.standard_normal((n_stimulus_steps, n_trials, 2))
    inputs[:n_stimulus_steps, :, 1] = 0.5 + signed + noise[..., 0]
    inputs[:n_stimulus_steps, :, 2] = 0.5 - signed + noise[..., 1]
    labels = np.full((n_steps, n_trials), FIXATE, dtype=np.int64)
    labels[-1] = choice
    return DecisionTrials(inputs.astype(np.float32), labels, choice, coherence)


def gaussian_connectivity(n_units: int, gain: float, rng: np.random.Generator) -> np.ndarray:
    """A random recurrent matrix with i.i.d. N(0, gain^2 / n_units) entries (spectral radius ~ ``gain``)."""
    n_units = check_positive_int(n_units, "n_units")
    check_generator(rng)
    if gain <= 0:
        raise ValueError(f"gain must be > 0, got {gain}")
    return gain * rng.standard_normal((n_units, n_units)) / np.sqrt(n_units)


def truncate_rank_keep_norm(weights: np.ndarray, rank: int) -> np.ndarray:
    """Keep the top ``rank`` singular directions of ``weights``, then rescale to its Frobenius norm.

    This is the low-rank initialization of Liu et al. (2024): only the *shape* of the spectrum changes, the
    total weight magnitude ||W||_F stays the same, so differences in learning come from the rank, not the
    scale.
    """
    weights = _as_matrix("weights", weights)
    rank = check_positive_int(rank, "rank")
    if rank > min(weights.shape):
        raise ValueError(f"rank must be in [1, {min(weights.shape)}], got {rank}")
    left, singular_values, right_t = np.linalg.svd(weights)
    truncated = (left[:, :rank] * singular_values[:rank]) @ right_t[:rank]
    return truncated * np.linalg.norm(weights) / np.linalg.norm(truncated)


def low_rank_init(n_units: int, rank: int, *, gain: float, rng: np.random.Generator) -> np.ndarray:
    """A rank-``rank`` recurrent matrix with the Frobenius norm of a Gaussian ``gain`` / sqrt(N) matrix."""
    return truncate_rank_keep_norm(gaussian_connectivity(n_units, gain, rng), rank)


def aligned_low_rank_init(left: np.ndarray, right: np.ndarray, frobenius_norm: float) -> np.ndarray:
    """W0 = s sum_k u_k v_k^T from given directions: equal singular values s, ||W0||_F = ``frobenius_norm``.

    ``left`` (N, r) holds the output directions u_k and ``right`` (N, r) the input directions v_k; each set is
    orthonormalised (QR, keeping the sign of each given vector) before use, so the result has rank r exactly.
    """
    left = _as_matrix("left", np.asarray(left).reshape(len(left), -1))
    right = _as_matrix("right", np.asarray(right).reshape(len(right), -1))
    if left.shape != right.shape or left.shape[1] > left.shape[0]:
        raise ValueError(f"left and right must both be (N, r) with r <= N, got {left.shape}, {right.shape}")
    if frobenius_norm <= 0:
        raise ValueError(f"frobenius_norm must be > 0, got {frobenius_norm}")
    bases = []
    for name, directions in (("left", left), ("right", right)):
        q, r = np.linalg.qr(directions)
        if np.min(np.abs(np.diag(r))) < 1e-10 * max(1.0, np.abs(r).max()):
            raise ValueError(f"the columns of {name} must be linearly independent")
        bases.append(q * np.sign(np.diag(r)))
    rank = left.shape[1]
    return frobenius_norm / np.sqrt(rank) * bases[0] @ bases[1].T


def task_aligned_directions(
    input_weights: np.ndarray, readout_weights: np.ndarray, mean_stimulus_input: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Output and input directions (u, v) of a rank-1 connectivity aligned with the decision task.

    v reads the evidence: the difference of the two evidence input columns, W_in[:, 1] - W_in[:, 2], with the
    direction of the mean input-driven activity relu(W_in x_mean) projected out (so v responds to the evidence
    difference, not to the common drive). u writes into the choice readout: W_out[1] - W_out[2], restricted to
    units that the fixation cue inhibits (W_in[:, 0] < 0: held down during the stimulus, free at the
    decision), then made orthogonal to v. With W0 = u v^T the network carries the evidence into the readout
    with the correct sign.
    """
    input_weights = _as_matrix("input_weights", input_weights)
    readout_weights = _as_matrix("readout_weights", readout_weights)
    if input_weights.shape[1] != 3 or readout_weights.shape[0] != 3:
        raise ValueError(
            "input_weights must be (N, 3) and readout_weights (3, N) for the decision task, got "
            f"{input_weights.shape} and {readout_weights.shape}"
        )
    mean_stimulus_input = np.asarray(mean_stimulus_input, dtype=float)
    if mean_stimulus_input.shape != (3,):
        raise ValueError(f"mean_stimulus_input must have shape (3,), got {mean_stimulus_input.shape}")
    common = np.maximum(input_weights @ mean_stimulus_input, 0.0)
    common = common / np.linalg.norm(common)
    evidence = input_weights[:, 1] - input_weights[:, 2]
    v = evidence - (evidence @ common) * common
    v = v / np.linalg.norm(v)
    u = (readout_weights[CHOICE_ONE] - readout_weights[CHOICE_TWO]) * (input_weights[:, 0] < 0)
    u = u - (u @ v) * v
    return u / np.linalg.norm(u), v


@dataclass
class TrainingRun:
    """The record of one training run, sampled every ``check_every`` steps (step 0 included).

    steps, validation_loss, weight_change (||W - W0||_F of the recurrent matrix) share one index; states
    holds a copy of every parameter at those steps; reached says whether the target loss was reached before
    the step cap.
    """

    steps: np.ndarray
    validation_loss: np.ndarray
    weight_change: np.ndarray
    states: list[dict[str, torch.Tensor]]
    reached: bool


def sequence_cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every time step and trial; outputs (T, B, K) logits, labels (T, B)."""
    return nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1))


def train_to_loss(
    net: CTRNN,
    validation: DecisionTrials,
    *,
    data_seed: int,
    target_loss: float = 0.05,
    learning_rate: float = 0.003,
    momentum: float = 0.9,
    batch_size: int = 32,
    check_every: int = 10,
    max_steps: int = 1500,
) -> TrainingRun:
    """Train every parameter of ``net`` by SGD with momentum until the validation loss is <= ``target_loss``.

    Batches are fresh decision trials from ``numpy.random.default_rng(data_seed)``, so runs that share a
    ``data_seed`` see the same data stream. The validation loss (``sequence_cross_entropy`` on ``validation``)
    is checked every ``check_every`` steps; training stops at the first check at or below the target (a
    matched-loss comparison) or after ``max_steps``.
    """
    if target_loss <= 0 or learning_rate <= 0 or not 0 <= momentum < 1:
        raise ValueError(
            f"need target_loss > 0, learning_rate > 0 and momentum in [0, 1), got {target_loss}, "
            f"{learning_rate}, {momentum}"
        )
    batch_size = check_positive_int(batch_size, "batch_size")
    check_every = check_positive_int(check_every, "check_every")
    max_steps = check_positive_int(max_steps, "max_steps")
    data_rng = np.random.default_rng(data_seed)
    val_inputs = torch.from_numpy(validation.inputs)
    val_labels = torch.from_numpy(validation.labels)
    n_stimulus_steps = validation.inputs.shape[0] - 1
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=momentum)
    w0 = net.recurrent_weights.detach().clone()
    steps, losses, changes, states = [], [], [], []

    def record(step: int) -> float:
        with torch.no_grad():
            loss = sequence_cross_entropy(net(val_inputs)[0], val_labels).item()
            change = torch.linalg.norm(net.recurrent_weights - w0).item()
        steps.append(step)
        losses.append(loss)
        changes.append(change)
        states.append({name: p.detach().clone() for name, p in net.named_parameters()})
        return loss

    reached = record(0) <= target_loss
    step = 0
    while not reached and step < max_steps:
        batch = decision_trials(batch_size, data_rng, n_stimulus_steps=n_stimulus_steps)
        optimizer.zero_grad()
        outputs, _ = net(torch.from_numpy(batch.inputs))
        sequence_cross_entropy(outputs, torch.from_numpy(batch.labels)).backward()
        optimizer.step()
        step += 1
        if step % check_every == 0 or step == max_steps:
            reached = record(step) <= target_loss
    return TrainingRun(np.array(steps), np.array(losses), np.array(changes), states, reached)
