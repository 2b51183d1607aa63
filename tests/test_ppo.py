"""PPO: GAE against a slow loop and its closed form, whitening, the clipped losses (ratio 1 at the
start of an update, zero gradient where clipped, masked tokens inert, finite differences), the
per-token KL reward, the adaptive controller, an exact resume, a short run raising the RM score,
the command line — and the headline claims at quick settings: PPO beats SFT under the gold judge,
no KL term means reward hacking, PPO-ptx lowers the alignment tax, the adaptive controller holds KL."""

import numpy as np
import pytest

import minirlhf.stages.ppo as stage
from minirlhf.app.cli import main
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.gradcheck import gradcheck
from minirlhf.engine.nn import load_state_dict_file
from minirlhf.lm.model import GPT, GPTConfig, ScalarHeadModel
from minirlhf.stages.ppo import (AdaptiveKLController, PPOConfig, compute_gae, kl_penalized_rewards, ppo_policy_loss,
                                 ppo_value_loss, train_ppo, whiten)
from minirlhf.stages.runs import read_metrics, save_run
from minirlhf.world.tasks import get_task

import claims
from claims import assert_holds


def ragged_masks():
    """Response masks of both layouts: rollouts (start together, end apart) and collated pairs (end together)."""
    rollout = np.zeros((3, 9), bool)
    rollout[0, 3:9], rollout[1, 3:5], rollout[2, 3:4] = True, True, True
    collated = np.zeros((3, 9), bool)
    collated[0, 2:], collated[1, 6:], collated[2, 8:] = True, True, True
    return [rollout, collated]


def slow_gae(rewards, values, mask, gamma, lam):
    """GAE one row at a time over the list of its response tokens, straight from the definition."""
    advantages = np.zeros_like(rewards)
    for b in range(len(rewards)):
        t_idx = np.flatnonzero(mask[b])
        r, v = rewards[b, t_idx], values[b, t_idx]
        a_next = 0.0
        for i in reversed(range(len(t_idx))):
            v_next = v[i + 1] if i + 1 < len(t_idx) else 0.0
            a_next = r[i] + gamma * v_next - v[i] + gamma * lam * a_next
            advantages[b, t_idx[i]] = a_next
    return advantages


@pytest.mark.parametrize("layout", [0, 1])
def test_gae_matches_the_slow_loop(layout):
    rng = np.random.default_rng(layout)
    mask = ragged_masks()[layout]
    rewards, values = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = slow_gae(rewards, values, mask, 0.9, 0.8)
    np.testing.assert_allclose(advantages, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(returns, np.where(mask, expected + values, 0.0), rtol=1e-12, atol=1e-12)
    assert np.all(advantages[~mask] == 0) and np.all(returns[~mask] == 0)


def test_gae_with_gamma_lambda_one_gives_reward_to_go():
    rng = np.random.default_rng(2)
    for mask in ragged_masks():
        rewards, values = np.where(mask, rng.normal(size=mask.shape), 0.0), rng.normal(size=mask.shape)
        advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
        # R_t = Σ_{t' ≥ t} r_t'  and  A_t = R_t − V_t
        to_go = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]
        np.testing.assert_allclose(returns, np.where(mask, to_go, 0.0), atol=1e-12)
        np.testing.assert_allclose(advantages, np.where(mask, to_go - values, 0.0), atol=1e-12)


def test_whitening_gives_mean_0_std_1_over_the_response():
    rng = np.random.default_rng(3)
    mask = ragged_masks()[0]
    x = np.where(mask, rng.normal(5.0, 3.0, mask.shape), 1e6)     # huge values off the mask must not leak in
    w = whiten(x, mask)
    assert abs(w[mask].mean()) < 1e-12 and w[mask].std() == pytest.approx(1.0, abs=1e-8)
    assert np.all(w[~mask] == 0)


def test_kl_penalized_rewards_puts_the_score_on_the_last_real_token():
    for mask in ragged_masks():
        rng = np.random.default_rng(4)
        logprobs, ref_logprobs = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
        scores = np.array([1.0, 2.0, 3.0])
        rewards = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.5)
        kl_part = np.where(mask, -0.5 * (logprobs - ref_logprobs), 0.0)
        last = [np.flatnonzero(row)[-1] for row in mask]
        expected = kl_part.copy()
        expected[np.arange(3), last] += scores
        np.testing.assert_allclose(rewards, expected, atol=1e-12)
        # policy = reference: only the score remains, at the last token
        same = kl_penalized_rewards(scores, logprobs, logprobs, mask, kl_coef=0.5)
        np.testing.assert_array_equal(same.sum(axis=1), scores)
        np.testing.assert_array_equal(same[np.arange(3), last], scores)


def policy_inputs(seed=5, dtype=np.float64):
    """Log-probs whose ratios to old_logprobs are clipped in some places and not in others (none near a kink)."""
    rng = np.random.default_rng(seed)
    mask = ragged_masks()[0]
    old = rng.normal(-2.0, 0.5, mask.shape)
    log_ratio = rng.choice([-0.6, -0.1, 0.05, 0.12, 0.5], size=mask.shape) + rng.uniform(-0.02, 0.02, mask.shape)
    adv = rng.choice([-1.0, 1.0], size=mask.shape) * rng.uniform(0.5, 2.0, mask.shape)
    logprobs = Tensor(np.where(mask, old + log_ratio, 0.0).astype(dtype), requires_grad=True)
    return logprobs, old, adv, mask


def test_policy_gradient_is_exactly_zero_where_the_ratio_is_clipped():
    logprobs, old, adv, mask = policy_inputs()
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    loss.backward()
    ratio = np.exp(logprobs.data - old)
    # clipped and the clip is the pessimistic side: r > 1 + ε with A > 0, or r < 1 − ε with A < 0
    clipped = mask & (((ratio > 1.2) & (adv > 0)) | ((ratio < 0.8) & (adv < 0)))
    assert clipped.any() and (mask & ~clipped).any()
    assert np.all(logprobs.grad[clipped] == 0.0)
    # elsewhere: d/d logπ of −r·A / n = −r·A / n
    np.testing.assert_allclose(logprobs.grad[mask & ~clipped], (-ratio * adv / mask.sum())[mask & ~clipped], rtol=1e-12)
    assert stats["clipfrac"] == pytest.approx(np.mean(np.abs(ratio[mask] - 1) > 0.2))


def test_masked_tokens_change_no_loss_and_no_gradient():
    logprobs, old, adv, mask = policy_inputs()
    loss_a, _ = ppo_policy_loss(logprobs, old, adv, mask, 0.2)
    loss_a.backward()
    grad_a = logprobs.grad.copy()
    noisy = lambda x: np.where(mask, x, 1e4)           # garbage off the response
    logprobs_b = Tensor(noisy(logprobs.data), requires_grad=True)
    loss_b, _ = ppo_policy_loss(logprobs_b, noisy(old), noisy(adv), mask, 0.2)
    loss_b.backward()
    assert float(loss_b.data) == float(loss_a.data)
    np.testing.assert_array_equal(logprobs_b.grad[mask], grad_a[mask])
    assert np.all(logprobs_b.grad[~mask] == 0)

    rng = np.random.default_rng(6)
    values, old_v, returns = (rng.normal(size=mask.shape) for _ in range(3))
    v_a = Tensor(values.copy(), requires_grad=True)
    v_b = Tensor(noisy(values), requires_grad=True)
    la, _ = ppo_value_loss(v_a, old_v, returns, mask, 0.2)
    lb, _ = ppo_value_loss(v_b, noisy(old_v), noisy(returns), mask, 0.2)
    la.backward()
    lb.backward()
    assert float(la.data) == float(lb.data)
    np.testing.assert_array_equal(v_b.grad[mask], v_a.grad[mask])
    assert np.all(v_b.grad[~mask] == 0)


def test_both_losses_pass_gradcheck_in_float64():
    logprobs, old, adv, mask = policy_inputs(seed=7)
    gradcheck(lambda lp: ppo_policy_loss(lp, old, adv, mask, 0.2)[0], [logprobs])
    rng = np.random.default_rng(8)
    old_v = rng.normal(size=mask.shape)
    # V − V_old away from ±ε, so no element sits on the kink of the clip; the clip binds where V
    # moved more than ε towards R (most elements here), not where it moved away
    step = rng.choice([-0.5, -0.1, 0.1, 0.5], size=mask.shape)
    returns = old_v + np.sign(step) * rng.choice([-1.0, 1.0, 1.0], size=mask.shape) * rng.uniform(0.6, 1.5, mask.shape)
    values = Tensor(old_v + step, requires_grad=True)
    loss, stats = ppo_value_loss(values, old_v, returns, mask, 0.2)
    assert 0 < stats["vf_clipfrac"] < 1
    gradcheck(lambda v: ppo_value_loss(v, old_v, returns, mask, 0.2)[0], [values])


def test_value_loss_closed_form_without_clipping():
    mask = ragged_masks()[1]
    values = Tensor(np.full(mask.shape, 0.3), requires_grad=True)
    loss, stats = ppo_value_loss(values, np.full(mask.shape, 0.3), np.full(mask.shape, 1.3), mask, 0.2)
    # V = V_old, so the clip changes nothing: ½ (V − R)² = ½
    assert float(loss.data) == pytest.approx(0.5) and stats["vf_clipfrac"] == 0.0


def test_adaptive_kl_controller_moves_beta_towards_the_target():
    ctl = AdaptiveKLController(0.1, target=2.0, horizon=100)
    ctl.update(current_kl=10.0, n_steps=10)       # far above target: error clipped at +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctl.update(current_kl=1.5, n_steps=10)        # below: e = 1.5/2 − 1 = −0.25 → −0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    ctl.update(current_kl=2.2, n_steps=10)        # e = 0.1, not clipped
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98 * 1.01)
    copy = AdaptiveKLController(1.0, 2.0, 100)
    copy.load_state_dict(ctl.state_dict())
    assert copy.value == ctl.value


@pytest.mark.parametrize("field, value, message", [
    ("minibatch_size", 5, "must divide batch_size"), ("clip_eps", 1.5, "PPOConfig.clip_eps"),
    ("kl_coef", -0.1, "PPOConfig.kl_coef"), ("lam", 1.2, "PPOConfig.lam")])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(**{field: value})


# ----------------------------------------------------------------------------- a tiny run

def tiny_runs(tmp_path):
    """A random 1-layer policy and a random reward model with a strong head, as run directories."""
    task = get_task("sentiment")
    rng = np.random.default_rng(0)
    config = GPTConfig(vocab_size=task.tokenizer.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16)
    policy = GPT(config, rng)
    rm = ScalarHeadModel(config, rng)
    rm.score.weight.data *= 50.0                  # scores spread over about ±1
    for name, model in (("sft", policy), ("rm", rm)):
        (tmp_path / name).mkdir()
        save_run(tmp_path / name, stage=name, task="sentiment", model=model, tokenizer=task.tokenizer, stage_config={})
    return tmp_path / "sft", tmp_path / "rm"


TINY = dict(steps=6, batch_size=16, minibatch_size=8, ppo_epochs=2, lr=3e-3, kl_coef=0.0, ptx_coef=0.5,
            ptx_batch_size=4, ptx_documents=40, max_new_tokens=6, missing_eos_penalty=0.0, eval_prompts=8,
            checkpoint_every=100)


def test_short_run_raises_rm_score_and_starts_every_update_at_ratio_one(tmp_path, monkeypatch):
    init, reward = tiny_runs(tmp_path)
    first_minibatch = []
    real_loss = stage.ppo_policy_loss

    def spy(logprobs, old_logprobs, *args):
        loss, stats = real_loss(logprobs, old_logprobs, *args)
        if spy.calls % 4 == 0:                     # 2 epochs × 2 minibatches per rollout
            first_minibatch.append((np.abs(logprobs.data - old_logprobs).max(), stats))
        spy.calls += 1
        return loss, stats
    spy.calls = 0
    monkeypatch.setattr(stage, "ppo_policy_loss", spy)
    run_dir = train_ppo(PPOConfig(**{**TINY, "steps": 12}), init=init, reward=reward, out=tmp_path / "ppo", quiet=True)
    # the first minibatch after each rollout: ratio 1 (to float32 rounding: the minibatch's forward pass
    # runs BLAS on fewer rows than the rollout's), nothing clipped, no KL to π_old
    assert len(first_minibatch) == 12
    assert all(gap < 1e-5 and stats["clipfrac"] == 0.0 and stats["approx_kl"] < 1e-10
               for gap, stats in first_minibatch), first_minibatch
    rm = [row["rm_score"] for row in read_metrics(run_dir)]
    assert np.mean(rm[-3:]) > np.mean(rm[:3]) + 0.3, rm
    for name in ("model.npz", "value_model.npz", "value_model.json", "curves.png", "diagnostics.png", "summary.json"):
        assert (run_dir / name).is_file(), name


def test_resumed_ppo_ends_with_the_same_weights(tmp_path, monkeypatch):
    init, reward = tiny_runs(tmp_path)
    config = PPOConfig(**{**TINY, "steps": 4, "target_kl": 1.0, "kl_coef": 0.1})
    straight = train_ppo(config, init=init, reward=reward, out=tmp_path / "straight", quiet=True)
    from test_pretrain_sft import _press_ctrl_c_during
    with monkeypatch.context() as patch:
        _press_ctrl_c_during(patch, stage, "ppo_update", 2)        # Ctrl-C in the middle of step 2's update
        with pytest.raises(KeyboardInterrupt, match="checkpoint saved at step 3"):
            train_ppo(config, init=init, reward=reward, out=tmp_path / "resumed", quiet=True)
    resumed = train_ppo(config, init=init, reward=reward, out=tmp_path / "resumed", resume=True, quiet=True)
    for name in ("model.npz", "value_model.npz"):   # policy, value model, optimizers, β and RNG all restored
        a, b = load_state_dict_file(straight / name), load_state_dict_file(resumed / name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    drop_time = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert drop_time(read_metrics(resumed)) == drop_time(read_metrics(straight))


def test_cli_runs_ppo_and_rejects_swapped_directories(tmp_path, capsys):
    init, reward = tiny_runs(tmp_path)
    flags = ["--steps", "2", "--batch-size", "8", "--minibatch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "4",
             "--ptx-documents", "40", "--eval-prompts", "4", "--quiet"]
    assert main(["ppo", "--init", str(init), "--reward", str(reward), "--out", str(tmp_path / "out"), *flags]) == 0
    assert (tmp_path / "out" / "summary.json").is_file()
    assert main(["ppo", "--init", str(reward), "--reward", str(init), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "must be a language-model run" in err and "\n" not in err


# ----------------------------------------------------------------------------- headline claims, quick settings
# The cached quick pipeline (pretrain → SFT → RM → PPO), and variants of its PPO run with the same seed
# and quick settings (`experiments.ppo.quick_variant`: cached beside it, shared with notebook 06).
# Win rates are over 200 held-out prompts: a 95% CI of about ±7 points. The measurements and thresholds are in
# tests/claims.py, shared with benchmarks/robustness.py, which shows them holding on 5 seeds and 2 BLAS kernels.

def test_quick_ppo_raises_the_reward_model_score_at_a_bounded_kl():
    # the RM score rises, the policy moved, and the KL term kept it near the SFT model. Its win rate against SFT
    # under the gold judge is not robust at quick settings (51%–72% over 5 seeds and 2 BLAS kernels,
    # docs/results/robustness.md); at default settings PPO wins 81% (docs/results/ppo.md).
    assert_holds(claims.ppo_raises_the_reward())


def test_quick_without_kl_the_proxy_rises_further_while_gold_or_diversity_falls():
    assert_holds(claims.ppo_without_kl())


def test_quick_ptx_reduces_the_rise_of_heldout_pretraining_loss():
    # and ptx costs no gold reward: not worse than the run without it beyond both CIs
    assert_holds(claims.ppo_ptx())


def test_quick_adaptive_controller_holds_kl_within_half_of_target():
    assert_holds(claims.ppo_adaptive_kl())


def test_quick_comparison_with_an_sft_model_of_about_4x_the_parameters():
    # InstructGPT's headline in miniature, set up: an SFT model with n_embd 128 made by the same quick recipe has
    # 3–5× the parameters. Whether PPO beats it under the gold judge is not robust at quick settings (45%–74% over
    # 5 seeds and 2 BLAS kernels); at default settings it wins 80.6% (docs/results/ppo.md).
    assert_holds(claims.ppo_vs_4x_sft())
