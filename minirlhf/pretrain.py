"""Stage 1 — self-supervised next-token pretraining (Radford et al. 2018/2019).

The model learns to continue web text: for a token stream u_1..u_N, maximise

    L(θ) = Σ_i log p_θ(u_i | u_{i-T}, ..., u_{i-1})                      (GPT-1, eq. 1)

over random windows of T + 1 tokens cut from the stream, with AdamW, linear warmup and cosine
decay of the learning rate, global gradient clipping. Every `eval_every` steps the mean loss on
held-out documents (and its perplexity exp(loss)) is logged; every `sample_every` steps a few
prompts are continued so you can watch the format being learnt.

The corpus is the task's web-like text (`task.pretraining_corpus`) — the task's format with mixed
quality, rude, rambling, off-topic — or a plain-text file of your own (`data=`, one document per
line, with a word tokenizer built from it). Documents are encoded `<bos> doc <eos>` and
concatenated; the last `heldout_fraction` of them are held out.

Simplifications: no gradient accumulation or mixed precision; windows may cross document
boundaries (as in GPT-2's packed training).
"""
import dataclasses
import time

import numpy as np

from . import functional as F
from .autograd import no_grad
from .config import check_positive, check_range
from .data import load_corpus, random_windows, token_stream
from .model import GPT, GPTConfig
from .optim import AdamW, cosine_schedule, decay_groups
from .runs import (MetricsLog, StopOnInterrupt, end_of_step, load_checkpoint, new_run_dir, plot_curves, progress,
                   read_metrics, save_run, training_step, write_summary)
from .sampling import ModelPolicy
from .tasks import TASK_NAMES, get_task
from .tokenizer import WordTokenizer


@dataclasses.dataclass
class PretrainConfig:
    task: str = "sentiment"     # built-in toy task whose web-like corpus is used; may be None or "" with data=
    steps: int = 1500           # optimizer steps (≥ 1)
    batch_size: int = 32        # windows per step (≥ 1)
    n_layer: int = 2            # transformer blocks
    n_head: int = 4             # attention heads
    n_embd: int = 64            # width of the residual stream
    block_size: int = 0         # context length in tokens; 0 = the task's suggestion
    dropout: float = 0.0        # dropout probability, in [0, 1)
    lr: float = 3e-3            # peak learning rate (> 0)
    min_lr: float = 3e-4        # final learning rate of the cosine decay (≥ 0, ≤ lr)
    warmup_steps: int = 100     # linear warmup steps (≥ 0)
    weight_decay: float = 0.1   # AdamW decoupled weight decay on matrices and embeddings (≥ 0)
    grad_clip: float = 1.0      # max global gradient norm (> 0)
    n_documents: int = 0        # corpus size in documents; 0 = the task's default
    heldout_fraction: float = 0.1  # fraction of documents held out for the eval loss, in (0, 1)
    eval_every: int = 100       # steps between held-out evaluations (≥ 1)
    eval_batches: int = 8       # held-out windows evaluated = eval_batches × batch_size (≥ 1)
    sample_every: int = 500     # steps between printed samples (0 = never)
    checkpoint_every: int = 100  # steps between checkpoints (≥ 1)
    seed: int = 0               # seeds the corpus, the init and the batches (≥ 0)

    def __post_init__(self):
        if self.task and self.task not in TASK_NAMES:
            raise ValueError(f"PretrainConfig.task: unknown task {self.task!r}; choose one of {', '.join(TASK_NAMES)}")
        check_range(self, "seed", 0, None)
        check_positive(self, "steps", "batch_size", "n_layer", "n_head", "n_embd", "eval_every",
                       "eval_batches", "checkpoint_every")
        check_range(self, "block_size", 0, None)
        check_range(self, "n_documents", 0, None)
        check_range(self, "warmup_steps", 0, None)
        check_range(self, "sample_every", 0, None)
        check_range(self, "dropout", 0.0, 1.0, high_open=True)
        check_range(self, "heldout_fraction", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self, "lr", 0.0, None, low_open=True)
        check_range(self, "min_lr", 0.0, self.lr)
        check_range(self, "weight_decay", 0.0, None)
        check_range(self, "grad_clip", 0.0, None, low_open=True)


def pretrain(config, *, out=None, data=None, resume=False, quiet=False):
    """Run stage 1 and return its run directory (see `minirlhf.runs` for the layout)."""
    rng = np.random.default_rng(config.seed)
    if data is None:
        if not config.task:
            raise ValueError("PretrainConfig.task is empty: name a built-in task or give your own corpus (data=)")
        task = get_task(config.task)
        tokenizer = task.tokenizer
        documents = task.pretraining_corpus(rng, config.n_documents or None)
        block_size = config.block_size or task.block_size
    else:
        task = None
        documents = load_corpus(data)
        tokenizer = WordTokenizer.from_corpus(documents)
        block_size = config.block_size or 64
    n_heldout = max(1, int(len(documents) * config.heldout_fraction))
    train_stream = token_stream(tokenizer, documents[:-n_heldout])         # (N,)
    heldout_stream = token_stream(tokenizer, documents[-n_heldout:])
    heldout_windows = heldout_batch(heldout_stream, config.eval_batches * config.batch_size, block_size)

    model = GPT(GPTConfig(tokenizer.vocab_size, block_size, config.n_layer, config.n_head, config.n_embd,
                          config.dropout), rng)
    optimizer = AdamW(decay_groups(model, config.weight_decay), lr=config.lr)
    run_dir = new_run_dir("pretrain", out)
    stage_config = {**dataclasses.asdict(config), "block_size": block_size, "data": data}
    step = load_checkpoint(run_dir, rng, model=model, optimizer=optimizer) if resume else 0
    started = time.time()
    with MetricsLog(run_dir, resume_from_step=step if resume else None) as log, \
            progress(config.steps, "pretrain", quiet, initial=step) as bar, StopOnInterrupt() as stop:
        while step < config.steps:
            model.train()
            windows = random_windows(train_stream, config.batch_size, block_size, rng)  # (B, T+1)
            # L = −mean_i log p(u_i | u_<i) over the window
            logits = model(windows[:, :-1])                                             # (B, T, V)
            loss = F.cross_entropy(logits, windows[:, 1:])
            optimizer.lr = cosine_schedule(step, max_lr=config.lr, warmup_steps=config.warmup_steps,
                                           total_steps=config.steps, min_lr=config.min_lr)
            grad_norm = training_step(step, loss, model, optimizer, config.grad_clip)
            step += 1
            row = {"loss": float(loss.data), "lr": optimizer.lr, "grad_norm": grad_norm}
            if step % config.eval_every == 0 or step == config.steps:
                row["heldout_loss"] = heldout_loss(model, heldout_windows, config.batch_size)
                row["heldout_ppl"] = float(np.exp(row["heldout_loss"]))
            log.log(step, **row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            if task is not None and config.sample_every and step % config.sample_every == 0:
                print_samples(bar, model, task, step)
            end_of_step(run_dir, step, config.steps, config.checkpoint_every, stop, rng,
                        model=model, optimizer=optimizer)

    save_run(run_dir, stage="pretrain", task=config.task if task else None, model=model,
             tokenizer=tokenizer, stage_config=stage_config)
    final = heldout_loss(model, heldout_windows, config.batch_size)
    plot_curves(read_metrics(run_dir), ["loss", "heldout_loss", "lr"], run_dir / "curves.png", "pretraining")
    write_summary(run_dir, {"heldout_loss": final, "heldout_ppl": float(np.exp(final)),
                            "unigram_entropy": unigram_entropy(train_stream, tokenizer.vocab_size),
                            "n_params": model.num_params(), "train_tokens": int(len(train_stream)),
                            "seconds": time.time() - started})
    return run_dir


def heldout_batch(stream, n_windows, block_size):
    """Fixed, evenly spaced held-out windows (n, T + 1), so every evaluation sees the same text."""
    starts = np.linspace(0, len(stream) - block_size - 1, n_windows).astype(np.int64)
    return np.stack([stream[s:s + block_size + 1] for s in starts])


def heldout_loss(model, windows, batch_size):
    """Mean next-token loss of `model` on the held-out windows, in eval mode, without a graph."""
    model.eval()
    losses = []
    with no_grad():
        for i in range(0, len(windows), batch_size):
            chunk = windows[i:i + batch_size]
            losses.append(float(F.cross_entropy(model(chunk[:, :-1]), chunk[:, 1:]).data))
    return float(np.mean(losses))


def unigram_entropy(stream, vocab_size):
    """Entropy (nats) of the corpus's token frequencies: the loss of the best context-free model."""
    p = np.bincount(stream, minlength=vocab_size) / len(stream)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def print_samples(bar, model, task, step, n=3):
    """Continue the first `n` eval prompts so progress on the format is visible."""
    prompts = task.prompts("eval")[:n]
    policy = ModelPolicy(model.eval(), task.tokenizer, task.max_response_tokens)
    for prompt, response in zip(prompts, policy(prompts, np.random.default_rng(step))):
        bar.write(f"[step {step}] {prompt} | {response}")
