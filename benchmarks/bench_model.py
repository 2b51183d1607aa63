"""Speed of the NumPy GPT: training tokens/s, its FLOP/s against plain BLAS, and the KV cache.

Prints, by default for the issue's target, a 4-layer, 128-wide, 4-head model at 2048 tokens per
training step (batch 32 × block 64, V = 256):
- the float32 matmul FLOP/s NumPy reaches on this machine (a (B·T, C) @ (C, 3C) product, the
  shape of the model's qkv projection: (2048, 128) @ (128, 384) by default), measured in this run;
- training tokens/s (forward + cross-entropy + backward + AdamW) and the FLOP/s that implies,
  counting a step as 6·n_params·tokens + 12·n_layer·T·n_embd·tokens (dense + attention, the
  usual estimate; n_params counts every parameter), as a fraction of the matmul FLOP/s;
- generation tokens/s with and without the KV cache (batch 32, 48 new tokens) and their ratio.

`--toy` measures the model the pipeline trains by default instead: `PretrainConfig`'s sizes and
batch, its task's context length and vocabulary, and that task's response length for generation.
Any size flag given with `--toy` still wins.

It measures with glibc's allocator tuned as the command line runs (`kernels.tune_allocator()`).

Run: .venv/bin/python benchmarks/bench_model.py [--toy] [--n-layer 4 --n-head 4 --n-embd 128
     --batch 32 --block-size 64 --vocab-size 256 --steps 10 --gen-batch 32 --new-tokens 48]
"""
import argparse
import time

import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.kernels import tune_allocator
from minirlhf.engine.optim import AdamW
from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.lm.sampling import generate
from minirlhf.stages.pretrain import PretrainConfig
from minirlhf.world.tasks import get_task

PROMPT_TOKENS = (8, 16)   # generation prompts have 8 to 16 random tokens


def best_time(fn, repeats):
    """Fastest of `repeats` runs, in seconds (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(rng, n, c):
    """FLOP/s of a float32 (n, c) @ (c, 3c) product: the qkv projection of n tokens of width c."""
    a = rng.standard_normal((n, c), dtype=np.float32)
    b = rng.standard_normal((c, 3 * c), dtype=np.float32)
    return 2 * n * c * 3 * c / best_time(lambda: a @ b, 200)


def toy_defaults():
    """The flags of the pipeline's default model (PretrainConfig and its task)."""
    pretrain = PretrainConfig()
    task = get_task(pretrain.task)
    return {"n_layer": pretrain.n_layer, "n_head": pretrain.n_head, "n_embd": pretrain.n_embd,
            "batch": pretrain.batch_size, "block_size": pretrain.block_size or task.block_size,
            "vocab_size": task.tokenizer.vocab_size, "new_tokens": task.max_response_tokens}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="the pipeline's default model and batch (see above)")
    parser.add_argument("--n-layer", type=int, default=4, help="transformer blocks")
    parser.add_argument("--n-head", type=int, default=4, help="attention heads")
    parser.add_argument("--n-embd", type=int, default=128, help="C, width of the residual stream")
    parser.add_argument("--vocab-size", type=int, default=256, help="V (a toy word vocabulary)")
    parser.add_argument("--block-size", type=int, default=64, help="T of a training batch (and the model's context)")
    parser.add_argument("--batch", type=int, default=32, help="B of a training batch (B·T tokens per step)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (best is kept)")
    parser.add_argument("--gen-batch", type=int, default=32, help="prompts generated for at once")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens generated per prompt")
    args = parser.parse_args(argv)
    if args.toy:   # parse again with the toy defaults, so flags given explicitly still win
        parser.set_defaults(**toy_defaults())
        args = parser.parse_args(argv)
    if args.block_size < PROMPT_TOKENS[1] + args.new_tokens:
        parser.error(f"--block-size {args.block_size} must hold a {PROMPT_TOKENS[1]}-token prompt "
                     f"and --new-tokens {args.new_tokens}")
    return args


def main(argv=None):
    args = parse_args(argv)
    tune_allocator()
    rng = np.random.default_rng(0)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config, rng)
    opt = AdamW(model.parameters(), lr=1e-3)
    B, T = args.batch, config.block_size
    ids = rng.integers(0, config.vocab_size, (B, T + 1))

    def train_step():
        logits = model(ids[:, :-1])                                  # (B, T, V)
        loss = F.cross_entropy(logits, ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()

    peak = matmul_flops(rng, B * T, config.n_embd)
    step = best_time(train_step, args.steps)
    n_params = model.num_params()
    flops = 6 * n_params * B * T + 12 * config.n_layer * T * config.n_embd * B * T
    print(f"config: {config}, batch {B}×{T} = {B * T} tokens/step, {n_params:,} parameters")
    print(f"numpy float32 matmul ({B * T}×{config.n_embd} @ {config.n_embd}×{3 * config.n_embd}): "
          f"{peak / 1e9:.0f} GFLOP/s")
    print(f"training: {step * 1e3:.0f} ms/step, {B * T / step:,.0f} tokens/s, "
          f"{flops / step / 1e9:.1f} GFLOP/s = {100 * flops / step / peak:.0f}% of matmul "
          "(FLOPs/step = 6·n_params·tokens + 12·n_layer·T·n_embd·tokens)")

    lengths = rng.integers(PROMPT_TOKENS[0], PROMPT_TOKENS[1] + 1, args.gen_batch)
    prompts = [rng.integers(4, config.vocab_size, n).tolist() for n in lengths]
    times = {}
    for use_cache in (True, False):
        times[use_cache] = best_time(lambda: generate(model, prompts, args.new_tokens, temperature=1.0,
                                                      rng=np.random.default_rng(1), use_cache=use_cache), 3)
        print(f"generation ({'with' if use_cache else 'without'} KV cache, batch {args.gen_batch}, "
              f"{args.new_tokens} new tokens): {args.gen_batch * args.new_tokens / times[use_cache]:,.0f} tokens/s")
    print(f"KV cache speed-up: {times[False] / times[True]:.1f}×")


if __name__ == "__main__":
    main()
