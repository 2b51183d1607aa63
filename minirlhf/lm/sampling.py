"""Batched generation with a KV cache, and a language model as a policy.

The array contract (DEVELOPING.md): a batch is `input_ids (B, T)` int64, `attention_mask (B, T)`
bool (False on padding), `response_mask (B, T)` bool (True on response tokens, including the
<eos> that ended them), left-padded; every per-token array of later stages has this (B, T) layout.

`generate` left-pads prompts of different lengths (`data.collate`), runs them through the model
once (prefill, filling the KV cache), then feeds one new token per step. Each step samples from
softmax(logits / temperature), optionally restricted to the top-k tokens (Fan et al. 2018) or to
the smallest set holding probability top_p (nucleus sampling, Holtzman et al. 2020);
temperature 0 is greedy. A row stops at its <eos>: its later columns are padding (masks False)
while the other rows go on; generation ends when every row has stopped or after max_new_tokens.

`ModelPolicy` wraps a model as the project's policy interface, `policy(prompts, rng) -> responses`;
its `.sample` also returns the `Rollout` (the tokens), so log-probs can be taken on exactly what
was sampled (`minirlhf.lm.logprobs`).
"""
import dataclasses

import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor, no_grad
from minirlhf.lm.data import collate, encode_prompt
from minirlhf.lm.model import KVCache


@dataclasses.dataclass
class Rollout:
    input_ids: np.ndarray       # (B, T) int64: left-padded prompt, then the response
    attention_mask: np.ndarray  # (B, T) bool: False on padding (before the prompt, after <eos>)
    response_mask: np.ndarray   # (B, T) bool: True on generated tokens up to and including <eos>
    prompt_width: int           # responses start at column prompt_width (the padded prompt width)

    def response_ids(self):
        """The generated ids of each row (with the <eos> if one ended it), as lists."""
        return [row[m].tolist() for row, m in zip(self.input_ids, self.response_mask)]


def sample_logits(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """One token per row of `logits` (B, V) -> (B,) int64. temperature 0 = argmax."""
    if (top_k is not None and top_k < 1) or (top_p is not None and not 0.0 < top_p <= 1.0):
        raise ValueError(f"sampling: top_k must be ≥ 1 and top_p in (0, 1], got top_k={top_k}, top_p={top_p}")
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature                                 # (B, V)
    V = z.shape[-1]
    if top_k is not None and top_k < V:
        # keep the k largest logits: everything below the k-th largest is cut
        kth = np.partition(z, V - top_k, axis=-1)[:, V - top_k, None]            # (B, 1)
        z = np.where(z < kth, -np.inf, z)
    p = F.softmax(Tensor(z)).data                                               # (B, V)
    if top_p is not None and top_p < 1.0:
        # keep the most likely tokens until their mass reaches top_p (always the first)
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        sorted_p[np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p] = 0.0
        p = np.zeros_like(p)
        np.put_along_axis(p, order, sorted_p, axis=-1)
    # inverse CDF: the first token whose cumulative probability exceeds u ~ U[0, 1)
    cdf = np.cumsum(p, axis=-1)
    cdf /= cdf[:, -1:]
    return (cdf <= rng.random((len(p), 1))).sum(axis=-1)


def generate(model, prompt_ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
             eos_id=None, rng=None, pad_id=0, use_cache=True):
    """Continue each prompt (a list of id lists, any lengths) by up to max_new_tokens; -> Rollout.

    Runs in eval mode (dropout off) without building a graph. `use_cache=False` recomputes the
    whole prefix at every step (same tokens, slower; kept to test and benchmark the cache).
    """
    if temperature < 0 or (temperature > 0 and rng is None):
        raise ValueError(f"generate: temperature must be ≥ 0 and sampling (> 0) needs rng; got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be ≥ 1, got {max_new_tokens}")
    prompt_ids = [[int(i) for i in p] for p in prompt_ids]   # lists of ints (arrays are fine too)
    longest = max(len(p) for p in prompt_ids) + max_new_tokens
    if longest > model.config.block_size:
        raise ValueError(f"generate: prompt + max_new_tokens = {longest} tokens exceed block_size "
                         f"{model.config.block_size}")
    prompt, prompt_mask, _ = collate([(p, [False] * len(p)) for p in prompt_ids], pad_id)   # (B, Tp)
    B, Tp = prompt.shape
    ids = np.concatenate([prompt, np.full((B, max_new_tokens), pad_id)], axis=1)           # (B, Tp + N)
    mask = np.concatenate([prompt_mask, np.zeros((B, max_new_tokens), bool)], axis=1)      # (B, Tp + N)
    response = np.zeros_like(mask)                                                        # (B, Tp + N)
    done = np.zeros(B, bool)
    cache = KVCache() if use_cache else None
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for t in range(Tp, Tp + max_new_tokens):
                if t == Tp:      # prefill: the whole prompt
                    logits = model(ids[:, :t], mask[:, :t], kv_cache=cache).data
                elif use_cache:  # only the newest token; the cache holds the rest
                    logits = model(ids[:, t - 1:t], mask[:, t - 1:t], kv_cache=cache).data
                else:
                    logits = model(ids[:, :t], mask[:, :t]).data
                token = sample_logits(logits[:, -1], rng, temperature, top_k, top_p)     # (B,)
                alive = ~done
                ids[:, t] = np.where(alive, token, pad_id)
                mask[:, t] = response[:, t] = alive
                if eos_id is not None:
                    done |= alive & (token == eos_id)
                if done.all():
                    break
    finally:
        model.train(was_training)
    return Rollout(ids[:, :t + 1], mask[:, :t + 1], response[:, :t + 1], Tp)


class ModelPolicy:
    """A language model as a policy: prompts (list of str) -> responses (list of str)."""

    def __init__(self, model, tokenizer, max_new_tokens, temperature=1.0, top_k=None, top_p=None):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p

    def sample(self, prompts, rng):
        """-> (responses, Rollout): the text, and the tokens it came from."""
        tok = self.tokenizer
        rollout = generate(self.model, [encode_prompt(tok, p) for p in prompts], self.max_new_tokens,
                           temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                           eos_id=tok.eos_id, pad_id=tok.pad_id, rng=rng)
        # decode drops the <eos>
        return [tok.decode(ids) for ids in rollout.response_ids()], rollout

    def __call__(self, prompts, rng):
        return self.sample(prompts, rng)[0]
