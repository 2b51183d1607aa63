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

import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor, no_grad
from minirlhf.engine.optim import AdamW, check_finite, clip_grad_norm, cosine_schedule, decay_groups
from minirlhf.lm.data import collate, encode_pair, load_preferences, ranking_pairs, write_jsonl
from minirlhf.lm.logprobs import sequence_logprobs
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.config import check_choice, check_positive, check_range, option
from minirlhf.stages.runs import Run, load_run, new_run_dir
from minirlhf.world.annotators import collect_comparisons
from minirlhf.world.metrics import evaluate
from minirlhf.world.tasks import get_task

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


@dataclasses.dataclass
class DPOConfig:
    beta: float = option(0.1, "β: strength of the KL regularisation (> 0); small β lets π move far from π_ref")
    loss_type: str = option("sigmoid", "sigmoid (DPO), ipo or hinge")
    label_smoothing: float = option(0.0, "ε of conservative DPO: assumed probability a label is flipped, in [0, 0.5)")
    steps: int = option(200, "optimizer steps (≥ 1)")
    batch_size: int = option(16, "preference pairs per step (≥ 1)")
    lr: float = option(1e-4, "peak learning rate (> 0)")
    min_lr: float = option(1e-5, "final learning rate of the cosine decay (≥ 0, ≤ lr)")
    warmup_steps: int = option(10, "linear warmup steps (≥ 0)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (≥ 0)")
    grad_clip: float = option(1.0, "max global gradient norm (> 0)")
    comparisons: int = option(1000, "without --data: comparisons collected from the toy world (≥ 2)")
    heldout_fraction: float = option(0.1, "without --heldout-data: fraction of the pairs held out for evaluation, in (0, 1)")
    eval_every: int = option(50, "steps between evaluations (held-out pairs; gold reward and KL of samples) (≥ 1)")
    eval_prompts: int = option(200, "held-out task prompts for the final gold reward, KL and win rate (≥ 1)")
    checkpoint_every: int = option(50, "steps between checkpoints (≥ 1)")
    seed: int = option(0, "seeds the comparisons, the batches and the samples")

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


def response_logps(model, batch):
    """Summed response log-probs (B,) Tensor of a collated batch; a row without response tokens is an error."""
    input_ids, attention_mask, response_mask = batch
    empty = np.flatnonzero(~np.asarray(response_mask, bool).any(axis=1))
    if len(empty):
        raise ValueError(f"dpo: row {empty[0]} of the batch has an empty response mask (no response token to "
                         "score); every chosen and rejected response needs at least one token")
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
    """[(prompt, chosen, rejected)] -> the encoded (chosen, rejected) of each; a pair longer than the
    model's context is an error naming it (`what` i, its prompt)."""
    examples = [(encode_pair(tokenizer, p, c), encode_pair(tokenizer, p, r)) for p, c, r in pairs]
    for i, ((prompt, _, _), (chosen, rejected)) in enumerate(zip(pairs, examples)):
        if block_size is not None and max(len(chosen[0]), len(rejected[0])) > block_size:
            raise ValueError(f"dpo: {what} {i} (prompt {prompt!r}) is {max(len(chosen[0]), len(rejected[0]))} "
                             f"tokens long, more than the model's block_size {block_size}")
    return examples


def pair_logps(model, examples, index, pad_id):
    """Summed log-probs of the chosen and the rejected responses of pairs `index`: (B,), (B,) Tensors.

    Both sides go through the model in one batch of 2B rows (the reference's concatenated forward).
    """
    rows = [examples[i][0] for i in index] + [examples[i][1] for i in index]
    logps = response_logps(model, collate(rows, pad_id))                                 # (2B,)
    return logps[:len(index)], logps[len(index):]


def all_pair_logps(model, examples, pad_id, batch_size=64):
    """(N, 2) array: summed log-probs of the chosen and rejected side of every pair, without a graph."""
    out = np.zeros((len(examples), 2))
    with no_grad():
        for i in range(0, len(examples), batch_size):
            index = range(i, min(i + batch_size, len(examples)))
            chosen, rejected = pair_logps(model, examples, index, pad_id)
            out[index.start:index.stop] = np.stack([chosen.data, rejected.data], axis=1)
    return out


def train_dpo(config, *, init, out=None, data=None, heldout_data=None, resume=False, quiet=False):
    """Train a policy with DPO from the SFT run directory `init`; returns the new run directory.

    The loop: draw pairs → `dpo_update` → log (held-out pairs and samples every eval_every steps).

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
    train = encode_pairs(tokenizer, pairs, "pair", policy.config.block_size)
    heldout = encode_pairs(tokenizer, heldout_pairs, "held-out pair", policy.config.block_size)

    # log π_ref of both sides of every pair, computed once: (N, 2) and (N_heldout, 2)
    ref_logps = all_pair_logps(reference, train, tokenizer.pad_id)
    ref_heldout = all_pair_logps(reference, heldout, tokenizer.pad_id)
    policy.eval()   # dropout off: π and π_ref must agree exactly at step 0
    optimizer = AdamW(decay_groups(policy, config.weight_decay), lr=config.lr)
    eval_prompts = task.prompts("eval")[:config.eval_prompts] if task else None

    def evaluation(step):
        """Held-out pair statistics; gold reward and KL of samples on 64 held-out prompts (all at the end)."""
        row = heldout_stats(all_pair_logps(policy, heldout, tokenizer.pad_id), ref_heldout, config)
        if task is not None:
            samples = sample_stats(policy, reference, task, eval_prompts[:64], np.random.default_rng([config.seed, step]))
            row.update(gold_reward=samples["gold_reward"], kl=samples["kl_k1"])
        return row

    run = Run("dpo", run_dir, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=config.checkpoint_every, model=policy, optimizer=optimizer)
    with run:
        if run.step == 0:
            run.log_start(**evaluation(0))   # where the curves start: π = π_ref
        while run.step < config.steps:
            index = rng.choice(len(train), size=min(config.batch_size, len(train)), replace=False)
            optimizer.lr = cosine_schedule(run.step, max_lr=config.lr, warmup_steps=config.warmup_steps,
                                           total_steps=config.steps, min_lr=config.min_lr)
            stats = dpo_update(policy, optimizer, train, index, ref_logps[index], tokenizer.pad_id, config)
            if run.due(config.eval_every):
                stats.update(evaluation(run.step + 1))
            run.log(**stats, lr=optimizer.lr, show=["loss", "accuracy"])

    run.save(stage="dpo", task=init_config.get("task"), model=policy, tokenizer=tokenizer,
             stage_config={**dataclasses.asdict(config), "data": data, "heldout_data": heldout_data}, init=init)
    summary = {**heldout_stats(all_pair_logps(policy, heldout, tokenizer.pad_id), ref_heldout, config),
               "heldout_chosen_logps_before": float(ref_heldout[:, 0].mean()),
               "heldout_rejected_logps_before": float(ref_heldout[:, 1].mean()),
               "n_train": len(train), "n_heldout": len(heldout), "seconds": run.seconds}
    if task is not None:
        final = sample_stats(policy, reference, task, eval_prompts, np.random.default_rng(config.seed + 1),
                             baseline=ModelPolicy(reference, tokenizer, task.max_response_tokens))
        summary.update({key: final[key] for key in ("gold_reward", "gold_reward_ci95", "win_rate", "win_rate_ci95",
                                                    "kl_k1", "kl_k3", "distinct_2", "length")})
    return run.finish(summary, curves=["loss", "accuracy", "margin", "heldout_accuracy", "heldout_margin"],
                      title=f"DPO ({config.loss_type}, β = {config.beta})",
                      logps_gold_kl=["heldout_chosen_logps", "heldout_rejected_logps", "gold_reward", "kl"])


def dpo_update(policy, optimizer, examples, index, ref_logps, pad_id, config):
    """One DPO step on pairs `index` of the encoded `examples`, with their reference log-probs (b, 2); -> stats.

    pair log-probs → `dpo_loss` → backward → step.
    """
    chosen, rejected = pair_logps(policy, examples, index, pad_id)                  # (b,), (b,)
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_logps[:, 0], ref_logps[:, 1],
                                                        config.beta, config.loss_type, config.label_smoothing)
    loss = losses.mean()
    optimizer.zero_grad()
    loss.backward()
    check_finite(loss, policy)
    grad_norm = clip_grad_norm(optimizer.params, config.grad_clip)
    optimizer.step()
    return {"loss": float(loss.data), **pair_stats(chosen.data, rejected.data, chosen_rewards, rejected_rewards),
            "grad_norm": grad_norm}


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
