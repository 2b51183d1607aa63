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
"""
import numpy as np

from minirlhf.engine.autograd import Tensor, maximum, minimum, where

ESTIMATORS = ("reinforce", "rloo", "grpo")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_LIMIT = 20.0   # |log-ratio| clamp before exp (verl's): e^20 ≈ 4.9e8, far from float32 overflow


def _check_choice(function, name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{function}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


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
