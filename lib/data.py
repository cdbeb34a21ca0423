"""Datasets shared by the book's chapters.

The book's standard small classification task is scikit-learn's ``load_digits`` (1797 8x8 greyscale images of
the digits 0-9, 64 features): one stratified, seeded train/test split, standardised with statistics of the
training part only, returned as torch tensors (float32 features, int64 labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DIGITS_N_SAMPLES = 1797
DIGITS_N_FEATURES = 64
DIGITS_N_CLASSES = 10


@dataclass(frozen=True)
class DataSplit:
    """Features and labels of a train / (optional validation) / test split.

    ``X_*`` are float32 tensors of shape (n, d); ``y_*`` are int64 tensors of shape (n,). ``X_val`` and
    ``y_val`` are None when no validation split was carved out.
    """

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    X_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    @property
    def n_features(self) -> int:
        """Number of input features d."""
        return int(self.X_train.shape[1])

    @property
    def n_classes(self) -> int:
        """Number of classes (one more than the largest label in any part of the split)."""
        labels = [self.y_train, self.y_test] + ([self.y_val] if self.y_val is not None else [])
        return int(max(int(y.max()) for y in labels)) + 1

    @property
    def has_validation(self) -> bool:
        """Whether a validation split is present."""
        return self.X_val is not None


def _check_count(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def standardise(X_fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Centre and scale every array by the per-feature mean and standard deviation of ``X_fit``.

    Features that are constant in ``X_fit`` (standard deviation 0, e.g. the always-blank corner pixels of
    digits) are only centred. Returns ``[X_fit_scaled, *others_scaled]``.
    """
    X_fit = np.asarray(X_fit, dtype=np.float64)
    if X_fit.ndim != 2:
        raise ValueError(f"X_fit must be a 2-d array, got shape {X_fit.shape}")
    mean = X_fit.mean(axis=0)
    std = X_fit.std(axis=0)
    std[std == 0] = 1.0
    scaled = []
    for X in (X_fit, *others):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != X_fit.shape[1]:
            raise ValueError(f"every array must have shape (n, {X_fit.shape[1]}), got {X.shape}")
        scaled.append((X - mean) / std)
    return scaled


DIGITS_MAX_PIXEL = 16.0
SCALINGS = ("standardise", "unit_interval")


def digits_split(*, n_test: int = 597, n_val: int = 0, seed: int = 0, scaling: str = "standardise") -> DataSplit:
    """The book's digits split: stratified, seeded, standardised, as torch tensors.

    Parameters
    ----------
    n_test:
        Test points (default 597, leaving 1200 for training and validation).
    n_val:
        Validation points carved from the training part by a second stratified split (default 0: none).
        The lottery-ticket chapter uses ``n_val=200``, i.e. 1000 train / 200 validation / 597 test.
    seed:
        Seed of both splits; the default 0 is the book's fixed split.
    scaling:
        ``"standardise"`` (default): each feature standardised with the mean and standard deviation of the final
        training part only, so no information from validation or test points leaks into the features.
        ``"unit_interval"``: pixels divided by 16, into [0, 1] (the same partition, not standardised; the
        self-distillation chapter needs the raw input scale).
    """
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    _check_count("n_test", n_test, 10, DIGITS_N_SAMPLES - 20)
    _check_count("n_val", n_val, 0, DIGITS_N_SAMPLES - n_test - 10)
    if n_val != 0 and n_val < DIGITS_N_CLASSES:
        raise ValueError(f"n_val must be 0 or at least {DIGITS_N_CLASSES} (one per class), got {n_val}")
    _check_count("seed", seed, 0, 2**32 - 1)
    X, y = load_digits(return_X_y=True)
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=n_test, stratify=y, random_state=seed)
    X_val = y_val = None
    if n_val:
        X_rest, X_val, y_rest, y_val = train_test_split(
            X_rest, y_rest, test_size=n_val, stratify=y_rest, random_state=seed + 1
        )
    parts = [X_rest, X_test] + ([X_val] if n_val else [])
    parts = standardise(*parts) if scaling == "standardise" else [part / DIGITS_MAX_PIXEL for part in parts]
    X_train, X_test = parts[:2]
    if n_val:
        X_val = parts[2]

    def features(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor(a, dtype=torch.float32)

    def labels(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor(a, dtype=torch.int64)

    return DataSplit(
        X_train=features(X_train),
        y_train=labels(y_rest),
        X_test=features(X_test),
        y_test=labels(y_test),
        X_val=features(X_val),
        y_val=labels(y_val),
    )
