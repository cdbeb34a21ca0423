"""Tests of lib/noisy_traces.py against independent oracles: a hand-written running sum, brute-force step-by-step
recomputation of noised traces, exhaustive enumeration of mod-10 perturbations for the wrong-answer rate, Monte
Carlo frequencies (binomial tests), and hand-coded rule "models" whose answers the scores and the probe must
recover exactly; the fused trainer and the checked greedy decoding against tiny_lm's train_lm and generate."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest
from torch import nn

from lib.noisy_traces import (
    ALPHABET,
    broken_step_rate,
    dynamic_noise,
    encode_examples,
    fixed_set_batches,
    fresh_clean_batches,
    greedy_decode_checked,
    make_dataset,
    offset_sum_distribution,
    probe_corrupted_trace,
    random_questions,
    render_trace,
    running_sums,
    score_traces,
    static_noise,
    step_follows_shown_line,
    wrong_answer_rate,
    wrong_answer_upper_bound,
)
from lib.tiny_lm import CharTokenizer, TinyDecoder, generate

TOKENIZER = CharTokenizer(ALPHABET)


def hand_running_sums(digits):
    """s_2 .. s_L by an explicit loop."""
    total, sums = digits[0], []
    for d in digits[1:]:
        total = (total + d) % 10
        sums.append(total)
    return sums


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=4, max_size=4), min_size=1, max_size=8))
def test_running_sums_match_a_hand_written_loop(rows):
    questions = np.array(rows)
    assert running_sums(questions).tolist() == [hand_running_sums(r) for r in rows]


def test_render_trace_of_the_worked_example():
    question = [6, 2, 7, 3, 2, 7]
    assert render_trace(question, running_sums(np.array([question]))[0]) == "627327:85807"
    assert sum(question) % 10 == 7


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_static_noise_keeps_the_true_values_everywhere_it_did_not_corrupt(seed, intensity):
    questions = random_questions(50, 6, np.random.default_rng(seed))
    lines, corrupted = static_noise(questions, intensity, np.random.default_rng(seed + 1))
    for q, shown, hit in zip(questions, lines, corrupted, strict=True):
        truth = hand_running_sums(list(q))
        assert not hit[-1] and shown[-1] == truth[-1]  # the answer is never touched
        for k in range(len(truth)):
            assert (shown[k] != truth[k]) == hit[k]  # a corrupted line is always wrong, the others true


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_dynamic_noise_keeps_every_later_step_consistent_with_the_shown_line(seed, intensity):
    questions = random_questions(50, 6, np.random.default_rng(seed))
    lines, perturbed = dynamic_noise(questions, intensity, np.random.default_rng(seed + 1))
    for q, shown, hit in zip(questions, lines, perturbed, strict=True):
        previous = q[0]
        for k, d in enumerate(q[1:]):  # recompute each step from the line shown before it
            assert (shown[k] == (previous + d) % 10) == (not hit[k])
            previous = shown[k]
        if hit.sum() == 1:
            assert shown[-1] != hand_running_sums(list(q))[-1]
        if hit.sum() == 0:
            assert list(shown) == hand_running_sums(list(q))


def test_step_follows_shown_line_by_brute_force():
    rng = np.random.default_rng(0)
    questions = random_questions(30, 5, rng)
    lines = rng.integers(0, 10, size=(30, 4))
    expected = [[lines[i, k] == ((questions[i, 0] if k == 0 else lines[i, k - 1]) + questions[i, k + 1]) % 10
                 for k in range(4)] for i in range(30)]
    assert step_follows_shown_line(questions, lines).tolist() == expected
    assert step_follows_shown_line(questions, running_sums(questions)).all()


def test_perturbation_and_contamination_frequencies_match_the_requested_rates():
    rng = np.random.default_rng(1)
    for noise_type, n_noisable in [("static", 4), ("dynamic", 5)]:
        data = make_dataset(4000, 6, contamination=0.6, noise_type=noise_type, intensity=0.3, rng=rng)
        assert binomtest(int(data.contaminated.sum()), 4000, 0.6).pvalue > 1e-3
        hits = data.perturbed[data.contaminated][:, :n_noisable]
        assert binomtest(int(hits.sum()), hits.size, 0.3).pvalue > 1e-3
        assert not data.perturbed[~data.contaminated].any()
        clean_rows = ~data.contaminated
        assert (data.lines[clean_rows] == running_sums(data.questions[clean_rows])).all()
    clean = make_dataset(100, 6, contamination=1.0, noise_type="clean", intensity=0.9, rng=rng)
    assert (clean.lines == running_sums(clean.questions)).all() and not clean.contaminated.any()


def test_offset_law_and_wrong_answer_rate_match_exhaustive_enumeration():
    for intensity, n_steps in [(0.3, 1), (0.3, 3), (0.5, 4), (0.9, 2)]:
        law = np.zeros(10)
        for pattern in itertools.product(range(10), repeat=n_steps):  # offset 0 = no perturbation
            weight = np.prod([1 - intensity if o == 0 else intensity / 9 for o in pattern])
            law[sum(pattern) % 10] += weight
        assert np.allclose(offset_sum_distribution(intensity, n_steps), law, atol=1e-12)
        assert wrong_answer_rate("dynamic", intensity, n_steps + 1) == pytest.approx(1 - law[0], abs=1e-12)
        assert wrong_answer_rate("dynamic", intensity, n_steps + 1, 0.4) == pytest.approx(0.4 * (1 - law[0]))
        assert wrong_answer_rate("dynamic", intensity, n_steps + 1) <= wrong_answer_upper_bound(intensity, n_steps)
    assert wrong_answer_rate("static", 0.7, 6) == 0.0 and wrong_answer_rate("clean", 0.7, 6) == 0.0
    assert wrong_answer_upper_bound(0.3, 5) == pytest.approx(1 - 0.7**5)


def test_measured_wrong_answers_of_dynamic_noise_match_the_exact_rate_not_the_bound():
    data = make_dataset(20_000, 6, contamination=1.0, noise_type="dynamic", intensity=0.3,
                        rng=np.random.default_rng(2))
    wrong = int((data.lines[:, -1] != running_sums(data.questions)[:, -1]).sum())
    assert binomtest(wrong, 20_000, wrong_answer_rate("dynamic", 0.3, 6)).pvalue > 1e-3
    assert binomtest(wrong, 20_000, wrong_answer_upper_bound(0.3, 5)).pvalue < 1e-6


@pytest.mark.parametrize("noise_type, intensity, contamination",
                         [("static", 0.3, 1.0), ("static", 0.5, 0.6), ("dynamic", 0.5, 1.0), ("clean", 0.5, 1.0)])
def test_broken_step_rate_matches_the_measured_share(noise_type, intensity, contamination):
    data = make_dataset(20_000, 6, contamination=contamination, noise_type=noise_type, intensity=intensity,
                        rng=np.random.default_rng(3))
    broken = int((~step_follows_shown_line(data.questions, data.lines)).sum())
    expected = broken_step_rate(noise_type, intensity, 6, contamination)
    if expected == 0:
        assert broken == 0
    else:
        assert binomtest(broken, data.lines.size, expected).pvalue > 1e-3


def test_encode_examples_puts_the_loss_on_the_trace_and_eos_only():
    tokens, mask = encode_examples(TOKENIZER, np.array([[6, 2, 7, 3, 2, 7], [1, 1, 1, 1, 1, 1]]),
                                   np.array([[8, 5, 8, 0, 7], [2, 3, 4, 5, 6]]))
    assert TOKENIZER.decode(tokens[0]) == "627327:85807"
    assert tokens.shape == (2, 14) and tokens.dtype == torch.int64
    targets = [TOKENIZER.tokens[int(i)] for i in tokens[0][mask[0]]]
    assert targets == list("85807") + ["<eos>"]
    data = make_dataset(30, 5, contamination=0.5, noise_type="dynamic", intensity=0.5, rng=np.random.default_rng(2))
    tokens, mask = encode_examples(TOKENIZER, data.questions, data.lines)
    assert tokens.tolist() == [TOKENIZER.encode(text, bos=True, eos=True) for text in data.texts()]
    batch = fixed_set_batches(tokens, mask, 5)(0, np.random.default_rng(0))
    assert batch[0].shape == (5, 12) and batch[1].dtype == torch.bool
    fresh_tokens, fresh_mask = fresh_clean_batches(TOKENIZER, 6, 8)(0, np.random.default_rng(0))
    for row in fresh_tokens:
        question, lines = TOKENIZER.decode(row).split(":")
        assert [int(c) for c in lines] == hand_running_sums([int(c) for c in question])
    assert fresh_mask.sum().item() == 8 * 6


class RuleModel(nn.Module):
    """A hand-coded 'decoder' that writes running-sum traces. ``reads_trace``: each step adds the next digit to
    the line shown before it; otherwise each line is recomputed from the question alone. ``lie``: every written
    value is shifted by this offset."""

    def __init__(self, reads_trace: bool, lie: int = 0):
        super().__init__()
        self.reads_trace, self.lie, self.max_len = reads_trace, lie, 32

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, TOKENIZER.vocab_size)
        for b, row in enumerate(tokens.tolist()):
            for t in range(len(row)):
                logits[b, t, self._next(row[1:t + 1])] = 1.0
        return logits

    def _next(self, ids):
        if any(i < 3 for i in ids):  # a special token: the trace is over
            return TOKENIZER.eos_id
        text = "".join(TOKENIZER.tokens[i] for i in ids)
        if ":" not in text:
            return TOKENIZER.pad_id
        question, written = (list(map(int, part)) for part in text.split(":"))
        k = len(written)
        if k == len(question) - 1:
            return TOKENIZER.eos_id
        previous = (written[-1] if written else question[0]) if self.reads_trace else sum(question[:k + 1])
        return TOKENIZER.encode(str((previous + question[k + 1] + self.lie) % 10))[0]


def test_scores_of_rule_models_are_exact():
    questions = random_questions(40, 5, np.random.default_rng(4))
    perfect = score_traces(RuleModel(reads_trace=True), TOKENIZER, questions)
    assert (perfect.answer_accuracy, perfect.line_accuracy, perfect.consistent_steps) == (1.0, 1.0, 1.0)
    liar = score_traces(RuleModel(reads_trace=True, lie=3), TOKENIZER, questions)
    assert liar.line_accuracy == 0.0 and liar.consistent_steps == 0.0
    # a model that recomputes every line from the question, lying by 3: line k is off by 3 (never by a multiple)
    recompute_liar = score_traces(RuleModel(reads_trace=False, lie=3), TOKENIZER, questions)
    assert recompute_liar.answer_accuracy == 0.0
    assert recompute_liar.consistent_steps == pytest.approx(3 / 4)  # only the first step breaks


def test_probe_tells_a_trace_reader_from_a_recomputer():
    questions = random_questions(300, 6, np.random.default_rng(5))
    reader = probe_corrupted_trace(RuleModel(reads_trace=True), TOKENIZER, questions, 0.4,
                                   np.random.default_rng(6))
    recomputer = probe_corrupted_trace(RuleModel(reads_trace=False), TOKENIZER, questions, 0.4,
                                       np.random.default_rng(6))
    assert reader.last_line_plus_digit == 1.0 and reader.true_answer == pytest.approx(reader.last_line_clean)
    assert recomputer.true_answer == 1.0
    assert recomputer.last_line_plus_digit == pytest.approx(recomputer.last_line_clean)
    assert 0.5 < reader.last_line_clean < 0.7


@pytest.mark.parametrize("model", [TinyDecoder(TOKENIZER.vocab_size, max_len=14, d_model=16, n_heads=2, seed=9),
                                   RuleModel(reads_trace=True, lie=1)])
def test_checked_greedy_decoding_equals_generate(model):
    questions = random_questions(60, 6, np.random.default_rng(10))
    tokens, _ = encode_examples(TOKENIZER, questions, running_sums(questions))
    prompts = tokens[:, :8]
    expected = generate(model, prompts, max_new_tokens=6, eos_id=TOKENIZER.eos_id)
    rng = torch.Generator().manual_seed(0)
    wrong_here = torch.rand(expected.shape, generator=rng) < 0.15
    guesses = [expected,  # right everywhere: one pass
               torch.where(wrong_here, torch.randint(2, 13, expected.shape, generator=rng),
                           expected),  # wrong from some step on (<eos> and digits)
               torch.randint(2, 13, expected.shape, generator=rng)]
    for guess in guesses:
        assert torch.equal(greedy_decode_checked(model, prompts, guess, eos_id=TOKENIZER.eos_id), expected)


class EosThenFives(nn.Module):
    """Prefers <eos> right after the prompt (4 tokens) and the digit 5 everywhere else."""

    max_len = 32

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, TOKENIZER.vocab_size)
        logits[:, :, TOKENIZER.encode("5")[0]] = 1.0
        logits[:, 3, TOKENIZER.eos_id] = 2.0
        return logits


def test_checked_greedy_decoding_repeats_eos_like_generate():
    prompts = torch.tensor([TOKENIZER.encode("123", bos=True)] * 2)
    five, eos = TOKENIZER.encode("5")[0], TOKENIZER.eos_id
    expected = generate(EosThenFives(), prompts, max_new_tokens=4, eos_id=eos)
    assert expected.tolist() == [[eos] * 4] * 2
    guesses = torch.tensor([[eos, five, five, five], [five] * 4])  # the model agrees with the first up to <eos>
    assert torch.equal(greedy_decode_checked(EosThenFives(), prompts, guesses, eos_id=eos), expected)


def test_bad_inputs_raise_named_errors():
    rng = np.random.default_rng(0)
    q = random_questions(3, 4, rng)
    with pytest.raises(ValueError, match="questions"):
        running_sums(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="digits in 0..9"):
        running_sums(np.array([[1, 12]]))
    with pytest.raises(ValueError, match="questions"):
        running_sums(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="intensity"):
        static_noise(q, 1.5, rng)
    with pytest.raises(ValueError, match="intensity"):
        dynamic_noise(q, -0.1, rng)
    with pytest.raises(TypeError, match="rng"):
        dynamic_noise(q, 0.1, 42)
    with pytest.raises(ValueError, match="noise_type"):
        make_dataset(5, 4, contamination=0.5, noise_type="gaussian", intensity=0.1, rng=rng)
    with pytest.raises(ValueError, match="contamination"):
        make_dataset(5, 4, contamination=2, noise_type="static", intensity=0.1, rng=rng)
    with pytest.raises(ValueError, match="n_digits"):
        random_questions(5, 1, rng)
    with pytest.raises(TypeError, match="n"):
        random_questions(2.5, 4, rng)
    with pytest.raises(ValueError, match="lines"):
        render_trace([1, 2, 3], [3])
    with pytest.raises(ValueError, match="digits"):
        render_trace([1, 2], [13])
    with pytest.raises(ValueError, match="lines must have shape"):
        step_follows_shown_line(q, np.zeros((3, 2), dtype=int))
    with pytest.raises(ValueError, match="n_steps"):
        wrong_answer_upper_bound(0.3, 0)
    with pytest.raises(ValueError, match="intensity"):
        wrong_answer_rate("static", 3.0, 6)
    with pytest.raises(ValueError, match="noise_type"):
        broken_step_rate("label", 0.3, 6)
    with pytest.raises(ValueError, match="lines must be an integer array of shape"):
        encode_examples(TOKENIZER, np.array([[1, 2]]), np.array([[3, 4]]))
    with pytest.raises(ValueError, match="lines must hold digits"):
        encode_examples(TOKENIZER, np.array([[1, 2]]), np.array([[10]]))
    with pytest.raises(ValueError, match="guesses"):
        greedy_decode_checked(RuleModel(True), torch.ones(3, 4, dtype=torch.int64),
                              torch.ones(2, 4, dtype=torch.int64), eos_id=2)
    with pytest.raises(ValueError, match=">= 3 digits"):
        probe_corrupted_trace(RuleModel(True), TOKENIZER, random_questions(3, 2, rng), 0.3, rng)
