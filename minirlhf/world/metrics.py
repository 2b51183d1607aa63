"""Evaluation metrics, each defined once for the whole project (see docs/metrics.md).

Reference-based text metrics, on whitespace tokens:
  - `rouge_n`, `rouge_l`: ROUGE-N and ROUGE-L as Lin (2004) defines them (eq. 1; Sec. 3.1),
    reported as precision, recall and F1 (β = 1, as the `rouge-score` package does);
  - `bleu`: corpus BLEU, Papineni et al. (2002), Sec. 2: clipped n-gram precisions up to
    `max_n`, their geometric mean, times the brevity penalty.
Diversity: `distinct_n` (Li et al. 2016), unique n-grams / all n-grams over a set of texts.
KL to a reference model from samples: `kl_estimates`, Schulman's k1, k2, k3 (2020 note
"Approximating KL divergence"), summed over response tokens, averaged over sequences.
Agreement of two judges' preferences: `agreement`. Human evaluation: `win_rate`, with the
noise-free gold judge, a tie counting ½, with a 95% confidence interval. `evaluate` samples
a policy on held-out prompts and reports all of these that apply.

Simplification: no stemming, stopword removal or tokenisation beyond whitespace (the toy
worlds already write "good ." with spaced punctuation).
"""

import math
from collections import Counter

import numpy as np

from minirlhf.engine.autograd import no_grad
from minirlhf.lm.logprobs import sequence_logprobs


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _precision_recall_f1(hits, n_candidate, n_reference):
    p = hits / n_candidate if n_candidate else 0.0
    r = hits / n_reference if n_reference else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def rouge_n(candidate, reference, n=2):
    """ROUGE-N: n-gram overlap, each n-gram counted at most as often as the other text has it."""
    c, r = _ngrams(candidate.split(), n), _ngrams(reference.split(), n)
    # hits = Σ_g min(count_cand(g), count_ref(g))   (Lin 2004, eq. 1 numerator)
    hits = sum((c & r).values())
    return _precision_recall_f1(hits, sum(c.values()), sum(r.values()))


def _lcs_length(a, b):
    """Length of the longest common subsequence, by dynamic programming over prefixes."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate, reference):
    """ROUGE-L: P = LCS/|candidate|, R = LCS/|reference|, F1 (Lin 2004, eq. 2–4 with β = 1)."""
    c, r = candidate.split(), reference.split()
    return _precision_recall_f1(_lcs_length(c, r), len(c), len(r))


def bleu(candidates, references, max_n=4):
    """Corpus BLEU in [0, 1]. `references[i]` is a list of reference strings (or one string)."""
    if len(candidates) != len(references):
        raise ValueError(f"bleu: {len(candidates)} candidates but {len(references)} reference lists")
    hits, totals, c_len, r_len = [0] * max_n, [0] * max_n, 0, 0
    for cand, refs in zip(candidates, references):
        c = cand.split()
        refs = [ref.split() for ref in ([refs] if isinstance(refs, str) else refs)]
        c_len += len(c)
        # r = the reference length closest to the candidate's (the shorter on a tie)
        r_len += min((abs(len(ref) - len(c)), len(ref)) for ref in refs)[1]
        for n in range(1, max_n + 1):
            cand_counts, max_ref = _ngrams(c, n), Counter()
            for ref in refs:
                max_ref |= _ngrams(ref, n)  # | keeps the larger count: clip to the max over references
            hits[n - 1] += sum((cand_counts & max_ref).values())
            totals[n - 1] += sum(cand_counts.values())
    if c_len == 0 or min(hits) == 0:
        return 0.0
    # BLEU = BP · exp(Σ_n (1/N) log p_n),   BP = 1 if c > r else exp(1 − r/c)
    log_precision = sum(math.log(h / t) for h, t in zip(hits, totals)) / max_n
    brevity = 1.0 if c_len > r_len else math.exp(1.0 - r_len / c_len)
    return brevity * math.exp(log_precision)


def distinct_n(texts, n):
    """Unique n-grams / all n-grams, pooled over `texts` (0 when there are none)."""
    grams = Counter()
    for text in texts:
        grams += _ngrams(text.split(), n)
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def kl_estimates(logprobs, ref_logprobs, mask):
    """KL(π ‖ π_ref) per sequence from tokens sampled from π: {'k1', 'k2', 'k3'}.

    logprobs, ref_logprobs: (B, T) log π(x_t | x_<t) and log π_ref(x_t | x_<t); mask (B, T) bool,
    True on the response tokens. With log r = log π_ref − log π per token:
    k1 = −log r (unbiased, high variance, can be negative), k2 = ½ (log r)² (biased, low
    variance), k3 = (r − 1) − log r (unbiased and ≥ 0). Each is summed over a sequence's
    response tokens and averaged over the B sequences (nats per response).
    """
    mask = np.asarray(mask, dtype=bool)
    log_r = np.where(mask, np.asarray(ref_logprobs, np.float64) - np.asarray(logprobs, np.float64), 0.0)  # (B, T)
    k1 = -log_r
    k2 = 0.5 * log_r * log_r
    k3 = np.expm1(log_r) - log_r  # masked positions: log r = 0 gives exactly 0
    return {name: float(k.sum(axis=1).mean()) for name, k in (("k1", k1), ("k2", k2), ("k3", k3))}


def agreement(prefs_a, prefs_b):
    """How often two judges agree, from signed preferences (>0: first response better, 0: tie).

    Per item 1 − |sign(a) − sign(b)| / 2: 1 when they agree, 0 when opposite, ½ when exactly one
    of them calls a tie; averaged over items.
    """
    a, b = np.sign(np.asarray(prefs_a, np.float64)), np.sign(np.asarray(prefs_b, np.float64))
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"agreement: need two equal-length non-empty 1-D lists, got {a.shape} and {b.shape}")
    return float(np.mean(1.0 - np.abs(a - b) / 2.0))


def mean_ci95(values):
    """(mean, half-width of the normal-approximation 95% confidence interval)."""
    x = np.asarray(values, np.float64)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("inf")
    return float(x.mean()), float(half)


def win_rate(gold_a, gold_b):
    """Win rate of A over B from noise-free gold rewards of paired responses (one per prompt).

    A wins a prompt when its gold reward is higher; a tie counts ½. Returns {'win_rate',
    'win_rate_ci95'} (half-width of the 95% interval over prompts).
    """
    a, b = np.asarray(gold_a, np.float64), np.asarray(gold_b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"win_rate: need two equal-length non-empty 1-D lists, got {a.shape} and {b.shape}")
    rate, half = mean_ci95((a > b) + 0.5 * (a == b))
    return {"win_rate": rate, "win_rate_ci95": half}


def pass_at_k(n, c, k):
    """pass@k from n samples of which c are correct: the unbiased estimator of Chen et al. (2021, eq. 1).

    The probability that k samples drawn without replacement from the n contain a correct one,
    1 − C(n−c, k)/C(n, k), computed as a product of c factors so nothing overflows:
    C(n−c, k)/C(n, k) = Π_{i=n−c+1..n} (i − k)/i. When fewer than k samples are wrong (n − c < k),
    every draw holds a correct one and pass@k = 1. Two simpler estimates are worse: plugging
    p̂ = c/n into 1 − (1 − p̂)^k is biased low ((1 − p̂)^k is convex in p̂, so Jensen), and scoring
    one draw of k samples is unbiased but a single 0/1 outcome; this one averages that outcome
    over all C(n, k) subsets of the n samples (see docs/verifiable_rewards.md).
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"pass_at_k: {name} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n must be ≥ 1 (samples drawn), got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must satisfy 0 ≤ c ≤ n = {n} (correct samples), got c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must satisfy 1 ≤ k ≤ n = {n}, got k={k}")
    if n - c < k:
        return 1.0
    # pass@k = 1 − Π_{i=n−c+1}^{n} (1 − k/i)
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def evaluate(policy, task, prompts, *, rng, baseline=None, ref_model=None, references=None):
    """Sample one response per prompt from `policy` and report the metrics that apply.

    policy: `policy(prompts, rng) -> responses`; with `ref_model`, a `sampling.ModelPolicy`, whose
    sampled tokens are scored under both models for the KL. task: a Task, or None on a user's
    own data (then no gold reward and no win rate). baseline: a second policy, sampled on the
    same prompts, for the win rate. references: reference answers (default: task.reference).
    Returns a dict of floats, plus 'responses' (the sampled texts).
    """
    if ref_model is not None:
        if not hasattr(policy, "sample"):
            raise ValueError("evaluate: KL to ref_model needs a sampling.ModelPolicy (its .sample returns the tokens)")
        responses, rollout = policy.sample(prompts, rng)
    else:
        responses = policy(prompts, rng)
    out = {"n": len(prompts), "length": float(np.mean([len(r.split()) for r in responses])),
           "distinct_1": distinct_n(responses, 1), "distinct_2": distinct_n(responses, 2)}
    if task is not None:
        gold = [task.gold_reward(p, r) for p, r in zip(prompts, responses)]
        out["gold_reward"], out["gold_reward_ci95"] = mean_ci95(gold)
        if baseline is not None:
            base = [task.gold_reward(p, r) for p, r in zip(prompts, baseline(prompts, rng))]
            out.update(win_rate(gold, base))
        if references is None:
            references = [task.reference(p) for p in prompts]
    if references is not None:
        out["rouge_l"] = float(np.mean([rouge_l(r, ref)["f1"] for r, ref in zip(responses, references)]))
        out["bleu"] = bleu(responses, references)
    if ref_model is not None:
        batch = (rollout.input_ids, rollout.attention_mask, rollout.response_mask)
        with no_grad():  # both models score exactly the tokens the policy sampled
            logprobs, _ = sequence_logprobs(policy.model, *batch, temperature=policy.temperature)
            ref_logprobs, _ = sequence_logprobs(ref_model, *batch, temperature=policy.temperature)
        kl = kl_estimates(logprobs.data, ref_logprobs.data, rollout.response_mask)
        out.update({f"kl_{k}": v for k, v in kl.items()})
    out["responses"] = responses
    return out
