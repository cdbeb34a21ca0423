"""Categorical sampling with the Gumbel-max trick, and what a finite-precision uniform does to it.

MDLM-style samplers draw one category from unnormalised weights ``q`` as

    u ~ U[0, 1),   E = eps - log(u + eps),   index = argmax_i q_i / E_i ,

which is exact when every ``E_i`` is an Exp(1) variable: ``E_i / q_i`` is then an exponential "arrival time"
with rate ``q_i`` and the first arrival is category ``i`` with probability ``q_i / sum(q)`` (the exponential-race
form of the Gumbel-max trick). A float32 ``torch.rand`` returns multiples of ``2**-24``, so ``E`` only takes the
grid values ``E_m ~ m * 2**-24 + eps`` near zero (``u = 1 - m * 2**-24``), each with mass ``2**-24``. Small
arrival times are rounded *up*: every category loses about half a grid cell of win probability per draw, and
a category whose share is far below ``2**-24`` almost never wins.

``race_probs`` gives the win probabilities of this race exactly up to quadrature; ``unmasking_race_probs`` is
a fast version for the race an MDLM sampler runs at every masked position (many tokens against one [MASK]
entry), used to follow the sampler over thousands of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.optimize import minimize_scalar
from scipy.special import roots_legendre

from lib.validation import check_positive_int

__all__ = [
    "NOISE_MODELS",
    "noise_dtype",
    "gumbel_argmax",
    "race_probs",
    "unmasking_race_probs",
    "temperature_scaled",
    "entropy",
    "effective_temperature",
]

NOISE_MODELS = ("exact", "truncated", "grid")
_MEMORY_BUDGET = 4_000_000  # float64 entries per vectorised block


def _check_weights(q: object, name: str = "q") -> np.ndarray:
    q = np.asarray(q, dtype=float)
    if q.ndim != 1 or q.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {q.shape}")
    if not np.all(np.isfinite(q)) or np.any(q < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    if q.sum() <= 0:
        raise ValueError(f"{name} must have a positive sum")
    return q


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise TypeError(f"bits must be an int in [1, 53], got {type(bits).__name__}")
    if not 1 <= bits <= 53:
        raise ValueError(f"bits must be in [1, 53], got {bits}")
    return int(bits)


def _check_eps(eps: object) -> float:
    eps = float(eps)
    if not 0.0 <= eps < 1e-3:
        raise ValueError(f"eps must be in [0, 1e-3), got {eps}")
    return eps



def noise_dtype(bits: int) -> type[np.floating]:
    """The arithmetic of a uniform with ``bits`` random bits: float32 up to 24 bits (``torch.rand`` in
    float32), float64 above (53 bits in float64)."""
    return np.float32 if _check_bits(bits) <= 24 else np.float64


def gumbel_argmax(
    q: np.ndarray,
    n_samples: int,
    rng: np.random.Generator,
    *,
    bits: int | None = 24,
    eps: float = 1e-10,
) -> np.ndarray:
    """Draw ``n_samples`` categories with MDLM's sampler ``argmax_i q_i / (eps - log(u_i + eps))``.

    ``u`` is uniform on the grid ``{0, 2**-bits, ..., 1 - 2**-bits}`` and the arithmetic is done in
    ``noise_dtype(bits)``; ``bits=None`` uses exact Exp(1) variables instead (the ideal sampler).
    Returns an int array of shape ``(n_samples,)``.
    """
    q = _check_weights(q)
    n_samples = check_positive_int(n_samples, "n_samples")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    eps = _check_eps(eps)
    dtype = np.float64 if bits is None else noise_dtype(bits)
    weights = q.astype(dtype)
    chunk = max(1, _MEMORY_BUDGET // q.size)
    out = np.empty(n_samples, dtype=np.int64)
    for start in range(0, n_samples, chunk):
        size = (min(chunk, n_samples - start), q.size)
        if bits is None:
            noise = rng.exponential(size=size)
        else:
            u = (rng.integers(0, 2**bits, size=size) * 2.0**-bits).astype(dtype)
            noise = dtype(eps) - np.log(u + dtype(eps))
        out[start : start + size[0]] = np.argmax(weights / noise, axis=1)
    return out


@dataclass(frozen=True)
class _Noise:
    """A noise law for ``E``: explicit atoms, plus a continuous part written through ``v = P(E <= e)``.

    The continuous part covers ``v`` in ``[v_start, v_end]``; ``energy(log1mv)`` maps ``log(1 - v)`` to ``e``.
    """

    kind: str
    bits: int
    eps: float
    atoms: np.ndarray
    masses: np.ndarray
    log1mv_start: float
    log1mv_end: float

    @property
    def cell(self) -> float:
        return 2.0**-self.bits

    @property
    def eps_inside(self) -> float:
        """The ``eps`` inside the log survives only if ``1 + eps != 1`` in the arithmetic."""
        dtype = noise_dtype(self.bits)
        return self.eps if dtype(1) + dtype(self.eps) != dtype(1) else 0.0

    def energy(self, log1mv: np.ndarray) -> np.ndarray:
        if self.kind == "truncated":
            return -log1mv
        with np.errstate(divide="ignore"):
            return self.eps - np.log(np.exp(log1mv) + self.eps_inside)

    def cdf_position(self, x: np.ndarray) -> np.ndarray:
        """``v(x)``: the fraction of uniforms whose (continuous) ``E`` is at most ``x``."""
        return -np.expm1(self.eps - x) + self.eps_inside

    def log_survival(self, x: np.ndarray) -> np.ndarray:
        """``log P(E > x)``, exactly (a staircase for the grid)."""
        with np.errstate(divide="ignore"):
            if self.kind == "truncated":
                return np.where(x < self.atoms[0], 0.0, -x)
            cells_below = np.clip(np.floor(self.cdf_position(x) / self.cell), 0, 2**self.bits - 1)
            return np.where(x >= self.atoms[-1], -np.inf, np.log1p(-cells_below * self.cell))

    def log_survival_smooth(self, x: np.ndarray) -> np.ndarray:
        """A smooth stand-in for the grid staircase with the same average over each cell (exact in the first
        cell, where it matters most); used for the crowd of many small competitors."""
        v = self.cdf_position(x)
        return np.where(v < self.cell, 0.0, np.log(np.maximum(1.0 - v, 0.0) + self.cell / 2))


def _noise(kind: str, bits: int, eps: float, n_atoms: int) -> _Noise:
    cell = 2.0**-bits
    if kind == "truncated":
        return _Noise(kind, bits, eps, np.array([cell]), np.array([-np.expm1(-cell)]), -cell, -np.inf)
    dtype = noise_dtype(bits)
    n_cells = 2**bits
    n_explicit = min(n_atoms, n_cells - 1)
    m = np.append(np.arange(1, n_explicit + 1), n_cells)  # u = 1 - m * cell; the last one is u = 0
    u = ((n_cells - m) * cell).astype(dtype)
    atoms = (dtype(eps) - np.log(u + dtype(eps))).astype(np.float64)
    masses = np.full(m.size, cell)
    start = np.log1p(-(n_explicit + 0.5) * cell)
    end = np.log(0.5 * cell) if n_explicit < n_cells - 1 else start
    return _Noise(kind, bits, eps, atoms, masses, start, end)


def _tail_nodes(law: _Noise, own: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Gauss-Legendre nodes for the continuous part of the noise, in ``s = (1 - v)**(1 / y)`` for shares
    ``own`` (a column): ``s``, ``log s``, the noise values there, and the half-width of each ``s`` interval."""
    with np.errstate(divide="ignore", under="ignore"):
        s_start = np.exp(law.log1mv_start / own)
        s_end = np.exp(law.log1mv_end / own)
    s = s_end + (s_start - s_end) * (nodes + 1) / 2
    with np.errstate(divide="ignore"):
        log_s = np.log(s)
    return s, log_s, law.energy(own * log_s), (s_start - s_end) / 2


def race_probs(
    q: np.ndarray,
    noise: str = "grid",
    *,
    bits: int = 24,
    eps: float = 1e-10,
    n_atoms: int = 256,
    n_nodes: int = 64,
) -> np.ndarray:
    """Probability that each index wins ``argmax_i q_i / E_i`` with independent noises ``E_i``.

    ``noise``: ``"exact"`` (Exp(1); the answer is ``q / sum(q)``), ``"truncated"`` (``max(Exp(1), 2**-bits)``,
    a common but wrong model of float32) or ``"grid"`` (MDLM's ``eps - log(u + eps)`` with ``u`` on the
    ``2**-bits`` grid, computed in ``noise_dtype(bits)``). Index ``i`` wins when every other arrival time
    ``E_j / q_j`` comes later, so ``P(i) = E[prod_{j != i} P(E_j > y_j E_i / y_i)]`` with shares ``y = q / sum(q)``.
    The expectation over ``E_i`` is an exact sum over its first ``n_atoms`` grid values (and ``u = 0``), plus
    Gauss-Legendre (``n_nodes``) over the rest in the variable ``s = (1 - v)**(1 / y_i)``, which makes the
    exact-Exp part flat. Costs ``O(V**2 (n_atoms + n_nodes))``; ties (probability at most ``2**-bits`` per
    pair) are ignored.
    """
    q = _check_weights(q)
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
    bits = _check_bits(bits)
    eps = _check_eps(eps)
    n_atoms = check_positive_int(n_atoms, "n_atoms")
    n_nodes = check_positive_int(n_nodes, "n_nodes")
    shares = q / q.sum()
    if noise == "exact":
        return shares
    law = _noise(noise, bits, eps, n_atoms)
    nodes, weights = roots_legendre(n_nodes)
    active = np.flatnonzero(shares > 0)
    n_points = law.atoms.size + n_nodes
    chunk = max(1, _MEMORY_BUDGET // (n_points * shares.size))
    probs = np.zeros_like(shares)
    for start in range(0, active.size, chunk):
        index = active[start : start + chunk]
        own = shares[index][:, None]
        s, log_s, tail_energy, half_width = _tail_nodes(law, own, nodes)
        times = np.concatenate([law.atoms[None, :] / own, tail_energy / own], axis=1)
        log_surv = law.log_survival(times[:, :, None] * shares[None, None, :])
        log_surv[np.arange(index.size), :, index] = 0.0  # an entry does not race itself
        log_others = log_surv.sum(axis=2)
        head = np.exp(log_others[:, : law.atoms.size]) @ law.masses
        with np.errstate(invalid="ignore", over="ignore"):
            flat = np.exp(log_others[:, law.atoms.size :] - (1 - own) * log_s)
        flat = np.where(s > 0, flat, 0.0)
        tail = own[:, 0] * (flat @ weights) * half_width[:, 0]
        probs[index] = head + tail
    return probs


def unmasking_race_probs(
    p: np.ndarray,
    mask_weights: np.ndarray,
    *,
    bits: int = 24,
    eps: float = 1e-10,
    n_atoms: int = 64,
    n_nodes: int = 40,
    n_shares: int = 96,
) -> np.ndarray:
    """Win probabilities of the tokens in MDLM's per-position race ``q = [p_1, ..., p_V, w]`` (``w`` for
    [MASK]), under the float grid noise, for every weight in ``mask_weights``; ``p`` is normalised to sum 1.

    Same sum as ``race_probs(noise="grid")``, made fast for large V: the [MASK] entry keeps its exact
    staircase, the crowd of tokens uses the cell-averaged survival (tabulated once), and since a token's win
    probability then depends on the token only through its weight, it is computed on ``n_shares`` weights
    and interpolated. Returns an array of shape ``(len(mask_weights), V)``.
    """
    p = _check_weights(p, "p")
    p = p / p.sum()
    mask_weights = np.atleast_1d(np.asarray(mask_weights, dtype=float))
    if mask_weights.ndim != 1 or not np.all(np.isfinite(mask_weights)) or np.any(mask_weights < 0):
        raise ValueError("mask_weights must be a 1-D array of finite, non-negative numbers")
    bits = _check_bits(bits)
    eps = _check_eps(eps)
    n_atoms = check_positive_int(n_atoms, "n_atoms")
    n_nodes = check_positive_int(n_nodes, "n_nodes")
    n_shares = check_positive_int(n_shares, "n_shares", minimum=4)
    law = _noise("grid", bits, eps, n_atoms)
    positive = p[p > 0]
    # Crowd term Phi(z) = sum_j log S(p_j z) + z, smooth and small; z beyond 60 has weight below exp(-60).
    z_grid = np.geomspace(law.cell / 4, 60.0, 400)
    block = max(1, _MEMORY_BUDGET // positive.size)
    blocks = [z_grid[i : i + block] for i in range(0, z_grid.size, block)]
    crowd = np.concatenate([law.log_survival_smooth(np.outer(z, positive)).sum(axis=1) for z in blocks]) + z_grid

    def log_crowd(z: np.ndarray) -> np.ndarray:
        return np.interp(np.log(z), np.log(z_grid), crowd) - z

    grid = np.geomspace(positive.min(), positive.max(), n_shares)[:, None]  # token weights
    nodes, weights = roots_legendre(n_nodes)
    out = np.zeros((mask_weights.size, p.size))
    for row, w in enumerate(mask_weights):
        total = 1.0 + w
        own = grid / total  # shares
        z = law.atoms[None, :] / grid
        head = np.exp(law.log_survival(w * z) + log_crowd(z) - law.log_survival_smooth(law.atoms)) @ law.masses
        s, log_s, energy, half_width = _tail_nodes(law, own, nodes)
        z = energy / grid
        with np.errstate(invalid="ignore", over="ignore"):
            flat = np.exp(
                law.log_survival(w * z) + log_crowd(z) - law.log_survival_smooth(energy) - (1 - own) * log_s
            )
        flat = np.where(s > 0, flat, 0.0)
        tail = own[:, 0] * (flat @ weights) * half_width[:, 0]
        ratio = (head + tail) / own[:, 0]  # win probability relative to the exact share
        shares = p / total
        if positive.min() == positive.max():
            out[row] = ratio[0] * shares
        else:
            spline = CubicSpline(np.log(grid[:, 0]), ratio)
            out[row] = np.where(p > 0, np.clip(spline(np.log(np.where(p > 0, p, 1))), 0, None), 0) * shares
    return out


def temperature_scaled(p: np.ndarray, tau: float) -> np.ndarray:
    """The distribution ``p**(1/tau) / sum(p**(1/tau))`` (sampling temperature ``tau`` > 0)."""
    p = _check_weights(p, "p")
    tau = float(tau)
    if not tau > 0 or not np.isfinite(tau):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    with np.errstate(divide="ignore"):
        logits = np.log(p) / tau
    logits -= logits.max()
    scaled = np.exp(logits)
    return scaled / scaled.sum()


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats of a probability vector (zeros contribute nothing)."""
    p = _check_weights(p, "p")
    p = p / p.sum()
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum())


def effective_temperature(p_base: np.ndarray, p_sampled: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)
                          ) -> float:
    """The temperature ``T`` whose ``temperature_scaled(p_base, T)`` is closest to ``p_sampled`` in
    ``KL(p_sampled || temperature_scaled(p_base, T))`` (a bounded 1-D minimisation)."""
    p_base = _check_weights(p_base, "p_base")
    p_sampled = _check_weights(p_sampled, "p_sampled")
    if p_base.shape != p_sampled.shape:
        raise ValueError(f"p_base and p_sampled must have the same shape, got {p_base.shape} and {p_sampled.shape}")
    if np.any((p_base == 0) & (p_sampled > 0)):
        raise ValueError("p_sampled puts mass where p_base is zero: no temperature can explain it")
    low, high = map(float, bounds)
    if not 0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    target = p_sampled / p_sampled.sum()
    support = target > 0
    log_base = np.log(p_base[support])

    with np.errstate(divide="ignore"):
        log_all = np.log(p_base)

    def kl(temperature: float) -> float:
        logits = log_all / temperature
        top = logits.max()
        log_norm = top + np.log(np.exp(logits - top).sum())
        return float(np.sum(target[support] * (np.log(target[support]) - (log_base / temperature - log_norm))))

    return float(minimize_scalar(kl, bounds=(low, high), method="bounded", options={"xatol": 1e-9}).x)
