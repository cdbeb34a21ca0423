"""A tiny language-model toolkit, trained from scratch on synthetic tasks in seconds on a CPU.

The language-model chapters cannot load a pretrained model, so they share this one instead: a character
tokenizer, a small decoder-only transformer (pre-LayerNorm, causal self-attention, rotary, learned or no
position encoding), a trainer with warm-up and cosine decay that puts the loss on chosen positions only (e.g. the
answer), greedy and temperature sampling, and exact log-probabilities of continuations.

Sequences are right-padded: with causal attention a pad token after the end never changes a prediction before
it, so padding needs no attention mask, only a loss mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lib.validation import check_positive_int

POSITION_ENCODINGS = ("rope", "learned", "nope")
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


class CharTokenizer:
    """One token per character of ``alphabet``, plus the special tokens ``<pad>`` (id 0), ``<bos>`` and ``<eos>``.

    ``encode("12+3", bos=True, eos=True)`` gives ``[bos, '1', '2', '+', '3', eos]`` as ids; ``decode`` stops at
    the first ``<eos>`` and drops ``<pad>`` and ``<bos>``.
    """

    def __init__(self, alphabet: str):
        if not isinstance(alphabet, str) or not alphabet:
            raise ValueError("alphabet must be a non-empty string of distinct characters")
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        self.alphabet = alphabet
        self.tokens = [PAD, BOS, EOS, *alphabet]
        self._ids = {ch: i + 3 for i, ch in enumerate(alphabet)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        """Number of tokens, specials included."""
        return len(self.tokens)

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally framed by ``<bos>`` and ``<eos>``."""
        unknown = sorted(set(text) - set(self._ids))
        if unknown:
            raise ValueError(f"text has characters outside the alphabet {self.alphabet!r}: {unknown}")
        ids = [self._ids[ch] for ch in text]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` up to the first ``<eos>``, without ``<pad>`` and ``<bos>``."""
        chars = []
        for i in (int(i) for i in ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i == self.eos_id:
                break
            if i >= 3:
                chars.append(self.tokens[i])
        return "".join(chars)

    def pad_batch(self, sequences: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
        """An int64 tensor of the sequences right-padded with ``<pad>`` to ``length`` (default: the longest)."""
        if not sequences:
            raise ValueError("sequences must not be empty")
        longest = max(len(s) for s in sequences)
        length = longest if length is None else length
        if length < longest:
            raise ValueError(f"length {length} is shorter than the longest sequence ({longest})")
        rows = [list(seq) + [self.pad_id] * (length - len(seq)) for seq in sequences]
        return torch.tensor(rows, dtype=torch.int64)


def rotary_tables(length: int, head_dim: int, base: float = 10_000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables, shape (length, head_dim / 2), of rotary position embedding (RoPE)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
    inverse_frequencies = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inverse_frequencies[None, :]
    return torch.cos(angles), torch.sin(angles)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs ``(x[..., 2i], x[..., 2i+1])`` of ``x`` (..., length, head_dim) by position angles."""
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` attends to positions ``<= t`` only."""

    def __init__(self, d_model: int, n_heads: int, rotary: bool):
        super().__init__()
        self.n_heads, self.rotary = n_heads, rotary
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        if self.rotary:
            cos, sin = rotary_tables(length, q.shape[-1])
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(attended.transpose(1, 2).reshape(batch, length, d_model))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attention(LN(x))``, then ``x + MLP(LN(x))`` (GELU, 4x wide)."""

    def __init__(self, d_model: int, n_heads: int, rotary: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, rotary)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyDecoder(nn.Module):
    """A small decoder-only transformer: token ids (batch, length) -> next-token logits (batch, length, vocab).

    Parameters
    ----------
    vocab_size, max_len:
        Vocabulary size and the longest sequence the model accepts.
    d_model, n_layers, n_heads:
        Width, depth and number of attention heads (``d_model`` divisible by ``n_heads``).
    position:
        ``"rope"`` (rotary embeddings in every attention layer), ``"learned"`` (a learned vector per position,
        added to the token embedding) or ``"nope"`` (none: causal attention alone tells positions apart).
    seed:
        Seed of the initial weights (PyTorch's default initialisation, drawn from a private generator state).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        max_len: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        position: str = "rope",
        seed: int = 0,
    ):
        super().__init__()
        for name, value in [("vocab_size", vocab_size), ("max_len", max_len), ("d_model", d_model),
                            ("n_layers", n_layers), ("n_heads", n_heads)]:
            check_positive_int(value, name)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if position not in POSITION_ENCODINGS:
            raise ValueError(f"position must be one of {POSITION_ENCODINGS}, got {position!r}")
        if position == "rope" and (d_model // n_heads) % 2:
            raise ValueError(f"rope needs an even head width, got d_model / n_heads = {d_model // n_heads}")
        self.max_len, self.position = max_len, position
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab_size, d_model)
            self.positions = nn.Embedding(max_len, d_model) if position == "learned" else None
            self.blocks = nn.ModuleList(Block(d_model, n_heads, position == "rope") for _ in range(n_layers))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.dtype != torch.int64:
            raise ValueError("tokens must be an int64 tensor of shape (batch, length)")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_len={self.max_len}")
        x = self.embed(tokens)
        if self.positions is not None:
            x = x + self.positions(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def masked_next_token_loss(model: TinyDecoder, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting ``tokens[:, t]`` from ``tokens[:, :t]`` over positions with ``loss_mask``.

    ``loss_mask`` (bool, same shape as ``tokens``) marks the target tokens that count, e.g. the answer and its
    ``<eos>``; position 0 has no prediction and must be False.
    """
    if loss_mask.shape != tokens.shape or loss_mask.dtype != torch.bool:
        raise ValueError("loss_mask must be a bool tensor with the shape of tokens")
    if bool(loss_mask[:, 0].any()):
        raise ValueError("loss_mask[:, 0] must be False: the first token has no prediction")
    if not bool(loss_mask.any()):
        raise ValueError("loss_mask selects no target token")
    logits = model(tokens[:, :-1])
    targets = tokens[:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    mask = loss_mask[:, 1:]
    return (losses * mask).sum() / mask.sum()


def prompt_answer_batch(
    tokenizer: CharTokenizer, examples: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``<bos> prompt answer <eos>`` (right-padded) and the loss mask on ``answer <eos>``.

    The usual batch of a model that learns to answer prompts: the loss counts only the answer and its end token.
    """
    if not examples:
        raise ValueError("examples must not be empty")
    sequences, starts, ends = [], [], []
    for prompt, answer in examples:
        prompt_ids = tokenizer.encode(prompt, bos=True)
        sequences.append(prompt_ids + tokenizer.encode(answer, eos=True))
        starts.append(len(prompt_ids))
        ends.append(len(sequences[-1]))
    tokens = tokenizer.pad_batch(sequences)
    position = torch.arange(tokens.shape[1])
    loss_mask = (position >= torch.tensor(starts)[:, None]) & (position < torch.tensor(ends)[:, None])
    return tokens, loss_mask


@torch.no_grad()
def teacher_forced_exact_match(model: TinyDecoder, tokenizer: CharTokenizer,
                               examples: Sequence[tuple[str, str]]) -> np.ndarray:
    """Per ``(prompt, answer)`` example, whether greedy decoding after ``<bos> prompt`` writes exactly ``answer``
    and then ``<eos>``.

    One teacher-forced forward pass instead of token-by-token decoding: by induction over the positions, greedy
    decoding reproduces the answer if and only if the argmax is the true next token at every answer position (ties
    go to the lowest id, as in :func:`generate`); with causal attention the right-padding changes nothing.
    """
    tokens, loss_mask = prompt_answer_batch(tokenizer, examples)
    model.eval()
    predicted = model(tokens[:, :-1]).argmax(dim=-1)
    correct = (predicted == tokens[:, 1:]) | ~loss_mask[:, 1:]
    return correct.all(dim=1).numpy()


@dataclass(frozen=True)
class TrainLog:
    """Training loss per step and, every ``eval_every`` steps, what the ``evaluate`` callback returned."""

    losses: np.ndarray
    eval_steps: list[int]
    evaluations: list[object]


def warmup_cosine(step: int, *, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train_lm(
    model: TinyDecoder,
    batch: Callable[[int, np.random.Generator], tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float = 3e-3,
    warmup: int = 50,
    betas: tuple[float, float] = (0.9, 0.98),
    weight_decay: float = 0.0,
    clip: float = 1.0,
    seed: int = 0,
    evaluate: Callable[[TinyDecoder], object] | None = None,
    eval_every: int = 100,
    fused: bool = False,
) -> TrainLog:
    """Train ``model`` in place with AdamW on batches ``batch(step, rng) -> (tokens, loss_mask)``.

    The learning rate warms up linearly over ``warmup`` steps and then follows a cosine to 0 at ``steps``;
    gradients are clipped to norm ``clip``. ``weight_decay`` is 0 unless given (torch's AdamW would otherwise
    apply 0.01). ``rng`` is a numpy Generator seeded with ``seed``, so a task generator can draw fresh samples
    every step reproducibly. If ``evaluate`` is given it is called (in eval mode, without gradients) before
    training, every ``eval_every`` steps and at the end. ``fused=True`` uses PyTorch's fused AdamW kernel: the
    same update, about 5x faster on CPU, equal to the default per-tensor loop up to float rounding (so runs are
    reproducible with either, but not bit-identical between them).
    """
    check_positive_int(steps, "steps")
    check_positive_int(eval_every, "eval_every")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"warmup must be an int in [0, steps), got {warmup!r}")
    rng = np.random.default_rng(seed)
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be True or False, got {fused!r}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay,
                                  fused=True if fused else None)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: warmup_cosine(t, total=steps, warmup=warmup))
    losses = np.empty(steps)
    eval_steps: list[int] = []
    evaluations: list[object] = []

    def record(step: int) -> None:
        model.eval()
        with torch.no_grad():
            evaluations.append(evaluate(model))
        eval_steps.append(step)
        model.train()

    if evaluate is not None:
        record(0)
    model.train()
    for step in range(steps):
        tokens, loss_mask = batch(step, rng)
        loss = masked_next_token_loss(model, tokens, loss_mask)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        schedule.step()
        losses[step] = loss.item()
        if evaluate is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            record(step + 1)
    model.eval()
    return TrainLog(losses, eval_steps, evaluations)


@torch.no_grad()
def generate(
    model: TinyDecoder,
    prompts: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue each row of ``prompts`` (batch, length; all of the same length) by ``max_new_tokens`` tokens.

    ``temperature = 0`` is greedy decoding (argmax, ties to the lowest id); a positive temperature samples from
    ``softmax(logits / temperature)`` with ``generator``. Rows that have produced ``eos_id`` keep producing it.
    Returns the new tokens only, shape (batch, max_new_tokens).
    """
    check_positive_int(max_new_tokens, "max_new_tokens")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature > 0 and generator is None:
        raise ValueError("sampling with temperature > 0 needs a seeded torch.Generator (generator=...)")
    if prompts.shape[1] + max_new_tokens - 1 > model.max_len:
        raise ValueError(f"prompt length + max_new_tokens - 1 exceeds the model's max_len={model.max_len}")
    model.eval()
    sequences = prompts.clone()
    finished = torch.zeros(len(prompts), dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model(sequences)[:, -1]
        if temperature == 0:
            token = logits.argmax(dim=-1)
        else:
            token = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator)[:, 0]
        if eos_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_id), token)
            finished |= token == eos_id
        sequences = torch.cat([sequences, token[:, None]], dim=1)
    return sequences[:, prompts.shape[1]:]


def complete_texts(
    model: TinyDecoder,
    tokenizer: CharTokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Decode a completion of every prompt (``<bos>`` + prompt), batching prompts of equal length together."""
    by_length: dict[int, list[int]] = {}
    encoded = [tokenizer.encode(p, bos=True) for p in prompts]
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    completions = [""] * len(prompts)
    for indices in by_length.values():
        new = generate(model, tokenizer.pad_batch([encoded[i] for i in indices]), max_new_tokens=max_new_tokens,
                       temperature=temperature, eos_id=tokenizer.eos_id, generator=generator)
        for row, index in enumerate(indices):
            completions[index] = tokenizer.decode(new[row])
    return completions


@torch.no_grad()
def continuation_logprobs(model: TinyDecoder, prefixes: torch.Tensor, continuations: torch.Tensor,
                          continuation_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ``log p(continuation | prefix)`` per row: the sum of the next-token log-probabilities.

    ``prefixes`` (batch, P) and ``continuations`` (batch, C) are token ids; ``continuation_mask`` (bool,
    batch x C, default all True) drops right-padding of continuations of unequal length from the sum.
    """
    if prefixes.shape[0] != continuations.shape[0] or prefixes.shape[1] < 1:
        raise ValueError("prefixes and continuations need the same batch size and a prefix of >= 1 token")
    mask = torch.ones_like(continuations, dtype=torch.bool) if continuation_mask is None else continuation_mask
    if mask.shape != continuations.shape:
        raise ValueError("continuation_mask must have the shape of continuations")
    model.eval()
    tokens = torch.cat([prefixes, continuations], dim=1)
    log_probs = F.log_softmax(model(tokens[:, :-1]), dim=-1)[:, prefixes.shape[1] - 1:]
    picked = log_probs.gather(-1, continuations[..., None])[..., 0]
    return (picked * mask).sum(dim=1)
