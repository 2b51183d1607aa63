"""Pairwise PPO (P3O; Wu et al. 2023): policy gradient on the *difference* of two responses' rewards.

The reward model learns only differences — Bradley–Terry sees r(y_1) − r(y_2), and adding any
δ(x) to every response of a prompt changes nothing — yet PPO feeds it the absolute score r(y),
so a prompt whose responses all score high pushes the policy as if they were all good. P3O
samples two responses y_1, y_2 to each prompt and uses the comparison the reward model was
trained on; the pairwise policy gradient (P3O, Sec. 4.1) is

    ∇J = E_{x, y_1, y_2∼π_θ}[ (R(x, y_1) − R(x, y_2)) · ∇(log π_θ(y_1|x) − log π_θ(y_2|x)) / 2 ]

with the trajectory reward R(x, y) = r_φ(x, y) − β·Σ_t log(π_θ(y_t|…)/π_ref(y_t|…)) (the KL
penalty inside the reward, as in PPO). It is invariant to any δ(x): Δ = R(y_1) − R(y_2)
cancels it, so no value model or baseline is needed. Like PPO, each batch of samples is reused
for K epochs with importance ratios of whole responses, ρ_i = π_θ(y_i|x)/π_old(y_i|x), clipped
to [1 − ε, 1 + ε] — and the clip is applied pairwise (P3O, Sec. 4.2):

    joint     L = −½ E[ min(ρ·Δ, clip(ρ, 1 − ε, 1 + ε)·Δ) ],        ρ = ρ_1 / ρ_2
    separate  L = −½ E[ min(ρ_1·Δ, clip(ρ_1)·Δ) + min(−ρ_2·Δ, −clip(ρ_2)·Δ) ]

Both have the gradient above at θ = θ_old. `p3o_loss` computes either; `pair_differences` the Δ.

Where we differ (docs/pairwise_ppo.md): the two responses of a pair are sampled from the same
policy at the same temperature; Δ is not normalised; no ptx term; the KL of a response is
the k1 sum over its tokens at sampling time (part of the reward, not differentiated).
"""
import dataclasses

import numpy as np

from minirlhf.engine.autograd import maximum
from minirlhf.engine.optim import AdamW, check_finite, clip_grad_norm
from minirlhf.lm.logprobs import sequence_logprobs
from minirlhf.stages.config import check_choice, check_positive, check_range, option
from minirlhf.stages.experience import collect_rollouts, evaluate_against_sft, load_rl_runs, minibatches, rollout_stats
from minirlhf.stages.runs import Run
from minirlhf.world.metrics import kl_estimates

VARIANTS = ("joint", "separate")


@dataclasses.dataclass
class PairwisePPOConfig:
    steps: int = option(60, "iterations: one rollout batch and its update each (≥ 1)")
    batch_size: int = option(64, "responses per rollout: batch_size / 2 prompts, two responses each (even, ≥ 2)")
    minibatch_size: int = option(32, "responses per gradient step, whole pairs (even; divides batch_size)")
    ppo_epochs: int = option(4, "passes over each rollout batch, K (≥ 1)")
    lr: float = option(3e-4, "policy learning rate (Adam, no weight decay) (> 0)")
    kl_coef: float = option(0.2, "β of the KL penalty inside the trajectory reward (≥ 0)")
    clip_eps: float = option(0.2, "ε of the clipped response ratios, in (0, 1)")
    variant: str = option("joint", "pairwise clipping: joint (clip ρ_1/ρ_2) or separate (clip ρ_1 and ρ_2)")
    temperature: float = option(1.0, "sampling temperature, used in every log-prob too (> 0)")
    max_new_tokens: int = option(0, "response length limit; 0 = the task's suggestion")
    missing_eos_penalty: float = option(1.0, "subtracted from the score of a response without <eos> (≥ 0)")
    grad_clip: float = option(1.0, "max global gradient norm (> 0)")
    eval_prompts: int = option(200, "held-out prompts for the final win rate, gold and KL (≥ 1)")
    checkpoint_every: int = option(20, "steps between checkpoints (≥ 1)")
    seed: int = option(0, "seeds prompts, samples and minibatches")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "minibatch_size", "ppo_epochs", "lr", "temperature", "grad_clip",
                       "eval_prompts", "checkpoint_every")
        if self.batch_size % 2 or self.minibatch_size % 2 or self.batch_size % self.minibatch_size:
            raise ValueError(f"PairwisePPOConfig: batch_size = {self.batch_size} and minibatch_size = "
                             f"{self.minibatch_size} must be even, and minibatch_size must divide batch_size")
        check_range(self, "kl_coef", 0.0, None)
        check_range(self, "clip_eps", 0.0, 1.0, low_open=True, high_open=True)
        check_choice(self, "variant", VARIANTS)
        check_range(self, "max_new_tokens", 0, None)
        check_range(self, "missing_eos_penalty", 0.0, None)


# ----------------------------------------------------------------------------- the math

def pair_differences(scores, logprobs, ref_logprobs, mask, kl_coef):
    """Δ = R(y_1) − R(y_2) of pairs in rows (2i, 2i + 1): (B / 2,), with R = score − β·Σ_t (log π − log π_ref)."""
    log_ratio = np.where(mask, np.asarray(logprobs) - np.asarray(ref_logprobs), 0.0)       # (B, T)
    # R(x, y) = r_φ(x, y) − β Σ_t log(π(y_t|…) / π_ref(y_t|…))
    returns = np.asarray(scores) - kl_coef * log_ratio.sum(axis=1)                          # (B,)
    return returns[0::2] - returns[1::2]                                                    # (B/2,)


def p3o_loss(logprobs_1, logprobs_2, old_logprobs_1, old_logprobs_2, reward_diff, clip_eps, variant="joint"):
    """Clipped pairwise surrogate as a loss; -> (loss, stats).

    logprobs_1, logprobs_2: (N,) Tensors, log π_θ(y|x) summed over each response's tokens;
    old_logprobs_*: (N,) the same at sampling time; reward_diff: (N,) Δ = R(y_1) − R(y_2).
    """
    dtype = logprobs_1.dtype
    delta = np.asarray(reward_diff, dtype)
    # log ρ_i = log π_θ(y_i|x) − log π_old(y_i|x)
    log_ratio_1 = logprobs_1 - np.asarray(old_logprobs_1, dtype)                            # (N,)
    log_ratio_2 = logprobs_2 - np.asarray(old_logprobs_2, dtype)                            # (N,)
    lo, hi = 1.0 - clip_eps, 1.0 + clip_eps
    if variant == "joint":
        # ρ = ρ_1 / ρ_2;   L = −½ E[min(ρΔ, clip(ρ, 1 − ε, 1 + ε)Δ)]
        ratio = (log_ratio_1 - log_ratio_2).exp()                                          # (N,)
        loss = maximum(ratio * -delta, ratio.clip(lo, hi) * -delta).mean() * 0.5
        ratios = ratio.data
    elif variant == "separate":
        # L = −½ E[min(ρ_1Δ, clip(ρ_1)Δ) + min(−ρ_2Δ, −clip(ρ_2)Δ)]
        ratio_1, ratio_2 = log_ratio_1.exp(), log_ratio_2.exp()                            # (N,) each
        loss = (maximum(ratio_1 * -delta, ratio_1.clip(lo, hi) * -delta)
                + maximum(ratio_2 * delta, ratio_2.clip(lo, hi) * delta)).mean() * 0.5
        ratios = np.concatenate([ratio_1.data, ratio_2.data])
    else:
        raise ValueError(f"p3o_loss: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return loss, {"policy_loss": float(loss.data),
                  "clipfrac": float(np.mean(np.abs(ratios - 1.0) > clip_eps)),       # share of ratios clipped
                  "approx_kl": float(np.mean((ratios - 1.0) - np.log(ratios)))}      # k3 of the (pair) ratios


# ----------------------------------------------------------------------------- the update

def p3o_update(exp, policy, optimizer, config, rng):
    """One P3O update on a batch of experience whose rows (2i, 2i + 1) answer the same prompt; -> stats.

    reward differences of each pair (with the KL penalty) → ppo_epochs × minibatches of pairs:
    the clipped pairwise loss and its step. No value model.
    """
    delta = pair_differences(exp.scores, exp.logprobs, exp.ref_logprobs, exp.response_mask, config.kl_coef)  # (B/2,)
    old = exp.logprobs.sum(axis=1)                                                      # (B,) log π_old(y|x)
    updates = []
    for pairs in minibatches(len(delta), config.minibatch_size // 2, config.ppo_epochs, rng):
        rows = np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)                 # (b,) y_1, y_2, …
        _, seq_logprobs = sequence_logprobs(policy, *exp.select(rows).batch(), config.temperature)  # (b,)
        loss, stats = p3o_loss(seq_logprobs[0::2], seq_logprobs[1::2], old[rows][0::2], old[rows][1::2],
                               delta[pairs], config.clip_eps, config.variant)
        optimizer.zero_grad()
        loss.backward()
        check_finite(loss, policy)
        clip_grad_norm(optimizer.params, config.grad_clip)
        optimizer.step()
        updates.append(stats)
    return {"reward_diff": float(np.abs(delta).mean()),
            **{key: float(np.mean([u[key] for u in updates])) for key in updates[0]}}


# ----------------------------------------------------------------------------- the stage

def train_pairwise_ppo(config, *, init, reward, out=None, resume=False, quiet=False):
    """Run P3O from an SFT run `init` and a reward-model run `reward`; returns the run directory.

    The loop: rollout (two responses per prompt) → `p3o_update` → log.
    """
    rng = np.random.default_rng(config.seed)
    policy, ref_model, tokenizer, task, scorers = load_rl_runs(init, reward=reward)
    reward_model = scorers["reward"]
    max_new = config.max_new_tokens or task.max_response_tokens
    train_prompts = task.prompts("train")
    optimizer = AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
    run = Run("pairwise_ppo", out, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=config.checkpoint_every, policy=policy, optimizer=optimizer)
    with run:
        while run.step < config.steps:
            # each prompt twice, in adjacent rows: pair i is rows (2i, 2i + 1)
            prompts = [train_prompts[i] for i in rng.choice(len(train_prompts), config.batch_size // 2, replace=False)]
            exp = collect_rollouts(policy, [p for p in prompts for _ in range(2)], tokenizer, rng=rng,
                                   max_new_tokens=max_new, temperature=config.temperature, ref_model=ref_model,
                                   reward_model=reward_model, missing_eos_penalty=config.missing_eos_penalty)
            stats = p3o_update(exp, policy, optimizer, config, rng)
            kl = kl_estimates(exp.logprobs, exp.ref_logprobs, exp.response_mask)
            run.log(**rollout_stats(exp, task), kl_k1=kl["k1"], kl_k3=kl["k3"], **stats,
                    show=["rm_score", "gold", "kl_k1"])

    run.save(stage="pairwise_ppo", task=task.name, model=policy, tokenizer=tokenizer, init=init,
             stage_config={**dataclasses.asdict(config), "reward": str(reward)})
    summary = evaluate_against_sft(policy, ref_model, reward_model, task, tokenizer, config, max_new)
    summary.update(seconds=run.seconds)
    return run.finish(summary, curves=["rm_score", "gold", "kl_k1", "clipfrac", "reward_diff"],
                      title=f"Pairwise PPO ({config.variant} clipping)")
