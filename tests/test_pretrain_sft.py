"""Stages 1 and 2: pretraining learns the corpus, SFT learns the demonstrations and raises the
gold reward, only response tokens are trained on, NaNs stop training, resume is exact, and the
command line fails cleanly on bad arguments."""
import json
import os
import signal

import numpy as np
import pytest

from minirlhf.app.cli import main
from minirlhf.app.pipeline import quick_run
from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.nn import load_state_dict_file
from minirlhf.lm.data import collate, encode_pair
from minirlhf.lm.logprobs import sequence_logprobs
from minirlhf.stages.pretrain import PretrainConfig, train_pretrain
from minirlhf.stages.runs import NonFiniteError, is_complete, load_run, read_metrics, read_summary
from minirlhf.stages.sft import SFTConfig, sft_loss, train_sft

import claims
from claims import assert_holds


def test_pretraining_beats_the_unigram_entropy():
    # a model that ignores context cannot go below the unigram entropy (4.2 nats here);
    # 300 quick steps must learn enough of the grammar to get well below it
    assert_holds(claims.pretraining())


def test_pretrain_config_checks_task_and_seed(tmp_path):
    with pytest.raises(ValueError, match="PretrainConfig.task: unknown task 'poetry'; choose one of sentiment, "):
        PretrainConfig(task="poetry")
    with pytest.raises(ValueError, match=r"PretrainConfig.seed = -1 is out of range; allowed: \[0, inf\)"):
        PretrainConfig(seed=-1)
    # no task is allowed (for a corpus of your own), but then the corpus must be given
    with pytest.raises(ValueError, match="PretrainConfig.task is empty"):
        train_pretrain(PretrainConfig(task=None), out=tmp_path / "run", quiet=True)


def test_sft_raises_gold_reward_and_lowers_response_loss():
    assert_holds(claims.sft_gain())


def test_sft_loss_gives_prompt_and_padding_exactly_zero_gradient():
    # a "model" whose logits are a free tensor: its gradient shows which positions the loss uses
    rng = np.random.default_rng(0)
    logits = Tensor(rng.normal(size=(2, 6, 7)), requires_grad=True)
    input_ids = np.array([[0, 1, 4, 5, 6, 2], [1, 3, 4, 4, 5, 2]])
    attention_mask = np.array([[False, True, True, True, True, True], [True] * 6])
    response_mask = np.array([[False, False, False, True, True, True], [False, False, True, True, True, True]])
    sft_loss(lambda ids, mask: logits, (input_ids, attention_mask, response_mask)).backward()
    # the logits at t − 1 predict token t: only positions t − 1 of response tokens get a gradient
    predicts_response = np.roll(response_mask, -1, axis=1) & (np.arange(6) < 5)
    assert np.all(logits.grad[~predicts_response] == 0.0)
    assert np.all(np.abs(logits.grad[predicts_response]).sum(axis=-1) > 0)


def test_sft_loss_is_the_mean_response_token_nll():
    rng = np.random.default_rng(1)
    logits = Tensor(rng.normal(size=(1, 4, 5)))
    ids, mask = np.array([[1, 2, 3, 4]]), np.array([[False, False, True, True]])
    log_probs = logits.data - np.log(np.exp(logits.data).sum(-1, keepdims=True))
    expected = -(log_probs[0, 1, 3] + log_probs[0, 2, 4]) / 2
    assert float(sft_loss(lambda i, m: logits, (ids, np.ones_like(mask), mask)).data) == pytest.approx(expected)


def test_nan_in_training_stops_with_the_step_and_tensor(tmp_path, monkeypatch):
    real_cross_entropy = F.cross_entropy

    def poisoned(logits, targets, **kw):  # the 3rd step's loss is NaN
        loss = real_cross_entropy(logits, targets, **kw)
        poisoned.calls += 1
        return loss * float("nan") if poisoned.calls == 3 else loss
    poisoned.calls = 0
    monkeypatch.setattr(F, "cross_entropy", poisoned)
    config = PretrainConfig(steps=5, n_layer=1, n_embd=16, n_head=2, n_documents=200, eval_every=100)
    with pytest.raises(NonFiniteError, match="step 2: the loss is nan"):
        train_pretrain(config, out=tmp_path / "run", quiet=True)


def test_inf_in_a_gradient_stops_with_the_step_and_parameter(tmp_path, monkeypatch):
    import minirlhf.stages.pretrain as stage
    real_loss = stage.next_token_loss

    def loss_with_poisoned_gradient(model, windows):
        loss = real_loss(model, windows)
        loss_with_poisoned_gradient.calls += 1
        if loss_with_poisoned_gradient.calls == 3:   # step 2: add 0 to the loss but inf to one gradient element
            param = dict(model.named_parameters())["transformer.h.0.ln_2.bias"]
            poison = np.zeros(param.shape, param.dtype)
            poison[0] = np.inf
            loss = loss + Tensor.from_op(np.zeros((), loss.dtype), (param,), lambda g: (poison,), "poison")
        return loss
    loss_with_poisoned_gradient.calls = 0
    monkeypatch.setattr(stage, "next_token_loss", loss_with_poisoned_gradient)
    config = PretrainConfig(steps=5, n_layer=1, n_embd=16, n_head=2, n_documents=200, eval_every=100)
    with pytest.raises(NonFiniteError, match=r"step 2: gradient of transformer\.h\.0\.ln_2\.bias has 1 NaN/inf"):
        train_pretrain(config, out=tmp_path / "run", quiet=True)
    assert [row["step"] for row in read_metrics(tmp_path / "run")] == [1, 2]   # stopped before logging step 3


def _press_ctrl_c_during(monkeypatch, module, update, step_to_stop):
    """Send a real SIGINT to this process in the middle of step `step_to_stop` (0-based), from inside the
    stage's update function `update` (which the stage's loop must call once per step for this to work)."""
    real_update = getattr(module, update)

    def update_with_ctrl_c(*args, **kwargs):
        update_with_ctrl_c.calls += 1
        if update_with_ctrl_c.calls == step_to_stop + 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real_update(*args, **kwargs)
    update_with_ctrl_c.calls = 0
    monkeypatch.setattr(module, update, update_with_ctrl_c)


def test_resumed_pretraining_ends_with_the_same_weights(tmp_path, monkeypatch):
    import minirlhf.stages.pretrain as stage
    config = PretrainConfig(steps=12, n_layer=1, n_embd=16, n_head=2, n_documents=300, eval_every=4,
                            checkpoint_every=100, warmup_steps=2)
    straight = train_pretrain(config, out=tmp_path / "straight", quiet=True)
    with monkeypatch.context() as patch:
        _press_ctrl_c_during(patch, stage, "pretrain_update", 7)
        with pytest.raises(KeyboardInterrupt, match="checkpoint saved at step 8"):
            train_pretrain(config, out=tmp_path / "resumed", quiet=True)   # the step under way finishes
    resumed = train_pretrain(config, out=tmp_path / "resumed", resume=True, quiet=True)
    a, b = load_state_dict_file(straight / "model.npz"), load_state_dict_file(resumed / "model.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)   # bitwise: same arithmetic in the same order
    assert [r["step"] for r in read_metrics(resumed)] == list(range(1, 13))
    assert read_metrics(resumed) == read_metrics(straight)


def test_resumed_sft_ends_with_the_same_weights(tmp_path, monkeypatch):
    import minirlhf.stages.sft as stage
    init = quick_run("sentiment", "pretrain")
    config = SFTConfig(steps=6, batch_size=8, n_demonstrations=100, eval_every=3, eval_prompts=4)
    straight = train_sft(config, init=init, out=tmp_path / "straight", quiet=True)
    with monkeypatch.context() as patch:
        _press_ctrl_c_during(patch, stage, "sft_update", 4)
        with pytest.raises(KeyboardInterrupt):
            train_sft(config, init=init, out=tmp_path / "resumed", quiet=True)
    resumed = train_sft(config, init=init, out=tmp_path / "resumed", resume=True, quiet=True)
    a, b = load_state_dict_file(straight / "model.npz"), load_state_dict_file(resumed / "model.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # "before" is the init model's gold reward in both runs, not that of the checkpoint resumed from
    assert read_summary(resumed)["gold_reward_before"] == read_summary(straight)["gold_reward_before"]


def test_load_run_rebuilds_the_model_that_was_trained():
    run_dir = quick_run("sentiment", "sft")
    model, tokenizer, config = load_run(run_dir)
    assert config["stage"] == "sft" and config["task"] == "sentiment"
    weights = load_state_dict_file(run_dir / "model.npz")
    assert all(np.array_equal(weights[k], v) for k, v in model.state_dict().items())
    ids = np.array([[tokenizer.bos_id] + tokenizer.encode("the movie was great .")])
    logprobs, _ = sequence_logprobs(model, ids, np.ones_like(ids, bool), np.arange(ids.shape[1])[None] > 3)
    assert np.isfinite(logprobs.data).all()


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--steps", "-3"], "PretrainConfig.steps"),
    (["pretrain", "--task", "poetry"], "PretrainConfig.task: unknown task 'poetry'"),
    (["sft", "--init", "no/such/run"], "not a minirlhf run directory"),
    (["pretrain", "--resume"], "--resume needs --out"),
])
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_cli_sft_rejects_data_outside_the_vocabulary(tmp_path, capsys):
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": "zorp blick", "completion": "quux frobnicate"}) + "\n"
                             for _ in range(5)))
    assert main(["sft", "--init", str(quick_run("sentiment", "pretrain")), "--data", str(demos),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "not in the model's vocabulary" in capsys.readouterr().err


def test_cli_pretrain_then_sample(tmp_path, capsys):
    out = tmp_path / "pt"
    assert main(["pretrain", "--steps", "3", "--n-layer", "1", "--n-embd", "16", "--n-head", "2",
                 "--n-documents", "200", "--out", str(out), "--quiet"]) == 0
    for name in ("config.json", "tokenizer.json", "model.npz", "metrics.jsonl", "summary.json", "curves.png",
                 "checkpoint/state.npz"):
        assert (out / name).is_file(), name
    capsys.readouterr()
    samples = []
    for seed in ("0", "1"):
        assert main(["sample", "--init", str(out), "--prompt", "the movie was", "--n", "2", "--temperature", "0",
                     "--seed", seed]) == 0
        samples.append([l for l in capsys.readouterr().out.splitlines() if l.startswith("the movie was |")])
    # greedy decoding ignores the sampling seed; both runs decode the same (2, T) batch, so their
    # float32 arithmetic is identical and the comparison cannot flake on a near-tie of the logits
    assert len(samples[0]) == 2 and samples[0] == samples[1]


def test_cli_pretrain_and_sft_on_your_own_files(tmp_path):
    # a made-up language no toy task knows: the vocabulary and the demonstrations can only come from the files
    nouns, verbs = ["zorp", "blick", "quux", "frob"], ["glims", "wubs", "snarfs"]
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"the {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)} .\n"
                              for _ in range(60)))
    # the demonstrations answer every noun with one fixed sentence: easy to learn in a few steps
    pairs = [(f"the {noun}", f"{verbs[i % 3]} the {nouns[(i + 1) % 4]} .") for i, noun in enumerate(nouns)] * 5
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    pt, out = tmp_path / "pt", tmp_path / "sft"
    # --task "": no toy task, the corpus is all there is
    assert main(["pretrain", "--data", str(corpus), "--task", "", "--steps", "30", "--n-layer", "1", "--n-embd", "16",
                 "--n-head", "2", "--block-size", "16", "--batch-size", "8", "--eval-every", "10",
                 "--warmup-steps", "5", "--out", str(pt), "--quiet"]) == 0
    assert main(["sft", "--init", str(pt), "--data", str(demos), "--steps", "30", "--batch-size", "8",
                 "--lr", "1e-2", "--warmup-steps", "0", "--eval-every", "10", "--out", str(out), "--quiet"]) == 0
    assert is_complete(pt) and is_complete(out)
    _, tokenizer, config = load_run(pt)
    assert sorted(tokenizer.itos[4:]) == sorted(["the", ".", *nouns, *verbs]) and config["task"] is None
    assert read_summary(out)["n_train"] + read_summary(out)["n_heldout"] == len(pairs)
    # the response loss on the demonstrations fell from the pretrained model to the SFT model
    batch = collate([encode_pair(tokenizer, p, c) for p, c in pairs], tokenizer.pad_id)
    before, after = (float(sft_loss(load_run(run)[0], batch).data) for run in (pt, out))
    assert after < before - 0.5, (before, after)
