"""Tests of lib.self_distillation against independent oracles (torch's weight_norm and soft-target
cross-entropy, autograd, scipy's entropy, scikit-learn fits, brute-force nearest neighbours, statistics)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from lib.self_distillation import (
    DinoHead,
    WeightNormLinear,
    distill,
    distill_loss,
    init_student,
    interpolation_scale,
    knn_probe,
    linear_probe,
    make_dino_net,
    mlp_encoder,
    sample_per_class,
)

SMALL = dict(encoder_widths=(8, 16, 12), head_hidden=(10,), bottleneck=4, out_dim=32)


def small_net(seed: int, batchnorm: bool = False):
    return make_dino_net(**SMALL, batchnorm=batchnorm, seed=seed)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --- weight-normalised layer and head -----------------------------------------------------------------------


@pytest.mark.parametrize("fix_norm", [True, False])
def test_weight_norm_linear_matches_torch_parametrization(fix_norm):
    torch.manual_seed(0)
    ours = WeightNormLinear(5, 7, fix_norm=fix_norm)
    reference = weight_norm(nn.Linear(5, 7, bias=False), dim=0)
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(ours.norm[:, None])
        reference.parametrizations.weight.original1.copy_(ours.direction)
    x = torch.randn(9, 5)
    torch.testing.assert_close(ours(x), reference(x))
    ours(x).square().sum().backward()
    reference(x).square().sum().backward()
    torch.testing.assert_close(ours.direction.grad, reference.parametrizations.weight.original1.grad)
    if fix_norm:
        torch.testing.assert_close(ours.norm, torch.ones(7))
        assert not ours.norm.requires_grad
    else:
        torch.testing.assert_close(ours.norm, ours.direction.norm(dim=1))


def test_dino_head_is_cosine_between_bottleneck_and_rows():
    torch.manual_seed(1)
    head = DinoHead(6, hidden=(11,), bottleneck=3, out_dim=20)
    x = torch.randn(4, 6)
    hidden = F.gelu(x @ head.mlp[0].weight.T + head.mlp[0].bias)
    bottleneck = (hidden @ head.mlp[2].weight.T + head.mlp[2].bias).detach().numpy()
    rows = head.last.direction.detach().numpy()
    cosines = (bottleneck / np.linalg.norm(bottleneck, axis=1, keepdims=True)) @ (
        rows / np.linalg.norm(rows, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(head(x).detach().numpy(), cosines, rtol=1e-5, atol=1e-6)
    assert head(100 * x).abs().max() <= 1 + 1e-6


def test_mlp_encoder_layers_and_nonnegative_output():
    plain = mlp_encoder((5, 7, 3))
    assert [type(m) for m in plain] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    with_bn = mlp_encoder((5, 7, 3), batchnorm=True)
    assert [type(m) for m in with_bn][:3] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert (plain(torch.randn(10, 5)) >= 0).all()


def test_make_dino_net_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    first, again, other = small_net(3), small_net(3), small_net(4)
    assert torch.equal(state, torch.get_rng_state())
    for name, value in params(first).items():
        assert torch.equal(value, params(again)[name])
    assert not torch.equal(params(first)["encoder.0.weight"], params(other)["encoder.0.weight"])
    assert small_net(0)(torch.randn(3, 8)).shape == (3, 32)
    assert small_net(0).embed(torch.randn(3, 8)).shape == (3, 12)


# --- student initialisation ---------------------------------------------------------------------------------


def test_alpha_zero_is_an_exact_copy_and_alpha_one_the_fresh_net():
    teacher, fresh = small_net(0), small_net(1)
    teacher_before, fresh_before = params(teacher), params(fresh)
    copy_ = init_student(teacher, fresh, alpha=0.0)
    new = init_student(teacher, fresh, alpha=1.0)
    for name in teacher_before:
        assert torch.equal(params(copy_)[name], teacher_before[name])
        assert torch.equal(params(new)[name], fresh_before[name])
        assert torch.equal(params(teacher)[name], teacher_before[name])
        assert torch.equal(params(fresh)[name], fresh_before[name])
    assert init_student(teacher, fresh, mode="neighborhood", eps=0.0) is not teacher


def test_interpolation_scale_closed_form_and_monte_carlo():
    assert interpolation_scale(0.0) == interpolation_scale(1.0) == 1.0
    assert interpolation_scale(0.5) == pytest.approx(math.sqrt(0.5))
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 400_000))
    for alpha in (0.1, 0.3, 0.7):
        assert np.std((1 - alpha) * a + alpha * b) == pytest.approx(interpolation_scale(alpha), rel=0.01)


@pytest.mark.parametrize(
    ("mode", "amount", "shrink"),
    [
        ("interpolated", 0.5, math.sqrt(0.5)),
        ("interpolated", 0.2, math.sqrt(0.68)),
        ("neighborhood", 1.0, None),
    ],
)
def test_interpolation_preserves_weight_variance(mode, amount, shrink):
    teacher = make_dino_net((256, 512, 512), head_hidden=(512,), seed=0)
    fresh = make_dino_net((256, 512, 512), head_hidden=(512,), seed=1)
    keyword = {"alpha": amount} if mode == "interpolated" else {"eps": amount}
    preserved = init_student(teacher, fresh, mode=mode, **keyword)
    naive = init_student(teacher, fresh, mode=mode, var_preserving=False, **keyword)
    name = "encoder.2.weight"
    teacher_std = params(teacher)[name].std().item()
    assert params(preserved)[name].std().item() == pytest.approx(teacher_std, rel=0.02)
    naive_ratio = params(naive)[name].std().item() / teacher_std
    assert naive_ratio == pytest.approx(shrink if shrink is not None else math.sqrt(2.0), rel=0.02)


def test_shared_constant_and_frozen_parameters_are_copied():
    teacher, fresh = small_net(0, batchnorm=True), small_net(1, batchnorm=True)
    student = init_student(teacher, fresh, alpha=0.5)
    torch.testing.assert_close(student.encoder[1].weight, torch.ones(16))  # BatchNorm scale, not 1 / 0.707
    torch.testing.assert_close(student.head.last.norm, torch.ones(32))
    expected = (0.5 * teacher.encoder[0].weight + 0.5 * fresh.encoder[0].weight) / math.sqrt(0.5)
    torch.testing.assert_close(student.encoder[0].weight, expected)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "copy", "alpha": 0.1},
        {"alpha": 1.5},
        {"alpha": -0.1},
        {"mode": "interpolated"},
        {"mode": "interpolated", "alpha": 0.1, "eps": 0.1},
        {"mode": "neighborhood", "eps": -1.0},
        {"mode": "neighborhood", "alpha": 0.1},
    ],
)
def test_init_student_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="mode|alpha|eps"):
        init_student(small_net(0), small_net(1), **kwargs)


def test_init_student_rejects_mismatched_networks():
    with pytest.raises(ValueError, match="same parameter"):
        init_student(small_net(0), make_dino_net(**{**SMALL, "out_dim": 16}), alpha=0.5)


# --- the distillation loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("t_temp", "s_temp"), [(1.0, 1.0), (0.04, 0.1), (0.5, 0.2)])
def test_cross_entropy_gradient_matches_formula(t_temp, s_temp):
    torch.manual_seed(0)
    student_logits = torch.randn(6, 15, requires_grad=True)
    teacher_logits = torch.randn(6, 15)
    distill_loss(student_logits, teacher_logits, t_temp=t_temp, s_temp=s_temp).backward()
    expected = (
        (F.softmax(student_logits / s_temp, dim=1) - F.softmax(teacher_logits / t_temp, dim=1)) / s_temp / 6
    )
    torch.testing.assert_close(student_logits.grad, expected.detach())


def test_cross_entropy_matches_torch_soft_targets_and_kl_subtracts_entropy():
    torch.manual_seed(2)
    s, t = torch.randn(5, 9), torch.randn(5, 9)
    ce = distill_loss(s, t, t_temp=0.3, s_temp=0.7)
    torch.testing.assert_close(ce, F.cross_entropy(s / 0.7, F.softmax(t / 0.3, dim=1)))
    teacher_entropy = np.mean([entropy(p) for p in F.softmax(t / 0.3, dim=1).numpy()])
    kl = distill_loss(s, t, t_temp=0.3, s_temp=0.7, loss="KL")
    assert (ce - kl).item() == pytest.approx(teacher_entropy, rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 2.0))
def test_kl_is_nonnegative_and_zero_at_the_teacher(seed, temp):
    generator = torch.Generator().manual_seed(seed)
    s, t = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    assert distill_loss(s, t, t_temp=temp, s_temp=temp, loss="KL").item() >= -1e-6
    assert distill_loss(t, t, t_temp=temp, s_temp=temp, loss="KL").item() == pytest.approx(0.0, abs=1e-5)
    assert (
        distill_loss(s, t, t_temp=temp, s_temp=temp).item()
        >= distill_loss(t, t, t_temp=temp, s_temp=temp).item()
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"loss": "MSE"}, "loss"), ({"t_temp": 0.0}, "t_temp"), ({"s_temp": -1.0}, "s_temp")],
)
def test_distill_loss_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), **kwargs)
    with pytest.raises(ValueError, match="batch"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# --- training against a frozen teacher ----------------------------------------------------------------------


def test_distill_lowers_the_loss_and_never_moves_the_teacher():
    teacher = small_net(0)
    teacher_before = params(teacher)
    student = init_student(teacher, small_net(1), alpha=1.0)
    inputs = torch.rand(64, 8, generator=torch.Generator().manual_seed(0))
    run = distill(
        student,
        teacher,
        inputs,
        steps=60,
        batch_size=16,
        lr=1e-2,
        probe_inputs=inputs[:5],
        checkpoint_every=25,
    )
    assert run.loss[-10:].mean() < run.loss[:10].mean()
    np.testing.assert_array_equal(run.checkpoint_steps, [0, 25, 50, 60])
    assert [f.shape for f in run.features] == [(5, 12)] * 4
    for name, value in teacher_before.items():
        assert torch.equal(value, params(teacher)[name])


def test_exact_copy_gets_no_gradient_without_batchnorm_but_does_with_it():
    inputs = torch.rand(64, 8, generator=torch.Generator().manual_seed(0))
    for batchnorm in (False, True):
        teacher = small_net(0, batchnorm=batchnorm).eval()
        student = init_student(teacher, small_net(1, batchnorm=batchnorm), alpha=0.0).train()
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        distill_loss(student(inputs), teacher_logits, t_temp=0.5, s_temp=0.5).backward()
        gradient_norm = torch.cat(
            [p.grad.flatten() for p in student.parameters() if p.grad is not None]
        ).norm()
        if batchnorm:  # student in train mode (batch statistics), teacher in eval mode (running statistics)
            assert gradient_norm > 1e-3
        else:
            assert gradient_norm < 1e-6


def test_distill_is_deterministic():
    inputs = torch.rand(40, 8, generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        teacher = small_net(0)
        runs.append(
            distill(init_student(teacher, small_net(1), alpha=0.3), teacher, inputs, steps=8, batch_size=8)
        )
    np.testing.assert_array_equal(runs[0].loss, runs[1].loss)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"checkpoint_every": 5}, "probe_inputs"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_distill_rejects_bad_arguments(kwargs, match):
    teacher = small_net(0)
    with pytest.raises(ValueError, match=match):
        distill(small_net(1), teacher, torch.rand(10, 8), **kwargs)
    with pytest.raises(ValueError, match="inputs"):
        distill(small_net(1), teacher, torch.rand(10, 2, 4))


# --- probes and data ----------------------------------------------------------------------------------------


def test_sample_per_class_draws_exact_counts_without_repeats():
    labels = np.repeat(np.arange(4), [5, 7, 6, 9])
    chosen = sample_per_class(labels, 3, np.random.default_rng(0))
    assert len(set(chosen.tolist())) == 12
    np.testing.assert_array_equal(np.bincount(labels[chosen]), [3, 3, 3, 3])
    with pytest.raises(ValueError, match="n_per_class"):
        sample_per_class(labels, 6, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        sample_per_class(labels, 2, 0)


def blobs(rng, n_per_class, dim=5, separation=6.0):
    centres = separation * np.eye(3, dim)
    labels = np.repeat(np.arange(3), n_per_class)
    return centres[labels] + rng.standard_normal((labels.size, dim)), labels


def test_linear_probe_equals_sklearn_fit_when_every_point_is_labelled():
    rng = np.random.default_rng(0)
    X, y = blobs(rng, 20, separation=1.5)
    X_test, y_test = blobs(rng, 30, separation=1.5)
    expected = LogisticRegression(C=0.5, max_iter=1000).fit(X, y).score(X_test, y_test)
    measured = linear_probe(X, y, X_test, y_test, n_per_class=20, n_draws=2, rng=rng, C=0.5)
    np.testing.assert_allclose(measured, [expected, expected])
    assert expected < 1.0  # overlapping blobs: the comparison is not trivially 1 = 1


def test_linear_probe_separable_and_standardised_scale_invariance():
    rng = np.random.default_rng(1)
    X, y = blobs(rng, 30)
    X_test, y_test = blobs(rng, 30)
    assert linear_probe(X, y, X_test, y_test, n_per_class=5, n_draws=3, rng=rng).min() == 1.0
    Xo, yo = blobs(rng, 30, separation=1.0)
    scaled = [
        linear_probe(
            factor * Xo,
            yo,
            factor * X_test,
            y_test,
            n_per_class=10,
            n_draws=3,
            rng=np.random.default_rng(2),
            standardize=True,
        )
        for factor in (1.0, 100.0)
    ]
    np.testing.assert_allclose(scaled[0], scaled[1])


def brute_force_cosine_knn(X, y, X_test, k):
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    unit_test = X_test / np.linalg.norm(X_test, axis=1, keepdims=True)
    nearest = np.argsort(-unit_test @ unit.T, axis=1)[:, :k]
    return np.array([np.bincount(y[row], minlength=2).argmax() for row in nearest])


def test_knn_probe_matches_brute_force_majority_vote():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((20, 4)) + np.array([1.0, 0, 0, 0])
    y = np.repeat([0, 1], 10)
    X[y == 1, 1] += 1.5
    X_test = rng.standard_normal((50, 4)) + np.array([1.0, 0.7, 0, 0])
    y_test = rng.integers(0, 2, 50)
    expected = np.mean(brute_force_cosine_knn(X, y, X_test, k=5) == y_test)
    measured = knn_probe(X, y, X_test, y_test, n_per_class=10, n_draws=1, rng=rng, k=5)
    assert measured[0] == pytest.approx(expected)


@pytest.mark.parametrize("probe", [linear_probe, knn_probe])
def test_probes_reject_bad_inputs(probe):
    X, y = np.zeros((6, 3)), np.repeat([0, 1], 3)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="same d"):
        probe(X, y, np.zeros((4, 2)), np.zeros(4), n_per_class=1, n_draws=1, rng=rng)
    with pytest.raises(ValueError, match="labels"):
        probe(X, y[:5], X, y, n_per_class=1, n_draws=1, rng=rng)
    with pytest.raises(ValueError, match="n_draws"):
        probe(X, y, X, y, n_per_class=1, n_draws=0, rng=rng)
