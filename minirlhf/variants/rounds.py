"""Iterated RLHF: rounds of fresh comparisons of the *current* policy, a retrained reward model, a better policy.

A reward model learns from comparisons of the responses it was shown. Once RL moves the policy,
it writes responses the reward model has never seen, and the reward model goes stale. LLaMA 2
(Touvron et al. 2023, Sec. 3.2.2–3.2.3) therefore collected human comparisons in weekly batches
of the latest model's samples over five rounds (RLHF-V1 … V5), retrained the reward model on all
of them each time, and improved the policy with rejection sampling and, from V4, PPO on top of
it; Anthropic retrained its preference models and policies weekly on fresh data ("iterated
online RLHF", Bai et al. 2022, Sec. 4.5). Round k here, from π_0 = the SFT policy `init` and
r_0 = the reward model `reward` with its comparisons D_0:

    1. sample pairs from π_{k−1} (through `rollout.collect_rollouts`) on fresh training prompts
       and on held-out prompts; the simulated annotators grade them       `annotators.collect_comparisons`
    2. score the new pairs with r_{k−1} before it learns from them: how stale it has become
    3. D_k = D_{k−1} ∪ the new training pairs;  r_k = a reward model retrained from the SFT
       model on D_k, tested on the round's held-out pairs                               `reward.train_reward_model`
    4. π_k = rejection sampling and/or PPO of π_{k−1} against r_k       `rejection_sampling`, `ppo.train_ppo`
    5. π_k against π_SFT on held-out prompts: gold reward, win rate, KL `rollout.evaluate_against_sft`

`run_rounds(config, init=, reward=)` keeps each round in `round-<k>/` of its run directory
(`new_comparisons.jsonl`, `heldout_comparisons.jsonl`, `comparisons.jsonl` = D_k, and the runs
`reward/`, `rs/`, `ppo/`); a round with a summary.json is complete and skipped on `resume`, an
interrupted stage resumes from its checkpoint. The top level holds the last policy (a policy run
like any other), `rounds.png` and summary.json with one row per round.

Where we differ from LLaMA 2: one criterion (no separate safety reward model); the reward model is
retrained from the SFT model each round rather than from the latest chat model; rounds are
seeded `seed + k`; PPO's KL penalty anchors each round to the previous round's policy (the round's
`init`), so the policy can keep moving from SFT over the rounds.
"""
import dataclasses
from pathlib import Path

import numpy as np

from minirlhf.lm.data import load_preferences, write_jsonl
from minirlhf.stages.config import check_choice, check_positive, check_range, option
from minirlhf.stages.experience import collect_rollouts, evaluate_against_sft, load_rl_runs
from minirlhf.stages.ppo import PPOConfig, train_ppo
from minirlhf.stages.reward import RewardConfig, evaluate_reward_model, train_reward_model
from minirlhf.stages.runs import is_complete, load_run, new_run_dir, read_summary, save_run, write_json, write_summary
from minirlhf.variants.rejection_sampling import RejectionSamplingConfig, train_rejection_sampling
from minirlhf.world.annotators import collect_comparisons

METHODS = ("rs", "ppo", "rs+ppo")


@dataclasses.dataclass
class RoundsConfig:
    rounds: int = option(3, "rounds of sample → label → retrain the RM → improve the policy (≥ 1)")
    method: str = option("rs+ppo", "how each round improves the policy: rs, ppo, or rs+ppo (RS, then PPO from it)")
    comparisons: int = option(1000, "new graded pairs of the current policy's responses per round, training prompts (≥ 1)")
    heldout_comparisons: int = option(200, "new graded pairs per round on held-out prompts, to test the RMs (1..500)")
    temperature: float = option(1.0, "sampling temperature of the responses shown to annotators and evaluated (> 0)")
    clear_gap: float = option(0.27, "\"clear\" pairs have a gold gap above this (the annotator noise) (≥ 0)")
    eval_prompts: int = option(200, "held-out prompts for each round's gold reward, win rate and KL to SFT (≥ 1)")
    seed: int = option(0, "round k and its stages are seeded seed + k")
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)   # the RM retrained each round
    rs: RejectionSamplingConfig = dataclasses.field(default_factory=RejectionSamplingConfig)   # method rs
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)   # method ppo

    def __post_init__(self):
        check_positive(self, "rounds", "comparisons", "eval_prompts", "temperature")
        check_choice(self, "method", METHODS)
        check_range(self, "heldout_comparisons", 1, 500)
        check_range(self, "clear_gap", 0.0, None)


def rollout_sampler(model, tokenizer, max_new_tokens, temperature):
    """The model as a policy `policy(prompts, rng) -> responses`, sampled through `collect_rollouts`."""
    def sample(prompts, rng):
        return collect_rollouts(model, prompts, tokenizer, rng=rng, max_new_tokens=max_new_tokens,
                                temperature=temperature).responses
    return sample


def run_rounds(config, *, init, reward, out=None, resume=False, quiet=False):
    """Run `config.rounds` rounds from the SFT run `init` and the reward-model run `reward`; -> run directory."""
    sft_model, _, tokenizer, task, _ = load_rl_runs(init, reward=reward)
    run_dir = new_run_dir("rounds", out)
    if not resume and any(run_dir.glob("round-*")):
        raise ValueError(f"{run_dir} already holds rounds: continue them with --resume, or give a new --out")
    write_json(run_dir / "rounds_config.json", dataclasses.asdict(config))
    policy_dir, rm_dir, rows = Path(init), Path(reward), []
    for k in range(1, config.rounds + 1):
        round_dir = run_dir / f"round-{k}"
        if not is_complete(round_dir):
            if not quiet:
                print(f"== round {k}/{config.rounds}", flush=True)
            one_round(k, config, task, init, policy_dir, rm_dir, round_dir, quiet)
        rows.append(read_summary(round_dir))
        policy_dir, rm_dir = round_dir / rows[-1]["policy"], round_dir / "reward"

    policy = load_run(policy_dir)[0]
    save_run(run_dir, stage="rounds", task=task.name, model=policy, tokenizer=tokenizer,
             stage_config={**dataclasses.asdict(config), "reward": str(reward)}, init=init)
    summary = {"sft": {key: rows[0][f"sft_{key}"] for key in ("gold_reward", "gold_reward_ci95")},
               "initial_rm": {key: read_summary(reward).get(key) for key in ("accuracy", "accuracy_gold")},
               "rounds": rows}
    plot_rounds(summary, run_dir / "rounds.png")
    write_summary(run_dir, summary)
    return run_dir


def one_round(k, config, task, sft_dir, policy_dir, rm_dir, round_dir, quiet):
    """Round k from the policy run `policy_dir` and the reward-model run `rm_dir`; writes round_dir/summary.json."""
    round_dir.mkdir(parents=True, exist_ok=True)
    seed = config.seed + k
    policy, tokenizer, _ = load_run(policy_dir)
    old_rm = load_run(rm_dir)[0]
    # 1. the current policy's responses, compared by the annotators
    new_rows, heldout_rows = new_comparisons(config, task, policy, tokenizer, round_dir, seed)
    # 2. the stale RM r_{k−1} on them, before it learns from them
    stale = evaluate_reward_model(old_rm, tokenizer, task, new_rows, config.clear_gap)
    stale_heldout = evaluate_reward_model(old_rm, tokenizer, task, heldout_rows, config.clear_gap)
    # 3. D_k = D_{k−1} ∪ new pairs; r_k retrained from the SFT model on D_k
    write_jsonl(round_dir / "comparisons.jsonl", load_preferences(rm_dir / "comparisons.jsonl") + new_rows)
    new_rm_dir = run_stage(round_dir / "reward", lambda d, r: train_reward_model(
        dataclasses.replace(config.reward, seed=seed), init=sft_dir, data=round_dir / "comparisons.jsonl",
        heldout_data=round_dir / "heldout_comparisons.jsonl", out=d, resume=r, quiet=quiet))
    # 4. π_k from π_{k−1} against r_k
    if "rs" in config.method:
        policy_dir = run_stage(round_dir / "rs", lambda d, r: train_rejection_sampling(
            dataclasses.replace(config.rs, seed=seed), init=policy_dir, reward=new_rm_dir, out=d, resume=r,
            quiet=quiet))
    if "ppo" in config.method:
        policy_dir = run_stage(round_dir / "ppo", lambda d, r: train_ppo(
            dataclasses.replace(config.ppo, seed=seed), init=policy_dir, reward=new_rm_dir, out=d, resume=r,
            quiet=quiet))
    # 5. π_k against π_SFT on held-out prompts (the same prompts and SFT samples every round)
    new_policy, sft_model, new_rm = load_run(policy_dir)[0], load_run(sft_dir)[0], load_run(new_rm_dir)[0]
    evaluation = evaluate_against_sft(new_policy, sft_model, new_rm, task, tokenizer, config, task.max_response_tokens)
    previous, retrained = read_summary(rm_dir), read_summary(new_rm_dir)
    write_summary(round_dir, {
        "round": k, "method": config.method, "policy": policy_dir.name,
        "new_comparisons": len(new_rows), "comparisons": retrained["n_train"],
        # the stale RM on the new pairs, on the round's held-out pairs, and on its own test set
        **{f"stale_{key}": stale.get(key) for key in ("accuracy", "accuracy_gold", "accuracy_gold_ci95",
                                                      "accuracy_gold_clear", "annotator_accuracy_gold")},
        "stale_heldout_accuracy_gold": stale_heldout.get("accuracy_gold"),
        "previous_rm_accuracy_gold": previous.get("accuracy_gold"),
        # the retrained RM on the round's held-out pairs
        "rm_accuracy": retrained["accuracy"], "rm_accuracy_gold": retrained.get("accuracy_gold"),
        **{key: evaluation[key] for key in ("gold_reward", "gold_reward_ci95", "win_rate", "win_rate_ci95", "kl_k1",
                                            "rm_score", "distinct_2", "length", "sft_gold_reward",
                                            "sft_gold_reward_ci95", "sft_rm_score")}})


def new_comparisons(config, task, policy, tokenizer, round_dir, seed):
    """Graded pairs of the policy's responses on fresh training prompts and on held-out prompts (read back if written)."""
    train_path, heldout_path = round_dir / "new_comparisons.jsonl", round_dir / "heldout_comparisons.jsonl"
    if train_path.is_file() and heldout_path.is_file():
        return load_preferences(train_path), load_preferences(heldout_path)
    rng = np.random.default_rng([seed, 1])
    sampler = rollout_sampler(policy, tokenizer, task.max_response_tokens, config.temperature)
    train_prompts, eval_prompts = task.prompts("train"), task.prompts("eval")
    prompts = [train_prompts[i] for i in rng.permutation(len(train_prompts))[:config.comparisons]]
    heldout = [eval_prompts[i] for i in rng.permutation(len(eval_prompts))[:config.heldout_comparisons]]
    new_rows = collect_comparisons(task, sampler, prompts, rng=rng, kind="graded")
    heldout_rows = collect_comparisons(task, sampler, heldout, rng=rng, kind="graded")
    write_jsonl(heldout_path, heldout_rows)
    write_jsonl(train_path, new_rows)
    return new_rows, heldout_rows


def run_stage(run_dir, train):
    """`train(run_dir, resume)` unless run_dir is complete, resuming from its checkpoint if it has one."""
    if not is_complete(run_dir):
        train(run_dir, (run_dir / "checkpoint" / "state.npz").is_file())
    return run_dir


def plot_rounds(summary, path):
    """Per round: win rate against SFT and gold reward, the reward model's accuracy stale and retrained, KL to SFT."""
    from matplotlib.figure import Figure  # no pyplot: a notebook's plotting backend stays as it is

    rows = summary["rounds"]
    ks = [row["round"] for row in rows]
    fig = Figure(figsize=(16, 3.8))
    ax_win, ax_gold, ax_rm, ax_kl = fig.subplots(1, 4)
    ax_win.errorbar([0] + ks, [0.5] + [r["win_rate"] for r in rows], yerr=[0] + [r["win_rate_ci95"] for r in rows],
                    fmt="o-", capsize=3)
    ax_win.axhline(0.5, color="k", lw=0.8, ls=":")
    ax_win.set_ylabel("win rate vs SFT (gold judge)")
    ax_gold.errorbar([0] + ks, [summary["sft"]["gold_reward"]] + [r["gold_reward"] for r in rows],
                     yerr=[summary["sft"]["gold_reward_ci95"]] + [r["gold_reward_ci95"] for r in rows],
                     fmt="o-", capsize=3, label="gold reward")
    ax_gold.plot(ks, [r["rm_score"] for r in rows], "s--", label="RM score (round's RM, SFT = 0)")
    ax_gold.set_ylabel("held-out prompts")
    ax_rm.plot(ks, [r["previous_rm_accuracy_gold"] for r in rows], "o:", label="previous RM, its own test pairs")
    ax_rm.plot(ks, [r["stale_accuracy_gold"] for r in rows], "v-", label="previous RM, new pairs (stale)")
    ax_rm.plot(ks, [r["rm_accuracy_gold"] for r in rows], "^-", label="retrained RM, new held-out pairs")
    ax_rm.set_ylabel("RM accuracy vs gold")
    ax_kl.plot([0] + ks, [0.0] + [r["kl_k1"] for r in rows], "o-")
    ax_kl.set_ylabel("KL(π_k ‖ π_SFT), nats (k1)")
    for ax in (ax_win, ax_gold, ax_rm, ax_kl):
        ax.set_xlabel("round (0 = SFT)")
        ax.set_xticks([0] + ks)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"iterated RLHF, method {rows[0]['method']}: each round's policy against SFT on held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
