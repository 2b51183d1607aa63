"""The reward model — step 2 of the RLHF recipe: a scalar "human preference score" from comparisons.

The reward model r_φ(x, y) is the SFT transformer with its LM head replaced by a scalar head
(`ScalarHeadModel.from_lm`), read at the last response token (the <eos>). Comparisons are
modelled with Bradley–Terry (Bradley & Terry 1952; Christiano et al. 2017; Stiennon et al.
2020, eq. 1):

    P(y_c ≻ y_r | x) = σ(r_φ(x, y_c) − r_φ(x, y_r))

and the loss is the negative log-likelihood of the labels, with LLaMA 2's margin m ≥ 0 from
graded labels (Touvron et al. 2023, eq. 2; m = 0 is the plain loss):

    L(φ) = − E_{(x, y_c, y_r)} [ log σ(r_φ(x, y_c) − r_φ(x, y_r) − m) ]              `bradley_terry_loss`

A prompt ranked among K responses (InstructGPT, Ouyang et al. 2022, eq. 1) gives all C(K, 2)
pairs from **one** forward pass over its K responses, each pair weighted 1/C(K, 2) so a prompt
counts once however many pairs it holds (`data.expand_comparisons`).

Comparisons come from the toy world — responses of the SFT policy, labelled by the simulated
annotators (graded pairs for k = 2, rankings for k ≥ 4) — or from a JSONL file (`data=`). The
training ones are written to `comparisons.jsonl` and the held-out ones to
`heldout_comparisons.jsonl`, in the formats of `minirlhf.lm.data`, so DPO can train on exactly
the same labels.

After training the score is normalised so that SFT-policy responses score mean 0 and std 1
(Ziegler et al. 2019, Sec. 2.2, on samples of the initial policy): the shift and scale are folded
into the score head's weight and bias, so every user of `model.npz` sees normalised scores, and
PPO's KL coefficient is measured against rewards of unit spread. The Bradley–Terry probability of the
saved model is then σ(bt_scale · (r_a − r_b)), with `bt_scale` in summary.json.

Evaluation (docs/reward_model.md defines every number): accuracy on held-out graded pairs
against the annotators' labels and against the noise-free gold judge, on pairs whose gold gap
exceeds the annotator noise, by the annotator's grade; the mean margin; calibration; and how
often the RM, ROUGE-L and BLEU against the task's reference agree with the gold judge.

Simplifications: batches are drawn at random each step (not in epochs); the body is trained
whole, with no frozen layers; held-out comparisons are always graded pairs on the task's eval
prompts, whatever the training format (so pairwise and K-wise runs share one test set).
"""
import dataclasses
import time

import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.optim import AdamW, check_finite, clip_grad_norm, cosine_schedule, decay_groups
from minirlhf.lm.data import collate, encode_pair, expand_comparisons, load_preferences, write_jsonl
from minirlhf.lm.model import ScalarHeadModel, last_token_values
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.config import check_positive, check_range, option
from minirlhf.stages.experience import score_all
from minirlhf.stages.runs import Run, load_run, new_run_dir
from minirlhf.world.annotators import collect_comparisons
from minirlhf.world.reward_metrics import calibration, judge_agreement, plot_calibration, preference_metrics
from minirlhf.world.tasks import get_task


@dataclasses.dataclass
class RewardConfig:
    comparisons: int = option(3000, "without --data: training prompts labelled, one pair or ranking each (≥ 2)")
    k: int = option(2, "responses per prompt: 2 = graded pairs (LLaMA 2), 4..9 = rankings (InstructGPT)")
    margin: float = option(0.0, "m = margin × MARGIN_TABLE value of a pair's grade; 0 = plain Bradley–Terry (≥ 0)")
    temperature: float = option(1.0, "sampling temperature of the SFT policy whose responses are labelled (> 0)")
    heldout_comparisons: int = option(500, "held-out graded pairs on eval prompts; with --data: its last rows, ≤ ⅕ (≥ 1)")
    steps: int = option(200, "optimizer steps (≥ 1)")
    batch_size: int = option(32, "labelled prompts per step (≥ 1)")
    lr: float = option(1e-3, "peak learning rate (> 0)")
    min_lr: float = option(1e-4, "final learning rate of the cosine decay (≥ 0, ≤ lr)")
    warmup_steps: int = option(20, "linear warmup steps (≥ 0)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (≥ 0)")
    grad_clip: float = option(1.0, "max global gradient norm (> 0)")
    normalize_samples: int = option(500, "SFT-policy responses (temperature 1) that set the normalisation (≥ 2)")
    normalize_std: bool = option(True, "also scale those scores to std 1 (the mean is always shifted to 0)")
    clear_gap: float = option(0.27, "\"clear\" gold gaps exceed this: noise std τπ/√3 of a τ = 0.15 annotator (≥ 0)")
    eval_every: int = option(50, "steps between held-out evaluations (≥ 1)")
    checkpoint_every: int = option(100, "steps between checkpoints (≥ 1)")
    seed: int = option(0, "seeds the comparisons, the head, the batches and the samples")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "heldout_comparisons", "eval_every", "checkpoint_every",
                       "temperature")
        check_range(self, "comparisons", 2, None)
        if self.k != 2 and not 4 <= self.k <= 9:
            raise ValueError(f"RewardConfig.k = {self.k!r}; allowed: 2 (graded pairs) or 4..9 (rankings)")
        check_range(self, "margin", 0.0, None)
        check_range(self, "normalize_samples", 2, None)
        check_range(self, "clear_gap", 0.0, None)
        check_range(self, "warmup_steps", 0, None)
        check_range(self, "lr", 0.0, None, low_open=True)
        check_range(self, "min_lr", 0.0, self.lr)
        check_range(self, "weight_decay", 0.0, None)
        check_range(self, "grad_clip", 0.0, None, low_open=True)


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None, weights=None):
    """(Weighted) mean of −log σ(r_c − r_r − m) over comparisons: a scalar Tensor.

    chosen_rewards, rejected_rewards: (N,) Tensors (or arrays); margin, weights: (N,) arrays or None.
    """
    dtype = next((x.dtype for x in (chosen_rewards, rejected_rewards) if isinstance(x, Tensor)), np.float64)
    chosen, rejected = (x if isinstance(x, Tensor) else Tensor(np.asarray(x, dtype))
                        for x in (chosen_rewards, rejected_rewards))
    logits = chosen - rejected                                                   # (N,)
    if margin is not None:
        logits = logits - np.asarray(margin, logits.dtype)
    # L = −log σ(r_c − r_r − m)        (Bradley–Terry NLL; LLaMA 2 eq. 2 with the margin)
    losses = -F.logsigmoid(logits)                                               # (N,)
    if weights is None:
        return losses.mean()
    w = np.asarray(weights, logits.dtype)
    return (losses * w).sum() * (1.0 / float(w.sum()))


def comparison_loss(rm, tokenizer, rows, margin_scale):
    """Bradley–Terry loss of a batch of rows, and r_c − r_r of each pair (an array) for logging."""
    texts, chosen, rejected, margin, weight = expand_comparisons(rows)
    input_ids, attention_mask, response_mask = collate([encode_pair(tokenizer, p, y) for p, y in texts],
                                                       tokenizer.pad_id)                 # (B, T) each
    scores = last_token_values(rm(input_ids, attention_mask), response_mask)              # (B,)
    loss = bradley_terry_loss(scores[chosen], scores[rejected], margin * margin_scale if margin_scale else None,
                              weight)
    return loss, scores.data[chosen] - scores.data[rejected]


def train_reward_model(config, *, init, out=None, data=None, heldout_data=None, resume=False, quiet=False):
    """Train a reward model from the SFT run directory `init`; returns the new run directory.

    The loop: draw comparisons → `reward_update` → log (held-out accuracy every eval_every steps).

    data: comparisons to train on (JSONL, pairwise or K-wise) instead of labelling the toy world's;
    heldout_data: comparisons to evaluate on (default: the last rows of `data`).
    """
    sft_model, tokenizer, init_config = load_run(init)
    if init_config["model_type"] != "gpt":
        raise ValueError(f"--init {init} holds a {init_config['stage']} scoring model; give a language-model run")
    task = get_task(init_config["task"]) if init_config.get("task") else None
    run_dir = new_run_dir("reward", out)
    started = time.time()
    train_rows, heldout_rows = comparisons(config, task, sft_model, tokenizer, data, heldout_data, run_dir, resume)

    rng = np.random.default_rng(config.seed)
    rm = ScalarHeadModel.from_lm(sft_model, rng)
    rm.score.weight.data[:] = 0.0   # every score starts at 0: P = ½ for every pair, the loss at init is ln 2
    optimizer = AdamW(decay_groups(rm, config.weight_decay), lr=config.lr)
    run = Run("reward", run_dir, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=config.checkpoint_every, model=rm, optimizer=optimizer)
    with run:
        while run.step < config.steps:
            index = rng.choice(len(train_rows), size=min(config.batch_size, len(train_rows)), replace=False)
            optimizer.lr = cosine_schedule(run.step, max_lr=config.lr, warmup_steps=config.warmup_steps,
                                           total_steps=config.steps, min_lr=config.min_lr)
            stats = reward_update(rm, optimizer, tokenizer, [train_rows[i] for i in index], config)
            if run.due(config.eval_every):
                heldout = evaluate_reward_model(rm, tokenizer, task, heldout_rows, config.clear_gap)
                stats.update({f"heldout_{key}": heldout[key] for key in ("loss", "accuracy", "accuracy_gold")
                              if key in heldout})
            run.log(**stats, lr=optimizer.lr, show=["loss", "accuracy"])

    summary = evaluate_reward_model(rm, tokenizer, task, heldout_rows, config.clear_gap, final=True)
    plot_calibration(summary["calibration"], run_dir / "calibration.png")
    summary["normalization"] = normalize(rm, sft_model, tokenizer, task, train_rows, config)
    summary.update({"bt_scale": summary["normalization"]["std"], "n_train": len(train_rows),
                    "n_heldout": len(heldout_rows), "seconds": time.time() - started})
    run.save(stage="reward", task=init_config.get("task"), model=rm, tokenizer=tokenizer,
             stage_config={**dataclasses.asdict(config), "data": data}, init=init)
    return run.finish(summary, curves=["loss", "heldout_loss", "heldout_accuracy", "heldout_accuracy_gold", "margin"],
                      title="reward model")


def reward_update(rm, optimizer, tokenizer, rows, config):
    """One Bradley–Terry step on a batch of comparison rows; -> {loss, accuracy, margin, grad_norm}."""
    rm.train()
    loss, diff = comparison_loss(rm, tokenizer, rows, config.margin)
    optimizer.zero_grad()
    loss.backward()
    check_finite(loss, rm)
    grad_norm = clip_grad_norm(optimizer.params, config.grad_clip)
    optimizer.step()
    return {"loss": float(loss.data), "accuracy": float(np.mean(diff > 0)), "margin": float(np.mean(diff)),
            "grad_norm": grad_norm}


def comparisons(config, task, sft_model, tokenizer, data, heldout_data, run_dir, resume):
    """Training and held-out rows: read back on resume, else from files or labelled in the toy world."""
    train_path, heldout_path = run_dir / "comparisons.jsonl", run_dir / "heldout_comparisons.jsonl"
    if resume and train_path.is_file() and heldout_path.is_file():
        return load_preferences(train_path), load_preferences(heldout_path)
    if data is not None and heldout_data is not None:
        train_rows, heldout_rows = load_preferences(data), load_preferences(heldout_data)
    elif data is not None:
        rows = load_preferences(data)
        n_heldout = min(config.heldout_comparisons, len(rows) // 5)
        if n_heldout < 1:
            raise ValueError(f"{data}: {len(rows)} comparisons are too few (need 5: at least one is held out)")
        train_rows, heldout_rows = rows[:-n_heldout], rows[-n_heldout:]
    elif task is not None:
        policy = ModelPolicy(sft_model, tokenizer, task.max_response_tokens, temperature=config.temperature)
        train_prompts, eval_prompts = task.prompts("train"), task.prompts("eval")
        if config.heldout_comparisons > len(eval_prompts):
            raise ValueError(f"RewardConfig.heldout_comparisons = {config.heldout_comparisons}: the task has "
                             f"{len(eval_prompts)} eval prompts")
        # separate generators: the held-out set does not depend on the training data's size or format
        train_rng, heldout_rng = np.random.default_rng([config.seed, 1]), np.random.default_rng([config.seed, 2])
        prompts = [train_prompts[i] for i in train_rng.permutation(len(train_prompts))[:config.comparisons]]
        kind, k = ("graded", None) if config.k == 2 else ("ranking", config.k)
        train_rows = collect_comparisons(task, policy, prompts, rng=train_rng, kind=kind, k=k)
        heldout_rows = collect_comparisons(task, policy, eval_prompts[:config.heldout_comparisons],
                                           rng=heldout_rng, kind="graded")
    else:
        raise ValueError("the --init run was trained on a user corpus (no toy task): give comparisons with --data")
    write_jsonl(train_path, train_rows)
    write_jsonl(heldout_path, heldout_rows)
    return train_rows, heldout_rows


def evaluate_reward_model(rm, tokenizer, task, rows, clear_gap, final=False):
    """Loss and `reward_metrics.preference_metrics` of held-out rows, scored in eval mode; when
    `final`, also the calibration and the agreement with gold of the RM, ROUGE and BLEU."""
    texts, chosen, rejected, _, weight = expand_comparisons(rows)
    prompts, responses = (list(column) for column in zip(*texts))
    rm.eval()
    scores = score_all(rm, tokenizer, prompts, responses)                                  # (n_texts,)
    diff = scores[chosen] - scores[rejected]                                               # (N,)
    pairs = [(prompts[c], responses[c], responses[r]) for c, r in zip(chosen, rejected)]
    gold_gap = [task.gold_reward(p, a) - task.gold_reward(p, b) for p, a, b in pairs] if task else None
    graded = all("margin" in row for row in rows)
    grades = [row["margin"] for row in rows] if graded else None
    out = {"loss": float(bradley_terry_loss(diff, np.zeros_like(diff), weights=weight).data),
           **preference_metrics(diff, gold_gap, grades, clear_gap)}
    if final:
        out["calibration"] = calibration(diff)
        if task is not None:
            out["judges"] = judge_agreement(task, pairs, diff)
    return out


def normalize(rm, sft_model, tokenizer, task, train_rows, config):
    """Shift (and scale) the score head so SFT-policy responses score mean 0 (std 1); -> the statistics.

    The responses are fresh samples of the SFT policy at temperature 1 (what PPO starts from) on
    training prompts; on a user's own data, the responses of its training rows.
    """
    if task is not None:
        rng = np.random.default_rng([config.seed, 3])
        train_prompts = task.prompts("train")
        prompts = [train_prompts[i] for i in rng.permutation(len(train_prompts))[:config.normalize_samples]]
        responses = ModelPolicy(sft_model, tokenizer, task.max_response_tokens)(prompts, rng)
    else:
        prompts, responses = zip(*expand_comparisons(train_rows)[0][:config.normalize_samples])
    scores = score_all(rm, tokenizer, prompts, responses)                                  # (n,)
    mean = float(scores.mean())
    std = float(scores.std()) if config.normalize_std and scores.std() > 0 else 1.0
    fold_into_head(rm, mean, std)
    stats = {"mean": mean, "std": std, "n": len(prompts)}
    if task is not None:
        gold = np.array([task.gold_reward(p, r) for p, r in zip(prompts, responses)])
        stats["gold_correlation"] = float(np.corrcoef(scores, gold)[0, 1]) if gold.std() > 0 else 0.0
    return stats


def fold_into_head(rm, mean, std):
    """Make the score head output (r − mean)/std: r' = h·(w/std) + (b − mean)/std."""
    rm.score.weight.data *= 1.0 / std
    rm.score.bias.data[:] = (rm.score.bias.data - mean) * (1.0 / std)
