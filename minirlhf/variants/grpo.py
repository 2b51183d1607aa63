"""Critic-free RL: REINFORCE, RLOO, GRPO, Dr. GRPO — advantages from a group, a clipped loss, the KL.

PPO (ppo.py) turns a reward into advantages with a learned value model. The methods here sample
G responses to each prompt and use the other responses as the baseline instead, so no value
model is trained. They differ in that baseline and in how the per-token loss is averaged:

- `group_advantages`: one advantage per response, the same for each of its tokens.
    REINFORCE   A_i = r_i                                     (Williams 1992: no baseline)
    RLOO        A_i = r_i − (Σ_j r_j − r_i)/(G − 1)             (Kool et al. 2019; Ahmadian et al. 2024)
    GRPO        A_i = (r_i − mean_group r)/(std + eps)          (Shao et al. 2024, outcome supervision)
    Dr. GRPO    A_i = r_i − mean_group r (`scale_rewards="none"`) (Liu et al. 2025)
  The std is the sample std (N − 1), of the group or of the whole batch (`scale_rewards="batch"`).
- `grpo_loss`: PPO's clipped surrogate per token, ratio ρ_t = π_θ/π_old,
    ℓ_t = −min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A)  (+ β·k_t with the KL in the loss)
  with ε_high > ε_low for DAPO's clip-higher (Yu et al. 2025, Sec. 3.1), averaged by `loss_type`:
    "grpo"      (1/B) Σ_i (1/|o_i|) Σ_t ℓ_it    each response's mean, then their mean (GRPO eq. 3)
    "bnpo"/"dapo"  Σ_i Σ_t ℓ_it / Σ_i |o_i|     every response token weighs the same (DAPO Sec. 3.3)
    "dr_grpo"   Σ_i Σ_t ℓ_it / (B · max_new_tokens)  a constant normaliser (Dr. GRPO)
- `kl_penalty`: per-token estimators of KL(π_θ ‖ π_ref) from tokens sampled from π_θ (Schulman
  2020), with d = log π_θ − log π_ref: k1 = d, k2 = ½ d², k3 = e^(−d) + d − 1 (GRPO's choice).
  The KL goes either into the loss (`grpo_loss(..., kl_coef=β)`, GRPO's way) or into the reward
  before the advantages (`kl_in_reward`: r_i ← r_i − β Σ_t k_t, RLOO's way in TRL). docs/kl.md
  derives what each estimator's gradient is an estimate of; minirlhf/variants/kl_lab.py measures it.

Simplifications and choices: one process, so "bnpo" and "dapo" are the same number (TRL's "dapo"
divides by the response tokens of the whole global batch, "bnpo" by those of the local one); no
dual clip, no sequence-level ratio (GSPO); the KL term has no importance weight on later
minibatches (as in TRL); log-ratios are clamped to ±20 before `exp` (as verl does), so the ratio
and k3 stay finite in float32 however far apart the two log-probs are, at the price of a zero
gradient beyond the clamp; k3 is clamped at 0 from below, which only removes rounding error
(e^(−d) − 1 + d rounds to a few ulps below 0 when |d| is tiny). Responses to one prompt sit in
consecutive rows. `metrics.kl_estimates` is the same three formulas for logging: summed per
sequence, float64, no graph.

The stage (`minirlhf grpo`, `train_grpo`): each step samples G responses to each of B/G prompts,
scores them (`REWARD_SOURCES`: the reward model now), and `grpo_update` takes ppo_epochs ×
minibatches of whole groups of clipped steps. No value model: the policy, π_ref and the reward
model are the three models held in memory (PPO holds four). As in TRL, a group whose rewards are
all equal stays in the batch: its advantages are 0, its tokens still count in the normalisers
(DAPO's dynamic sampling would resample it); `zero_spread` logs the share of such groups.
"""
import dataclasses
import time

import numpy as np

from minirlhf.engine.autograd import Tensor, maximum, minimum, where
from minirlhf.engine.optim import AdamW, check_finite, clip_grad_norm
from minirlhf.lm.logprobs import sequence_logprobs
from minirlhf.stages.config import check_choice, check_positive, check_range, option
from minirlhf.stages.experience import collect_rollouts, evaluate_against_sft, load_rl_runs, minibatches, rollout_stats
from minirlhf.stages.runs import Run, read_metrics
from minirlhf.world.metrics import kl_estimates

ESTIMATORS = ("reinforce", "rloo", "grpo")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_PLACEMENTS = ("loss", "reward")
DEFAULT_KL_ESTIMATOR = {"loss": "k3", "reward": "k1"}    # kl_estimator="auto": GRPO's, and TRL RLOO's
LOG_RATIO_LIMIT = 20.0   # |log-ratio| clamp before exp (verl's): e^20 ≈ 4.9e8, far from float32 overflow


def _check_choice(function, name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{function}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


# The reward r_i of each sampled response, by `GRPOConfig.reward_source`: a function of the scored Experience and
# the task. A task's verifier is one more line (the verifiable-rewards issue), e.g.
#     "verifier": lambda exp, task: np.array([task.verify(p, y) for p, y in zip(exp.prompts, exp.responses)]),
REWARD_SOURCES = {"reward_model": lambda exp, task: exp.scores}   # the RM's score, less the missing-<eos> penalty


@dataclasses.dataclass
class GRPOConfig:
    estimator: str = option("grpo", "the baseline: reinforce (none), rloo (leave-one-out) or grpo (group mean)")
    group_size: int = option(8, "G, responses sampled per prompt (≥ 2; divides batch_size)")
    scale_rewards: str = option("group", "grpo's std: group, batch or none (Dr. GRPO)")
    loss_type: str = option("dapo", "loss aggregation: grpo (per-response mean), bnpo / dapo (per token) or dr_grpo")
    kl_coef: float = option(0.0, "β of the KL to π_ref (≥ 0; 0 = none, as TRL's default)")
    kl_estimator: str = option("auto", "per-token KL estimator k1, k2 or k3; auto = k3 in the loss, k1 in the reward")
    kl_placement: str = option("loss", "where β·KL goes: loss (GRPO) or reward (r_i − β Σ_t k_t, TRL's RLOO)")
    reward_source: str = option("reward_model", "what scores a response: reward_model (the --reward run)")
    clip_eps: float = option(0.2, "ε_low of the clipped ratio, in (0, 1)")
    clip_eps_high: float = option(0.0, "ε_high (DAPO's clip-higher, e.g. 0.28); 0 = clip_eps (≥ 0)")
    steps: int = option(60, "iterations: one rollout batch and its update each (≥ 1)")
    batch_size: int = option(64, "responses per rollout: batch_size / group_size prompts (≥ 2)")
    minibatch_size: int = option(32, "responses per gradient step, whole groups (a multiple of group_size; "
                                     "divides batch_size)")
    ppo_epochs: int = option(4, "passes over each rollout batch (≥ 1; TRL's num_iterations)")
    lr: float = option(3e-4, "policy learning rate (Adam, no weight decay) (> 0)")
    temperature: float = option(1.0, "sampling temperature, used in every log-prob too (> 0)")
    max_new_tokens: int = option(0, "response length limit, dr_grpo's normaliser too; 0 = the task's suggestion")
    missing_eos_penalty: float = option(1.0, "subtracted from the score of a response without <eos> (≥ 0)")
    grad_clip: float = option(1.0, "max global gradient norm (> 0)")
    eval_prompts: int = option(200, "held-out prompts for the final win rate, gold and KL (≥ 1)")
    checkpoint_every: int = option(20, "steps between checkpoints (≥ 1)")
    seed: int = option(0, "seeds prompts, samples and minibatches")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "minibatch_size", "ppo_epochs", "lr", "temperature", "grad_clip",
                       "eval_prompts", "checkpoint_every")
        check_range(self, "group_size", 2, self.batch_size)
        if self.batch_size % self.minibatch_size or self.minibatch_size % self.group_size:
            raise ValueError(f"GRPOConfig: minibatch_size = {self.minibatch_size} must divide batch_size = "
                             f"{self.batch_size} and be a multiple of group_size = {self.group_size} (whole groups)")
        for name, choices in (("estimator", ESTIMATORS), ("scale_rewards", SCALE_REWARDS), ("loss_type", LOSS_TYPES),
                              ("kl_estimator", ("auto", *KL_ESTIMATORS)), ("kl_placement", KL_PLACEMENTS),
                              ("reward_source", tuple(REWARD_SOURCES))):
            check_choice(self, name, choices)
        check_range(self, "kl_coef", 0.0, None)
        check_range(self, "clip_eps", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self, "clip_eps_high", 0.0, None)
        check_range(self, "max_new_tokens", 0, None)
        check_range(self, "missing_eos_penalty", 0.0, None)


# ----------------------------------------------------------------------------- advantages: the baseline

def group_advantages(rewards, group_size, estimator="grpo", scale_rewards="group", eps=1e-4):
    """rewards (B,), B = prompts × group_size, a prompt's responses in consecutive rows -> advantages (B,).

    `scale_rewards` applies to "grpo" only. A group whose rewards are all equal gets exactly 0
    ("reinforce" has no baseline: its advantages are the rewards).
    """
    _check_choice("group_advantages", "estimator", estimator, ESTIMATORS)
    _check_choice("group_advantages", "scale_rewards", scale_rewards, SCALE_REWARDS)
    if not eps > 0:
        raise ValueError(f"group_advantages: eps must be > 0 (it keeps 0 / (std + eps) finite), got {eps}")
    r = np.asarray(rewards, np.float64)
    if r.ndim != 1:
        raise ValueError(f"group_advantages: rewards must be (B,), got shape {r.shape}")
    if group_size < 2 or len(r) % group_size:
        raise ValueError(f"group_advantages: group_size = {group_size} must be ≥ 2 and divide the number of "
                         f"rewards B = {len(r)}")
    if estimator == "reinforce":
        # A_i = r_i                                                  (Williams 1992)
        return r.copy()
    g = r.reshape(-1, group_size)                                                  # (P, G)
    if estimator == "rloo":
        # A_i = r_i − (Σ_j r_j − r_i) / (G − 1)                      (Kool et al. 2019)
        adv = g - (g.sum(axis=1, keepdims=True) - g) / (group_size - 1)
    else:
        std = {"group": g.std(axis=1, ddof=1, keepdims=True), "batch": r.std(ddof=1), "none": None}[scale_rewards]
        # A_i = r_i − mean(r_group)                                  (Dr. GRPO: no std)
        adv = g - g.mean(axis=1, keepdims=True)
        if std is not None:
            # A_i = (r_i − mean(r_group)) / (std + eps)              (GRPO, Sec. 4.1.2)
            adv = adv / (std + eps)
    # equal rewards carry no signal: exactly 0, not the rounding error of their mean
    spread = g.max(axis=1, keepdims=True) > g.min(axis=1, keepdims=True)          # (P, 1)
    return np.where(spread, adv, 0.0).reshape(-1)                                  # (B,)


# ----------------------------------------------------------------------------- the KL to the reference

def kl_penalty(logprobs, ref_logprobs, estimator="k3"):
    """Per-token estimate of KL(π ‖ π_ref) at tokens sampled from π, (B, T) -> (B, T).

    logprobs: a Tensor (the result is a Tensor, differentiable) or an array (the result is an
    array); ref_logprobs: an array. k1 is unbiased and can be negative; k2 is biased and ≥ 0;
    k3 is unbiased and ≥ 0 (docs/kl.md: what each one's gradient estimates).
    """
    _check_choice("kl_penalty", "estimator", estimator, KL_ESTIMATORS)
    lp = logprobs if isinstance(logprobs, Tensor) else Tensor(np.asarray(logprobs))
    # d = log π − log π_ref
    d = lp - np.asarray(ref_logprobs, lp.dtype)                                   # (B, T)
    if estimator == "k1":
        # k1 = d
        k = d
    elif estimator == "k2":
        # k2 = ½ d²
        k = d * d * 0.5
    else:
        neg_d = (-d).clip(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)                  # −d = log(π_ref/π)
        # k3 = e^(−d) − 1 + d = (π_ref/π − 1) − log(π_ref/π)          (Schulman 2020; GRPO eq. 4)
        k = maximum(neg_d.exp() - 1.0 - neg_d, 0.0)
    return k if isinstance(logprobs, Tensor) else k.data


def kl_in_reward(rewards, logprobs, ref_logprobs, mask, kl_coef, estimator="k1"):
    """The KL as part of the reward, before the advantages: rewards (B,), the rest (B, T) arrays -> (B,)."""
    mask = np.asarray(mask, bool)
    k = kl_penalty(np.where(mask, logprobs, 0.0), np.where(mask, ref_logprobs, 0.0), estimator)   # (B, T)
    # r_i ← r_i − β Σ_t k_t                                          (RLOO in TRL; PPO's per-token KL reward, summed)
    return np.asarray(rewards, np.float64) - kl_coef * np.where(mask, k, 0.0).sum(axis=1)


# ----------------------------------------------------------------------------- the loss

def grpo_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2, clip_eps_high=None, loss_type="dapo",
              ref_logprobs=None, kl_coef=0.0, kl_estimator="k3", max_new_tokens=None):
    """The clipped surrogate, one advantage per response: logprobs (B, T) Tensor; the rest arrays
    (advantages (B,)). -> (loss, stats). stats: loss, clipfrac_low / clipfrac_high (tokens whose
    clip binds, so their gradient is 0), approx_kl (k3 of KL(π_old ‖ π_θ), per token) and, given
    ref_logprobs, kl (the mean per-token `kl_estimator` of KL(π_θ ‖ π_ref)).
    """
    _check_choice("grpo_loss", "loss_type", loss_type, LOSS_TYPES)
    if loss_type == "dr_grpo" and (max_new_tokens is None or max_new_tokens < 1):
        raise ValueError(f"grpo_loss: loss_type='dr_grpo' needs max_new_tokens ≥ 1 (the sampler's response "
                         f"limit), got {max_new_tokens}")
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError(f"grpo_loss: kl_coef = {kl_coef} > 0 needs ref_logprobs")
    clip_eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = np.asarray(mask, bool)
    B, dtype = mask.shape[0], logprobs.dtype
    lp = where(mask, logprobs, 0.0)                                              # masked entries cannot matter
    old = np.where(mask, old_logprobs, 0.0).astype(dtype)
    adv = np.where(mask, np.asarray(advantages)[:, None], 0.0).astype(dtype)    # (B, T): A_i on each token of o_i
    # ρ_t = exp(log π_θ − log π_old), the log-ratio clamped to ±20
    ratio = (lp - old).clip(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT).exp()             # (B, T)
    # ℓ_t = −min(ρ_t A, clip(ρ_t, 1 − ε_low, 1 + ε_high) A)         (PPO eq. 7; DAPO's clip-higher)
    per_token = -minimum(ratio * adv, ratio.clip(1.0 - clip_eps, 1.0 + clip_eps_high) * adv)
    stats = {}
    if ref_logprobs is not None:
        kl = kl_penalty(lp, np.where(mask, ref_logprobs, 0.0), kl_estimator)    # (B, T)
        stats["kl"] = float(kl.data[mask].mean())
        if kl_coef > 0:
            # ℓ_t ← ℓ_t + β k_t                                      (GRPO eq. 3: the KL in the loss)
            per_token = per_token + kl * float(kl_coef)
    per_token = where(mask, per_token, 0.0)
    lengths = mask.sum(axis=1)                                                   # (B,) |o_i|
    if loss_type == "grpo":
        # L = (1/B) Σ_i (1/|o_i|) Σ_t ℓ_it
        loss = (per_token.sum(axis=1) * (1.0 / np.maximum(lengths, 1)).astype(dtype)).mean()
    elif loss_type == "dr_grpo":
        # L = Σ_i Σ_t ℓ_it / (B · max_new_tokens)
        loss = per_token.sum() * (1.0 / (B * max_new_tokens))
    else:
        # L = Σ_i Σ_t ℓ_it / Σ_i |o_i|
        loss = per_token.sum() * (1.0 / max(int(lengths.sum()), 1))
    rho, a = ratio.data[mask], adv[mask]
    return loss, {"loss": float(loss.data),
                  "clipfrac_low": float(np.mean((rho < 1.0 - clip_eps) & (a < 0))),
                  "clipfrac_high": float(np.mean((rho > 1.0 + clip_eps_high) & (a > 0))),
                  "approx_kl": float(kl_penalty(old[mask], lp.data[mask], "k3").mean()), **stats}


# ----------------------------------------------------------------------------- the update

def grpo_update(exp, policy, optimizer, config, rng):
    """One update on a batch of experience whose rows iG … iG + G − 1 answer prompt i; -> stats.

    rewards (− β Σ_t k_t with the KL in the reward) → group advantages → ppo_epochs × minibatches of
    whole groups: the clipped loss (+ β·KL with the KL in the loss) and its step. No value model.
    `config.max_new_tokens` must be the sampler's limit (dr_grpo divides by it).
    """
    G, mask = config.group_size, exp.response_mask                                          # (B, T)
    kl_estimator = DEFAULT_KL_ESTIMATOR[config.kl_placement] if config.kl_estimator == "auto" else config.kl_estimator
    rewards = exp.scores                                                                    # (B,)
    if config.kl_placement == "reward" and config.kl_coef > 0:
        rewards = kl_in_reward(rewards, exp.logprobs, exp.ref_logprobs, mask, config.kl_coef, kl_estimator)
    advantages = group_advantages(rewards, G, config.estimator, config.scale_rewards)       # (B,)
    kl_coef_in_loss = config.kl_coef if config.kl_placement == "loss" else 0.0
    updates = []
    for groups in minibatches(len(rewards) // G, config.minibatch_size // G, config.ppo_epochs, rng):
        rows = (groups[:, None] * G + np.arange(G)).reshape(-1)                              # (b,) whole groups
        mb = exp.select(rows)
        logprobs, _ = sequence_logprobs(policy, *mb.batch(), config.temperature)            # (b, T)
        loss, stats = grpo_loss(logprobs, mb.logprobs, advantages[rows], mb.response_mask, config.clip_eps,
                                config.clip_eps_high or None, config.loss_type, mb.ref_logprobs, kl_coef_in_loss,
                                kl_estimator, config.max_new_tokens)
        optimizer.zero_grad()
        loss.backward()
        check_finite(loss, policy)
        stats["grad_norm"] = clip_grad_norm(optimizer.params, config.grad_clip)
        optimizer.step()
        updates.append(stats)
    groups = rewards.reshape(-1, G)                                                         # (B/G, G)
    return {"reward": float(rewards.mean()), "zero_spread": float(np.mean(groups.max(axis=1) == groups.min(axis=1))),
            **{key: float(np.mean([u[key] for u in updates])) for key in updates[0]}}


# ----------------------------------------------------------------------------- the stage

def train_grpo(config, *, init, reward, out=None, resume=False, quiet=False):
    """Run GRPO (or RLOO, REINFORCE, Dr. GRPO) from an SFT run `init` and a reward-model run `reward`; returns
    the run directory. The loop: rollout (G responses per prompt) → score → `grpo_update` → log.
    """
    rng = np.random.default_rng(config.seed)
    policy, ref_model, tokenizer, task, scorers = load_rl_runs(init, reward=reward)
    reward_model = scorers["reward"]
    # the sampler's limit, which the update's dr_grpo normaliser needs too
    config = dataclasses.replace(config, max_new_tokens=config.max_new_tokens or task.max_response_tokens)
    train_prompts = task.prompts("train")
    optimizer = AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
    run = Run("grpo", out, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=config.checkpoint_every, policy=policy, optimizer=optimizer)
    with run:
        while run.step < config.steps:
            step_started = time.time()
            # each prompt G times, in consecutive rows: group i is rows iG … iG + G − 1
            prompts = [train_prompts[i] for i in rng.choice(len(train_prompts), config.batch_size // config.group_size,
                                                            replace=False)]
            exp = collect_rollouts(policy, [p for p in prompts for _ in range(config.group_size)], tokenizer, rng=rng,
                                   max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                   ref_model=ref_model, reward_model=reward_model,
                                   missing_eos_penalty=config.missing_eos_penalty)
            exp.scores = REWARD_SOURCES[config.reward_source](exp, task)                     # (B,) r_i
            stats = grpo_update(exp, policy, optimizer, config, rng)
            kl = kl_estimates(exp.logprobs, exp.ref_logprobs, exp.response_mask)
            run.log(**rollout_stats(exp, task), kl_k1=kl["k1"], kl_k3=kl["k3"], **stats,
                    seconds=time.time() - step_started, show=["rm_score", "gold", "kl_k1"])

    run.save(stage="grpo", task=task.name, model=policy, tokenizer=tokenizer, init=init,
             stage_config={**dataclasses.asdict(config), "reward": str(reward)})
    summary = evaluate_against_sft(policy, ref_model, reward_model, task, tokenizer, config, config.max_new_tokens)
    summary.update(seconds=run.seconds, seconds_per_step=float(np.mean([r["seconds"] for r in read_metrics(run.dir)])))
    return run.finish(summary, curves=["rm_score", "gold", "kl_k1", "length", "zero_spread"],
                      title=f"{config.estimator} (loss_type {config.loss_type}, scale_rewards {config.scale_rewards})",
                      diagnostics=["entropy", "loss", "clipfrac_low", "clipfrac_high", "approx_kl", "grad_norm"])
