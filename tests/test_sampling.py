"""Generation (cache vs no cache, padding, EOS, seeds, top-k/top-p) and sequence log-probs
(against an unbatched token-by-token computation), and ModelPolicy."""
import numpy as np
import pytest

from minirlhf.engine.autograd import Tensor
from minirlhf.engine.gradcheck import gradcheck
from minirlhf.engine.nn import Module
from minirlhf.lm.data import collate, encode_pair
from minirlhf.lm.logprobs import sequence_logprobs
from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.lm.sampling import ModelPolicy, generate, sample_logits
from minirlhf.lm.tokenizer import WordTokenizer

CONFIG = GPTConfig(vocab_size=13, block_size=24, n_layer=2, n_head=2, n_embd=16)
PROMPTS = [[1, 5, 7, 2, 9], [1, 3], [1, 12, 11, 4]]


def model64(seed=0, config=CONFIG):
    """A float64 model with weights large enough that greedy choices are clear-cut."""
    model = GPT(config, np.random.default_rng(seed)).astype(np.float64)
    rng = np.random.default_rng(seed + 100)
    for p in model.parameters():
        p.data = p.data + rng.normal(0, 0.3, p.shape)
    return model


class Counter(Module):
    """A mock LM: after token i it predicts i + 1 (mod V) with certainty (one-hot logits · 50)."""

    def __init__(self, V=10):
        self.config = GPTConfig(vocab_size=V, block_size=64, n_layer=1, n_head=1, n_embd=1)

    def __call__(self, input_ids, attention_mask=None, *, kv_cache=None):
        return Tensor(50.0 * np.eye(self.config.vocab_size)[(np.asarray(input_ids) + 1) % self.config.vocab_size])


def test_greedy_with_and_without_cache_agree():
    model = model64()
    a = generate(model, [np.array(p) for p in PROMPTS], 10, temperature=0, use_cache=True)
    b = generate(model, PROMPTS, 10, temperature=0, use_cache=False)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert a.input_ids.shape == (3, 5 + 10) and a.prompt_width == 5


def test_batched_generation_equals_each_prompt_alone():
    model = model64()
    batch = generate(model, PROMPTS, 6, temperature=0)
    for b, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], 6, temperature=0)
        assert batch.response_ids()[b] == alone.response_ids()[0]
        np.testing.assert_array_equal(batch.input_ids[b, 5 - len(prompt):5], prompt)   # left-padded prompt
        assert not batch.attention_mask[b, :5 - len(prompt)].any()


def test_same_seed_same_samples():
    model = model64()
    draw = lambda seed: generate(model, PROMPTS, 8, temperature=1.0, rng=np.random.default_rng(seed)).input_ids
    np.testing.assert_array_equal(draw(0), draw(0))
    assert not np.array_equal(draw(0), draw(1))


def test_rows_stop_at_eos_and_are_padded_after_it():
    rollout = generate(Counter(), [[5], [0, 0]], 10, temperature=0, eos_id=2, pad_id=0)
    # row 0: 6 7 8 9 0 1 2 (eos after 7 tokens, then all rows are done); row 1: 1 2, then padding
    assert rollout.response_ids() == [[6, 7, 8, 9, 0, 1, 2], [1, 2]]
    assert rollout.input_ids.shape == (2, 2 + 7)
    np.testing.assert_array_equal(rollout.response_mask[1], [False, False, True, True] + [False] * 5)
    np.testing.assert_array_equal(rollout.attention_mask[1], [True, True, True, True] + [False] * 5)
    np.testing.assert_array_equal(rollout.attention_mask[0], [False] + [True] * 8)
    np.testing.assert_array_equal(rollout.input_ids[1, 4:], 0)


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = model64()
    greedy = generate(model, PROMPTS, 8, temperature=0).input_ids
    top1 = generate(model, PROMPTS, 8, temperature=1.0, top_k=1, rng=np.random.default_rng(0)).input_ids
    nucleus = generate(model, PROMPTS, 8, temperature=1.0, top_p=1e-6, rng=np.random.default_rng(0)).input_ids
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(nucleus, greedy)


def frequencies(logits, n=40_000, **kw):
    draws = sample_logits(np.repeat(np.array([logits]), n, axis=0), np.random.default_rng(0), **kw)
    return np.bincount(draws, minlength=len(logits)) / n


def test_sample_logits_distributions():
    # 4σ of a frequency estimated from 40,000 draws is at most 4·√(0.25/40000) = 0.01
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    np.testing.assert_allclose(frequencies(logits), [0.5, 0.3, 0.15, 0.05], atol=0.01)
    np.testing.assert_allclose(frequencies(logits, top_k=2), [0.625, 0.375, 0, 0], atol=0.01)
    # top_p = 0.7: 0.5 falls short, 0.5 + 0.3 reaches it, so {0, 1} are kept
    np.testing.assert_allclose(frequencies(logits, top_p=0.7), [0.625, 0.375, 0, 0], atol=0.01)
    np.testing.assert_allclose(frequencies(logits, top_p=0.4), [1, 0, 0, 0], atol=0)
    hot = np.sqrt([0.5, 0.3, 0.15, 0.05])   # temperature 2: p ∝ p^(1/2)
    np.testing.assert_allclose(frequencies(logits, temperature=2.0), hot / hot.sum(), atol=0.01)
    assert sample_logits(np.array([[0.0, 3.0, 1.0]]), None, temperature=0)[0] == 1
    with pytest.raises(ValueError, match="top_k must be ≥ 1"):
        sample_logits(np.zeros((1, 3)), np.random.default_rng(0), top_k=0)


def batch_of_pairs():
    """Three (prompt + response) sequences of different lengths, left-padded; responses marked."""
    pairs = [([1, 5, 7, 2, 9, 3, 2], [False] * 4 + [True] * 3),
             ([1, 3, 8, 2], [False, False, True, True]),
             ([1, 12, 11, 4, 6, 6, 2], [False] * 3 + [True] * 4)]
    return pairs, collate(pairs, pad_id=0)


def test_sequence_logprobs_equal_token_by_token_unbatched():
    model = model64()
    pairs, (ids, mask, response) = batch_of_pairs()
    for temperature in (1.0, 0.7):
        token_lp, seq_lp = sequence_logprobs(model, ids, mask, response, temperature=temperature)
        assert token_lp.shape == ids.shape and seq_lp.shape == (3,)
        for b, (seq, resp) in enumerate(pairs):
            expected = np.zeros(len(seq))
            for t in range(1, len(seq)):
                if resp[t]:   # log p(x_t | x_<t) from the unbatched model on the prefix alone
                    z = model(np.array([seq[:t]])).data[0, -1] / temperature
                    expected[t] = z[seq[t]] - np.log(np.exp(z - z.max()).sum()) - z.max()
            np.testing.assert_allclose(token_lp.data[b, ids.shape[1] - len(seq):], expected, rtol=0, atol=1e-9)
            assert np.all(token_lp.data[b, :ids.shape[1] - len(seq)] == 0)
            assert seq_lp.data[b] == pytest.approx(expected.sum(), abs=1e-9)


def test_sequence_logprobs_entropy():
    model = model64()
    _, (ids, mask, response) = batch_of_pairs()
    _, _, entropy = sequence_logprobs(model, ids, mask, response, return_entropy=True)
    logits = model(ids, mask).data
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    expected = np.zeros(ids.shape)
    expected[:, 1:] = -(p * np.log(p)).sum(-1)[:, :-1]   # entropy of the distribution that drew token t
    np.testing.assert_allclose(entropy.data, expected * response, rtol=1e-10, atol=1e-12)


def test_sequence_logprobs_gradcheck():
    model = model64(config=GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8))
    _, (ids, mask, response) = batch_of_pairs()
    def objective(*_):
        token_lp, seq_lp, entropy = sequence_logprobs(model, ids, mask, response, temperature=0.8, return_entropy=True)
        return seq_lp.sum() + (token_lp * token_lp).sum() + entropy.sum()
    names, params = zip(*model.named_parameters())
    gradcheck(objective, list(params), names=list(names), max_elements=8, rng=np.random.default_rng(0))


def test_sequence_logprobs_input_checks():
    model = model64()
    _, (ids, mask, response) = batch_of_pairs()
    response[0, 0] = True
    with pytest.raises(ValueError, match=r"response_mask\[:, 0\] must be False"):
        sequence_logprobs(model, ids, mask, response)
    with pytest.raises(ValueError, match="must match"):
        sequence_logprobs(model, ids, mask[:, 1:], response)


def test_generate_input_checks_and_mode_restored():
    model = model64()
    with pytest.raises(ValueError, match="exceed block_size 24"):
        generate(model, PROMPTS, 20, temperature=0)
    with pytest.raises(ValueError, match="needs rng"):
        generate(model, PROMPTS, 2)
    dropout = GPT(GPTConfig(vocab_size=13, block_size=24, n_layer=1, n_head=2, n_embd=16, dropout=0.5),
                  np.random.default_rng(0))
    a = generate(dropout, PROMPTS, 4, temperature=0).input_ids
    assert dropout.training                                         # back in train mode
    np.testing.assert_array_equal(generate(dropout, PROMPTS, 4, temperature=0).input_ids, a)   # no dropout inside


def test_generated_rollout_scores_like_a_collated_batch():
    """A Rollout is already in the batch layout: its response log-probs need no re-packing."""
    model = model64()
    rollout = generate(model, PROMPTS, 5, temperature=1.0, rng=np.random.default_rng(3))
    token_lp, _ = sequence_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.response_mask)
    assert np.all(token_lp.data[rollout.response_mask] < 0) and np.all(token_lp.data[~rollout.response_mask] == 0)


def test_model_policy_with_a_word_tokenizer():
    tok = WordTokenizer("the cat sat on a mat .".split())
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8),
                np.random.default_rng(0))
    policy = ModelPolicy(model, tok, max_new_tokens=6, temperature=1.0)
    prompts = ["the cat", "a mat sat on"]
    responses, rollout = policy.sample(prompts, np.random.default_rng(0))
    assert responses == policy(prompts, np.random.default_rng(0))            # same seed, same text
    assert len(responses) == 2 and all(isinstance(r, str) for r in responses)
    for b, response in enumerate(responses):
        ids = rollout.response_ids()[b]
        assert response == tok.decode(ids)
        assert ids[-1] == tok.eos_id or len(ids) == 6
        assert encode_pair(tok, prompts[b], response)[0][:len(tok.encode(prompts[b])) + 1] == \
            rollout.input_ids[b][rollout.attention_mask[b]].tolist()[:len(tok.encode(prompts[b])) + 1]
