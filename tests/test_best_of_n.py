"""Best-of-n: it keeps the argmax of the reward, n = 1 is plain sampling, and its KL to the
sampling policy matches the exact formula, which never exceeds the bound log n − (n − 1)/n."""
import math

import numpy as np
import pytest

from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.stages.best_of_n import BestOfN, exact_kl, kl_bound, pick_best
from minirlhf.world.tasks import get_task


def numbers_policy(prompts, rng):
    """A mock policy: a random number as the response."""
    return [str(int(x)) for x in rng.integers(0, 1000, len(prompts))]


def value_reward(prompts, responses):
    """A mock reward: the number itself."""
    return [float(r) for r in responses]


def test_best_of_n_keeps_the_argmax_of_the_reward():
    prompts = ["a", "b", "c"]
    best = BestOfN(numbers_policy, value_reward, 8)
    responses, scores = best.candidates(prompts, np.random.default_rng(0))
    assert len(responses) == 3 and all(len(r) == 8 for r in responses) and scores.shape == (3, 8)
    chosen = best(prompts, np.random.default_rng(0))   # the same draws
    assert chosen == [str(max(int(x) for x in row)) for row in responses]
    assert pick_best(responses, scores, n=1) == [row[0] for row in responses]   # best of the first 1


def test_best_of_one_is_plain_sampling():
    task = get_task("sentiment")
    model = GPT(GPTConfig(vocab_size=task.tokenizer.vocab_size, block_size=task.block_size, n_layer=1, n_head=2,
                          n_embd=16), np.random.default_rng(0))
    policy = ModelPolicy(model, task.tokenizer, 6)
    prompts = task.prompts("eval")[:5]
    plain = policy(prompts, np.random.default_rng(3))
    assert BestOfN(policy, lambda p, r: np.zeros(len(r)), 1)(prompts, np.random.default_rng(3)) == plain


def test_bound_values():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_bound(64) == pytest.approx(math.log(64) - 63 / 64)


def test_exact_kl_on_hand_values_and_below_the_bound():
    # two responses, the better with probability q: best of 2 picks it with probability 1 − (1 − q)²
    q = 0.3
    p_best = 1 - (1 - q) ** 2
    expected = p_best * math.log(p_best / q) + (1 - p_best) * math.log((1 - p_best) / (1 - q))
    assert exact_kl([1 - q, q], [0.0, 1.0], 2) == pytest.approx(expected, rel=1e-12)
    assert exact_kl([0.5, 0.5], [1.0, 1.0], 4) == pytest.approx(0.0, abs=1e-12)   # a tie moves nothing
    rng = np.random.default_rng(0)
    for n in (2, 4, 16, 64):
        for M in (3, 30, 3000):
            kl = exact_kl(rng.dirichlet(np.ones(M)), rng.normal(size=M), n)
            assert 0 <= kl <= kl_bound(n) + 1e-12
    # many responses of tiny probability and distinct scores: the bound is reached
    assert exact_kl(np.full(20000, 1 / 20000), rng.normal(size=20000), 16) == pytest.approx(kl_bound(16), rel=1e-3)


def test_exact_best_of_n_distribution_matches_sampling():
    # a policy over 4 responses, two of which tie; count which response best-of-3 returns
    probs, scores = np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.0, 2.0, 1.0, 2.0])
    policy = lambda prompts, rng: [str(i) for i in rng.choice(4, size=len(prompts), p=probs)]
    reward = lambda prompts, responses: scores[[int(r) for r in responses]]
    picks = BestOfN(policy, reward, 3)(["x"] * 40000, np.random.default_rng(1))
    freq = np.bincount([int(r) for r in picks], minlength=4) / len(picks)
    # F = 0.4 (score 0), 0.6 (score ≤ 1), 1 (score ≤ 2); the tie at 2 is shared 3 : 1
    p_bon = np.array([0.4 ** 3, 0.75 * (1 - 0.6 ** 3), 0.6 ** 3 - 0.4 ** 3, 0.25 * (1 - 0.6 ** 3)])
    np.testing.assert_allclose(freq, p_bon, atol=0.01)   # 4 standard errors at 40,000 draws
    assert exact_kl(probs, scores, 3) == pytest.approx(float(np.sum(p_bon * np.log(p_bon / probs))), rel=1e-12)
