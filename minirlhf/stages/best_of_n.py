"""Best-of-n sampling: draw n responses, keep the one the reward model scores highest.

The simplest way to turn a reward model into a better policy, with no training at all
(Nakano et al. 2021, "WebGPT"; Stiennon et al. 2020, Sec. 4): for each prompt x,

    y_1, ..., y_n ~ π_SFT(· | x),      y* = argmax_i r(x, y_i)

`BestOfN(policy, reward_fn, n)` is itself a policy — `policy(prompts, rng) -> responses` — so
`metrics.evaluate`, the report and rejection sampling (which fine-tunes on y*) use it like any
other. `reward_fn(prompts, responses) -> scores` is any scorer: the reward model through the
shared scoring helper (`functools.partial(rollout.score_texts, rm, tokenizer)`), the gold
judge, or a mock in the tests.

How far best-of-n moves from the policy it samples has a closed form. When the n scores can
never tie (a continuous distribution), the quantile u of y* has density n·u^(n−1), so

    KL(π_bon ‖ π) = log n − (n − 1)/n                (Stiennon et al. 2020; Gao et al. 2023)

and a policy with finitely many responses (ties: the same response drawn twice) moves less, so
the formula is an upper bound (Beirami et al. 2024). `kl_bound(n)` is the formula;
`exact_kl(probs, scores, n)` the exact KL for a policy with finitely many responses.

Simplification: ties among the n samples go to the first one drawn (numpy's argmax).
"""
import math

import numpy as np


class BestOfN:
    """A policy: the best of n samples of `policy` under `reward_fn`, per prompt."""

    def __init__(self, policy, reward_fn, n):
        if not (isinstance(n, (int, np.integer)) and n >= 1):
            raise ValueError(f"BestOfN: n must be an integer ≥ 1, got {n!r}")
        self.policy, self.reward_fn, self.n = policy, reward_fn, int(n)

    def candidates(self, prompts, rng, chunk=256):
        """-> (responses, scores): n samples per prompt as a list of B lists, and their scores (B, n).

        Prompts go `chunk // n` at a time, so the policy and the scorer see at most `chunk` texts.
        """
        n, per_chunk = self.n, max(1, chunk // self.n)
        responses, scores = [], []
        for start in range(0, len(prompts), per_chunk):
            batch = prompts[start:start + per_chunk]
            repeated = [p for p in batch for _ in range(n)]               # prompt b at rows b·n .. b·n + n − 1
            samples = self.policy(repeated, rng)                           # (b·n,)
            s = np.asarray(self.reward_fn(repeated, samples), np.float64)
            if s.shape != (len(repeated),):
                raise ValueError(f"BestOfN: reward_fn returned shape {s.shape} for {len(repeated)} responses")
            responses += [samples[i:i + n] for i in range(0, len(samples), n)]
            scores.append(s.reshape(len(batch), n))                        # (b, n)
        return responses, np.concatenate(scores)                           # B lists of n, (B, n)

    def __call__(self, prompts, rng):
        responses, scores = self.candidates(prompts, rng)
        return pick_best(responses, scores)


def pick_best(responses, scores, n=None):
    """The best-scoring response of each prompt among its first n candidates (default: all)."""
    scores = np.asarray(scores)[:, :n]                                     # (B, n)
    # y* = argmax_i r(x, y_i)
    best = scores.argmax(axis=1)                                           # (B,)
    return [row[i] for row, i in zip(responses, best)]


def kl_bound(n):
    """KL(π_bon ‖ π) ≤ log n − (n − 1)/n; equal in the limit where no two samples can tie."""
    return math.log(n) - (n - 1) / n


def exact_kl(probs, scores, n):
    """Exact KL(π_bon ‖ π) of best-of-n from a policy with finitely many responses.

    probs (M,): the policy's probability of each distinct response; scores (M,): their rewards.
    The best of n draws has a score at or below s exactly when all n draws do, so with F(s) the
    policy's probability of a score ≤ s, the winning score is s with probability F(s)^n − F(s⁻)^n;
    responses that tie at s share it in proportion to π (the first drawn of them wins).
    """
    probs, scores = np.asarray(probs, np.float64), np.asarray(scores, np.float64)
    _, group = np.unique(scores, return_inverse=True)                      # (M,) score rank, worst first
    p_group = np.bincount(group, weights=probs)                            # (G,) probability of each score
    cdf = np.cumsum(p_group)                                               # (G,) F(s)
    # P(best score = s) = F(s)^n − F(s⁻)^n;   P_bon(y) = P(best score = s(y)) · π(y) / π(score = s(y))
    p_bon = (cdf ** n - np.maximum(cdf - p_group, 0.0) ** n)[group] * probs / p_group[group]
    keep = p_bon > 0
    # KL = Σ_y P_bon(y) log(P_bon(y) / π(y))
    return float(np.sum(p_bon[keep] * np.log(p_bon[keep] / probs[keep])))
