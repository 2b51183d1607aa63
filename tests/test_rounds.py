"""Iterated RLHF rounds: each round adds exactly the comparisons it collected of the current policy
to the data its reward model retrains on, scores the stale reward model before it learns, and at
quick settings three rounds keep moving the policy away from SFT without losing gold reward."""
import pytest

from minirlhf.app.cli import main
from minirlhf.app.experiments.rounds import QUICK_ROUNDS
from minirlhf.app.pipeline import quick_run
from minirlhf.app.quick import quick_rounds
from minirlhf.lm.data import load_preferences
from minirlhf.stages.runs import is_complete, read_summary
from minirlhf.variants.rounds import RoundsConfig
from minirlhf.world.tasks import get_task

import claims
from claims import assert_holds

TASK = get_task("sentiment")


def test_each_round_adds_exactly_the_comparisons_it_collected():
    run_dir = quick_rounds()
    previous = load_preferences(quick_run("sentiment", "reward") / "comparisons.jsonl")   # D_0
    for k in (1, 2, 3):
        round_dir = run_dir / f"round-{k}"
        new = load_preferences(round_dir / "new_comparisons.jsonl")
        data = load_preferences(round_dir / "comparisons.jsonl")
        # D_k = D_{k−1} ∪ the round's new pairs, in that order, and the retrained RM saw all of them
        assert data == previous + new
        assert len(new) == QUICK_ROUNDS["comparisons"] == read_summary(round_dir)["new_comparisons"]
        assert read_summary(round_dir / "reward")["n_train"] == len(data)
        # the new pairs are on training prompts, the round's held-out pairs on eval prompts
        assert {row["prompt"] for row in new} <= set(TASK.prompts("train"))
        assert {row["prompt"] for row in load_preferences(round_dir / "heldout_comparisons.jsonl")} <= set(
            TASK.prompts("eval"))
        previous = data
    assert is_complete(run_dir)


def test_quick_rounds_keep_moving_and_show_the_stale_reward_model():
    rows = read_summary(quick_rounds())["rounds"]
    assert [row["round"] for row in rows] == [1, 2, 3]
    # the policy keeps moving: KL to SFT grows past 0.1 nats, round 3 is farther than round 1, and round 3 still
    # beats SFT under the gold judge. Whether round 3 beats round 1 is not robust at quick settings (on some seeds
    # and BLAS kernels round 3 falls back; docs/results/robustness.md), so the rounds experiment reports it with
    # its confidence intervals instead (docs/results/rounds.md).
    assert_holds(claims.rounds_keep_moving())
    # the stale RM is measured on every round's new pairs, and the retrained one on the round's held-out pairs
    for row in rows:
        assert 0.0 <= row["stale_accuracy_gold"] <= 1.0 and 0.0 <= row["rm_accuracy_gold"] <= 1.0


def test_rounds_refuse_bad_values_and_a_used_directory_without_resume(tmp_path, capsys):
    with pytest.raises(ValueError, match="RoundsConfig.method"):
        RoundsConfig(method="dpo")
    with pytest.raises(ValueError, match="RoundsConfig.heldout_comparisons"):
        RoundsConfig(heldout_comparisons=0)
    (tmp_path / "r" / "round-1").mkdir(parents=True)
    argv = ["rounds", "--init", str(quick_run("sentiment", "sft")), "--reward", str(quick_run("sentiment", "reward")),
            "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
