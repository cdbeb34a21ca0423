"""Tests of lib/grpo.py: group-normalised advantages by hand, the clipped PPO surrogate and its gradients against
torch autograd and finite differences, the shared-logit GRPO gradient against a per-sample autograd oracle and
the REINFORCE-with-group-baseline formula, a zero expected update under random rewards (Monte Carlo), behaviour
sampling against its success probabilities, reward kinds, and a short training run."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as scipy_log_softmax
from scipy.special import softmax

from lib.grpo import (
    BEHAVIOURS,
    FEATURES,
    Problems,
    expected_accuracy,
    group_advantages,
    grpo_step,
    grpo_weight_gradient,
    log_softmax,
    policy_probs,
    ppo_clip_gradient,
    ppo_clip_objective,
    rewards,
    sample_answers,
    signed_advantage_sums,
    train_grpo,
)

K = len(BEHAVIOURS)


def toy_problems(n=40, seed=0, leaked_share=0.5):
    rng = np.random.default_rng(seed)
    return Problems(rng.integers(-500, 500, n), rng.integers(1, 11, n), rng.random(n) < leaked_share)


def test_group_advantages_by_hand():
    got = group_advantages(np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(got[0], np.array([1, -1, -1, 1]) / (1 + 2e-6), rtol=1e-12)
    np.testing.assert_array_equal(got[1], 0.0)  # zero-variance group: no signal
    std = np.sqrt(3) / 4  # rewards (1, 0, 0, 0): mean 1/4, population std sqrt(3)/4
    np.testing.assert_allclose(got[2], (np.array([0.75, -0.25, -0.25, -0.25])) / (std + 1e-6))
    with pytest.raises(ValueError, match="group"):
        group_advantages(np.array([1.0]))


def test_log_softmax_and_policy_probs_match_scipy():
    x = np.random.default_rng(0).normal(size=(5, 7)) * 30
    np.testing.assert_allclose(log_softmax(x), scipy_log_softmax(x, axis=-1), atol=1e-12)
    problems = toy_problems(6)
    weights = np.random.default_rng(1).normal(size=(2, len(FEATURES), K))
    logits = np.stack([[[w.T @ phi for phi in problems.features] for w in weights]])[0]
    np.testing.assert_allclose(policy_probs(weights, problems), softmax(logits, axis=-1), atol=1e-12)


def torch_surrogate(logits, actions, old_logp, advantages, eps):
    logp = torch.log_softmax(logits, dim=-1).gather(-1, torch.as_tensor(actions)[..., None])[..., 0]
    ratio = torch.exp(logp - torch.as_tensor(old_logp))
    adv = torch.as_tensor(advantages)
    return torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv).mean()


def ppo_case(seed, shape=(6, 5)):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape + (K,))
    actions = rng.integers(K, size=shape)
    old_logits = logits + rng.normal(scale=0.4, size=logits.shape)  # ratios on both sides of the clip range
    old_logp = np.take_along_axis(log_softmax(old_logits), actions[..., None], -1)[..., 0]
    return logits, actions, old_logp, rng.normal(size=shape)


@pytest.mark.parametrize("seed", range(5))
def test_ppo_clip_objective_and_gradient_match_torch_autograd(seed):
    logits, actions, old_logp, advantages = ppo_case(seed)
    x = torch.tensor(logits, requires_grad=True)
    value = torch_surrogate(x, actions, old_logp, advantages, 0.2)
    value.backward()
    assert ppo_clip_objective(logits, actions, old_logp, advantages) == pytest.approx(value.item(), abs=1e-12)
    np.testing.assert_allclose(ppo_clip_gradient(logits, actions, old_logp, advantages), x.grad.numpy(), atol=1e-12)
    ratio = np.exp(np.take_along_axis(log_softmax(logits), actions[..., None], -1)[..., 0] - old_logp)
    assert (np.abs(ratio - 1) > 0.2).any() and (np.abs(ratio - 1) < 0.2).any()  # both regimes are exercised


def test_ppo_clip_gradient_matches_finite_differences():
    logits, actions, old_logp, advantages = ppo_case(7, shape=(4,))
    grad = ppo_clip_gradient(logits, actions, old_logp, advantages)
    h = 1e-6
    for index in np.ndindex(logits.shape):
        bump = np.zeros_like(logits)
        bump[index] = h
        numeric = (ppo_clip_objective(logits + bump, actions, old_logp, advantages)
                   - ppo_clip_objective(logits - bump, actions, old_logp, advantages)) / (2 * h)
        assert grad[index] == pytest.approx(numeric, abs=1e-7)


def grpo_case(seed, seeds=3, batch=5, group=4):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(seeds, len(FEATURES), K))
    features = rng.normal(size=(seeds, batch, len(FEATURES)))
    old_logp_all = log_softmax(features @ (weights + rng.normal(scale=0.3, size=weights.shape)))
    actions = rng.integers(K, size=(seeds, batch, group))
    advantages = group_advantages(rng.integers(0, 2, size=(seeds, batch, group)).astype(float))
    return weights, features, old_logp_all, actions, advantages


@pytest.mark.parametrize("seed", range(4))
def test_grpo_weight_gradient_matches_per_sample_autograd(seed):
    weights, features, old_logp_all, actions, advantages = grpo_case(seed)
    w = torch.tensor(weights, requires_grad=True)
    logits = torch.einsum("sbf,sfk->sbk", torch.tensor(features), w)[:, :, None, :].expand(*actions.shape, K)
    old_logp = np.take_along_axis(old_logp_all, actions, axis=-1)
    # per seed: mean over its B x G samples; seeds are independent, so sum the per-seed objectives
    objective = torch_surrogate(logits, actions, old_logp, advantages, 0.2) * weights.shape[0]
    objective.backward()
    sums = signed_advantage_sums(actions, advantages, K)
    got = grpo_weight_gradient(weights, features, old_logp_all, sums, group=actions.shape[-1])
    np.testing.assert_allclose(got, w.grad.numpy(), atol=1e-12)


def test_first_inner_epoch_is_reinforce_with_group_baseline():
    weights, features, _, actions, advantages = grpo_case(11)
    old_logp_all = log_softmax(features @ weights)  # rho = 1: nothing is clipped
    got = grpo_weight_gradient(weights, features, old_logp_all, signed_advantage_sums(actions, advantages, K),
                               group=actions.shape[-1])
    probs = np.exp(old_logp_all)
    expected = np.zeros_like(weights)
    for s, b, g in np.ndindex(actions.shape):  # mean over samples of A (e_a - pi) phi^T
        score = np.eye(K)[actions[s, b, g]] - probs[s, b]
        expected[s] += advantages[s, b, g] * np.outer(features[s, b], score)
    np.testing.assert_allclose(got, expected / (actions.shape[1] * actions.shape[2]), atol=1e-12)


def first_epoch_gradient(kind, draws, seed):
    problems = toy_problems(200, seed=1)
    rng = np.random.default_rng(seed)
    weights = np.zeros((draws, len(FEATURES), K))
    items = rng.integers(len(problems), size=(draws, 16))
    features = problems.features[items]
    logp = log_softmax(features @ weights)
    actions = rng.integers(K, size=(draws, 16, 8))  # uniform policy at weights = 0
    answers = sample_answers(problems, np.broadcast_to(items[..., None], actions.shape), actions, rng)
    truth = np.asarray(problems.answers)[items][..., None]
    adv = group_advantages(rewards(kind, answers, truth, rng))
    return grpo_weight_gradient(weights, features, logp, signed_advantage_sums(actions, adv, K), group=8)


def test_random_rewards_give_zero_expected_gradient_but_correct_ones_do_not():
    draws = 4000
    random_grad = first_epoch_gradient("random", draws, seed=0)
    mean, se = random_grad.mean(axis=0), random_grad.std(axis=0) / np.sqrt(draws)
    assert np.all(np.abs(mean) < 4.5 * se + 1e-12)
    correct_grad = first_epoch_gradient("correct", draws, seed=0)
    careful_bias = correct_grad[:, 0, 0]  # d/dW[bias, careful]: the most accurate behaviour is pushed up
    assert careful_bias.mean() > 10 * careful_bias.std() / np.sqrt(draws)


def test_sample_answers_follow_success_probabilities():
    problems = Problems(np.array([10, -7]), np.array([3, 8]), np.array([True, False]))
    rng = np.random.default_rng(5)
    n = 20000
    for b in range(K):
        items = np.repeat([0, 1], n)
        answers = sample_answers(problems, items, np.full(items.shape, b), rng)
        correct = (answers == np.asarray(problems.answers)[items]).reshape(2, n).mean(axis=1)
        expected = problems.success_probs[:, b]
        assert np.all(np.abs(correct - expected) <= 4.5 * np.sqrt(expected * (1 - expected) / n) + 1e-12)
        wrong = answers != np.asarray(problems.answers)[items]
        if b == 1:
            assert np.all(np.abs(answers - problems.answers[items])[wrong] <= 9)  # hasty slips are small
    with pytest.raises(ValueError, match="same shape"):
        sample_answers(problems, np.array([0, 1]), np.array([0]), rng)
    with pytest.raises(ValueError, match="behaviours"):
        sample_answers(problems, np.array([0]), np.array([4]), rng)


def test_reward_kinds():
    rng = np.random.default_rng(0)
    truth = np.zeros(100_000, dtype=int)
    answers = np.where(rng.random(truth.size) < 0.3, 0, 1)
    correct = (answers == truth).astype(float)
    np.testing.assert_array_equal(rewards("correct", answers, truth, rng), correct)
    np.testing.assert_array_equal(rewards("inverted", answers, truth, rng), 1 - correct)
    noisy = rewards("noisy", answers, truth, rng, flip=0.2)
    assert abs((noisy != correct).mean() - 0.2) < 0.01
    for random in (rewards("random", answers, truth, rng), rewards("noisy", answers, truth, rng, flip=0.5)):
        assert abs(random.mean() - 0.5) < 0.01 and abs(np.corrcoef(random, correct)[0, 1]) < 0.015
    per_row = rewards("noisy", answers.reshape(2, -1), truth.reshape(2, -1), rng, flip=np.array([[0.0], [1.0]]))
    np.testing.assert_array_equal(per_row, np.stack([correct[:50_000], 1 - correct[50_000:]]))
    with pytest.raises(ValueError, match="kind"):
        rewards("spurious", answers, truth, rng)
    with pytest.raises(ValueError, match="flip"):
        rewards("noisy", answers, truth, rng, flip=1.5)


def test_expected_accuracy_matches_monte_carlo():
    problems = toy_problems(30, seed=3)
    weights = np.random.default_rng(3).normal(size=(2, len(FEATURES), K))
    rng = np.random.default_rng(4)
    probs = policy_probs(weights, problems)
    n = 4000
    for s in range(2):
        draws = rng.random((len(problems), n, 1)) > np.cumsum(probs[s], axis=-1)[:, None, :]
        behaviours = draws.sum(axis=-1)
        items = np.broadcast_to(np.arange(len(problems))[:, None], behaviours.shape)
        accuracy = (sample_answers(problems, items, behaviours, rng) == problems.answers[items]).mean()
        assert accuracy == pytest.approx(expected_accuracy(weights, problems)[s], abs=4 / np.sqrt(n * 30))


def test_training_with_correct_rewards_helps_and_inverted_hurts():
    problems = toy_problems(300, seed=6, leaked_share=0.0)
    start = np.zeros((len(FEATURES), K))
    runs = {kind: train_grpo(start, problems, {"train": problems}, lambda a, t, r, k=kind: rewards(k, a, t, r),
                             seeds=3, steps=40, seed=1, eval_every=20, lr=0.1) for kind in ("correct", "inverted")}
    for kind, run in runs.items():
        assert run.accuracy["train"].shape == (3, 3) and list(run.steps) == [0, 20, 40]
        change = run.accuracy["train"][-1] - run.accuracy["train"][0]
        assert np.all(change > 0.05) if kind == "correct" else np.all(change < -0.02)
    again = train_grpo(start, problems, {"train": problems}, lambda a, t, r: rewards("correct", a, t, r),
                       seeds=3, steps=40, seed=1, eval_every=20, lr=0.1)
    np.testing.assert_array_equal(again.weights, runs["correct"].weights)


def test_bad_inputs_raise():
    problems = toy_problems(10)
    with pytest.raises(ValueError, match="equal length"):
        Problems(np.array([1, 2]), np.array([1]), np.array([False, True]))
    with pytest.raises(ValueError, match="n_steps"):
        Problems(np.array([1]), np.array([0]), np.array([False]))
    with pytest.raises(ValueError, match="initial_weights"):
        train_grpo(np.zeros((2, 2)), problems, {}, lambda a, t, r: rewards("correct", a, t, r))
    with pytest.raises(ValueError, match="group"):
        train_grpo(np.zeros((3, 4)), problems, {}, lambda a, t, r: rewards("correct", a, t, r), group=1)
    with pytest.raises(ValueError, match="steps"):
        train_grpo(np.zeros((3, 4)), problems, {}, lambda a, t, r: rewards("correct", a, t, r), steps=0)
    logits, actions, old_logp, advantages = ppo_case(0)
    with pytest.raises(ValueError, match="eps_clip"):
        ppo_clip_objective(logits, actions, old_logp, advantages, eps_clip=0.0)
    with pytest.raises(ValueError, match="shape"):
        ppo_clip_gradient(logits, actions[:2], old_logp, advantages)
    with pytest.raises(ValueError, match="weights"):
        expected_accuracy(np.zeros((3, 4)), problems)
    with pytest.raises(ValueError, match="one shape"):
        signed_advantage_sums(np.zeros((2, 3), int), np.zeros((2, 4)), K)
    with pytest.raises(TypeError, match="rng"):
        grpo_step(np.zeros((1, 3, 4)), problems, lambda a, t, r: rewards("correct", a, t, r), rng=0)
