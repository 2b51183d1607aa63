"""RLAIF: a reward model and PPO trained on AI labels, against human labels, on `sentiment`.

    minirlhf experiment rlaif [--quick] [--out runs/rlaif] [--docs docs/results]

From one pipeline run (pretrain → SFT → reward model on N human comparisons, default settings):

  1. `human-small`: a reward model on a small human budget (`--seed-comparisons`, the first of the
     same kind of comparisons) — which is also the AI labeler;
  2. the labeler labels the N pairs the human reward model was trained on (`minirlhf rlaif`): its
     agreement with the gold judge and with the human labels, on those pairs and on held-out pairs;
  3. `ai`: a reward model on the N AI labels; `human`: the pipeline's reward model on N human labels;
  4. PPO (default settings) against each of the three reward models.

Every reward model is evaluated on the same held-out human-labelled pairs and every policy on the
same held-out prompts: gold reward, win rate against the SFT model, KL. Writes `rlaif.json`,
`rlaif.md` and `rlaif.png` into --docs.
"""
from pathlib import Path

from minirlhf.app.experiments import experiment_parser, figure, save_figure, write_results
from minirlhf.app.experiments.frontier import train_once
from minirlhf.app.pipeline import QUICK, make_config, run
from minirlhf.stages.ppo import PPOConfig, train_ppo
from minirlhf.stages.reward import RewardConfig, train_reward_model
from minirlhf.stages.runs import read_json, read_summary
from minirlhf.variants.rlaif import RLAIFConfig, collect_ai_labels

TASK = "sentiment"
SOURCES = {"human": "N human labels", "ai": "N AI labels", "human-small": "small human budget"}
QUICK_SEED_COMPARISONS = 200


def main(argv=None):
    parser = experiment_parser("rlaif", __doc__)
    parser.add_argument("--seed-comparisons", type=int, default=200, help="human labels the AI labeler learns from")
    parser.add_argument("--eval-prompts", type=int, default=500, help="held-out prompts every policy is scored on")
    args = parser.parse_args(argv)
    out = Path(args.out)
    base = run(make_config(TASK, args.seed, quick=args.quick), out=out / "base", until="reward")
    rms = train_reward_models(base, args.seed_comparisons, args.seed, lambda name, train: train_once(out / name, train))
    settings = {**(QUICK["ppo"] if args.quick else {}), "seed": args.seed, "eval_prompts": args.eval_prompts}
    results = {"task": TASK, "seed": args.seed, "quick": args.quick, "eval_prompts": args.eval_prompts,
               "n": read_summary(base["reward"])["n_train"], "seed_comparisons": args.seed_comparisons,
               "labeler": read_summary(rms["labels"]), "reward_models": {}, "policies": {}}
    for source, rm_dir in ((s, rms[s]) for s in SOURCES):
        summary = read_summary(rm_dir)
        results["reward_models"][source] = {k: summary[k] for k in ("accuracy", "accuracy_gold", "accuracy_gold_clear")}
        run_dir = train_once(out / f"ppo-{source}", lambda d: train_ppo(PPOConfig(**settings), init=base["sft"], reward=rm_dir,
                                                                out=d, quiet=True))
        summary = read_summary(run_dir)
        results["policies"][source] = {k: summary[k] for k in ("gold_reward", "gold_reward_ci95", "win_rate",
                                                               "win_rate_ci95", "kl_k1", "rm_score")}
    results["sft_gold_reward"] = summary["sft_gold_reward"]
    write_results(args.docs, "rlaif", results, plot, table(results))
    return results


def train_reward_models(base, seed_comparisons, seed, make):
    """The labeler (a reward model on a small human budget), its AI labels, and the reward model on them.

    base: {sft, reward} of the pipeline; make(name, train) -> the run directory `train(run_dir)` filled once.
    """
    config = {k: v for k, v in read_json(base["reward"] / "config.json")["stage_config"].items() if k != "data"}
    small = make("human-small", lambda d: train_reward_model(RewardConfig(**{**config, "comparisons": seed_comparisons}),
                                                 init=base["sft"], out=d, quiet=True))
    # the AI labels the very pairs the human reward model was trained on (same seed, same generators)
    labels = make("ai-labels", lambda d: collect_ai_labels(RLAIFConfig(comparisons=config["comparisons"], seed=seed,
                                                           heldout_comparisons=config["heldout_comparisons"]),
                                               init=base["sft"], labeler=small, out=d))
    ai = make("ai", lambda d: train_reward_model(RewardConfig(**config), init=base["sft"], out=d, quiet=True,
                                     data=labels / "ai_comparisons.jsonl",
                                     heldout_data=labels / "heldout_comparisons.jsonl"))
    return {"human": base["reward"], "human-small": small, "labels": labels, "ai": ai}


def plot(results, path):
    """Reward-model accuracy against gold and the policy's win rate against SFT, per label source."""
    fig, axes = figure(2)
    labels = [f"{SOURCES[s]}\n({results['n'] if s != 'human-small' else results['seed_comparisons']} pairs)"
              for s in SOURCES]
    axes[0].bar(labels, [results["reward_models"][s]["accuracy_gold"] for s in SOURCES], color="tab:gray")
    axes[0].axhline(results["labeler"]["heldout"]["annotator_accuracy_gold"], color="k", ls="--", lw=1,
                    label="the human annotators")
    axes[0].set_ylim(0.5, 1.0)
    axes[1].bar(labels, [results["policies"][s]["win_rate"] for s in SOURCES],
                yerr=[results["policies"][s]["win_rate_ci95"] for s in SOURCES], capsize=3)
    axes[1].axhline(0.5, color="k", ls="--", lw=1, label="SFT")
    save_figure(fig, path, f"{results['task']}: reward models and PPO from human and AI labels", axes, "",
          ["RM agreement with gold, held-out pairs", "PPO win rate vs SFT (gold judge)"])


def table(results):
    """The numbers as Markdown (generated; docs/rlaif.md links here)."""
    lab = results["labeler"]
    lines = ["# RLAIF (generated by `minirlhf experiment rlaif`)", "",
             f"Task `{results['task']}`, seed {results['seed']}" + (", quick settings" if results["quick"] else "")
             + f". The AI labeler is a reward model trained on {results['seed_comparisons']} human comparisons; it "
             f"labelled the {results['n']} pairs the human reward model was trained on.", "",
             "| labels | agree with gold | agree with the human labels |", "|---|---|---|",
             f"| AI labeler, held-out pairs | {lab['heldout']['accuracy_gold']:.3f} | {lab['heldout']['accuracy']:.3f} |",
             f"| AI labels ({lab['config']['label']}), training pairs | {lab['labels_vs_gold']:.3f} | "
             f"{lab['labels_vs_human']:.3f} |",
             f"| human labels, training pairs | {lab['human_vs_gold']:.3f} | 1 |", "",
             "![rlaif](rlaif.png)", "",
             "| reward model trained on | RM agreement with gold (held-out) | PPO gold reward | win rate vs SFT | KL |",
             "|---|---|---|---|---|"]
    for s, label in SOURCES.items():
        rm, p = results["reward_models"][s], results["policies"][s]
        lines.append(f"| {label} | {rm['accuracy_gold']:.3f} | {p['gold_reward']:.3f} ± {p['gold_reward_ci95']:.3f} | "
                     f"{p['win_rate']:.1%} ± {p['win_rate_ci95']:.1%} | {p['kl_k1']:.2f} |")
    lines += ["", f"SFT gold reward {results['sft_gold_reward']:.3f}; {results['eval_prompts']} held-out prompts.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
