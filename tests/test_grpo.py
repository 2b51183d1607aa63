"""Critic-free RL math: group advantages against a slow loop (every estimator and scale), RLOO's
zero sum, GRPO's shift invariance, equal rewards → 0; the clipped loss (finite differences for
every loss_type and KL estimator, ratio 1 → loss 0 yet a gradient, DAPO's value at that step,
zero gradient where clipped on both sides, masked tokens inert, Dr. GRPO's constant normaliser,
GRPO's per-response weighting); the KL estimators' closed forms and their stability at |Δ| = 1e4.
The stage: config messages; on a real first step the grpo loss is 0 yet the gradient is not and the weights
move; the KL in the reward; the command line; an exact resume; at quick settings GRPO beats SFT under the gold
judge."""
import numpy as np
import pytest

import minirlhf.variants.grpo as stage
from minirlhf.app.cli import main
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.gradcheck import gradcheck
from minirlhf.engine.nn import load_state_dict_file
from minirlhf.engine.optim import AdamW
from minirlhf.lm.logprobs import sequence_logprobs
from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.stages.experience import collect_rollouts, load_rl_runs
from minirlhf.stages.runs import read_json, read_metrics, read_summary
from minirlhf.variants.grpo import (ESTIMATORS, KL_ESTIMATORS, LOSS_TYPES, SCALE_REWARDS, GRPOConfig, group_advantages,
                                    grpo_loss, grpo_update, kl_in_reward, kl_penalty, train_grpo)

import claims
from claims import assert_holds
from test_ppo import tiny_runs
from test_pretrain_sft import _press_ctrl_c_during

# ----------------------------------------------------------------------------- group_advantages

def slow_advantages(rewards, G, estimator, scale_rewards, eps):
    """One response at a time, straight from the definitions (sample std: N − 1)."""
    def mean(xs):
        return sum(xs) / len(xs)

    def sample_std(xs):
        m = mean(xs)
        return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5

    out = []
    for start in range(0, len(rewards), G):
        group = list(rewards[start:start + G])
        for i, r in enumerate(group):
            if estimator == "reinforce":
                out.append(r)
            elif max(group) == min(group):
                out.append(0.0)
            elif estimator == "rloo":
                out.append(r - mean(group[:i] + group[i + 1:]))
            elif scale_rewards == "none":
                out.append(r - mean(group))
            else:
                std = sample_std(group) if scale_rewards == "group" else sample_std(list(rewards))
                out.append((r - mean(group)) / (std + eps))
    return np.array(out)


def rewards_with_a_tied_group(seed=0, prompts=4, G=4):
    r = np.random.default_rng(seed).normal(size=prompts * G)
    r[G:2 * G] = 0.7                                       # one group whose rewards are all equal
    return r


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("scale_rewards", SCALE_REWARDS)
def test_group_advantages_match_the_slow_loop(estimator, scale_rewards):
    r = rewards_with_a_tied_group()
    got = group_advantages(r, 4, estimator, scale_rewards, eps=1e-4)
    np.testing.assert_allclose(got, slow_advantages(r, 4, estimator, scale_rewards, 1e-4), rtol=1e-12, atol=1e-12)
    assert got.shape == r.shape


def test_rloo_advantages_sum_to_zero_in_every_group():
    r = np.random.default_rng(1).normal(3.0, 2.0, size=5 * 6)
    adv = group_advantages(r, 6, "rloo").reshape(5, 6)
    np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-12)
    # and it is the group-mean baseline, rescaled: A_i = G/(G−1) (r_i − mean)
    g = r.reshape(5, 6)
    np.testing.assert_allclose(adv, 6 / 5 * (g - g.mean(axis=1, keepdims=True)), atol=1e-12)


@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_grpo_advantages_ignore_a_constant_added_to_a_group(scale_rewards):
    r = np.random.default_rng(2).normal(size=12)
    shifted = r + np.repeat([5.0, -3.0, 100.0], 4)      # a different constant for each group
    np.testing.assert_allclose(group_advantages(shifted, 4, "grpo", scale_rewards),
                               group_advantages(r, 4, "grpo", scale_rewards), atol=1e-10)
    # the batch std changes when groups move apart; one constant for the whole batch changes nothing
    np.testing.assert_allclose(group_advantages(r + 7.0, 4, "grpo", "batch"), group_advantages(r, 4, "grpo", "batch"),
                               atol=1e-10)


@pytest.mark.parametrize("scale_rewards", SCALE_REWARDS)
def test_equal_rewards_give_exactly_zero_and_no_nan(scale_rewards):
    r = np.full(8, 0.1)                                  # 0.1 is not exact in binary: the mean rounds
    for estimator in ("rloo", "grpo"):
        with np.errstate(all="raise"):
            adv = group_advantages(r, 4, estimator, scale_rewards)
        assert np.all(adv == 0.0)
    np.testing.assert_array_equal(group_advantages(r, 4, "reinforce", scale_rewards), r)   # no baseline


@pytest.mark.parametrize("group_size", [1, 3, 0])
def test_group_size_must_be_at_least_2_and_divide_the_batch(group_size):
    with pytest.raises(ValueError, match=f"group_size = {group_size} .* B = 8"):
        group_advantages(np.zeros(8), group_size)


@pytest.mark.parametrize("kwargs, name", [({"estimator": "ppo"}, "estimator"),
                                          ({"scale_rewards": "std"}, "scale_rewards"),
                                          ({"eps": 0.0}, "eps")])
def test_bad_options_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        group_advantages(np.zeros(8), 4, **kwargs)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        group_advantages(np.zeros((2, 4)), 4)


# ----------------------------------------------------------------------------- grpo_loss

def masks():
    """Four responses of lengths 6, 2, 4, 1 (two groups of two), left-padded prompts of width 2."""
    mask = np.zeros((4, 8), bool)
    for row, length in enumerate((6, 2, 4, 1)):
        mask[row, 2:2 + length] = True
    return mask


def loss_inputs(seed=0, dtype=np.float64):
    """Log-ratios away from every kink (clip bounds 0.8, 1.2 and 1.28), advantages of both signs."""
    rng = np.random.default_rng(seed)
    mask = masks()
    old = np.where(mask, rng.normal(-2.0, 0.5, mask.shape), 0.0)
    log_ratio = rng.choice([-0.5, -0.1, 0.05, 0.21, 0.6], size=mask.shape) + rng.uniform(-0.02, 0.02, mask.shape)
    ref = np.where(mask, old + rng.normal(0.0, 0.3, mask.shape), 0.0)
    logprobs = Tensor(np.where(mask, old + log_ratio, 0.0).astype(dtype), requires_grad=True)
    return logprobs, old, np.array([1.3, -0.7, -1.1, 0.9]), mask, ref


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("kl_estimator", KL_ESTIMATORS)
def test_loss_passes_gradcheck_for_every_loss_type_and_kl_estimator(loss_type, kl_estimator):
    logprobs, old, adv, mask, ref = loss_inputs()
    def f(lp):
        return grpo_loss(lp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28, loss_type=loss_type,
                         ref_logprobs=ref, kl_coef=0.3, kl_estimator=kl_estimator, max_new_tokens=7)[0]
    gradcheck(f, [logprobs])


def tiny_policy_batch(seed=0):
    """A tiny float32 GPT and a batch of 3 prompts × 2 responses of different lengths."""
    rng = np.random.default_rng(seed)
    model = GPT(GPTConfig(vocab_size=7, block_size=12, n_layer=1, n_head=2, n_embd=16), rng)
    mask = np.zeros((6, 10), bool)
    for row, length in enumerate((7, 2, 5, 3, 1, 6)):
        mask[row, 3:3 + length] = True
    ids = np.where(mask | (np.arange(10) < 3), rng.integers(1, 7, mask.shape), 0)
    return model, ids, mask | (np.arange(10) < 3), mask


def test_first_minibatch_loss_is_zero_yet_the_gradient_is_not():
    model, ids, attention, mask = tiny_policy_batch()
    logprobs, _ = sequence_logprobs(model, ids, attention, mask)                   # π_θ = π_old: ratio exactly 1
    old = logprobs.data.copy()
    adv = group_advantages(np.array([1.0, 0.0, 0.2, 0.9, -1.0, 0.5]), 2)          # whole groups, centred
    loss, stats = grpo_loss(logprobs, old, adv, mask, loss_type="grpo")
    loss.backward()
    grad_norm = np.sqrt(sum(float((p.grad ** 2).sum()) for p in model.parameters()))
    assert abs(float(loss.data)) < 1e-7                                             # (1/B) Σ_i (−A_i) = 0
    assert grad_norm > 0.1                                                           # and yet it learns
    assert stats["clipfrac_low"] == stats["clipfrac_high"] == 0.0 and stats["approx_kl"] == 0.0
    # ∂L/∂ log π_it = −A_i / (B |o_i|): not zero, because A_i is not
    lp = Tensor(old.astype(np.float64), requires_grad=True)
    grpo_loss(lp, old, adv, mask, loss_type="grpo")[0].backward()
    lengths = mask.sum(axis=1)
    np.testing.assert_allclose(lp.grad, np.where(mask, -adv[:, None] / (6 * lengths[:, None]), 0.0), atol=1e-12)


def test_first_minibatch_dapo_loss_is_the_length_weighted_mean_advantage():
    model, ids, attention, mask = tiny_policy_batch()
    logprobs, _ = sequence_logprobs(model, ids, attention, mask)
    adv = group_advantages(np.array([1.0, 0.0, 0.2, 0.9, -1.0, 0.5]), 2)
    loss, _ = grpo_loss(logprobs, logprobs.data, adv, mask, loss_type="dapo")
    lengths = mask.sum(axis=1)
    # ratio 1: L = Σ_i |o_i| (−A_i) / Σ_i |o_i|, not 0 when the lengths differ
    expected = -(lengths * adv).sum() / lengths.sum()
    assert abs(expected) > 0.05
    assert float(loss.data) == pytest.approx(expected, rel=1e-5)


def test_gradient_is_zero_where_either_clip_binds():
    _, old, adv, mask, _ = loss_inputs(seed=1)                       # A = +1.3, −0.7, −1.1, +0.9
    ratios = [[1.5, 1.24, 1.1, 0.7, 1.24, 0.95], [0.7, 1.3], [0.75, 0.9, 1.5, 0.85], [1.35]]
    log_ratio = np.zeros(mask.shape)
    log_ratio[mask] = np.log(np.concatenate(ratios))
    logprobs = Tensor(old + log_ratio, requires_grad=True)
    loss, stats = grpo_loss(logprobs, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28, loss_type="dapo")
    loss.backward()
    ratio, a = np.exp(logprobs.data - old), np.broadcast_to(adv[:, None], mask.shape)
    high = mask & (ratio > 1.28) & (a > 0)
    low = mask & (ratio < 0.8) & (a < 0)
    between = mask & (ratio > 1.2) & (ratio < 1.28) & (a > 0)        # clip-higher lets these still move
    assert high.any() and low.any() and between.any()
    assert np.all(logprobs.grad[high | low] == 0.0)
    free = mask & ~(high | low)
    # elsewhere ∂/∂ log π of −r A / n = −r A / n
    np.testing.assert_allclose(logprobs.grad[free], (-ratio * a / mask.sum())[free], rtol=1e-12)
    assert stats["clipfrac_high"] == pytest.approx(high.sum() / mask.sum())
    assert stats["clipfrac_low"] == pytest.approx(low.sum() / mask.sum())


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("garbage", [1e4, -np.inf, np.nan])
def test_masked_tokens_change_nothing(loss_type, garbage):
    logprobs, old, adv, mask, ref = loss_inputs(seed=2)
    kwargs = dict(loss_type=loss_type, clip_eps_high=0.3, kl_coef=0.2, kl_estimator="k3", max_new_tokens=6)
    loss_a, stats_a = grpo_loss(logprobs, old, adv, mask, ref_logprobs=ref, **kwargs)
    loss_a.backward()
    noisy = lambda x: np.where(mask, x, garbage)                      # garbage off the response
    logprobs_b = Tensor(noisy(logprobs.data), requires_grad=True)
    loss_b, stats_b = grpo_loss(logprobs_b, noisy(old), adv, mask, ref_logprobs=noisy(ref), **kwargs)
    loss_b.backward()
    assert float(loss_b.data) == float(loss_a.data) and stats_b == stats_a
    np.testing.assert_array_equal(logprobs_b.grad[mask], logprobs.grad[mask])
    assert np.all(logprobs_b.grad[~mask] == 0)


def test_dr_grpo_normalises_by_the_token_budget_not_the_lengths():
    logprobs, old, adv, mask, _ = loss_inputs(seed=3)
    l8 = float(grpo_loss(logprobs, old, adv, mask, loss_type="dr_grpo", max_new_tokens=8)[0].data)
    l16 = float(grpo_loss(logprobs, old, adv, mask, loss_type="dr_grpo", max_new_tokens=16)[0].data)
    assert l8 == pytest.approx(2 * l16, rel=1e-12)
    # ratio 1, equal advantages: every token gets −A / (B · max_new_tokens), short or long response
    lp = Tensor(old.copy(), requires_grad=True)
    grpo_loss(lp, old, np.ones(4), mask, loss_type="dr_grpo", max_new_tokens=8)[0].backward()
    np.testing.assert_allclose(lp.grad[mask], -1.0 / (4 * 8), rtol=1e-12)
    with pytest.raises(ValueError, match="max_new_tokens"):
        grpo_loss(lp, old, adv, mask, loss_type="dr_grpo")


def test_grpo_weights_a_short_responses_tokens_more_than_a_long_ones():
    _, old, _, mask, _ = loss_inputs()
    lp = Tensor(old.copy(), requires_grad=True)
    grpo_loss(lp, old, np.ones(4), mask, loss_type="grpo")[0].backward()
    short, long = lp.grad[3][mask[3]], lp.grad[0][mask[0]]            # 1 token vs 6 tokens, same advantage
    np.testing.assert_allclose(short / long[0], 6.0, rtol=1e-12)       # −A/(B|o_i|): 6× the weight per token
    lp.grad = None
    grpo_loss(lp, old, np.ones(4), mask, loss_type="dapo")[0].backward()
    np.testing.assert_allclose(lp.grad[mask], -1.0 / mask.sum(), rtol=1e-12)   # DAPO: every token alike


def test_the_kl_term_adds_beta_times_the_mean_estimate():
    logprobs, old, adv, mask, ref = loss_inputs(seed=4)
    for loss_type in LOSS_TYPES:
        plain, _ = grpo_loss(logprobs, old, adv, mask, loss_type=loss_type, max_new_tokens=6)
        for estimator in KL_ESTIMATORS:
            kl = np.where(mask, kl_penalty(logprobs.data, ref, estimator), 0.0)
            with_kl, stats = grpo_loss(logprobs, old, adv, mask, loss_type=loss_type, max_new_tokens=6,
                                       ref_logprobs=ref, kl_coef=0.5, kl_estimator=estimator)
            zero_adv, _ = grpo_loss(logprobs, old, np.zeros(4), mask, loss_type=loss_type, max_new_tokens=6,
                                    ref_logprobs=ref, kl_coef=0.5, kl_estimator=estimator)
            np.testing.assert_allclose(float(with_kl.data) - float(plain.data), float(zero_adv.data), rtol=1e-10)
            assert stats["kl"] == pytest.approx(kl[mask].mean())
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logprobs, old, adv, mask, kl_coef=0.1)


def test_float32_stays_float32():
    logprobs, old, adv, mask, ref = loss_inputs(dtype=np.float32)
    loss, _ = grpo_loss(logprobs, old, adv, mask, ref_logprobs=ref, kl_coef=0.1, loss_type="grpo")
    loss.backward()
    assert loss.dtype == np.float32 and logprobs.grad.dtype == np.float32


@pytest.mark.parametrize("kwargs, name", [({"loss_type": "sum"}, "loss_type"),
                                          ({"kl_estimator": "k4", "kl_coef": 0.1}, "estimator")])
def test_bad_loss_options_are_named(kwargs, name):
    logprobs, old, adv, mask, ref = loss_inputs()
    with pytest.raises(ValueError, match=name):
        grpo_loss(logprobs, old, adv, mask, ref_logprobs=ref, **kwargs)


# ----------------------------------------------------------------------------- the KL estimators

def test_estimators_closed_forms():
    d = np.random.default_rng(5).normal(0.0, 1.5, size=(3, 7))       # d = log π − log π_ref
    ref = np.random.default_rng(6).normal(-2.0, 1.0, size=d.shape)
    np.testing.assert_allclose(kl_penalty(ref + d, ref, "k1"), d, atol=1e-12)
    np.testing.assert_allclose(kl_penalty(ref + d, ref, "k2"), 0.5 * d * d, atol=1e-12)
    np.testing.assert_allclose(kl_penalty(ref + d, ref, "k3"), np.exp(-d) + d - 1.0, atol=1e-12)
    # a Tensor in gives a Tensor out, with the same values
    for estimator in KL_ESTIMATORS:
        out = kl_penalty(Tensor(ref + d), ref, estimator)
        assert isinstance(out, Tensor)
        np.testing.assert_array_equal(out.data, kl_penalty(ref + d, ref, estimator))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k3_is_never_negative_not_even_by_rounding(dtype):
    rng = np.random.default_rng(7)
    d = np.concatenate([rng.normal(0.0, 3.0, 10_000), rng.normal(0.0, 1e-4, 10_000),
                        np.linspace(-1e-3, 1e-3, 20_001)]).astype(dtype)   # tiny |d|: exp(x) − x − 1 rounds below 0
    k3 = kl_penalty(d, np.zeros_like(d), "k3")
    assert k3.dtype == dtype and np.all(k3 >= 0)
    k1 = kl_penalty(d, np.zeros_like(d), "k1")
    assert np.any(k1 < 0)                                              # k1 is negative on some samples


def test_k1_and_k3_average_to_the_exact_kl_over_a_full_enumeration():
    rng = np.random.default_rng(8)
    p, q = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))       # π and π_ref over 6 outcomes
    exact = float(np.sum(p * np.log(p / q)))
    log_p, log_q = np.log(p), np.log(q)
    assert float(p @ kl_penalty(log_p, log_q, "k1")) == pytest.approx(exact, rel=1e-12)
    assert float(p @ kl_penalty(log_p, log_q, "k3")) == pytest.approx(exact, rel=1e-12)
    assert float(p @ kl_penalty(log_p, log_q, "k2")) != pytest.approx(exact, rel=1e-3)   # k2 is biased
    assert float(p @ kl_penalty(log_p, log_p, "k2")) == 0.0                              # KL(π ‖ π) = 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_estimators_and_loss_stay_finite_at_1e4(dtype):
    d = np.array([[-1e4, -30.0, 0.0, 30.0, 1e4]], dtype)
    for estimator in KL_ESTIMATORS:
        x = Tensor(d.copy(), requires_grad=True)
        k = kl_penalty(x, np.zeros_like(d), estimator)
        k.sum().backward()
        assert np.all(np.isfinite(k.data)) and np.all(np.isfinite(x.grad)), estimator
    # k3 with log r = log π_ref − log π beyond ±20 is clamped there (as verl does): finite, flat
    k3 = kl_penalty(d, np.zeros_like(d), "k3")
    assert k3[0, 0] == pytest.approx(np.exp(20.0) - 21.0, rel=1e-5) and k3[0, 0] == k3[0, 1]
    mask = np.ones(d.shape, bool)
    for sign in (1.0, -1.0):
        lp = Tensor(d.copy(), requires_grad=True)
        loss, stats = grpo_loss(lp, np.zeros_like(d), np.array([sign]), mask, loss_type="grpo",
                                ref_logprobs=np.zeros_like(d), kl_coef=0.1)
        loss.backward()
        assert np.isfinite(float(loss.data)) and np.all(np.isfinite(lp.grad))
        assert all(np.isfinite(v) for v in stats.values())


def test_kl_in_reward_subtracts_beta_times_the_summed_estimate():
    _, old, _, mask, ref = loss_inputs(seed=9)
    rewards = np.array([1.0, 2.0, -1.0, 0.5])
    for estimator in KL_ESTIMATORS:
        k = np.where(mask, kl_penalty(old, ref, estimator), 0.0)
        np.testing.assert_allclose(kl_in_reward(rewards, old, ref, mask, 0.2, estimator),
                                   rewards - 0.2 * k.sum(axis=1), atol=1e-12)
        # garbage off the response changes nothing; the policy as its own reference changes nothing
        noisy = lambda x: np.where(mask, x, 1e4)
        np.testing.assert_array_equal(kl_in_reward(rewards, noisy(old), noisy(ref), mask, 0.2, estimator),
                                      kl_in_reward(rewards, old, ref, mask, 0.2, estimator))
        np.testing.assert_array_equal(kl_in_reward(rewards, old, old, mask, 0.2, estimator), rewards)
    # the default is k1 (TRL's RLOO)
    np.testing.assert_array_equal(kl_in_reward(rewards, old, ref, mask, 0.2),
                                  kl_in_reward(rewards, old, ref, mask, 0.2, "k1"))


# ----------------------------------------------------------------------------- the stage

@pytest.mark.parametrize("field, value, message", [
    ("group_size", 1, r"GRPOConfig.group_size = 1 is out of range; allowed: \[2, 64\]"),
    ("minibatch_size", 20, "minibatch_size = 20 must divide batch_size = 64 and be a multiple of group_size = 8"),
    ("group_size", 3, "minibatch_size = 32 must divide .* a multiple of group_size = 3"),
    ("estimator", "ppo", "GRPOConfig.estimator = 'ppo'; allowed: 'reinforce', 'rloo', 'grpo'"),
    ("scale_rewards", "std", "GRPOConfig.scale_rewards"), ("loss_type", "sum", "GRPOConfig.loss_type"),
    ("kl_estimator", "k4", "GRPOConfig.kl_estimator = 'k4'; allowed: 'auto', 'k1', 'k2', 'k3'"),
    ("kl_placement", "both", "GRPOConfig.kl_placement = 'both'; allowed: 'loss', 'reward'"),
    ("reward_source", "verifier", "GRPOConfig.reward_source = 'verifier'; allowed: 'reward_model'"),
    ("kl_coef", -0.1, r"GRPOConfig.kl_coef = -0.1 is out of range; allowed: \[0.0, inf\)"),
    ("clip_eps", 1.0, r"GRPOConfig.clip_eps = 1.0 is out of range; allowed: \(0.0, 1.0\)"),
    ("clip_eps_high", -0.2, "GRPOConfig.clip_eps_high"), ("ppo_epochs", 0, "GRPOConfig.ppo_epochs")])
def test_config_names_the_field_and_its_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**{field: value})


TINY = dict(steps=3, batch_size=16, group_size=4, minibatch_size=8, ppo_epochs=2, lr=3e-3, max_new_tokens=6,
            missing_eos_penalty=0.0, eval_prompts=8, checkpoint_every=100)


def test_a_real_first_step_has_loss_zero_yet_a_gradient_and_learns(tmp_path, monkeypatch):
    # loss_type="grpo", whole groups in each minibatch: on the first minibatch of every update the ratio is 1
    # (to float32 rounding of a forward pass over fewer rows) and each group's advantages sum to 0, so the loss
    # is (1/B) Σ_i (−A_i) = 0 — while its gradient, −A_i / (B |o_i|) per token, is not
    init, reward = tiny_runs(tmp_path)
    losses, norms = [], []
    real_loss, real_clip = stage.grpo_loss, stage.clip_grad_norm

    def loss_spy(logprobs, old_logprobs, advantages, mask, *args):
        loss, stats = real_loss(logprobs, old_logprobs, advantages, mask, *args)
        gap = np.abs(logprobs.data - old_logprobs)[mask].max()
        losses.append((gap, float(loss.data), advantages.reshape(-1, 4).sum(axis=1), stats))
        return loss, stats

    def clip_spy(params, max_norm):
        norms.append(real_clip(params, max_norm))
        return norms[-1]
    monkeypatch.setattr(stage, "grpo_loss", loss_spy)
    monkeypatch.setattr(stage, "clip_grad_norm", clip_spy)
    config = GRPOConfig(**{**TINY, "loss_type": "grpo"})
    run_dir = train_grpo(config, init=init, reward=reward, out=tmp_path / "grpo", quiet=True)
    # 3 rollouts × 2 epochs × 2 minibatches of 2 whole groups
    assert len(losses) == len(norms) == 12
    for (gap, loss, group_sums, stats), norm in zip(losses[::4], norms[::4]):
        assert gap < 1e-5 and abs(loss) < 1e-6 and norm > 0.05, (gap, loss, norm)
        np.testing.assert_allclose(group_sums, 0.0, atol=1e-9)
        assert stats["clipfrac_low"] == stats["clipfrac_high"] == 0.0
    # and the weights moved: a zero loss is not a zero update
    before, after = load_state_dict_file(init / "model.npz"), load_state_dict_file(run_dir / "model.npz")
    assert max(np.abs(after[k] - before[k]).max() for k in before) > 1e-3
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"rm_score", "gold", "kl_k1", "entropy", "length", "zero_spread", "approx_kl", "clipfrac_high"} <= set(rows[0])
    for name in ("model.npz", "curves.png", "diagnostics.png", "summary.json"):
        assert (run_dir / name).is_file(), name


def test_kl_in_the_reward_is_beta_times_summed_k1_before_the_advantages(tmp_path):
    init, reward = tiny_runs(tmp_path)
    policy, ref_model, tokenizer, task, scorers = load_rl_runs(init, reward=reward)
    policy.transformer.wte.weight.data += 0.3 * np.random.default_rng(1).normal(size=policy.transformer.wte.weight.shape)
    exp = collect_rollouts(policy, [p for p in task.prompts("train")[:4] for _ in range(4)], tokenizer,
                           rng=np.random.default_rng(0), max_new_tokens=6, ref_model=ref_model,
                           reward_model=scorers["reward"])
    optimizer = AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)
    in_reward = grpo_update(exp, policy, optimizer, GRPOConfig(**TINY, kl_coef=0.5, kl_placement="reward"),
                            np.random.default_rng(0))
    summed_k1 = np.where(exp.response_mask, exp.logprobs - exp.ref_logprobs, 0.0).sum(axis=1)
    assert np.abs(summed_k1).max() > 0.1
    assert in_reward["reward"] == pytest.approx(float((exp.scores - 0.5 * summed_k1).mean()), rel=1e-6)
    in_loss = grpo_update(exp, policy, optimizer, GRPOConfig(**TINY, kl_coef=0.5), np.random.default_rng(0))
    assert in_loss["reward"] == pytest.approx(float(exp.scores.mean()), rel=1e-12) and in_loss["kl"] > 0


def test_cli_runs_grpo_and_writes_the_summary(tmp_path):
    init, reward = tiny_runs(tmp_path)
    flags = ["--steps", "2", "--batch-size", "8", "--group-size", "4", "--minibatch-size", "4", "--ppo-epochs", "1",
             "--max-new-tokens", "4", "--eval-prompts", "4", "--estimator", "rloo", "--loss-type", "dr_grpo",
             "--kl-coef", "0.1", "--kl-placement", "reward", "--clip-eps-high", "0.28", "--quiet"]
    assert main(["grpo", "--init", str(init), "--reward", str(reward), "--out", str(tmp_path / "o"), *flags]) == 0
    summary = read_summary(tmp_path / "o")
    assert {"win_rate", "gold_reward", "sft_gold_reward", "kl_k1", "rm_score", "seconds_per_step"} <= set(summary)
    assert read_json(tmp_path / "o" / "config.json")["stage_config"]["estimator"] == "rloo"


def test_resumed_grpo_ends_with_the_same_weights(tmp_path, monkeypatch):
    init, reward = tiny_runs(tmp_path)
    config = GRPOConfig(**{**TINY, "steps": 4, "kl_coef": 0.1})
    straight = train_grpo(config, init=init, reward=reward, out=tmp_path / "straight", quiet=True)
    with monkeypatch.context() as patch:
        _press_ctrl_c_during(patch, stage, "grpo_update", 2)        # Ctrl-C in the middle of step 2's update
        with pytest.raises(KeyboardInterrupt, match="checkpoint saved at step 3"):
            train_grpo(config, init=init, reward=reward, out=tmp_path / "resumed", quiet=True)
    resumed = train_grpo(config, init=init, reward=reward, out=tmp_path / "resumed", resume=True, quiet=True)
    a, b = load_state_dict_file(straight / "model.npz"), load_state_dict_file(resumed / "model.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)               # policy, optimizer and RNG all restored
    drop_time = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert drop_time(read_metrics(resumed)) == drop_time(read_metrics(straight))


# ----------------------------------------------------------------------------- the headline claim, quick settings
# GRPO from the cached quick SFT and reward models (`quick.quick_grpo`); the measurement and thresholds are in
# tests/claims.py, shared with benchmarks/robustness.py, which shows them holding on 5 seeds and 2 BLAS kernels.

def test_quick_grpo_beats_sft_under_the_gold_judge():
    # 50 quick steps of 8 prompts × 8 responses: it wins more than half of the 200 held-out prompts under the gold
    # judge, the RM score of the rollouts rises by more than 0.3 (SFT samples have std 1), and it moved but stayed
    # near the SFT model. The 55% holds in every run of the sweep, but by one point at worst
    # (docs/results/robustness.md): too thin a margin to assert against a CI of ±7 points
    assert_holds(claims.grpo_beats_sft())
