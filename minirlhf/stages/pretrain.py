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

import numpy as np

from minirlhf.engine.autograd import no_grad
from minirlhf.engine.optim import AdamW, check_finite, clip_grad_norm, cosine_schedule, decay_groups
from minirlhf.lm.data import load_corpus, random_windows, token_stream
from minirlhf.lm.logprobs import next_token_loss
from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.lm.tokenizer import WordTokenizer
from minirlhf.stages.config import check_positive, check_range, option
from minirlhf.stages.runs import Run
from minirlhf.world.tasks import TASK_NAMES, get_task


@dataclasses.dataclass
class PretrainConfig:
    task: str = option("sentiment", "built-in toy task whose web-like corpus is used; may be None or \"\" with data=")
    steps: int = option(1500, "optimizer steps (≥ 1)")
    batch_size: int = option(32, "windows per step (≥ 1)")
    n_layer: int = option(2, "transformer blocks")
    n_head: int = option(4, "attention heads")
    n_embd: int = option(64, "width of the residual stream")
    block_size: int = option(0, "context length in tokens; 0 = the task's suggestion")
    dropout: float = option(0.0, "dropout probability, in [0, 1)")
    lr: float = option(3e-3, "peak learning rate (> 0)")
    min_lr: float = option(3e-4, "final learning rate of the cosine decay (≥ 0, ≤ lr)")
    warmup_steps: int = option(100, "linear warmup steps (≥ 0)")
    weight_decay: float = option(0.1, "AdamW decoupled weight decay on matrices and embeddings (≥ 0)")
    grad_clip: float = option(1.0, "max global gradient norm (> 0)")
    n_documents: int = option(0, "corpus size in documents; 0 = the task's default")
    heldout_fraction: float = option(0.1, "fraction of documents held out for the eval loss, in (0, 1)")
    eval_every: int = option(100, "steps between held-out evaluations (≥ 1)")
    eval_batches: int = option(8, "held-out windows evaluated = eval_batches × batch_size (≥ 1)")
    sample_every: int = option(500, "steps between printed samples (0 = never)")
    checkpoint_every: int = option(100, "steps between checkpoints (≥ 1)")
    seed: int = option(0, "seeds the corpus, the init and the batches (≥ 0)")

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


def train_pretrain(config, *, out=None, data=None, resume=False, quiet=False):
    """Run stage 1 and return its run directory (see `minirlhf.stages.runs` for the layout).

    The loop: draw windows → `pretrain_update` → log (the held-out loss every eval_every steps)."""
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
    stage_config = {**dataclasses.asdict(config), "block_size": block_size, "data": data}
    run = Run("pretrain", out, resume=resume, quiet=quiet, steps=config.steps, rng=rng,
              checkpoint_every=config.checkpoint_every, model=model, optimizer=optimizer)
    with run:
        while run.step < config.steps:
            windows = random_windows(train_stream, config.batch_size, block_size, rng)  # (B, T+1)
            optimizer.lr = cosine_schedule(run.step, max_lr=config.lr, warmup_steps=config.warmup_steps,
                                           total_steps=config.steps, min_lr=config.min_lr)
            stats = pretrain_update(model, optimizer, windows, config.grad_clip)
            if run.due(config.eval_every):
                stats["heldout_loss"] = heldout_loss(model, heldout_windows, config.batch_size)
                stats["heldout_ppl"] = float(np.exp(stats["heldout_loss"]))
            run.log(**stats, lr=optimizer.lr, show=["loss"])
            if task is not None and config.sample_every and run.step % config.sample_every == 0:
                print_samples(run.bar, model, task, run.step)

    run.save(stage="pretrain", task=config.task if task else None, model=model, tokenizer=tokenizer,
             stage_config=stage_config)
    final = heldout_loss(model, heldout_windows, config.batch_size)
    return run.finish({"heldout_loss": final, "heldout_ppl": float(np.exp(final)),
                       "unigram_entropy": unigram_entropy(train_stream, tokenizer.vocab_size),
                       "n_params": model.num_params(), "train_tokens": int(len(train_stream)),
                       "seconds": run.seconds}, curves=["loss", "heldout_loss", "lr"], title="pretraining")


def pretrain_update(model, optimizer, windows, grad_clip):
    """One step of pretraining on token windows (B, T + 1); -> {loss, grad_norm}."""
    model.train()
    # L(θ) = −mean_i log p_θ(u_i | u_<i)          (GPT-1, eq. 1, negated and averaged over the window)
    loss = next_token_loss(model, windows)
    optimizer.zero_grad()
    loss.backward()
    check_finite(loss, model)
    grad_norm = clip_grad_norm(optimizer.params, grad_clip)
    optimizer.step()
    return {"loss": float(loss.data), "grad_norm": grad_norm}


def heldout_batch(stream, n_windows, block_size):
    """Fixed, evenly spaced held-out windows (n, T + 1), so every evaluation sees the same text."""
    starts = np.linspace(0, len(stream) - block_size - 1, n_windows).astype(np.int64)
    return np.stack([stream[s:s + block_size + 1] for s in starts])


def heldout_loss(model, windows, batch_size):
    """Mean next-token loss of `model` on the held-out windows, in eval mode, without a graph."""
    model.eval()
    with no_grad():
        return float(np.mean([float(next_token_loss(model, windows[i:i + batch_size]).data)
                              for i in range(0, len(windows), batch_size)]))


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
