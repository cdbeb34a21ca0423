"""Algorithmic chain-of-thought traces with static and dynamic noise (Havrilla & Iyer, 2024), in miniature.

The task is the running sum modulo 10 of ``L`` digits ``d_1 .. d_L``. Its trace shows the partial sums
``s_k = (d_1 + ... + d_k) mod 10`` for ``k = 2 .. L``, one character per line, compactly rendered as
``"627327:85807"``: the question, a colon, the lines ``s_2 .. s_{L-1}`` and the answer ``s_L``.

Two noise channels corrupt a trace, each with a per-step probability ``intensity`` and a perturbation that adds
a uniformly drawn non-zero offset modulo 10 (so a perturbed value is always wrong):

* **static** noise corrupts the shown lines ``s_2 .. s_{L-1}`` *after* the trace was computed: the later lines
  and the answer stay equal to the true values;
* **dynamic** noise perturbs the result of each addition ``k = 2 .. L`` *while* computing, and the next
  addition starts from the perturbed value, so every later line follows from the shown one and the answer is
  usually wrong.

``contamination`` is the fraction of examples of a data set that are noised at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lib.tiny_lm import CharTokenizer, TinyDecoder, complete_texts, generate
from lib.validation import check_generator, check_positive_int

ALPHABET = "0123456789:"
NOISE_TYPES = ("clean", "static", "dynamic")
MODULUS = 10


def _check_questions(questions: np.ndarray) -> np.ndarray:
    questions = np.asarray(questions)
    if questions.ndim != 2 or questions.shape[1] < 2 or not np.issubdtype(questions.dtype, np.integer):
        raise ValueError("questions must be an integer array of shape (n, L) with L >= 2 digits")
    if questions.size and (questions.min() < 0 or questions.max() >= MODULUS):
        raise ValueError("questions must hold digits in 0..9")
    return questions


def _check_probability(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_noise_type(noise_type: str) -> str:
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    return noise_type


def random_questions(n: int, n_digits: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` questions of ``n_digits`` uniform random digits, shape (n, n_digits)."""
    check_positive_int(n, "n")
    check_positive_int(n_digits, "n_digits", minimum=2)
    return check_generator(rng).integers(0, MODULUS, size=(n, n_digits))


def running_sums(questions: np.ndarray) -> np.ndarray:
    """The clean trace: partial sums ``s_2 .. s_L`` mod 10 of each question, shape (n, L - 1)."""
    questions = _check_questions(questions)
    return (np.cumsum(questions, axis=1) % MODULUS)[:, 1:]


def _nonzero_offsets(shape: tuple[int, ...], intensity: float, rng: np.random.Generator) -> np.ndarray:
    """Offsets that are 0 w.p. ``1 - intensity`` and otherwise uniform in 1..9."""
    hit = rng.random(shape) < intensity
    return np.where(hit, rng.integers(1, MODULUS, size=shape), 0)


def static_noise(questions: np.ndarray, intensity: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt the computed lines ``s_2 .. s_{L-1}`` independently w.p. ``intensity``; the answer is untouched.

    Returns the shown trace (n, L - 1) and the bool mask of corrupted lines (the answer column is never set).
    """
    questions = _check_questions(questions)
    intensity = _check_probability(intensity, "intensity")
    lines = running_sums(questions)
    offsets = np.zeros_like(lines)
    offsets[:, :-1] = _nonzero_offsets((len(lines), lines.shape[1] - 1), intensity, check_generator(rng))
    return (lines + offsets) % MODULUS, offsets != 0


def dynamic_noise(questions: np.ndarray, intensity: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Perturb each addition ``s_k = s_{k-1} + d_k`` (k = 2 .. L) w.p. ``intensity`` and carry the error on.

    Returns the shown trace (n, L - 1), the answer included, and the bool mask of perturbed steps. Because every
    step adds to the value shown on the previous line, the shown trace is the clean one plus the running sum of
    the offsets.
    """
    questions = _check_questions(questions)
    intensity = _check_probability(intensity, "intensity")
    offsets = _nonzero_offsets((len(questions), questions.shape[1] - 1), intensity, check_generator(rng))
    return (running_sums(questions) + np.cumsum(offsets, axis=1)) % MODULUS, offsets != 0


def render_trace(question: Sequence[int], lines: Sequence[int]) -> str:
    """The text of one example: the question's digits, ``:``, then the shown lines (the last is the answer)."""
    question, lines = [int(d) for d in question], [int(d) for d in lines]
    if len(lines) != len(question) - 1:
        raise ValueError(f"a question of {len(question)} digits needs {len(question) - 1} lines, got {len(lines)}")
    if any(not 0 <= d < MODULUS for d in question + lines):
        raise ValueError("question and lines must hold digits in 0..9")
    return "".join(map(str, question)) + ":" + "".join(map(str, lines))


@dataclass(frozen=True)
class NoisyTraces:
    """A data set: questions (n, L), shown traces (n, L - 1), the noised examples and the perturbed steps."""

    questions: np.ndarray
    lines: np.ndarray
    contaminated: np.ndarray
    perturbed: np.ndarray

    def texts(self) -> list[str]:
        """The rendered examples."""
        return [render_trace(q, s) for q, s in zip(self.questions, self.lines, strict=True)]


def make_dataset(n: int, n_digits: int, *, contamination: float, noise_type: str, intensity: float,
                 rng: np.random.Generator) -> NoisyTraces:
    """``n`` examples, of which a random ``contamination`` fraction (each independently) carry ``noise_type``."""
    check_positive_int(n, "n")
    contamination = _check_probability(contamination, "contamination")
    noise_type = _check_noise_type(noise_type)
    intensity = _check_probability(intensity, "intensity")
    rng = check_generator(rng)
    questions = random_questions(n, n_digits, rng)
    contaminated = rng.random(n) < contamination if noise_type != "clean" else np.zeros(n, dtype=bool)
    lines = running_sums(questions)
    perturbed = np.zeros_like(lines, dtype=bool)
    if noise_type != "clean" and contaminated.any():
        channel = static_noise if noise_type == "static" else dynamic_noise
        lines[contaminated], perturbed[contaminated] = channel(questions[contaminated], intensity, rng)
    return NoisyTraces(questions, lines, contaminated, perturbed)


def step_follows_shown_line(questions: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """For every step k = 2 .. L: does line ``s_k`` equal the *shown* ``s_{k-1}`` plus ``d_k`` mod 10?

    ``s_1`` is the first question digit. Returns a bool array of the shape of ``lines``.
    """
    questions = _check_questions(questions)
    lines = np.asarray(lines)
    if lines.shape != (len(questions), questions.shape[1] - 1):
        raise ValueError(f"lines must have shape {(len(questions), questions.shape[1] - 1)}, got {lines.shape}")
    previous = np.concatenate([questions[:, :1], lines[:, :-1]], axis=1)
    return lines == (previous + questions[:, 1:]) % MODULUS


def offset_sum_distribution(intensity: float, n_steps: int) -> np.ndarray:
    """Law of the total offset mod 10 after ``n_steps`` steps, each perturbed w.p. ``intensity`` (dynamic noise).

    Exact dynamic programming over the 10 residues; entry 0 is the probability that the answer is still right.
    """
    intensity = _check_probability(intensity, "intensity")
    check_positive_int(n_steps, "n_steps")
    one_step = np.full(MODULUS, intensity / (MODULUS - 1))
    one_step[0] = 1 - intensity
    law = np.zeros(MODULUS)
    law[0] = 1.0
    for _ in range(n_steps):
        law = np.array([sum(law[(r - o) % MODULUS] * one_step[o] for o in range(MODULUS)) for r in range(MODULUS)])
    return law


def wrong_answer_rate(noise_type: str, intensity: float, n_digits: int, contamination: float = 1.0) -> float:
    """Exact fraction of training answers that are wrong for their question.

    Static noise never touches the answer (0); dynamic noise leaves it right only when the offsets of its
    ``n_digits - 1`` steps cancel mod 10 (see ``offset_sum_distribution``).
    """
    noise_type = _check_noise_type(noise_type)
    contamination = _check_probability(contamination, "contamination")
    check_positive_int(n_digits, "n_digits", minimum=2)
    if noise_type != "dynamic":
        _check_probability(intensity, "intensity")
        return 0.0
    return contamination * (1.0 - offset_sum_distribution(intensity, n_digits - 1)[0])


def wrong_answer_upper_bound(intensity: float, n_steps: int) -> float:
    """``1 - (1 - intensity)^n_steps``: the chance that any step was perturbed (ignores cancellations)."""
    intensity = _check_probability(intensity, "intensity")
    check_positive_int(n_steps, "n_steps")
    return 1.0 - (1.0 - intensity) ** n_steps


def broken_step_rate(noise_type: str, intensity: float, n_digits: int, contamination: float = 1.0) -> float:
    """Exact expected share of step targets ``s_k`` that do not follow from the shown previous line.

    Dynamic noise breaks exactly the perturbed steps (rate ``p``). Static noise breaks step k when line k or line
    k - 1 is corrupted, unless both are and their offsets agree (probability 1/9): ``p`` for the first and the
    answer step, ``2p(1 - p) + p^2 * 8/9`` for the ``L - 3`` steps in between.
    """
    noise_type = _check_noise_type(noise_type)
    p = _check_probability(intensity, "intensity")
    contamination = _check_probability(contamination, "contamination")
    n_steps = check_positive_int(n_digits, "n_digits", minimum=2) - 1
    if noise_type == "clean":
        return 0.0
    if noise_type == "dynamic":
        return contamination * p
    if n_steps == 1:
        return 0.0
    interior = 2 * p * (1 - p) + p * p * (MODULUS - 2) / (MODULUS - 1)
    return contamination * (2 * p + (n_steps - 2) * interior) / n_steps


def encode_examples(tokenizer: CharTokenizer, questions: np.ndarray,
                    lines: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``<bos> question : lines <eos>`` of every example and the loss mask: every token after the colon.

    The tokens of ``render_trace(question, lines)`` framed by ``<bos>`` and ``<eos>``, built for all rows at once.
    """
    questions = _check_questions(questions)
    lines = np.asarray(lines)
    if lines.shape != (len(questions), questions.shape[1] - 1) or not np.issubdtype(lines.dtype, np.integer):
        raise ValueError(f"lines must be an integer array of shape {(len(questions), questions.shape[1] - 1)}")
    if lines.size and (lines.min() < 0 or lines.max() >= MODULUS):
        raise ValueError("lines must hold digits in 0..9")
    digit_ids = np.array(tokenizer.encode("0123456789"))
    column = np.ones((len(questions), 1), dtype=np.int64)
    ids = np.concatenate([column * tokenizer.bos_id, digit_ids[questions], column * tokenizer.encode(":")[0],
                          digit_ids[lines], column * tokenizer.eos_id], axis=1)
    tokens = torch.from_numpy(ids.astype(np.int64))
    loss_mask = torch.zeros_like(tokens, dtype=torch.bool)
    loss_mask[:, questions.shape[1] + 2:] = True  # after <bos>, the question and ':'
    return tokens, loss_mask


def fixed_set_batches(tokens: torch.Tensor, loss_mask: torch.Tensor,
                      batch_size: int) -> Callable[[int, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """A ``train_lm`` batch function drawing ``batch_size`` rows (with replacement) of a fixed training set."""
    check_positive_int(batch_size, "batch_size")
    if tokens.shape != loss_mask.shape:
        raise ValueError("tokens and loss_mask must have the same shape")

    def batch(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(rng.integers(0, len(tokens), size=batch_size))
        return tokens[rows], loss_mask[rows]

    return batch


def fresh_clean_batches(tokenizer: CharTokenizer, n_digits: int,
                        batch_size: int) -> Callable[[int, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]:
    """A ``train_lm`` batch function drawing new clean examples at every step (the pretraining stream)."""
    check_positive_int(batch_size, "batch_size")
    check_positive_int(n_digits, "n_digits", minimum=2)

    def batch(step: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        questions = random_questions(batch_size, n_digits, rng)
        return encode_examples(tokenizer, questions, running_sums(questions))

    return batch


@torch.no_grad()
def greedy_decode_checked(model: TinyDecoder, prompts: torch.Tensor, guesses: torch.Tensor, *,
                          eos_id: int) -> torch.Tensor:
    """Greedy decoding of ``guesses.shape[1]`` tokens after each prompt, as ``tiny_lm.generate`` with ``eos_id``.

    One teacher-forced pass over ``prompts + guesses`` gives the greedy token at every step for as long as the
    model agrees with its guess (the prefix is then the guess itself); only rows that leave their guess are
    decoded further step by step. With a good guess (the true answer) this costs about one forward pass.
    """
    if prompts.ndim != 2 or guesses.ndim != 2 or len(prompts) != len(guesses) or guesses.shape[1] < 1:
        raise ValueError("prompts (n, P) and guesses (n, C >= 1) must be 2-d with the same number of rows")
    n_new = guesses.shape[1]
    model.eval()
    logits = model(torch.cat([prompts, guesses], dim=1)[:, :-1])[:, prompts.shape[1] - 1:]
    after_eos = torch.cumsum(guesses == eos_id, dim=1) - (guesses == eos_id).long() > 0
    greedy = torch.where(after_eos, eos_id, logits.argmax(dim=-1))  # generate() repeats <eos> once written
    agrees = greedy == guesses
    first_miss = torch.where(agrees.all(dim=1), n_new, (~agrees).int().argmax(dim=1))
    decoded = guesses.clone()
    for miss in first_miss.unique().tolist():
        if miss == n_new:
            continue
        rows = torch.nonzero(first_miss == miss)[:, 0]
        decoded[rows, miss] = greedy[rows, miss]
        rest = n_new - miss - 1
        if rest:
            prefix = torch.cat([prompts[rows], decoded[rows, :miss + 1]], dim=1)
            continued = generate(model, prefix, max_new_tokens=rest, eos_id=eos_id)
            ended = decoded[rows, miss] == eos_id
            decoded[rows, miss + 1:] = torch.where(ended[:, None], eos_id, continued)
    return decoded


def _parse_digits(text: str, length: int) -> list[int] | None:
    return [int(c) for c in text] if len(text) == length and text.isdigit() else None


@dataclass(frozen=True)
class TraceScores:
    """Greedy-decoding scores on test questions: exact-match answers, correct lines, self-consistent steps."""

    answer_accuracy: float
    line_accuracy: float
    consistent_steps: float


def score_traces(model: TinyDecoder, tokenizer: CharTokenizer, questions: np.ndarray) -> TraceScores:
    """Let the model write the trace after ``question:`` greedily and score it against the true running sums.

    The greedy decoding is ``greedy_decode_checked`` with the true trace as the guess: one teacher-forced pass,
    then step-by-step decoding only for the questions on which the model leaves the true trace.

    ``answer_accuracy``: the last written value equals ``s_L`` (a malformed trace counts as wrong);
    ``line_accuracy``: share of the ``L - 1`` written values equal to the true ones;
    ``consistent_steps``: share of written steps that follow from the model's own previous line.
    """
    questions = _check_questions(questions)
    n_lines = questions.shape[1] - 1
    truth = running_sums(questions)
    tokens, _ = encode_examples(tokenizer, questions, truth)
    prompt_length = questions.shape[1] + 2  # <bos>, the question, ':'
    new_tokens = greedy_decode_checked(model, tokens[:, :prompt_length], tokens[:, prompt_length:],
                                       eos_id=tokenizer.eos_id)
    written = [tokenizer.decode(row) for row in new_tokens]
    parsed = [_parse_digits(w, n_lines) for w in written]
    ok = np.array([p is not None for p in parsed])
    lines = np.array([p if p is not None else [-1] * n_lines for p in parsed])
    correct = (lines == truth) & ok[:, None]
    consistent = step_follows_shown_line(questions, np.where(ok[:, None], lines, 0)) & ok[:, None]
    return TraceScores(float(correct[:, -1].mean()), float(correct.mean()), float(consistent.mean()))


@dataclass(frozen=True)
class ProbeScores:
    """What a model answers after a given (statically corrupted) trace."""

    true_answer: float
    last_line_plus_digit: float
    last_line_clean: float


def probe_corrupted_trace(model: TinyDecoder, tokenizer: CharTokenizer, questions: np.ndarray, intensity: float,
                          rng: np.random.Generator) -> ProbeScores:
    """Hand the model ``question:`` plus the lines ``s_2 .. s_{L-1}`` with static noise and read its answer.

    A model that recomputes from the question gives the true ``s_L``; a model that reads its trace gives the
    shown ``s_{L-1}`` plus ``d_L``. The two agree exactly when the last shown line is clean
    (``last_line_clean``, the share of such prompts).
    """
    questions = _check_questions(questions)
    if questions.shape[1] < 3:
        raise ValueError("the probe needs questions of >= 3 digits (a line before the answer)")
    lines, corrupted = static_noise(questions, intensity, rng)
    prompts = [render_trace(q, s)[:-1] for q, s in zip(questions, lines, strict=True)]
    answers = complete_texts(model, tokenizer, prompts, max_new_tokens=1)
    given = np.array([int(a) if a.isdigit() else -1 for a in answers])
    from_trace = (lines[:, -2] + questions[:, -1]) % MODULUS
    return ProbeScores(float((given == lines[:, -1]).mean()), float((given == from_trace).mean()),
                       float((~corrupted[:, -2]).mean()))
