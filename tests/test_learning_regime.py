import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lib.learning_regime import (
    effective_rank,
    kernel_alignment,
    participation_ratio,
    representation_alignment,
    sign_similarity,
    tangent_kernel,
    weight_change,
)
from lib.rnn import CTRNN, gaussian_connectivity, init_io_weights

finite_seeds = st.integers(0, 2**16)


@pytest.mark.parametrize("measure", [effective_rank, participation_ratio])
def test_spectrum_measures_on_identity_and_rank_one(measure):
    assert measure(np.eye(17)) == pytest.approx(17)
    rng = np.random.default_rng(0)
    assert measure(np.outer(rng.standard_normal(9), rng.standard_normal(9))) == pytest.approx(1)


def test_effective_rank_closed_form_on_a_diagonal():
    s = np.array([4.0, 2.0, 1.0, 1.0])
    p = s / 8
    assert effective_rank(np.diag(s)) == pytest.approx(np.exp(-np.sum(p * np.log(p))))
    # rank-deficient: zero singular values contribute nothing
    assert effective_rank(np.diag([1.0, 1.0, 0.0])) == pytest.approx(2)


def test_participation_ratio_closed_form_on_a_diagonal():
    s = np.array([3.0, 1.0, 1.0])
    assert participation_ratio(np.diag(s)) == pytest.approx((9 + 1 + 1) ** 2 / (81 + 1 + 1))


@settings(max_examples=30, deadline=None)
@given(seed=finite_seeds, scale=st.floats(1e-3, 1e3))
def test_spectrum_measures_are_scale_invariant_and_bounded(seed, scale):
    matrix = np.random.default_rng(seed).standard_normal((8, 5))
    for measure in (effective_rank, participation_ratio):
        value = measure(matrix)
        assert 1 - 1e-9 <= value <= 5 + 1e-9
        assert measure(scale * matrix) == pytest.approx(value, rel=1e-9)


@pytest.mark.parametrize("measure", [effective_rank, participation_ratio])
def test_spectrum_measures_reject_bad_input(measure):
    with pytest.raises(ValueError, match="zero matrix"):
        measure(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2-D"):
        measure(np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        measure(np.full((2, 2), np.nan))


def test_weight_change_is_the_frobenius_norm_of_the_difference():
    assert weight_change(np.zeros((2, 2)), np.array([[3.0, 0.0], [0.0, 4.0]])) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="same shape"):
        weight_change(np.zeros((2, 2)), np.zeros((2, 3)))


def random_psd(rng, n=6):
    factor = rng.standard_normal((n, n))
    return factor @ factor.T


@settings(max_examples=30, deadline=None)
@given(seed=finite_seeds, scale=st.floats(1e-3, 1e3))
def test_kernel_alignment_self_one_and_scale_invariant(seed, scale):
    rng = np.random.default_rng(seed)
    kernel, other = random_psd(rng), random_psd(rng)
    assert kernel_alignment(kernel, kernel) == pytest.approx(1.0)
    assert kernel_alignment(kernel, scale * other) == pytest.approx(kernel_alignment(kernel, other))
    assert 0.0 <= kernel_alignment(kernel, other) <= 1.0 + 1e-12  # PSD kernels: Frobenius product >= 0


def test_kernel_alignment_closed_forms():
    assert kernel_alignment(np.diag([1.0, 0.0]), np.diag([0.0, 1.0])) == pytest.approx(0.0)
    assert kernel_alignment(np.eye(2), np.diag([1.0, 0.0])) == pytest.approx(1 / np.sqrt(2))
    with pytest.raises(ValueError, match="square"):
        kernel_alignment(np.eye(2), np.eye(3))
    with pytest.raises(ValueError, match="zero"):
        kernel_alignment(np.eye(2), np.zeros((2, 2)))


def test_representation_alignment():
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((10, 4))
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    assert representation_alignment(hidden, hidden @ rotation) == pytest.approx(1.0)
    other = rng.standard_normal((10, 7))
    gram_a = np.array([[hidden[i] @ hidden[j] for j in range(10)] for i in range(10)])
    gram_b = np.array([[other[i] @ other[j] for j in range(10)] for i in range(10)])
    expected = np.sum(gram_a * gram_b) / np.sqrt(np.sum(gram_a**2) * np.sum(gram_b**2))
    assert representation_alignment(hidden, other) == pytest.approx(expected)
    with pytest.raises(ValueError, match="equal rows"):
        representation_alignment(hidden, other[:5])


def test_sign_similarity_counts_matching_signs():
    a = np.array([[1.0, 0.0, -2.0], [0.0, 3.0, 0.5]])
    b = np.array([[2.0, 0.0, 1.0], [1.0, 0.1, 0.5]])
    assert sign_similarity(a, b) == pytest.approx(4 / 6)
    assert sign_similarity(a, a) == 1.0
    with pytest.raises(ValueError, match="equal, non-empty shapes"):
        sign_similarity(a, b[:, :2])


def finite_difference_kernel(net, inputs, name, eps=1e-6):
    """Central differences of every output with respect to every entry of one parameter, then J J^T."""
    parameter = dict(net.named_parameters())[name]
    columns = []
    with torch.no_grad():
        for index in range(parameter.numel()):
            flat = parameter.view(-1)
            original = flat[index].item()
            flat[index] = original + eps
            plus = net(inputs)[0].permute(1, 0, 2).reshape(-1)
            flat[index] = original - eps
            minus = net(inputs)[0].permute(1, 0, 2).reshape(-1)
            flat[index] = original
            columns.append(((plus - minus) / (2 * eps)).numpy())
    jacobian = np.stack(columns, axis=1)
    return jacobian @ jacobian.T


@pytest.mark.parametrize("name", ["recurrent_weights", "input_weights"])
def test_tangent_kernel_matches_finite_differences(name):
    rng = np.random.default_rng(2)
    w_in, w_out = init_io_weights(3, 5, 2, rng)
    net = CTRNN(w_in, gaussian_connectivity(5, 1.2, rng), w_out, alpha=0.5).double()
    inputs = torch.from_numpy(rng.standard_normal((3, 2, 3)))
    kernel = tangent_kernel(net, inputs, wrt=name)
    assert kernel.shape == (2 * 3 * 2, 2 * 3 * 2)
    np.testing.assert_allclose(kernel, finite_difference_kernel(net, inputs, name), rtol=1e-6, atol=1e-8)


class LinearReadout(nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, inputs):
        return inputs @ self.weight.T


def test_tangent_kernel_of_a_linear_map_is_the_input_gram_matrix():
    rng = np.random.default_rng(3)
    inputs = torch.from_numpy(rng.standard_normal((2, 3, 4)))  # (time, trials, features)
    net = LinearReadout(torch.from_numpy(rng.standard_normal((2, 4))))
    kernel = tangent_kernel(net, inputs, wrt="weight")
    # rows are (trial, time, output); d y_k / d W = e_k x^T, so K = (x . x') delta_kk'
    rows = inputs.permute(1, 0, 2).reshape(-1, 4).numpy()
    expected = np.kron(rows @ rows.T, np.eye(2))
    np.testing.assert_allclose(kernel, expected, atol=1e-10)


def test_tangent_kernel_rejects_unknown_parameter():
    net = LinearReadout(torch.ones(2, 2))
    with pytest.raises(ValueError, match="wrt"):
        tangent_kernel(net, torch.ones(1, 1, 2), wrt="bias")
    with pytest.raises(ValueError, match="inputs"):
        tangent_kernel(net, torch.ones(2), wrt="weight")
