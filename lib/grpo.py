"""GRPO on a toy policy over answer *behaviours*, to study which reward signals can teach it anything.

The "model" is a softmax-linear policy that picks one of four behaviours for a problem from its features; each
behaviour produces an answer by a fixed stochastic rule. Reinforcement learning can only re-weight behaviours the
policy already has, which is the picture behind the claim that RL with weak rewards "elicits" what pretraining put
there. Everything is vectorised over independent seeds: weights have shape (seeds, features, behaviours).
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lib.validation import check_generator, check_positive_int

BEHAVIOURS = ("careful", "hasty", "guess", "recall")
FEATURES = ("bias", "steps / 10", "familiar")
GUESS_RADIUS = 50  # guesses and failed recalls are uniform on answer +- GUESS_RADIUS
REWARD_KINDS = ("correct", "random", "inverted", "noisy")


@dataclass(frozen=True)
class Problems:
    """Arithmetic problems as the policy sees them: exact answers, number of operations, and whether the item
    was memorised in pretraining (``leaked``; the policy sees it as the 'familiar' feature)."""

    answers: np.ndarray
    n_steps: np.ndarray
    leaked: np.ndarray

    def __post_init__(self):
        if not (len(self.answers) == len(self.n_steps) == len(self.leaked) > 0):
            raise ValueError("answers, n_steps and leaked must be non-empty and of equal length")
        if np.any(np.asarray(self.n_steps) < 1):
            raise ValueError("n_steps must be >= 1")

    def __len__(self) -> int:
        return len(self.answers)

    @cached_property
    def features(self) -> np.ndarray:
        """(n, 3) features: a constant, the number of operations / 10, and the familiarity flag."""
        return np.stack([np.ones(len(self)), np.asarray(self.n_steps) / 10, np.asarray(self.leaked, float)], axis=1)

    @cached_property
    def success_probs(self) -> np.ndarray:
        """(n, 4) probability that each behaviour answers correctly.

        careful: 0.98 * 0.97**steps; hasty: 0.35 * 0.9**steps (else off by 1-9); guess: one chance in
        2 * GUESS_RADIUS + 1; recall: 1 on a leaked item, a guess otherwise.
        """
        steps = np.asarray(self.n_steps, dtype=float)
        guess = np.full(len(self), 1.0 / (2 * GUESS_RADIUS + 1))
        recall = np.where(np.asarray(self.leaked, bool), 1.0, guess)
        return np.stack([0.98 * 0.97**steps, 0.35 * 0.9**steps, guess, recall], axis=1)


def sample_answers(problems: Problems, items: np.ndarray, behaviours: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Answers produced by ``behaviours`` (ids into BEHAVIOURS) on ``problems[items]`` (same shape).

    careful and hasty give the exact answer with their success probability, else the answer off by +-1..9;
    guess (and recall on an unfamiliar item) draw uniformly from answer +- GUESS_RADIUS; recall on a leaked item
    returns the memorised answer.
    """
    check_generator(rng)
    items, behaviours = np.asarray(items), np.asarray(behaviours)
    if items.shape != behaviours.shape:
        raise ValueError(f"items {items.shape} and behaviours {behaviours.shape} must have the same shape")
    if behaviours.size and (behaviours.min() < 0 or behaviours.max() >= len(BEHAVIOURS)):
        raise ValueError(f"behaviours must be ids in 0..{len(BEHAVIOURS) - 1}")
    truth = np.asarray(problems.answers)[items]
    success = np.take_along_axis(problems.success_probs[items], behaviours[..., None], axis=-1)[..., 0]
    slip = rng.integers(1, 10, size=items.shape) * rng.choice([-1, 1], size=items.shape)
    guess = truth + rng.integers(-GUESS_RADIUS, GUESS_RADIUS + 1, size=items.shape)
    computed = np.where(rng.random(items.shape) < success, truth, truth + slip)
    recalled = np.where(np.asarray(problems.leaked, bool)[items], truth, guess)
    return np.select([behaviours <= 1, behaviours == 2], [computed, guess], recalled)


def rewards(kind: str, answers: np.ndarray, truth: np.ndarray, rng: np.random.Generator,
            flip: float | np.ndarray = 0.0) -> np.ndarray:
    """Reward of each answer: ``correct`` 1{y = y*}; ``random`` Bernoulli(1/2), independent of y;
    ``inverted`` 1{y != y*}; ``noisy`` the correct reward flipped with probability ``flip`` (a number, or an
    array that broadcasts against ``answers``, e.g. one flip rate per seed). A flip rate of 1/2 makes the reward
    independent of the answer, i.e. exactly the random reward; 1 makes it the inverted one."""
    check_generator(rng)
    if kind not in REWARD_KINDS:
        raise ValueError(f"kind must be one of {REWARD_KINDS}, got {kind!r}")
    if not np.all((np.asarray(flip) >= 0.0) & (np.asarray(flip) <= 1.0)):
        raise ValueError(f"flip must be in [0, 1], got {flip}")
    correct = (np.asarray(answers) == np.asarray(truth)).astype(float)
    if kind == "correct":
        return correct
    if kind == "inverted":
        return 1.0 - correct
    if kind == "random":
        return (rng.random(correct.shape) < 0.5).astype(float)
    return np.abs(correct - (rng.random(correct.shape) < flip))


def group_advantages(group_rewards: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """GRPO advantages along the last axis (one group): (r - mean) / (std + eps), std with ddof = 0.

    A group whose rewards are all equal gets zero advantages, so it does not move the policy.
    """
    group_rewards = np.asarray(group_rewards, dtype=float)
    if group_rewards.ndim < 1 or group_rewards.shape[-1] < 2:
        raise ValueError("group_rewards needs a last axis (the group) of size >= 2")
    centred = group_rewards - group_rewards.mean(axis=-1, keepdims=True)
    return centred / (group_rewards.std(axis=-1, keepdims=True) + eps)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _check_ppo_shapes(actions, old_logp, advantages, batch_shape, eps_clip) -> None:
    if not 0.0 < eps_clip < 1.0:
        raise ValueError(f"eps_clip must be in (0, 1), got {eps_clip}")
    if not (np.shape(actions) == np.shape(old_logp) == np.shape(advantages) == batch_shape):
        raise ValueError("actions, old_logp and advantages must have the shape of logits without its last axis")


def _active_ratio_advantage(logp: np.ndarray, old_logp: np.ndarray, advantages: np.ndarray,
                            eps_clip: float) -> np.ndarray:
    """rho A where the unclipped term is the minimum of the surrogate (so it carries the gradient), else 0."""
    ratio = np.exp(logp - old_logp)
    clipped = np.clip(ratio, 1 - eps_clip, 1 + eps_clip)
    return np.where(ratio * advantages <= clipped * advantages, ratio * advantages, 0.0)


def ppo_clip_objective(logits: np.ndarray, actions: np.ndarray, old_logp: np.ndarray, advantages: np.ndarray,
                       eps_clip: float = 0.2) -> float:
    """Clipped surrogate mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)), rho = pi(a) / pi_old(a), over all
    but the last axis of ``logits`` (the actions' logits)."""
    _check_ppo_shapes(actions, old_logp, advantages, logits.shape[:-1], eps_clip)
    logp = np.take_along_axis(log_softmax(logits), np.asarray(actions)[..., None], axis=-1)[..., 0]
    ratio = np.exp(logp - old_logp)
    clipped = np.clip(ratio, 1 - eps_clip, 1 + eps_clip)
    return float(np.minimum(ratio * advantages, clipped * advantages).mean())


def ppo_clip_gradient(logits: np.ndarray, actions: np.ndarray, old_logp: np.ndarray, advantages: np.ndarray,
                      eps_clip: float = 0.2) -> np.ndarray:
    """Gradient of ``ppo_clip_objective`` with respect to ``logits``: rho A (e_a - pi) / N where the unclipped
    term is the minimum (rho inside the clip range, or on the side the clip does not bind), else zero."""
    _check_ppo_shapes(actions, old_logp, advantages, logits.shape[:-1], eps_clip)
    logp_all = log_softmax(logits)
    actions = np.asarray(actions)
    logp = np.take_along_axis(logp_all, actions[..., None], axis=-1)[..., 0]
    weight = _active_ratio_advantage(logp, old_logp, advantages, eps_clip) / logp.size
    one_hot = np.eye(logits.shape[-1])[actions]
    return weight[..., None] * (one_hot - np.exp(logp_all))


def signed_advantage_sums(actions: np.ndarray, advantages: np.ndarray, n_actions: int) -> np.ndarray:
    """(2, ..., n_actions) sums over the group axis (last) of the positive and of the negative advantages of
    the samples that took each action. The clipped surrogate depends on a group only through these sums,
    because all samples of one action share one probability ratio."""
    if np.shape(actions) != np.shape(advantages):
        raise ValueError(f"actions {np.shape(actions)} and advantages {np.shape(advantages)} must have one shape")
    one_hot = np.eye(n_actions)[np.asarray(actions)]
    advantages = np.asarray(advantages, dtype=float)[..., None]
    return np.stack([(np.maximum(advantages, 0) * one_hot).sum(axis=-2),
                     (np.minimum(advantages, 0) * one_hot).sum(axis=-2)])


def grpo_weight_gradient(weights: np.ndarray, features: np.ndarray, old_logp: np.ndarray,
                         advantage_sums: np.ndarray, group: int, eps_clip: float = 0.2) -> np.ndarray:
    """Gradient with respect to ``weights`` (S, F, K) of each seed's clipped surrogate, averaged over its B
    groups of ``group`` samples: logits (S, B, K) = features (S, B, F) @ weights, ``old_logp`` (S, B, K) the
    log-probabilities that sampled the groups, ``advantage_sums`` from ``signed_advantage_sums``.

    A positive advantage keeps its gradient while rho <= 1 + eps, a negative one while rho >= 1 - eps."""
    if not 0.0 < eps_clip < 1.0:
        raise ValueError(f"eps_clip must be in (0, 1), got {eps_clip}")
    logp = log_softmax(features @ weights)
    if logp.shape != np.shape(old_logp) or advantage_sums.shape != (2,) + logp.shape:
        raise ValueError("old_logp must have shape (S, B, K) and advantage_sums (2, S, B, K)")
    ratio = np.exp(logp - old_logp)
    positive, negative = advantage_sums
    weight = ratio * (np.where(ratio <= 1 + eps_clip, positive, 0.0) + np.where(ratio >= 1 - eps_clip, negative, 0.0))
    weight /= logp.shape[1] * group
    grad_logits = weight - weight.sum(axis=-1, keepdims=True) * np.exp(logp)
    return np.einsum("sbf,sbk->sfk", features, grad_logits)


def _check_weights(weights: np.ndarray) -> None:
    if np.ndim(weights) != 3 or np.shape(weights)[1:] != (len(FEATURES), len(BEHAVIOURS)):
        raise ValueError(f"weights must have shape (seeds, {len(FEATURES)}, {len(BEHAVIOURS)})")


def policy_probs(weights: np.ndarray, problems: Problems) -> np.ndarray:
    """(seeds, n, 4) behaviour probabilities softmax(features @ W) for weights of shape (seeds, 3, 4)."""
    _check_weights(weights)
    return np.exp(log_softmax(problems.features @ weights))


def expected_accuracy(weights: np.ndarray, problems: Problems) -> np.ndarray:
    """(seeds,) exact expected accuracy: mean over problems of sum_b pi(b | x) P(correct | b, x)."""
    return (policy_probs(weights, problems) * problems.success_probs).sum(axis=-1).mean(axis=-1)


def grpo_step(weights: np.ndarray, problems: Problems, reward_fn: Callable, rng: np.random.Generator, *,
              batch: int = 32, group: int = 8, eps_clip: float = 0.2, inner_epochs: int = 4,
              lr: float = 0.03) -> np.ndarray:
    """One GRPO step for every seed: draw ``batch`` problems, sample ``group`` behaviours and answers each,
    reward them with ``reward_fn(answers, truth, rng)``, normalise advantages within groups, then take
    ``inner_epochs`` plain gradient-ascent steps of size ``lr`` on the clipped surrogate (no KL term)."""
    check_generator(rng)
    check_positive_int(batch, "batch")
    check_positive_int(group, "group", minimum=2)
    check_positive_int(inner_epochs, "inner_epochs")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    _check_weights(weights)
    seeds = weights.shape[0]
    items = rng.integers(len(problems), size=(seeds, batch))
    features = problems.features[items]  # (S, B, F)
    old_logits = features @ weights
    old_logp_all = log_softmax(old_logits)
    draws = rng.random((seeds, batch, group, 1))
    actions = (draws > np.cumsum(np.exp(old_logp_all), axis=-1)[:, :, None, :]).sum(axis=-1)
    actions = np.minimum(actions, len(BEHAVIOURS) - 1)
    group_items = np.broadcast_to(items[..., None], actions.shape)
    answers = sample_answers(problems, group_items, actions, rng)
    advantages = group_advantages(reward_fn(answers, np.asarray(problems.answers)[group_items], rng))
    sums = signed_advantage_sums(actions, advantages, len(BEHAVIOURS))
    for _ in range(inner_epochs):
        weights = weights + lr * grpo_weight_gradient(weights, features, old_logp_all, sums, group, eps_clip)
    return weights


@dataclass(frozen=True)
class GRPORun:
    """Evaluation steps, exact expected accuracy per evaluation set (evaluations, seeds), final weights."""

    steps: np.ndarray
    accuracy: dict[str, np.ndarray]
    weights: np.ndarray


def train_grpo(initial_weights: np.ndarray, train: Problems, evaluate: dict[str, Problems], reward_fn: Callable,
               *, seeds: int = 10, steps: int = 200, seed: int = 0, eval_every: int = 10, **step_kwargs) -> GRPORun:
    """Run ``steps`` GRPO steps from ``initial_weights`` (3, 4) for ``seeds`` independent runs at once and
    record the exact accuracy on each evaluation set every ``eval_every`` steps (and at step 0)."""
    initial_weights = np.asarray(initial_weights, dtype=float)
    if initial_weights.shape != (len(FEATURES), len(BEHAVIOURS)):
        raise ValueError(f"initial_weights must have shape {(len(FEATURES), len(BEHAVIOURS))}")
    check_positive_int(seeds, "seeds")
    check_positive_int(steps, "steps")
    check_positive_int(eval_every, "eval_every")
    rng = np.random.default_rng(seed)
    weights = np.repeat(initial_weights[None], seeds, axis=0)
    recorded_steps, accuracy = [0], {name: [expected_accuracy(weights, p)] for name, p in evaluate.items()}
    for step in range(1, steps + 1):
        weights = grpo_step(weights, train, reward_fn, rng, **step_kwargs)
        if step % eval_every == 0 or step == steps:
            recorded_steps.append(step)
            for name, p in evaluate.items():
                accuracy[name].append(expected_accuracy(weights, p))
    return GRPORun(np.array(recorded_steps), {k: np.array(v) for k, v in accuracy.items()}, weights)
