"""Reward models scale with data and size; margins and K-wise rankings; RM vs ROUGE vs BLEU.

    minirlhf experiment rm-scaling [--quick] [--out runs/rm-scaling] [--docs docs/results]
    python -m minirlhf.app.experiments.rm_scaling ...

The article's claims about reward models, measured in the toy world (docs/reward_model.md):

  1. accuracy rises with the number of comparisons: reward models trained on the first N of the
     default reward stage's comparisons, for several N, each for the same number of steps;
  2. accuracy rises with the reward model's size: bodies of several sizes, each pretrained and
     fine-tuned with the default recipe, trained on the same comparisons;
  3. the LLaMA 2 margin loss against the plain loss, on the same graded pairs;
  4. K-wise rankings (K = 4) against pairs at the same annotation budget, counted in responses
     read: N pairs (2N responses) against N/2 rankings (2N responses);
  5. how often the reward model, ROUGE-L, BLEU and BLEU-2 against the task's reference agree
     with the gold judge on held-out pairs of policy outputs, on `sentiment` and `summarize`.

Every comparison comes from the default-size SFT policy of the task and every reward model is
evaluated on the same held-out graded pairs (the base reward run's `heldout_comparisons.jsonl`),
so each row changes one thing. Writes `rm_scaling.json`, `rm_scaling.md` and `rm_scaling.png`
into `--docs`; trained runs stay in `--out` and are reused when the script runs again.
"""
import dataclasses
from pathlib import Path

import numpy as np

from minirlhf.app.experiments import experiment_parser, write_results
from minirlhf.app.pipeline import make_config, run
from minirlhf.lm.data import load_preferences, write_jsonl
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.pretrain import PretrainConfig
from minirlhf.stages.reward import RewardConfig, train_reward_model
from minirlhf.stages.runs import is_complete, load_run, read_json, read_summary
from minirlhf.world.annotators import collect_comparisons
from minirlhf.world.tasks import get_task

SIZES = ((1, 2, 32), (2, 4, 64), (4, 4, 128))     # (n_layer, n_head, n_embd); the middle one is the default
QUICK_SIZES = ((1, 2, 32), (2, 4, 64))


def main(argv=None):
    args = experiment_parser("rm-scaling", __doc__).parse_args(argv)
    out = Path(args.out)
    bases = {task: run(make_config(task, args.seed, quick=args.quick), out=out / f"base-{task}", until="reward")
             for task in ("sentiment", "summarize")}
    sft_dir, rm_dir = bases["sentiment"]["sft"], bases["sentiment"]["reward"]
    config = reward_config_of(rm_dir)
    pairs = load_preferences(rm_dir / "comparisons.jsonl")
    heldout = rm_dir / "heldout_comparisons.jsonl"

    def train(name, rows, **changes):
        """A reward run on `rows` with the base run's config and `changes`; -> its numbers."""
        run_dir = out / name
        if not is_complete(run_dir):
            print(f"== {name}", flush=True)
            write_jsonl(out / f"{name}.jsonl", rows)
            train_reward_model(dataclasses.replace(config, **changes), init=sft_dir, out=run_dir, data=out / f"{name}.jsonl",
                   heldout_data=heldout, quiet=True)
        return numbers(read_summary(run_dir))

    n, base_numbers = len(pairs), numbers(read_summary(rm_dir))
    results = {"seed": args.seed, "quick": args.quick, "steps": config.steps,
               "n_heldout": len(load_preferences(heldout)), "data": [], "size": [], "margin": [], "kwise": []}
    for size in (n // 16, n // 8, n // 4, n // 2, n):
        results["data"].append({"comparisons": size,
                                **(base_numbers if size == n else train(f"pairs-{size}", pairs[:size]))})
    for margin in (0.0, 0.5, 1.0):
        results["margin"].append({"margin_scale": margin, **(base_numbers if margin == config.margin
                                                              else train(f"margin-{margin:g}", pairs, margin=margin))})
    if not (out / "rankings.jsonl").is_file():
        write_jsonl(out / "rankings.jsonl", collect_rankings(sft_dir, n // 2, args.seed))
    rankings = load_preferences(out / "rankings.jsonl")
    for budget in (n, 2 * n):   # responses read: `budget / 2` pairs or `budget / 4` rankings of 4
        results["kwise"].append({"budget": budget, "format": "pairs", "prompts": budget // 2, "pairs": budget // 2,
                                 **results["data"][-1 if budget == 2 * n else -2]})
        n_rankings = budget // 4
        results["kwise"].append({"budget": budget, "format": "rankings of 4", "prompts": n_rankings,
                                 "pairs": 6 * n_rankings, **train(f"rankings-{n_rankings}", rankings[:n_rankings])})
    for n_layer, n_head, n_embd in QUICK_SIZES if args.quick else SIZES:
        body = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
        if all(getattr(PretrainConfig, key) == value for key, value in body.items()):   # the base run's body
            body_sft, body_numbers = sft_dir, base_numbers
        else:
            print(f"== size-{n_layer}x{n_embd}", flush=True)
            body_sft = train_size(body, rm_dir, out / f"body-{n_layer}x{n_embd}", out / f"size-{n_layer}x{n_embd}",
                                  seed=args.seed, quick=args.quick)
            body_numbers = numbers(read_summary(out / f"size-{n_layer}x{n_embd}"))
        pretrain_summary, sft_summary = read_summary(Path(body_sft).parent / "pretrain"), read_summary(body_sft)
        results["size"].append({**body, "params": load_run(body_sft)[0].num_params(),
                                "pretrain_heldout_loss": pretrain_summary["heldout_loss"],
                                "sft_gold_reward": sft_summary["gold_reward_after"], **body_numbers})
    results["judges"] = {task: read_summary(dirs["reward"])["judges"] for task, dirs in bases.items()}
    return write_results(args.docs, "rm_scaling", results, plot, tables(results))


def reward_config_of(rm_dir):
    """The RewardConfig a reward run was trained with."""
    return RewardConfig(**{k: v for k, v in read_json(rm_dir / "config.json")["stage_config"].items() if k != "data"})


def train_size(body, rm_dir, body_dir, run_dir, *, seed, quick):
    """A reward model with a body of another size; -> the body's SFT run directory.

    The body (n_layer, n_head, n_embd) is pretrained and fine-tuned by the pipeline's recipe (quick or
    default) into body_dir; the reward model is trained into run_dir like the base reward run rm_dir,
    on its comparisons, with lr × 64 / width: wider models take smaller steps (lr ∝ 1/width).
    """
    body_sft = run(make_config("sentiment", seed, quick=quick, overrides={"pretrain": body}), out=body_dir,
                   until="sft", quiet=True)["sft"]
    if not is_complete(run_dir):
        config = reward_config_of(rm_dir)
        width = PretrainConfig.n_embd / body["n_embd"]
        train_reward_model(dataclasses.replace(config, lr=config.lr * width, min_lr=config.min_lr * width), init=body_sft,
               out=run_dir, data=rm_dir / "comparisons.jsonl", heldout_data=rm_dir / "heldout_comparisons.jsonl",
               quiet=True)
    return body_sft


def collect_rankings(sft_dir, n, seed):
    """n rankings of K = 4 SFT-policy responses on training prompts, by the default annotator pool."""
    sft, tokenizer, config = load_run(sft_dir)
    task = get_task(config["task"])
    rng = np.random.default_rng([seed, 7])
    prompts = [task.prompts("train")[i] for i in rng.permutation(len(task.prompts("train")))[:n]]
    return collect_comparisons(task, ModelPolicy(sft, tokenizer, task.max_response_tokens), prompts, rng=rng,
                               kind="ranking", k=4)


def numbers(summary):
    """The held-out numbers of one reward run that the tables show."""
    keys = ("accuracy", "accuracy_gold", "accuracy_gold_ci95", "accuracy_gold_clear", "loss")
    out = {key: summary[key] for key in keys}
    out.update(mean_margin=summary["margin"], ece=summary["calibration"]["ece"])
    out["by_grade"] = {grade: v["accuracy"] for grade, v in summary.get("accuracy_by_grade", {}).items()}
    return out


def plot(results, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, x_key, label in ((axes[0], "data", "comparisons", "comparisons (pairs)"),
                                  (axes[1], "size", "params", "reward-model parameters")):
        rows = results[key]
        x = [r[x_key] for r in rows]
        ax.errorbar(x, [r["accuracy_gold"] for r in rows], yerr=[r["accuracy_gold_ci95"] for r in rows], fmt="o-",
                    capsize=3, label="vs gold")
        ax.plot(x, [r["accuracy_gold_clear"] for r in rows], "s--", label="vs gold, clear pairs")
        ax.plot(x, [r["accuracy"] for r in rows], "^:", label="vs annotators' labels")
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:,}" for v in x])
        ax.minorticks_off()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle("reward-model accuracy on held-out pairs (sentiment" + (", quick" if results["quick"] else "") + ")")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def tables(results):
    """Every number as Markdown tables."""
    pct = lambda v: f"{v:.1%}"
    head = "| accuracy vs gold | vs gold, clear pairs | vs annotators | held-out loss |"
    line = lambda r: (f"{pct(r['accuracy_gold'])} ± {pct(r['accuracy_gold_ci95'])} | "
                      f"{pct(r['accuracy_gold_clear'])} | {pct(r['accuracy'])} | {r['loss']:.3f} |")
    out = ["# Reward-model scaling and ablations (generated by `minirlhf experiment rm-scaling`)", "",
           f"Task `sentiment`, seed {results['seed']}" + (", quick settings" if results["quick"] else "")
           + f"; every reward model trains {results['steps']} steps and is evaluated on the same "
           f"{results['n_heldout']} held-out graded pairs of SFT-policy responses (± = 95% CI over pairs).", "",
           "## Accuracy against the number of comparisons", "", "| comparisons " + head, "|---" * 5 + "|"]
    out += [f"| {r['comparisons']} | " + line(r) for r in results["data"]]
    out += ["", "## Accuracy against the reward model's size", "",
            "Each body is pretrained and fine-tuned with the default recipe; each reward model trains with "
            "the default learning rate × 64 / width.", "",
            "| body | parameters | pretraining held-out loss | SFT gold reward " + head, "|---" * 8 + "|"]
    out += [f"| {r['n_layer']} × {r['n_embd']} | {r['params']:,} | {r['pretrain_heldout_loss']:.3f} | "
            f"{r['sft_gold_reward']:.3f} | " + line(r) for r in results["size"]]
    grades = list(results["margin"][0]["by_grade"])
    out += ["", "## Margin loss (LLaMA 2) against the plain loss", "",
            "| margin scale " + head + " calibration error (ECE) |" + "".join(f" {g} |" for g in grades),
            "|---" * (6 + len(grades)) + "|"]
    out += [f"| {r['margin_scale']:g} | " + line(r) + f" {r['ece']:.3f} |"
            + "".join(f" {pct(r['by_grade'][g])} |" for g in grades) for r in results["margin"]]
    out += ["", "## K-wise rankings against pairs at the same annotation budget", "",
            "| responses read | format | prompts | pairs " + head, "|---" * 8 + "|"]
    out += [f"| {r['budget']} | {r['format']} | {r['prompts']} | {r['pairs']} | " + line(r) for r in results["kwise"]]
    out += ["", "## Who agrees with the gold judge on held-out pairs of policy outputs", "",
            "| task | pairs | reward model | ROUGE-L | BLEU | BLEU-2 | the labelling annotator |", "|---" * 7 + "|"]
    for task, j in results["judges"].items():
        out.append(f"| {task} | {j['n']} | {pct(j['reward_model'])} | {pct(j['rouge_l'])} | {pct(j['bleu'])} | "
                   f"{pct(j['bleu_2'])} | {pct(j['annotators'])} |")
    out += ["", "Pairs the gold judge ties are left out; a judge's own tie counts ½ "
            f"(BLEU ties on {pct(results['judges']['sentiment']['ties']['bleu'])} of sentiment pairs: "
            "no shared 4-gram with the reference)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
