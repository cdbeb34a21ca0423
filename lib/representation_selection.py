"""Representation-based data selection (RDS+) and its baselines, on a synthetic instruction pool.

RDS+ embeds every pool item and a few examples of the target tasks with the *base* language model
(position-weighted mean of the last-layer hidden states, rows L2-normalised), scores pool items by cosine
similarity to each query example, and fills the budget round-robin over the query examples. The baselines are
random selection and perplexity ranking (top-PPL / mid-PPL). The pool is a mix of 16 toy "instruction" task
families with Zipf proportions plus items whose outputs are random (low quality).

Token ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, digits 3..12, separator 13, then 3 wording tokens per family
(family ``f`` draws its 3 instruction words from 4 tokens, the 4th shared with family ``f + 1``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from lib.tiny_lm import TinyDecoder, train_lm
from lib.validation import check_generator, check_positive_int

PAD, BOS, EOS, DIGIT0, SEP, WORD0 = 0, 1, 2, 3, 13, 14
N_FAMILIES, N_INPUT, N_WORDS = 16, 4, 3
VOCAB_SIZE = 64
MAX_LEN = 1 + N_WORDS + N_INPUT + 1 + N_INPUT + 1
POOLINGS = ("weighted_mean", "mean", "last_token")


def _rotate(x: np.ndarray, shift: int) -> np.ndarray:
    return np.roll(x, shift, axis=1)


TASKS: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [
    ("copy", lambda x: x),
    ("sort", lambda x: np.sort(x, axis=1)),
    ("first", lambda x: x[:, :1]),
    ("max", lambda x: x.max(axis=1, keepdims=True)),
    ("complement", lambda x: 9 - x),
    ("rotate left", lambda x: _rotate(x, -1)),
    ("parity", lambda x: x % 2),
    ("first two", lambda x: x[:, :2]),
    ("count evens", lambda x: (x % 2 == 0).sum(axis=1, keepdims=True)),
    ("sort descending", lambda x: -np.sort(-x, axis=1)),
    ("sum mod 10", lambda x: x.sum(axis=1, keepdims=True) % 10),
    ("rotate right", lambda x: _rotate(x, 1)),
    ("last two", lambda x: x[:, -2:]),
    ("reverse", lambda x: x[:, ::-1]),
    ("min", lambda x: x.min(axis=1, keepdims=True)),
    ("plus one", lambda x: (x + 1) % 10),
]
TARGET_FAMILIES = (13, 14, 15)


@dataclass(frozen=True)
class Pool:
    """Token sequences (n, MAX_LEN), a mask of the response tokens (output digits + ``<eos>``), the task family of
    every item and whether its output is random noise."""

    tokens: torch.Tensor
    response_mask: torch.Tensor
    family: np.ndarray
    noisy: np.ndarray

    def __len__(self) -> int:
        return len(self.family)

    def subset(self, index: np.ndarray | list[int]) -> Pool:
        """The items at ``index``."""
        index = np.asarray(index, dtype=int)
        return Pool(self.tokens[index], self.response_mask[index], self.family[index], self.noisy[index])


def family_words(family: int) -> np.ndarray:
    """The 4 wording-token ids of ``family`` (its last one is shared with the next family)."""
    return WORD0 + (N_WORDS * family + np.arange(4)) % (N_WORDS * N_FAMILIES)


def zipf_proportions(n_families: int = N_FAMILIES, exponent: float = 1.0) -> np.ndarray:
    """Family proportions p_f proportional to 1 / (f + 1) ** exponent (family 0 most common)."""
    check_positive_int(n_families, "n_families")
    weights = 1.0 / np.arange(1, n_families + 1) ** exponent
    return weights / weights.sum()


def make_items(family: np.ndarray, rng: np.random.Generator, noisy: np.ndarray | None = None) -> Pool:
    """One random item per entry of ``family``: wording, 6 input digits, separator, output, ``<eos>``.

    A ``noisy`` item keeps the wording and the input but gets random output digits of the right length.
    """
    check_generator(rng)
    family = np.asarray(family, dtype=int)
    if family.ndim != 1 or family.size == 0 or family.min() < 0 or family.max() >= N_FAMILIES:
        raise ValueError(f"family must be a non-empty 1-D array of ints in [0, {N_FAMILIES})")
    noisy = np.zeros(len(family), bool) if noisy is None else np.asarray(noisy, dtype=bool)
    if noisy.shape != family.shape:
        raise ValueError("noisy must have the shape of family")
    tokens = np.full((len(family), MAX_LEN), PAD, dtype=np.int64)
    response = np.zeros_like(tokens, dtype=bool)
    digits = rng.integers(0, 10, size=(len(family), N_INPUT))
    tokens[:, 0] = BOS
    for f in np.unique(family):
        rows = np.flatnonzero(family == f)
        words = family_words(f)
        chosen = np.stack([rng.choice(words, N_WORDS, replace=False) for _ in rows])
        output = TASKS[f][1](digits[rows])
        noise_rows = noisy[rows]
        output[noise_rows] = rng.integers(0, 10, size=(int(noise_rows.sum()), output.shape[1]))
        start = 1 + N_WORDS + N_INPUT + 1
        length = output.shape[1]
        tokens[rows, 1:1 + N_WORDS] = chosen
        tokens[rows, 1 + N_WORDS:start - 1] = DIGIT0 + digits[rows]
        tokens[rows, start - 1] = SEP
        tokens[rows, start:start + length] = DIGIT0 + output
        tokens[rows, start + length] = EOS
        response[rows, start:start + length + 1] = True
    return Pool(torch.from_numpy(tokens), torch.from_numpy(response), family, noisy)


def make_pool(n: int, rng: np.random.Generator, *, noise: float = 0.2, exponent: float = 1.0) -> Pool:
    """A pool of ``n`` items: families drawn with Zipf proportions, a fraction ``noise`` with random outputs."""
    check_positive_int(n, "n")
    check_generator(rng)
    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    family = rng.choice(N_FAMILIES, size=n, p=zipf_proportions(N_FAMILIES, exponent))
    return make_items(family, rng, rng.random(n) < noise)


# --- embeddings -------------------------------------------------------------------------------------------


def _check_states(H: torch.Tensor, mask: torch.Tensor) -> None:
    if not isinstance(H, torch.Tensor) or H.ndim != 3:
        raise ValueError("H must be a float tensor of shape (batch, length, d)")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != H.shape[:2]:
        raise ValueError("mask must be a bool tensor of shape (batch, length) matching H")
    if not bool(mask.any(dim=1).all()):
        raise ValueError("mask must keep at least one position in every row")


def weighted_mean_pool(H: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean: sum_t w_t H_t with w_t = t / sum_s s over the kept positions t = 1, 2, ...

    ``mask`` (batch, length) marks the kept (non-padding) positions; their rank among the kept positions of
    the row is t, so later tokens weigh more (the SGPT recipe used by RDS+).
    """
    _check_states(H, mask)
    positions = torch.cumsum(mask.to(H.dtype), dim=1) * mask
    weights = positions / positions.sum(dim=1, keepdim=True)
    return (weights[..., None] * H).sum(dim=1)


def mean_pool(H: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain mean of the hidden states over the kept positions."""
    _check_states(H, mask)
    weights = mask.to(H.dtype)
    return (weights[..., None] * H).sum(dim=1) / weights.sum(dim=1, keepdim=True)


def last_token_pool(H: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at the last kept position of each row."""
    _check_states(H, mask)
    last = mask.shape[1] - 1 - torch.argmax(mask.flip(1).to(torch.int64), dim=1)
    return H[torch.arange(len(H)), last]


@torch.no_grad()
def last_hidden_states(model: TinyDecoder, tokens: torch.Tensor) -> torch.Tensor:
    """Last-layer hidden states (batch, length, d) of ``model``: embedding, blocks and final LayerNorm."""
    if not isinstance(model, TinyDecoder):
        raise TypeError(f"model must be a TinyDecoder, got {type(model).__name__}")
    model.eval()
    x = model.embed(tokens)
    if model.positions is not None:
        x = x + model.positions(torch.arange(tokens.shape[1]))
    for block in model.blocks:
        x = block(x)
    return model.norm(x)


def embed(model: TinyDecoder, tokens: torch.Tensor, *, pooling: str = "weighted_mean",
          batch_size: int = 2048) -> np.ndarray:
    """Unit-norm embeddings (n, d) of right-padded sequences: pooled last-layer states over non-pad tokens."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    check_positive_int(batch_size, "batch_size")
    pool_fn = {"weighted_mean": weighted_mean_pool, "mean": mean_pool, "last_token": last_token_pool}[pooling]
    parts = []
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size]
        parts.append(pool_fn(last_hidden_states(model, chunk), chunk != PAD))
    pooled = torch.cat(parts)
    return F.normalize(pooled, dim=1).numpy().astype(np.float64)


def tfidf_embeddings(pool_tokens: torch.Tensor, query_tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm TF-IDF bag-of-tokens vectors (n, VOCAB_SIZE) of pool and query sequences; the stand-in for an
    off-the-shelf embedder, with no language model involved.

    Every token except ``<pad>``, ``<bos>`` and ``<eos>`` counts; the inverse document frequency is fitted on the
    pool, smoothed as ``ln((1 + n) / (1 + df)) + 1``, and tokens the pool never contains are ignored.
    """
    counts = [_token_counts(t, name) for t, name in ((pool_tokens, "pool_tokens"), (query_tokens, "query_tokens"))]
    document_frequency = (counts[0] > 0).sum(axis=0)
    idf = np.where(document_frequency > 0, np.log((1 + len(counts[0])) / (1 + document_frequency)) + 1, 0.0)
    vectors = [c * idf for c in counts]
    if np.any(np.linalg.norm(vectors[1], axis=1) == 0):
        raise ValueError("every query row needs at least one token that occurs in the pool")
    pool_vectors, query_vectors = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors)
    return pool_vectors, query_vectors


def _token_counts(tokens: torch.Tensor, name: str) -> np.ndarray:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2 or tokens.numel() == 0 or tokens.min() < 0 or tokens.max() >= VOCAB_SIZE:
        raise ValueError(f"{name} must be a non-empty 2-D tensor of token ids in [0, {VOCAB_SIZE})")
    counts = np.zeros((len(tokens), VOCAB_SIZE))
    np.add.at(counts, (np.repeat(np.arange(len(tokens)), tokens.shape[1]), tokens.reshape(-1).numpy()), 1)
    counts[:, [PAD, BOS, EOS]] = 0
    if np.any(counts.sum(axis=1) == 0):
        raise ValueError(f"every row of {name} needs at least one token other than <pad>, <bos>, <eos>")
    return counts


def rds_scores(E_pool: np.ndarray, E_query: np.ndarray) -> np.ndarray:
    """Cosine similarities (n_query, n_pool) between query and pool embeddings (rows normalised here)."""
    E_pool, E_query = np.asarray(E_pool, dtype=float), np.asarray(E_query, dtype=float)
    if E_pool.ndim != 2 or E_query.ndim != 2 or E_pool.shape[1] != E_query.shape[1]:
        raise ValueError("E_pool (n_pool, d) and E_query (n_query, d) must be 2-D with the same d")
    norms_p, norms_q = np.linalg.norm(E_pool, axis=1), np.linalg.norm(E_query, axis=1)
    if np.any(norms_p == 0) or np.any(norms_q == 0):
        raise ValueError("embeddings must be non-zero rows")
    return (E_query / norms_q[:, None]) @ (E_pool / norms_p[:, None]).T


# --- selectors --------------------------------------------------------------------------------------------


def _check_k(k: object, n: int) -> int:
    k = check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k must be <= the pool size {n}, got {k}")
    return k


def round_robin_select(S: np.ndarray, k: int) -> list[int]:
    """Pick ``k`` distinct pool items: cycle over the query rows of ``S`` (n_query, n_pool), each taking its
    best-scoring pool item not picked yet (ties broken by the lower index)."""
    S = np.asarray(S, dtype=float)
    if S.ndim != 2 or S.size == 0:
        raise ValueError("S must be a non-empty 2-D array (n_query, n_pool)")
    k = _check_k(k, S.shape[1])
    order = np.argsort(-S, axis=1, kind="stable")
    cursor = np.zeros(len(S), dtype=int)
    taken = np.zeros(S.shape[1], dtype=bool)
    picks: list[int] = []
    while len(picks) < k:
        for q in range(len(S)):
            while taken[order[q, cursor[q]]]:
                cursor[q] += 1
            item = int(order[q, cursor[q]])
            taken[item] = True
            picks.append(item)
            if len(picks) == k:
                break
    return picks


def random_select(n: int, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` distinct items of ``range(n)`` uniformly at random."""
    check_positive_int(n, "n")
    k = _check_k(k, n)
    check_generator(rng)
    return [int(i) for i in rng.choice(n, size=k, replace=False)]


def perplexity_select(losses: np.ndarray, k: int, mode: str = "top") -> list[int]:
    """Rank by per-item loss (log-perplexity): ``"top"`` takes the ``k`` highest, ``"mid"`` the ``k`` around the
    median (ties broken by the lower index)."""
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 1 or losses.size == 0 or not np.all(np.isfinite(losses)):
        raise ValueError("losses must be a non-empty 1-D array of finite numbers")
    k = _check_k(k, len(losses))
    if mode not in ("top", "mid"):
        raise ValueError(f"mode must be 'top' or 'mid', got {mode!r}")
    ascending = np.argsort(losses, kind="stable")
    if mode == "top":
        return [int(i) for i in np.argsort(-losses, kind="stable")[:k]]
    start = (len(losses) - k) // 2
    return [int(i) for i in ascending[start:start + k]]


@torch.no_grad()
def response_losses(model: TinyDecoder, pool: Pool, batch_size: int = 2048) -> np.ndarray:
    """Mean next-token cross-entropy of every item's response tokens (its log-perplexity) under ``model``."""
    return pool_features(model, pool, batch_size=batch_size)[1]


@torch.no_grad()
def pool_features(model: TinyDecoder, pool: Pool, batch_size: int = 2048) -> tuple[dict[str, np.ndarray],
                                                                                     np.ndarray]:
    """Unit-norm embeddings for every pooling in ``POOLINGS`` and the response losses, from ONE forward pass."""
    check_positive_int(batch_size, "batch_size")
    pools = {"weighted_mean": weighted_mean_pool, "mean": mean_pool, "last_token": last_token_pool}
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in POOLINGS}
    losses = []
    for start in range(0, len(pool), batch_size):
        tokens = pool.tokens[start:start + batch_size]
        H = last_hidden_states(model, tokens)
        for name in POOLINGS:
            parts[name].append(pools[name](H, tokens != PAD))
        nll = F.cross_entropy(model.head(H[:, :-1]).transpose(1, 2), tokens[:, 1:], reduction="none")
        mask = pool.response_mask[start:start + batch_size, 1:]
        losses.append(((nll * mask).sum(1) / mask.sum(1)).numpy())
    embeddings = {name: F.normalize(torch.cat(p), dim=1).numpy().astype(np.float64) for name, p in parts.items()}
    return embeddings, np.concatenate(losses).astype(np.float64)


# --- training and evaluation ------------------------------------------------------------------------------


def _batches(pool: Pool, batch: int, full_mask: bool) -> Callable[[int, np.random.Generator], tuple]:
    mask = pool.tokens != PAD if full_mask else pool.response_mask
    mask = mask.clone()
    mask[:, 0] = False

    def draw(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(rng.integers(0, len(pool), size=batch))
        return pool.tokens[rows], mask[rows]

    return draw


def pretrain_base(pool: Pool, *, steps: int, seed: int, batch: int = 64, n_layers: int = 1) -> TinyDecoder:
    """A TinyDecoder trained from scratch on next-token prediction over whole pool sequences."""
    model = TinyDecoder(VOCAB_SIZE, max_len=MAX_LEN, d_model=64, n_layers=n_layers, seed=seed)
    train_lm(model, _batches(pool, batch, full_mask=True), steps=steps, seed=seed)
    return model


def finetune(base: TinyDecoder, data: Pool, *, steps: int, seed: int, batch: int = 64,
             lr: float = 3e-3) -> TinyDecoder:
    """A copy of ``base`` fine-tuned on ``data`` with the loss on the response tokens only."""
    model = copy.deepcopy(base)
    train_lm(model, _batches(data, batch, full_mask=False), steps=steps, lr=lr, warmup=min(30, steps - 1),
             seed=seed)
    return model


@torch.no_grad()
def exact_match(model: TinyDecoder, tests: Pool) -> float:
    """Share of ``tests`` whose greedy completion after the separator equals the reference output + ``<eos>``."""
    model.eval()
    prompt_len = 1 + N_WORDS + N_INPUT + 1
    sequences = tests.tokens[:, :prompt_len].clone()
    for _ in range(MAX_LEN - prompt_len):
        sequences = torch.cat([sequences, model(sequences)[:, -1].argmax(-1, keepdim=True)], dim=1)
    mask = tests.response_mask[:, prompt_len:]
    correct = ((sequences[:, prompt_len:] == tests.tokens[:, prompt_len:]) | ~mask).all(dim=1)
    return float(correct.float().mean())


def composition(pool: Pool, picks: list[int], targets: tuple[int, ...] = TARGET_FAMILIES) -> dict[str, float]:
    """Shares of the picked items from the target families (``"target_family"``, noisy or not), and the three
    disjoint groups: clean target-task items, clean other-task items, noisy items."""
    chosen = pool.subset(picks)
    is_target = np.isin(chosen.family, targets)
    return {"target_family": float(np.mean(is_target)),
            "target": float(np.mean(is_target & ~chosen.noisy)),
            "other": float(np.mean(~is_target & ~chosen.noisy)),
            "noisy": float(np.mean(chosen.noisy))}
