"""Rejection sampling, measured: best-of-n's KL against its bound, proxy against gold as n grows, and
rejection-sampling fine-tuning against SFT.

    minirlhf experiment rejection-sampling [--quick] [--out runs/rejection-sampling] [--docs docs/results]

From one pipeline run (pretrain → SFT → reward model, default settings) on `sentiment`:

  1. best-of-n from the SFT policy on held-out prompts, from one pool of `--pool` samples per prompt
     (best-of-n takes the best of the first n), each sample with its exact log π_SFT(y | x):
       - KL(π_bon ‖ π_SFT): the bound log n − (n − 1)/n and the estimate from the pool
         (`rejection_sampling.estimated_kl`; biased once n nears the pool size, so given for n ≤ pool/4);
       - the chosen response's reward-model score (the proxy) and gold reward, under the pipeline's
         reward model and under one trained on `--small-comparisons` comparisons (Gao et al. 2023:
         the proxy keeps rising with n, gold rises less, and the weaker the RM the sooner it stops);
  2. rejection-sampling fine-tuning (`RejectionSamplingConfig` defaults) of the SFT model: gold
     reward before/after, win rate against SFT and KL on held-out prompts, and the fine-tuning set.

Writes `rejection_sampling.json`, `.md` and `.png` into `--docs`; runs stay in `--out` and are reused.
"""
import dataclasses
from pathlib import Path

from minirlhf.app.experiments import experiment_parser, figure, save_figure, write_results
from minirlhf.app.experiments.frontier import train_once
from minirlhf.app.pipeline import make_config, run
from minirlhf.stages.reward import RewardConfig, train_reward_model
from minirlhf.stages.runs import read_summary
from minirlhf.variants.rejection_sampling import RejectionSamplingConfig, best_of_n_curves, train_rejection_sampling

TASK = "sentiment"
QUICK_RS = {"n": 8, "prompts": 1000, "steps": 60, "eval_prompts": 200}
RS_KEYS = ("gold_reward", "gold_reward_ci95", "win_rate", "win_rate_ci95", "kl_k1", "rm_score", "distinct_2",
           "sft_gold_reward", "sft_gold_reward_ci95", "sft_rm_score", "sft_distinct_2", "candidates_rm_score",
           "best_rm_score", "candidates_gold", "best_gold", "kl_bound", "heldout_loss", "seconds")


def main(argv=None):
    parser = experiment_parser("rejection-sampling", __doc__)
    parser.add_argument("--pool", type=int, default=256, help="SFT samples per prompt; best-of-n for n = 1, 2, 4, … up to it")
    parser.add_argument("--bon-prompts", type=int, default=100, help="held-out prompts of the best-of-n curves")
    parser.add_argument("--small-comparisons", type=int, default=200, help="comparisons of the weaker reward model")
    parser.add_argument("--eval-prompts", type=int, default=500, help="held-out prompts the fine-tuned policy is scored on")
    args = parser.parse_args(argv)
    out = Path(args.out)
    base = run(make_config(TASK, args.seed, quick=args.quick), out=out / "base", until="reward")
    small = train_once(out / "rm-small", lambda d: train_reward_model(
        RewardConfig(comparisons=args.small_comparisons, seed=args.seed), init=base["sft"], out=d, quiet=True))
    settings = {**(QUICK_RS if args.quick else {}), "seed": args.seed, "eval_prompts": args.eval_prompts}
    rs_dir = train_once(out / "rs", lambda d: train_rejection_sampling(
        RejectionSamplingConfig(**settings), init=base["sft"], reward=base["reward"], out=d, quiet=True))
    rms = {"rm": base["reward"], "rm-small": small}
    results = {"task": TASK, "seed": args.seed, "quick": args.quick, "pool": args.pool, "bon_prompts": args.bon_prompts,
               "reward_models": {name: {"comparisons": read_summary(d)["n_train"],
                                        "accuracy_gold": read_summary(d)["accuracy_gold"]} for name, d in rms.items()},
               "best_of_n": best_of_n_curves(base["sft"], rms, args.pool, args.bon_prompts, args.seed),
               "rs_config": dataclasses.asdict(RejectionSamplingConfig(**settings)),
               "rs": {key: read_summary(rs_dir)[key] for key in RS_KEYS}}
    write_results(args.docs, "rejection_sampling", results, plot, table(results))
    return results


def plot(results, path):
    fig, (ax_kl, ax_proxy, ax_gold) = figure(3)
    for name, rm in results["reward_models"].items():
        points = results["best_of_n"]["curves"][name]
        label = f"{name}: {rm['comparisons']} comparisons, {rm['accuracy_gold']:.0%} vs gold"
        bound = [p["kl_bound"] for p in points]
        known = [p for p in points if p["kl_estimate"] is not None]
        ax_kl.plot([p["kl_bound"] for p in known], [p["kl_estimate"] for p in known], "o", label=f"estimate, {name}")
        ax_proxy.plot(bound, [p["rm_score"] for p in points], "o-", label=label)
        ax_gold.errorbar(bound, [p["gold_reward"] for p in points], yerr=[p["gold_reward_ci95"] for p in points],
                         fmt="o-", capsize=2, label=f"best-of-n, {label}")
    ax_kl.plot(bound, bound, "k--", lw=0.8, label="the bound")
    rs = results["rs"]
    ax_gold.errorbar([0.0, rs["kl_k1"]], [rs["sft_gold_reward"], rs["gold_reward"]],
                     yerr=[rs["sft_gold_reward_ci95"], rs["gold_reward_ci95"]], fmt="*", ms=12, capsize=3,
                     label=f"SFT and RS fine-tuned (n = {results['rs_config']['n']}, KL k1 from samples)")
    save_figure(fig, path, "best-of-n from the SFT policy, and rejection-sampling fine-tuning (held-out prompts)",
          [ax_kl, ax_proxy, ax_gold], "KL(π ‖ π_SFT), nats (best-of-n: the bound log n − (n−1)/n)",
          ["KL(π_bon ‖ π_SFT) estimated from samples", "RM score of the chosen response (proxy)",
           "gold reward"])


def table(results):
    rs, cfg = results["rs"], results["rs_config"]
    lines = ["# Rejection sampling (generated by `minirlhf experiment rejection-sampling`)", "",
             f"Task `{results['task']}`, seed {results['seed']}" + (", quick settings" if results["quick"] else "") + ".",
             "", "## Best-of-n from the SFT policy", "",
             f"{results['bon_prompts']} held-out prompts, a pool of {results['pool']} SFT samples each (best-of-n = the best "
             f"of its first n); {results['best_of_n']['distinct_fraction']:.1%} of a pool's samples are distinct. KL "
             "estimate: `estimated_kl` (exact log π_SFT, pool CDF), for n ≤ pool/4. Proxy = the RM's own score "
             "(SFT samples: mean 0, std 1); gold = the hidden judge (± 95% CI over prompts).", "",
             "| n | KL bound | KL estimate, rm | proxy, rm | gold, rm | KL estimate, rm-small | proxy, rm-small | gold, rm-small |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    for p, q in zip(*(results["best_of_n"]["curves"][name] for name in ("rm", "rm-small"))):
        lines.append(f"| {p['n']} | {p['kl_bound']:.3f} | {fmt(p['kl_estimate'])} | {p['rm_score']:.3f} | "
                     f"{p['gold_reward']:.3f} ± {p['gold_reward_ci95']:.3f} | {fmt(q['kl_estimate'])} | "
                     f"{q['rm_score']:.3f} | {q['gold_reward']:.3f} ± {q['gold_reward_ci95']:.3f} |")
    lines += ["", "Reward models: " + "; ".join(f"`{name}` {rm['comparisons']} training comparisons, "
                                                f"{rm['accuracy_gold']:.1%} held-out accuracy vs gold"
                                                for name, rm in results["reward_models"].items()) + ".",
              "", "## Rejection-sampling fine-tuning against SFT", "",
              f"Best of n = {cfg['n']} SFT samples on each of {cfg['prompts']} training prompts under `rm`, then "
              f"{cfg['steps']} SFT steps (batch {cfg['batch_size']}, lr {cfg['lr']:g}) on them. Held-out prompts: "
              f"{cfg['eval_prompts']}; win rate under the gold judge, ties ½.", "",
              "| policy | gold reward | win rate vs SFT | KL to SFT (k1) | RM score | distinct-2 |", "|---|---|---|---|---|---|",
              f"| SFT | {rs['sft_gold_reward']:.3f} ± {rs['sft_gold_reward_ci95']:.3f} | — | 0 | {rs['sft_rm_score']:.3f} | "
              f"{rs['sft_distinct_2']:.3f} |",
              f"| RS fine-tuned | {rs['gold_reward']:.3f} ± {rs['gold_reward_ci95']:.3f} | {rs['win_rate']:.1%} ± "
              f"{rs['win_rate_ci95']:.1%} | {rs['kl_k1']:.3f} (bound of its target: {rs['kl_bound']:.3f}) | "
              f"{rs['rm_score']:.3f} | {rs['distinct_2']:.3f} |", "",
              f"The fine-tuning set: all candidates score {rs['candidates_rm_score']:.3f} under the RM and "
              f"{rs['candidates_gold']:.3f} under gold; the chosen ones {rs['best_rm_score']:.3f} and {rs['best_gold']:.3f}. "
              f"Held-out loss on chosen responses after fine-tuning: {rs['heldout_loss']:.3f}. "
              f"Time: {rs['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
