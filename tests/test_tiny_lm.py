"""Tests of lib/tiny_lm.py: tokenizer round trips, causal masking, rotary embeddings against a complex-number
oracle, exact overfitting of a fixed string, log-probabilities that sum to one over every sequence of a small
vocabulary, greedy and temperature sampling against the softmax, and a toy task learned within the time budget."""

import itertools
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from lib.stats import pooled_chisquare_pvalue
from lib.tiny_lm import (
    CharTokenizer,
    TinyDecoder,
    apply_rotary,
    complete_texts,
    continuation_logprobs,
    generate,
    masked_next_token_loss,
    n_parameters,
    prompt_answer_batch,
    rotary_tables,
    teacher_forced_exact_match,
    train_lm,
    warmup_cosine,
)

DIGITS = "0123456789"


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=DIGITS + "+=", max_size=20))
def test_tokenizer_round_trip(text):
    tokenizer = CharTokenizer(DIGITS + "+=")
    ids = tokenizer.encode(text, bos=True, eos=True)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id and len(ids) == len(text) + 2
    assert tokenizer.decode(ids + [tokenizer.pad_id] * 3) == text


def test_tokenizer_padding_and_errors():
    tokenizer = CharTokenizer("ab")
    assert tokenizer.vocab_size == 5
    batch = tokenizer.pad_batch([[3], [3, 4, 4]])
    assert batch.tolist() == [[3, 0, 0], [3, 4, 4]] and batch.dtype == torch.int64
    with pytest.raises(ValueError, match="alphabet"):
        tokenizer.encode("abc")
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer("aa")
    with pytest.raises(ValueError, match="alphabet"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="vocabulary"):
        tokenizer.decode([7])
    with pytest.raises(ValueError, match="length"):
        tokenizer.pad_batch([[3, 3]], length=1)


@pytest.mark.parametrize("position", ["rope", "learned", "nope"])
def test_a_future_token_never_changes_a_past_prediction(position):
    model = TinyDecoder(12, max_len=16, position=position, seed=1).eval()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 12, (3, 16), generator=generator)
    changed = tokens.clone()
    changed[:, 9:] = torch.randint(0, 12, (3, 7), generator=generator)
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert torch.allclose(before[:, :9], after[:, :9], atol=1e-6)
    assert not torch.allclose(before[:, 9:], after[:, 9:], atol=1e-3)


def test_rotary_embedding_is_a_complex_rotation():
    length, head_dim = 7, 8
    x = torch.randn(2, length, head_dim, generator=torch.Generator().manual_seed(0))
    cos, sin = rotary_tables(length, head_dim)
    rotated = apply_rotary(x, cos, sin)
    as_complex = torch.complex(x[..., 0::2], x[..., 1::2])
    frequencies = 10_000.0 ** (-torch.arange(0, head_dim, 2) / head_dim)
    phases = torch.polar(torch.ones(length, head_dim // 2), torch.arange(length)[:, None] * frequencies)
    expected = torch.view_as_real(as_complex * phases).flatten(-2)
    assert torch.allclose(rotated, expected, atol=1e-5)
    # rotations by position make q.k depend on the offset only
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    cos, sin = rotary_tables(12, head_dim)
    dots = [float(apply_rotary(q, cos[i], sin[i]) @ apply_rotary(k, cos[i + 3], sin[i + 3])) for i in range(8)]
    assert np.allclose(dots, dots[0], atol=1e-4)
    with pytest.raises(ValueError, match="even"):
        rotary_tables(4, 3)


def test_model_rejects_bad_configuration_and_input():
    with pytest.raises(ValueError, match="divisible"):
        TinyDecoder(10, max_len=8, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="position"):
        TinyDecoder(10, max_len=8, position="alibi")
    with pytest.raises(ValueError, match="max_len"):
        TinyDecoder(10, max_len=0)
    with pytest.raises(ValueError, match="rope"):
        TinyDecoder(10, max_len=8, d_model=12, n_heads=4)
    model = TinyDecoder(10, max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, 9, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 4))


def test_same_seed_same_model_and_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = TinyDecoder(10, max_len=8, seed=5), TinyDecoder(10, max_len=8, seed=5)
    assert torch.equal(torch.rand(1), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.embed.weight, TinyDecoder(10, max_len=8, seed=6).embed.weight)
    assert 90_000 < n_parameters(TinyDecoder(16, max_len=32)) < 120_000


def test_masked_loss_equals_cross_entropy_on_the_selected_positions():
    model = TinyDecoder(9, max_len=10, seed=0)
    tokens = torch.randint(0, 9, (4, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, 6:] = True
    with torch.no_grad():
        loss = masked_next_token_loss(model, tokens, mask)
        logits = model(tokens)
    expected = F.cross_entropy(logits[:, 5:9].reshape(-1, 9), tokens[:, 6:].reshape(-1))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="first token"):
        masked_next_token_loss(model, tokens, torch.ones(4, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="no target"):
        masked_next_token_loss(model, tokens, torch.zeros(4, 10, dtype=torch.bool))


def test_log_probabilities_sum_to_one_over_every_continuation():
    model = TinyDecoder(4, max_len=6, d_model=16, n_heads=2, seed=3)
    prefix = torch.tensor([[1, 2]])
    continuations = torch.tensor(list(itertools.product(range(4), repeat=3)))
    log_p = continuation_logprobs(model, prefix.expand(len(continuations), -1), continuations)
    assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-5)
    # masked (padded) continuations: the sum over all length-2 continuations is one as well
    mask = torch.tensor([[True, True, False]]).expand(len(continuations), -1)
    short = continuation_logprobs(model, prefix.expand(len(continuations), -1), continuations, mask)
    assert float(torch.logsumexp(short[::4], 0)) == pytest.approx(0.0, abs=1e-5)


def test_generation_greedy_is_argmax_and_sampling_follows_the_softmax():
    model = TinyDecoder(5, max_len=8, d_model=16, n_heads=2, seed=2)
    prompt = torch.tensor([[1, 3, 4]])
    greedy = generate(model, prompt, max_new_tokens=3)
    sequence = prompt.clone()
    for _ in range(3):
        sequence = torch.cat([sequence, model(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, sequence[:, 3:])
    temperature = 2.0
    probs = F.softmax(model(prompt)[0, -1] / temperature, -1).detach().numpy()
    draws = generate(model, prompt.expand(4000, -1), max_new_tokens=1, temperature=temperature,
                     generator=torch.Generator().manual_seed(0))
    counts = np.bincount(draws[:, 0].numpy(), minlength=5)
    assert pooled_chisquare_pvalue(counts, probs) > 1e-3
    with pytest.raises(ValueError, match="generator"):
        generate(model, prompt, max_new_tokens=1, temperature=1.0)
    with pytest.raises(ValueError, match="max_len"):
        generate(model, prompt, max_new_tokens=7)


def test_a_tiny_model_overfits_a_fixed_string_exactly():
    tokenizer = CharTokenizer("abcdefgh ")
    text = "a bad cafe fed a bee"
    ids = tokenizer.encode(text, bos=True, eos=True)
    tokens = tokenizer.pad_batch([ids])
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 0] = False
    model = TinyDecoder(tokenizer.vocab_size, max_len=len(ids), d_model=32, n_heads=2, seed=0)
    log = train_lm(model, lambda step, rng: (tokens, mask), steps=150, lr=1e-2, warmup=10)
    assert log.losses[-1] < 0.01 < log.losses[0]
    assert complete_texts(model, tokenizer, [""], max_new_tokens=len(text) + 1) == [text]


def test_trainer_learns_a_toy_task_within_the_time_budget():
    """Reverse 4 digits: 600 steps of a 2-layer, d = 64 decoder must reach >= 95 % exact match in <= 15 s."""
    tokenizer = CharTokenizer(DIGITS + ">")

    def examples(rng, n):
        digits = rng.integers(0, 10, size=(n, 4))
        return ["".join(map(str, row)) for row in digits]

    def batch(step, rng):
        texts = examples(rng, 64)
        ids = [tokenizer.encode(t + ">" + t[::-1], bos=True, eos=True) for t in texts]
        tokens = tokenizer.pad_batch(ids)
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        mask[:, 6:] = True
        return tokens, mask

    test_texts = examples(np.random.default_rng(99), 200)

    def accuracy(model):
        outputs = complete_texts(model, tokenizer, [t + ">" for t in test_texts], max_new_tokens=5)
        return float(np.mean([o == t[::-1] for o, t in zip(outputs, test_texts, strict=True)]))

    model = TinyDecoder(tokenizer.vocab_size, max_len=11, seed=0)
    start = time.process_time()
    log = train_lm(model, batch, steps=600, lr=3e-3, warmup=50, seed=1, evaluate=accuracy, eval_every=300)
    elapsed = time.process_time() - start
    assert log.eval_steps == [0, 300, 600]
    assert log.evaluations[0] < 0.05
    assert log.evaluations[-1] >= 0.95
    assert elapsed <= 15


def test_warmup_cosine_and_trainer_arguments():
    assert warmup_cosine(0, total=100, warmup=10) == pytest.approx(0.1)
    assert warmup_cosine(9, total=100, warmup=10) == pytest.approx(1.0)
    assert warmup_cosine(55, total=100, warmup=10) == pytest.approx(0.5)
    assert warmup_cosine(100, total=100, warmup=10) == pytest.approx(0.0)
    model = TinyDecoder(5, max_len=4)
    with pytest.raises(ValueError, match="warmup"):
        train_lm(model, lambda s, r: None, steps=10, warmup=10)
    with pytest.raises(ValueError, match="steps"):
        train_lm(model, lambda s, r: None, steps=0)
    with pytest.raises(ValueError, match="lr"):
        train_lm(model, lambda s, r: None, steps=5, lr=0)


def test_prompt_answer_batch_by_hand():
    tokenizer = CharTokenizer("ab=")
    tokens, mask = prompt_answer_batch(tokenizer, [("a=", "b"), ("ab=", "ba")])
    a, b, eq = tokenizer.encode("ab=")
    assert tokens.tolist() == [[1, a, eq, b, 2, 0, 0], [1, a, b, eq, b, a, 2]]
    assert mask.tolist() == [[False, False, False, True, True, False, False],
                             [False, False, False, False, True, True, True]]
    with pytest.raises(ValueError, match="examples"):
        prompt_answer_batch(tokenizer, [])


def test_teacher_forced_exact_match_equals_greedy_generation():
    tokenizer = CharTokenizer(DIGITS + "+=")
    model = TinyDecoder(tokenizer.vocab_size, max_len=16, position="learned", seed=3)
    with torch.no_grad():  # sharpen a random model so that it ends its answers with <eos> now and then
        model.head.weight.mul_(8.0)
    rng = np.random.default_rng(0)
    prompts = [f"{a}+{b}=" for a, b in rng.integers(0, 1000, size=(300, 2))]
    greedy = complete_texts(model, tokenizer, prompts, max_new_tokens=6)
    raw = [generate(model, tokenizer.pad_batch([tokenizer.encode(p, bos=True)]), max_new_tokens=6)[0].tolist()
           for p in prompts]
    readable = [(p, g) for p, g, ids in zip(prompts, greedy, raw, strict=True)  # no <pad>/<bos> generated
                if tokenizer.eos_id in ids and min(ids[: ids.index(tokenizer.eos_id)], default=3) >= 3]
    assert len(readable) >= 20, "the test needs completions that end with <eos>"
    altered = [(p, g[:-1] + str((int(g[-1]) + 1) % 10)) for p, g in readable if g and g[-1].isdigit()]
    assert len(altered) >= 10
    assert teacher_forced_exact_match(model, tokenizer, readable).all()
    assert not teacher_forced_exact_match(model, tokenizer, altered).any()
    assert not teacher_forced_exact_match(model, tokenizer, [(p, g + "0") for p, g in readable]).any()


def test_fused_adamw_follows_the_default_update():
    tokenizer = CharTokenizer(DIGITS + ">")
    texts = ["".join(map(str, row)) for row in np.random.default_rng(8).integers(0, 10, size=(64, 4))]
    tokens, mask = prompt_answer_batch(tokenizer, [(t + ">", t[::-1]) for t in texts])

    def batch(step, rng):
        rows = torch.from_numpy(rng.integers(0, len(tokens), size=8))
        return tokens[rows], mask[rows]

    models = [TinyDecoder(tokenizer.vocab_size, max_len=11, d_model=16, n_heads=2, seed=3) for _ in range(2)]
    settings = dict(steps=40, lr=1e-2, warmup=5, seed=4)
    reference = train_lm(models[0], batch, **settings).losses
    fused = train_lm(models[1], batch, fused=True, **settings).losses
    assert reference[-1] < reference[0] - 0.3  # it learned something, so the comparison is not vacuous
    np.testing.assert_allclose(fused, reference, rtol=1e-4)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # Adam magnifies rounding a little
    with pytest.raises(TypeError, match="fused"):
        train_lm(models[0], batch, steps=5, warmup=0, fused="yes")
