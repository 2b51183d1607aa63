"""Direct Preference Optimization (Rafailov et al. 2023): RLHF without a reward model or RL.

The KL-regularised RLHF objective  max_π E_x E_{y~π}[r(x, y)] − β KL(π(·|x) ‖ π_ref(·|x))
has the closed-form optimum π*(y|x) = π_ref(y|x) exp(r(x, y)/β) / Z(x) (DPO, eq. 4). Solved for
the reward, r(x, y) = β log π*(y|x)/π_ref(y|x) + β log Z(x) (eq. 5); put into the Bradley–Terry
likelihood of a comparison y_w ≻ y_l the intractable Z(x) cancels, leaving a classification loss
on the policy itself (eq. 7):

    h = log π(y_w|x)/π_ref(y_w|x) − log π(y_l|x)/π_ref(y_l|x)
    L_DPO = −log σ(β h)

`dpo_loss` has the signature of the reference implementation and Hugging Face TRL, with two of
their variants: conservative DPO (label smoothing ε: the label is wrong with probability ε) and
IPO (Azar et al. 2023, eq. 17), plus the SLiC hinge (Zhao et al. 2023). See docs/dpo.md.

The stage `dpo` trains the policy from an SFT run, with a frozen copy of it as π_ref, on
preference pairs: a pairwise or K-wise JSONL file (a K-wise ranking gives its C(K, 2) pairs), or
comparisons collected here from the toy world (the SFT policy's samples labelled by the
simulated annotators). Logged: the loss, the implicit rewards β·log π/π_ref of both sides, their
margin and accuracy, the summed log-probs of both sides (the chosen one often *falls* while the
margin rises), and on held-out prompts the gold reward and the KL to π_ref of samples.

Simplifications and choices: log-probs are summed over response tokens (the paper's; TRL's
IPO averages them); the reference log-probs of every pair are computed once before training;
dropout is off in the policy (TRL's `disable_dropout`); each step draws a random batch of pairs
(not epochs), so an exact resume needs only the RNG state; margins in the data are ignored
and the pairs of a K-wise ranking weigh one each.
"""
import dataclasses
import time

import numpy as np

from . import functional as F
from .annotators import collect_comparisons
from .autograd import Tensor, no_grad
from .config import check_choice, check_positive, check_range
from .data import collate, encode_pair, load_preferences, ranking_pairs, write_jsonl
from .metrics import evaluate
from .optim import AdamW, cosine_schedule, decay_groups
from .runs import (MetricsLog, StopOnInterrupt, end_of_step, load_checkpoint, load_run, new_run_dir, plot_curves,
                   progress, read_metrics, save_run, training_step, write_summary)
from .sampling import ModelPolicy, sequence_logprobs
from .tasks import get_task

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclasses.dataclass
class DPOConfig:
    beta: float = 0.1           # β: strength of the KL regularisation (> 0); small β lets π move far from π_ref
    loss_type: str = "sigmoid"  # sigmoid (DPO), ipo or hinge
    label_smoothing: float = 0.0  # ε of conservative DPO: assumed probability a label is flipped, in [0, 0.5)
    steps: int = 200            # optimizer steps (≥ 1)
    batch_size: int = 16        # preference pairs per step (≥ 1)
    lr: float = 1e-4            # peak learning rate (> 0)
    min_lr: float = 1e-5        # final learning rate of the cosine decay (≥ 0, ≤ lr)
    warmup_steps: int = 10      # linear warmup steps (≥ 0)
    weight_decay: float = 0.0   # AdamW decoupled weight decay (≥ 0)
    grad_clip: float = 1.0      # max global gradient norm (> 0)
    comparisons: int = 1000     # without --data: comparisons collected from the toy world (≥ 2)
    heldout_fraction: float = 0.1  # without --heldout-data: fraction of the pairs held out for evaluation, in (0, 1)
    eval_every: int = 50        # steps between evaluations (held-out pairs; gold reward and KL of samples) (≥ 1)
    eval_prompts: int = 200     # held-out task prompts for the final gold reward, KL and win rate (≥ 1)
    checkpoint_every: int = 50  # steps between checkpoints (≥ 1)
    seed: int = 0               # seeds the comparisons, the batches and the samples

    def __post_init__(self):
        check_positive(self, "beta", "steps", "batch_size", "eval_every", "eval_prompts", "checkpoint_every")
        check_choice(self, "loss_type", LOSS_TYPES)
        check_range(self, "label_smoothing", 0.0, 0.5, high_open=True)
        check_range(self, "comparisons", 2, None)
        check_range(self, "heldout_fraction", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self, "lr", 0.0, None, low_open=True)
        check_range(self, "min_lr", 0.0, self.lr)
        check_range(self, "warmup_steps", 0, None)
        check_range(self, "weight_decay", 0.0, None)
        check_range(self, "grad_clip", 0.0, None, low_open=True)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta=0.1, loss_type="sigmoid", label_smoothing=0.0):
    """Per-pair losses (B,) Tensor and the implicit rewards of both sides, (B,) arrays without gradient.

    Arguments are summed response log-probs, (B,) each: the policy's (Tensors, differentiated)
    and the reference's (arrays or Tensors; no gradient flows into them).
    """
    pc, pr = _tensor(policy_chosen_logps), _tensor(policy_rejected_logps)
    rc, rr = (np.asarray(getattr(x, "data", x), pc.dtype) for x in (ref_chosen_logps, ref_rejected_logps))
    # h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))
    h = (pc - pr) - (rc - rr)                                                      # (B,)
    if loss_type == "sigmoid":
        # L = −(1 − ε) log σ(βh) − ε log σ(−βh)           (DPO eq. 7; conservative DPO for ε > 0)
        losses = -F.logsigmoid(h * beta) * (1.0 - label_smoothing) - F.logsigmoid(h * -beta) * label_smoothing
    elif loss_type == "ipo":
        # L = (h − 1/(2β))²                                 (IPO, Azar et al. 2023, eq. 17)
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "hinge":
        # L = max(0, 1 − βh)                                (SLiC, Zhao et al. 2023)
        losses = (1.0 - h * beta).relu()
    else:
        raise ValueError(f"dpo_loss: loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    # implicit rewards r̂(x, y) = β log π(y|x)/π_ref(y|x)  (DPO eq. 5 without β log Z(x))
    chosen_rewards = beta * (pc.data - rc)                                         # (B,)
    rejected_rewards = beta * (pr.data - rr)                                       # (B,)
    return losses, chosen_rewards, rejected_rewards


def _tensor(x):
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x, np.float64))


def response_logps(model, batch, names=None):
    """Summed response log-probs (B,) Tensor of a collated batch; an empty response is an error.

    names: what to call each row in that error (default "example i").
    """
    input_ids, attention_mask, response_mask = batch
    empty = np.flatnonzero(~np.asarray(response_mask, bool).any(axis=1))
    if len(empty):
        name = names[empty[0]] if names is not None else f"example {empty[0]}"
        raise ValueError(f"dpo: {name} has an empty response mask (no response token to score); "
                         "every chosen and rejected response needs at least one token")
    return sequence_logprobs(model, input_ids, attention_mask, response_mask)[1]   # (B,)


def preference_pairs(rows):
    """Pairwise or K-wise rows -> [(prompt, chosen, rejected)]; a ranking of K gives its C(K, 2) pairs."""
    pairs = []
    for row in rows:
        if "chosen" in row:
            pairs.append((row["prompt"], row["chosen"], row["rejected"]))
        else:
            pairs += [(row["prompt"], row["responses"][i], row["responses"][j]) for i, j in ranking_pairs(row["ranking"])]
    return pairs


def encode_pairs(tokenizer, pairs, what, block_size=None):
    """[(prompt, chosen, rejected)] -> the encoded (chosen, rejected) of each, and their names for errors."""
    examples = [(encode_pair(tokenizer, p, c), encode_pair(tokenizer, p, r)) for p, c, r in pairs]
    names = [f"{what} {i} (prompt {p!r})" for i, (p, _, _) in enumerate(pairs)]
    for name, (chosen, rejected) in zip(names, examples):
        if block_size is not None and max(len(chosen[0]), len(rejected[0])) > block_size:
            raise ValueError(f"dpo: {name} is {max(len(chosen[0]), len(rejected[0]))} tokens long, more than the "
                             f"model's block_size {block_size}")
    return examples, names


def pair_logps(model, examples, index, pad_id, names):
    """Summed log-probs of the chosen and the rejected responses of pairs `index`: (B,), (B,) Tensors.

    Both sides go through the model in one batch of 2B rows (the reference's concatenated forward).
    """
    rows = [examples[i][0] for i in index] + [examples[i][1] for i in index]
    logps = response_logps(model, collate(rows, pad_id),
                           [f"{names[i]} ({side})" for side in ("chosen", "rejected") for i in index])   # (2B,)
    return logps[:len(index)], logps[len(index):]


def all_pair_logps(model, examples, pad_id, names, batch_size=64):
    """(N, 2) array: summed log-probs of the chosen and rejected side of every pair, without a graph."""
    out = np.zeros((len(examples), 2))
    with no_grad():
        for i in range(0, len(examples), batch_size):
            index = range(i, min(i + batch_size, len(examples)))
            chosen, rejected = pair_logps(model, examples, index, pad_id, names)
            out[index.start:index.stop] = np.stack([chosen.data, rejected.data], axis=1)
    return out


def dpo(config, *, init, out=None, data=None, heldout_data=None, resume=False, quiet=False):
    """Train a policy with DPO from the SFT run directory `init`; returns the new run directory.

    data: preference JSONL to train on (default: `config.comparisons` collected from the toy world);
    heldout_data: preference JSONL to evaluate on (default: the last `heldout_fraction` of the pairs).
    """
    rng = np.random.default_rng(config.seed)
    policy, tokenizer, init_config = load_run(init)
    reference, _, _ = load_run(init)   # π_ref: a frozen copy of the SFT model
    task = get_task(init_config["task"]) if init_config.get("task") else None
    run_dir = new_run_dir("dpo", out)
    collected = run_dir / "comparisons.jsonl"
    if data is not None or (resume and collected.is_file()):
        rows = load_preferences(data if data is not None else collected)
    elif task is not None:
        rows = collect_comparisons(task, ModelPolicy(reference, tokenizer, task.max_response_tokens),
                                   task.prompts("train")[:config.comparisons], rng=rng)
        write_jsonl(collected, rows)
    else:
        raise ValueError(f"{init} was trained on a user corpus: give DPO preference pairs with --data")
    pairs = preference_pairs(rows)
    if heldout_data is not None:
        heldout_pairs = preference_pairs(load_preferences(heldout_data))
    else:
        n_heldout = max(1, int(len(pairs) * config.heldout_fraction))
        pairs, heldout_pairs = pairs[:-n_heldout], pairs[-n_heldout:]
    if not pairs or not heldout_pairs:
        raise ValueError(f"DPO needs preference pairs to train on and to hold out; got {len(pairs)} and "
                         f"{len(heldout_pairs)}")
    train, names = encode_pairs(tokenizer, pairs, "pair", policy.config.block_size)
    heldout, heldout_names = encode_pairs(tokenizer, heldout_pairs, "held-out pair", policy.config.block_size)

    # log π_ref of both sides of every pair, computed once: (N, 2) and (N_heldout, 2)
    ref_logps = all_pair_logps(reference, train, tokenizer.pad_id, names)
    ref_heldout = all_pair_logps(reference, heldout, tokenizer.pad_id, heldout_names)
    policy.eval()   # dropout off: π and π_ref must agree exactly at step 0
    optimizer = AdamW(decay_groups(policy, config.weight_decay), lr=config.lr)
    step = load_checkpoint(run_dir, rng, model=policy, optimizer=optimizer) if resume else 0
    eval_prompts = task.prompts("eval")[:config.eval_prompts] if task else None

    def evaluation(step):
        """Held-out pair statistics; gold reward and KL of samples on 64 held-out prompts (all at the end)."""
        row = heldout_stats(all_pair_logps(policy, heldout, tokenizer.pad_id, heldout_names), ref_heldout, config)
        if task is not None:
            samples = sample_stats(policy, reference, task, eval_prompts[:64], np.random.default_rng([config.seed, step]))
            row.update(gold_reward=samples["gold_reward"], kl=samples["kl_k1"])
        return row

    started = time.time()
    with MetricsLog(run_dir, resume_from_step=step if resume else None) as log, \
            progress(config.steps, "dpo", quiet, initial=step) as bar, StopOnInterrupt() as stop:
        if step == 0:
            log.log(0, **evaluation(0))   # where the curves start: π = π_ref
        while step < config.steps:
            index = rng.choice(len(train), size=min(config.batch_size, len(train)), replace=False)
            chosen, rejected = pair_logps(policy, train, index, tokenizer.pad_id, names)   # (B,), (B,)
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                chosen, rejected, ref_logps[index, 0], ref_logps[index, 1],
                config.beta, config.loss_type, config.label_smoothing)
            loss = losses.mean()
            optimizer.lr = cosine_schedule(step, max_lr=config.lr, warmup_steps=config.warmup_steps,
                                           total_steps=config.steps, min_lr=config.min_lr)
            grad_norm = training_step(step, loss, policy, optimizer, config.grad_clip)
            step += 1
            row = {"loss": float(loss.data), **pair_stats(chosen.data, rejected.data, chosen_rewards, rejected_rewards),
                   "lr": optimizer.lr, "grad_norm": grad_norm}
            if step % config.eval_every == 0 or step == config.steps:
                row.update(evaluation(step))
            log.log(step, **row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}")
            end_of_step(run_dir, step, config.steps, config.checkpoint_every, stop, rng,
                        model=policy, optimizer=optimizer)

    save_run(run_dir, stage="dpo", task=init_config.get("task"), model=policy, tokenizer=tokenizer,
             stage_config={**dataclasses.asdict(config), "data": data, "heldout_data": heldout_data}, init=init)
    rows = read_metrics(run_dir)
    plot_curves(rows, ["loss", "accuracy", "margin", "heldout_accuracy", "heldout_margin"],
                run_dir / "curves.png", f"DPO ({config.loss_type}, β = {config.beta})")
    plot_curves(rows, ["heldout_chosen_logps", "heldout_rejected_logps", "gold_reward", "kl"],
                run_dir / "logps_gold_kl.png", "DPO: log-probs of held-out pairs, gold reward and KL of samples")
    summary = {**heldout_stats(all_pair_logps(policy, heldout, tokenizer.pad_id, heldout_names), ref_heldout, config),
               "heldout_chosen_logps_before": float(ref_heldout[:, 0].mean()),
               "heldout_rejected_logps_before": float(ref_heldout[:, 1].mean()),
               "n_train": len(train), "n_heldout": len(heldout), "seconds": time.time() - started}
    if task is not None:
        final = sample_stats(policy, reference, task, eval_prompts, np.random.default_rng(config.seed + 1),
                             baseline=ModelPolicy(reference, tokenizer, task.max_response_tokens))
        summary.update({key: final[key] for key in ("gold_reward", "gold_reward_ci95", "win_rate", "win_rate_ci95",
                                                    "kl_k1", "kl_k3", "distinct_2", "length")})
    write_summary(run_dir, summary)
    return run_dir


def pair_stats(chosen_logps, rejected_logps, chosen_rewards, rejected_rewards):
    """What the reference implementation logs for a batch of pairs (means over the batch)."""
    return {"accuracy": float(np.mean(chosen_rewards > rejected_rewards)),
            "margin": float(np.mean(chosen_rewards - rejected_rewards)),
            "chosen_rewards": float(np.mean(chosen_rewards)), "rejected_rewards": float(np.mean(rejected_rewards)),
            "chosen_logps": float(np.mean(chosen_logps)), "rejected_logps": float(np.mean(rejected_logps))}


def heldout_stats(logps, ref_logps, config):
    """Loss and pair statistics, prefixed `heldout_`, from (N, 2) policy and reference log-probs of held-out pairs."""
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:, 0], logps[:, 1], ref_logps[:, 0], ref_logps[:, 1],
                                                        config.beta, config.loss_type, config.label_smoothing)
    stats = {"loss": float(losses.data.mean()), **pair_stats(logps[:, 0], logps[:, 1], chosen_rewards, rejected_rewards)}
    return {f"heldout_{key}": value for key, value in stats.items()}


def sample_stats(policy, reference, task, prompts, rng, baseline=None):
    """`metrics.evaluate` of the policy on held-out prompts: gold reward, KL(π ‖ π_ref), win rate vs `baseline`."""
    sampler = ModelPolicy(policy, task.tokenizer, task.max_response_tokens)
    return evaluate(sampler, task, prompts, rng=rng, baseline=baseline, ref_model=reference)
