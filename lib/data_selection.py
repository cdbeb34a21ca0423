"""Choosing a small training subset from a large pool: random, quality-only, coverage and cluster-based selection.

The pool is a simulation of an instruction-tuning collection: items are points in ``R^dim`` ("embeddings"), grouped
in topics ("skills") whose sizes follow a Zipf law, each topic with its own labelling rule; some topics carry
partly random labels ("low-quality data"). The learner is multinomial logistic regression on random Fourier
features. The selection rules are those compared by Yu et al. (2025, "Diversify and Conquer"): random,
top-quality, k-center greedy, k-means-random, kMQ (quality-weighted sampling inside clusters) and the iterative
refinement that re-weights clusters between training rounds.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression

from lib.validation import check_generator, check_positive_int, check_positive_real

# ----------------------------------------------------------------------------------------------------------------
# input checks


def _check_fraction(value: object, name: str, *, closed_right: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    upper_ok = value <= 1 if closed_right else value < 1
    if not (np.isfinite(value) and value >= 0 and upper_ok):
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return float(value)


def _check_matrix(x: object, name: str) -> np.ndarray:
    array = np.asarray(x, dtype=float)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-d array (items x dimensions), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite numbers")
    return array


def _check_labels(labels: object, name: str = "labels") -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        raise ValueError(f"{name} must be a non-empty 1-d array of integers >= 0")
    return array.astype(int)


def _check_budget(budget: object, n: int) -> int:
    budget = check_positive_int(budget, "budget")
    if budget > n:
        raise ValueError(f"budget must be <= the number of items ({n}), got {budget}")
    return budget


# ----------------------------------------------------------------------------------------------------------------
# the simulated pool


@dataclass(frozen=True)
class Pool:
    """A simulated instruction pool with a clean test set.

    ``X, y`` are the pool's items and (possibly noisy) labels, ``y_clean`` the labels before corruption, ``topic``
    each item's topic; ``noisy_topics`` is a boolean mask over topics. ``X_test, y_test, topic_test`` is a clean
    test set with the same number of items in every topic (a broad benchmark).
    """

    X: np.ndarray
    y: np.ndarray
    y_clean: np.ndarray
    topic: np.ndarray
    noisy_topics: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    topic_test: np.ndarray
    n_classes: int

    @property
    def noisy_item(self) -> np.ndarray:
        """Boolean mask over the pool: the item belongs to a noisy topic."""
        return self.noisy_topics[self.topic]

    @property
    def noisy_share(self) -> float:
        """Fraction of the pool's items that come from noisy topics."""
        return float(self.noisy_item.mean())


def zipf_topic_sizes(n: int, n_topics: int, exponent: float) -> np.ndarray:
    """Topic sizes proportional to ``rank ** -exponent`` (largest first), rounded to sum to ``n``, each >= 1."""
    n = check_positive_int(n, "n")
    n_topics = check_positive_int(n_topics, "n_topics")
    exponent = float(exponent)
    if not np.isfinite(exponent) or exponent < 0:
        raise ValueError(f"exponent must be a finite number >= 0, got {exponent}")
    if n < n_topics:
        raise ValueError(f"n must be >= n_topics ({n_topics}), got {n}")
    share = np.arange(1, n_topics + 1, dtype=float) ** -exponent
    share /= share.sum()
    return 1 + _largest_remainder(share * (n - n_topics), n - n_topics)


def _largest_remainder(target: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total`` that round ``target`` (which sums to ``total``) by largest remainders."""
    counts = np.floor(target).astype(int)
    order = np.argsort(-(target - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _choose_noisy_topics(sizes: np.ndarray, n_noisy: int, target_share: float, rng: np.random.Generator,
                         n_tries: int = 200) -> np.ndarray:
    """Of ``n_tries`` random sets of ``n_noisy`` topics, the one whose share of the items is closest to
    ``target_share``; a topic holding more than half of ``target_share`` on its own is never chosen.

    Without the size limit one draw of a head topic of the Zipf law (which can hold a quarter of the pool) would
    set the noisy share alone; without the search, random small topics give a share far below the nominal one.
    """
    mask = np.zeros(len(sizes), dtype=bool)
    if n_noisy == 0:
        return mask
    share = sizes / sizes.sum()
    eligible = np.flatnonzero(share <= target_share / 2)
    if len(eligible) < n_noisy:
        eligible = np.argsort(share, kind="stable")[:n_noisy]
    draws = [rng.choice(eligible, n_noisy, replace=False) for _ in range(n_tries)]
    best = min(draws, key=lambda topics: abs(share[topics].sum() - target_share))
    mask[best] = True
    return mask


def make_pool(
    n: int = 20_000,
    *,
    n_topics: int = 60,
    dim: int = 16,
    n_relevant: int = 2,
    zipf: float = 1.2,
    noisy_frac: float = 0.2,
    noise_rate: float = 0.6,
    n_classes: int = 3,
    n_test: int = 3000,
    center_scale: float = 3.0,
    off_std: float = 0.3,
    seed: int = 0,
) -> Pool:
    """Simulate a pool of ``n`` items in ``n_topics`` Gaussian topics with Zipf sizes, and a clean test set.

    Topic ``t`` has centre ``c_t ~ N(0, center_scale^2 I)``; its items are ``c_t + noise`` with standard deviation
    1 on ``n_relevant`` random coordinates ``S_t`` and ``off_std`` on the others. The label of ``x`` is
    ``argmax_k (W_t (x - c_t)_{S_t})_k`` with a random ``W_t`` (``n_classes x n_relevant``): a topic-specific
    skill. In ``round(noisy_frac * n_topics)`` topics (not among the largest), each label is replaced by a uniform
    random label with probability ``noise_rate``; they are chosen so that their share of the pool's items is
    close to ``noisy_frac`` (see ``Pool.noisy_share``). The test set has ``n_test // n_topics`` clean items per topic.
    """
    n = check_positive_int(n, "n")
    n_topics = check_positive_int(n_topics, "n_topics")
    dim = check_positive_int(dim, "dim")
    n_relevant = check_positive_int(n_relevant, "n_relevant")
    n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
    n_test = check_positive_int(n_test, "n_test")
    if n_relevant > dim:
        raise ValueError(f"n_relevant must be <= dim ({dim}), got {n_relevant}")
    if n_test < n_topics:
        raise ValueError(f"n_test must be >= n_topics ({n_topics}), got {n_test}")
    noisy_frac = _check_fraction(noisy_frac, "noisy_frac", closed_right=False)
    noise_rate = _check_fraction(noise_rate, "noise_rate")
    center_scale = check_positive_real(center_scale, "center_scale")
    off_std = check_positive_real(off_std, "off_std")
    rng = np.random.default_rng(seed)

    sizes = zipf_topic_sizes(n, n_topics, zipf)
    centers = center_scale * rng.standard_normal((n_topics, dim))
    relevant = np.array([rng.choice(dim, n_relevant, replace=False) for _ in range(n_topics)])
    rules = rng.standard_normal((n_topics, n_classes, n_relevant))
    noisy_topics = _choose_noisy_topics(sizes, int(round(noisy_frac * n_topics)), noisy_frac, rng)

    def draw(topic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = np.full((len(topic), dim), off_std)
        np.put_along_axis(scale, relevant[topic], 1.0, axis=1)
        offset = scale * rng.standard_normal((len(topic), dim))
        local = np.take_along_axis(offset, relevant[topic], axis=1)
        labels = np.einsum("ikr,ir->ik", rules[topic], local).argmax(axis=1)
        return centers[topic] + offset, labels

    topic = np.repeat(np.arange(n_topics), sizes)
    X, y_clean = draw(topic)
    corrupt = noisy_topics[topic] & (rng.random(n) < noise_rate)
    y = np.where(corrupt, rng.integers(0, n_classes, n), y_clean)
    topic_test = np.repeat(np.arange(n_topics), n_test // n_topics)
    X_test, y_test = draw(topic_test)
    return Pool(X, y, y_clean, topic, noisy_topics, X_test, y_test, topic_test, n_classes)


# ----------------------------------------------------------------------------------------------------------------
# the learner


class RandomFeatureLogistic:
    """Multinomial logistic regression on random Fourier features of an RBF kernel ``exp(-gamma |x - z|^2)``.

    Features: ``sqrt(2 / D) cos(x W + b)`` with ``W ~ N(0, 2 gamma)`` entrywise and ``b ~ U[0, 2 pi)``; the
    classifier is scikit-learn's ``LogisticRegression(C=C)``. Probabilities always have ``n_classes`` columns,
    also when the training labels miss a class (a missing class gets probability 0 before a tiny floor).
    """

    def __init__(self, dim: int, *, n_classes: int = 3, n_features: int = 512, gamma: float = 0.1,
                 C: float = 100.0, max_iter: int = 500, seed: int = 0) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
        n_features = check_positive_int(n_features, "n_features")
        gamma = check_positive_real(gamma, "gamma")
        self.C = check_positive_real(C, "C")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(0.0, np.sqrt(2 * gamma), (self.dim, n_features))
        self.phases = rng.uniform(0.0, 2 * np.pi, n_features)
        self.model: LogisticRegression | None = None
        self.constant_class: int | None = None

    def features(self, X: object) -> np.ndarray:
        """The random Fourier features of ``X`` (items x n_features)."""
        X = _check_matrix(X, "X")
        if X.shape[1] != self.dim:
            raise ValueError(f"X must have {self.dim} columns, got {X.shape[1]}")
        return np.sqrt(2.0 / len(self.phases)) * np.cos(X @ self.weights + self.phases)

    def fit(self, X: object, y: object) -> "RandomFeatureLogistic":
        """Fit on items ``X`` with labels ``y`` in ``{0, ..., n_classes - 1}``; returns self."""
        y = _check_labels(y, "y")
        phi = self.features(X)
        if len(y) != len(phi):
            raise ValueError(f"y must have one label per row of X ({len(phi)}), got {len(y)}")
        if y.max() >= self.n_classes:
            raise ValueError(f"y must lie in 0..{self.n_classes - 1}, got {y.max()}")
        classes = np.unique(y)
        self.model, self.constant_class = None, None
        if len(classes) == 1:
            self.constant_class = int(classes[0])
        else:
            self.model = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(phi, y)
        return self

    def predict_proba(self, X: object) -> np.ndarray:
        """Class probabilities (items x n_classes)."""
        if self.model is None and self.constant_class is None:
            raise ValueError("the model must be fitted first (call fit)")
        phi = self.features(X)
        probs = np.zeros((len(phi), self.n_classes))
        if self.model is None:
            probs[:, self.constant_class] = 1.0
        else:
            probs[:, self.model.classes_] = self.model.predict_proba(phi)
        probs = np.maximum(probs, 1e-12)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, X: object) -> np.ndarray:
        """The most probable class of each item."""
        return self.predict_proba(X).argmax(axis=1)

    def accuracy(self, X: object, y: object) -> float:
        """Fraction of items whose predicted class equals ``y``."""
        return float(np.mean(self.predict(X) == _check_labels(y, "y")))


def train_on_subset(pool: Pool, idx: object, *, seed: int = 0,
                    **learner_options: int | float) -> RandomFeatureLogistic:
    """A fresh ``RandomFeatureLogistic`` fitted on the pool items ``idx`` (their possibly noisy labels)."""
    idx = _check_index_set(idx, len(pool.y), "idx")
    learner = RandomFeatureLogistic(pool.X.shape[1], n_classes=pool.n_classes, seed=seed, **learner_options)
    return learner.fit(pool.X[idx], pool.y[idx])


def _check_index_set(idx: object, n: int, name: str) -> np.ndarray:
    idx = _check_labels(idx, name)
    if idx.max() >= n:
        raise ValueError(f"{name} must index the {n} items, got {idx.max()}")
    if len(np.unique(idx)) != len(idx):
        raise ValueError(f"{name} must not repeat items")
    return idx


def label_log_probs(model: RandomFeatureLogistic, X: object) -> np.ndarray:
    """``log p_model(k | x)`` for every item and class (items x n_classes): a judge's or a learner's view."""
    if not isinstance(model, RandomFeatureLogistic):
        raise TypeError(f"model must be a RandomFeatureLogistic, got {type(model).__name__}")
    return np.log(model.predict_proba(X))


# ----------------------------------------------------------------------------------------------------------------
# clustering and simple selection rules


def kmeans_clusters(emb: object, K: int, *, seed: int = 0, n_init: int = 5,
                    max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means (scikit-learn) of the embeddings: cluster labels (n,) and centres (K, d)."""
    emb = _check_matrix(emb, "emb")
    K = check_positive_int(K, "K")
    if K > len(emb):
        raise ValueError(f"K must be <= the number of items ({len(emb)}), got {K}")
    km = KMeans(n_clusters=K, n_init=check_positive_int(n_init, "n_init"),
                max_iter=check_positive_int(max_iter, "max_iter"), random_state=seed).fit(emb)
    return km.labels_.astype(int), km.cluster_centers_


def select_random(n: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    """``budget`` distinct indices of ``range(n)``, uniformly at random."""
    n = check_positive_int(n, "n")
    return np.sort(check_generator(rng).choice(n, _check_budget(budget, n), replace=False))


def select_top_quality(quality: object, budget: int) -> np.ndarray:
    """The ``budget`` items of highest quality (ties to the lower index): the local, quality-only criterion."""
    quality = np.asarray(quality, dtype=float)
    if quality.ndim != 1 or quality.size == 0 or not np.all(np.isfinite(quality)):
        raise ValueError("quality must be a non-empty 1-d array of finite numbers")
    budget = _check_budget(budget, len(quality))
    return np.sort(np.argsort(-quality, kind="stable")[:budget])


def select_kcenter_greedy(emb: object, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Farthest-point (k-center greedy) selection: a random first item, then repeatedly the item farthest from
    the items chosen so far. Its covering radius is at most twice the optimal one (Gonzalez 1985).

    Returns the indices in the order picked.
    """
    emb = _check_matrix(emb, "emb")
    budget = _check_budget(budget, len(emb))
    squared_norms = np.einsum("ij,ij->i", emb, emb)
    picked = np.empty(budget, dtype=int)
    picked[0] = check_generator(rng).integers(len(emb))
    distance2 = squared_norms - 2 * emb @ emb[picked[0]] + squared_norms[picked[0]]
    for k in range(1, budget):
        picked[k] = int(np.argmax(distance2))
        np.minimum(distance2, squared_norms - 2 * emb @ emb[picked[k]] + squared_norms[picked[k]], out=distance2)
    return picked


def covering_radius(emb: object, centers_idx: object) -> float:
    """``max_i min_j |x_i - x_{c_j}|``: how far the worst-covered item is from the chosen items."""
    emb = _check_matrix(emb, "emb")
    centers_idx = _check_index_set(centers_idx, len(emb), "centers_idx")
    distance = np.linalg.norm(emb[:, None, :] - emb[None, centers_idx, :], axis=2)
    return float(distance.min(axis=1).max())


# ----------------------------------------------------------------------------------------------------------------
# cluster quotas and sampling inside clusters


def allocate_quotas(capacity: object, budget: int, weights: object | None = None) -> np.ndarray:
    """Split ``budget`` items over clusters in proportion to ``weights`` (equal by default), never above a
    cluster's ``capacity``; what a full cluster cannot take goes to the others in proportion to their weights.

    The real-valued targets ``min(capacity_c, lam w_c)`` (water filling) are rounded by largest remainder (ties to
    the lower cluster index), so the quotas sum exactly to ``budget``; clusters of weight 0 get items only when the
    others are full.
    """
    capacity = _check_labels(capacity, "capacity")
    budget = check_positive_int(budget, "budget", minimum=0)
    if budget > capacity.sum():
        raise ValueError(f"budget must be <= the total capacity ({capacity.sum()}), got {budget}")
    if weights is None:
        weights = np.ones(len(capacity))
    weights = np.asarray(weights, dtype=float)
    if weights.shape != capacity.shape or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("weights must be finite, >= 0 and have one entry per cluster")
    positive = weights > 0
    target = np.zeros(len(capacity))
    if capacity[positive].sum() >= budget:
        target[positive] = _water_fill(capacity[positive], budget, weights[positive])
    else:  # the weighted clusters cannot take it all: fill them, share the rest equally among the others
        target[positive] = capacity[positive]
        rest = budget - capacity[positive].sum()
        target[~positive] = _water_fill(capacity[~positive], rest, np.ones((~positive).sum()))
    return _largest_remainder(target, budget)


def _water_fill(capacity: np.ndarray, total: int, weights: np.ndarray) -> np.ndarray:
    """Real targets ``min(capacity_c, lam * w_c)`` summing to ``total`` (``total <= capacity.sum()``, w > 0)."""
    target = np.zeros(len(capacity))
    active = np.ones(len(capacity), dtype=bool)
    free = float(total)
    while active.any():
        proposal = free * weights / weights[active].sum()
        full = active & (proposal >= capacity)
        if not full.any():
            target[active] = proposal[active]
            break
        target[full] = capacity[full]
        free -= capacity[full].sum()
        active &= ~full
    return target


def sample_within_clusters(labels: object, quotas: object, rng: np.random.Generator, *,
                           probs: object | None = None, exclude: object | None = None) -> np.ndarray:
    """Draw ``quotas[c]`` distinct items of each cluster ``c``, uniformly or with probabilities proportional to
    ``probs`` (successive draws without replacement), never items listed in ``exclude``.
    """
    labels = _check_labels(labels)
    quotas = _check_labels(quotas, "quotas")
    rng = check_generator(rng)
    available = np.ones(len(labels), dtype=bool)
    if exclude is not None and len(exclude) > 0:
        available[_check_index_set(exclude, len(labels), "exclude")] = False
    if probs is not None:
        probs = np.asarray(probs, dtype=float)
        if probs.shape != labels.shape or not np.all(np.isfinite(probs)) or np.any(probs <= 0):
            raise ValueError("probs must be finite, > 0 and have one entry per item")
    chosen = []
    for c in np.flatnonzero(quotas):
        members = np.flatnonzero((labels == c) & available)
        if quotas[c] > len(members):
            raise ValueError(f"quotas[{c}] = {quotas[c]} exceeds the {len(members)} available items of cluster {c}")
        p = None if probs is None else probs[members] / probs[members].sum()
        chosen.append(rng.choice(members, quotas[c], replace=False, p=p))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=int)


def _cluster_count(labels: np.ndarray, n_clusters: int | None) -> int:
    return int(labels.max()) + 1 if n_clusters is None else check_positive_int(n_clusters, "n_clusters")


def select_kmeans_random(labels: object, budget: int, rng: np.random.Generator, *,
                         redistribute: bool = True, n_clusters: int | None = None) -> np.ndarray:
    """k-means-random: ``budget // K`` items per cluster, uniformly at random inside each cluster.

    A cluster smaller than its share gives all its items; with ``redistribute`` (our default) the budget it
    leaves unused, and the remainder ``budget - K * (budget // K)``, go to the other clusters in equal parts;
    without it they are dropped, as in the official code, and fewer than ``budget`` items are returned.
    """
    labels = _check_labels(labels)
    budget = _check_budget(budget, len(labels))
    sizes = np.bincount(labels, minlength=_cluster_count(labels, n_clusters))
    if redistribute:
        quotas = allocate_quotas(sizes, budget)
    else:
        quotas = np.minimum(budget // len(sizes), sizes)
    return sample_within_clusters(labels, quotas, rng)


def softmax(scores: object, temperature: float = 1.0) -> np.ndarray:
    """``exp(s / T) / sum exp(s / T)``, computed stably."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 1 or scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("scores must be a non-empty 1-d array of finite numbers")
    z = scores / check_positive_real(temperature, "temperature")
    w = np.exp(z - z.max())
    return w / w.sum()


def select_kmeans_quality(labels: object, quality: object, budget: int, rng: np.random.Generator, *,
                          n_clusters: int | None = None) -> np.ndarray:
    """kMQ: the quotas of k-means-random, but inside cluster ``c`` item ``i`` is drawn with probability
    ``exp(q_i) / sum_{j in c} exp(q_j)`` (successively, without replacement).
    """
    labels = _check_labels(labels)
    quality = np.asarray(quality, dtype=float)
    if quality.shape != labels.shape or not np.all(np.isfinite(quality)):
        raise ValueError("quality must be finite and have one entry per item")
    budget = _check_budget(budget, len(labels))
    quotas = allocate_quotas(np.bincount(labels, minlength=_cluster_count(labels, n_clusters)), budget)
    probs = np.exp(quality - quality.max())
    return sample_within_clusters(labels, quotas, rng, probs=np.maximum(probs, 1e-300))


# ----------------------------------------------------------------------------------------------------------------
# iterative refinement


def reward_gap(judge_log_probs: object, gold: object, predicted: object) -> np.ndarray:
    """``d_i = log p_judge(gold_i | x_i) - log p_judge(predicted_i | x_i)``: how much better the judge finds the
    reference answer than the current model's answer (> 0: still worth learning; < 0: the reference looks wrong).
    """
    judge = _check_matrix(judge_log_probs, "judge_log_probs")
    gold, predicted = _check_labels(gold, "gold"), _check_labels(predicted, "predicted")
    if not (len(gold) == len(predicted) == len(judge)):
        raise ValueError("judge_log_probs, gold and predicted must have one row/entry per item")
    if max(gold.max(), predicted.max()) >= judge.shape[1]:
        raise ValueError(f"gold and predicted must lie in 0..{judge.shape[1] - 1}")
    rows = np.arange(len(judge))
    return judge[rows, gold] - judge[rows, predicted]


def cluster_means(values: object, labels: object, n_clusters: int, *, empty: float = 0.0) -> np.ndarray:
    """Mean of ``values`` over each cluster's items; ``empty`` for a cluster with no items."""
    values = np.asarray(values, dtype=float)
    labels = _check_labels(labels)
    if values.shape != labels.shape:
        raise ValueError("values and labels must have the same shape")
    n_clusters = check_positive_int(n_clusters, "n_clusters")
    if labels.max() >= n_clusters:
        raise ValueError(f"labels must lie in 0..{n_clusters - 1}")
    counts = np.bincount(labels, minlength=n_clusters)
    sums = np.bincount(labels, weights=values, minlength=n_clusters)
    return np.where(counts > 0, sums / np.maximum(counts, 1), empty)


def probe_items(labels: object, selected: object, per_cluster: int, rng: np.random.Generator,
                *, n_clusters: int | None = None) -> np.ndarray:
    """Up to ``per_cluster`` items of each cluster that are not ``selected``, at random: held-out items on which
    the current model is scored (it has not memorised them)."""
    labels = _check_labels(labels)
    per_cluster = check_positive_int(per_cluster, "per_cluster")
    selected = _check_index_set(selected, len(labels), "selected") if len(selected) else np.empty(0, int)
    available = np.ones(len(labels), dtype=bool)
    available[selected] = False
    capacity = np.bincount(labels[available], minlength=_cluster_count(labels, n_clusters))
    return sample_within_clusters(labels, np.minimum(capacity, per_cluster), rng, exclude=selected)


def cluster_scores(model: RandomFeatureLogistic, selected: object, *, X: object, gold: object, labels: object,
                   n_clusters: int, rng: np.random.Generator, signal: str = "judge_gap",
                   judge_log_probs: object | None = None, on: str = "held_out", per_cluster: int = 20) -> np.ndarray:
    """Score every cluster by the current ``model``: the mean over some of its items of

    - ``signal="judge_gap"``: the reward gap ``log p_judge(gold) - log p_judge(model's answer)`` (the paper), or
    - ``signal="loss"``: the model's own loss ``-log p_model(gold)`` (the perplexity option of the official code),

    measured ``on="selected"`` items (as specified; a model that memorises its training set scores ~0 there) or
    ``on="held_out"``: up to ``per_cluster`` unselected items of each cluster (our redesign).
    """
    if signal not in ("judge_gap", "loss"):
        raise ValueError(f"signal must be 'judge_gap' or 'loss', got {signal!r}")
    if on not in ("held_out", "selected"):
        raise ValueError(f"on must be 'held_out' or 'selected', got {on!r}")
    if signal == "judge_gap" and judge_log_probs is None:
        raise ValueError("judge_log_probs is required with signal='judge_gap'")
    X, gold, labels = _check_matrix(X, "X"), _check_labels(gold, "gold"), _check_labels(labels)
    if not len(X) == len(gold) == len(labels):
        raise ValueError("X, gold and labels must have one row/entry per item")
    selected = _check_index_set(selected, len(labels), "selected")
    items = selected if on == "selected" else probe_items(labels, selected, per_cluster, rng, n_clusters=n_clusters)
    if signal == "loss":
        values = -label_log_probs(model, X[items])[np.arange(len(items)), gold[items]]
    else:
        judge = _check_matrix(judge_log_probs, "judge_log_probs")
        if len(judge) != len(labels):
            raise ValueError("judge_log_probs must have one row per item")
        values = reward_gap(judge[items], gold[items], model.predict(X[items]))
    return cluster_means(values, labels[items], n_clusters)


@dataclass(frozen=True)
class IterativeSelection:
    """The items drawn in each round (``new[r]``), the cluster scores and weights that set the next round's
    draws (``scores[r]``, ``weights[r]`` for ``r = 0 .. rounds-2``) and the model trained after each round."""

    new: list[np.ndarray]
    scores: list[np.ndarray]
    weights: list[np.ndarray]
    models: list[object]

    @property
    def selected(self) -> np.ndarray:
        """Every item selected, all rounds together."""
        return np.sort(np.concatenate(self.new))


def select_iterative(
    labels: object,
    budget: int,
    *,
    rounds: int = 3,
    train_fn: Callable[[np.ndarray], object],
    score_fn: Callable[[object, np.ndarray], np.ndarray],
    rng: np.random.Generator,
    temperature: float = 1.0,
    allocation: str = "quota",
    n_clusters: int | None = None,
) -> IterativeSelection:
    """Iterative refinement: k-means-random for the first ``budget / rounds`` items, then in each round train on
    everything selected (``train_fn(idx) -> model``), score the clusters (``score_fn(model, idx) -> (K,)``), set
    weights ``w = softmax(scores / temperature)`` and draw the next ``budget / rounds`` unused items.

    ``allocation="quota"`` (our reading) gives cluster ``c`` a quota proportional to ``w_c``;
    ``allocation="draw"`` (the official code) draws each item's cluster i.i.d. from ``Categorical(w)``; in both,
    what a cluster cannot supply goes to the others by weight. Inside a cluster, items are drawn uniformly.
    """
    labels = _check_labels(labels)
    budget = _check_budget(budget, len(labels))
    rounds = check_positive_int(rounds, "rounds")
    if rounds > budget:
        raise ValueError(f"rounds must be <= budget ({budget}), got {rounds}")
    if allocation not in ("quota", "draw"):
        raise ValueError(f"allocation must be 'quota' or 'draw', got {allocation!r}")
    temperature = check_positive_real(temperature, "temperature")
    rng = check_generator(rng)
    sizes = np.bincount(labels, minlength=_cluster_count(labels, n_clusters))
    per_round = [budget // rounds + (r < budget % rounds) for r in range(rounds)]

    new = [sample_within_clusters(labels, allocate_quotas(sizes, per_round[0]), rng)]
    scores, weights, models = [], [], []
    for r in range(1, rounds + 1):
        selected = np.concatenate(new)
        model = train_fn(selected)
        models.append(model)
        if r == rounds:
            break
        score = np.asarray(score_fn(model, selected), dtype=float)
        if score.shape != sizes.shape:
            raise ValueError(f"score_fn must return one score per cluster ({len(sizes)}), got {score.shape}")
        w = softmax(score, temperature)
        capacity = sizes - np.bincount(labels[selected], minlength=len(sizes))
        if allocation == "quota":
            quotas = allocate_quotas(capacity, per_round[r], w)
        else:
            drawn = np.minimum(rng.multinomial(per_round[r], w), capacity)
            left = per_round[r] - drawn.sum()
            quotas = drawn + (allocate_quotas(capacity - drawn, left, w) if left else 0)
        new.append(sample_within_clusters(labels, quotas, rng, exclude=selected))
        scores.append(score)
        weights.append(w)
    return IterativeSelection(new, scores, weights, models)
