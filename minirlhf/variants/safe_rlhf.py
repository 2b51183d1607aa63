"""Safe RLHF (Dai et al. 2023): helpfulness as a reward, harm as a cost, balanced by a Lagrange multiplier.

The multiplier is written μ here (the paper's λ, which in this file is GAE's); its flags and its
logged value keep the paper's name: `--lambda-init`, `--lambda-lr`, `--lambda-max`, `lambda`.

Two labelling jobs, one criterion each, give two preference models:

  - the reward model R_φ(x, y) for helpfulness — the `reward` stage on helpfulness comparisons;
  - the cost model C_ψ(x, y) for harm (`cost_model` below), trained on harmlessness comparisons
    with Bradley–Terry plus a sign term per response (Safe RLHF, eq. 6):

        L_C(ψ) = −E[ log σ(C(y_w) − C(y_l)) ] − E[ log σ(s(y_w)·C(y_w)) + log σ(s(y_l)·C(y_l)) ]

    y_w the more harmful response of a pair, s(y) = +1 if y is harmful, −1 if harmless — so
    the cost model also learns *where* harm starts: C(x, y) > 0 means harmful.

The policy maximises helpfulness subject to a budget d on the expected cost (eq. 9–10):

    max_θ J_R(θ)   s.t.   J_C(θ) = E_{y∼π_θ}[C(x, y)] ≤ d
    min_θ max_{μ≥0}  −J_R(θ) + μ·(J_C(θ) − d)                       (the Lagrangian dual)

solved by alternating a gradient-ascent step on the multiplier, kept positive as μ = exp(ln μ)
(eq. 11, the violation J_C − d measured on each rollout batch), ln μ ← ln μ + α·μ·(J_C − d),
and a PPO step on the combined advantage (the authors' implementation, safe-rlhf `ppo_lag`)
A_t = (A^R_t − μ·A^C_t) / (1 + μ),
where A^R and A^C come from GAE on per-token rewards and costs, with separate critics V_R
(initialised from the reward model) and V_C (from the cost model), and the KL penalty in both:
r_t = −β·KL_t (+ R(x, y) at the last token), c_t = +β·KL_t (+ C(x, y)), so that the combined
advantage carries exactly PPO's penalty −β·KL_t whatever μ is.

Where we differ (docs/safe_rlhf.md): s(y) is the gold safety label; one response per prompt;
no ptx term; the KL penalty is added whole to both rewards and costs (the authors split it half
and half); the combined advantage is whitened; μ ≤ `lambda_max`; the cost model trains for a
fixed number of steps at a constant rate.
"""
import dataclasses
import math

import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import no_grad
from minirlhf.engine.optim import AdamW, check_finite, clip_grad_norm
from minirlhf.lm.data import collate, encode_pair, expand_comparisons, write_jsonl
from minirlhf.lm.logprobs import sequence_logprobs, token_values
from minirlhf.lm.model import ScalarHeadModel, last_token_values
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.config import check_positive, check_range, option
from minirlhf.stages.experience import (collect_rollouts, evaluate_against_sft, evaluate_safety, load_rl_runs,
                                        minibatches, rollout_stats, score_all)
from minirlhf.stages.ppo import (compute_gae, explained_variance, kl_penalized_rewards, ppo_policy_loss, ppo_value_loss,
                                 whiten)
from minirlhf.stages.runs import Run, load_run, new_run_dir, save_model
from minirlhf.world.annotators import Harmlessness, collect_comparisons
from minirlhf.world.metrics import kl_estimates
from minirlhf.world.reward_metrics import cost_metrics
from minirlhf.world.tasks import get_task


@dataclasses.dataclass
class CostModelConfig:
    comparisons: int = option(3000, "harmlessness comparisons of SFT samples on training prompts (≥ 2)")
    heldout_comparisons: int = option(500, "held-out harmlessness comparisons on eval prompts (≥ 1)")
    steps: int = option(200, "optimizer steps at a constant learning rate (≥ 1)")
    batch_size: int = option(32, "comparisons per step (≥ 1)")
    lr: float = option(1e-3, "learning rate (> 0)")
    grad_clip: float = option(1.0, "max global gradient norm (> 0)")
    temperature: float = option(1.0, "sampling temperature of the SFT policy whose responses are labelled (> 0)")
    seed: int = option(0, "seeds the comparisons, the head and the batches")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "heldout_comparisons", "lr", "grad_clip", "temperature")
        check_range(self, "comparisons", 2, None)


@dataclasses.dataclass
class SafeRLHFConfig:
    steps: int = option(60, "iterations: one rollout batch and its update each (≥ 1)")
    batch_size: int = option(64, "prompts per rollout, one response each (≥ 1)")
    minibatch_size: int = option(32, "responses per gradient step; must divide batch_size")
    ppo_epochs: int = option(4, "passes over each rollout batch (≥ 1)")
    lr: float = option(3e-4, "policy learning rate (> 0)")
    vf_lr: float = option(1e-3, "learning rate of both critics (> 0)")
    kl_coef: float = option(0.2, "β of the per-token KL penalty, in both rewards and costs (≥ 0)")
    threshold: float = option(0.0, "d: the budget on the expected cost, E[C] ≤ d (the paper's −d)")
    lambda_init: float = option(1.0, "μ at the start (> 0)")
    lambda_lr: float = option(0.1, "α of ln μ ← ln μ + α·μ·(J_C − d) (≥ 0; 0 = fixed μ)")
    lambda_max: float = option(20.0, "cap on μ (> 0)")
    clip_eps: float = option(0.2, "ε of the clipped ratio, in (0, 1)")
    vf_clip: float = option(0.2, "ε of the clipped value losses (> 0)")
    gamma: float = option(1.0, "discount γ, in [0, 1]")
    lam: float = option(0.95, "GAE's λ (the multiplier is μ), in [0, 1]")
    temperature: float = option(1.0, "sampling temperature, used in every log-prob too (> 0)")
    max_new_tokens: int = option(0, "response length limit; 0 = the task's suggestion")
    missing_eos_penalty: float = option(1.0, "subtracted from the reward of a response without <eos> (≥ 0)")
    grad_clip: float = option(1.0, "max global gradient norm of each model (> 0)")
    eval_prompts: int = option(200, "held-out prompts for the final evaluation (≥ 1)")
    checkpoint_every: int = option(20, "steps between checkpoints (≥ 1)")
    seed: int = option(0, "seeds prompts, samples and minibatches")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "minibatch_size", "ppo_epochs", "lr", "vf_lr", "lambda_init",
                       "lambda_max", "vf_clip", "temperature", "grad_clip", "eval_prompts", "checkpoint_every")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"SafeRLHFConfig.minibatch_size = {self.minibatch_size} must divide "
                             f"batch_size = {self.batch_size}")
        check_range(self, "kl_coef", 0.0, None)
        check_range(self, "lambda_lr", 0.0, None)
        check_range(self, "lambda_init", 0.0, self.lambda_max, low_open=True)
        check_range(self, "clip_eps", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self, "gamma", 0.0, 1.0)
        check_range(self, "lam", 0.0, 1.0)
        check_range(self, "max_new_tokens", 0, None)
        check_range(self, "missing_eos_penalty", 0.0, None)


# ----------------------------------------------------------------------------- the math

def cost_model_loss(chosen_costs, rejected_costs, chosen_harmful, rejected_harmful):
    """Safe RLHF eq. 6 on pairs whose chosen response is the safer: a scalar Tensor.

    chosen_costs, rejected_costs: (N,) Tensors C(x, y); chosen_harmful, rejected_harmful: (N,) bool.
    """
    sign_chosen = np.where(chosen_harmful, 1.0, -1.0).astype(chosen_costs.dtype)      # s(y_l)
    sign_rejected = np.where(rejected_harmful, 1.0, -1.0).astype(chosen_costs.dtype)  # s(y_w)
    # L_C = −log σ(C(y_w) − C(y_l)) − log σ(s(y_w)·C(y_w)) − log σ(s(y_l)·C(y_l))
    losses = (-F.logsigmoid(rejected_costs - chosen_costs) - F.logsigmoid(rejected_costs * sign_rejected)
              - F.logsigmoid(chosen_costs * sign_chosen))                                # (N,)
    return losses.mean()


def update_log_lambda(log_lambda, mean_cost, threshold, lambda_lr, lambda_max):
    """One ascent step of the multiplier: ln μ ← ln μ + α·μ·(J_C − d), capped at ln μ_max."""
    # ∂/∂ln μ of μ·(J_C − d) is μ·(J_C − d): μ grows while the budget is exceeded, shrinks once it is kept
    return min(log_lambda + lambda_lr * math.exp(log_lambda) * (mean_cost - threshold), math.log(lambda_max))


def lagrangian_advantages(reward_advantages, cost_advantages, mu):
    """A = (A^R − μ·A^C) / (1 + μ): helpfulness against harm, at the current price μ of harm."""
    return (reward_advantages - mu * cost_advantages) / (1.0 + mu)


# ----------------------------------------------------------------------------- the cost model

def cost_batch_loss(model, tokenizer, rows, harmful):
    """`cost_model_loss` of comparison rows (chosen = safer); harmful: {(prompt, response): bool}."""
    texts, chosen, rejected, _, _ = expand_comparisons(rows)
    batch = collate([encode_pair(tokenizer, p, y) for p, y in texts], tokenizer.pad_id)  # (B, T) each
    costs = last_token_values(model(*batch[:2]), batch[2])                                 # (B,)
    is_harmful = np.array([harmful[text] for text in texts])
    return cost_model_loss(costs[chosen], costs[rejected], is_harmful[chosen], is_harmful[rejected])


def train_cost_model(config, *, init, out=None, quiet=False):
    """Train the cost model from the SFT run `init` on harmlessness comparisons; returns the run directory."""
    sft_model, tokenizer, init_config = load_run(init)
    task = get_task(init_config["task"]) if init_config.get("task") else None
    if task is None or task.gold_cost is None:
        raise ValueError(f"--init {init}: the cost model needs a run on a task with a harm criterion (assistant)")
    run_dir = new_run_dir("cost", out)
    policy = ModelPolicy(sft_model, tokenizer, task.max_response_tokens, temperature=config.temperature)
    # the pairs the reward stage shows its (helpfulness) annotators with this seed — its generators and prompt
    # order — labelled by harmlessness annotators, who choose the safer response (PKU-SafeRLHF labels each pair twice)
    train_rng, train_prompts = np.random.default_rng([config.seed, 1]), task.prompts("train")
    prompts = [train_prompts[i] for i in train_rng.permutation(len(train_prompts))[:config.comparisons]]
    rows = collect_comparisons(Harmlessness(task), policy, prompts, rng=train_rng, kind="graded")
    heldout = collect_comparisons(Harmlessness(task), policy, task.prompts("eval")[:config.heldout_comparisons],
                                  rng=np.random.default_rng([config.seed, 2]), kind="graded")
    write_jsonl(run_dir / "comparisons.jsonl", rows)
    write_jsonl(run_dir / "heldout_comparisons.jsonl", heldout)
    # the safety label of each response, s(y) = +1 harmful / −1 harmless
    harmful = {(p, y): task.gold_cost(p, y) > 0 for p, y in expand_comparisons(rows)[0]}

    rng = np.random.default_rng(config.seed)
    model = ScalarHeadModel.from_lm(sft_model, rng)
    model.score.weight.data[:] = 0.0     # C = 0 everywhere at the start: the loss is 3·ln 2
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    run = Run("cost model", run_dir, resume=False, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=0)
    with run:
        while run.step < config.steps:
            batch = [rows[i] for i in rng.choice(len(rows), min(config.batch_size, len(rows)), replace=False)]
            run.log(**cost_model_update(model, optimizer, tokenizer, batch, harmful, config.grad_clip), show=["loss"])
    model.eval()
    texts, chosen, rejected, _, _ = expand_comparisons(heldout)
    prompts, responses = (list(column) for column in zip(*texts))
    costs = score_all(model, tokenizer, prompts, responses)                               # (n_texts,)
    gold = [task.gold_cost(p, y) for p, y in texts]
    summary = {**cost_metrics(costs, gold, chosen, rejected), "n_train": len(rows), "seconds": run.seconds}
    run.save(stage="cost", task=task.name, model=model, tokenizer=tokenizer, stage_config=dataclasses.asdict(config),
             init=init)
    return run.finish(summary, curves=["loss"])


def cost_model_update(model, optimizer, tokenizer, rows, harmful, grad_clip):
    """One step of the cost model on comparison rows (chosen = safer); -> {loss}."""
    model.train()
    loss = cost_batch_loss(model, tokenizer, rows, harmful)
    optimizer.zero_grad()
    loss.backward()
    check_finite(loss, model)
    clip_grad_norm(optimizer.params, grad_clip)
    optimizer.step()
    return {"loss": float(loss.data)}


# ----------------------------------------------------------------------------- the update

def safe_rlhf_update(exp, policy, critics, optimizers, mu, config, rng):
    """One PPO-Lagrangian update of the policy and both critics at the price μ of harm; -> stats.

    critics: (V_R, V_C); optimizers: (the policy's, V_R's, V_C's). GAE on per-token rewards and on
    per-token costs → A = (A^R − μ·A^C)/(1 + μ), whitened → ppo_epochs × minibatches of the clipped
    surrogate's step and each critic's clipped value step.
    """
    with no_grad():
        cost_values = token_values(critics[1], *exp.batch()).data                       # (B, T) V_C(x_<t)
    mask, beta = exp.response_mask, config.kl_coef
    # r_t = −β·KL_t + R at the last token;   c_t = +β·KL_t + C at the last token
    rewards = kl_penalized_rewards(exp.scores, exp.logprobs, exp.ref_logprobs, mask, beta)
    costs = -kl_penalized_rewards(-exp.costs, exp.logprobs, exp.ref_logprobs, mask, beta)
    reward_adv, reward_returns = compute_gae(rewards, exp.values, mask, config.gamma, config.lam)
    cost_adv, cost_returns = compute_gae(costs, cost_values, mask, config.gamma, config.lam)
    advantages = whiten(lagrangian_advantages(reward_adv, cost_adv, mu), mask)
    updates = []
    for index in minibatches(len(exp.prompts), config.minibatch_size, config.ppo_epochs, rng):
        mb = exp.select(index)
        # the clipped surrogate on A = (A^R − μ A^C)/(1 + μ)
        loss, stats = ppo_policy_loss(sequence_logprobs(policy, *mb.batch(), config.temperature)[0],
                                      mb.logprobs, advantages[index], mb.response_mask, config.clip_eps)
        optimizers[0].zero_grad()
        loss.backward()
        check_finite(loss, policy)
        clip_grad_norm(optimizers[0].params, config.grad_clip)
        optimizers[0].step()
        for name, critic, optimizer, old, returns in (
                ("reward", critics[0], optimizers[1], mb.values, reward_returns[index]),
                ("cost", critics[1], optimizers[2], cost_values[index], cost_returns[index])):
            vf_loss, _ = ppo_value_loss(token_values(critic, *mb.batch()), old, returns, mb.response_mask, config.vf_clip)
            optimizer.zero_grad()
            vf_loss.backward()
            check_finite(vf_loss, critic)
            clip_grad_norm(optimizer.params, config.grad_clip)
            optimizer.step()
            stats[f"{name}_value_loss"] = float(vf_loss.data)
        updates.append(stats)
    return {**{key: float(np.mean([u[key] for u in updates])) for key in updates[0]},
            "reward_explained_variance": explained_variance(exp.values, reward_returns, mask),
            "cost_explained_variance": explained_variance(cost_values, cost_returns, mask)}


# ----------------------------------------------------------------------------- the stage

def train_safe_rlhf(config, *, init, reward, cost, out=None, resume=False, quiet=False):
    """PPO-Lagrangian from an SFT run, a reward-model run and a cost-model run; returns the run directory.

    The loop: rollout (sample, reward, cost) → update the multiplier μ → `safe_rlhf_update` → log.
    """
    rng = np.random.default_rng(config.seed)
    # π_θ, a frozen π_ref = π_SFT, R and C, and the critics V_R and V_C starting as copies of R and C
    policy, ref_model, tokenizer, task, models = load_rl_runs(init, reward=reward, cost=cost, reward_critic=reward,
                                                               cost_critic=cost)
    reward_model, cost_model_, reward_critic, cost_critic = (models[k] for k in ("reward", "cost", "reward_critic",
                                                                                 "cost_critic"))
    if task.gold_cost is None:
        raise ValueError(f"--init {init}: Safe RLHF needs a task with a harm criterion (assistant), got {task.name}")
    max_new = config.max_new_tokens or task.max_response_tokens
    train_prompts = task.prompts("train")
    optimizers = (AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0),
                  AdamW(reward_critic.parameters(), lr=config.vf_lr, weight_decay=0.0),
                  AdamW(cost_critic.parameters(), lr=config.vf_lr, weight_decay=0.0))
    multiplier = Multiplier(math.log(config.lambda_init))
    run = Run("safe_rlhf", out, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=config.checkpoint_every, policy=policy, reward_critic=reward_critic,
              cost_critic=cost_critic, multiplier=multiplier, policy_optimizer=optimizers[0],
              reward_critic_optimizer=optimizers[1], cost_critic_optimizer=optimizers[2])
    with run:
        while run.step < config.steps:
            prompts = [train_prompts[i] for i in rng.choice(len(train_prompts), config.batch_size, replace=False)]
            exp = collect_rollouts(policy, prompts, tokenizer, rng=rng, max_new_tokens=max_new,
                                   temperature=config.temperature, ref_model=ref_model, value_model=reward_critic,
                                   reward_model=reward_model, cost_model=cost_model_,
                                   missing_eos_penalty=config.missing_eos_penalty)
            # the multiplier first, from this batch's violation J_C − d
            mean_cost = float(exp.costs.mean())
            multiplier.log_lambda = update_log_lambda(multiplier.log_lambda, mean_cost, config.threshold,
                                                      config.lambda_lr, config.lambda_max)
            mu = math.exp(multiplier.log_lambda)
            stats = safe_rlhf_update(exp, policy, (reward_critic, cost_critic), optimizers, mu, config, rng)
            gold_costs = np.array([task.gold_cost(p, y) for p, y in zip(exp.prompts, exp.responses)])
            run.log(**rollout_stats(exp, task), cost_score=mean_cost, **{"lambda": mu},
                    gold_cost=float(gold_costs.mean()), harm_rate=float(np.mean(gold_costs > 0)),
                    kl_k1=kl_estimates(exp.logprobs, exp.ref_logprobs, exp.response_mask)["k1"], **stats,
                    show=["rm_score", "cost_score", "lambda"])

    run.save(stage="safe_rlhf", task=task.name, model=policy, tokenizer=tokenizer, init=init,
             stage_config={**dataclasses.asdict(config), "reward": str(reward), "cost": str(cost)})
    for name, critic in (("reward_critic", reward_critic), ("cost_critic", cost_critic)):
        save_model(run.dir, name, critic)
    summary = evaluate_against_sft(policy, ref_model, reward_model, task, tokenizer, config, max_new)
    prompts = task.prompts("eval")[:config.eval_prompts]
    summary.update(safety=evaluate_safety(ModelPolicy(policy, tokenizer, max_new, config.temperature), task, prompts,
                                          rng=np.random.default_rng([config.seed, 4])),
                   sft_safety=evaluate_safety(ModelPolicy(ref_model, tokenizer, max_new, config.temperature), task,
                                              prompts, rng=np.random.default_rng([config.seed, 4])),
                   threshold=config.threshold, **{"lambda": math.exp(multiplier.log_lambda)}, seconds=run.seconds)
    return run.finish(summary, curves=["rm_score", "cost_score", "lambda", "harm_rate", "kl_k1"], title="Safe RLHF")


class Multiplier:
    """ln μ, with the state_dict interface a checkpoint needs."""

    def __init__(self, log_lambda):
        self.log_lambda = float(log_lambda)

    def state_dict(self):
        return {"log_lambda": np.array(self.log_lambda)}

    def load_state_dict(self, state):
        self.log_lambda = float(state["log_lambda"])
