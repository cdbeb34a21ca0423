"""Measures of the learning regime: how "rich" (feature-changing) or "lazy" (kernel-like) training was.

Lazy learning keeps a network close to its linearisation around the initial weights: the weights move little,
the neural tangent kernel and the hidden representation stay aligned with their initial values. Rich learning
moves them. The spectrum measures (effective rank, participation ratio) describe the initial connectivity.
"""

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap


def _matrix(name: str, value: object) -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _nonzero_singular_values(name: str, matrix: object) -> np.ndarray:
    singular_values = np.linalg.svd(_matrix(name, matrix), compute_uv=False)
    if singular_values[0] == 0:
        raise ValueError(f"{name} must not be the zero matrix")
    return singular_values


def effective_rank(matrix: np.ndarray) -> float:
    """Effective rank of Roy & Vetterli (2007): exp of the Shannon entropy of the normalised singular values.

    With p_i = s_i / sum_j s_j, erank = exp(-sum_i p_i log p_i): N for the N x N identity, 1 for rank 1.
    """
    s = _nonzero_singular_values("matrix", matrix)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def participation_ratio(matrix: np.ndarray) -> float:
    """Participation ratio of the eigenvalues lambda_i = s_i^2 of W W^T: (sum lambda)^2 / sum lambda^2."""
    squared = _nonzero_singular_values("matrix", matrix) ** 2
    return float(squared.sum() ** 2 / np.sum(squared**2))


def weight_change(initial: np.ndarray, final: np.ndarray) -> float:
    """Frobenius norm ||final - initial||_F of the change of a weight matrix."""
    initial = _matrix("initial", initial)
    final = _matrix("final", final)
    if initial.shape != final.shape:
        raise ValueError(f"initial and final must have the same shape, got {initial.shape} and {final.shape}")
    return float(np.linalg.norm(final - initial))


def kernel_alignment(kernel_a: np.ndarray, kernel_b: np.ndarray) -> float:
    """Alignment <K_a, K_b>_F / (||K_a||_F ||K_b||_F) of two kernel matrices; 1 means equal up to scale."""
    kernel_a = _matrix("kernel_a", kernel_a)
    kernel_b = _matrix("kernel_b", kernel_b)
    if kernel_a.shape != kernel_b.shape or kernel_a.shape[0] != kernel_a.shape[1]:
        raise ValueError(f"kernels must be square with equal shapes, got {kernel_a.shape}, {kernel_b.shape}")
    norm_a, norm_b = np.linalg.norm(kernel_a), np.linalg.norm(kernel_b)
    if norm_a == 0 or norm_b == 0:
        raise ValueError("kernels must not be zero matrices")
    return float(np.sum(kernel_a * kernel_b) / (norm_a * norm_b))


def representation_alignment(hidden_a: np.ndarray, hidden_b: np.ndarray) -> float:
    """Kernel alignment of the Gram matrices H_a H_a^T and H_b H_b^T (rows: trials, columns: units)."""
    hidden_a = _matrix("hidden_a", hidden_a)
    hidden_b = _matrix("hidden_b", hidden_b)
    if hidden_a.shape[0] != hidden_b.shape[0]:
        raise ValueError(f"hidden_a, hidden_b need equal rows (trials): {hidden_a.shape}, {hidden_b.shape}")
    return kernel_alignment(hidden_a @ hidden_a.T, hidden_b @ hidden_b.T)


def sign_similarity(activity_a: np.ndarray, activity_b: np.ndarray) -> float:
    """Fraction of entries whose sign (-1, 0 or +1) is the same in both activity arrays."""
    activity_a = np.asarray(activity_a, dtype=float)
    activity_b = np.asarray(activity_b, dtype=float)
    if activity_a.shape != activity_b.shape or activity_a.size == 0:
        raise ValueError(f"activities need equal, non-empty shapes: {activity_a.shape}, {activity_b.shape}")
    return float(np.mean(np.sign(activity_a) == np.sign(activity_b)))


def _first_output(result: object) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


def tangent_kernel(net: nn.Module, inputs: torch.Tensor, *, wrt: str = "recurrent_weights") -> np.ndarray:
    """Empirical neural tangent kernel K = J J^T with J = d(outputs) / d(parameter ``wrt``).

    ``net(inputs)`` must return the outputs (or a tuple whose first item is them) of shape (time, trials, k)
    for ``inputs`` of shape (time, trials, ...), each trial computed independently of the others. Rows of J
    are ordered (trial, time, output), so K has size trials * time * k. J is built per trial with torch.func
    (``vmap`` over trials of ``jacrev``), exploiting that a trial's outputs do not depend on other trials.
    """
    parameters = dict(net.named_parameters())
    if wrt not in parameters:
        raise ValueError(f"wrt must name a parameter of net, one of {sorted(parameters)}, got {wrt!r}")
    if inputs.ndim < 2:
        raise ValueError(f"inputs must have shape (time, trials, ...), got {tuple(inputs.shape)}")
    fixed = {name: p.detach() for name, p in parameters.items() if name != wrt}

    def one_trial_outputs(weight: torch.Tensor, trial_inputs: torch.Tensor) -> torch.Tensor:
        result = functional_call(net, {**fixed, wrt: weight}, (trial_inputs.unsqueeze(1),))
        return _first_output(result).squeeze(1)

    jacobian_fn: Callable = vmap(jacrev(one_trial_outputs), in_dims=(None, 1))
    jacobian = jacobian_fn(parameters[wrt].detach(), inputs)
    n_rows = jacobian.shape[0] * jacobian.shape[1] * jacobian.shape[2]
    jacobian = jacobian.reshape(n_rows, -1)
    return (jacobian @ jacobian.T).double().numpy()
