"""Rejection-sampling fine-tuning: fine-tune the policy on its own best-of-n responses (LLaMA 2, Sec. 3.2.3).

Best-of-n (`best_of_n.py`) improves a policy at inference, at n times the cost of every answer.
Rejection sampling pays that cost once, on training prompts, and distils the result into the
weights (Touvron et al. 2023, "Llama 2", Sec. 3.2.3; Dong et al. 2023, "RAFT"):

    for each training prompt x:   y_1, ..., y_n ~ π(· | x),   y* = argmax_i r_φ(x, y_i)       (`BestOfN`)
    π' = argmin_θ  − Σ_x log π_θ(y* | x)                                  (the SFT loss, `sft.train_sft`)

The fine-tuning target is π_bon, the best-of-n policy, so the step moves the policy at most
KL(π_bon ‖ π) ≤ log n − (n − 1)/n nats (`best_of_n.kl_bound`) — a trust region set by n rather
than by a KL coefficient. How close to the bound best-of-n of a language model really is can be
estimated from samples: `estimated_kl` uses each sample's exact probability π(y | x) and the
fraction of samples the reward model scores below it.

`rejection_sampling(config, init=, reward=)` writes a run directory: `candidates.jsonl` (the n
responses of each prompt and their reward-model scores), `demonstrations.jsonl` (the best of
each, in the SFT data format), `finetune/` (the SFT stage's own run on them: curves,
checkpoint), and the fine-tuned model with config.json and summary.json at the top, so the
directory is a policy run like any other. The summary compares the policy with the one it started
from on held-out prompts (gold reward before/after, win rate, KL; `sft_*` keys are the init
policy's), and describes the fine-tuning set: mean RM score and gold reward of all candidates
and of the chosen ones.

Where we differ from LLaMA 2: one policy samples (LLaMA 2 sampled its latest model and kept the
best of all earlier ones too); candidates are sampled at one temperature; we fine-tune the policy
we sampled from, not a fresh copy of the pretrained model; n is small (8, not tens).
"""
import dataclasses
import functools
import json
import time

import numpy as np

from minirlhf.lm.data import write_jsonl, write_sft
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.best_of_n import BestOfN, kl_bound, pick_best
from minirlhf.stages.config import check_positive, check_range, option
from minirlhf.stages.experience import (collect_rollouts, evaluate_against_sft, load_rl_runs, score_texts,
                                        sequence_scores)
from minirlhf.stages.runs import is_complete, load_run, new_run_dir, read_summary, save_run, write_summary
from minirlhf.stages.sft import SFTConfig, train_sft
from minirlhf.world.tasks import get_task


@dataclasses.dataclass
class RejectionSamplingConfig:
    n: int = option(8, "samples per prompt; the best under the reward model is kept (≥ 1)")
    prompts: int = option(1000, "training prompts, one fine-tuning example each (≥ 2)")
    temperature: float = option(1.0, "sampling temperature of the candidates and of the evaluation (> 0)")
    steps: int = option(100, "SFT steps on the best responses (≥ 1)")
    batch_size: int = option(32, "best responses per SFT step (≥ 1)")
    lr: float = option(1e-3, "peak learning rate of the fine-tuning, as SFT's (> 0)")
    min_lr: float = option(1e-4, "final learning rate of its cosine decay (≥ 0, ≤ lr)")
    warmup_steps: int = option(10, "linear warmup steps (≥ 0)")
    eval_prompts: int = option(200, "held-out prompts for gold reward, win rate and KL against the init policy (≥ 1)")
    seed: int = option(0, "seeds the prompts, the candidates, the batches and the evaluation")

    def __post_init__(self):
        check_positive(self, "n", "steps", "batch_size", "eval_prompts", "temperature", "lr")
        check_range(self, "prompts", 2, None)
        check_range(self, "min_lr", 0.0, self.lr)
        check_range(self, "warmup_steps", 0, None)


def estimated_kl(logprobs, scores, n):
    """KL(π_bon ‖ π) of best-of-n, estimated from M samples of π for one prompt.

    logprobs (M,): the exact log π(y_i | x) of each sample; scores (M,): their rewards. For a
    response y with score s (as `best_of_n.exact_kl`, with F(s) = P_π(score ≤ s)):

        π_bon(y) / π(y) = ρ(y) = (F(s)^n − F(s⁻)^n) / π(y),      KL = E_{y∼π}[ρ log ρ]

    π(y) is exact; F(s⁻) is estimated by the fraction of the M samples that score below s, plus
    half a sample's width for responses rarer than one in M (the midpoint rule: when every
    response is rare, the estimate tends to the bound log n − (n − 1)/n). Biased for n near M.
    """
    p = np.exp(np.asarray(logprobs, np.float64))                           # (M,) π(y_i)
    scores = np.asarray(scores, np.float64)
    M = len(p)
    rank = (scores[None, :] < scores[:, None]).sum(axis=1)                 # (M,) samples scoring below y_i
    below = np.clip(rank / M + np.maximum(1.0 / M - p, 0.0) / 2, 0.0, 1.0)  # (M,) F(s⁻)
    # F(s)^n − F(s⁻)^n = F(s⁻)^n · ((1 + π/F(s⁻))^n − 1), without cancellation when π ≪ F(s⁻)
    safe = np.where(below > 0, below, 1.0)                                   # (the other branch is used at 0)
    grow = np.expm1(n * np.log1p(np.minimum(p, 1.0 - below) / safe))
    rho = np.where(below > 0, below ** n * grow, np.minimum(p, 1.0) ** n) / p   # (M,)
    # KL = E_π[ρ log ρ]   (ρ log ρ → 0 as ρ → 0)
    return float(np.mean(rho * np.log(np.maximum(rho, 1e-300))))


def train_rejection_sampling(config, *, init, reward, out=None, resume=False, quiet=False):
    """Fine-tune the policy run `init` on its best-of-n responses under the reward model `reward`; -> run directory."""
    policy, ref_model, tokenizer, task, models = load_rl_runs(init, reward=reward)
    reward_model = models["reward"]
    run_dir = new_run_dir("rejection_sampling", out)
    started = time.time()
    prompts, candidates, scores = best_of_n_set(policy, reward_model, tokenizer, task, config, run_dir, resume)
    best = pick_best(candidates, scores)                                   # y* of each prompt
    write_sft(run_dir / "demonstrations.jsonl", zip(prompts, best))

    # π' = argmin − Σ log π(y* | x): the SFT stage itself, on the best responses
    finetune_dir = run_dir / "finetune"
    if not is_complete(finetune_dir):
        train_sft(SFTConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, min_lr=config.min_lr,
                      warmup_steps=config.warmup_steps, eval_every=max(1, config.steps // 4),
                      eval_prompts=config.eval_prompts, seed=config.seed),
            init=init, demonstrations=list(zip(prompts, best)), out=finetune_dir,
            resume=(finetune_dir / "checkpoint" / "state.npz").is_file(), quiet=quiet)
    model = load_run(finetune_dir)[0]
    save_run(run_dir, stage="rejection_sampling", task=task.name, model=model, tokenizer=tokenizer,
             stage_config={**dataclasses.asdict(config), "reward": str(reward)}, init=init)

    summary = evaluate_against_sft(model, ref_model, reward_model, task, tokenizer, config, task.max_response_tokens)
    gold = np.array([[task.gold_reward(x, y) for y in row] for x, row in zip(prompts, candidates)])   # (B, n)
    chosen = scores.argmax(axis=1)                                         # (B,)
    summary.update({
        "n": config.n, "kl_bound": kl_bound(config.n),
        "candidates_rm_score": float(scores.mean()), "best_rm_score": float(scores.max(axis=1).mean()),
        "candidates_gold": float(gold.mean()), "best_gold": float(gold[np.arange(len(gold)), chosen].mean()),
        "heldout_loss": read_summary(finetune_dir)["heldout_loss"], "seconds": time.time() - started})
    write_summary(run_dir, summary)
    return run_dir


def best_of_n_set(policy, reward_model, tokenizer, task, config, run_dir, resume):
    """-> (prompts, candidates, scores (B, n)): n samples of each training prompt, scored; read back on resume."""
    path = run_dir / "candidates.jsonl"
    if resume and path.is_file():
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        return [r["prompt"] for r in rows], [r["responses"] for r in rows], np.array([r["scores"] for r in rows])
    rng = np.random.default_rng([config.seed, 1])
    train_prompts = task.prompts("train")
    prompts = [train_prompts[i] for i in rng.permutation(len(train_prompts))[:config.prompts]]
    sampler = ModelPolicy(policy, tokenizer, task.max_response_tokens, config.temperature)
    best_of_n = BestOfN(sampler, functools.partial(score_texts, reward_model, tokenizer), config.n)
    candidates, scores = best_of_n.candidates(prompts, rng)                # B lists of n, (B, n)
    write_jsonl(path, ({"prompt": x, "responses": ys, "scores": s.tolist()}
                       for x, ys, s in zip(prompts, candidates, scores)))
    return prompts, candidates, scores


def best_of_n_curves(sft_dir, rm_dirs, pool, n_prompts, seed):
    """Best-of-n for n = 1, 2, 4, … ≤ pool under each reward model, from one pool of SFT samples per prompt.

    -> {"distinct_fraction": share of distinct responses in a pool, "curves": {rm name: [{n, kl_bound,
    kl_estimate, rm_score, gold_reward, gold_reward_ci95}]}}.
    """
    sft, tokenizer, sft_config = load_run(sft_dir)
    task = get_task(sft_config["task"])
    rms = {name: load_run(d)[0] for name, d in rm_dirs.items()}
    rng = np.random.default_rng([seed, 4])
    logprobs, gold, distinct, scores = [], [], [], {name: [] for name in rms}
    for prompt in task.prompts("eval")[:n_prompts]:     # one prompt's pool at a time: (pool,) arrays
        exp = collect_rollouts(sft, [prompt] * pool, tokenizer, rng=rng, max_new_tokens=task.max_response_tokens)
        logprobs.append(exp.logprobs.sum(axis=1))       # exact log π_SFT(y | x) of each sampled response
        gold.append([task.gold_reward(prompt, y) for y in exp.responses])
        distinct.append(len(set(exp.responses)) / pool)
        for name, rm in rms.items():
            scores[name].append(sequence_scores(rm, *exp.batch()))
    logprobs, gold = np.array(logprobs), np.array(gold)                   # (B, pool)
    curves = {}
    for name, s in scores.items():
        s = np.array(s)                                                   # (B, pool)
        curves[name] = []
        for n in (2 ** i for i in range(int(np.log2(pool)) + 1)):
            chosen_gold = gold[np.arange(len(gold)), s[:, :n].argmax(axis=1)]   # best of the first n of each pool
            estimate = (float(np.mean([estimated_kl(lp, sc, n) for lp, sc in zip(logprobs, s)]))
                        if n <= pool // 4 else None)
            curves[name].append({"n": n, "kl_bound": kl_bound(n), "kl_estimate": estimate,
                                 "rm_score": float(s[:, :n].max(axis=1).mean()),
                                 "gold_reward": float(chosen_gold.mean()),
                                 "gold_reward_ci95": float(1.96 * chosen_gold.std(ddof=1) / np.sqrt(len(gold)))})
    return {"distinct_fraction": float(np.mean(distinct)), "curves": curves}
