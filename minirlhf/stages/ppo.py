"""Stage 3 — PPO against the reward model, with a per-token KL penalty and PPO-ptx.

The RLHF step of Ziegler et al. (2019), Stiennon et al. (2020) and InstructGPT (Ouyang et al.
2022): the LM is the policy π_θ, each response token an action, the reward model r_φ scores the
finished response, and the objective (InstructGPT, eq. 2) is

    objective(θ) = E_{(x,y)∼π_θ}[ r_φ(x, y) − β log(π_θ(y|x) / π_SFT(y|x)) ] + c_ptx E_{x∼D_pretrain}[ log π_θ(x) ]

maximised with PPO (Schulman et al. 2017): the KL term becomes a per-token reward
−β (log π_θ − log π_SFT) and the score is added at the last response token
(`kl_penalized_rewards`); advantages come from GAE (Schulman et al. 2016, eq. 16; `compute_gae`),
whitened over the batch's response tokens; the policy takes K epochs of minibatch steps on the
clipped surrogate (PPO eq. 7; `ppo_policy_loss`) plus c_ptx times the pretraining loss (PPO-ptx;
InstructGPT calls this weight γ, which here is GAE's discount),
and a **separate value model**, initialised from the reward model as in InstructGPT, regresses
the returns with a clipped loss (`ppo_value_loss`). β is fixed, or adapted towards a target KL
(Ziegler et al. 2019, Sec. 2.2; `AdaptiveKLController`). The loop reads straight through:
rollout → score → KL-penalised rewards → GAE → whitening → epochs × minibatches → log.

Where we differ from the papers (docs/ppo.md has the full list): one response per prompt and one
rollout batch per step; dropout off everywhere (models stay in eval mode, so on the first
minibatch of an update the ratio is 1 up to float32 rounding — the minibatch's forward pass runs
over fewer rows than the rollout's — and nothing is clipped);
no reward or value normalisation beyond the RM's own (SFT samples score mean 0, std 1); the ptx
data are fresh documents from the task's web-text distribution, not the pretraining set itself.
"""
import dataclasses
import time

import numpy as np

from minirlhf.engine.autograd import maximum, no_grad, where
from minirlhf.engine.optim import AdamW, check_finite, clip_grad_norm
from minirlhf.lm.data import random_windows, token_stream
from minirlhf.lm.logprobs import next_token_loss, sequence_logprobs, token_values
from minirlhf.lm.model import last_token_index
from minirlhf.stages.config import check_positive, check_range, option
from minirlhf.stages.experience import collect_rollouts, evaluate_against_sft, load_rl_runs, minibatches, rollout_stats
from minirlhf.stages.runs import Run, read_metrics, save_model
from minirlhf.world.metrics import kl_estimates


@dataclasses.dataclass
class PPOConfig:
    steps: int = option(60, "PPO iterations: one rollout batch and its update each (≥ 1)")
    batch_size: int = option(64, "prompts per rollout, one response each (≥ 1)")
    minibatch_size: int = option(32, "responses per gradient step; must divide batch_size")
    ppo_epochs: int = option(4, "passes over each rollout batch, K (≥ 1)")
    lr: float = option(3e-4, "policy learning rate (Adam, no weight decay) (> 0)")
    vf_lr: float = option(1e-3, "value-model learning rate (> 0)")
    kl_coef: float = option(0.2, "β of the per-token KL penalty; the initial β when target_kl > 0 (≥ 0)")
    target_kl: float = option(0.0, "target KL (nats per response) of the adaptive controller; 0 = fixed β (≥ 0)")
    kl_horizon: int = option(500, "adaptive controller horizon, in responses (≥ 1)")
    clip_eps: float = option(0.2, "ε of the clipped ratio, in (0, 1)")
    vf_clip: float = option(0.2, "ε of the clipped value loss (> 0)")
    gamma: float = option(1.0, "discount γ, in [0, 1]")
    lam: float = option(0.95, "GAE λ, in [0, 1]")
    ptx_coef: float = option(0.3, "c_ptx of PPO-ptx: weight of the pretraining loss (≥ 0; 0 = plain PPO)")
    ptx_batch_size: int = option(16, "pretraining windows per gradient step (≥ 1)")
    ptx_documents: int = option(2000, "web-text documents drawn for ptx and the held-out loss (≥ 20)")
    temperature: float = option(1.0, "sampling temperature, used in every log-prob too (> 0)")
    max_new_tokens: int = option(0, "response length limit; 0 = the task's suggestion")
    missing_eos_penalty: float = option(1.0, "subtracted from the score of a response without <eos> (≥ 0)")
    grad_clip: float = option(1.0, "max global gradient norm of each model (> 0)")
    eval_prompts: int = option(200, "held-out prompts for the final win rate, gold and KL (≥ 1)")
    checkpoint_every: int = option(20, "steps between checkpoints (≥ 1)")
    seed: int = option(0, "seeds prompts, samples, minibatches and ptx windows")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "minibatch_size", "ppo_epochs", "kl_horizon",
                       "ptx_batch_size", "eval_prompts", "checkpoint_every", "lr", "vf_lr", "vf_clip",
                       "temperature", "grad_clip")
        check_range(self, "minibatch_size", 1, self.batch_size)
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"PPOConfig.minibatch_size = {self.minibatch_size} must divide "
                             f"batch_size = {self.batch_size}")
        check_range(self, "kl_coef", 0.0, None)
        check_range(self, "target_kl", 0.0, None)
        check_range(self, "clip_eps", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self, "gamma", 0.0, 1.0)
        check_range(self, "lam", 0.0, 1.0)
        check_range(self, "ptx_coef", 0.0, None)
        check_range(self, "ptx_documents", 20, None)
        check_range(self, "max_new_tokens", 0, None)
        check_range(self, "missing_eos_penalty", 0.0, None)


# ----------------------------------------------------------------------------- the math

def kl_penalized_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    """Per-token rewards (B, T): −β·(log π − log π_ref) on every response token, + score on the last."""
    mask = np.asarray(mask, bool)
    # r_t = −β (log π(x_t | x_<t) − log π_ref(x_t | x_<t))       (Stiennon et al. 2020, eq. 2, per token)
    rewards = np.where(mask, -kl_coef * (np.asarray(logprobs) - np.asarray(ref_logprobs)), 0.0)   # (B, T)
    # + r_φ(x, y) at the last real response token (ragged rows end in different columns)
    rewards[np.arange(len(mask)), last_token_index(mask)] += scores
    return rewards


def compute_gae(rewards, values, mask, gamma, lam):
    """-> (advantages, returns), each (B, T), 0 off the response (whose tokens are contiguous).

    δ_t = r_t + γ V_{t+1} − V_t,  A_t = δ_t + γλ A_{t+1},  V and A beyond the last token = 0,
    returns R_t = A_t + V_t                                      (Schulman et al. 2016, eq. 16)
    """
    mask = np.asarray(mask, bool)
    advantages = np.zeros(rewards.shape)                                 # (B, T)
    next_value = next_advantage = np.zeros(rewards.shape[0])            # (B,)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = np.where(mask[:, t], delta + gamma * lam * next_advantage, 0.0)
        next_value, next_advantage = np.where(mask[:, t], values[:, t], 0.0), advantages[:, t]
    return advantages, np.where(mask, advantages + values, 0.0)


def whiten(x, mask):
    """(x − mean) / std over the entries where mask is True; 0 elsewhere (advantage whitening)."""
    mask = np.asarray(mask, bool)
    mean, std = x[mask].mean(), x[mask].std()
    return np.where(mask, (x - mean) / (std + 1e-8), 0.0)


def explained_variance(values, returns, mask):
    """1 − Var[R − V] / Var[R] over response tokens: 1 is a perfect value function, ≤ 0 no better than a constant."""
    mask = np.asarray(mask, bool)
    var_returns = returns[mask].var()
    return float(1.0 - (returns[mask] - values[mask]).var() / var_returns) if var_returns > 0 else 0.0


def _masked_mean(x, mask):
    """Mean of a Tensor over the True entries of mask (the rest contribute exactly nothing)."""
    return where(mask, x, 0.0).sum() * (1.0 / max(int(mask.sum()), 1))


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps):
    """Clipped surrogate as a loss: logprobs (B, T) Tensor; the rest arrays. -> (loss, stats)."""
    mask = np.asarray(mask, bool)
    old = np.where(mask, old_logprobs, 0.0).astype(logprobs.dtype)     # masked entries cannot matter
    adv = np.where(mask, advantages, 0.0).astype(logprobs.dtype)
    # r_t = π_θ(a_t | s_t) / π_old(a_t | s_t) = exp(log π_θ − log π_old)
    ratio = where(mask, logprobs - old, 0.0).exp()                      # (B, T)
    # L_CLIP = −E_t[min(r_t A_t, clip(r_t, 1 − ε, 1 + ε) A_t)]          (PPO, eq. 7)
    loss = _masked_mean(maximum(ratio * -adv, ratio.clip(1.0 - clip_eps, 1.0 + clip_eps) * -adv), mask)
    r = ratio.data[mask]
    return loss, {"policy_loss": float(loss.data), "ratio": float(np.mean(r)),
                  "clipfrac": float(np.mean(np.abs(r - 1.0) > clip_eps)),     # share of tokens clipped
                  "approx_kl": float(np.mean((r - 1.0) - np.log(r)))}         # k3 estimate of KL(π_old ‖ π_θ)


def ppo_value_loss(values, old_values, returns, mask, clip_eps):
    """Clipped value loss: values (B, T) Tensor; the rest arrays. -> (loss, stats)."""
    mask = np.asarray(mask, bool)
    old = np.where(mask, old_values, 0.0).astype(values.dtype)
    ret = np.where(mask, returns, 0.0).astype(values.dtype)
    # V_clip = V_old + clip(V − V_old, −ε, ε)
    v_clipped = (values - old).clip(-clip_eps, clip_eps) + old
    # L_V = ½ E_t[max((V − R)², (V_clip − R)²)]
    unclipped, clipped = (values - ret) ** 2, (v_clipped - ret) ** 2
    loss = _masked_mean(maximum(unclipped, clipped), mask) * 0.5
    return loss, {"value_loss": float(loss.data),
                  "vf_clipfrac": float(np.mean(clipped.data[mask] > unclipped.data[mask]))}


class AdaptiveKLController:
    """β adapted so the measured KL tracks a target (Ziegler et al. 2019, Sec. 2.2)."""

    def __init__(self, init_kl_coef, target, horizon):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl, n_steps):
        # e_t = clip(KL_t / KL_target − 1, −0.2, 0.2);   β ← β (1 + e_t · n_steps / horizon)
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self):
        return {"value": np.array(self.value)}

    def load_state_dict(self, state):
        self.value = float(state["value"])


# ----------------------------------------------------------------------------- the update

def ppo_update(exp, policy, value_model, optimizers, kl_coef, config, rng, ptx_stream=None):
    """One PPO update on a batch of experience; -> stats averaged over its minibatch steps.

    rewards → GAE → whitening → ppo_epochs × minibatches of: the clipped policy loss (+ c_ptx · ptx
    loss) and its step, then the clipped value loss and its step. optimizers: (policy's, value model's).
    """
    policy_opt, value_opt = optimizers
    mask = exp.response_mask                                                               # (B, T)
    rewards = kl_penalized_rewards(exp.scores, exp.logprobs, exp.ref_logprobs, mask, kl_coef)   # (B, T)
    advantages, returns = compute_gae(rewards, exp.values, mask, config.gamma, config.lam)       # (B, T) each
    advantages = whiten(advantages, mask)
    updates = []
    for index in minibatches(len(exp.prompts), config.minibatch_size, config.ppo_epochs, rng):
        mb = exp.select(index)
        logprobs, _ = sequence_logprobs(policy, *mb.batch(), config.temperature)          # (b, T)
        loss, stats = ppo_policy_loss(logprobs, mb.logprobs, advantages[index], mb.response_mask, config.clip_eps)
        if config.ptx_coef > 0:
            windows = random_windows(ptx_stream, config.ptx_batch_size, policy.config.block_size, rng)  # (b, T+1)
            ptx_loss = next_token_loss(policy, windows)
            # L = L_CLIP + c_ptx · L_ptx          (InstructGPT eq. 2's pretraining term, as a loss to minimise)
            loss = loss + ptx_loss * config.ptx_coef
            stats["ptx_loss"] = float(ptx_loss.data)
        policy_opt.zero_grad()
        loss.backward()
        check_finite(loss, policy)
        clip_grad_norm(policy_opt.params, config.grad_clip)
        policy_opt.step()

        values = token_values(value_model, *mb.batch())                                    # (b, T)
        vf_loss, vf_stats = ppo_value_loss(values, mb.values, returns[index], mb.response_mask, config.vf_clip)
        value_opt.zero_grad()
        vf_loss.backward()
        check_finite(vf_loss, value_model)
        clip_grad_norm(value_opt.params, config.grad_clip)
        value_opt.step()
        updates.append({**stats, **vf_stats})
    means = {key: float(np.mean([u[key] for u in updates])) for key in updates[0]}
    return {**means, "explained_variance": explained_variance(exp.values, returns, mask)}


# ----------------------------------------------------------------------------- the stage

def train_ppo(config, *, init, reward, out=None, resume=False, quiet=False):
    """Run stage 3 from an SFT run `init` and a reward-model run `reward`; returns the run directory.

    The loop: rollout (sample, score) → `ppo_update` → adapt β → log.
    """
    rng = np.random.default_rng(config.seed)
    # π_θ and a frozen π_ref = π_SFT; the value model starts as a copy of the RM (InstructGPT)
    policy, ref_model, tokenizer, task, models = load_rl_runs(init, reward=reward, value=reward)
    reward_model, value_model = models["reward"], models["value"]
    max_new = config.max_new_tokens or task.max_response_tokens
    # ptx text: fresh documents of the pretraining distribution; the last 10% are held out
    docs = task.pretraining_corpus(np.random.default_rng([config.seed, 1]), config.ptx_documents)
    ptx_stream = token_stream(tokenizer, docs[:-len(docs) // 10])                     # (N,)
    heldout_windows = random_windows(token_stream(tokenizer, docs[-len(docs) // 10:]), 64, policy.config.block_size,
                                     np.random.default_rng([config.seed, 2]))        # (64, T+1)
    train_prompts = task.prompts("train")

    optimizers = (AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0),
                  AdamW(value_model.parameters(), lr=config.vf_lr, weight_decay=0.0))
    kl_ctl = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
    run = Run("ppo", out, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=config.checkpoint_every, policy=policy, value_model=value_model,
              policy_optimizer=optimizers[0], value_optimizer=optimizers[1], kl_controller=kl_ctl)
    with no_grad():
        heldout_before = float(next_token_loss(ref_model, heldout_windows).data)
    with run:
        while run.step < config.steps:
            step_started = time.time()
            prompts = [train_prompts[i] for i in rng.choice(len(train_prompts), config.batch_size, replace=False)]
            exp = collect_rollouts(policy, prompts, tokenizer, rng=rng, max_new_tokens=max_new,
                                   temperature=config.temperature, ref_model=ref_model, value_model=value_model,
                                   reward_model=reward_model, missing_eos_penalty=config.missing_eos_penalty)
            beta = kl_ctl.value
            stats = ppo_update(exp, policy, value_model, optimizers, beta, config, rng, ptx_stream)
            kl = kl_estimates(exp.logprobs, exp.ref_logprobs, exp.response_mask)
            if config.target_kl > 0:
                kl_ctl.update(kl["k1"], config.batch_size)
            with no_grad():
                heldout = float(next_token_loss(policy, heldout_windows).data)
            run.log(**rollout_stats(exp, task), kl_k1=kl["k1"], kl_k3=kl["k3"], kl_coef=beta,
                    rlhf_reward=float(exp.scores.mean()) - beta * kl["k1"], **stats, heldout_ptx_loss=heldout,
                    seconds=time.time() - step_started, show=["rm_score", "gold", "kl_k1"])

    run.save(stage="ppo", task=task.name, model=policy, tokenizer=tokenizer,
             stage_config={**dataclasses.asdict(config), "reward": str(reward)}, init=init)
    save_model(run.dir, "value_model", value_model)
    summary = evaluate_against_sft(policy, ref_model, reward_model, task, tokenizer, config, max_new)
    with no_grad():
        summary.update(heldout_ptx_loss_before=heldout_before,
                       heldout_ptx_loss=float(next_token_loss(policy, heldout_windows).data))
    summary.update(kl_coef=kl_ctl.value, seconds=run.seconds,
                   seconds_per_step=float(np.mean([r["seconds"] for r in read_metrics(run.dir)])))
    return run.finish(summary, curves=["rm_score", "gold", "kl_k1", "kl_coef", "heldout_ptx_loss"], title="PPO",
                      diagnostics=["entropy", "clipfrac", "approx_kl", "explained_variance", "value_loss"])
