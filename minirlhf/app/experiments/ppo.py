"""PPO's claims, measured: RLHF beats SFT, the KL term matters, PPO-ptx lowers the alignment tax,
a small PPO model beats a 4× larger SFT model, and the adaptive controller holds its KL target.

    minirlhf experiment ppo [--quick] [--out runs/ppo] [--docs docs/results]

From one pipeline run (pretrain → SFT → reward model, default settings) on `sentiment`:

  1. `ppo`: the default `PPOConfig` (fixed KL coefficient, ptx) — win rate against the SFT model
     under the gold judge (± 95% CI), gold reward, RM score, KL to SFT, distinct-n;
  2. `no-kl`: the same with kl_coef = 0 — RM score, gold, distinct-n; proxy and gold against KL
     along both runs (Gao et al. 2023's overoptimisation, Stiennon et al. Fig. 5 in miniature);
  3. `no-ptx`: the same with ptx_coef = 0 — the rise of the held-out pretraining loss with and
     without ptx, and the gold reward of both (InstructGPT's alignment tax);
  4. a 4× SFT model (n_embd 128: about 3.7× the parameters, pretrained and fine-tuned with the
     same recipe) — the PPO policy's gold win rate against it (InstructGPT's headline);
  5. `adaptive`: target_kl set — the measured KL over the second half against the ±50% band.

Every policy is scored on the same held-out prompts. Writes `ppo.json`, `ppo.md` (the tables),
`ppo.png` and `ppo_*.png` into `--docs`; trained runs stay in `--out` and are reused when complete.
"""
import dataclasses
from pathlib import Path

import numpy as np

from minirlhf.app.experiments import experiment_parser, figure, save_figure, smooth, write_results
from minirlhf.app.pipeline import QUICK, make_config, run
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.experience import score_texts
from minirlhf.stages.ppo import PPOConfig, train_ppo
from minirlhf.stages.runs import is_complete, load_run, read_metrics, read_summary
from minirlhf.world.metrics import evaluate
from minirlhf.world.tasks import get_task

TASK = "sentiment"
SUMMARY_KEYS = ("gold_reward", "gold_reward_ci95", "win_rate", "win_rate_ci95", "rm_score", "kl_k1", "kl_k3",
                "distinct_1", "distinct_2", "length", "heldout_ptx_loss_before", "heldout_ptx_loss", "seconds",
                "seconds_per_step")


def main(argv=None):
    parser = experiment_parser("ppo", __doc__)
    parser.add_argument("--target-kl", type=float, default=3.0, help="target of the adaptive-KL run (nats)")
    parser.add_argument("--eval-prompts", type=int, default=500, help="held-out prompts every policy is scored on")
    args = parser.parse_args(argv)
    out, docs = Path(args.out), Path(args.docs)
    base = run(make_config(TASK, args.seed, quick=args.quick), out=out / "base", until="reward")
    big = run(make_config(TASK, args.seed, quick=args.quick, overrides={"pretrain": {"n_embd": 128}}),
              out=out / "base-4x", until="sft")
    settings = {**(QUICK.get("ppo", {}) if args.quick else {}), "seed": args.seed, "eval_prompts": args.eval_prompts}
    variants = {"ppo": {}, "no-kl": {"kl_coef": 0.0}, "no-ptx": {"ptx_coef": 0.0},
                "adaptive": {"target_kl": args.target_kl}}
    runs = {name: out / name for name in variants}
    for name, overrides in variants.items():
        if not is_complete(runs[name]):        # reuse a complete run; resume an interrupted one
            print(f"== {name}", flush=True)
            train_ppo(PPOConfig(**{**settings, **overrides}), init=base["sft"], reward=base["reward"], out=runs[name],
                resume=(runs[name] / "checkpoint" / "state.npz").is_file(), quiet=True)
    results = {"task": TASK, "seed": args.seed, "quick": args.quick, "eval_prompts": args.eval_prompts,
               "config": dataclasses.asdict(PPOConfig(**settings)), "target_kl": args.target_kl,
               "sft": sft_numbers(read_summary(runs["ppo"])),
               "runs": {name: {k: read_summary(d)[k] for k in SUMMARY_KEYS} for name, d in runs.items()},
               "vs_4x_sft": versus_bigger_sft(runs["ppo"], base["sft"], big["sft"], args.eval_prompts, args.seed),
               "adaptive_band": kl_band(read_metrics(runs["adaptive"]), args.target_kl),
               "samples": samples({"SFT": base["sft"], "PPO": runs["ppo"], "PPO no-kl": runs["no-kl"]},
                                  base["reward"], args.seed)}
    write_results(docs, "ppo", results, plot_policies, tables(results))
    curves = {name: read_metrics(d) for name, d in runs.items()}
    plot_kl(curves, docs / "ppo_kl.png")
    plot_ptx(curves, results, docs / "ppo_ptx.png")
    plot_adaptive(curves["adaptive"], args.target_kl, docs / "ppo_adaptive_kl.png")
    return results


def sft_numbers(summary):
    """The SFT model's numbers, which every PPO summary carries with an `sft_` prefix."""
    return {key: summary[f"sft_{key}"] for key in ("gold_reward", "gold_reward_ci95", "rm_score", "distinct_1",
                                                   "distinct_2", "length")}


def versus_bigger_sft(ppo_dir, sft_dir, big_dir, n_prompts, seed):
    """Gold win rate of the PPO policy against the 4× SFT model, and the 4× model's own numbers."""
    task = get_task(TASK)
    prompts = task.prompts("eval")[:n_prompts]
    policy, tokenizer, _ = load_run(ppo_dir)
    big, _, _ = load_run(big_dir)
    small, _, _ = load_run(sft_dir)
    big_policy = ModelPolicy(big, tokenizer, task.max_response_tokens)
    duel = evaluate(ModelPolicy(policy, tokenizer, task.max_response_tokens), task, prompts,
                    rng=np.random.default_rng([seed, 6]), baseline=big_policy)
    alone = evaluate(big_policy, task, prompts, rng=np.random.default_rng([seed, 3]))
    return {"win_rate": duel["win_rate"], "win_rate_ci95": duel["win_rate_ci95"],
            "big_gold_reward": alone["gold_reward"], "big_gold_reward_ci95": alone["gold_reward_ci95"],
            "big_params": big.num_params(), "small_params": small.num_params()}


def samples(run_dirs, rm_dir, seed, n=4):
    """One response per policy to each of the first n held-out prompts, with its gold reward and RM score."""
    task = get_task(TASK)
    rm, tokenizer, _ = load_run(rm_dir)
    prompts = task.prompts("eval")[:n]
    shown = []
    for name, run_dir in run_dirs.items():
        responses = ModelPolicy(load_run(run_dir)[0], tokenizer, task.max_response_tokens)(
            prompts, np.random.default_rng([seed, 7]))
        scores = score_texts(rm, tokenizer, prompts, responses)
        shown += [{"policy": name, "prompt": p, "response": y, "gold": task.gold_reward(p, y), "rm_score": float(r)}
                  for p, y, r in zip(prompts, responses, scores)]
    return shown


def kl_band(rows, target):
    """KL (k1) over the second half of training against target ± 50%."""
    kl = np.array([row["kl_k1"] for row in rows[len(rows) // 2:]])
    inside = (kl >= 0.5 * target) & (kl <= 1.5 * target)
    return {"target": target, "mean": float(kl.mean()), "min": float(kl.min()), "max": float(kl.max()),
            "fraction_inside": float(inside.mean()), "mean_inside": bool(0.5 * target <= kl.mean() <= 1.5 * target)}


def plot_kl(curves, path):
    """RM score and gold reward against KL to the SFT model, along training, with and without the KL term."""
    fig, axes = figure(2)
    for name, label in (("ppo", "KL penalty (default β)"), ("no-kl", "no KL penalty (β = 0)")):
        kl = smooth([r["kl_k1"] for r in curves[name]])
        axes[0].plot(kl, smooth([r["rm_score"] for r in curves[name]]), label=label)
        axes[1].plot(kl, smooth([r["gold"] for r in curves[name]]), label=label)
    save_figure(fig, path, "the KL term: proxy and gold along training (5-step moving averages of rollout batches)",
          axes, "KL(π ‖ π_SFT), nats per response", ["reward-model score (proxy)", "gold reward (the hidden human)"])


def plot_ptx(curves, results, path):
    """Held-out pretraining loss and gold reward along training, with and without PPO-ptx."""
    fig, axes = figure(2)
    for name, label in (("ppo", f"ptx_coef = {results['config']['ptx_coef']:g}"), ("no-ptx", "ptx_coef = 0")):
        steps = [r["step"] for r in curves[name]]
        axes[0].plot(steps, [r["heldout_ptx_loss"] for r in curves[name]], label=label)
        axes[1].plot(steps, smooth([r["gold"] for r in curves[name]]), label=label)
    axes[0].axhline(results["runs"]["ppo"]["heldout_ptx_loss_before"], color="gray", ls="--", label="SFT model")
    save_figure(fig, path, "PPO-ptx: the alignment tax on held-out web text", axes, "PPO step",
          ["held-out pretraining loss (nats/token)", "gold reward of rollouts (5-step mean)"])


def plot_adaptive(rows, target, path):
    """Measured KL against the target band, and β, along the adaptive run."""
    fig, axes = figure(2)
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["kl_k1"] for r in rows], label="KL (k1) of each rollout batch")
    axes[0].axhline(target, color="k", lw=1, label="target")
    axes[0].axhspan(0.5 * target, 1.5 * target, color="green", alpha=0.12, label="target ± 50%")
    axes[0].axvline(steps[len(steps) // 2], color="gray", ls=":", label="second half starts")
    axes[1].plot(steps, [r["kl_coef"] for r in rows])
    save_figure(fig, path, "adaptive KL controller (Ziegler et al. 2019)", axes, "PPO step",
          ["KL(π ‖ π_SFT), nats per response", "β (kl_coef)"])


def plot_policies(results, path):
    """Gold reward (± CI) of SFT, the 4× SFT model and the PPO variants on the same held-out prompts."""
    fig, (ax,) = figure(1, width=7.0)
    four = results["vs_4x_sft"]
    bars = [("SFT", results["sft"]["gold_reward"], results["sft"]["gold_reward_ci95"]),
            ("SFT 4×", four["big_gold_reward"], four["big_gold_reward_ci95"])]
    bars += [(f"PPO {name}" if name != "ppo" else "PPO", r["gold_reward"], r["gold_reward_ci95"])
             for name, r in results["runs"].items()]
    ax.bar([b[0] for b in bars], [b[1] for b in bars], yerr=[b[2] for b in bars], capsize=3,
           color=["gray", "silver"] + ["tab:blue"] * (len(bars) - 2))
    save_figure(fig, path, f"{results['task']}: {results['eval_prompts']} held-out prompts, one sample each", [ax], "",
          ["gold reward on held-out prompts (± 95% CI)"])


def tables(results):
    """Every number of the experiment as Markdown (generated; docs/ppo.md links here)."""
    runs, sft, four, band = results["runs"], results["sft"], results["vs_4x_sft"], results["adaptive_band"]
    c = results["config"]
    lines = ["# PPO's claims, measured (generated by `minirlhf experiment ppo`)", "",
             f"Task `{results['task']}`, seed {results['seed']}" + (", quick settings" if results["quick"] else "")
             + f"; {results['eval_prompts']} held-out prompts, one sample each at temperature {c['temperature']:g}. "
             f"PPO: {c['steps']} steps × {c['batch_size']} responses, β = {c['kl_coef']:g}, ptx_coef = "
             f"{c['ptx_coef']:g}. Win rates: gold judge, ties ½, ± 95% CI. KL: k1 nats per response.", "",
             "![policies](ppo.png)", "",
             "| policy | gold reward | win rate vs SFT | RM score | KL to SFT | distinct-1 | distinct-2 | length |",
             "|---|---|---|---|---|---|---|---|",
             f"| SFT | {sft['gold_reward']:.3f} ± {sft['gold_reward_ci95']:.3f} | — | {sft['rm_score']:.2f} | 0 | "
             f"{sft['distinct_1']:.3f} | {sft['distinct_2']:.3f} | {sft['length']:.1f} |"]
    for name, r in runs.items():
        lines.append(f"| {'PPO' if name == 'ppo' else 'PPO ' + name} | {r['gold_reward']:.3f} ± {r['gold_reward_ci95']:.3f} | {r['win_rate']:.1%} ± "
                     f"{r['win_rate_ci95']:.1%} | {r['rm_score']:.2f} | {r['kl_k1']:.2f} | {r['distinct_1']:.3f} | "
                     f"{r['distinct_2']:.3f} | {r['length']:.1f} |")
    lines += ["", "Wall time of each PPO run (training and the final evaluation), and per step:", "",
              "| run | seconds | seconds per step |", "|---|---|---|"]
    lines += [f"| {name} | {r['seconds']:.0f} | {r['seconds_per_step']:.2f} |" for name, r in runs.items()]
    lines += ["", "Samples (one per policy and prompt; gold reward, RM score):", "",
              "| policy | prompt | response | gold | RM |", "|---|---|---|---|---|"]
    lines += [f"| {x['policy']} | {x['prompt']} | {x['response']} | {x['gold']:+.2f} | {x['rm_score']:+.2f} |"
              for x in sorted(results["samples"], key=lambda x: x["prompt"])]
    p, k, x = runs["ppo"], runs["no-kl"], runs["no-ptx"]
    lines += ["", "## 1. RLHF beats SFT under the gold judge", "",
              f"PPO wins {p['win_rate']:.1%} ± {p['win_rate_ci95']:.1%} of held-out prompts against the SFT model; "
              f"gold {p['gold_reward']:.3f} vs {sft['gold_reward']:.3f}, at KL {p['kl_k1']:.2f} nats.", "",
              "## 2. The KL term matters", "", "![kl](ppo_kl.png)", "",
              f"Without the KL penalty the RM score ends at {k['rm_score']:.2f} (with: {p['rm_score']:.2f}) at KL "
              f"{k['kl_k1']:.2f} (with: {p['kl_k1']:.2f}); gold {k['gold_reward']:.3f} ± {k['gold_reward_ci95']:.3f} "
              f"(with: {p['gold_reward']:.3f} ± {p['gold_reward_ci95']:.3f}); distinct-2 {k['distinct_2']:.3f} "
              f"(with: {p['distinct_2']:.3f}).", "",
              "## 3. PPO-ptx and the alignment tax", "", "![ptx](ppo_ptx.png)", "",
              f"Held-out pretraining loss of the SFT model: {p['heldout_ptx_loss_before']:.3f}. After PPO with ptx: "
              f"{p['heldout_ptx_loss']:.3f} (change {p['heldout_ptx_loss'] - p['heldout_ptx_loss_before']:+.3f}); "
              f"without: {x['heldout_ptx_loss']:.3f} (change {x['heldout_ptx_loss'] - x['heldout_ptx_loss_before']:+.3f}). "
              f"Gold with ptx {p['gold_reward']:.3f} ± {p['gold_reward_ci95']:.3f}, without "
              f"{x['gold_reward']:.3f} ± {x['gold_reward_ci95']:.3f}.", "",
              "## 4. PPO against an SFT model with 4× the parameters", "",
              f"PPO ({four['small_params']:,} parameters) wins {four['win_rate']:.1%} ± {four['win_rate_ci95']:.1%} "
              f"against SFT with {four['big_params']:,} parameters ({four['big_params'] / four['small_params']:.1f}×), "
              f"whose gold reward is {four['big_gold_reward']:.3f} ± {four['big_gold_reward_ci95']:.3f}.", "",
              "## 5. The adaptive KL controller", "", "![adaptive](ppo_adaptive_kl.png)", "",
              f"Target {band['target']:g} nats; over the second half the measured KL averages {band['mean']:.2f} "
              f"(min {band['min']:.2f}, max {band['max']:.2f}); {band['fraction_inside']:.0%} of the steps lie within "
              f"± 50% of the target.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
