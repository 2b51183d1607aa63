"""Metrics against hand-computed values (Lin 2004, Papineni et al. 2002, Schulman's KL note)."""

import math

import numpy as np
import pytest

from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.lm.sampling import ModelPolicy
from minirlhf.world.metrics import (agreement, bleu, distinct_n, evaluate, kl_estimates, mean_ci95, rouge_l, rouge_n,
                                    win_rate)
from minirlhf.world.tasks import get_task


def prf(p, r):
    return {"precision": pytest.approx(p), "recall": pytest.approx(r),
            "f1": pytest.approx(2 * p * r / (p + r) if p + r else 0.0)}


def test_rouge_n_hand_values():
    cand, ref = "the cat sat on the mat", "the cat is on the mat"
    assert rouge_n(cand, ref, 1) == prf(5 / 6, 5 / 6)  # the×2, cat, on, mat
    assert rouge_n(cand, ref, 2) == prf(3 / 5, 3 / 5)  # "the cat", "on the", "the mat"
    # repeated n-grams are clipped: "the" counts once, as the reference has it once
    assert rouge_n("the the the the", "the cat", 1) == prf(1 / 4, 1 / 2)
    assert rouge_n("", "the cat", 1) == prf(0, 0)
    assert rouge_n("a dog", "the cat", 1) == prf(0, 0)
    assert rouge_n("the", "the cat", 2) == prf(0, 0)  # no candidate bigram at all


def test_rouge_l_lins_example():
    # Lin (2004), Sec. 3.1: S1 is the reference; S2 shares "police the gunman", S3 only "the gunman"
    ref = "police killed the gunman"
    assert rouge_l("police kill the gunman", ref) == prf(3 / 4, 3 / 4)
    assert rouge_l("the gunman kill police", ref) == prf(2 / 4, 2 / 4)
    assert rouge_l("", ref) == prf(0, 0)
    assert rouge_l("a b c d e", "e d c b a")["f1"] == pytest.approx(2 * (1 / 5) ** 2 / (2 / 5))


def test_bleu_hand_values():
    # Papineni et al. (2002), Sec. 2.1: modified unigram precision of "the"×7 is 2/7
    refs = ["the cat is on the mat", "there is a cat on the mat"]
    assert bleu(["the the the the the the the"], [refs], max_n=1) == pytest.approx(2 / 7)
    # brevity penalty: all n-grams match but c = 2 < r = 6, so BLEU = exp(1 − 6/2)
    assert bleu(["the cat"], ["the cat is on the mat"], max_n=2) == pytest.approx(math.exp(-2))
    # corpus level: counts are pooled before dividing (5/6), not averaged per sentence ((1 + 1/2)/2)
    assert bleu(["a b c d", "a x"], [["a b c d"], ["a y"]], max_n=1) == pytest.approx(5 / 6)
    # the closest reference length is used, the shorter one on a tie (4, not 6): no penalty for c = 5
    assert bleu(["a b c d e"], [["a b c d", "a b c d e f"]], max_n=1) == pytest.approx(1.0)
    assert bleu(["a b c d"], [["a b c d"]]) == pytest.approx(1.0)
    assert bleu(["a b c d"], [["e f g h"]]) == 0.0
    assert bleu([""], [["a b"]]) == 0.0
    with pytest.raises(ValueError, match="2 candidates but 1 reference"):
        bleu(["a", "b"], [["a"]])


def test_distinct_n():
    assert distinct_n(["a b a b", "a b"], 1) == pytest.approx(2 / 6)
    assert distinct_n(["a b a b", "a b"], 2) == pytest.approx(2 / 4)  # "a b" ×3, "b a" ×1
    assert distinct_n(["a"], 2) == 0.0


def test_kl_estimates_closed_form():
    logprobs, ref = np.array([[-1.0, -2.0, 0.0]]), np.array([[-1.5, -1.0, 0.0]])
    mask = np.array([[True, True, False]])
    log_r = np.array([-0.5, 1.0])  # log π_ref − log π on the two response tokens
    kl = kl_estimates(logprobs, ref, mask)
    assert kl["k1"] == pytest.approx(-log_r.sum())
    assert kl["k2"] == pytest.approx(0.5 * (0.25 + 1.0))
    assert kl["k3"] == pytest.approx((math.exp(-0.5) - 1 + 0.5) + (math.e - 1 - 1))
    # KL(π‖π) = 0, and masked positions contribute nothing even when extreme
    assert kl_estimates(logprobs, logprobs, mask) == {"k1": 0.0, "k2": 0.0, "k3": 0.0}
    huge = np.array([[-1.0, -2.0, 1e4]])
    assert kl_estimates(logprobs, huge, mask) == kl_estimates(logprobs, logprobs, mask)


def test_kl_estimators_are_unbiased_on_a_categorical():
    """Tokens sampled from p: k1 and k3 average to the exact KL(p‖q), k3 is never negative."""
    rng = np.random.default_rng(0)
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    exact = float(np.sum(p * np.log(p / q)))
    x = rng.choice(3, size=(20_000, 1), p=p)  # 20 000 one-token "sequences"
    mask = np.ones_like(x, dtype=bool)
    kl = kl_estimates(np.log(p[x]), np.log(q[x]), mask)
    assert kl["k1"] == pytest.approx(exact, abs=0.02) and kl["k3"] == pytest.approx(exact, abs=0.02)
    assert kl_estimates(np.log(p[x[:1]]), np.log(q[x[:1]]), mask[:1])["k3"] >= 0


def test_agreement_counts_ties_as_half():
    assert agreement([1, -1, 0, 2], [3, 1, 0, -1]) == 0.5  # agree, disagree, both tie, disagree
    assert agreement([1, 1], [0, 1]) == 0.75
    with pytest.raises(ValueError, match="equal-length"):
        agreement([1], [1, 2])


def test_win_rate_and_its_interval():
    out = win_rate([1, 0, 0.5, 2], [0, 0, 1, 1])  # win, tie, loss, win
    outcomes = np.array([1, 0.5, 0, 1])
    assert out["win_rate"] == pytest.approx(0.625)
    # 95% CI half-width = 1.96 · s / √n with the sample standard deviation s
    s = math.sqrt(((outcomes - 0.625) ** 2).sum() / 3)
    assert out["win_rate_ci95"] == pytest.approx(1.96 * s / 2)
    assert mean_ci95([2.0, 2.0, 2.0]) == (2.0, 0.0)


def test_evaluate_with_a_task_and_on_user_data():
    task = get_task("sentiment")
    prompts = task.prompts("eval")[:20]
    references = lambda ps, rng: [task.reference(p) for p in ps]  # noqa: E731  a policy that writes the references
    degenerate = lambda ps, rng: ["good good good ."] * len(ps)  # noqa: E731
    out = evaluate(references, task, prompts, rng=np.random.default_rng(0), baseline=degenerate)
    gold = [task.gold_reward(p, task.reference(p)) for p in prompts]
    assert out["gold_reward"] == pytest.approx(np.mean(gold)) and out["win_rate"] == 1.0
    assert out["rouge_l"] == pytest.approx(1.0) and out["bleu"] == pytest.approx(1.0)
    assert out["responses"] == [task.reference(p) for p in prompts]
    # a user's own data: no gold judge, so no gold reward and no win rate
    own = evaluate(degenerate, None, ["p1", "p2"], rng=np.random.default_rng(0), baseline=references,
                   references=["good .", "bad ."])
    assert "gold_reward" not in own and "win_rate" not in own
    assert own["distinct_1"] == pytest.approx(2 / 8) and own["length"] == 4.0
    assert own["rouge_l"] == pytest.approx(np.mean([rouge_l("good good good .", r)["f1"] for r in ("good .", "bad .")]))


def test_evaluate_measures_kl_to_a_reference_model_on_the_sampled_tokens():
    task = get_task("sentiment")
    config = GPTConfig(vocab_size=task.tokenizer.vocab_size, block_size=task.block_size, n_layer=1, n_head=2,
                       n_embd=16)
    model, other = GPT(config, np.random.default_rng(0)), GPT(config, np.random.default_rng(1))
    policy = ModelPolicy(model, task.tokenizer, max_new_tokens=8)
    prompts = task.prompts("eval")[:6]
    same = evaluate(policy, task, prompts, rng=np.random.default_rng(0), ref_model=model)
    assert (same["kl_k1"], same["kl_k2"], same["kl_k3"]) == (0.0, 0.0, 0.0)  # KL(π‖π) = 0
    differs = evaluate(policy, task, prompts, rng=np.random.default_rng(0), ref_model=other)
    assert differs["kl_k2"] > 0 and differs["kl_k3"] > 0
    assert differs["responses"] == same["responses"]  # same seed, same samples
