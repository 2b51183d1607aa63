"""Pairwise PPO (P3O) against standard PPO at equal samples: gold reward and KL on `sentiment`.

    minirlhf experiment pairwise-ppo [--quick] [--out runs/pairwise-ppo] [--docs docs/results]

From one pipeline run (pretrain → SFT → reward model, default settings), for each KL coefficient β
in `--kl-coefs`, three policies trained from the SFT model against the same reward model with the
same steps, learning rate, epochs and β, each drawing the same number of responses per step:

  - `ppo`: the PPO stage (64 prompts × 1 response; value model, GAE; no ptx, as P3O has none);
  - `p3o-joint`, `p3o-separate`: pairwise PPO (32 prompts × 2 responses), both clipping variants.

Every policy is scored on the same held-out prompts: gold reward (± CI), win rate against the
SFT model, KL to it, RM score. Writes `pairwise_ppo.json`, `.md`, `.png` (final gold reward against
KL) and `pairwise_ppo_curves.png` (gold reward and KL along training) into --docs.
"""
from pathlib import Path

from minirlhf.app.experiments import experiment_parser, figure, save_figure, smooth, write_results
from minirlhf.app.pipeline import QUICK, make_config, run
from minirlhf.stages.ppo import PPOConfig, train_ppo
from minirlhf.stages.runs import is_complete, read_metrics, read_summary
from minirlhf.variants.pairwise_ppo import PairwisePPOConfig, train_pairwise_ppo

TASK = "sentiment"
METHODS = {"ppo": "PPO", "p3o-joint": "P3O, joint clip", "p3o-separate": "P3O, separate clip"}
KEYS = ("gold_reward", "gold_reward_ci95", "win_rate", "win_rate_ci95", "kl_k1", "rm_score", "distinct_2", "seconds")


def main(argv=None):
    parser = experiment_parser("pairwise-ppo", __doc__)
    parser.add_argument("--kl-coefs", type=float, nargs="+", default=[0.05, 0.2], help="β of every method")
    parser.add_argument("--eval-prompts", type=int, default=500, help="held-out prompts every policy is scored on")
    args = parser.parse_args(argv)
    out = Path(args.out)
    base = run(make_config(TASK, args.seed, quick=args.quick), out=out / "base", until="reward")
    settings = {**(QUICK["ppo"] if args.quick else {}), "seed": args.seed, "eval_prompts": args.eval_prompts}
    results = {"task": TASK, "seed": args.seed, "quick": args.quick, "eval_prompts": args.eval_prompts, "runs": []}
    curves = {}
    for beta in args.kl_coefs:
        for method in METHODS:
            run_dir = out / f"{method}-kl{beta}"
            if not is_complete(run_dir):
                print(f"== {run_dir.name}", flush=True)
                train_method(method, {**settings, "kl_coef": beta}, base["sft"], base["reward"], run_dir)
            summary = read_summary(run_dir)
            results["runs"].append({"method": method, "kl_coef": beta, **{k: summary[k] for k in KEYS}})
            curves[(method, beta)] = read_metrics(run_dir)
    results["sft_gold_reward"] = summary["sft_gold_reward"]    # every run scores the SFT model on the same samples
    results["samples_per_step"] = settings.get("batch_size", PPOConfig.batch_size)
    write_results(args.docs, "pairwise_ppo", results, plot_frontier, table(results))
    plot_curves(curves, Path(args.docs) / "pairwise_ppo_curves.png")
    return results


def train_method(method, settings, sft_dir, rm_dir, run_dir):
    """PPO (without ptx) or P3O with one variant of the pairwise clip, from the same settings."""
    if method == "ppo":
        return train_ppo(PPOConfig(**settings, ptx_coef=0.0), init=sft_dir, reward=rm_dir, out=run_dir, quiet=True)
    return train_pairwise_ppo(PairwisePPOConfig(**settings, variant=method.split("-")[1]), init=sft_dir, reward=rm_dir,
                        out=run_dir, quiet=True)


def plot_frontier(results, path):
    """Final gold reward (± CI) against KL to the SFT model, one line per method through its β."""
    fig, (ax,) = figure(1, 6.5)
    for k, (method, label) in enumerate(METHODS.items()):
        points = sorted((r["kl_k1"], r["gold_reward"], r["gold_reward_ci95"], r["kl_coef"])
                        for r in results["runs"] if r["method"] == method)
        kl, gold, ci, betas = zip(*points)
        ax.errorbar(kl, gold, yerr=ci, marker="o", capsize=3, label=label)
        for x, y, b in zip(kl, gold, betas):
            ax.annotate(f"β={b:g}", (x, y), fontsize=7, xytext=(4, 4 - 10 * k), textcoords="offset points")
    ax.axhline(results["sft_gold_reward"], color="gray", ls="--", lw=1, label="SFT")
    save_figure(fig, path, f"{results['task']}: equal samples per step ({results['samples_per_step']} responses)", [ax],
          "KL(π ‖ π_SFT), nats per response", ["gold reward on held-out prompts"])


def plot_curves(curves, path):
    """Gold reward and KL of the rollout batches along training, per method and β (5-step means)."""
    fig, axes = figure(2, 5.5)
    for (method, beta), rows in curves.items():
        for ax, key in zip(axes, ("gold", "kl_k1")):
            ax.plot([r["step"] for r in rows], smooth([r[key] for r in rows]), label=f"{METHODS[method]}, β={beta:g}")
    save_figure(fig, path, "along training", axes, "step (the same number of responses per step)",
          ["gold reward of the rollouts", "KL(π ‖ π_SFT) of the rollouts"])


def table(results):
    """The numbers as Markdown (generated; docs/pairwise_ppo.md links here)."""
    lines = ["# Pairwise PPO against PPO (generated by `minirlhf experiment pairwise-ppo`)", "",
             f"Task `{results['task']}`, seed {results['seed']}" + (", quick settings" if results["quick"] else "")
             + f"; {results['eval_prompts']} held-out prompts, one sample each; SFT gold reward "
             f"{results['sft_gold_reward']:.3f}. Every method draws {results['samples_per_step']} responses per step.",
             "", "![frontier](pairwise_ppo.png)", "", "![curves](pairwise_ppo_curves.png)", "",
             "| method | β | gold reward | win rate vs SFT | KL to SFT | RM score | distinct-2 | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        lines.append(f"| {METHODS[r['method']]} | {r['kl_coef']:g} | {r['gold_reward']:.3f} ± {r['gold_reward_ci95']:.3f} | "
                     f"{r['win_rate']:.1%} ± {r['win_rate_ci95']:.1%} | {r['kl_k1']:.2f} | {r['rm_score']:.2f} | "
                     f"{r['distinct_2']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines + [""])


if __name__ == "__main__":
    main()
