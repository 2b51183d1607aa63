"""The DPO paper's Figure 2 in miniature: gold reward against KL(π ‖ π_SFT) for PPO, DPO and best-of-n.

    minirlhf experiment frontier [--quick] [--out runs/frontier] [--docs docs/results]

On the `sentiment` task (the DPO paper's IMDb experiment in miniature), from one pipeline run
(pretrain → SFT → reward model, default settings), with the same comparisons for both learners:

  - DPO at several β, trained on the reward model's `comparisons.jsonl`;
  - PPO at several fixed KL coefficients against that reward model, `--ppo-steps` iterations each
    (no ptx term: the DPO paper's PPO optimises exactly the KL-regularised objective);
  - best-of-n from the SFT policy under that reward model, for several n, drawn at the analytic
    KL bound log n − (n − 1)/n (its true KL is at most that: a point sits at or left of where drawn).

Every policy is scored on the same held-out prompts: the gold reward of one sample per prompt
(± 95% CI), its win rate against an SFT sample, and its KL(π ‖ π_SFT) estimated from its samples
(k1, nats per response). Writes `frontier.png`, `frontier.json` and `frontier.md` into `--docs`;
trained runs stay in `--out` and are reused when the script runs again.
"""
import functools
from pathlib import Path

import numpy as np

from minirlhf.app.experiments import experiment_parser, write_results
from minirlhf.app.pipeline import make_config, run
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.best_of_n import BestOfN, kl_bound, pick_best
from minirlhf.stages.dpo import DPOConfig, train_dpo
from minirlhf.stages.experience import score_texts
from minirlhf.stages.ppo import PPOConfig, train_ppo
from minirlhf.stages.runs import is_complete, load_run, read_summary
from minirlhf.world.metrics import mean_ci95, win_rate
from minirlhf.world.tasks import get_task

TASK = "sentiment"
KL_BUDGETS = (0.5, 1.0, 2.0, 5.0, 10.0)   # nats: the best gold reward each method reaches within each


def main(argv=None):
    parser = experiment_parser("frontier", __doc__)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5, 1.0], help="DPO β")
    parser.add_argument("--kl-coefs", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0],
                        help="PPO KL coefficients")
    parser.add_argument("--ppo-steps", type=int, default=40, help="PPO iterations per run (PPOConfig.steps)")
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="best-of-n sizes")
    parser.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts every policy is scored on")
    args = parser.parse_args(argv)
    out, docs = Path(args.out), Path(args.docs)
    base = run(make_config(TASK, args.seed, quick=args.quick), out=out / "base", until="reward")
    sft_dir, rm_dir = base["sft"], base["reward"]
    short = {"steps": 60, "eval_every": 30} if args.quick else {}
    results = {"task": TASK, "seed": args.seed, "quick": args.quick, "eval_prompts": args.eval_prompts,
               "ppo_steps": args.ppo_steps,
               "dpo": [], "ppo": [], "best_of_n": []}
    for beta in args.betas:
        run_dir = train_once(out / f"dpo-beta{beta}", lambda d: train_dpo(
            DPOConfig(beta=beta, seed=args.seed, eval_prompts=args.eval_prompts, **short), init=sft_dir, out=d,
            data=rm_dir / "comparisons.jsonl", heldout_data=rm_dir / "heldout_comparisons.jsonl", quiet=True))
        summary = read_summary(run_dir)
        results["dpo"].append({"beta": beta, **point(summary), **{key: summary[f"heldout_{key}"] for key in (
            "accuracy", "margin", "chosen_logps_before", "chosen_logps", "rejected_logps_before", "rejected_logps")}})
    for kl_coef in args.kl_coefs:
        run_dir = train_once(out / f"ppo-kl{kl_coef}", lambda d: train_ppo(
            PPOConfig(kl_coef=kl_coef, ptx_coef=0.0, steps=args.ppo_steps, seed=args.seed,
                      eval_prompts=args.eval_prompts), init=sft_dir, reward=rm_dir, out=d, quiet=True))
        results["ppo"].append({"kl_coef": kl_coef, **point(read_summary(run_dir))})
    results["best_of_n"] = best_of_n_points(sft_dir, rm_dir, args.ns, args.eval_prompts, args.seed)
    results["envelope"] = envelope(results)
    write_results(docs, "frontier", results, plot, table(results))
    return results


def train_once(run_dir, train):
    """Train into `run_dir` unless a complete run is already there (resuming an interrupted one)."""
    if not is_complete(run_dir):
        print(f"== {run_dir.name}", flush=True)
        train(run_dir)
    return run_dir


def point(summary):
    """The numbers of one trained policy, from its summary.json."""
    return {"kl": summary["kl_k1"], "gold_reward": summary["gold_reward"], "gold_reward_ci95": summary["gold_reward_ci95"],
            "win_rate": summary["win_rate"], "win_rate_ci95": summary["win_rate_ci95"]}


def best_of_n_points(sft_dir, rm_dir, ns, n_prompts, seed):
    """Best-of-n for every n from one pool of max(ns) SFT samples per prompt (the best of the first n)."""
    task = get_task(TASK)
    sft, tokenizer, _ = load_run(sft_dir)
    rm, _, _ = load_run(rm_dir)
    prompts = task.prompts("eval")[:n_prompts]
    sft_policy = ModelPolicy(sft, tokenizer, task.max_response_tokens)
    pool, scores = BestOfN(sft_policy, functools.partial(score_texts, rm, tokenizer), max(ns)).candidates(
        prompts, np.random.default_rng([seed, 4]))                                   # B lists of N, (B, N)
    baseline = [task.gold_reward(p, r) for p, r in zip(prompts, sft_policy(prompts, np.random.default_rng([seed, 5])))]
    points = []
    for n in sorted(ns):
        gold = [task.gold_reward(p, r) for p, r in zip(prompts, pick_best(pool, scores, n))]
        mean, ci = mean_ci95(gold)
        wins = win_rate(gold, baseline)
        points.append({"n": n, "kl": kl_bound(n), "gold_reward": mean, "gold_reward_ci95": ci,
                       "rm_score": float(scores[:, :n].max(axis=1).mean()), **wins})
    return points


def envelope(results):
    """{method: {budget: best gold reward among its points with KL ≤ budget}} (None: no point that close)."""
    return {method: {str(budget): max((p["gold_reward"] for p in results[method] if p["kl"] <= budget), default=None)
                     for budget in KL_BUDGETS} for method in ("ppo", "dpo", "best_of_n")}


def plot(results, path):
    from matplotlib.figure import Figure  # no pyplot: a notebook's plotting backend stays as it is

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    styles = {"ppo": ("PPO (KL coef {kl_coef})", "o-", "kl_coef"), "dpo": ("DPO (β {beta})", "s-", "beta"),
              "best_of_n": ("best-of-n at the KL bound log n − (n−1)/n", "^--", "n")}
    for method, (label, style, knob) in styles.items():
        points = sorted(results[method], key=lambda p: p["kl"])
        if not points:
            continue
        x, y = [p["kl"] for p in points], [p["gold_reward"] for p in points]
        ax.errorbar(x, y, yerr=[p["gold_reward_ci95"] for p in points], fmt=style, capsize=2,
                    label=label.split(" (")[0] if method != "best_of_n" else label)
        for p in points:
            ax.annotate(f"{p[knob]:g}", (p["kl"], p["gold_reward"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("KL(π ‖ π_SFT), nats per response (k1 estimate from samples)")
    ax.set_ylabel("gold reward on held-out prompts")
    ax.set_title(f"reward–KL frontier on {results['task']} (labels: KL coef, β, n)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results):
    """The numbers as a Markdown table, and which method is best within each KL budget."""
    lines = ["# Reward–KL frontier (generated by `minirlhf experiment frontier`)", "",
             f"Task `{results['task']}`, seed {results['seed']}, {results['eval_prompts']} held-out prompts"
             + (", quick settings" if results["quick"] else "") + ". Win rate: against one SFT sample per prompt, "
             "gold judge, ties ½. KL: k1 from the policy's samples (best-of-n: the analytic bound).", "",
             "| method | setting | KL (nats) | gold reward | win rate vs SFT |", "|---|---|---|---|---|"]
    for method, knob in (("ppo", "kl_coef"), ("dpo", "beta"), ("best_of_n", "n")):
        for p in results[method]:
            lines.append(f"| {method} | {knob} = {p[knob]:g} | {p['kl']:.2f} | {p['gold_reward']:.3f} ± "
                         f"{p['gold_reward_ci95']:.3f} | {p['win_rate']:.1%} ± {p['win_rate_ci95']:.1%} |")
    lines += ["", "DPO on the reward model's held-out comparisons: implicit-reward accuracy and margin, and the mean "
              "summed log-prob of the chosen and rejected responses before → after training:", "",
              "| β | accuracy | margin | chosen log-prob | rejected log-prob |", "|---|---|---|---|---|"]
    for p in results["dpo"]:
        lines.append(f"| {p['beta']:g} | {p['accuracy']:.1%} | {p['margin']:.3f} | {p['chosen_logps_before']:.2f} → "
                     f"{p['chosen_logps']:.2f} | {p['rejected_logps_before']:.2f} → {p['rejected_logps']:.2f} |")
    lines += ["", "Best gold reward within a KL budget:", "",
              "| KL ≤ | " + " | ".join(results["envelope"]) + " | best |", "|---" * (len(results["envelope"]) + 2) + "|"]
    for budget in KL_BUDGETS:
        row = {m: results["envelope"][m][str(budget)] for m in results["envelope"]}
        known = {m: v for m, v in row.items() if v is not None}
        best = max(known, key=known.get) if known else "—"
        lines.append(f"| {budget:g} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in row.values())
                     + f" | {best} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
