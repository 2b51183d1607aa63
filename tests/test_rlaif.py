"""RLAIF: the AI preference is Bradley–Terry in the labeler's scores, labels follow it (argmax exactly,
sampled within a binomial bound), the labeler labels the very pairs the reward stage shows people, and at
quick settings its agreement with the gold judge is measured on held-out pairs and a reward model
trained on its labels agrees with gold above chance."""
import numpy as np
import pytest

from minirlhf.app.cli import main
from minirlhf.app.experiments.rlaif import QUICK_SEED_COMPARISONS
from minirlhf.app.quick import quick_rlaif, quick_rlaif_ppo
from minirlhf.lm.data import load_preferences
from minirlhf.stages.experience import score_texts
from minirlhf.stages.runs import load_run, read_json, read_summary
from minirlhf.variants.rlaif import RLAIFConfig, ai_label, ai_preferences
from minirlhf.world.tasks import get_task

import claims
from claims import assert_holds
from test_ppo import tiny_runs

TASK = get_task("sentiment")


def test_ai_preference_is_bradley_terry_in_the_labelers_scores(tmp_path):
    labeler, tokenizer, _ = load_run(tiny_runs(tmp_path)[1])
    demos = TASK.demonstrations(np.random.default_rng(0), 12)
    pairs = [(p, a, b) for (p, a), (_, b) in zip(demos, demos[::-1])]
    p = ai_preferences(labeler, tokenizer, pairs, bt_scale=0.7)
    s_1 = score_texts(labeler, tokenizer, [x for x, _, _ in pairs], [a for _, a, _ in pairs])
    s_2 = score_texts(labeler, tokenizer, [x for x, _, _ in pairs], [b for _, _, b in pairs])
    # P_AI(y_1 ≻ y_2) = σ(κ (s_1 − s_2))
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-0.7 * (s_1 - s_2))), rtol=1e-6)
    swapped = ai_preferences(labeler, tokenizer, [(x, b, a) for x, a, b in pairs], bt_scale=0.7)
    np.testing.assert_allclose(p + swapped, 1.0, atol=1e-12)
    assert np.all(ai_preferences(labeler, tokenizer, [(x, a, a) for x, a, _ in pairs]) == 0.5)


def test_labels_follow_the_ai_preference():
    pairs = [("x", "a", "b")] * 4000
    rng = np.random.default_rng(0)
    sampled = np.mean([row["chosen"] == "a" for row in ai_label(pairs, np.full(4000, 0.8), "sample", rng)])
    # a binomial frequency: within 4 standard deviations √(0.8·0.2/4000) = 0.0063 of 0.8
    assert abs(sampled - 0.8) < 4 * np.sqrt(0.8 * 0.2 / 4000)
    argmax = ai_label(pairs[:3], np.array([0.8, 0.3, 0.51]), "argmax", rng)
    assert [row["chosen"] for row in argmax] == ["a", "b", "a"]
    assert all(row["annotator"] == "ai-labeler" and {row["chosen"], row["rejected"]} == {"a", "b"} for row in argmax)
    ties = [row["chosen"] for row in ai_label(pairs[:200], np.full(200, 0.5), "argmax", rng)]
    assert 60 < ties.count("a") < 140                         # an exact tie is a coin flip
    with pytest.raises(ValueError, match="RLAIFConfig.label"):
        RLAIFConfig(label="soft")


def test_cli_labels_with_a_scorer_and_rejects_a_language_model(tmp_path, capsys):
    init, labeler = tiny_runs(tmp_path)
    out = tmp_path / "rlaif"
    assert main(["rlaif", "--init", str(init), "--labeler", str(labeler), "--comparisons", "6",
                 "--heldout-comparisons", "5", "--label", "argmax", "--out", str(out)]) == 0
    rows = load_preferences(out / "ai_comparisons.jsonl")
    assert len(rows) == 6 and len(load_preferences(out / "heldout_comparisons.jsonl")) == 5
    assert read_summary(out)["n"] == 6
    assert main(["rlaif", "--init", str(init), "--labeler", str(init), "--out", str(tmp_path / "x")]) == 2
    assert "must be a scoring-model run" in capsys.readouterr().err


# ----------------------------------------------------------------------------- quick settings (cached runs)

@pytest.fixture(scope="module")
def quick():
    return quick_rlaif()


def test_quick_ai_labels_the_pairs_people_labelled_and_is_measured_on_held_out_pairs(quick):
    human, ai = load_preferences(quick["human"] / "comparisons.jsonl"), load_preferences(quick["labels"] / "ai_comparisons.jsonl")
    as_pairs = lambda rows: [(r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in rows]  # noqa: E731
    assert as_pairs(ai) == as_pairs(human)                     # the same pairs, in the same order
    assert load_preferences(quick["labels"] / "heldout_comparisons.jsonl") == \
        load_preferences(quick["human"] / "heldout_comparisons.jsonl")
    # the labeler learnt from 200 human labels: better than chance against the gold judge (≈ 190 held-out pairs
    # gold does not tie: a standard error of 0.036 around ½), worse than the people it learnt from
    assert_holds(claims.rlaif_labels())
    assert read_summary(quick["human-small"])["n_train"] == QUICK_SEED_COMPARISONS


def test_quick_reward_model_is_trained_on_the_ai_labels(quick):
    # An RM on AI labels is no better than its labeler, and at quick settings its accuracy against gold is not
    # robust (on one seed it is at chance: docs/results/robustness.md): this checks what it was trained on; the
    # rlaif experiment measures how well it does at default settings (docs/results/rlaif.md)
    ai = read_summary(quick["ai"])
    assert ai["n_train"] == len(load_preferences(quick["labels"] / "ai_comparisons.jsonl"))


def test_quick_ppo_on_the_ai_labelled_reward_model_raises_its_score(quick):
    run_dir = quick_rlaif_ppo()
    assert read_json(run_dir / "config.json")["stage_config"]["reward"] == str(quick["ai"])   # on AI labels only
    # the policy optimises the AI-labelled RM. Whether it beats SFT under the gold judge is not robust at quick
    # settings (47%–72% over 5 seeds and 2 BLAS kernels); at default settings it wins 74.6% (docs/results/rlaif.md)
    assert_holds(claims.rlaif_ppo_raises_the_reward())
