"""Rollouts: log-probs at the sampling temperature, the reference's KL is 0 when it is the policy,
values are read one position early, scores at the last real token, the missing-<eos> penalty;
loading the runs an RL stage starts from."""
import numpy as np
import pytest

from minirlhf.lm.data import collate, encode_pair
from minirlhf.lm.logprobs import sequence_logprobs, token_values
from minirlhf.lm.model import GPT, GPTConfig, ScalarHeadModel
from minirlhf.stages.experience import collect_rollouts, load_rl_runs, score_texts, sequence_scores
from minirlhf.stages.runs import save_run
from minirlhf.world.metrics import kl_estimates
from minirlhf.world.tasks import get_task

TASK = get_task("sentiment")
TOK = TASK.tokenizer
PROMPTS = TASK.prompts("train")[:12]


def tiny_models(seed=0):
    """A random 1-layer GPT that often says <eos> (its <eos> embedding is enlarged), and two scorers."""
    rng = np.random.default_rng(seed)
    config = GPTConfig(vocab_size=TOK.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16)
    policy = GPT(config, rng)
    policy.transformer.wte.weight.data[TOK.eos_id] *= 60.0
    return policy, ScalarHeadModel.from_lm(policy, rng), ScalarHeadModel(config, rng)


def test_logprobs_are_those_of_the_sampling_temperature_and_kl_to_itself_is_zero():
    policy, value_model, reward_model = tiny_models()
    exp = collect_rollouts(policy, PROMPTS, TOK, rng=np.random.default_rng(0), max_new_tokens=8,
                           temperature=0.7, ref_model=policy, value_model=value_model, reward_model=reward_model)
    B, T = exp.input_ids.shape
    assert B == len(PROMPTS) and all(a.shape == (B, T) for a in (exp.logprobs, exp.ref_logprobs, exp.values))
    at_07 = sequence_logprobs(policy, *exp.batch(), 0.7)[0].data
    np.testing.assert_array_equal(exp.logprobs, at_07)
    assert not np.allclose(exp.logprobs, sequence_logprobs(policy, *exp.batch(), 1.0)[0].data)
    # π = π_ref: the log-ratio is exactly 0, so every KL estimate is 0
    assert kl_estimates(exp.logprobs, exp.ref_logprobs, exp.response_mask) == {"k1": 0.0, "k2": 0.0, "k3": 0.0}
    for a in (exp.logprobs, exp.entropy, exp.values):
        assert np.all(a[~exp.response_mask] == 0.0)
    assert np.all(exp.entropy[exp.response_mask] > 0.0)


def test_decoded_responses_match_the_tokens():
    policy, _, _ = tiny_models()
    exp = collect_rollouts(policy, PROMPTS, TOK, rng=np.random.default_rng(1), max_new_tokens=8)
    assert exp.responses == [TOK.decode(row[m]) for row, m in zip(exp.input_ids, exp.response_mask)]
    assert exp.ref_logprobs is None and exp.values is None and exp.scores is None


def test_value_of_token_t_is_the_head_output_at_t_minus_1():
    policy, value_model, _ = tiny_models()
    exp = collect_rollouts(policy, PROMPTS, TOK, rng=np.random.default_rng(2), max_new_tokens=8,
                           value_model=value_model)
    full = value_model(exp.input_ids, exp.attention_mask).data                     # (B, T)
    b, t = np.nonzero(exp.response_mask)
    np.testing.assert_array_equal(exp.values[b, t], full[b, t - 1])
    assert token_values(value_model, *exp.batch()).requires_grad   # differentiable for the value loss


def test_missing_eos_penalty_and_scores_at_the_last_real_token():
    policy, _, reward_model = tiny_models()
    exp = collect_rollouts(policy, PROMPTS * 3, TOK, rng=np.random.default_rng(3), max_new_tokens=6,
                           reward_model=reward_model, cost_model=reward_model, missing_eos_penalty=1.5)
    ended = np.array([row[m][-1] == TOK.eos_id for row, m in zip(exp.input_ids, exp.response_mask)])
    np.testing.assert_array_equal(exp.ended, ended)
    assert 0 < ended.sum() < len(ended)    # both kinds occur with this seed
    np.testing.assert_allclose(exp.scores, exp.rm_scores - 1.5 * ~ended, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(exp.costs, exp.rm_scores)
    # each response scored alone (no padding at all) gets the same score as in the ragged batch
    alone = [sequence_scores(reward_model, *collate([(list(row[a]), list(m[a]))], TOK.pad_id))[0]
             for row, a, m in zip(exp.input_ids, exp.attention_mask, exp.response_mask)]
    np.testing.assert_allclose(exp.rm_scores, alone, atol=1e-5)


def test_score_texts_reads_the_eos_of_each_ragged_pair():
    _, _, reward_model = tiny_models()
    prompts, responses = PROMPTS[:3], ["good .", "really wonderful and the music was superb .", "bad"]
    batch = collate([encode_pair(TOK, p, r) for p, r in zip(prompts, responses)], TOK.pad_id)
    full = reward_model(batch[0], batch[1]).data                                   # (B, T)
    # left padding puts every <eos> in the last column
    np.testing.assert_array_equal(score_texts(reward_model, TOK, prompts, responses), full[:, -1])


def test_select_takes_rows_of_every_field():
    policy, value_model, reward_model = tiny_models()
    exp = collect_rollouts(policy, PROMPTS, TOK, rng=np.random.default_rng(4), max_new_tokens=5,
                           value_model=value_model, reward_model=reward_model)
    index = np.array([3, 0, 7])
    mb = exp.select(index)
    assert mb.prompts == [PROMPTS[i] for i in index] and mb.responses == [exp.responses[i] for i in index]
    np.testing.assert_array_equal(mb.values, exp.values[index])
    np.testing.assert_array_equal(mb.scores, exp.scores[index])
    assert mb.ref_logprobs is None


def test_greedy_rollouts_are_refused():
    policy, _, _ = tiny_models()
    with pytest.raises(ValueError, match="temperature must be > 0"):
        collect_rollouts(policy, PROMPTS, TOK, rng=np.random.default_rng(0), max_new_tokens=4, temperature=0)


def test_load_rl_runs_checks_the_kinds_and_vocabularies(tmp_path):
    policy, _, reward_model = tiny_models()
    for name, model, task in (("sft", policy, "sentiment"), ("rm", reward_model, "sentiment"),
                              ("nameless", policy, None)):
        (tmp_path / name).mkdir()
        save_run(tmp_path / name, stage=name, task=task, model=model, tokenizer=TOK, stage_config={})
    loaded, ref, tok, task, models = load_rl_runs(tmp_path / "sft", reward=tmp_path / "rm")
    assert loaded is not ref and task.name == "sentiment" and isinstance(models["reward"], ScalarHeadModel)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(ValueError, match="must be a language-model run on a built-in task"):
        load_rl_runs(tmp_path / "nameless", reward=tmp_path / "rm")
    with pytest.raises(ValueError, match="--reward .* must be a scoring-model run"):
        load_rl_runs(tmp_path / "sft", reward=tmp_path / "sft")
