"""Simulated annotators: Bradley–Terry and Plackett–Luce probabilities in closed form, agreement
falling with noise, graded margins, K-wise rows, and the collected files."""

import math

import numpy as np
import pytest

from minirlhf.lm.data import load_preferences, ranking_pairs, write_jsonl
from minirlhf.world.annotators import (MARGIN_TABLE, Annotator, agreement_rates, annotator_preferences,
                                       collect_comparisons, default_pool, gold_preferences)
from minirlhf.world.metrics import agreement
from minirlhf.world.tasks import get_task


class TableTask:
    """A mock task whose gold reward is looked up from a table (the response text is the key)."""

    def __init__(self, gold):
        self.gold = gold

    def gold_reward(self, prompt, response):
        return self.gold[response]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_pairwise_choice_is_bradley_terry():
    task, rng, n = TableTask({"a": 0.3, "b": 0.0}), np.random.default_rng(0), 20_000
    for tau in (0.1, 0.3, 1.0):
        wins = sum(Annotator("x", tau).compare(task, "p", "a", "b", rng) for _ in range(n))
        p = sigmoid(0.3 / tau)  # P(a ≻ b) = σ((g(a) − g(b))/τ)
        assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n), (tau, wins / n, p)


def test_ranking_is_plackett_luce():
    gold = {"a": 0.4, "b": 0.2, "c": 0.0}
    task, rng, tau, n = TableTask(gold), np.random.default_rng(1), 0.2, 20_000
    firsts = np.bincount([Annotator("x", tau).rank(task, "p", ["a", "b", "c"], rng)[0] for _ in range(n)], minlength=3)
    weights = np.exp(np.array(list(gold.values())) / tau)
    p = weights / weights.sum()  # P(i ranked first) = exp(g_i/τ) / Σ_j exp(g_j/τ)
    assert np.all(np.abs(firsts / n - p) < 4 * np.sqrt(p * (1 - p) / n))


def test_noise_free_annotator_agrees_with_gold_and_agreement_falls_with_noise():
    task = get_task("sentiment")
    rng = np.random.default_rng(0)
    prompts = task.prompts("eval")[:300]
    pairs = [(p, a, b) for p, a, b in zip(prompts, task.human_policy(prompts, rng), task.human_policy(prompts, rng))
             if task.gold_reward(p, a) != task.gold_reward(p, b)]
    gold = gold_preferences(task, pairs)
    assert agreement(annotator_preferences(Annotator("researcher", 0.0), task, pairs, rng), gold) == 1.0
    rates = [agreement(annotator_preferences(Annotator("x", tau), task, pairs, rng), gold) for tau in (0.03, 0.2, 1.0)]
    assert rates[0] > rates[1] + 0.08 > rates[2] + 0.16 and rates[2] > 0.4, rates


def test_agreement_rates_between_annotators():
    task = get_task("sentiment")
    rng = np.random.default_rng(0)
    prompts = task.prompts("eval")[:200]
    pairs = list(zip(prompts, task.human_policy(prompts, rng), task.human_policy(prompts, rng)))
    pool = [Annotator("careful", 0.02), Annotator("hasty", 1.0)]
    rates = agreement_rates(pool, task, pairs, rng)
    assert rates["between"].shape == (2, 2) and set(rates["vs_gold"]) == {"careful", "hasty"}
    assert rates["vs_gold"]["careful"] > rates["vs_gold"]["hasty"] + 0.15
    assert rates["between"][0, 0] > rates["between"][0, 1] > 0.4  # self-consistency beats cross-agreement


def test_graded_margins_follow_the_table():
    gaps = {"significantly better": 0.7, "better": 0.4, "slightly better": 0.2, "negligibly better": 0.05}
    rng = np.random.default_rng(0)
    for grade, gap in gaps.items():
        task = TableTask({"a": gap, "b": 0.0})
        assert Annotator("researcher", 0.0).grade(task, "p", "a", "b", rng) == (True, MARGIN_TABLE[grade])
        assert Annotator("researcher", 0.0).grade(task, "p", "b", "a", rng) == (False, MARGIN_TABLE[grade])
    assert MARGIN_TABLE == {"significantly better": 3, "better": 2, "slightly better": 1, "negligibly better": 0}


def test_length_bias_prefers_longer_answers_at_equal_gold():
    task, rng = TableTask({"short one": 0.5, "a much longer answer here": 0.5}), np.random.default_rng(0)
    fan = Annotator("likes-long", 0.02, length_bias=0.1)  # σ(0.3/0.02): a flip has p ≈ 3e-7
    assert all(fan.compare(task, "p", "a much longer answer here", "short one", rng) for _ in range(200))


def test_bad_annotator_settings_are_rejected():
    with pytest.raises(ValueError, match="Annotator.tau must be a finite number >= 0"):
        Annotator("x", -0.1)


def cycle_policy(texts):
    """A deterministic policy answering from a fixed list, in turn."""
    state = {"i": 0}

    def policy(prompts, rng):
        out = [texts[(state["i"] + j) % len(texts)] for j in range(len(prompts))]
        state["i"] += len(prompts)
        return out
    return policy


def test_kwise_rows_expand_to_all_correctly_ordered_pairs(tmp_path):
    task = get_task("sentiment")
    prompts = task.prompts("train")[:30]
    rows = collect_comparisons(task, task.human_policy, prompts, rng=np.random.default_rng(0), kind="ranking",
                               k=6, annotators=[Annotator("researcher", 0.0)])
    for row in rows:
        pairs = ranking_pairs(row["ranking"])
        assert len(pairs) == math.comb(6, 2) and sorted(row["ranking"]) == list(range(6))
        gold = [task.gold_reward(row["prompt"], r) for r in row["responses"]]
        assert all(gold[i] >= gold[j] for i, j in pairs)
    write_jsonl(tmp_path / "kwise.jsonl", rows)
    assert load_preferences(tmp_path / "kwise.jsonl") == rows


@pytest.mark.parametrize("kind", ["pairwise", "graded"])
def test_collected_pairs_round_trip_and_are_deterministic(tmp_path, kind):
    task = get_task("sentiment")
    prompts = task.prompts("train")[:50]
    good, bad = cycle_policy(["truly wonderful and the music was superb ."]), cycle_policy(["bad bad bad ."])
    pool = [a for a in default_pool() if a.tau <= 0.15]  # gold gap 2: a flip has p < 1e-5
    rows = collect_comparisons(task, [good, bad], prompts, rng=np.random.default_rng(0), kind=kind, annotators=pool)
    assert len(rows) == 50 and len({r["annotator"] for r in rows}) == len(pool)
    # both policies answered every prompt, and every annotator prefers the fluent answer
    assert all(r["chosen"].startswith("truly") and r["rejected"] == "bad bad bad ." for r in rows)
    assert all(("margin" in r) == (kind == "graded") for r in rows)
    if kind == "graded":
        assert {r["margin"] for r in rows} == {3}
    write_jsonl(tmp_path / "prefs.jsonl", rows)
    assert load_preferences(tmp_path / "prefs.jsonl") == rows
    again = collect_comparisons(task, task.human_policy, prompts, rng=np.random.default_rng(5), kind=kind)
    assert again == collect_comparisons(task, task.human_policy, prompts, rng=np.random.default_rng(5), kind=kind)


def test_collect_comparisons_validates_k():
    task = get_task("sentiment")
    with pytest.raises(ValueError, match="k must be between 4 and 9"):
        collect_comparisons(task, task.human_policy, ["p"], rng=np.random.default_rng(0), kind="ranking", k=10)
    with pytest.raises(ValueError, match="k must be 2 for pairwise"):
        collect_comparisons(task, task.human_policy, ["p"], rng=np.random.default_rng(0), k=4)
