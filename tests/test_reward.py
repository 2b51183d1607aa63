"""The reward model: the Bradley–Terry loss (ln 2 at equal rewards, margins, weights, finite
differences, extreme inputs), K-wise expansion, the score read at the <eos> for any padding,
the whole RM in float64, learning a synthetic preference, the normalisation folded into the
head, the metrics, and — on the cached quick runs — the article's claims at weak thresholds."""
import math

import numpy as np
import pytest

from minirlhf.app.cli import main
from minirlhf.app.pipeline import quick_run
from minirlhf.app.quick import quick_size
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.gradcheck import gradcheck
from minirlhf.engine.nn import load_state_dict_file
from minirlhf.engine.optim import AdamW
from minirlhf.lm.data import collate, encode_pair, expand_comparisons, load_preferences
from minirlhf.lm.model import GPTConfig, ScalarHeadModel, last_token_values
from minirlhf.lm.tokenizer import WordTokenizer
from minirlhf.stages.experience import score_all
from minirlhf.stages.reward import RewardConfig, bradley_terry_loss, comparison_loss, fold_into_head, train_reward_model
from minirlhf.stages.runs import load_run, read_metrics, read_summary
from minirlhf.world.reward_metrics import calibration, judge_agreement, preference_metrics
from minirlhf.world.tasks import get_task

import claims
from claims import assert_holds

WORDS = ["good", "bad", "fine", "the", "movie", "was", "it", "."]


def tiny_rm(seed=0, dtype=np.float64, n_layer=1, n_embd=16):
    config = GPTConfig(vocab_size=len(WORDS) + 4, block_size=16, n_layer=n_layer, n_head=2, n_embd=n_embd)
    rm = ScalarHeadModel(config, np.random.default_rng(seed)).astype(dtype)
    rng = np.random.default_rng(seed + 1)
    for p in rm.parameters():   # off the init (LayerNorm 1/0, zero biases), so no gradient is trivially 0
        p.data = p.data + rng.normal(0, 0.3, p.shape).astype(dtype)
    return rm


# ----------------------------------------------------------------------------- the loss

def test_loss_of_equal_rewards_is_ln2():
    r = np.random.default_rng(0).normal(size=7) * 100
    assert float(bradley_terry_loss(r, r).data) == pytest.approx(math.log(2), abs=1e-15)
    assert float(bradley_terry_loss(r, r, weights=np.arange(1.0, 8.0)).data) == pytest.approx(math.log(2), abs=1e-15)


def test_loss_closed_form_with_margin_and_weights():
    chosen, rejected = np.array([1.0, 0.5, -2.0]), np.array([0.0, 1.5, -1.0])
    margin, weights = np.array([0.0, 1.0, 3.0]), np.array([1.0, 0.5, 0.25])
    # −log σ(z) = log(1 + e^{−z}), z = r_c − r_r − m = [1, −2, −4]
    per_pair = np.log1p(np.exp(-np.array([1.0, -2.0, -4.0])))
    expected = (per_pair * weights).sum() / weights.sum()
    assert float(bradley_terry_loss(chosen, rejected, margin, weights).data) == pytest.approx(expected, rel=1e-12)


def test_margin_shifts_the_chosen_reward_down():
    rng = np.random.default_rng(1)
    chosen, rejected, margin = rng.normal(size=5), rng.normal(size=5), rng.uniform(0, 3, size=5)
    with_margin = float(bradley_terry_loss(chosen, rejected, margin).data)
    assert with_margin == pytest.approx(float(bradley_terry_loss(chosen - margin, rejected).data), rel=1e-12)
    assert with_margin > float(bradley_terry_loss(chosen, rejected).data)   # a margin only ever asks for more


def test_loss_gradcheck_float64():
    rng = np.random.default_rng(2)
    chosen, rejected = (Tensor(rng.normal(size=6) * 2, requires_grad=True) for _ in range(2))
    margin, weights = rng.uniform(0, 2, size=6), rng.uniform(0.1, 1, size=6)
    gradcheck(lambda c, r: bradley_terry_loss(c, r, margin, weights), [chosen, rejected])
    # analytic: ∂L/∂r_c = −σ(−z)·w/Σw
    z = chosen.data - rejected.data - margin
    np.testing.assert_allclose(chosen.grad, -weights / weights.sum() / (1 + np.exp(z)), rtol=1e-12)
    np.testing.assert_allclose(rejected.grad, -chosen.grad, rtol=1e-12)


def test_loss_is_finite_at_extreme_rewards():
    chosen = Tensor(np.array([1e4, -1e4], np.float32), requires_grad=True)
    loss = bradley_terry_loss(chosen, np.zeros(2, np.float32))
    loss.backward()
    assert loss.dtype == np.float32   # no silent float64 promotion
    assert float(loss.data) == pytest.approx(1e4 / 2)   # (0 + 1e4) / 2
    np.testing.assert_allclose(chosen.grad, [0.0, -0.5])


# ----------------------------------------------------------------------------- K-wise rankings

def test_kwise_expansion_gives_every_pair_once_oriented_and_weighted():
    rows = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranking": [2, 0, 3, 1]},
            {"prompt": "q", "chosen": "x", "rejected": "y", "margin": 2}]
    texts, chosen, rejected, margin, weight = expand_comparisons(rows)
    assert texts == [("p", "a"), ("p", "b"), ("p", "c"), ("p", "d"), ("q", "x"), ("q", "y")]   # one forward pass each
    # c ≻ a ≻ d ≻ b: C(4, 2) = 6 pairs, each (better, worse)
    assert list(zip(chosen.tolist(), rejected.tolist())) == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1), (4, 5)]
    np.testing.assert_allclose(weight, [1 / 6] * 6 + [1.0])
    np.testing.assert_array_equal(margin, [0, 0, 0, 0, 0, 0, 2])
    for k in range(2, 10):
        ranking = list(np.random.default_rng(k).permutation(k))
        _, c, r, _, w = expand_comparisons([{"prompt": "p", "responses": list("abcdefghi"[:k]), "ranking": ranking}])
        assert len(c) == k * (k - 1) // 2 and len(set(zip(c, r))) == len(c)
        assert all(ranking.index(i) < ranking.index(j) for i, j in zip(c, r))
        assert w.sum() == pytest.approx(1.0)   # a prompt counts once, however many pairs it holds


def test_kwise_loss_is_the_mean_over_prompts_of_the_mean_over_pairs():
    tok, rm = WordTokenizer(WORDS), tiny_rm()
    rows = [{"prompt": "the movie was", "responses": ["good .", "bad .", "fine .", "it was good ."],
             "ranking": [3, 0, 2, 1]},
            {"prompt": "it was", "chosen": "fine .", "rejected": "bad ."}]
    loss, _ = comparison_loss(rm, tok, rows, margin_scale=0.0)
    scores = {}
    for row in rows:
        for response in row.get("responses", [row.get("chosen"), row.get("rejected")]):
            batch = collate([encode_pair(tok, row["prompt"], response)], tok.pad_id)
            scores[row["prompt"], response] = float(last_token_values(rm(batch[0], batch[1]), batch[2]).data[0])
    nll = lambda a, b: math.log1p(math.exp(-(a - b)))
    r = [scores["the movie was", y] for y in rows[0]["responses"]]
    ranked = [3, 0, 2, 1]
    first = np.mean([nll(r[ranked[i]], r[ranked[j]]) for i in range(4) for j in range(i + 1, 4)])
    second = nll(scores["it was", "fine ."], scores["it was", "bad ."])
    assert float(loss.data) == pytest.approx((first + second) / 2, rel=1e-10)


# ----------------------------------------------------------------------------- the reward model

def test_score_is_read_at_the_eos_for_left_and_right_padding():
    tok, rm = WordTokenizer(WORDS), tiny_rm()
    pairs = [encode_pair(tok, "the movie was", "good ."), encode_pair(tok, "it was", "bad . it was fine ."),
             encode_pair(tok, "the movie", "fine .")]
    alone = [float(last_token_values(rm(*collate([p], 0)[:2]), collate([p], 0)[2]).data[0]) for p in pairs]
    ids, mask, response = collate(pairs, tok.pad_id)                                   # left-padded
    left = last_token_values(rm(ids, mask), response).data
    T = ids.shape[1]
    right_ids, right_mask, right_response = (np.zeros_like(a) for a in (ids, mask, response))
    for b, (seq, resp) in enumerate(pairs):                                             # right-padded by hand
        right_ids[b, :len(seq)], right_mask[b, :len(seq)], right_response[b, :len(seq)] = seq, True, resp
    right_ids[~right_mask] = 5   # whatever the padding holds
    right = last_token_values(rm(right_ids, right_mask), right_response).data
    np.testing.assert_allclose(left, alone, atol=1e-12)
    np.testing.assert_allclose(right, alone, atol=1e-12)
    assert T > min(len(s) for s, _ in pairs) and len(set(np.round(alone, 6))) == 3


def test_whole_reward_model_gradcheck_float64():
    tok, rm = WordTokenizer(WORDS), tiny_rm(n_layer=2, n_embd=8)
    rows = [{"prompt": "the movie was", "responses": ["good .", "bad .", "fine ."], "ranking": [0, 2, 1]},
            {"prompt": "it was", "chosen": "fine .", "rejected": "bad . bad .", "margin": 1}]
    names, params = zip(*rm.named_parameters())
    gradcheck(lambda *_: comparison_loss(rm, tok, rows, margin_scale=0.7)[0], list(params), names=list(names),
              max_elements=6, rng=np.random.default_rng(4))


def test_a_tiny_reward_model_learns_a_synthetic_preference():
    # the hidden preference: (#good − #bad) in the response; pairs labelled by it without noise
    tok, rng = WordTokenizer(WORDS), np.random.default_rng(5)
    rm = tiny_rm(seed=5, dtype=np.float32, n_layer=1, n_embd=16)
    words = ["good", "bad", "fine", "it", "was"]

    def pair():
        a, b = (" ".join(rng.choice(words, size=rng.integers(2, 7))) + " ." for _ in range(2))
        value = lambda y: y.split().count("good") - y.split().count("bad")
        if value(a) == value(b):
            return pair()
        return {"prompt": "the movie was", "chosen": max(a, b, key=value), "rejected": min(a, b, key=value)}

    train, test = [pair() for _ in range(600)], [pair() for _ in range(200)]
    _, diff = comparison_loss(rm, tok, test, 0.0)
    assert np.mean(diff > 0) < 0.65   # a random head: near chance
    optimizer = AdamW(rm.parameters(), lr=1e-2, weight_decay=0.0)
    for step in range(100):
        loss, _ = comparison_loss(rm, tok, [train[i] for i in rng.choice(600, 16, replace=False)], 0.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _, diff = comparison_loss(rm, tok, test, 0.0)
    assert np.mean(diff > 0) >= 0.95, np.mean(diff > 0)


def test_normalisation_is_folded_into_the_score_head():
    tok, rm = WordTokenizer(WORDS), tiny_rm()
    prompts, responses = ["the movie was", "it was", "the movie"], ["good .", "bad . bad .", "fine ."]
    before = score_all(rm, tok, prompts, responses)
    fold_into_head(rm, mean=before.mean(), std=before.std())
    after = score_all(rm, tok, prompts, responses)
    np.testing.assert_allclose(after, (before - before.mean()) / before.std(), atol=1e-12)
    assert abs(after.mean()) < 1e-12 and after.std() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- metrics

def test_preference_metrics_on_hand_values():
    diff = np.array([1.0, -1.0, 0.0, 2.0])              # the RM's r_c − r_r on four labelled pairs
    gold = np.array([0.5, 0.5, -0.1, 0.0])              # the 4th is a gold tie: no right answer
    out = preference_metrics(diff, gold, grades=[3, 3, 0, 1], clear_gap=0.27)
    assert out["accuracy"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)           # a tie counts ½
    assert out["accuracy_gold"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert out["accuracy_gold_clear"] == pytest.approx(0.5) and out["n_clear"] == 2
    assert out["annotator_accuracy_gold"] == pytest.approx(2 / 3) and out["gold_tie_fraction"] == 0.25
    assert out["accuracy_by_grade"]["significantly better"] == {"accuracy": 0.5, "n": 2}
    assert out["margin"] == pytest.approx(0.5)


def test_judge_agreement_on_hand_values():
    class Toy:   # gold prefers more words; the reference is "a b c"
        def gold_reward(self, prompt, response):
            return len(response.split())

        def reference(self, prompt):
            return "a b c"

    pairs = [("p", "a b c d", "x"), ("p", "x y z", "a b"), ("p", "q", "r s"), ("p", "a b", "c d")]
    out = judge_agreement(Toy(), pairs, rm_diff=[1.0, -1.0, 2.0, 5.0])
    # gold gaps +3, +1, −1 and a tie (left out); ROUGE-L F1 gaps +, −, 0 (a tie counts ½)
    assert out["n"] == 3
    assert out["reward_model"] == pytest.approx(1 / 3) and out["rouge_l"] == pytest.approx(0.5)
    assert out["annotators"] == pytest.approx(2 / 3)   # the labelling annotator chose the first response
    assert out["ties"]["bleu"] == 1.0                 # no shared 4-gram anywhere: BLEU-4 calls every pair a tie


def test_calibration_of_a_calibrated_and_an_overconfident_judge():
    rng = np.random.default_rng(6)
    logit = rng.normal(0, 2, 20000)
    chose_first = rng.random(20000) < 1 / (1 + np.exp(-logit))          # labels drawn from σ(logit)
    diff = np.where(chose_first, logit, -logit)                          # oriented (chosen, rejected)
    calibrated, overconfident = calibration(diff), calibration(4 * diff)
    assert calibrated["ece"] < 0.02 < 0.1 < overconfident["ece"]
    np.testing.assert_allclose(calibrated["predicted"], calibrated["observed"], atol=0.03)


# ----------------------------------------------------------------------------- the stage, on the cached quick runs

def test_quick_reward_model_agrees_with_gold_well_above_chance():
    # quick settings (400 comparisons, 60 steps, 200 held-out pairs, CI ≈ ±0.065): ≥ 62% against gold
    # and ≥ 65% on clear pairs, chance being 50%; the default stage reaches ≥ 85% on clear pairs
    # (docs/results/rm_scaling.md)
    assert_holds(claims.reward_model_accuracy())


def test_reward_model_agrees_with_gold_more_than_rouge_and_bleu():
    # on the same held-out pairs of policy outputs, against the same human reference. On the summarize task the
    # quick RM's lead over ROUGE/BLEU is not robust (on one seed it trails by 10 points), so the quick test
    # checks sentiment; both tasks at default settings are in docs/results/rm_scaling.md
    assert_holds(claims.reward_model_beats_rouge_and_bleu())


def test_accuracy_rises_with_the_number_of_comparisons(tmp_path):
    # same steps, same held-out pairs: 25 comparisons against the quick run's 400
    assert_holds(claims.reward_model_data_scaling(0, tmp_path))


def test_quick_reward_models_of_two_sizes_on_the_same_comparisons():
    # the same 400 quick comparisons and 200 held-out pairs: the quick pipeline's 2 × 64 body against a 1 × 32 one
    # made by the same quick recipe (experiments.rm_scaling's smaller quick size)
    small_dir = quick_size(1, 2, 32)
    big, small = read_summary(quick_run("sentiment", "reward")), read_summary(small_dir)
    assert load_run(small_dir)[2]["model_config"]["n_embd"] == 32 and small["n_train"] == big["n_train"]
    # At quick settings no measure separates the two sizes on every seed and BLAS kernel (on one seed the small RM
    # has the lower held-out loss and the higher accuracy: docs/results/robustness.md), so this test checks that
    # both learnt the preferences; the scaling is the rm-scaling experiment's, with its confidence intervals
    # (docs/results/rm_scaling.md).
    assert_holds(claims.reward_model_size_scaling())


def test_the_saved_model_scores_sft_samples_mean_0_std_1():
    assert_holds(claims.reward_model_normalised())
    _, _, config = load_run(quick_run("sentiment", "reward"))
    assert config["model_type"] == "scalar" and read_summary(quick_run("sentiment", "reward"))["bt_scale"] > 0


def test_comparisons_are_written_in_the_data_formats():
    rm_dir = quick_run("sentiment", "reward")
    train, heldout = load_preferences(rm_dir / "comparisons.jsonl"), load_preferences(rm_dir / "heldout_comparisons.jsonl")
    summary = read_summary(rm_dir)
    assert (len(train), len(heldout)) == (summary["n_train"], summary["n_heldout"])
    assert all(set(row) == {"prompt", "chosen", "rejected", "margin", "annotator"} for row in train + heldout)
    assert not {row["prompt"] for row in train} & set(get_task("sentiment").prompts("eval"))


def test_resumed_reward_training_ends_with_the_same_weights(tmp_path, monkeypatch):
    import minirlhf.stages.reward as stage

    from test_pretrain_sft import _press_ctrl_c_during
    init = quick_run("sentiment", "sft")
    config = RewardConfig(comparisons=12, k=4, heldout_comparisons=8, steps=6, batch_size=4, eval_every=3,
                          normalize_samples=8, checkpoint_every=100)   # K-wise rankings: the other path
    straight = train_reward_model(config, init=init, out=tmp_path / "straight", quiet=True)
    with monkeypatch.context() as patch:
        _press_ctrl_c_during(patch, stage, "reward_update", 3)
        with pytest.raises(KeyboardInterrupt, match="checkpoint saved at step 4"):
            train_reward_model(config, init=init, out=tmp_path / "resumed", quiet=True)
    resumed = train_reward_model(config, init=init, out=tmp_path / "resumed", resume=True, quiet=True)
    a, b = load_state_dict_file(straight / "model.npz"), load_state_dict_file(resumed / "model.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert read_metrics(resumed) == read_metrics(straight)
    assert len(load_preferences(resumed / "comparisons.jsonl")[0]["responses"]) == 4


def test_cli_reward_trains_on_its_own_comparisons(tmp_path):
    rm_dir, out = quick_run("sentiment", "reward"), tmp_path / "rm"
    assert main(["reward", "--init", str(quick_run("sentiment", "sft")), "--data", str(rm_dir / "comparisons.jsonl"),
                 "--heldout-data", str(rm_dir / "heldout_comparisons.jsonl"), "--steps", "2", "--margin", "1.0",
                 "--normalize-samples", "10", "--out", str(out), "--quiet"]) == 0
    assert load_preferences(out / "comparisons.jsonl") == load_preferences(rm_dir / "comparisons.jsonl")
    for name in ("model.npz", "summary.json", "curves.png", "calibration.png", "metrics.jsonl"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("argv, message", [
    (["reward", "--init", "x", "--k", "3"], "RewardConfig.k = 3; allowed: 2 (graded pairs) or 4..9"),
    (["reward", "--init", "x", "--margin", "-1"], "RewardConfig.margin"),
    (["reward", "--init", "no/such/run"], "not a minirlhf run directory"),
])
def test_cli_reward_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
