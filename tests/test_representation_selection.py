import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from lib.representation_selection import (
    BOS,
    EOS,
    MAX_LEN,
    PAD,
    SEP,
    TARGET_FAMILIES,
    TASKS,
    composition,
    embed,
    exact_match,
    family_words,
    last_hidden_states,
    last_token_pool,
    make_items,
    make_pool,
    mean_pool,
    perplexity_select,
    pool_features,
    random_select,
    rds_scores,
    round_robin_select,
    tfidf_embeddings,
    weighted_mean_pool,
)
from lib.tiny_lm import TinyDecoder


def test_weighted_mean_pool_by_hand_on_1x3x2():
    H = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])
    out = weighted_mean_pool(H, torch.ones(1, 3, dtype=torch.bool))
    expected = (1 / 6) * H[0, 0] + (2 / 6) * H[0, 1] + (3 / 6) * H[0, 2]
    assert torch.allclose(out[0], expected)


def test_pools_match_hand_loops_and_ignore_padding():
    gen = torch.Generator().manual_seed(0)
    H = torch.randn(5, 7, 3, generator=gen)
    lengths = [7, 1, 4, 3, 6]
    mask = torch.tensor([[t < n for t in range(7)] for n in lengths])
    weighted, mean, last = weighted_mean_pool(H, mask), mean_pool(H, mask), last_token_pool(H, mask)
    for row, n in enumerate(lengths):
        total = sum(range(1, n + 1))
        hand = sum((t / total) * H[row, t - 1] for t in range(1, n + 1))
        assert torch.allclose(weighted[row], hand, atol=1e-6)
        assert torch.allclose(mean[row], H[row, :n].mean(0), atol=1e-6)
        assert torch.equal(last[row], H[row, n - 1])
    H2 = H.clone()
    H2[~mask] = 1e6  # padded positions must not matter
    assert torch.allclose(weighted_mean_pool(H2, mask), weighted)


def test_pool_bad_inputs():
    H = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="mask"):
        weighted_mean_pool(H, torch.ones(2, 3))
    with pytest.raises(ValueError, match="at least one"):
        mean_pool(H, torch.tensor([[True, False, False], [False, False, False]]))
    with pytest.raises(ValueError, match="H"):
        last_token_pool(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))


def test_hidden_states_feed_the_model_head():
    model = TinyDecoder(64, max_len=MAX_LEN, n_layers=1, seed=0)
    tokens = make_pool(6, np.random.default_rng(0)).tokens
    with torch.no_grad():
        assert torch.allclose(model.head(last_hidden_states(model, tokens)), model(tokens), atol=1e-5)


def test_embed_unit_rows_and_features_agree():
    model = TinyDecoder(64, max_len=MAX_LEN, n_layers=1, seed=0)
    pool = make_pool(10, np.random.default_rng(1))
    E = embed(model, pool.tokens, pooling="mean", batch_size=3)
    assert np.allclose(np.linalg.norm(E, axis=1), 1.0)
    feats, losses = pool_features(model, pool, batch_size=4)
    assert np.allclose(feats["mean"], E, atol=1e-6)
    # oracle for the response loss: exact log-probabilities item by item
    with torch.no_grad():
        logp = torch.log_softmax(model(pool.tokens[:, :-1]), -1)
    for i in range(3):
        pos = torch.nonzero(pool.response_mask[i]).flatten()
        hand = -np.mean([float(logp[i, t - 1, pool.tokens[i, t]]) for t in pos])
        assert losses[i] == pytest.approx(hand, abs=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        embed(model, pool.tokens, pooling="max")
    with pytest.raises(TypeError, match="model"):
        embed(torch.nn.Linear(2, 2), pool.tokens)


def test_rds_scores_match_sklearn():
    rng = np.random.default_rng(2)
    P, Q = rng.normal(size=(20, 5)), rng.normal(size=(4, 5))
    assert np.allclose(rds_scores(P, Q), cosine_similarity(Q, P))
    with pytest.raises(ValueError, match="same d"):
        rds_scores(P, Q[:, :3])
    with pytest.raises(ValueError, match="non-zero"):
        rds_scores(np.zeros((2, 5)), Q)


def brute_round_robin(S, k):
    picks = []
    while len(picks) < k:
        for q in range(S.shape[0]):
            best, best_score = None, -np.inf
            for j in range(S.shape[1]):
                if j not in picks and S[q, j] > best_score:
                    best, best_score = j, S[q, j]
            picks.append(best)
            if len(picks) == k:
                break
    return picks


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 12), st.integers(0, 10**6), st.data())
def test_round_robin_matches_brute_force(n_query, n_pool, seed, data):
    k = data.draw(st.integers(1, n_pool))
    S = np.random.default_rng(seed).normal(size=(n_query, n_pool))
    picks = round_robin_select(S, k)
    assert picks == brute_round_robin(S, k)
    assert len(picks) == k and len(set(picks)) == k


def test_round_robin_small_k_gives_row_argmaxes():
    S = np.array([[0.9, 0.1, 0.2, 0.0], [0.1, 0.2, 0.8, 0.3]])
    assert round_robin_select(S, 2) == [0, 2]
    S_dup = np.array([[0.9, 0.1, 0.2], [0.95, 0.5, 0.2]])  # both prefer item 0: second takes its next best
    assert round_robin_select(S_dup, 2) == [0, 1]
    with pytest.raises(ValueError, match="k"):
        round_robin_select(S, 5)
    with pytest.raises(TypeError, match="k"):
        round_robin_select(S, 1.5)


def test_perplexity_select_by_hand():
    losses = np.array([0.5, 3.0, 1.0, 2.0, 0.1, 4.0, 1.5])
    assert perplexity_select(losses, 2, "top") == [5, 1]
    # sorted ascending: 4(0.1) 0(0.5) 2(1.0) 6(1.5) 3(2.0) 1(3.0) 5(4.0); the middle three
    assert sorted(perplexity_select(losses, 3, "mid")) == [2, 3, 6]
    with pytest.raises(ValueError, match="mode"):
        perplexity_select(losses, 2, "low")
    with pytest.raises(ValueError, match="finite"):
        perplexity_select(np.array([1.0, np.nan]), 1)


def test_random_select_composition_matches_pool_proportions():
    pool = make_pool(20000, np.random.default_rng(3))
    picks = random_select(len(pool), 4000, np.random.default_rng(4))
    assert len(set(picks)) == 4000
    p = float(np.mean(pool.noisy))
    share = composition(pool, picks)["noisy"]
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / 4000)
    with pytest.raises(TypeError, match="rng"):
        random_select(10, 2, 0)


def test_items_follow_their_task_and_noise():
    rng = np.random.default_rng(5)
    fam = np.arange(16).repeat(3)
    items = make_items(fam, rng)
    for i, f in enumerate(fam):
        row = items.tokens[i].numpy()
        assert set(row[1:4]) <= set(family_words(f))
        x = row[4:8] - 3
        out = TASKS[f][1](x[None])[0]
        assert list(row[9:9 + len(out)] - 3) == list(out)
        assert row[8] == SEP and row[9 + len(out)] == EOS and (row[10 + len(out):] == PAD).all()
        assert items.response_mask[i].sum() == len(out) + 1
    noisy = make_items(np.full(400, 0), rng, np.ones(400, bool))
    assert not torch.equal(noisy.tokens[:, 9:13], noisy.tokens[:, 4:8])
    with pytest.raises(ValueError, match="family"):
        make_items(np.array([16]), rng)
    with pytest.raises(ValueError, match="noise"):
        make_pool(10, rng, noise=1.0)


def test_exact_match_scores_a_perfect_oracle_model():
    tests = make_items(np.array(TARGET_FAMILIES).repeat(4), np.random.default_rng(6))

    class Oracle(TinyDecoder):
        def forward(self, tokens):
            logits = torch.full((*tokens.shape, 64), -1e9)
            nxt = tests.tokens[:, 1:tokens.shape[1] + 1]
            logits.scatter_(2, nxt[..., None], 0.0)
            return logits

    assert exact_match(Oracle(64, max_len=MAX_LEN, n_layers=1), tests) == 1.0
    assert exact_match(TinyDecoder(64, max_len=MAX_LEN, n_layers=1, seed=0), tests) < 0.5


def as_words(tokens):
    """Sequences as space-separated token ids without <pad>, <bos>, <eos>, for sklearn's vectoriser."""
    return [" ".join(f"t{t}" for t in row.tolist() if t not in (PAD, BOS, EOS)) for row in tokens]


def test_tfidf_embeddings_match_sklearn():
    rng = np.random.default_rng(5)
    pool, queries = make_pool(300, rng), make_items(np.array(TARGET_FAMILIES * 4), rng)
    E_pool, E_query = tfidf_embeddings(pool.tokens, queries.tokens)
    vectoriser = TfidfVectorizer(token_pattern=r"\S+", lowercase=False).fit(as_words(pool.tokens))
    P = vectoriser.transform(as_words(pool.tokens)).toarray()
    Q = vectoriser.transform(as_words(queries.tokens)).toarray()
    assert np.allclose(E_query @ E_pool.T, Q @ P.T)
    assert np.allclose(np.linalg.norm(E_pool, axis=1), 1) and np.allclose(np.linalg.norm(E_query, axis=1), 1)


def test_tfidf_embeddings_ignore_tokens_unseen_in_the_pool_and_reject_bad_input():
    pool = torch.tensor([[BOS, 20, 21, EOS], [BOS, 20, 22, EOS]])
    E_pool, E_query = tfidf_embeddings(pool, torch.tensor([[BOS, 21, 40, PAD]]))
    assert np.allclose(E_query[0, 40], 0) and np.isclose(E_query[0, 21], 1)
    with pytest.raises(ValueError, match="occurs in the pool"):
        tfidf_embeddings(pool, torch.tensor([[BOS, 40, EOS]]))
    with pytest.raises(ValueError, match="pool_tokens"):
        tfidf_embeddings(torch.tensor([[BOS, 99]]), pool)
    with pytest.raises(ValueError, match="query_tokens"):
        tfidf_embeddings(pool, torch.tensor([[BOS, EOS]]))
