"""The pipeline's report: every policy answers the same held-out prompts, the hidden human judges.

For each policy — the human demonstrators themselves, the pretrained model, SFT, best-of-n from
SFT under the reward model, PPO, DPO — one response per held-out eval prompt is sampled at
temperature 1, and the table reports

    gold reward ± 95% CI   the hidden human judgement (the toy world's gold), the number that matters
    win rate vs SFT        `metrics.win_rate` against the SFT model's responses to the same prompts
    RM score               the (normalised) reward model's score: the proxy RL optimised
    KL to SFT              k1 estimate per response from the policy's own samples; for best-of-n the
                           analytic bound log n − (n−1)/n
    distinct-2, ROUGE-L    diversity, and overlap with one human reference

Then the reward–KL frontier (best-of-n for n = 1 … n_max, PPO and DPO as points), the training
curves of every stage, a few responses side by side, and the wall time of each stage.
`write_report` writes `report.md`, `results.json` and the PNG plots into the pipeline directory.
"""
import functools
import math
import time

import numpy as np

from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.best_of_n import BestOfN, kl_bound, pick_best
from minirlhf.stages.experience import score_texts
from minirlhf.stages.runs import load_run, read_summary, write_json, write_text_atomic
from minirlhf.world.metrics import evaluate, mean_ci95, win_rate
from minirlhf.world.tasks import get_task

MODEL_STAGES = (("pretrained", "pretrain"), ("SFT", "sft"), ("PPO", "ppo"), ("DPO", "dpo"))


def evaluate_policies(dirs, task_name, *, n_prompts, best_of, seed):
    """{policy name: metrics and responses} on the first `n_prompts` held-out prompts."""
    task = get_task(task_name)
    prompts = task.prompts("eval")[:n_prompts]
    models = {name: load_run(dirs[stage])[0] for name, stage in MODEL_STAGES if stage in dirs}
    reward_model, tokenizer, _ = load_run(dirs["reward"])
    rm_score = functools.partial(score_texts, reward_model, tokenizer)
    sampler = functools.partial(ModelPolicy, tokenizer=tokenizer, max_new_tokens=task.max_response_tokens)
    rng = lambda: np.random.default_rng([seed, 7])          # every policy sees the same sampling seed

    results = {"human demonstrations": evaluate(task.human_policy, task, prompts, rng=rng())}
    for name, model in models.items():
        results[name] = evaluate(sampler(model), task, prompts, rng=rng(), ref_model=models["SFT"])
    best = BestOfN(sampler(models["SFT"]), rm_score, best_of)
    results[f"best-of-{best_of}"] = evaluate(best, task, prompts, rng=rng())
    results[f"best-of-{best_of}"]["kl_k1"] = kl_bound(best_of)

    sft_gold = gold_rewards(task, prompts, results["SFT"]["responses"])
    for name, result in results.items():
        result.update(win_rate(gold_rewards(task, prompts, result["responses"]), sft_gold))
        result["rm_score"] = float(np.mean(rm_score(prompts, result["responses"])))
    return prompts, results


def gold_rewards(task, prompts, responses):
    return [task.gold_reward(p, r) for p, r in zip(prompts, responses)]


def best_of_n_curve(dirs, task_name, *, n_prompts, n_max, seed):
    """Gold reward and RM score of best-of-n from SFT for n = 1, 2, 4, …, n_max (one set of samples)."""
    task = get_task(task_name)
    prompts = task.prompts("eval")[:n_prompts]
    sft_model, tokenizer, _ = load_run(dirs["sft"])
    reward_model = load_run(dirs["reward"])[0]
    policy = ModelPolicy(sft_model, tokenizer, task.max_response_tokens)
    best = BestOfN(policy, functools.partial(score_texts, reward_model, tokenizer), n_max)
    candidates, scores = best.candidates(prompts, np.random.default_rng([seed, 8]))   # B lists of n_max, (B, n_max)
    curve = []
    for n in [2 ** i for i in range(int(math.log2(n_max)) + 1)]:
        responses = pick_best(candidates, scores, n)
        gold, gold_ci = mean_ci95(gold_rewards(task, prompts, responses))
        curve.append({"n": n, "kl_bound": kl_bound(n), "gold_reward": gold, "gold_reward_ci95": gold_ci,
                      "rm_score": float(scores[:, :n].max(axis=1).mean())})
    return curve


# ----------------------------------------------------------------------------- writing

def write_report(out, dirs, task_name, *, seconds, n_prompts, best_of, seed):
    """Evaluate, plot and write report.md + results.json into the pipeline directory `out`."""
    started = time.time()
    prompts, results = evaluate_policies(dirs, task_name, n_prompts=n_prompts, best_of=best_of, seed=seed)
    curve = best_of_n_curve(dirs, task_name, n_prompts=n_prompts, n_max=max(best_of, 32), seed=seed)
    seconds = {**seconds, "evaluation": time.time() - started}
    plot_frontier(curve, results, out / "frontier.png")
    plot_policies(results, out / "policies.png")
    reward_summary = read_summary(dirs["reward"])
    table = {name: {k: v for k, v in r.items() if k != "responses"} for name, r in results.items()}
    write_json(out / "results.json", {"task": task_name, "n_prompts": len(prompts), "policies": table,
                                      "best_of_n_curve": curve, "reward_model": reward_summary.get("judges"),
                                      "seconds": seconds})
    text = markdown(task_name, prompts, results, curve, reward_summary, dirs, out, seconds)
    write_text_atomic(out / "report.md", text)
    return out / "report.md"


def policy_rows(results):
    """The policy table in Markdown."""
    lines = ["| policy | gold reward | win rate vs SFT | RM score | KL to SFT | distinct-2 | ROUGE-L | length |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        kl = "—" if "kl_k1" not in r else (f"≤ {r['kl_k1']:.2f}" if name.startswith("best-of") else f"{r['kl_k1']:.2f}")
        win = "—" if name == "SFT" else f"{r['win_rate']:.1%} ± {r['win_rate_ci95']:.1%}"
        lines.append(f"| {name} | {r['gold_reward']:+.3f} ± {r['gold_reward_ci95']:.3f} | {win} | {r['rm_score']:+.2f} | {kl} | "
                     f"{r['distinct_2']:.3f} | {r['rouge_l']:.3f} | {r['length']:.1f} |")
    return lines


def findings(results, curve, reward_summary):
    """The headline sentences, computed from the numbers (so they stay true when the numbers change)."""
    sft = results["SFT"]
    lines = []
    for name in ("PPO", "DPO"):
        if name in results:
            r = results[name]
            verdict = "beats" if r["win_rate"] - r["win_rate_ci95"] > 0.5 else "does not clearly beat"
            lines.append(f"- **{name} {verdict} SFT under the gold judge**: it wins {r['win_rate']:.1%} ± "
                         f"{r['win_rate_ci95']:.1%} of held-out prompts (gold {r['gold_reward']:+.3f} vs "
                         f"{sft['gold_reward']:+.3f}) at a KL of {r['kl_k1']:.2f} nats from SFT.")
    human = results["human demonstrations"]
    lines.append(f"- The demonstrators themselves score {human['gold_reward']:+.3f}: SFT imitates them "
                 f"({sft['gold_reward']:+.3f}); "
                 + ", ".join(f"{n} {'surpasses' if results[n]['gold_reward'] > human['gold_reward'] else 'stays below'} them"
                             for n in ("PPO", "DPO") if n in results) + ".")
    peak = max(curve, key=lambda p: p["gold_reward"])
    lines.append(f"- Best-of-n from SFT: the RM score rises from {curve[0]['rm_score']:+.2f} (n = 1) to "
                 f"{curve[-1]['rm_score']:+.2f} (n = {curve[-1]['n']}); gold rises from {curve[0]['gold_reward']:+.3f} "
                 f"to {curve[-1]['gold_reward']:+.3f}, best at n = {peak['n']} ({peak['gold_reward']:+.3f}).")
    judges = reward_summary.get("judges")
    if judges:
        lines.append(f"- On {judges['n']} held-out pairs of SFT responses the reward model agrees with the gold "
                     f"human {judges['reward_model']:.1%} of the time; ROUGE-L against the reference "
                     f"{judges['rouge_l']:.1%}, BLEU {judges['bleu']:.1%}, a simulated annotator "
                     f"{judges['annotators']:.1%}.")
    return lines


def markdown(task_name, prompts, results, curve, reward_summary, dirs, out, seconds):
    task = get_task(task_name)
    lines = [f"# minirlhf pipeline report — task `{task_name}`", "",
             f"Every policy answered the same {len(prompts)} held-out prompts (never seen in training), one "
             "sample each at temperature 1. The **gold reward** is the toy world's hidden human judgement, in "
             "[-1, 1]; no stage ever trained on it. The RM score is the proxy the RL stages optimised.", "",
             "## What RLHF did", "", *findings(results, curve, reward_summary), "",
             "## Every policy", "", *policy_rows(results), "",
             "Win rate: the share of prompts where the policy's response has the higher gold reward than SFT's "
             "(ties ½), ± 95% CI. KL: nats per response, estimated from the policy's samples (k1); best-of-n "
             "shows its analytic bound.", "", "![gold reward of every policy](policies.png)", "",
             "## The reward–KL frontier", "",
             "Gold reward against the KL from the SFT model: best-of-n for growing n (at its KL bound), and "
             "where PPO and DPO landed.", "", "![frontier](frontier.png)", "",
             "| n | KL bound | RM score | gold reward |", "|---|---|---|---|"]
    lines += [f"| {p['n']} | {p['kl_bound']:.2f} | {p['rm_score']:+.2f} | {p['gold_reward']:+.3f} ± "
              f"{p['gold_reward_ci95']:.3f} |" for p in curve]
    lines += ["", "## Training curves", ""]
    for stage, run_dir in dirs.items():
        if stage != "out" and (run_dir / "curves.png").is_file():
            lines += [f"**{stage}** (`{run_dir.relative_to(out)}`)", "",
                      f"![{stage} curves]({(run_dir / 'curves.png').relative_to(out)})", ""]
    lines += ["## Responses side by side", ""]
    for i, prompt in enumerate(prompts[:4]):
        lines += [f"**{prompt}**", "", "| policy | response | gold |", "|---|---|---|"]
        lines += [f"| {name} | {r['responses'][i]} | {task.gold_reward(prompt, r['responses'][i]):+.2f} |"
                  for name, r in results.items()]
        lines.append("")
    lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {s:.0f} |" for stage, s in seconds.items()]
    lines += [f"| total | {sum(seconds.values()):.0f} |", ""]
    return "\n".join(lines)


def plot_frontier(curve, results, path):
    from matplotlib.figure import Figure  # no pyplot: a notebook's plotting backend stays as it is
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    ax.errorbar([p["kl_bound"] for p in curve], [p["gold_reward"] for p in curve],
                yerr=[p["gold_reward_ci95"] for p in curve], fmt="^--", capsize=2, label="best-of-n (KL bound)")
    for p in curve:
        ax.annotate(f"n={p['n']}", (p["kl_bound"], p["gold_reward"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7)
    for name, marker in (("SFT", "o"), ("PPO", "s"), ("DPO", "D")):
        if name in results:
            r = results[name]
            ax.errorbar([max(r["kl_k1"], 0.0)], [r["gold_reward"]], yerr=[r["gold_reward_ci95"]], fmt=marker,
                        capsize=2, markersize=8, label=name)
    ax.set_xlabel("KL(π ‖ π_SFT), nats per response")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("reward–KL frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_policies(results, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.subplots()
    names = list(results)
    ax.bar(names, [results[n]["gold_reward"] for n in names], yerr=[results[n]["gold_reward_ci95"] for n in names],
           capsize=3, color=["tab:gray" if n in ("human demonstrations", "pretrained") else "tab:blue" for n in names])
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_ylabel("gold reward ± 95% CI")
    ax.set_title("every policy under the hidden human judge")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
