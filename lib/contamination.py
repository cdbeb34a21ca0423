"""Data contamination in miniature: fresh arithmetic problems, a character n-gram "pretrained model" and the
partial-prompt completion probe that reveals what it memorised.

The n-gram model stores, for every order k = 0..order, the sorted codes of (k-character context, next character)
pairs with their counts (flat numpy arrays, a few MB for 200K characters), and mixes the orders by interpolated
Witten-Bell smoothing, so its next-character probabilities sum to one for every context.
"""

from dataclasses import dataclass

import numpy as np

from lib.validation import check_generator, check_positive_int

ARITHMETIC_ALPHABET = "\n0123456789+-*()="
END = "\n"  # separates texts in the training stream; generation stops there


def random_calculation(n_steps: int, rng: np.random.Generator, max_operand: int = 99) -> tuple[str, int]:
    """A fresh arithmetic expression with ``n_steps`` operations from {+, -, *} and its exact value.

    Operands of + and - are drawn from 1..max_operand, those of * from 2..9; * is only used while the running
    value is at most 100 in size, which keeps answers to a few digits. Every intermediate expression is put in
    parentheses, so the text means the left-to-right computation, e.g. ``((7+3)*4)-12``.
    """
    check_positive_int(n_steps, "n_steps")
    check_positive_int(max_operand, "max_operand", minimum=2)
    check_generator(rng)
    value = int(rng.integers(1, max_operand + 1))
    text = str(value)
    for step in range(n_steps):
        ops = "+-*" if abs(value) <= 100 else "+-"
        op = ops[int(rng.integers(len(ops)))]
        operand = int(rng.integers(2, 10)) if op == "*" else int(rng.integers(1, max_operand + 1))
        value = value + operand if op == "+" else value - operand if op == "-" else value * operand
        text = f"{text}{op}{operand}" if step == 0 else f"({text}){op}{operand}"
    return text, value


def training_stream(texts: list[str]) -> str:
    """The character stream an n-gram model is fitted on: every text followed by END, after a leading END."""
    return END + "".join(text + END for text in texts)


class NgramLM:
    """Character n-gram language model with interpolated Witten-Bell backoff over orders 0..order.

    With counts c(h, a) of character a after context h, total c(h) and t(h) distinct followers,
    P_k(a | h) = (c(h, a) + t(h) P_{k-1}(a | h')) / (c(h) + t(h)), where h' drops the oldest character of h;
    P_{-1} is uniform over the alphabet, and orders whose context was never seen are skipped.
    """

    def __init__(self, alphabet: str = ARITHMETIC_ALPHABET, order: int = 8):
        if not isinstance(alphabet, str) or len(set(alphabet)) != len(alphabet) or END not in alphabet:
            raise ValueError("alphabet must be a string of distinct characters that contains '\\n'")
        self.order = check_positive_int(order, "order", minimum=0)
        if len(alphabet) ** (self.order + 1) >= 2**62:
            raise ValueError(f"order {order} is too high for an alphabet of {len(alphabet)} characters")
        self.alphabet = alphabet
        self.size = len(alphabet)
        self._index = {char: i for i, char in enumerate(alphabet)}
        self._keys: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []

    def encode(self, text: str) -> np.ndarray:
        """Character ids of ``text``; raises ValueError for a character outside the alphabet."""
        try:
            return np.array([self._index[char] for char in text], dtype=np.int64)
        except KeyError as error:
            raise ValueError(f"character {error.args[0]!r} is not in the alphabet {self.alphabet!r}") from None

    def fit(self, texts: list[str]) -> "NgramLM":
        """Count every (context, next character) pair of every order in ``training_stream(texts)``."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a non-empty list of strings")
        ids = self.encode(training_stream(texts))
        self._keys, self._counts = [], []
        context_code = np.zeros(len(ids), dtype=np.int64)  # code of the k characters before position i
        for k in range(self.order + 1):
            if k > 0:
                context_code[k:] = context_code[k - 1 : -1] * self.size + ids[k - 1 : -1]
            pairs = context_code[k:] * self.size + ids[k:]
            keys, counts = np.unique(pairs, return_counts=True)
            self._keys.append(keys)
            self._counts.append(counts)
        return self

    def _check_fitted(self) -> None:
        if not self._keys:
            raise RuntimeError("the model is not fitted: call fit(texts) first")

    def context_counts(self, context: str) -> np.ndarray:
        """Counts of each alphabet character right after ``context`` (at most ``order`` characters long)."""
        self._check_fitted()
        if len(context) > self.order:
            raise ValueError(f"context must have at most order={self.order} characters, got {len(context)}")
        return self._batch_counts(self.encode(context)[None, :], len(context))[0]

    def _batch_counts(self, contexts: np.ndarray, k: int) -> np.ndarray:
        """(B, V) counts after each row of ``contexts`` (B, k) of character ids."""
        code = np.zeros(len(contexts), dtype=np.int64)
        for j in range(k):
            code = code * self.size + contexts[:, j]
        queries = code[:, None] * self.size + np.arange(self.size)
        keys = self._keys[k]
        if len(keys) == 0:  # the training stream is shorter than k + 1 characters
            return np.zeros(queries.shape, dtype=np.int64)
        where = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
        return np.where(keys[where] == queries, self._counts[k][where], 0)

    def _probs_of_ids(self, contexts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Next-character probabilities for right-aligned contexts (B, order) with ``lengths`` valid ids."""
        probs = np.full((len(contexts), self.size), 1.0 / self.size)
        for k in range(self.order + 1):
            counts = self._batch_counts(contexts[:, contexts.shape[1] - k :], k)
            total = counts.sum(axis=1, keepdims=True)
            types = (counts > 0).sum(axis=1, keepdims=True)
            seen = (total[:, 0] > 0) & (lengths >= k)
            mixed = (counts + types * probs) / np.maximum(total + types, 1)
            probs = np.where(seen[:, None], mixed, probs)
        return probs

    def _right_aligned(self, prefixes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        contexts = np.zeros((len(prefixes), self.order), dtype=np.int64)
        lengths = np.zeros(len(prefixes), dtype=np.int64)
        for row, prefix in enumerate(prefixes):
            ids = self.encode(prefix)[-self.order :] if self.order else np.zeros(0, dtype=np.int64)
            contexts[row, self.order - len(ids) :] = ids
            lengths[row] = len(ids)
        return contexts, lengths

    def next_char_probs(self, prefixes: list[str]) -> np.ndarray:
        """(B, V) next-character distributions after each prefix (only its last ``order`` characters matter)."""
        self._check_fitted()
        if isinstance(prefixes, str) or not all(isinstance(p, str) for p in prefixes):
            raise TypeError("prefixes must be a list of strings")
        return self._probs_of_ids(*self._right_aligned(prefixes))

    def greedy_complete(self, prefixes: list[str], max_len: int) -> list[str]:
        """Append the most probable character (ties: the first in the alphabet) until END or ``max_len``.

        Returns the continuations, without the END character.
        """
        self._check_fitted()
        check_positive_int(max_len, "max_len")
        if isinstance(prefixes, str) or not all(isinstance(p, str) for p in prefixes):
            raise TypeError("prefixes must be a list of strings")
        contexts, lengths = self._right_aligned(prefixes)
        generated = np.zeros((len(prefixes), max_len), dtype=np.int64)
        for step in range(max_len):
            best = self._probs_of_ids(contexts, lengths).argmax(axis=1)
            generated[:, step] = best
            if self.order:
                contexts = np.concatenate([contexts[:, 1:], best[:, None]], axis=1)
                lengths = np.minimum(lengths + 1, self.order)
        completions = []
        for row in generated:
            text = "".join(self.alphabet[i] for i in row)
            completions.append(text.split(END, 1)[0])
        return completions


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (dynamic programming)."""
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if char == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: harmonic mean of LCS/len(candidate) and LCS/len(reference); 1 if both are empty."""
    if not candidate and not reference:
        return 1.0
    common = lcs_length(candidate, reference)
    return 0.0 if common == 0 else 2 * common / (len(candidate) + len(reference))


@dataclass(frozen=True)
class PartialPromptScores:
    """What the model produced from the first ``frac`` of each question.

    exact_match: share of items whose question it completed exactly; rouge_l: mean ROUGE-L of the completed
    part against the true remainder; answer_accuracy: share of items where it also wrote the right answer
    after '='; item_exact and item_rouge_l: the per-item exact matches and ROUGE-L.
    """

    exact_match: float
    rouge_l: float
    answer_accuracy: float
    item_exact: np.ndarray
    item_rouge_l: np.ndarray


def partial_prompt_scores(lm: NgramLM, questions: list[str], answers: list[int], frac: float) -> PartialPromptScores:
    """Give the model the first ``int(frac * len(question))`` characters (at least one) of each question, complete
    greedily up to END, and score the completed question (exact match, ROUGE-L) and the answer after '='."""
    if isinstance(questions, str) or not questions or len(questions) != len(answers):
        raise ValueError("questions must be a non-empty list with one answer per question")
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    cuts = [max(1, int(frac * len(q))) for q in questions]
    prompts = [END + q[:cut] for q, cut in zip(questions, cuts, strict=True)]
    longest = max(len(q) - cut + len(str(a)) + 2 for q, cut, a in zip(questions, cuts, answers, strict=True))
    completions = lm.greedy_complete(prompts, max_len=longest)
    exact, correct, scores = [], [], []
    for question, cut, answer, completion in zip(questions, cuts, answers, completions, strict=True):
        question_part, _, answer_part = (question[:cut] + completion).partition("=")
        exact.append(question_part == question)
        correct.append(answer_part == str(answer))
        scores.append(rouge_l(question_part[cut:], question[cut:]))
    item_exact, item_scores = np.array(exact), np.array(scores)
    return PartialPromptScores(float(item_exact.mean()), float(item_scores.mean()), float(np.mean(correct)),
                               item_exact, item_scores)
