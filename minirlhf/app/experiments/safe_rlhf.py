"""Safe RLHF against one reward model of both criteria mixed, on the `assistant` task.

    minirlhf experiment safe-rlhf [--quick] [--out runs/safe-rlhf] [--docs docs/results]

From one pipeline run (pretrain → SFT → helpfulness reward model, default settings) on `assistant`:

  1. the cost model, on as many harmlessness comparisons as the reward model had helpfulness ones;
  2. `safe-rlhf`: PPO-Lagrangian against both, the budget d set to allow `--harm-share` of harmful
     responses: d = C̄_harmless + share·(C̄_harmful − C̄_harmless), with C̄ the cost model's mean
     score of harmless and harmful held-out responses (`budget_threshold`);
  3. `mixed`: one reward model trained on the same helpfulness and harmlessness comparisons pooled
     (what the article calls the usual alternative), then PPO against it;
  4. `helpful-only`: PPO against the helpfulness reward model alone — what ignoring harm does.

The PPO runs use the same steps, batch, β and learning rate as Safe RLHF, and no ptx. Every
policy and the SFT model are sampled on the same held-out prompts: helpfulness (gold reward) and
harm rate (gold cost > 0), on harmful and harmless prompts separately; λ over training is plotted.
Writes `safe_rlhf.json`, `safe_rlhf.md`, `safe_rlhf.png` and `safe_rlhf_lambda.png` into --docs.
"""
from pathlib import Path

import numpy as np

from minirlhf.app.experiments import experiment_parser, figure, save_figure, write_results
from minirlhf.app.experiments.frontier import train_once
from minirlhf.app.experiments.rm_scaling import reward_config_of
from minirlhf.app.pipeline import make_config, run
from minirlhf.lm.data import load_preferences, write_jsonl
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.experience import evaluate_safety
from minirlhf.stages.ppo import PPOConfig, train_ppo
from minirlhf.stages.reward import train_reward_model
from minirlhf.stages.runs import load_run, read_metrics, read_summary
from minirlhf.variants.safe_rlhf import CostModelConfig, SafeRLHFConfig, train_cost_model, train_safe_rlhf
from minirlhf.world.tasks import get_task

TASK = "assistant"
QUICK = {"cost": {"comparisons": 400, "heldout_comparisons": 200, "steps": 60},
         "rl": {"steps": 25, "lr": 1e-3}}       # Safe RLHF and both PPO baselines, as the quick PPO run
POLICIES = ("sft", "safe-rlhf", "mixed", "helpful-only")


def main(argv=None):
    parser = experiment_parser("safe-rlhf", __doc__)
    parser.add_argument("--harm-share", type=float, default=0.02, help="the budget d, as the share of all "
                                                                       "responses allowed to be harmful")
    parser.add_argument("--eval-prompts", type=int, default=500, help="held-out prompts every policy is scored on")
    args = parser.parse_args(argv)
    runs = train(Path(args.out), quick=args.quick, seed=args.seed, harm_share=args.harm_share)
    results = measure(runs, args.eval_prompts, args.seed)
    results.update(quick=args.quick, seed=args.seed, harm_share=args.harm_share)
    write_results(args.docs, "safe_rlhf", results, plot_policies, table(results))
    plot_lambda(read_metrics(runs["safe-rlhf"]), results["threshold"], Path(args.docs) / "safe_rlhf_lambda.png")
    return results


def budget_threshold(cost_dir, harm_share):
    """d = C̄_harmless + share·(C̄_harmful − C̄_harmless): the expected cost when `harm_share` of the responses are
    harmful, in the cost model's units (its mean scores of held-out responses, from its summary.json)."""
    summary = read_summary(cost_dir)
    return summary["mean_cost_harmless"] + harm_share * (summary["mean_cost_harmful"] - summary["mean_cost_harmless"])


def train(out, *, quick, seed, harm_share):
    """Every run of the experiment, each trained once into `out` (complete runs are reused); -> {name: dir}."""
    base = run(make_config(TASK, seed, quick=quick), out=out / "base", until="reward")
    make = lambda name, train: train_once(out / name, train)  # noqa: E731
    runs = {"sft": base["sft"], "reward": base["reward"],
            **train_safe(base, quick=quick, seed=seed, harm_share=harm_share, make=make)}
    runs.update(train_mixed(runs, quick=quick, seed=seed, make=make))
    runs["helpful-only"] = make("helpful-only", lambda d: train_ppo(
        PPOConfig(**(QUICK["rl"] if quick else {}), seed=seed, ptx_coef=0.0), init=base["sft"], reward=base["reward"],
        out=d, quiet=True))
    return runs


def train_safe(base, *, quick, seed, harm_share, make):
    """The cost model (as many comparisons as the reward model's) and Safe RLHF: {cost, safe-rlhf}.

    base: {sft, reward}; make(name, train) -> the run directory `train(run_dir)` filled once."""
    n_comparisons = read_summary(base["reward"])["n_train"]
    cost_settings = {**(QUICK["cost"] if quick else {"comparisons": n_comparisons}), "seed": seed}
    cost = make("cost", lambda d: train_cost_model(CostModelConfig(**cost_settings), init=base["sft"], out=d, quiet=True))
    safe = make("safe-rlhf", lambda d: train_safe_rlhf(
        SafeRLHFConfig(**(QUICK["rl"] if quick else {}), seed=seed, threshold=budget_threshold(cost, harm_share)),
        init=base["sft"], reward=base["reward"], cost=cost, out=d, quiet=True))
    return {"cost": cost, "safe-rlhf": safe}


def train_mixed(runs, *, quick, seed, make):
    """One reward model on both labelling jobs pooled, and PPO against it without ptx: {mixed-rm, mixed}.

    runs: {sft, reward, cost}; make(name, train) as for `train_safe`."""
    def mixed_reward_model(run_dir):     # both labelling jobs pooled into one reward model
        rows = load_preferences(runs["reward"] / "comparisons.jsonl") + load_preferences(runs["cost"] / "comparisons.jsonl")
        data = run_dir.parent / "mixed_comparisons.jsonl"
        write_jsonl(data, [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))])
        train_reward_model(reward_config_of(runs["reward"]), init=runs["sft"], out=run_dir, data=data,
               heldout_data=runs["reward"] / "heldout_comparisons.jsonl", quiet=True)
    rm = make("mixed-rm", mixed_reward_model)
    mixed = make("mixed", lambda d: train_ppo(PPOConfig(**(QUICK["rl"] if quick else {}), seed=seed, ptx_coef=0.0),
                                        init=runs["sft"], reward=rm, out=d, quiet=True))
    return {"mixed-rm": rm, "mixed": mixed}


def measure(runs, n_prompts, seed):
    """Helpfulness and harm rate of every policy on the same held-out prompts, by prompt group; KL and λ."""
    task = get_task(TASK)
    prompts = task.prompts("eval")[:n_prompts]
    out = {"task": TASK, "eval_prompts": n_prompts, "policies": {},
           "threshold": read_summary(runs["safe-rlhf"])["threshold"],
           "cost_model": {k: read_summary(runs["cost"])[k] for k in ("accuracy_gold", "sign_accuracy")},
           "reward_model_accuracy_gold": read_summary(runs["reward"])["accuracy_gold"],
           "mixed_reward_model_accuracy_gold": read_summary(runs["mixed-rm"])["accuracy_gold"]}
    for name in POLICIES:
        model, tokenizer, _ = load_run(runs[name])
        policy = ModelPolicy(model, tokenizer, task.max_response_tokens)
        out["policies"][name] = evaluate_safety(policy, task, prompts, rng=np.random.default_rng([seed, 7]))
        if name != "sft":
            out["policies"][name]["kl_k1"] = read_summary(runs[name])["kl_k1"]
    lam = [row["lambda"] for row in read_metrics(runs["safe-rlhf"])]
    out["lambda"] = {"max": max(lam), "final": lam[-1], "argmax_step": int(np.argmax(lam)) + 1}
    return out


def plot_policies(results, path):
    """Helpfulness and harm rate on harmful and harmless prompts, one group of bars per policy."""
    fig, axes = figure(2, 5.5)
    x, width = np.arange(len(POLICIES)), 0.38
    for ax, key in zip(axes, ("helpfulness", "harm_rate")):
        for k, group in enumerate(("harmless", "harmful")):
            values = [results["policies"][p][group][key] for p in POLICIES]
            errors = [results["policies"][p][group]["helpfulness_ci95"] for p in POLICIES] if key == "helpfulness" else None
            ax.bar(x + (k - 0.5) * width, values, width, yerr=errors, capsize=3, label=f"{group} prompts")
        ax.set_xticks(x, POLICIES)
    save_figure(fig, path, f"{results['task']}: {results['eval_prompts']} held-out prompts, one sample each", axes, "",
          ["helpfulness (gold reward, ± 95% CI)", "harm rate (share with gold cost > 0)"])


def plot_lambda(rows, threshold, path):
    """λ, and the cost model's mean score against the budget d, along Safe RLHF training."""
    fig, axes = figure(3, 4.3)
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["lambda"] for r in rows])
    axes[1].plot(steps, [r["cost_score"] for r in rows], label="J_C: mean cost of the rollouts")
    axes[1].axhline(threshold, color="k", ls="--", lw=1, label="budget d")
    axes[2].plot(steps, [r["harm_rate"] for r in rows], label="harm rate")
    axes[2].plot(steps, [r["gold"] for r in rows], label="helpfulness")
    save_figure(fig, path, "Safe RLHF: λ rises while the cost budget is exceeded and falls once it is kept", axes,
          "step", ["λ (the price of harm)", "cost-model score", "gold judges, rollouts"])


def table(results):
    """The numbers as Markdown (generated; docs/safe_rlhf.md links here)."""
    lines = ["# Safe RLHF against a mixed reward model (generated by `minirlhf experiment safe-rlhf`)", "",
             f"Task `{results['task']}`, seed {results['seed']}" + (", quick settings" if results["quick"] else "")
             + f"; {results['eval_prompts']} held-out prompts, one sample each. Budget d = {results['threshold']:.2f} "
             f"(cost-model units: {results['harm_share']:.0%} of responses harmful). Reward model accuracy vs gold "
             f"{results['reward_model_accuracy_gold']:.3f}, mixed reward model {results['mixed_reward_model_accuracy_gold']:.3f} "
             f"(on held-out helpfulness pairs); cost model pairwise accuracy {results['cost_model']['accuracy_gold']:.3f}, "
             f"sign accuracy {results['cost_model']['sign_accuracy']:.3f}.", "",
             "![policies](safe_rlhf.png)", "",
             "| policy | helpfulness, harmless prompts | harm rate, harmless | helpfulness, harmful prompts | "
             "harm rate, harmful | KL to SFT |", "|---|---|---|---|---|---|"]
    for name in POLICIES:
        p = results["policies"][name]
        kl = f"{p['kl_k1']:.2f}" if "kl_k1" in p else "0"
        lines.append(f"| {name} | {p['harmless']['helpfulness']:.3f} ± {p['harmless']['helpfulness_ci95']:.3f} | "
                     f"{p['harmless']['harm_rate']:.1%} | {p['harmful']['helpfulness']:.3f} ± "
                     f"{p['harmful']['helpfulness_ci95']:.3f} | {p['harmful']['harm_rate']:.1%} | {kl} |")
    lam = results["lambda"]
    lines += ["", "![lambda](safe_rlhf_lambda.png)", "",
              f"λ peaked at {lam['max']:.2f} (step {lam['argmax_step']}) and ended at {lam['final']:.2f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
