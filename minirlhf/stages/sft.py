"""Stage 2 — supervised fine-tuning (SFT) on human demonstrations (Ouyang et al. 2022, Sec. 3.5).

Starting from the pretrained model, maximise the likelihood of demonstrated responses y given
their prompts x, counting **only the response tokens** (and the `<eos>` that ends them):

    L_SFT(θ) = − Σ_{(x,y)} Σ_t log π_θ(y_t | x, y_<t)  /  Σ_{(x,y)} |y|

The prompt and the padding are masked by `response_mask` inside the shared `sequence_logprobs`
(the same function the reward model, PPO and DPO use), so they receive exactly zero gradient.

Likelihood of human text is only a proxy for what humans prefer: this stage logs the held-out
demonstration loss (what it optimises) and the gold reward of samples on held-out eval prompts
before and after (what we care about), so both can be watched.

Demonstrations come from the task of the `init` run (`task.demonstrations`), from a JSONL file of
`{"prompt", "completion"}` rows (`data=`), or directly as a list of pairs (`demonstrations=`, how
rejection-sampling fine-tuning reuses this stage).

Simplifications: batches are drawn at random each step (not in epochs), so a resumed run only
needs the RNG state to continue exactly.
"""
import dataclasses

import numpy as np

from minirlhf.engine.autograd import no_grad
from minirlhf.engine.optim import AdamW, check_finite, clip_grad_norm, cosine_schedule, decay_groups
from minirlhf.lm.data import collate, encode_pair, load_sft
from minirlhf.lm.logprobs import sequence_logprobs
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.config import check_positive, check_range, option
from minirlhf.stages.runs import Run, load_run
from minirlhf.world.metrics import evaluate
from minirlhf.world.tasks import get_task


@dataclasses.dataclass
class SFTConfig:
    steps: int = option(300, "optimizer steps (≥ 1)")
    batch_size: int = option(32, "demonstrations per step (≥ 1)")
    lr: float = option(1e-3, "peak learning rate (> 0)")
    min_lr: float = option(1e-4, "final learning rate of the cosine decay (≥ 0, ≤ lr)")
    warmup_steps: int = option(20, "linear warmup steps (≥ 0)")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (≥ 0)")
    grad_clip: float = option(1.0, "max global gradient norm (> 0)")
    n_demonstrations: int = option(0, "demonstrations drawn from the task; 0 = the task's default")
    heldout_fraction: float = option(0.1, "fraction of demonstrations held out for the eval loss, in (0, 1)")
    eval_every: int = option(50, "steps between held-out loss evaluations (≥ 1)")
    eval_prompts: int = option(200, "held-out task prompts sampled for the gold reward before/after (≥ 1)")
    checkpoint_every: int = option(50, "steps between checkpoints (≥ 1)")
    seed: int = option(0, "seeds the demonstrations, the batches and the samples")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "eval_every", "eval_prompts", "checkpoint_every")
        check_range(self, "warmup_steps", 0, None)
        check_range(self, "n_demonstrations", 0, None)
        check_range(self, "heldout_fraction", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self, "lr", 0.0, None, low_open=True)
        check_range(self, "min_lr", 0.0, self.lr)
        check_range(self, "weight_decay", 0.0, None)
        check_range(self, "grad_clip", 0.0, None, low_open=True)


def sft_loss(model, batch):
    """Mean negative log-likelihood of the response tokens of a collated batch (a scalar Tensor)."""
    input_ids, attention_mask, response_mask = batch
    token_logprobs, _ = sequence_logprobs(model, input_ids, attention_mask, response_mask)   # (B, T)
    # L = − Σ_t log π(y_t | x, y_<t) / (number of response tokens)
    return -token_logprobs.sum() * (1.0 / response_mask.sum())


def train_sft(config, *, init, out=None, data=None, demonstrations=None, resume=False, quiet=False):
    """Run stage 2 from the run directory `init`; returns the new run directory.

    The loop: draw demonstrations → `sft_update` → log (the held-out loss every eval_every steps)."""
    rng = np.random.default_rng(config.seed)
    model, tokenizer, init_config = load_run(init)
    task = get_task(init_config["task"]) if init_config.get("task") else None
    if demonstrations is None:
        if data is not None:
            demonstrations = load_sft(data)
        elif task is not None:
            demonstrations = task.demonstrations(rng, config.n_demonstrations or None)
        else:
            raise ValueError(f"{init} was trained on a user corpus: give SFT demonstrations with --data")
    examples = [encode_pair(tokenizer, prompt, completion) for prompt, completion in demonstrations]
    check_vocabulary(examples, tokenizer, data or "the demonstrations")
    n_heldout = max(1, int(len(examples) * config.heldout_fraction))
    train, heldout = examples[:-n_heldout], examples[-n_heldout:]
    if len(train) < 1:
        raise ValueError(f"SFT needs at least 2 demonstrations, got {len(examples)}")

    # "before" is the init model's, so it is measured before a resumed run loads its checkpoint
    eval_prompts = task.prompts("eval")[:config.eval_prompts] if task else None
    before = gold_of_samples(model, task, eval_prompts, config.seed) if task else {}
    optimizer = AdamW(decay_groups(model, config.weight_decay), lr=config.lr)
    run = Run("sft", out, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=config.checkpoint_every, model=model, optimizer=optimizer)
    with run:
        while run.step < config.steps:
            chosen = rng.choice(len(train), size=min(config.batch_size, len(train)), replace=False)
            batch = collate([train[i] for i in chosen], tokenizer.pad_id)
            optimizer.lr = cosine_schedule(run.step, max_lr=config.lr, warmup_steps=config.warmup_steps,
                                           total_steps=config.steps, min_lr=config.min_lr)
            stats = sft_update(model, optimizer, batch, config.grad_clip)
            if run.due(config.eval_every):
                stats["heldout_loss"] = heldout_loss(model, heldout, tokenizer.pad_id, config.batch_size)
            run.log(**stats, lr=optimizer.lr, show=["loss"])

    run.save(stage="sft", task=init_config.get("task"), model=model, tokenizer=tokenizer,
             stage_config={**dataclasses.asdict(config), "data": data}, init=init)
    summary = {"heldout_loss": heldout_loss(model, heldout, tokenizer.pad_id, config.batch_size),
               "n_train": len(train), "n_heldout": len(heldout), "seconds": run.seconds}
    if task is not None:
        after = gold_of_samples(model, task, eval_prompts, config.seed)
        summary.update({"gold_reward_before": before["gold_reward"], "gold_reward_after": after["gold_reward"],
                        "gold_reward_after_ci95": after["gold_reward_ci95"]})
    return run.finish(summary, curves=["loss", "heldout_loss", "lr"], title="SFT")


def sft_update(model, optimizer, batch, grad_clip):
    """One SFT step on a collated batch of demonstrations; -> {loss, grad_norm}."""
    model.train()
    loss = sft_loss(model, batch)
    optimizer.zero_grad()
    loss.backward()
    check_finite(loss, model)
    grad_norm = clip_grad_norm(optimizer.params, grad_clip)
    optimizer.step()
    return {"loss": float(loss.data), "grad_norm": grad_norm}


def heldout_loss(model, examples, pad_id, batch_size):
    """Mean response-token NLL over held-out demonstrations (token-weighted), without a graph."""
    model.eval()
    total, count = 0.0, 0
    with no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i:i + batch_size], pad_id)
            n_tokens = int(batch[2].sum())
            total += float(sft_loss(model, batch).data) * n_tokens
            count += n_tokens
    return total / count


def gold_of_samples(model, task, prompts, seed):
    """Gold reward (mean, CI) of one sample per prompt at temperature 1, with a fixed sampling seed."""
    policy = ModelPolicy(model.eval(), task.tokenizer, task.max_response_tokens)
    return evaluate(policy, task, prompts, rng=np.random.default_rng(seed + 1))


def check_vocabulary(examples, tokenizer, source, max_unknown=0.01):
    """Stop when the data does not fit the model's vocabulary (more than 1% unknown tokens)."""
    ids = np.concatenate([np.asarray(ids) for ids, _ in examples])
    unknown = float(np.mean(ids == tokenizer.unk_id))
    if unknown > max_unknown:
        raise ValueError(f"{source}: {unknown:.0%} of the tokens are not in the model's vocabulary "
                         f"({tokenizer.vocab_size} tokens); use data in the language the model was pretrained on")
