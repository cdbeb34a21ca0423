"""Tests of lib/data.py: the digits split against sklearn's split and scaler, and the input checks."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from lib.data import DataSplit, digits_split, standardise


@pytest.fixture(scope="module")
def raw_digits():
    return load_digits(return_X_y=True)


def test_default_split_sizes_and_types():
    data = digits_split()
    assert data.X_train.shape == (1200, 64) and data.X_test.shape == (597, 64)
    assert data.y_train.shape == (1200,) and data.y_test.shape == (597,)
    assert data.X_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert not data.has_validation and data.X_val is None and data.y_val is None
    assert data.n_features == 64 and data.n_classes == 10


def test_validation_split_sizes():
    data = digits_split(n_val=200)
    assert (
        data.X_train.shape == (1000, 64) and data.X_val.shape == (200, 64) and data.X_test.shape == (597, 64)
    )
    assert data.y_val.dtype == torch.int64 and data.has_validation


@pytest.mark.parametrize("n_val", [0, 200])
def test_parts_are_stratified(n_val):
    data = digits_split(n_val=n_val)
    full = np.bincount(load_digits().target, minlength=10) / 1797
    parts = [data.y_train, data.y_test] + ([data.y_val] if n_val else [])
    for y in parts:
        counts = np.bincount(y.numpy(), minlength=10)
        # a stratified split puts round(n * class share) of each class in a part, up to one point
        assert np.all(np.abs(counts - full * len(y)) <= 1.0)


@pytest.mark.parametrize("n_val", [0, 200])
def test_features_equal_sklearn_scaler_on_sklearn_split(raw_digits, n_val):
    X, y = raw_digits
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=597, stratify=y, random_state=0)
    if n_val:
        X_rest, X_val, y_rest, y_val = train_test_split(
            X_rest, y_rest, test_size=n_val, stratify=y_rest, random_state=1
        )
    scaler = StandardScaler().fit(X_rest)
    data = digits_split(n_val=n_val)
    np.testing.assert_allclose(data.X_train.numpy(), scaler.transform(X_rest), atol=1e-5)
    np.testing.assert_allclose(data.X_test.numpy(), scaler.transform(X_test), atol=1e-5)
    np.testing.assert_array_equal(data.y_train.numpy(), y_rest)
    np.testing.assert_array_equal(data.y_test.numpy(), y_test)
    if n_val:
        np.testing.assert_allclose(data.X_val.numpy(), scaler.transform(X_val), atol=1e-5)
        np.testing.assert_array_equal(data.y_val.numpy(), y_val)
    unit = digits_split(n_val=n_val, scaling="unit_interval")
    np.testing.assert_array_equal(unit.y_train.numpy(), y_rest)
    np.testing.assert_allclose(unit.X_train.numpy(), X_rest / 16, atol=1e-7)
    np.testing.assert_allclose(unit.X_test.numpy(), X_test / 16, atol=1e-7)
    assert unit.X_train.min() == 0.0 and unit.X_train.max() == 1.0
    if n_val:
        np.testing.assert_allclose(unit.X_val.numpy(), X_val / 16, atol=1e-7)


def test_parts_partition_the_dataset(raw_digits):
    X, _ = raw_digits
    data = digits_split(n_val=200)
    total = data.X_train.shape[0] + data.X_val.shape[0] + data.X_test.shape[0]
    assert total == X.shape[0]
    labels = torch.cat([data.y_train, data.y_val, data.y_test]).numpy()
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(raw_digits[1]))


def test_training_part_is_standardised():
    X = digits_split(n_val=200).X_train.numpy().astype(np.float64)
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-6)
    std = X.std(axis=0)
    assert np.all(np.isclose(std, 1, atol=1e-5) | np.isclose(std, 0, atol=1e-12))


def test_split_is_deterministic_and_seeded():
    a, b, c = digits_split(seed=0), digits_split(seed=0), digits_split(seed=1)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)


def test_standardise_constant_feature_is_only_centred():
    X_fit = np.array([[1.0, 5.0], [3.0, 5.0]])
    fit, other = standardise(X_fit, np.array([[2.0, 7.0]]))
    np.testing.assert_allclose(fit, [[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(other, [[0.0, 2.0]])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_test": 5}, ValueError),
        ({"n_test": 1790}, ValueError),
        ({"n_test": 597.0}, TypeError),
        ({"n_val": -1}, ValueError),
        ({"n_val": 5}, ValueError),
        ({"n_val": 1195}, ValueError),
        ({"seed": -1}, ValueError),
        ({"seed": True}, TypeError),
        ({"scaling": "minmax"}, ValueError),
    ],
)
def test_digits_split_rejects_bad_input(kwargs, error):
    with pytest.raises(error):
        digits_split(**kwargs)


def test_standardise_rejects_bad_shapes():
    with pytest.raises(ValueError, match="X_fit"):
        standardise(np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        standardise(np.zeros((3, 2)), np.zeros((3, 4)))


def test_n_classes_sees_every_part():
    split = DataSplit(
        X_train=torch.zeros(2, 1),
        y_train=torch.tensor([0, 1]),
        X_test=torch.zeros(1, 1),
        y_test=torch.tensor([1]),
        X_val=torch.zeros(1, 1),
        y_val=torch.tensor([3]),
    )
    assert split.n_classes == 4
