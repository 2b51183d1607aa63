"""Speed of the NumPy GPT: training tokens/s, its FLOP/s against plain BLAS, and the KV cache.

Prints, for a 4-layer, 128-wide, 4-head model at 2048 tokens per training step:
- the float32 matmul FLOP/s NumPy reaches on this machine (a (2048, 128) @ (128, 384) product,
  the shape of the model's qkv projection), measured in this run;
- training tokens/s (forward + cross-entropy + backward + AdamW) and the FLOP/s that implies,
  counting a step as 6·n_params·tokens + 12·n_layer·T·n_embd·tokens (dense + attention, the
  usual estimate; n_params counts every parameter), as a fraction of the matmul FLOP/s;
- generation tokens/s with and without the KV cache (batch 32, 48 new tokens) and their ratio.

Run: .venv/bin/python benchmarks/bench_model.py [--block-size 64] [--vocab-size 256]
"""
import argparse
import time

import numpy as np

from minirlhf import functional as F
from minirlhf.model import GPT, GPTConfig
from minirlhf.optim import AdamW
from minirlhf.sampling import generate


def best_time(fn, repeats):
    """Fastest of `repeats` runs, in seconds (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_flops(rng):
    a = rng.standard_normal((2048, 128), dtype=np.float32)
    b = rng.standard_normal((128, 384), dtype=np.float32)
    return 2 * 2048 * 128 * 384 / best_time(lambda: a @ b, 200)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=256, help="V (a toy word vocabulary)")
    parser.add_argument("--block-size", type=int, default=64, help="T of a training batch")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per training step (B·T)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (best is kept)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config, rng)
    opt = AdamW(model.parameters(), lr=1e-3)
    B, T = args.tokens // config.block_size, config.block_size
    ids = rng.integers(0, config.vocab_size, (B, T + 1))

    def train_step():
        logits = model(ids[:, :-1])                                  # (B, T, V)
        loss = F.cross_entropy(logits, ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()

    peak = matmul_flops(rng)
    step = best_time(train_step, args.steps)
    n_params = model.num_params()
    flops = 6 * n_params * B * T + 12 * config.n_layer * T * config.n_embd * B * T
    print(f"config: {config}, batch {B}×{T} = {B * T} tokens/step, {n_params:,} parameters")
    print(f"numpy float32 matmul (2048×128 @ 128×384): {peak / 1e9:.0f} GFLOP/s")
    print(f"training: {step * 1e3:.0f} ms/step, {B * T / step:,.0f} tokens/s, "
          f"{flops / step / 1e9:.1f} GFLOP/s = {100 * flops / step / peak:.0f}% of matmul "
          "(FLOPs/step = 6·n_params·tokens + 12·n_layer·T·n_embd·tokens)")

    prompts = [rng.integers(4, config.vocab_size, n).tolist() for n in rng.integers(8, 17, 32)]
    times = {}
    for use_cache in (True, False):
        times[use_cache] = best_time(lambda: generate(model, prompts, 48, temperature=1.0, rng=np.random.default_rng(1),
                                                      use_cache=use_cache), 3)
        print(f"generation ({'with' if use_cache else 'without'} KV cache, batch 32, 48 new tokens): "
              f"{32 * 48 / times[use_cache]:,.0f} tokens/s")
    print(f"KV cache speed-up: {times[False] / times[True]:.1f}×")


if __name__ == "__main__":
    main()
