"""LLaMA 2's iterated rounds in miniature: fresh comparisons of the current policy, a retrained reward
model, and rejection sampling, PPO or both, three rounds each.

    minirlhf experiment rounds [--quick] [--methods rs ppo rs+ppo] [--out runs/rounds] [--docs docs/results]

From one pipeline run (pretrain → SFT → reward model, default settings) on `sentiment`, `minirlhf
rounds` (`RoundsConfig` defaults) once per method. Per round, on the same held-out prompts: gold
reward and win rate against SFT, KL to SFT; the previous reward model's accuracy on the new
round's comparisons before it is retrained (stale) against its accuracy on its own test pairs, and
the retrained model's accuracy on the round's held-out pairs.

Writes `rounds.json`, `rounds.md`, `rounds.png` (the default method, like LLaMA 2's per-version
figure) and `rounds_methods.png` (the methods side by side) into `--docs`.
"""
import dataclasses
from pathlib import Path

from . import experiment_parser, figure, save_figure, write_results
from ..pipeline import make_config, quick_extra, quick_run, run
from ..ppo import PPOConfig
from ..rejection_sampling import RejectionSamplingConfig
from ..reward import RewardConfig
from ..rounds import METHODS, RoundsConfig, plot_rounds, rounds
from ..runs import is_complete, read_summary

TASK = "sentiment"
QUICK_ROUNDS = {"comparisons": 150, "heldout_comparisons": 100, "eval_prompts": 200,
                "reward": {"steps": 40, "eval_every": 40, "normalize_samples": 100},
                "rs": {"n": 4, "prompts": 200, "steps": 40, "eval_prompts": 20},
                "ppo": {"steps": 15, "lr": 5e-4, "checkpoint_every": 15, "eval_prompts": 20}}


def main(argv=None):
    parser = experiment_parser("rounds", __doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="policy improvement per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per method")
    args = parser.parse_args(argv)
    out = Path(args.out)
    base = run(make_config(TASK, args.seed, quick=args.quick), out=out / "base", until="reward")
    results = {"task": TASK, "seed": args.seed, "quick": args.quick, "default_method": RoundsConfig.method,
               "config": None, "methods": {}}
    for method in args.methods:
        config = rounds_config(args.quick, method=method, rounds=args.rounds, seed=args.seed)
        run_dir = out / method
        if not is_complete(run_dir):
            print(f"== {method}", flush=True)
            rounds(config, init=base["sft"], reward=base["reward"], out=run_dir, resume=True, quiet=True)
        results["methods"][method] = read_summary(run_dir)
        results["config"] = {**dataclasses.asdict(config), "method": None}
    write_results(args.docs, "rounds", results, plot, table(results))
    plot_methods(results, Path(args.docs) / "rounds_methods.png")
    return results


def rounds_config(quick, **fields):
    """RoundsConfig at default or quick settings, with `fields` set."""
    if not quick:
        return RoundsConfig(**fields)
    q = QUICK_ROUNDS
    return RoundsConfig(**{k: v for k, v in q.items() if k not in ("reward", "rs", "ppo")}, reward=RewardConfig(**q["reward"]),
                        rs=RejectionSamplingConfig(**q["rs"]), ppo=PPOConfig(**q["ppo"]), **fields)


def quick_rounds(method=RoundsConfig.method, seed=0):
    """Three quick rounds from the cached quick SFT model and reward model of `seed`, trained once per cache of
    quick runs and shared by the tests and notebook 08; returns the rounds run directory."""
    def train(run_dir):
        rounds(rounds_config(True, method=method, seed=seed), init=quick_run(TASK, "sft", seed),
               reward=quick_run(TASK, "reward", seed), out=run_dir, resume=True, quiet=True)
    return quick_extra(TASK, f"rounds-{method}", train, seed)


def plot(results, path):
    """LLaMA 2's per-version figure for the default method (or the first one run)."""
    methods = results["methods"]
    plot_rounds(methods.get(results["default_method"]) or next(iter(methods.values())), path)


def plot_methods(results, path):
    fig, axes = figure(3)
    for method, summary in results["methods"].items():
        rows = summary["rounds"]
        ks = [0] + [row["round"] for row in rows]
        axes[0].errorbar(ks, [summary["sft"]["gold_reward"]] + [r["gold_reward"] for r in rows],
                         yerr=[summary["sft"]["gold_reward_ci95"]] + [r["gold_reward_ci95"] for r in rows],
                         fmt="o-", capsize=3, label=method)
        axes[1].plot(ks, [0.0] + [r["kl_k1"] for r in rows], "o-", label=method)
        axes[2].plot(ks[1:], [r["stale_accuracy_gold"] for r in rows], "v-", label=f"{method}: stale, new pairs")
        axes[2].plot(ks[1:], [r["rm_accuracy_gold"] for r in rows], "^--", label=f"{method}: retrained, held-out")
    for ax in axes:
        ax.set_xticks(range(len(ks)))
    save_figure(fig, path, "iterated RLHF: the three ways to improve the policy each round", axes, "round (0 = SFT)",
          ["gold reward (held-out prompts)", "KL(π_k ‖ π_SFT), nats (k1)", "RM accuracy vs gold"])


def table(results):
    c = results["config"]
    lines = ["# Iterated RLHF rounds (generated by `minirlhf experiment rounds`)", "",
             f"Task `{TASK}`, seed {results['seed']}" + (", quick settings" if results["quick"] else "") + ". Each "
             f"round: {c['comparisons']} new graded pairs of the current policy on training prompts (added to the "
             f"data) and {c['heldout_comparisons']} on held-out prompts (the round's RM test set); the reward model "
             f"retrained from SFT on all pairs ({c['reward']['steps']} steps); then rejection sampling (n = {c['rs']['n']}, "
             f"{c['rs']['prompts']} prompts, {c['rs']['steps']} SFT steps) and/or PPO ({c['ppo']['steps']} steps, "
             f"β {c['ppo']['kl_coef']:g}, anchored to the previous round's policy). Policies are scored on "
             f"{c['eval_prompts']} held-out prompts against the SFT model (gold judge, ties ½; ± 95% CI). RM "
             "accuracy is against the gold judge: *own test* = the previous RM on the held-out pairs it was tested "
             "on, *stale* = the previous RM on this round's new pairs before retraining, *retrained* = the new RM "
             "on this round's held-out pairs.", ""]
    for method, summary in results["methods"].items():
        sft = summary["sft"]
        lines += [f"## {method}" + (" (the default)" if method == results["default_method"] else ""), "",
                  "| round | comparisons | gold reward | win rate vs SFT | KL to SFT | RM score | RM acc.: own test → "
                  "stale (new pairs) | retrained | annotators vs gold, new pairs |", "|---|---|---|---|---|---|---|---|---|",
                  f"| 0 (SFT) | {summary['rounds'][0]['comparisons'] - summary['rounds'][0]['new_comparisons']} | "
                  f"{sft['gold_reward']:.3f} ± {sft['gold_reward_ci95']:.3f} | — | 0 | 0 | — | "
                  f"{summary['initial_rm']['accuracy_gold']:.1%} | — |"]
        for r in summary["rounds"]:
            lines.append(f"| {r['round']} | {r['comparisons']} | {r['gold_reward']:.3f} ± {r['gold_reward_ci95']:.3f} | "
                         f"{r['win_rate']:.1%} ± {r['win_rate_ci95']:.1%} | {r['kl_k1']:.2f} | {r['rm_score']:.2f} | "
                         f"{r['previous_rm_accuracy_gold']:.1%} → {r['stale_accuracy_gold']:.1%} ± "
                         f"{r['stale_accuracy_gold_ci95']:.1%} | {r['rm_accuracy_gold']:.1%} | "
                         f"{r['stale_annotator_accuracy_gold']:.1%} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
