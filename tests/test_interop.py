"""docs/moving_on.md's snippets, run as written, against PyTorch, transformers and TRL.

Marked `interop`: the main suite deselects these tests (it never imports torch); `.ci/interop`
runs them in a second venv with the interop extra, and there a missing torch fails them rather
than skipping. Each test cuts the ```python block out of a section of docs/moving_on.md and
`exec`s it in a temporary folder laid out the way the snippet expects: `hf/sft` written by
`minirlhf export` from the cached quick sentiment SFT run, and the quick reward run's
comparisons at the snippet's own placeholder path `runs/reward-.../comparisons.jsonl`.

The oracles are minirlhf itself and a closed form: the HF tokenizer gives minirlhf's token ids
(`encode_pair`) for every comparison pair, the HF model minirlhf's log-probs to 1e-5, TRL
tokenizes a pair in minirlhf's layout, its first DPO loss is ln 2 (policy = reference, `dpo.md`),
and its training moves the weights and lowers the loss.
"""
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from minirlhf import load_run, sequence_logprobs
from minirlhf.app.cli import main
from minirlhf.app.pipeline import quick_run
from minirlhf.engine import functional as F
from minirlhf.lm.data import collate, encode_pair, encode_prompt

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent


def snippet(heading):
    """The one ```python block of the section of docs/moving_on.md titled `## {heading}`."""
    text = (ROOT / "docs" / "moving_on.md").read_text(encoding="utf-8")
    sections = {m.group(1): m.group(2) for m in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.M | re.S)}
    assert heading in sections, f"docs/moving_on.md has no section {heading!r}; it has {list(sections)}"
    blocks = re.findall(r"^```python\n(.*?)^```", sections[heading], re.M | re.S)
    assert len(blocks) == 1, f"section {heading!r} should hold one python block, it holds {len(blocks)}"
    return blocks[0]


@pytest.fixture
def reader_folder(tmp_path, monkeypatch):
    """A working directory as a reader has it: hf/sft exported, a reward run's comparisons.

    -> ((model, tokenizer, config) of the SFT run, the comparison rows).
    """
    sft_run, reward_run = quick_run("sentiment", "sft"), quick_run("sentiment", "reward")
    assert main(["export", "--ckpt", str(sft_run), "--out", str(tmp_path / "hf" / "sft")]) == 0
    # where a reader writes their reward run's name, the snippet says "reward-...": a valid folder name
    comparisons = tmp_path / "runs" / "reward-..." / "comparisons.jsonl"
    comparisons.parent.mkdir(parents=True)
    shutil.copy(reward_run / "comparisons.jsonl", comparisons)
    monkeypatch.chdir(tmp_path)
    rows = [json.loads(line) for line in comparisons.read_text().splitlines()]
    return load_run(sft_run), rows


def hf_token_logprobs(model, input_ids, attention_mask):
    """(B, T) log p(token t | tokens < t) under a HF causal LM, 0 at t = 0, as `sequence_logprobs` lays it out."""
    import torch
    mask = torch.as_tensor(attention_mask, dtype=torch.long)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    ids = torch.as_tensor(input_ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits   # (B, T, V)
    logprobs = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
    return np.concatenate([np.zeros((len(ids), 1)), logprobs.numpy()], axis=1)                    # (B, T)


def test_loading_snippet_gives_minirlhf_token_ids_and_logprobs(reader_folder):
    import torch
    (sft_model, tokenizer, _), rows = reader_folder
    ns = {}
    exec(snippet("1. Take your model with you"), ns)

    # the snippet's own batch is encode_prompt's (<bos> + the prompt), left-padded; its logits are minirlhf's
    encoded = [encode_prompt(tokenizer, p.removeprefix("<bos> ")) for p in ns["prompts"]]
    ids, mask, _ = collate([(e, [False] * len(e)) for e in encoded], tokenizer.pad_id)
    assert ns["batch"]["input_ids"].tolist() == ids.tolist()
    assert ns["batch"]["attention_mask"].bool().tolist() == mask.tolist()
    hf_logprobs = torch.log_softmax(ns["logits"].detach().double(), -1).numpy()               # (B, T, V)
    logprobs = F.log_softmax(sft_model(ids, mask)).data                                       # (B, T, V)
    assert np.abs(hf_logprobs - logprobs)[mask].max() < 1e-5      # padding rows are not compared

    # every comparison pair: the HF tokenizer's ids are encode_pair's, the HF log-probs minirlhf's
    tok, model = ns["tok"], ns["model"]
    pairs = [(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
    hf = tok([f"<bos> {p} {r} <eos>" for p, r in pairs], padding=True, return_tensors="np")
    ids, mask, response_mask = collate([encode_pair(tokenizer, p, r) for p, r in pairs], tokenizer.pad_id)
    assert hf["input_ids"].tolist() == ids.tolist()
    assert hf["attention_mask"].astype(bool).tolist() == mask.tolist()
    hf_logprobs = hf_token_logprobs(model, ids, mask)
    logprobs = sequence_logprobs(sft_model, ids, mask, response_mask)[0].data
    diff = np.abs(hf_logprobs - logprobs)[response_mask].max()
    print(f"largest log-prob difference over {len(pairs)} sequences: {diff:.2e}")
    assert diff < 1e-5


def test_dpo_snippet_starts_at_ln2_and_lowers_the_loss(reader_folder):
    (_, tokenizer, _), rows = reader_folder
    code = snippet("4. Continuing to train with TRL")
    # the one change to the reader's snippet: log every step (TRL logs every 10th), so the first
    # step's loss is seen alone. It trains its full 3 epochs: 150 steps, about 20 s on 2 cores.
    assert code.count("DPOConfig(") == 1                          # the call (the import has no parenthesis)
    code = code.replace("DPOConfig(", "DPOConfig(logging_steps=1, ")
    ns = {}
    exec(code, ns)
    trainer = ns["trainer"]

    # TRL tokenized the pairs in minirlhf's layout: <bos> + prompt, response + <eos>
    first = trainer.train_dataset[0]
    prompt_ids, chosen_ids = encode_prompt(tokenizer, rows[0]["prompt"]), tokenizer.encode(rows[0]["chosen"])
    assert first["prompt_ids"] == prompt_ids
    assert first["chosen_ids"] == chosen_ids + [tokenizer.eos_id]

    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    steps_per_epoch = trainer.state.max_steps // int(trainer.args.num_train_epochs)
    assert len(losses) == trainer.state.max_steps and steps_per_epoch > 10
    assert abs(losses[0] - math.log(2)) < 1e-3                    # π = π_ref at the first step
    # the policy moved: weights changed, and the last epoch's loss is below ln 2 (at TRL's default
    # learning rate, 1e-6, it stays at 0.6928; at 1e-4 it reaches about 0.66)
    start = ns["GPT2LMHeadModel"].from_pretrained("hf/sft").state_dict()
    moved = max((p.detach() - start[name]).abs().max().item() for name, p in trainer.model.named_parameters())
    last_epoch = float(np.mean(losses[-steps_per_epoch:]))
    print(f"DPO: first loss {losses[0]:.4f}, last epoch's mean {last_epoch:.4f}, largest weight change {moved:.1e}")
    assert moved > 1e-4
    assert last_epoch < math.log(2) - 0.01
