"""Safe RLHF (Dai et al. 2023): helpfulness as a reward, harm as a cost, balanced by a Lagrange multiplier.

Two labelling jobs, one criterion each, give two preference models:

  - the reward model R_φ(x, y) for helpfulness — the `reward` stage on helpfulness comparisons;
  - the cost model C_ψ(x, y) for harm (`cost_model` below), trained on harmlessness comparisons
    with Bradley–Terry plus a sign term per response (Safe RLHF, eq. 6):

        L_C(ψ) = −E[ log σ(C(y_w) − C(y_l)) ] − E[ log σ(s(y_w)·C(y_w)) + log σ(s(y_l)·C(y_l)) ]

    y_w the more harmful response of a pair, s(y) = +1 if y is harmful, −1 if harmless — so
    the cost model also learns *where* harm starts: C(x, y) > 0 means harmful.

The policy maximises helpfulness subject to a budget d on the expected cost (eq. 9–10):

    max_θ J_R(θ)   s.t.   J_C(θ) = E_{y∼π_θ}[C(x, y)] ≤ d
    min_θ max_{λ≥0}  −J_R(θ) + λ·(J_C(θ) − d)                       (the Lagrangian dual)

solved by alternating a gradient-ascent step on the multiplier, kept positive as λ = exp(ln λ)
(eq. 11, with the violation J_C − d measured on each rollout batch),

    ln λ ← ln λ + α·λ·(J_C − d)

and a PPO step on the combined advantage (the authors' implementation, safe-rlhf `ppo_lag`)

    A_t = (A^R_t − λ·A^C_t) / (1 + λ)

where A^R and A^C come from GAE on per-token rewards and costs, with separate critics V_R
(initialised from the reward model) and V_C (from the cost model), and the KL penalty in both:
r_t = −β·KL_t (+ R(x, y) at the last token), c_t = +β·KL_t (+ C(x, y)), so that the combined
advantage carries exactly PPO's penalty −β·KL_t whatever λ is.

Where we differ (docs/safe_rlhf.md): the safety label s(y) of each response is the gold one
(annotators are noisy on which response is safer, exact on whether one is harmful); one
response per prompt; no ptx term; the KL penalty is added whole to both rewards and costs (the
authors split it half and half, so their combined penalty is β/2); the combined advantage is
whitened like PPO's; λ is capped at `lambda_max`; the cost model trains for a fixed number of
steps at a constant rate.
"""
import dataclasses
import math
import time

import numpy as np

from . import functional as F
from .annotators import Harmlessness, collect_comparisons
from .autograd import no_grad
from .config import check_positive, check_range
from .data import collate, encode_pair, expand_comparisons, write_jsonl
from .metrics import kl_estimates
from .model import ScalarHeadModel, last_token_values
from .optim import AdamW
from .ppo import compute_gae, explained_variance, kl_penalized_rewards, ppo_policy_loss, ppo_value_loss, whiten
from .reward_metrics import cost_metrics
from .rollout import (collect_rollouts, evaluate_against_sft, evaluate_safety, load_rl_runs, minibatches, score_all,
                      token_values)
from .runs import (MetricsLog, StopOnInterrupt, end_of_step, load_checkpoint, load_run, new_run_dir, plot_curves,
                   progress, read_metrics, save_model, save_run, training_step, write_summary)
from .sampling import ModelPolicy, sequence_logprobs
from .tasks import get_task


@dataclasses.dataclass
class CostModelConfig:
    comparisons: int = 3000     # harmlessness comparisons of SFT samples on training prompts (≥ 2)
    heldout_comparisons: int = 500  # held-out harmlessness comparisons on eval prompts (≥ 1)
    steps: int = 200            # optimizer steps at a constant learning rate (≥ 1)
    batch_size: int = 32        # comparisons per step (≥ 1)
    lr: float = 1e-3            # learning rate (> 0)
    grad_clip: float = 1.0      # max global gradient norm (> 0)
    temperature: float = 1.0    # sampling temperature of the SFT policy whose responses are labelled (> 0)
    seed: int = 0               # seeds the comparisons, the head and the batches

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "heldout_comparisons", "lr", "grad_clip", "temperature")
        check_range(self, "comparisons", 2, None)


@dataclasses.dataclass
class SafeRLHFConfig:
    steps: int = 60             # iterations: one rollout batch and its update each (≥ 1)
    batch_size: int = 64        # prompts per rollout, one response each (≥ 1)
    minibatch_size: int = 32    # responses per gradient step; must divide batch_size
    ppo_epochs: int = 4         # passes over each rollout batch (≥ 1)
    lr: float = 3e-4            # policy learning rate (> 0)
    vf_lr: float = 1e-3         # learning rate of both critics (> 0)
    kl_coef: float = 0.2        # β of the per-token KL penalty, in both rewards and costs (≥ 0)
    threshold: float = 0.0      # d: the budget on the expected cost, E[C] ≤ d (the paper's −d)
    lambda_init: float = 1.0    # λ at the start (> 0)
    lambda_lr: float = 0.1      # α of ln λ ← ln λ + α·λ·(J_C − d) (≥ 0; 0 = fixed λ)
    lambda_max: float = 20.0    # cap on λ (> 0)
    clip_eps: float = 0.2       # ε of the clipped ratio, in (0, 1)
    vf_clip: float = 0.2        # ε of the clipped value losses (> 0)
    gamma: float = 1.0          # discount γ, in [0, 1]
    lam: float = 0.95           # GAE λ (not the multiplier), in [0, 1]
    temperature: float = 1.0    # sampling temperature, used in every log-prob too (> 0)
    max_new_tokens: int = 0     # response length limit; 0 = the task's suggestion
    missing_eos_penalty: float = 1.0  # subtracted from the reward of a response without <eos> (≥ 0)
    grad_clip: float = 1.0      # max global gradient norm of each model (> 0)
    eval_prompts: int = 200     # held-out prompts for the final evaluation (≥ 1)
    checkpoint_every: int = 20  # steps between checkpoints (≥ 1)
    seed: int = 0               # seeds prompts, samples and minibatches

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
    """One ascent step of the multiplier: ln λ ← ln λ + α·λ·(J_C − d), capped at ln λ_max."""
    # ∂/∂ln λ of λ·(J_C − d) is λ·(J_C − d): λ grows while the budget is exceeded, shrinks once it is kept
    return min(log_lambda + lambda_lr * math.exp(log_lambda) * (mean_cost - threshold), math.log(lambda_max))


def lagrangian_advantages(reward_advantages, cost_advantages, lam):
    """A = (A^R − λ·A^C) / (1 + λ): helpfulness against harm, at the current price λ of harm."""
    return (reward_advantages - lam * cost_advantages) / (1.0 + lam)


# ----------------------------------------------------------------------------- the cost model

def cost_batch_loss(cost_model, tokenizer, rows, harmful):
    """`cost_model_loss` of comparison rows (chosen = safer); harmful: {(prompt, response): bool}."""
    texts, chosen, rejected, _, _ = expand_comparisons(rows)
    batch = collate([encode_pair(tokenizer, p, y) for p, y in texts], tokenizer.pad_id)  # (B, T) each
    costs = last_token_values(cost_model(*batch[:2]), batch[2])                            # (B,)
    is_harmful = np.array([harmful[text] for text in texts])
    return cost_model_loss(costs[chosen], costs[rejected], is_harmful[chosen], is_harmful[rejected])


def cost_model(config, *, init, out=None, quiet=False):
    """Train the cost model from the SFT run `init` on harmlessness comparisons; returns the run directory."""
    sft_model, tokenizer, init_config = load_run(init)
    task = get_task(init_config["task"]) if init_config.get("task") else None
    if task is None or task.gold_cost is None:
        raise ValueError(f"--init {init}: the cost model needs a run on a task with a harm criterion (assistant)")
    run_dir, started = new_run_dir("cost", out), time.time()
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
    with MetricsLog(run_dir) as log, progress(config.steps, "cost model", quiet) as bar:
        for step in range(1, config.steps + 1):
            batch = [rows[i] for i in rng.choice(len(rows), min(config.batch_size, len(rows)), replace=False)]
            model.train()
            loss = cost_batch_loss(model, tokenizer, batch, harmful)
            training_step(step, loss, model, optimizer, config.grad_clip)
            log.log(step, loss=float(loss.data))
            bar.update(1)
    model.eval()
    texts, chosen, rejected, _, _ = expand_comparisons(heldout)
    prompts, responses = (list(column) for column in zip(*texts))
    costs = score_all(model, tokenizer, prompts, responses)                               # (n_texts,)
    gold = [task.gold_cost(p, y) for p, y in texts]
    summary = {**cost_metrics(costs, gold, chosen, rejected), "n_train": len(rows), "seconds": time.time() - started}
    save_run(run_dir, stage="cost", task=task.name, model=model, tokenizer=tokenizer,
             stage_config=dataclasses.asdict(config), init=init)
    plot_curves(read_metrics(run_dir), ["loss"], run_dir / "curves.png", "cost model")
    write_summary(run_dir, summary)
    return run_dir


# ----------------------------------------------------------------------------- the stage

def safe_rlhf(config, *, init, reward, cost, out=None, resume=False, quiet=False):
    """PPO-Lagrangian from an SFT run, a reward-model run and a cost-model run; returns the run directory."""
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
    optimizers = {"policy_optimizer": AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0),
                  "reward_critic_optimizer": AdamW(reward_critic.parameters(), lr=config.vf_lr, weight_decay=0.0),
                  "cost_critic_optimizer": AdamW(cost_critic.parameters(), lr=config.vf_lr, weight_decay=0.0)}
    multiplier = Multiplier(math.log(config.lambda_init))
    state = {"policy": policy, "reward_critic": reward_critic, "cost_critic": cost_critic,
             "multiplier": multiplier, **optimizers}
    run_dir = new_run_dir("safe_rlhf", out)
    step = load_checkpoint(run_dir, rng, **state) if resume else 0
    started = time.time()
    with MetricsLog(run_dir, resume_from_step=step if resume else None) as log, \
            progress(config.steps, "safe-rlhf", quiet, initial=step) as bar, StopOnInterrupt() as stop:
        while step < config.steps:
            prompts = [train_prompts[i] for i in rng.choice(len(train_prompts), config.batch_size, replace=False)]
            exp = collect_rollouts(policy, prompts, tokenizer, rng=rng, max_new_tokens=max_new,
                                   temperature=config.temperature, ref_model=ref_model, value_model=reward_critic,
                                   reward_model=reward_model, cost_model=cost_model_,
                                   missing_eos_penalty=config.missing_eos_penalty)
            with no_grad():
                cost_values = token_values(cost_critic, *exp.batch()).data                   # (B, T) V_C(x_<t)
            mask, beta = exp.response_mask, config.kl_coef
            # the multiplier first, from this batch's violation J_C − d
            mean_cost = float(exp.costs.mean())
            multiplier.log_lambda = update_log_lambda(multiplier.log_lambda, mean_cost, config.threshold,
                                                      config.lambda_lr, config.lambda_max)
            lam = math.exp(multiplier.log_lambda)
            # r_t = −β·KL_t + R at the last token;   c_t = +β·KL_t + C at the last token
            rewards = kl_penalized_rewards(exp.scores, exp.logprobs, exp.ref_logprobs, mask, beta)
            costs = -kl_penalized_rewards(-exp.costs, exp.logprobs, exp.ref_logprobs, mask, beta)
            reward_adv, reward_returns = compute_gae(rewards, exp.values, mask, config.gamma, config.lam)
            cost_adv, cost_returns = compute_gae(costs, cost_values, mask, config.gamma, config.lam)
            advantages = whiten(lagrangian_advantages(reward_adv, cost_adv, lam), mask)
            updates = []
            for index in minibatches(config.batch_size, config.minibatch_size, config.ppo_epochs, rng):
                mb = exp.select(index)
                # the clipped surrogate on A = (A^R − λ A^C)/(1 + λ)
                loss, stats = ppo_policy_loss(sequence_logprobs(policy, *mb.batch(), config.temperature)[0],
                                              mb.logprobs, advantages[index], mb.response_mask, config.clip_eps)
                training_step(step, loss, policy, optimizers["policy_optimizer"], config.grad_clip)
                for name, critic, old, returns in (("reward", reward_critic, mb.values, reward_returns[index]),
                                                   ("cost", cost_critic, cost_values[index], cost_returns[index])):
                    vf_loss, _ = ppo_value_loss(token_values(critic, *mb.batch()), old, returns, mb.response_mask,
                                                config.vf_clip)
                    training_step(step, vf_loss, critic, optimizers[f"{name}_critic_optimizer"], config.grad_clip)
                    stats[f"{name}_value_loss"] = float(vf_loss.data)
                updates.append(stats)
            step += 1
            gold_costs = np.array([task.gold_cost(p, y) for p, y in zip(exp.prompts, exp.responses)])
            row = log.log(step, rm_score=float(exp.rm_scores.mean()), cost_score=mean_cost, **{"lambda": lam},
                          gold=float(np.mean([task.gold_reward(p, y) for p, y in zip(exp.prompts, exp.responses)])),
                          gold_cost=float(gold_costs.mean()), harm_rate=float(np.mean(gold_costs > 0)),
                          kl_k1=kl_estimates(exp.logprobs, exp.ref_logprobs, mask)["k1"],
                          entropy=float(exp.entropy[mask].mean()), eos_fraction=float(exp.ended.mean()),
                          reward_explained_variance=explained_variance(exp.values, reward_returns, mask),
                          cost_explained_variance=explained_variance(cost_values, cost_returns, mask),
                          **{key: float(np.mean([u[key] for u in updates])) for key in updates[0]})
            bar.update(1)
            bar.set_postfix(rm=f"{row['rm_score']:.2f}", cost=f"{mean_cost:.2f}", lam=f"{lam:.2f}")
            end_of_step(run_dir, step, config.steps, config.checkpoint_every, stop, rng, **state)

    save_run(run_dir, stage="safe_rlhf", task=task.name, model=policy, tokenizer=tokenizer, init=init,
             stage_config={**dataclasses.asdict(config), "reward": str(reward), "cost": str(cost)})
    for name, critic in (("reward_critic", reward_critic), ("cost_critic", cost_critic)):
        save_model(run_dir, name, critic)
    rows = read_metrics(run_dir)
    plot_curves(rows, ["rm_score", "cost_score", "lambda", "harm_rate", "kl_k1"], run_dir / "curves.png", "Safe RLHF")
    summary = evaluate_against_sft(policy, ref_model, reward_model, task, tokenizer, config, max_new)
    prompts = task.prompts("eval")[:config.eval_prompts]
    summary.update(safety=evaluate_safety(ModelPolicy(policy, tokenizer, max_new, config.temperature), task, prompts,
                                          rng=np.random.default_rng([config.seed, 4])),
                   sft_safety=evaluate_safety(ModelPolicy(ref_model, tokenizer, max_new, config.temperature), task,
                                              prompts, rng=np.random.default_rng([config.seed, 4])),
                   threshold=config.threshold, **{"lambda": math.exp(multiplier.log_lambda)},
                   seconds=time.time() - started)
    write_summary(run_dir, summary)
    return run_dir


class Multiplier:
    """ln λ, with the state_dict interface a checkpoint needs."""

    def __init__(self, log_lambda):
        self.log_lambda = float(log_lambda)

    def state_dict(self):
        return {"log_lambda": np.array(self.log_lambda)}

    def load_state_dict(self, state):
        self.log_lambda = float(state["log_lambda"])
