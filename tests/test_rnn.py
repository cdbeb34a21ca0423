import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.linalg import svds

from lib.rnn import (
    CTRNN,
    aligned_low_rank_init,
    decision_trials,
    gaussian_connectivity,
    init_io_weights,
    low_rank_init,
    sequence_cross_entropy,
    task_aligned_directions,
    train_to_loss,
    truncate_rank_keep_norm,
)


def numpy_ctrnn(w_in, w_rec, w_out, inputs, alpha):
    """Plain loop over time and trials: the oracle for CTRNN.forward."""
    n_steps, n_trials, _ = inputs.shape
    outputs = np.zeros((n_steps, n_trials, w_out.shape[0]))
    states = np.zeros((n_steps, n_trials, w_rec.shape[0]))
    for b in range(n_trials):
        h = np.zeros(w_rec.shape[0])
        for t in range(n_steps):
            h = np.maximum((1 - alpha) * h + alpha * (w_in @ inputs[t, b] + w_rec @ h), 0.0)
            states[t, b] = h
            outputs[t, b] = w_out @ h
    return outputs, states


def small_net(rng, n_units=6, alpha=1.0):
    w_in, w_out = init_io_weights(3, n_units, 3, rng)
    return w_in, gaussian_connectivity(n_units, 1.5, rng), w_out, alpha


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_ctrnn_forward_matches_numpy_loop(alpha):
    rng = np.random.default_rng(0)
    w_in, w_rec, w_out, _ = small_net(rng)
    inputs = rng.standard_normal((5, 4, 3))
    net = CTRNN(w_in, w_rec, w_out, alpha=alpha).double()
    outputs, states = net(torch.from_numpy(inputs))
    # the oracle uses the same (float32-rounded) weights the module stores
    stored = [p.detach().numpy() for p in (net.input_weights, net.recurrent_weights, net.readout_weights)]
    expected_outputs, expected_states = numpy_ctrnn(*stored, inputs, alpha)
    np.testing.assert_allclose(outputs.detach().numpy(), expected_outputs, atol=1e-12)
    np.testing.assert_allclose(states.detach().numpy(), expected_states, atol=1e-12)


def test_ctrnn_rejects_bad_shapes_and_alpha():
    rng = np.random.default_rng(1)
    w_in, w_rec, w_out, _ = small_net(rng)
    with pytest.raises(ValueError, match="recurrent_weights"):
        CTRNN(w_in, w_rec[:, :-1], w_out)
    with pytest.raises(ValueError, match="input_weights"):
        CTRNN(w_in[:-1], w_rec, w_out)
    with pytest.raises(ValueError, match="readout_weights"):
        CTRNN(w_in, w_rec, w_out[:, :-1])
    with pytest.raises(ValueError, match="alpha"):
        CTRNN(w_in, w_rec, w_out, alpha=0.0)
    with pytest.raises(ValueError, match="inputs"):
        CTRNN(w_in, w_rec, w_out)(torch.zeros(3, 2, 4))


def test_init_io_weights_follow_torch_linear_bounds():
    rng = np.random.default_rng(2)
    w_in, w_out = init_io_weights(3, 400, 5, rng)
    assert w_in.shape == (400, 3) and w_out.shape == (5, 400)
    for weights, fan_in in ((w_in, 3), (w_out, 400)):
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(weights).max() <= bound
        # uniform on [-b, b] has variance b^2 / 3
        assert weights.var() == pytest.approx(bound**2 / 3, rel=0.1)
    with pytest.raises(ValueError, match="n_units"):
        init_io_weights(3, 0, 3, rng)
    with pytest.raises(TypeError, match="rng"):
        init_io_weights(3, 4, 3, 0)


def test_decision_trials_layout_without_noise():
    trials = decision_trials(200, np.random.default_rng(3), noise_std=0.0)
    assert trials.inputs.shape == (8, 200, 3) and trials.inputs.dtype == np.float32
    assert trials.labels.shape == (8, 200)
    np.testing.assert_array_equal(trials.inputs[:7, :, 0], 1.0)
    np.testing.assert_array_equal(trials.inputs[7], 0.0)
    np.testing.assert_array_equal(trials.labels[:7], 0)
    np.testing.assert_array_equal(trials.labels[7], trials.choice)
    sign = np.where(trials.choice == 1, 1.0, -1.0)
    difference = trials.inputs[:7, :, 1] - trials.inputs[:7, :, 2]
    expected = np.broadcast_to(sign * trials.coherence / 100, (7, 200))
    np.testing.assert_allclose(difference, expected, atol=1e-6)
    np.testing.assert_allclose(trials.inputs[:7, :, 1] + trials.inputs[:7, :, 2], 1.0, atol=1e-6)


def test_decision_trials_statistics():
    trials = decision_trials(20000, np.random.default_rng(4), n_stimulus_steps=3, noise_std=0.1)
    assert trials.inputs.shape == (4, 20000, 3)
    assert set(np.unique(trials.coherence)) == {0.0, 6.4, 12.8, 25.6, 51.2}
    assert np.mean(trials.choice == 1) == pytest.approx(0.5, abs=0.02)
    sign = np.where(trials.choice == 1, 1.0, -1.0)
    noise = trials.inputs[:3, :, 1] - (0.5 + sign * trials.coherence / 200)
    assert noise.std() == pytest.approx(0.1, rel=0.02)
    assert abs(noise.mean()) < 0.002


def test_decision_trials_rejects_bad_input():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="n_trials"):
        decision_trials(0, rng)
    with pytest.raises(ValueError, match="coherences"):
        decision_trials(4, rng, coherences=(0.0, 150.0))
    with pytest.raises(ValueError, match="noise_std"):
        decision_trials(4, rng, noise_std=-1.0)
    with pytest.raises(TypeError, match="rng"):
        decision_trials(4, 7)


def test_gaussian_connectivity_scale():
    weights = gaussian_connectivity(300, 1.6, np.random.default_rng(6))
    assert weights.std() == pytest.approx(1.6 / np.sqrt(300), rel=0.02)
    with pytest.raises(ValueError, match="gain"):
        gaussian_connectivity(10, 0.0, np.random.default_rng(6))


@settings(max_examples=25, deadline=None)
@given(rank=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_truncate_rank_keeps_norm_and_has_the_rank(rank, seed):
    weights = np.random.default_rng(seed).standard_normal((12, 12))
    truncated = truncate_rank_keep_norm(weights, rank)
    assert np.linalg.matrix_rank(truncated) == rank
    assert np.linalg.norm(truncated) == pytest.approx(np.linalg.norm(weights), rel=1e-10)


def test_truncate_rank_is_the_rescaled_best_approximation():
    weights = np.random.default_rng(7).standard_normal((30, 30))
    left, singular_values, right_t = svds(weights, k=4)
    best = (left * singular_values) @ right_t
    truncated = truncate_rank_keep_norm(weights, 4)
    np.testing.assert_allclose(truncated / np.linalg.norm(truncated), best / np.linalg.norm(best), atol=1e-10)


def test_low_rank_init_matches_the_gaussian_it_truncates():
    init = low_rank_init(50, 3, gain=1.25, rng=np.random.default_rng(8))
    gaussian = gaussian_connectivity(50, 1.25, np.random.default_rng(8))
    assert np.linalg.matrix_rank(init) == 3
    assert np.linalg.norm(init) == pytest.approx(np.linalg.norm(gaussian))
    full_rank = low_rank_init(50, 50, gain=1.25, rng=np.random.default_rng(8))
    np.testing.assert_allclose(full_rank, gaussian, atol=1e-10)
    with pytest.raises(ValueError, match="rank"):
        low_rank_init(50, 51, gain=1.25, rng=np.random.default_rng(8))
    with pytest.raises(ValueError, match="rank"):
        truncate_rank_keep_norm(np.eye(3), 0)


def test_aligned_low_rank_init_spans_the_given_directions():
    rng = np.random.default_rng(9)
    left, right = rng.standard_normal((20, 2)), rng.standard_normal((20, 2))
    weights = aligned_low_rank_init(left, right, frobenius_norm=5.0)
    singular_values = np.linalg.svd(weights, compute_uv=False)
    np.testing.assert_allclose(singular_values[:2], 5.0 / np.sqrt(2))
    assert np.linalg.matrix_rank(weights) == 2
    projector = left @ np.linalg.pinv(left)
    np.testing.assert_allclose(projector @ weights, weights, atol=1e-10)
    # rank 1: exactly a scaled outer product with the given signs
    u, v = rng.standard_normal(20), rng.standard_normal(20)
    rank_one = aligned_low_rank_init(u[:, None], v[:, None], frobenius_norm=3.0)
    np.testing.assert_allclose(rank_one, 3.0 * np.outer(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_aligned_low_rank_init_rejects_bad_input():
    u = np.ones((5, 2))
    with pytest.raises(ValueError, match="linearly independent"):
        aligned_low_rank_init(u, np.eye(5)[:, :2], 1.0)
    with pytest.raises(ValueError, match="frobenius_norm"):
        aligned_low_rank_init(np.eye(5)[:, :2], np.eye(5)[:, :2], 0.0)
    with pytest.raises(ValueError, match="left and right"):
        aligned_low_rank_init(np.eye(5)[:, :2], np.eye(5)[:, :3], 1.0)


def test_task_aligned_directions_geometry():
    rng = np.random.default_rng(10)
    w_in, w_out = init_io_weights(3, 60, 3, rng)
    mean_input = np.array([1.0, 0.5, 0.5])
    u, v = task_aligned_directions(w_in, w_out, mean_input)
    common = np.maximum(w_in @ mean_input, 0)
    assert np.linalg.norm(u) == pytest.approx(1) and np.linalg.norm(v) == pytest.approx(1)
    assert abs(u @ v) < 1e-12 and abs(v @ common) < 1e-12
    assert v @ (w_in[:, 1] - w_in[:, 2]) > 0
    masked_readout = (w_out[1] - w_out[2]) * (w_in[:, 0] < 0)
    assert u @ masked_readout > 0
    # u lies in the span of the masked readout difference and v
    basis = np.stack([masked_readout, v], axis=1)
    np.testing.assert_allclose(basis @ np.linalg.lstsq(basis, u, rcond=None)[0], u, atol=1e-12)
    with pytest.raises(ValueError, match="mean_stimulus_input"):
        task_aligned_directions(w_in, w_out, np.ones(2))
    with pytest.raises(ValueError, match="input_weights"):
        task_aligned_directions(w_in[:, :2], w_out, mean_input)


def test_sequence_cross_entropy_matches_manual_log_softmax():
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((3, 4, 3))
    labels = rng.integers(0, 3, (3, 4))
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(log_probs, labels[..., None], -1))
    got = sequence_cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_train_to_loss_one_step_is_plain_sgd():
    rng = np.random.default_rng(12)
    w_in, w_rec, w_out, _ = small_net(rng)
    validation = decision_trials(16, rng)
    net = CTRNN(w_in, w_rec, w_out)
    reference = CTRNN(w_in, w_rec, w_out)
    run = train_to_loss(
        net, validation, data_seed=5, learning_rate=0.1, momentum=0.0, check_every=1, max_steps=1
    )
    batch = decision_trials(32, np.random.default_rng(5))
    outputs, _ = reference(torch.from_numpy(batch.inputs))
    loss = sequence_cross_entropy(outputs, torch.from_numpy(batch.labels))
    gradients = torch.autograd.grad(loss, list(reference.parameters()))
    pairs = zip(net.named_parameters(), reference.parameters(), gradients, strict=True)
    for (name, trained), initial, gradient in pairs:
        np.testing.assert_allclose(
            trained.detach().numpy(), (initial - 0.1 * gradient).detach().numpy(), atol=1e-6, err_msg=name
        )
    np.testing.assert_array_equal(run.steps, [0, 1])
    expected_change = np.linalg.norm(0.1 * gradients[1].numpy())
    assert run.weight_change[1] == pytest.approx(expected_change, rel=1e-4)
    assert not run.reached


def test_train_to_loss_reaches_target_and_is_deterministic():
    rng = np.random.default_rng(13)
    w_in, w_out = init_io_weights(3, 30, 3, rng)
    w_rec = low_rank_init(30, 30, gain=1.0, rng=rng)
    validation = decision_trials(128, rng)
    runs = [
        train_to_loss(CTRNN(w_in, w_rec, w_out), validation, data_seed=1, target_loss=0.3, learning_rate=0.01)
        for _ in range(2)
    ]
    assert runs[0].reached and runs[0].validation_loss[-1] <= 0.3
    assert np.all(runs[0].validation_loss[:-1] > 0.3)
    np.testing.assert_array_equal(runs[0].validation_loss, runs[1].validation_loss)
    assert np.all(np.diff(runs[0].steps) == 10)
    last = runs[0].states[-1]["recurrent_weights"].numpy()
    assert runs[0].weight_change[-1] == pytest.approx(np.linalg.norm(last - w_rec), rel=1e-5)
    assert runs[0].weight_change[0] == 0.0


def test_train_to_loss_rejects_bad_settings():
    rng = np.random.default_rng(14)
    w_in, w_rec, w_out, _ = small_net(rng)
    net, validation = CTRNN(w_in, w_rec, w_out), decision_trials(8, rng)
    with pytest.raises(ValueError, match="learning_rate"):
        train_to_loss(net, validation, data_seed=0, learning_rate=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        train_to_loss(net, validation, data_seed=0, momentum=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        train_to_loss(net, validation, data_seed=0, batch_size=0)
