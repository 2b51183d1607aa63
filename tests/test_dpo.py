"""DPO: the loss against closed forms (ln 2 at init, IPO, hinge, label smoothing) and against the
Bradley–Terry loss of its implicit rewards, finite-difference gradients, one step raising the
log-ratio, empty responses, exact resume, the command line, and the headline: DPO beats SFT."""
import json
import math

import numpy as np
import pytest

from minirlhf.app.cli import main
from minirlhf.app.pipeline import quick_run
from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.gradcheck import gradcheck
from minirlhf.engine.nn import load_state_dict_file
from minirlhf.engine.optim import SGD
from minirlhf.lm.data import collate, encode_pair
from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.stages.dpo import (DPOConfig, dpo_loss, encode_pairs, pair_logps, preference_pairs, response_logps,
                                 train_dpo)
from minirlhf.stages.runs import read_metrics

import claims
from claims import assert_holds

# h = (π_c − π_r) − (ref_c − ref_r) = (−1 + 3) − (−2 + 2) = 2
HAND = dict(policy_chosen_logps=Tensor(np.array([-1.0])), policy_rejected_logps=Tensor(np.array([-3.0])),
            ref_chosen_logps=np.array([-2.0]), ref_rejected_logps=np.array([-2.0]))


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def tiny_model(seed=0):
    return GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8),
               np.random.default_rng(seed)).astype(np.float64)


class Tok:   # the ids of a tiny vocabulary: 0 pad, 1 bos, 2 eos, words are digits 3..10
    pad_id, bos_id, eos_id = 0, 1, 2

    def encode(self, text):
        return [int(w) for w in text.split()]


PAIRS = [("3 4", "5 6 7", "8"), ("9", "10 3", "4 4 4 5"), ("5 5 6", "7", "9 9")]   # (prompt, chosen, rejected)
EXAMPLES = [(encode_pair(Tok(), p, c), encode_pair(Tok(), p, r)) for p, c, r in PAIRS]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_rewards_are_beta_times_the_log_ratio_without_gradient(loss_type):
    _, chosen, rejected = dpo_loss(**HAND, beta=0.5, loss_type=loss_type)
    assert isinstance(chosen, np.ndarray) and isinstance(rejected, np.ndarray)
    np.testing.assert_allclose(chosen, [0.5 * (-1 + 2)])
    np.testing.assert_allclose(rejected, [0.5 * (-3 + 2)])


def test_loss_is_ln2_when_policy_equals_reference():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(-20, 5, 8), rng.normal(-20, 5, 8)
    losses, r_c, r_r = dpo_loss(Tensor(chosen), Tensor(rejected), chosen, rejected, beta=0.1)
    np.testing.assert_allclose(losses.data, math.log(2), rtol=1e-12)
    assert np.all(r_c == 0) and np.all(r_r == 0)
    # and through a model: π = π_ref (two copies of the same weights) at step 0
    policy, reference = tiny_model(), tiny_model()
    c, r = pair_logps(policy, EXAMPLES, range(3), Tok.pad_id)
    c_ref, r_ref = pair_logps(reference, EXAMPLES, range(3), Tok.pad_id)
    losses, _, _ = dpo_loss(c, r, c_ref.data, r_ref.data)
    np.testing.assert_allclose(losses.data, math.log(2), rtol=1e-12)


def test_sigmoid_ipo_and_hinge_closed_forms_on_hand_values():
    beta = 0.1   # h = 2, βh = 0.2
    assert dpo_loss(**HAND, beta=beta)[0].item() == pytest.approx(-log_sigmoid(0.2), rel=1e-12)
    # IPO: (h − 1/(2β))² = (2 − 5)² = 9
    assert dpo_loss(**HAND, beta=beta, loss_type="ipo")[0].item() == pytest.approx(9.0, rel=1e-12)
    # hinge: max(0, 1 − βh) = 0.8; and 0 once βh ≥ 1
    assert dpo_loss(**HAND, beta=beta, loss_type="hinge")[0].item() == pytest.approx(0.8, rel=1e-12)
    assert dpo_loss(**HAND, beta=0.6, loss_type="hinge")[0].item() == 0.0


def test_label_smoothing_formula():
    eps, beta = 0.2, 0.1
    expected = -(1 - eps) * log_sigmoid(0.2) - eps * log_sigmoid(-0.2)
    assert dpo_loss(**HAND, beta=beta, label_smoothing=eps)[0].item() == pytest.approx(expected, rel=1e-12)
    # at ε = 0.5 the label carries no information: the loss is symmetric in chosen and rejected
    swapped = dict(HAND, policy_chosen_logps=HAND["policy_rejected_logps"],
                   policy_rejected_logps=HAND["policy_chosen_logps"])
    assert dpo_loss(**HAND, label_smoothing=0.5 - 1e-12)[0].item() == \
        pytest.approx(dpo_loss(**swapped, label_smoothing=0.5 - 1e-12)[0].item(), rel=1e-9)


def test_sigmoid_dpo_is_the_bradley_terry_loss_of_the_implicit_rewards():
    from minirlhf.stages.reward import bradley_terry_loss
    rng = np.random.default_rng(1)
    logps = [rng.normal(-15, 4, 16) for _ in range(4)]
    losses, chosen_rewards, rejected_rewards = dpo_loss(*(Tensor(x) for x in logps), beta=0.3)
    bt = bradley_terry_loss(Tensor(chosen_rewards), Tensor(rejected_rewards))
    assert losses.mean().item() == pytest.approx(bt.item(), rel=1e-12)


@pytest.mark.parametrize("loss_type, label_smoothing", [("sigmoid", 0.0), ("sigmoid", 0.1), ("ipo", 0.0),
                                                          ("hinge", 0.0)])
def test_loss_gradients_match_finite_differences(loss_type, label_smoothing):
    rng = np.random.default_rng(2)
    pc, pr = (Tensor(rng.normal(-10, 3, 6), requires_grad=True) for _ in range(2))
    ref_c, ref_r = rng.normal(-10, 3, 6), rng.normal(-10, 3, 6)
    gradcheck(lambda a, b: dpo_loss(a, b, ref_c, ref_r, beta=0.2, loss_type=loss_type,
                                    label_smoothing=label_smoothing)[0].mean(), [pc, pr])


def test_whole_model_gradient_matches_finite_differences():
    policy, reference = tiny_model(0), tiny_model(1)
    ref = [x.data for x in pair_logps(reference, EXAMPLES, range(3), Tok.pad_id)]
    names, params = zip(*policy.named_parameters())

    def loss(*_):
        chosen, rejected = pair_logps(policy, EXAMPLES, range(3), Tok.pad_id)
        return dpo_loss(chosen, rejected, *ref, beta=0.5)[0].mean()
    gradcheck(loss, list(params), names=list(names), max_elements=15, rng=np.random.default_rng(3))


def test_one_gradient_step_raises_the_chosen_minus_rejected_log_ratio():
    policy, reference = tiny_model(0), tiny_model(0)
    ref_c, ref_r = (x.data for x in pair_logps(reference, EXAMPLES, range(3), Tok.pad_id))
    chosen, rejected = pair_logps(policy, EXAMPLES, range(3), Tok.pad_id)
    h_before = (chosen.data - rejected.data) - (ref_c - ref_r)   # 0: π = π_ref
    optimizer = SGD(policy.parameters(), lr=0.1)
    dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.1)[0].mean().backward()
    optimizer.step()
    chosen, rejected = pair_logps(policy, EXAMPLES, range(3), Tok.pad_id)
    h_after = (chosen.data - rejected.data) - (ref_c - ref_r)
    assert np.all(h_before == 0) and h_after.mean() > 1e-3, h_after


def test_extreme_log_ratios_give_finite_losses_and_gradients():
    for h in (1e4, -1e4):
        pc = Tensor(np.array([h], np.float32), requires_grad=True)
        losses, _, _ = dpo_loss(pc, Tensor(np.zeros(1, np.float32)), np.zeros(1), np.zeros(1), beta=1.0)
        losses.sum().backward()
        assert np.isfinite(losses.data).all() and np.isfinite(pc.grad).all()
        assert losses.item() == pytest.approx(-float(F.logsigmoid(Tensor(np.array([h]))).item()))


def test_empty_response_mask_is_an_error_naming_the_row():
    ids, mask = encode_pair(Tok(), "3 4", "5")
    batch = collate([(ids, mask), (ids, [False] * len(ids))], Tok.pad_id)
    with pytest.raises(ValueError, match=r"row 1 of the batch has an empty response mask"):
        response_logps(tiny_model(), batch)


def test_a_pair_longer_than_the_context_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"pair 1 \(prompt '9'\) is 23 tokens long, more than the model's block_size 16"):
        encode_pairs(Tok(), [("3", "4", "5"), ("9", "5 " * 20, "6")], "pair", block_size=16)


def test_kwise_rankings_expand_to_correctly_oriented_pairs():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "responses": ["x", "y", "z"], "ranking": [2, 0, 1]}]   # z ≻ x ≻ y
    assert preference_pairs(rows) == [("p", "a", "b"), ("q", "z", "x"), ("q", "z", "y"), ("q", "x", "y")]


def test_config_names_the_field_and_range():
    with pytest.raises(ValueError, match="DPOConfig.loss_type"):
        DPOConfig(loss_type="kto")
    with pytest.raises(ValueError, match=r"DPOConfig.label_smoothing = 0.5 .*\[0.0, 0.5\)"):
        DPOConfig(label_smoothing=0.5)
    with pytest.raises(ValueError, match="DPOConfig.beta"):
        DPOConfig(beta=0.0)


def _write_pairs(path, n=24):
    from minirlhf.world.tasks import get_task
    task, rng = get_task("sentiment"), np.random.default_rng(0)
    prompts = task.prompts("train")[:n]
    good, other = task.human_policy(prompts, rng), task.human_policy(prompts, rng)
    path.write_text("".join(json.dumps({"prompt": p, "chosen": a, "rejected": b}) + "\n"
                            for p, a, b in zip(prompts, good, other)))
    return path


def test_resumed_dpo_ends_with_the_same_weights(tmp_path, monkeypatch):
    import minirlhf.stages.dpo as stage

    from test_pretrain_sft import _press_ctrl_c_during
    data, init = _write_pairs(tmp_path / "pairs.jsonl"), quick_run("sentiment", "sft")
    config = DPOConfig(steps=6, batch_size=4, eval_every=3, eval_prompts=4, checkpoint_every=100)
    straight = train_dpo(config, init=init, out=tmp_path / "straight", data=data, quiet=True)
    with monkeypatch.context() as patch:
        _press_ctrl_c_during(patch, stage, "dpo_update", 4)
        with pytest.raises(KeyboardInterrupt):
            train_dpo(config, init=init, out=tmp_path / "resumed", data=data, quiet=True)
    resumed = train_dpo(config, init=init, out=tmp_path / "resumed", data=data, resume=True, quiet=True)
    a, b = load_state_dict_file(straight / "model.npz"), load_state_dict_file(resumed / "model.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert read_metrics(resumed) == read_metrics(straight)


def test_cli_dpo_trains_on_a_file_and_rejects_bad_values(tmp_path, capsys):
    data, init = _write_pairs(tmp_path / "pairs.jsonl", 8), quick_run("sentiment", "sft")
    assert main(["dpo", "--init", str(init), "--data", str(data), "--steps", "2", "--batch-size", "2",
                 "--eval-prompts", "2", "--beta", "0.5", "--loss-type", "ipo", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["stage_config"]["loss_type"] == "ipo"
    assert main(["dpo", "--init", str(init), "--loss-type", "kto"]) == 2
    assert "DPOConfig.loss_type" in capsys.readouterr().err


def test_quick_dpo_learns_the_held_out_preferences():
    # trained on the reward model's comparisons, DPO ranks held-out pairs above chance and moves away from SFT.
    # Its win rate against SFT under the gold judge is not robust at quick settings (47%–62% over 5 seeds and 2
    # BLAS kernels, docs/results/robustness.md); at default settings it wins 77% (docs/results/pipeline).
    assert_holds(claims.dpo_learns_the_preferences())
