"""Learning dynamics of deep linear networks (Saxe, McClelland and Ganguli, 2013).

A deep linear network maps x to W_D ... W_2 W_1 x. With whitened inputs (input covariance Sigma11 = I) the
population squared loss depends on the weights only through the end-to-end map W = W_D ... W_1:

    L(W) = 0.5 * ||Sigma31 - W||_F^2 + const,

where Sigma31 = E[y x^T] = U diag(s) V^T is the input-output correlation. Gradients are therefore exact
(no sampling). Gradient descent with learning rate ``lr`` is the Euler discretisation, one step per unit of
time, of the gradient flow ``tau dW_l/dt = -dL/dW_l`` with ``tau = 1 / lr``.

Throughout, ``depth`` is the number of weight matrices D (a "2-layer" network y = W_2 W_1 x has depth 2).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import integrate
from scipy.stats import ortho_group

from lib.validation import check_generator, check_positive_int, check_positive_real

INITS = ("gaussian", "orthogonal")
DIVERGED_LOSS_FACTOR = 1e6  # a run whose loss exceeds this multiple of its initial loss has diverged


def _check_matrix(value: object, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if array.ndim != 2 or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be a finite 2-D array, got shape {array.shape}")
    return array


def _check_weights(weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Return the layers as float arrays after checking that W_{l+1} W_l is defined for every l."""
    if isinstance(weights, np.ndarray) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise TypeError("weights must be a non-empty list of 2-D arrays [W_1, ..., W_D] (input layer first)")
    layers = [_check_matrix(w, f"weights[{i}]") for i, w in enumerate(weights)]
    for i in range(1, len(layers)):
        if layers[i].shape[1] != layers[i - 1].shape[0]:
            raise ValueError(
                f"weights[{i}] has {layers[i].shape[1]} columns "
                f"but weights[{i - 1}] has {layers[i - 1].shape[0]} rows"
            )
    return layers


@dataclass(frozen=True)
class LinearTask:
    """A linear teacher: targets = Sigma31 @ inputs, whitened inputs (inputs @ inputs.T / n_samples = I)."""

    inputs: np.ndarray  # (n_in, n_samples)
    targets: np.ndarray  # (n_out, n_samples)
    U: np.ndarray  # (n_out, n_out) left singular vectors of Sigma31
    singular_values: np.ndarray  # (min(n_in, n_out),) the mode strengths s_alpha
    V: np.ndarray  # (n_in, n_in) right singular vectors of Sigma31

    @property
    def correlation(self) -> np.ndarray:
        """The input-output correlation Sigma31 = U diag(s) V^T, shape (n_out, n_in)."""
        r = self.singular_values.size
        return (self.U[:, :r] * self.singular_values) @ self.V[:, :r].T


def make_task(
    n_in: int,
    n_out: int,
    singular_values: Sequence[float],
    rng: np.random.Generator,
    n_samples: int | None = None,
) -> LinearTask:
    """A random linear teacher Sigma31 = U diag(s) V^T with whitened inputs.

    ``singular_values`` (non-negative) are padded with zeros up to min(n_in, n_out); U and V are Haar-random
    orthogonal matrices. The ``n_samples`` (default n_in) inputs have exactly identity covariance.
    """
    n_in, n_out = check_positive_int(n_in, "n_in", 2), check_positive_int(n_out, "n_out", 2)
    check_generator(rng)
    n_samples = n_in if n_samples is None else check_positive_int(n_samples, "n_samples", n_in)
    strengths = np.asarray(singular_values, dtype=float)
    rank = min(n_in, n_out)
    if strengths.ndim != 1 or strengths.size == 0 or strengths.size > rank:
        raise ValueError(f"singular_values must be a 1-D list of 1 to min(n_in, n_out) = {rank} values")
    if not np.all(np.isfinite(strengths)) or np.any(strengths < 0):
        raise ValueError(f"singular_values must be finite and >= 0, got {strengths}")
    strengths = np.concatenate([strengths, np.zeros(rank - strengths.size)])
    U = ortho_group.rvs(n_out, random_state=rng)
    V = ortho_group.rvs(n_in, random_state=rng)
    orthonormal_rows = np.linalg.qr(rng.standard_normal((n_samples, n_in)))[0].T  # (n_in, n_samples)
    inputs = np.sqrt(n_samples) * orthonormal_rows
    correlation = (U[:, :rank] * strengths) @ V[:, :rank].T
    return LinearTask(inputs, correlation @ inputs, U, strengths, V)


def end_to_end(weights: Sequence[np.ndarray]) -> np.ndarray:
    """The end-to-end map W_D ... W_2 W_1 (``weights`` lists the input layer first)."""
    layers = _check_weights(weights)
    product = layers[0]
    for layer in layers[1:]:
        product = layer @ product
    return product


def population_loss(product: np.ndarray, correlation: np.ndarray) -> float:
    """0.5 * ||Sigma31 - W||_F^2: the whitened-input squared loss, up to a constant independent of W."""
    product, correlation = _check_matrix(product, "product"), _check_matrix(correlation, "correlation")
    if product.shape != correlation.shape:
        raise ValueError(f"product has shape {product.shape} but correlation has shape {correlation.shape}")
    return 0.5 * float(np.sum((correlation - product) ** 2))


def _gradients(layers: list[np.ndarray], correlation: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Gradients of the population loss and the end-to-end map; works on stacks of networks (leading axes)."""
    prefixes = [None]  # prefixes[l] = W_{l-1} ... W_1 (None stands for the identity)
    for layer in layers[:-1]:
        prefixes.append(layer if prefixes[-1] is None else layer @ prefixes[-1])
    product = layers[-1] if prefixes[-1] is None else layers[-1] @ prefixes[-1]
    back = correlation - product  # becomes (W_D ... W_{l+1})^T (Sigma31 - W) as l goes down
    gradients = [None] * len(layers)
    for index in range(len(layers) - 1, -1, -1):
        gradients[index] = -(back if prefixes[index] is None else back @ prefixes[index].mT)
        if index > 0:
            back = layers[index].mT @ back
    return gradients, product


def _check_correlation(layers: list[np.ndarray], correlation: object) -> np.ndarray:
    correlation = _check_matrix(correlation, "correlation")
    if correlation.shape != (layers[-1].shape[0], layers[0].shape[1]):
        raise ValueError(
            f"correlation has shape {correlation.shape}, "
            f"the network maps {layers[0].shape[1]} -> {layers[-1].shape[0]}"
        )
    return correlation


def layer_gradients(weights: Sequence[np.ndarray], correlation: np.ndarray) -> list[np.ndarray]:
    """dL/dW_l = -(W_D ... W_{l+1})^T (Sigma31 - W_D ... W_1) (W_{l-1} ... W_1)^T for every layer l."""
    layers = _check_weights(weights)
    return _gradients(layers, _check_correlation(layers, correlation))[0]


@dataclass(frozen=True)
class LinearRun:
    """A gradient-descent run: the loss at every step and the end-to-end map every ``record_every`` steps."""

    losses: np.ndarray  # (n_steps + 1,)
    steps: np.ndarray  # the recorded steps
    products: np.ndarray  # (len(steps), n_out, n_in)
    weights: list[np.ndarray]  # the final layers


def train_linear_net(
    weights: Sequence[np.ndarray], correlation: np.ndarray, lr: float, n_steps: int, record_every: int = 1
) -> LinearRun:
    """Full-batch gradient descent W_l <- W_l - lr dL/dW_l on the population loss, all layers at once."""
    layers = _check_weights(weights)
    correlation = _check_correlation(layers, correlation)
    lr = check_positive_real(lr, "lr")
    n_steps = check_positive_int(n_steps, "n_steps")
    record_every = check_positive_int(record_every, "record_every")
    losses, steps, products = np.empty(n_steps + 1), [], []
    for step in range(n_steps + 1):
        gradients, product = _gradients(layers, correlation)
        losses[step] = 0.5 * np.sum((correlation - product) ** 2)
        if step % record_every == 0 or step == n_steps:
            steps.append(step)
            products.append(product)
        if step < n_steps:
            layers = [layer - lr * gradient for layer, gradient in zip(layers, gradients, strict=True)]
    return LinearRun(losses, np.array(steps), np.array(products), layers)


def mode_strengths(product: np.ndarray, U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """u_alpha = U[:, alpha]^T W V[:, alpha]: how much of mode alpha the map W has learned.

    ``product`` may be one map (n_out, n_in) or a stack (..., n_out, n_in); returns (..., min(n_out, n_in)).
    """
    product = np.asarray(product, dtype=float)
    U, V = _check_matrix(U, "U"), _check_matrix(V, "V")
    if product.ndim < 2 or product.shape[-2:] != (U.shape[0], V.shape[0]):
        raise ValueError(f"product must end in shape ({U.shape[0]}, {V.shape[0]}), got {product.shape}")
    rank = min(U.shape[1], V.shape[1])
    return np.einsum("ia,...ij,ja->...a", U[:, :rank], product, V[:, :rank])


def _check_mode(s: object, u0: object) -> tuple[float, float]:
    return check_positive_real(s, "s"), check_positive_real(u0, "u0")


def analytic_mode_2layer(t: np.ndarray | float, s: float, u0: float, tau: float) -> np.ndarray:
    """The exact sigmoid u(t) = s e^{2st/tau} / (e^{2st/tau} - 1 + s/u0).

    It solves tau du/dt = 2u(s - u), u(0) = u0: one mode of a 2-layer network started balanced and decoupled.
    """
    s, u0 = _check_mode(s, u0)
    tau = check_positive_real(tau, "tau")
    growth = np.exp(np.minimum(2 * s * np.asarray(t, dtype=float) / tau, 700.0))
    return s * growth / (growth - 1 + s / u0)


def time_to_learn(s: float, u0: float, uf: float, tau: float) -> float:
    """Time for the 2-layer sigmoid to go from u0 to uf: tau/(2s) ln(uf (s - u0) / (u0 (s - uf)))."""
    s, u0 = _check_mode(s, u0)
    uf, tau = check_positive_real(uf, "uf"), check_positive_real(tau, "tau")
    if not (u0 < uf < s or s < uf < u0):
        raise ValueError(f"uf must lie strictly between u0={u0} and s={s}, got {uf}")
    return tau / (2 * s) * np.log(uf * (s - u0) / (u0 * (s - uf)))


def _check_depth(depth: object) -> float:
    if depth == np.inf:
        return np.inf
    return float(check_positive_int(depth, "depth", 2))


def deep_mode_rhs(u: np.ndarray | float, s: float, depth: int | float) -> np.ndarray:
    """tau du/dt = D u^(2 - 2/D) (s - u) for a mode u = a^D >= 0 carried by D >= 2 balanced layers a.

    With D = 2 this is the 2-layer equation tau du/dt = 2u(s - u).
    """
    s = check_positive_real(s, "s")
    depth = _check_depth(depth)
    if depth == np.inf:
        raise ValueError("depth must be a finite int >= 2 for deep_mode_rhs")
    u = np.asarray(u, dtype=float)
    if np.any(u < 0):
        raise ValueError("u must be >= 0 (a product of D equal layer strengths)")
    return depth * u ** (2 - 2 / depth) * (s - u)


def deep_mode_trajectory(t: np.ndarray, s: float, u0: float, depth: int, tau: float) -> np.ndarray:
    """u(t) for the deep reduction tau du/dt = D u^(2-2/D) (s - u), u(0) = u0, integrated with solve_ivp."""
    s, u0 = _check_mode(s, u0)
    tau = check_positive_real(tau, "tau")
    times = np.asarray(t, dtype=float)
    if times.ndim != 1 or times.size == 0 or np.any(np.diff(times) < 0) or times[0] < 0:
        raise ValueError("t must be a non-empty, non-decreasing 1-D array of times >= 0")
    deep_mode_rhs(u0, s, depth)  # validates depth
    solution = integrate.solve_ivp(
        lambda _, u: deep_mode_rhs(np.maximum(u, 0.0), s, depth) / tau,
        (0.0, float(times[-1])),
        [u0],
        t_eval=times,
        method="LSODA",
        rtol=1e-9,
        atol=1e-12,
    )
    return solution.y[0]


def deep_time_to_learn(s: float, u0: float, uf: float, depth: int | float, tau: float) -> float:
    """Time for the deep reduction to go from u0 to uf: tau/D * integral of du / (u^(2-2/D) (s - u)).

    With ``depth=np.inf``, ``tau`` stands for tau/D (fixed when the learning rate shrinks like 1/D) and the
    result is the finite limit tau/D * integral of du / (u^2 (s - u)).
    """
    s, u0 = _check_mode(s, u0)
    uf, tau = check_positive_real(uf, "uf"), check_positive_real(tau, "tau")
    depth = _check_depth(depth)
    if not (u0 < uf < s or s < uf < u0):
        raise ValueError(f"uf must lie strictly between u0={u0} and s={s}, got {uf}")
    exponent = 2.0 if depth == np.inf else 2 - 2 / depth
    # with u = e^x the integrand e^{(1 - exponent) x} / (s - e^x) stays smooth even for a tiny u0
    integral, _ = integrate.quad(
        lambda x: np.exp((1 - exponent) * x) / (s - np.exp(x)), np.log(u0), np.log(uf), epsabs=0, epsrel=1e-11
    )
    scale = 1.0 if depth == np.inf else depth
    return tau / scale * integral


def decoupled_gradient_descent(
    s: np.ndarray | float, a0: np.ndarray | float, depth: int, lr: float, n_steps: int
) -> np.ndarray:
    """Gradient descent on balanced decoupled modes: a <- a + lr a^(D-1) (s - a^D), for each mode at once.

    This is exactly what full gradient descent does from ``init_decoupled`` (every mode, every layer), written
    for the scalar layer strengths a. ``s`` and ``a0`` broadcast together; returns u = a^D, shape
    (n_steps + 1, *broadcast shape).
    """
    depth = check_positive_int(depth, "depth")
    lr, n_steps = check_positive_real(lr, "lr"), check_positive_int(n_steps, "n_steps")
    s, a = np.broadcast_arrays(np.asarray(s, dtype=float), np.asarray(a0, dtype=float))
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(a))):
        raise ValueError("s and a0 must be finite")
    a = a.copy()
    strengths = np.empty((n_steps + 1, *a.shape))
    for step in range(n_steps + 1):
        product = a**depth
        strengths[step] = product
        a += lr * a ** (depth - 1) * (s - product)
    return strengths


def init_decoupled(
    U: np.ndarray,
    V: np.ndarray,
    a0: float | Sequence[float],
    depth: int,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Balanced, decoupled layers: every mode alpha has strength a0[alpha] in each of the ``depth`` layers.

    W_1 = R_1 diag(a0) V^T, W_l = R_l diag(a0) R_{l-1}^T, W_D = U diag(a0) R_{D-1}^T, so the end-to-end map
    is U diag(a0^D) V^T. The hidden bases R_l are the identity, or Haar-random orthogonal if ``rng`` is given.
    The hidden width is the number of modes, min(n_out, n_in).
    """
    U, V = _check_matrix(U, "U"), _check_matrix(V, "V")
    depth = check_positive_int(depth, "depth")
    rank = min(U.shape[1], V.shape[1])
    strengths = (
        np.broadcast_to(np.asarray(a0, dtype=float), (rank,)) if np.ndim(a0) == 0 else np.asarray(a0, float)
    )
    if strengths.shape != (rank,) or not np.all(np.isfinite(strengths)):
        raise ValueError(
            f"a0 must be a finite number or {rank} numbers (one per mode), got shape {strengths.shape}"
        )
    if rng is None:
        bases = [np.eye(rank) for _ in range(depth - 1)]
    else:
        check_generator(rng)
        bases = [ortho_group.rvs(rank, random_state=rng) for _ in range(depth - 1)]
    outer = [V[:, :rank]] + bases + [U[:, :rank]]  # outer[i]: the basis between layers i and i + 1
    return [(outer[index + 1] * strengths) @ outer[index].T for index in range(depth)]


def init_gaussian(n: int, depth: int, rng: np.random.Generator, gain: float = 1.0) -> list[np.ndarray]:
    """``depth`` square n x n layers with independent N(0, gain^2 / n) entries (scaled Gaussian init)."""
    n, depth = check_positive_int(n, "n"), check_positive_int(depth, "depth")
    gain = check_positive_real(gain, "gain")
    check_generator(rng)
    return [rng.normal(0.0, gain / np.sqrt(n), size=(n, n)) for _ in range(depth)]


def init_orthogonal(n: int, depth: int, rng: np.random.Generator, gain: float = 1.0) -> list[np.ndarray]:
    """``depth`` square layers gain * Q_l with Q_l Haar-random orthogonal n x n matrices."""
    n, depth = check_positive_int(n, "n", 2), check_positive_int(depth, "depth")
    gain = check_positive_real(gain, "gain")
    check_generator(rng)
    return [gain * ortho_group.rvs(n, random_state=rng) for _ in range(depth)]


def init_small_random(n: int, depth: int, scale: float, rng: np.random.Generator) -> list[np.ndarray]:
    """``depth`` square n x n layers with independent N(0, scale^2) entries (a small random start)."""
    n, depth = check_positive_int(n, "n"), check_positive_int(depth, "depth")
    scale = check_positive_real(scale, "scale")
    check_generator(rng)
    return [rng.normal(0.0, scale, size=(n, n)) for _ in range(depth)]


def jacobian_spectrum(weights: Sequence[np.ndarray]) -> np.ndarray:
    """Singular values (descending) of the input-output Jacobian, which for a linear net is W_D ... W_1.

    In float64, values below about 1e-16 times the largest are rounding noise rather than the true values.
    """
    return np.linalg.svd(end_to_end(weights), compute_uv=False)


@dataclass(frozen=True)
class DepthSweep:
    """Steps to reach ``criterion`` x the initial loss, for every depth and learning rate (inf: never)."""

    depths: np.ndarray
    lrs: np.ndarray
    steps: np.ndarray  # (n_depths, n_lrs)
    losses: np.ndarray  # (n_depths, n_lrs, max_steps + 1), nan after a run stopped or diverged

    @property
    def best_steps(self) -> np.ndarray:
        """Steps at the best learning rate of the grid, per depth."""
        return self.steps.min(axis=1)

    @property
    def best_lr_index(self) -> np.ndarray:
        """Index of the best learning rate per depth: the fastest, or the lowest loss if none reached."""
        final = np.nan_to_num(np.fmin.reduce(self.losses, axis=2), nan=np.inf)
        reached = np.isfinite(self.steps)
        return np.where(reached.any(axis=1), np.argmin(self.steps, axis=1), np.argmin(final, axis=1))


def _descend_until(
    layers: list[np.ndarray], correlation: np.ndarray, lrs: np.ndarray, criterion: float, max_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient descent on a stack of copies of one network, one learning rate per copy.

    Returns the first step at which each copy's loss is <= criterion x its initial loss (inf if never within
    ``max_steps`` or diverged) and the loss curves (nan once a copy has stopped).
    """
    stack = [np.repeat(layer[None], lrs.size, axis=0) for layer in layers]
    losses = np.full((lrs.size, max_steps + 1), np.nan)
    steps = np.full(lrs.size, np.inf)
    active = np.arange(lrs.size)  # the copies still running
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging copy may overflow before it is dropped
        for step in range(max_steps + 1):
            gradients, product = _gradients(stack, correlation)
            loss = 0.5 * np.sum((correlation - product) ** 2, axis=(-2, -1))
            losses[active, step] = loss
            initial = losses[active, 0]
            reached = loss <= criterion * initial
            steps[active[reached]] = step
            keep = ~reached & (loss <= DIVERGED_LOSS_FACTOR * initial)
            if not keep.any() or step == max_steps:
                break
            if not keep.all():
                active = active[keep]
                stack = [layer[keep] for layer in stack]
                gradients = [gradient[keep] for gradient in gradients]
            rates = lrs[active, None, None]
            for layer, gradient in zip(stack, gradients, strict=True):
                layer -= rates * gradient
    return steps, losses


def depth_sweep(
    correlation: np.ndarray,
    depths: Sequence[int],
    init: str,
    lrs: Sequence[float],
    seed: int,
    criterion: float = 1e-2,
    max_steps: int = 2000,
) -> DepthSweep:
    """Steps of gradient descent to reach ``criterion`` x the initial loss, per depth and learning rate.

    Square networks of width n (``correlation`` is n x n) start from ``init`` in {"gaussian" (variance
    1/n), "orthogonal"}; each depth draws one start (seeded by ``seed`` and the depth), used for every rate.
    """
    correlation = _check_matrix(correlation, "correlation")
    n = correlation.shape[0]
    if correlation.shape != (n, n) or n < 2:
        raise ValueError(f"correlation must be square n x n with n >= 2, got shape {correlation.shape}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    depth_list = [check_positive_int(d, "depths[i]") for d in depths]
    rate_list = [check_positive_real(lr, "lrs[i]") for lr in lrs]
    if not depth_list or not rate_list:
        raise ValueError("depths and lrs must be non-empty")
    check_positive_int(seed, "seed", 0)
    criterion = check_positive_real(criterion, "criterion")
    if criterion >= 1:
        raise ValueError(f"criterion must be in (0, 1), got {criterion}")
    max_steps = check_positive_int(max_steps, "max_steps")
    initialiser = init_gaussian if init == "gaussian" else init_orthogonal
    steps, losses = [], []
    for depth in depth_list:
        layers = initialiser(n, depth, np.random.default_rng([seed, depth]))
        depth_steps, depth_losses = _descend_until(
            layers, correlation, np.array(rate_list), criterion, max_steps
        )
        steps.append(depth_steps)
        losses.append(depth_losses)
    return DepthSweep(np.array(depth_list), np.array(rate_list), np.array(steps), np.array(losses))
