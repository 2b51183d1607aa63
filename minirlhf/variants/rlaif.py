"""RLAIF (Bai et al. 2022, "Constitutional AI"; Lee et al. 2023): preference labels from an AI labeler.

Human comparisons are the expensive part of RLHF — LLaMA 2 collected over a million. RLAIF keeps
the rest of the recipe, reward model and PPO, and replaces the labellers with a model: an
off-the-shelf LLM is shown the prompt and both responses and asked which is better, and the
probability it gives each answer is the AI preference (Lee et al. 2023, Sec. 2.1):

    P_AI(y_1 ≻ y_2 | x) = softmax(log p("1" | x, y_1, y_2), log p("2" | x, y_1, y_2))_1

A model of this size cannot be prompted to judge, so our AI labeler is a *scorer*: any
scalar-head run — in the recipe, a reward model trained on a small human-labelled seed set,
far fewer labels than the reward model it will teach — whose preference is Bradley–Terry in
its scores, with κ the labeler's Bradley–Terry scale (`bt_scale` of a reward run):

    P_AI(y_1 ≻ y_2 | x) = σ(κ·(s(x, y_1) − s(x, y_2)))

`rlaif` samples pairs of SFT responses on training prompts — the very pairs the reward stage
would show people with the same seed — and has the labeler label each: the label is drawn from
P_AI (`label="sample"`: the hard-label counterpart of training on soft labels, with the same
expected loss) or is its likelier side (`label="argmax"`). It writes them as ordinary pairwise
comparisons (`ai_comparisons.jsonl`, annotator "ai-labeler"), plus human-labelled held-out pairs
on eval prompts (`heldout_comparisons.jsonl`) on which the labeler's agreement with the gold
human is measured. The reward model and PPO then run unchanged on the AI labels:

    minirlhf reward --init SFT --comparisons 200 --out runs/labeler       # the small human budget
    minirlhf rlaif --init SFT --labeler runs/labeler --out runs/rlaif      # a large set of AI labels
    minirlhf reward --init SFT --data runs/rlaif/ai_comparisons.jsonl \\
        --heldout-data runs/rlaif/heldout_comparisons.jsonl --out runs/rm-ai
    minirlhf ppo --init SFT --reward runs/rm-ai

Where we differ (docs/rlaif.md): no prompt, chain of thought, few-shot examples or position-bias
correction (a scorer reads each response on its own, so it has no position bias); the soft
preference becomes a sampled hard label; the human labels of the training pairs are simulated
too, only to measure how often the AI agrees with them — they are never trained on.
"""
import dataclasses
import time
from pathlib import Path

import numpy as np

from minirlhf.lm.data import write_jsonl
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.config import check_choice, check_positive, check_range, option
from minirlhf.stages.experience import score_all
from minirlhf.stages.runs import load_run, new_run_dir, read_json, write_summary
from minirlhf.world.annotators import collect_comparisons
from minirlhf.world.metrics import agreement
from minirlhf.world.reward_metrics import preference_metrics
from minirlhf.world.tasks import get_task

LABELS = ("sample", "argmax")


@dataclasses.dataclass
class RLAIFConfig:
    comparisons: int = option(3000, "pairs of SFT responses on training prompts that the AI labels (≥ 1)")
    heldout_comparisons: int = option(500, "human-labelled graded pairs on eval prompts, to measure the labeler (≥ 1)")
    label: str = option("sample", "sample: the label drawn from P_AI; argmax: its likelier side")
    temperature: float = option(1.0, "sampling temperature of the SFT policy whose responses are labelled (> 0)")
    clear_gap: float = option(0.27, "\"clear\" pairs have a gold gap above this (the τ = 0.15 annotator noise) (≥ 0)")
    seed: int = option(0, "seeds the pairs (as the reward stage does) and the sampled labels")

    def __post_init__(self):
        check_positive(self, "comparisons", "heldout_comparisons", "temperature")
        check_choice(self, "label", LABELS)
        check_range(self, "clear_gap", 0.0, None)


def ai_preferences(labeler, tokenizer, pairs, bt_scale=1.0):
    """P_AI(y_1 ≻ y_2 | x) = σ(κ·(s(x, y_1) − s(x, y_2))) for pairs [(x, y_1, y_2)]: (N,) array."""
    prompts = [x for x, _, _ in pairs]
    s_1 = score_all(labeler, tokenizer, prompts, [y for _, y, _ in pairs])                 # (N,)
    s_2 = score_all(labeler, tokenizer, prompts, [y for _, _, y in pairs])                 # (N,)
    # σ(z) = ½(1 + tanh(z/2)): no overflow for any z
    return 0.5 * (1.0 + np.tanh(0.5 * bt_scale * (s_1 - s_2).astype(np.float64)))


def ai_label(pairs, p_first, mode, rng):
    """Pairwise rows {prompt, chosen, rejected, annotator: 'ai-labeler'} from P_AI of each pair's first response."""
    if mode == "sample":
        first_wins = rng.random(len(pairs)) < p_first
    else:  # argmax; an exact tie is a coin flip
        first_wins = (p_first > 0.5) | ((p_first == 0.5) & (rng.random(len(pairs)) < 0.5))
    return [{"prompt": x, "chosen": a if win else b, "rejected": b if win else a, "annotator": "ai-labeler"}
            for (x, a, b), win in zip(pairs, first_wins)]


def collect_ai_labels(config, *, init, labeler, out=None):
    """Label `config.comparisons` pairs of the SFT run `init` with the scorer run `labeler`; returns the run directory."""
    sft_model, tokenizer, init_config = load_run(init)
    judge, judge_tokenizer, judge_config = load_run(labeler)
    if init_config["model_type"] != "gpt" or not init_config.get("task"):
        raise ValueError(f"--init {init} must be a language-model run on a built-in task")
    if judge_config["model_type"] != "scalar":
        raise ValueError(f"--labeler {labeler} must be a scoring-model run (e.g. minirlhf reward), "
                         f"got a {judge_config['stage']} run holding a language model")
    summary_path = Path(labeler) / "summary.json"
    bt_scale = float(read_json(summary_path).get("bt_scale", 1.0)) if summary_path.is_file() else 1.0
    task, started = get_task(init_config["task"]), time.time()
    run_dir = new_run_dir("rlaif", out)
    policy = ModelPolicy(sft_model, tokenizer, task.max_response_tokens, temperature=config.temperature)
    # the pairs the reward stage would show people with this seed (its generators and prompt order)
    train_rng, heldout_rng = np.random.default_rng([config.seed, 1]), np.random.default_rng([config.seed, 2])
    train_prompts = task.prompts("train")
    prompts = [train_prompts[i] for i in train_rng.permutation(len(train_prompts))[:config.comparisons]]
    human = collect_comparisons(task, policy, prompts, rng=train_rng, kind="graded")
    heldout = collect_comparisons(task, policy, task.prompts("eval")[:config.heldout_comparisons], rng=heldout_rng,
                                  kind="graded")
    pairs = [(row["prompt"], row["chosen"], row["rejected"]) for row in human]   # the human's choice first
    p_human_choice = ai_preferences(judge, judge_tokenizer, pairs, bt_scale)           # P_AI(human's choice ≻ other)
    ai_rows = ai_label(pairs, p_human_choice, config.label, np.random.default_rng([config.seed, 3]))
    write_jsonl(run_dir / "ai_comparisons.jsonl", ai_rows)
    write_jsonl(run_dir / "heldout_comparisons.jsonl", heldout)

    gold_gap = np.array([task.gold_reward(x, a) - task.gold_reward(x, b) for x, a, b in pairs])
    ai_agrees = np.array([row["chosen"] == a for row, (_, a, _) in zip(ai_rows, pairs)])   # with the human label
    decided = gold_gap != 0
    heldout_pairs = [(row["prompt"], row["chosen"], row["rejected"]) for row in heldout]
    diff = 2.0 * ai_preferences(judge, judge_tokenizer, heldout_pairs, bt_scale) - 1.0     # > 0: agrees with the label
    summary = {
        "init": str(init), "labeler": str(labeler), "bt_scale": bt_scale, "config": dataclasses.asdict(config),
        "n": len(ai_rows),
        # on held-out pairs: the labeler's own preference against the annotators' labels and the gold judge
        "heldout": preference_metrics(diff, [task.gold_reward(x, a) - task.gold_reward(x, b) for x, a, b in heldout_pairs],
                                      [row["margin"] for row in heldout], config.clear_gap),
        # on the labelled training pairs that gold does not tie: the AI labels themselves
        "labels_vs_human": float(ai_agrees.mean()),
        "labels_vs_gold": agreement(np.where(ai_agrees, 1.0, -1.0)[decided], gold_gap[decided]) if decided.any() else None,
        "human_vs_gold": agreement(np.ones(int(decided.sum())), gold_gap[decided]) if decided.any() else None,
        "seconds": time.time() - started}
    write_summary(run_dir, summary)
    return run_dir
