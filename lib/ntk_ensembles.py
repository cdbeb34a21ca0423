"""Ensembles of infinitely wide two-layer ReLU networks that learn a permutation of binary inputs.

The network is ``f(x) = a^T relu(W x) / sqrt(width)`` with ``W`` (width x k) and ``a`` (width x k_out) drawn
i.i.d. from N(0, 1), no biases, both layers trained on the squared loss (the NTK parameterisation). In the
infinite-width limit its output at initialisation is a Gaussian process with the NNGP kernel ``K``, and gradient
flow moves it along the neural tangent kernel ``Theta``: after training to convergence on ``(X_train, Y_train)``
the output is again a Gaussian process (Lee et al. 2019) whose mean and covariance are computed here.

Trained on the k standard basis vectors ``e_i -> e_perm(i)``, the mean at an input ``x`` with ``s`` ones takes one
value ``m_on(s)`` on the coordinates ``perm(i)`` with ``x_i = 1`` and a smaller value ``m_off(s)`` on the others.
Averaging ``N`` independently trained networks shrinks the noise by ``sqrt(N)``; rounding at the midpoint of the
two values (or setting the ``s`` largest coordinates to one) then recovers ``perm(x)`` exactly.
"""

from dataclasses import dataclass
from math import log

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve, cholesky
from scipy.linalg.blas import strmm
from scipy.special import gammaln
from scipy.stats import norm

from lib.validation import check_generator, check_positive_int

MAX_ENUMERATED_K = 14
ROUNDING_RULES = ("midpoint", "top_s")
DRAWS_PER_BATCH = 32


def _check_matrix(value: object, name: str) -> np.ndarray:
    """Return ``value`` as a finite 2-D float array."""
    array = np.asarray(value, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (points x features), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite numbers")
    return array


def _check_pair(X: object, Z: object) -> tuple[np.ndarray, np.ndarray]:
    X, Z = _check_matrix(X, "X"), _check_matrix(Z, "Z")
    if X.shape[1] != Z.shape[1]:
        raise ValueError(f"X and Z must have the same number of columns, got {X.shape[1]} and {Z.shape[1]}")
    return X, Z


def _arccos_terms(norm_x: np.ndarray, norm_z: np.ndarray, dot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NNGP kernel and the first-layer NTK term from norms and inner products (broadcast together)."""
    scale = norm_x * norm_z
    cosine = np.clip(np.divide(dot, scale, out=np.zeros(np.broadcast(dot, scale).shape), where=scale > 0), -1, 1)
    angle = np.arccos(cosine)
    nngp = scale / (2 * np.pi) * (np.sin(angle) + (np.pi - angle) * cosine)
    first_layer = dot * (np.pi - angle) / (2 * np.pi)
    return nngp, first_layer


def relu_nngp(X: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """NNGP kernel of ``a^T relu(W x) / sqrt(width)`` at infinite width, for all pairs of rows of X and Z.

    ``K(x, z) = |x| |z| (sin t + (pi - t) cos t) / (2 pi)`` with ``t`` the angle between x and z (the arc-cosine
    kernel of order one, halved); a zero vector has zero covariance with everything.
    """
    X, Z = _check_pair(X, Z)
    nngp, _ = _arccos_terms(np.linalg.norm(X, axis=1)[:, None], np.linalg.norm(Z, axis=1)[None, :], X @ Z.T)
    return nngp


def relu_ntk(X: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Neural tangent kernel of the same network with both layers trained.

    ``Theta(x, z) = K(x, z) + (x . z) (pi - t) / (2 pi)``: the readout contributes the NNGP kernel ``K``, the first
    layer the inner product weighted by the probability that a random unit is active on both inputs.
    """
    X, Z = _check_pair(X, Z)
    nngp, first_layer = _arccos_terms(np.linalg.norm(X, axis=1)[:, None], np.linalg.norm(Z, axis=1)[None, :],
                                      X @ Z.T)
    return nngp + first_layer


def ntk_gp_posterior(X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray,
                     full_covariance: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distribution of the trained network's output at ``X_test`` after gradient flow to convergence.

    With ``M = Theta(X_test, X_train) Theta(X_train, X_train)^-1`` the output is ``M Y_train + f0(X_test) -
    M f0(X_train)`` with ``f0 ~ GP(0, K)``: mean ``M Y_train`` and covariance
    ``K_tt - M K_rt - K_tr M^T + M K_rr M^T`` (the same for every output coordinate; coordinates are independent).

    Returns
    -------
    mean : (n_test, n_outputs) array
    variance : (n_test,) array of marginal variances, or the (n_test, n_test) covariance if ``full_covariance``.
    """
    X_train, X_test = _check_pair(X_train, X_test)
    Y_train = _check_matrix(Y_train, "Y_train")
    if Y_train.shape[0] != X_train.shape[0]:
        raise ValueError(f"Y_train must have one row per training input ({X_train.shape[0]}), got {Y_train.shape[0]}")
    ntk_train = relu_ntk(X_train, X_train)
    try:
        factor = cho_factor(ntk_train)
    except np.linalg.LinAlgError as error:
        raise ValueError("X_train gives a singular tangent kernel (repeated or zero training inputs?)") from error
    transfer = cho_solve(factor, relu_ntk(X_train, X_test)).T
    nngp_cross = relu_nngp(X_test, X_train)
    nngp_train = relu_nngp(X_train, X_train)
    mean = transfer @ Y_train
    correction = transfer @ nngp_train - 2 * nngp_cross
    if full_covariance:
        covariance = relu_nngp(X_test, X_test) + 0.5 * (correction @ transfer.T + transfer @ correction.T)
        return mean, 0.5 * (covariance + covariance.T)
    prior_variance = 0.5 * np.sum(X_test**2, axis=1)
    return mean, np.maximum(prior_variance + np.einsum("ij,ij->i", correction, transfer), 0.0)


def nonzero_binary_inputs(k: int) -> np.ndarray:
    """All ``2^k - 1`` nonzero vectors of {0, 1}^k as rows (row ``n - 1`` is the binary expansion of n)."""
    k = check_positive_int(k, "k")
    if k > MAX_ENUMERATED_K:
        raise ValueError(f"k must be <= {MAX_ENUMERATED_K} to enumerate all inputs, got {k}")
    return ((np.arange(1, 2**k)[:, None] >> np.arange(k)) & 1).astype(float)


def _check_permutation(perm: object, k: int | None = None) -> np.ndarray:
    perm = np.asarray(perm)
    if perm.ndim != 1 or not np.issubdtype(perm.dtype, np.integer) or sorted(perm.tolist()) != list(range(perm.size)):
        raise ValueError(f"perm must be a permutation of 0..k-1 as a 1-D integer array, got {perm!r}")
    if k is not None and perm.size != k:
        raise ValueError(f"perm must have length k = {k}, got {perm.size}")
    return perm


def permute_coordinates(X: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """The targets: coordinate ``i`` of each row of X moves to position ``perm[i]``."""
    X = _check_matrix(X, "X")
    perm = _check_permutation(perm, X.shape[1])
    Y = np.empty_like(X)
    Y[:, perm] = X
    return Y


@dataclass(frozen=True)
class WeightProfile:
    """Posterior of the network trained on ``e_i -> e_perm(i)``, by the Hamming weight ``s`` of a test input.

    ``mean_on[s - 1]``: mean output on a coordinate that should be 1; ``mean_off[s - 1]``: on one that should be 0
    (for ``s = k`` the value the formula gives, although no such coordinate exists); ``variance[s - 1]``: the
    variance of every output coordinate of one trained network.
    """

    k: int
    weights: np.ndarray
    mean_on: np.ndarray
    mean_off: np.ndarray
    variance: np.ndarray

    @property
    def gap(self) -> np.ndarray:
        """``mean_on - mean_off`` for each weight."""
        return self.mean_on - self.mean_off

    @property
    def threshold(self) -> np.ndarray:
        """The midpoint rounding threshold for each weight."""
        return 0.5 * (self.mean_on + self.mean_off)


def weight_profile(k: int) -> WeightProfile:
    """Closed-form posterior means and variance for every weight ``s = 1..k`` (any k, no enumeration).

    The training kernel is ``Theta = (1 - b) I + b 1 1^T`` with ``b = 1 / (2 pi)`` (inverted by Sherman-Morrison);
    the kernels between a test input with s ones and ``e_i`` take one value when ``x_i = 1`` and another when
    ``x_i = 0``, so every quantity is a sum of two kinds of terms.
    """
    k = check_positive_int(k, "k")
    s = np.arange(1, k + 1, dtype=float)
    b = 1 / (2 * np.pi)
    angle_on = np.arccos(1 / np.sqrt(s))
    nngp_on = (np.sqrt(s - 1) + np.pi - angle_on) / (2 * np.pi)
    ntk_on = (np.sqrt(s - 1) + 2 * (np.pi - angle_on)) / (2 * np.pi)
    nngp_off = ntk_off = np.sqrt(s) / (2 * np.pi)
    n_off = k - s
    # Theta^-1 v = (v - b sum(v) / (1 - b + k b)) / (1 - b) for the training kernel above.
    shift = b * (s * ntk_on + n_off * ntk_off) / (1 - b + k * b)
    weight_on, weight_off = (ntk_on - shift) / (1 - b), (ntk_off - shift) / (1 - b)
    # K_train = (1/2 - b) I + b 1 1^T; variance = K(x, x) - 2 v.k_x + v^T K_train v with v = Theta^-1 theta_x.
    v_sum = s * weight_on + n_off * weight_off
    v_squares = s * weight_on**2 + n_off * weight_off**2
    variance = s / 2 - 2 * (s * weight_on * nngp_on + n_off * weight_off * nngp_off) + (0.5 - b) * v_squares \
        + b * v_sum**2
    return WeightProfile(k=k, weights=s.astype(int), mean_on=weight_on, mean_off=weight_off,
                         variance=np.maximum(variance, 0.0))


def _check_outputs(outputs: object, inputs: object) -> tuple[np.ndarray, np.ndarray]:
    inputs = _check_matrix(inputs, "inputs")
    outputs = np.asarray(outputs, dtype=float)
    if outputs.shape[-2:] != inputs.shape:
        raise ValueError(f"outputs must end with the shape of inputs {inputs.shape}, got {outputs.shape}")
    if not np.all(np.isin(inputs, (0.0, 1.0))) or np.any(inputs.sum(axis=1) == 0):
        raise ValueError("inputs must be nonzero binary vectors (entries 0 or 1)")
    return outputs, inputs


def round_midpoint(outputs: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Round each coordinate at the midpoint between the analytic on and off means of the input's weight."""
    outputs, inputs = _check_outputs(outputs, inputs)
    weights = inputs.sum(axis=1).astype(int)
    thresholds = weight_profile(inputs.shape[1]).threshold[weights - 1]
    return (outputs > thresholds[:, None]).astype(int)


def round_top_s(outputs: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Set the ``s`` largest coordinates of each output to 1, ``s`` being the number of ones in the input."""
    outputs, inputs = _check_outputs(outputs, inputs)
    weights = inputs.sum(axis=1).astype(int)
    ranks = np.argsort(np.argsort(-outputs, axis=-1, kind="stable"), axis=-1, kind="stable")
    return (ranks < weights[:, None]).astype(int)


def _check_probability(target: object) -> float:
    if not isinstance(target, float | int) or not 0 < target < 1:
        raise ValueError(f"target must be a probability in (0, 1), got {target!r}")
    return float(target)


def _check_weight(s: object, k: int) -> int:
    s = check_positive_int(s, "s", minimum=2)
    if s > k:
        raise ValueError(f"s must be between 2 and k = {k} (s = 1 are the training inputs), got {s}")
    return s


def single_input_success(k: int, s: int, n_models: np.ndarray | int) -> np.ndarray:
    """P(midpoint rounding of the average of ``n_models`` networks is exact on one input of weight ``s``).

    Each of the k output coordinates is an independent Gaussian whose mean is half a gap away from the threshold:
    ``P = Phi(gap sqrt(N) / (2 sigma))^k``.
    """
    k = check_positive_int(k, "k")
    s = _check_weight(s, k)
    n_models = np.asarray(n_models, dtype=float)
    if np.any(n_models < 1):
        raise ValueError(f"n_models must be >= 1, got {n_models}")
    profile = weight_profile(k)
    z = profile.gap[s - 1] * np.sqrt(n_models) / (2 * np.sqrt(profile.variance[s - 1]))
    return norm.cdf(z) ** k


def single_input_ensemble_size(k: int, s: int | None = None, target: float = 0.9) -> int:
    """Smallest ensemble size N with ``single_input_success >= target`` for weight ``s`` (None: the worst s)."""
    k = check_positive_int(k, "k", minimum=2)
    target = _check_probability(target)
    profile = weight_profile(k)
    weights = range(2, k + 1) if s is None else [_check_weight(s, k)]
    z = norm.ppf(target ** (1 / k))
    return max(int(np.floor((2 * z) ** 2 * profile.variance[w - 1] / profile.gap[w - 1] ** 2)) + 1 for w in weights)


def union_bound_ensemble_size(k: int, target: float = 0.9) -> int:
    """Smallest N for which the union bound over all unseen inputs and coordinates guarantees ``target``.

    ``sum_s C(k, s) k Phi(-gap_s sqrt(N) / (2 sigma_s)) <= 1 - target`` (midpoint rounding); an upper bound on the
    ensemble size that needs no enumeration, so it runs to large k.
    """
    k = check_positive_int(k, "k", minimum=2)
    target = _check_probability(target)
    profile = weight_profile(k)
    s = np.arange(2, k + 1)
    log_counts = gammaln(k + 1) - gammaln(s + 1) - gammaln(k - s + 1) + log(k)
    ratio = profile.gap[s - 1] / (2 * np.sqrt(profile.variance[s - 1]))

    def log_failure(n: float) -> float:
        return float(np.logaddexp.reduce(log_counts + norm.logsf(ratio * np.sqrt(n))))

    high = 1
    while log_failure(high) > log(1 - target):
        high *= 2
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if log_failure(middle) > log(1 - target) else (low, middle)
    return high


def binary_posterior_covariance(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Joint posterior covariance over all unseen inputs (weight >= 2) of the network trained on the basis.

    The kernels between binary vectors depend only on their weights and overlap, so they are tabulated on the
    ``(k + 1)^3`` grid and looked up, which keeps k = 12 (4083 inputs) fast.

    Returns
    -------
    inputs : (2^k - 1 - k, k) array of the unseen inputs
    covariance : (n, n) array, shared by every output coordinate
    """
    inputs = nonzero_binary_inputs(k)
    inputs = inputs[inputs.sum(axis=1) >= 2]
    weights = inputs.sum(axis=1).astype(int)
    grid = np.arange(k + 1, dtype=float)
    nngp_table, first_layer_table = _arccos_terms(np.sqrt(grid)[:, None, None], np.sqrt(grid)[None, :, None],
                                                  grid[None, None, :])
    overlaps = (inputs.astype(np.float32) @ inputs.T.astype(np.float32)).astype(np.intp)
    overlaps += (k + 1) * ((k + 1) * weights[:, None] + weights[None, :])
    covariance = nngp_table.ravel()[overlaps]
    del overlaps
    on = inputs.astype(bool)
    basis_nngp = np.where(on, nngp_table[weights, 1, 1][:, None], nngp_table[weights, 1, 0][:, None])
    basis_ntk = basis_nngp + np.where(on, first_layer_table[weights, 1, 1][:, None], 0.0)
    eye = np.eye(k)
    transfer = np.linalg.solve(relu_ntk(eye, eye), basis_ntk.T).T
    # M K_rr M^T - K_tr M^T - M K_rt = B + B^T with B = (M K_rr / 2 - K_tr) M^T
    half = (transfer @ relu_nngp(eye, eye) / 2 - basis_nngp) @ transfer.T
    covariance += half
    covariance += half.T
    return inputs, covariance


def critical_ensemble_sizes(k: int, n_draws: int, rng: np.random.Generator, rule: str = "midpoint") -> np.ndarray:
    """Monte Carlo over the exact posterior: for each draw, the ensemble size above which it is exact everywhere.

    The average of N independent trained networks is ``mean + g / sqrt(N)`` with ``g`` one draw of the posterior
    fluctuation (jointly over all unseen inputs and all k coordinates). Rounding is exact at input x for every
    ``N > c(x)``, with ``c = (2 max(0, -sign * g) / gap)^2`` per coordinate for the midpoint rule and
    ``c = (max(0, max_off g - min_on g) / gap)^2`` for the top-s rule; the draw's critical size is the largest
    ``c`` over the inputs. ``P(exact on all inputs with N networks) = mean(critical < N)``. Without loss of
    generality perm is the identity (relabelling the outputs does not change the probability). The draws are
    sampled in float32, in batches.
    """
    k = check_positive_int(k, "k", minimum=2)
    n_draws = check_positive_int(n_draws, "n_draws")
    rng = check_generator(rng)
    if rule not in ROUNDING_RULES:
        raise ValueError(f"rule must be one of {ROUNDING_RULES}, got {rule!r}")
    inputs, covariance = binary_posterior_covariance(k)
    covariance[np.diag_indices_from(covariance)] += 1e-8 * np.trace(covariance) / len(covariance)
    factor = cholesky(covariance.astype(np.float32), lower=True, overwrite_a=True)
    del covariance
    profile = weight_profile(k)
    weights = inputs.sum(axis=1).astype(int)
    gap = profile.gap[weights - 1]
    on = inputs.astype(bool)
    critical = np.empty(n_draws)
    for start in range(0, n_draws, DRAWS_PER_BATCH):
        batch = min(DRAWS_PER_BATCH, n_draws - start)
        noise = strmm(1.0, factor, rng.standard_normal((len(inputs), batch * k), dtype=np.float32), lower=1)
        noise = noise.reshape(len(inputs), batch, k).transpose(1, 0, 2)
        if rule == "midpoint":
            wrong_way = np.where(on, -noise, noise).max(axis=2)
            per_input = (2 * np.maximum(wrong_way, 0) / gap) ** 2
        else:
            lowest_on = np.where(on, noise, np.inf).min(axis=2)
            highest_off = np.where(on, -np.inf, noise).max(axis=2)
            per_input = (np.maximum(highest_off - lowest_on, 0) / gap) ** 2
        critical[start:start + batch] = per_input.max(axis=1)
    return critical


def success_probability(critical: np.ndarray, n_models: np.ndarray | int) -> np.ndarray:
    """Fraction of Monte Carlo draws that are exact with ``n_models`` networks (``critical < N``)."""
    critical = np.sort(np.asarray(critical, dtype=float))
    return np.searchsorted(critical, np.asarray(n_models, dtype=float), side="left") / critical.size


def ensemble_size_for(critical: np.ndarray, target: float = 0.9) -> int:
    """Smallest integer N with ``success_probability(critical, N) >= target``."""
    target = _check_probability(target)
    critical = np.sort(np.asarray(critical, dtype=float))
    if critical.ndim != 1 or critical.size == 0:
        raise ValueError("critical must be a non-empty 1-D array")
    needed = int(np.ceil(target * critical.size))
    return int(np.floor(critical[needed - 1])) + 1


def init_wide_ensemble(k_in: int, k_out: int, width: int, n_models: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """First-layer weights (n_models, width, k_in) and readouts (n_models, width, k_out), i.i.d. N(0, 1)."""
    shapes = [(n_models, width, k_in), (n_models, width, k_out)]
    for name, value in [("k_in", k_in), ("k_out", k_out), ("width", width), ("n_models", n_models)]:
        check_positive_int(value, name)
    return tuple(torch.randn(shape, generator=generator) for shape in shapes)


def wide_relu_outputs(first: torch.Tensor, readout: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Outputs (n_models, n_points, k_out) of ``readout^T relu(first x) / sqrt(width)`` for every network."""
    hidden = torch.relu(torch.matmul(X, first.transpose(-1, -2)))
    return torch.matmul(hidden, readout) / first.shape[-2] ** 0.5


def train_wide_ensemble(k: int, perm: np.ndarray, width: int = 2048, n_models: int = 64, steps: int = 200,
                        lr: float = 1.0, seed: int = 0) -> np.ndarray:
    """Train ``n_models`` independent width-``width`` networks by full-batch gradient descent on ``e_i -> e_perm(i)``.

    The loss of each network is ``sum over the k examples and outputs of (f - y)^2 / 2``, so that gradient descent
    with ``lr`` follows the tangent-kernel dynamics ``df/dt = -Theta (f - y)``; in the wide limit it is stable for
    ``lr < 2 / (1 + (k - 1) / (2 pi))``, the inverse of half the largest eigenvalue of the training kernel. All
    networks are trained at once in batched tensors (float32).

    Returns
    -------
    (n_models, 2^k - 1, k) array of the trained outputs on ``nonzero_binary_inputs(k)``.
    """
    k = check_positive_int(k, "k", minimum=2)
    perm = _check_permutation(perm, k)
    check_positive_int(steps, "steps")
    if not isinstance(lr, float | int) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    generator = torch.Generator().manual_seed(int(seed))
    first, readout = init_wide_ensemble(k, k, width, n_models, generator)
    first.requires_grad_(True)
    readout.requires_grad_(True)
    train_inputs = torch.eye(k)
    train_targets = torch.from_numpy(permute_coordinates(np.eye(k), perm)).float()
    for _ in range(steps):
        loss = 0.5 * ((wide_relu_outputs(first, readout, train_inputs) - train_targets) ** 2).sum()
        grad_first, grad_readout = torch.autograd.grad(loss, (first, readout))
        with torch.no_grad():
            first -= lr * grad_first
            readout -= lr * grad_readout
    with torch.no_grad():
        test_inputs = torch.from_numpy(nonzero_binary_inputs(k)).float()
        return wide_relu_outputs(first, readout, test_inputs).double().numpy()
