"""Export to a Hugging Face GPT-2 folder, checked without PyTorch.

The oracle is a second GPT-2: a plain-NumPy forward pass written here from GPT-2's definition
(Conv1D `x @ W + b`, tanh GELU, LayerNorm eps 1e-5, LM head tied to wte), fed only by what the
export wrote — tensors read back from model.safetensors by the small reader below, sizes from
config.json. It reproduces minirlhf's logits to 1e-10 in float64 and 1e-4 (relative to the
logits' scale) in float32, on a left-padded batch with position ids cumsum(mask) − 1, as a HF
caller passes them. Models are tiny and freshly initialised, with every weight perturbed so a
wrong name, transpose or constant changes the result. A last test repeats the check with real
transformers; it is marked `interop`, so only `.ci/interop` (`pytest -m interop`, in a venv with
PyTorch) runs it, and there it fails, not skips, if torch is missing.
"""
import json
import math
import re
import struct

import numpy as np
import pytest

from minirlhf.app.cli import main
from minirlhf.app.export import export_hf
from minirlhf.lm.data import collate, encode_pair
from minirlhf.lm.model import GPT, GPTConfig, ScalarHeadModel, last_token_values
from minirlhf.lm.tokenizer import CharTokenizer, WordTokenizer
from minirlhf.stages.runs import save_run

TEXTS = ["the movie was good .", "it was bad and slow .", "a good film , a great cast ."]
PAIRS = [("the movie was", "good ."), ("it was", "bad and slow ."), ("a", "great cast , good film .")]
DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64}


def make_run(path, model_class=GPT, kind="word", dtype=np.float64):
    """A run directory holding a tiny model with every weight perturbed; -> (path, model, tokenizer)."""
    tokenizer = (WordTokenizer if kind == "word" else CharTokenizer).from_corpus(TEXTS)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=8)
    model = model_class(config, np.random.default_rng(0)).astype(dtype)
    rng = np.random.default_rng(1)
    for _, p in model.named_parameters():
        p.data = (p.data + rng.normal(0, 0.3, p.shape)).astype(dtype)
    path.mkdir()
    save_run(path, stage="test", task=None, model=model, tokenizer=tokenizer, stage_config={})
    return path, model.eval(), tokenizer


def read_safetensors(path):
    """(header, {name: array}) of a .safetensors file: u64 header length, JSON header, raw bytes."""
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data, tensors = blob[8 + n:], {}
    for name, spec in header.items():
        if name != "__metadata__":
            begin, end = spec["data_offsets"]
            dtype = np.dtype(DTYPES[spec["dtype"]]).newbyteorder("<")
            tensors[name] = np.frombuffer(data[begin:end], dtype).reshape(spec["shape"])
    return header, tensors


# ----------------------------------------------------------------------------- a second GPT-2, in NumPy

def layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * g + b


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt2_hidden(p, config, input_ids, attention_mask, position_ids):
    """GPT-2's final hidden states (B, T, C) from HF-named tensors `p` and config.json's fields."""
    B, T = input_ids.shape
    H = config["n_head"]
    x = p["transformer.wte.weight"][input_ids] + p["transformer.wpe.weight"][position_ids]      # (B, T, C)
    allowed = np.tril(np.ones((T, T), bool)) & attention_mask[:, None, None, :]                # (B, 1, T, T)
    for i in range(config["n_layer"]):
        w = {k[len(f"transformer.h.{i}."):]: v for k, v in p.items() if k.startswith(f"transformer.h.{i}.")}
        qkv = layer_norm(x, w["ln_1.weight"], w["ln_1.bias"]) @ w["attn.c_attn.weight"] + w["attn.c_attn.bias"]
        q, k, v = (t.reshape(B, T, H, -1).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))  # (B, H, T, hs)
        att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])                                # (B, H, T, T)
        att = np.where(allowed, att, np.finfo(att.dtype).min)
        att = np.exp(att - att.max(-1, keepdims=True))
        y = (att / att.sum(-1, keepdims=True)) @ v                                             # (B, H, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, -1)                                          # (B, T, C)
        x = x + y @ w["attn.c_proj.weight"] + w["attn.c_proj.bias"]
        h = layer_norm(x, w["ln_2.weight"], w["ln_2.bias"]) @ w["mlp.c_fc.weight"] + w["mlp.c_fc.bias"]
        x = x + gelu_new(h) @ w["mlp.c_proj.weight"] + w["mlp.c_proj.bias"]
    return layer_norm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"])


def load_export(out):
    return json.loads((out / "config.json").read_text()), read_safetensors(out / "model.safetensors")[1]


def padded_batch(tokenizer):
    input_ids, attention_mask, response_mask = collate([encode_pair(tokenizer, p, r) for p, r in PAIRS],
                                                       tokenizer.pad_id)
    position_ids = np.maximum(attention_mask.cumsum(-1) - 1, 0)   # what a HF caller passes with left padding
    assert not attention_mask.all()                               # the batch really is left-padded
    return input_ids, attention_mask, response_mask, position_ids


# ----------------------------------------------------------------------------- files

def test_files_safetensors_header_and_config(tmp_path):
    run, model, tokenizer = make_run(tmp_path / "run", dtype=np.float32)
    out = export_hf(run, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "config.json", "model.safetensors", "tokenizer.json", "vocab.json", "tokenizer_config.json",
        "special_tokens_map.json"])                               # and no temp file left behind
    blob = (out / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0 and blob[8:9] == b"{"                       # data starts 8-aligned
    header, tensors = read_safetensors(out / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt"}
    spans = sorted(spec["data_offsets"] for spec in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(blob) - 8 - n   # the buffer is covered exactly...
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))       # ...with no gap or overlap
    C, V = 8, tokenizer.vocab_size
    expected = {"transformer.wte.weight": [V, C], "transformer.wpe.weight": [48, C],
                "transformer.ln_f.weight": [C], "transformer.ln_f.bias": [C]}
    for i in range(2):
        for name, shape in [("ln_1.weight", [C]), ("ln_1.bias", [C]), ("attn.c_attn.weight", [C, 3 * C]),
                            ("attn.c_attn.bias", [3 * C]), ("attn.c_proj.weight", [C, C]), ("attn.c_proj.bias", [C]),
                            ("ln_2.weight", [C]), ("ln_2.bias", [C]), ("mlp.c_fc.weight", [C, 4 * C]),
                            ("mlp.c_fc.bias", [4 * C]), ("mlp.c_proj.weight", [4 * C, C]), ("mlp.c_proj.bias", [C])]:
            expected[f"transformer.h.{i}.{name}"] = shape
    assert {k: v["shape"] for k, v in header.items()} == expected   # no lm_head.weight, no attn.bias buffers
    assert {v["dtype"] for v in header.values()} == {"F32"}
    state = model.state_dict()
    assert all(np.array_equal(tensors[k], state[k]) for k in expected)

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert {k: config[k] for k in ("vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head")} == \
        {"vocab_size": V, "n_positions": 48, "n_ctx": 48, "n_embd": 8, "n_layer": 2, "n_head": 2}
    assert config["n_inner"] is None and config["activation_function"] == "gelu_new"
    assert config["layer_norm_epsilon"] == 1e-5 and config["tie_word_embeddings"] is True
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.0
    assert config["torch_dtype"] == "float32"


@pytest.mark.parametrize("kind", ["word", "char"])
def test_tokenizer_files_round_trip_ids(tmp_path, kind):
    run, _, tokenizer = make_run(tmp_path / "run", kind=kind)
    out = export_hf(run, tmp_path / "hf")
    spec = json.loads((out / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    assert spec["model"]["type"] == "WordLevel" and spec["model"]["unk_token"] == "<unk>"
    assert vocab == json.loads((out / "vocab.json").read_text())
    assert [vocab[t] for t in tokenizer.itos] == list(range(tokenizer.vocab_size))   # every id maps back to itself
    assert [(t["id"], t["content"], t["special"]) for t in spec["added_tokens"]] == \
        [(0, "<pad>", True), (1, "<bos>", True), (2, "<eos>", True), (3, "<unk>", True)]
    assert spec["post_processor"] is None                        # like tok.encode: no <bos>/<eos> added
    config = json.loads((out / "tokenizer_config.json").read_text())
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special == {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
    assert config["padding_side"] == "left" and config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert all(config[k] == v for k, v in special.items())
    # the pre-tokenizer, read as the tokenizers library defines it, then the WordLevel lookup
    text = "the film was good , so good . zebra"
    if kind == "word":
        assert spec["pre_tokenizer"] == {"type": "WhitespaceSplit"} and spec["decoder"] is None
        pieces, joiner = text.split(), " "
    else:
        assert spec["pre_tokenizer"]["type"] == "Split" and spec["decoder"] == {"type": "Fuse"}
        pieces, joiner = re.findall(spec["pre_tokenizer"]["pattern"]["Regex"], text), ""
    ids = [vocab.get(piece, vocab["<unk>"]) for piece in pieces]
    assert ids == tokenizer.encode(text)
    inverse = {i: t for t, i in vocab.items()}
    known = [i for i in ids if i != tokenizer.unk_id]
    assert joiner.join(inverse[i] for i in known) == tokenizer.decode(known)


# ----------------------------------------------------------------------------- the forward pass

@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_numpy_gpt2_over_export_reproduces_logits(tmp_path, dtype, tol):
    run, model, tokenizer = make_run(tmp_path / "run", dtype=dtype)
    config, p = load_export(export_hf(run, tmp_path / "hf"))
    input_ids, attention_mask, _, position_ids = padded_batch(tokenizer)
    h = gpt2_hidden(p, config, input_ids, attention_mask, position_ids)                       # (B, T, C)
    hf_logits = h @ p["transformer.wte.weight"].T                                              # (B, T, V), tied head
    logits = model(input_ids, attention_mask).data
    assert hf_logits.dtype == dtype
    scale = np.abs(logits[attention_mask]).max()
    assert scale > 1.0                                            # perturbed weights: logits far from uniform
    assert np.abs(hf_logits - logits)[attention_mask].max() <= tol * scale   # padding rows are not compared
    # the position ids matter: numbering 0..T-1 across the padding gives other logits
    naive = gpt2_hidden(p, config, input_ids, attention_mask, np.broadcast_to(np.arange(input_ids.shape[1]),
                                                                               input_ids.shape))
    assert np.abs(naive @ p["transformer.wte.weight"].T - logits)[attention_mask].max() > 1e-3


def test_reward_model_exports_as_sequence_classification_with_bias_folded(tmp_path):
    run, model, tokenizer = make_run(tmp_path / "run", model_class=ScalarHeadModel)
    assert abs(model.score.bias.data[0]) > 0.1                   # a real bias to fold
    config, p = load_export(export_hf(run, tmp_path / "hf"))
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["id2label"] == {"0": "LABEL_0"}
    assert p["score.weight"].shape == (1, 8) and "score.bias" not in p
    input_ids, attention_mask, response_mask, position_ids = padded_batch(tokenizer)
    scores = gpt2_hidden(p, config, input_ids, attention_mask, position_ids) @ p["score.weight"][0]   # (B, T)
    # HF reads the rightmost non-<pad> token; minirlhf the last response token (the <eos>)
    hf_reward = scores[np.arange(len(scores)), (np.arange(input_ids.shape[1]) * (input_ids != 0)).argmax(-1)]
    reward = last_token_values(model(input_ids, attention_mask).data, response_mask)
    assert np.abs(hf_reward - reward).max() < 1e-10

    model.score.weight.data[:] = 0.0                              # a constant score has nothing to fold into
    (tmp_path / "flat").mkdir()
    save_run(tmp_path / "flat", stage="reward", task=None, model=model, tokenizer=tokenizer, stage_config={})
    with pytest.raises(ValueError, match="all zero"):
        export_hf(tmp_path / "flat", tmp_path / "hf2")


# ----------------------------------------------------------------------------- command line

def test_export_command_and_its_errors(tmp_path, capsys):
    run, _, _ = make_run(tmp_path / "run", dtype=np.float32)
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "GPT2LMHeadModel checkpoint" in capsys.readouterr().out
    for argv in (["--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")],   # not a run
                 ["--ckpt", str(run), "--out", str(run)],                                 # would overwrite the run
                 ["--ckpt", str(run), "--out", str(tmp_path / "y"), "--model", "value"]):  # no value.npz
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("minirlhf export: error:") and err.count("\n") == 1
    assert (run / "model.npz").is_file() and json.loads((run / "config.json").read_text())["stage"] == "test"


# ----------------------------------------------------------------------------- real transformers (.ci/interop)

@pytest.mark.interop
def test_transformers_loads_export_with_same_logits(tmp_path):
    import torch
    import transformers
    run, model, tokenizer = make_run(tmp_path / "run", dtype=np.float32)
    out = export_hf(run, tmp_path / "hf")
    hf_tok = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    assert hf_tok("the movie was good .")["input_ids"] == tokenizer.encode("the movie was good .")
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    input_ids, attention_mask, _, _ = padded_batch(tokenizer)
    mask = torch.tensor(attention_mask, dtype=torch.long)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hf_logits = hf(input_ids=torch.tensor(input_ids), attention_mask=mask, position_ids=position_ids).logits
    logits = model(input_ids, attention_mask).data
    assert np.abs(hf_logits.numpy() - logits)[attention_mask].max() < 1e-4 * np.abs(logits).max()

    run, rm, _ = make_run(tmp_path / "rm", model_class=ScalarHeadModel, dtype=np.float32)
    hf_rm = transformers.GPT2ForSequenceClassification.from_pretrained(export_hf(run, tmp_path / "hf_rm")).eval()
    input_ids, attention_mask, response_mask, _ = padded_batch(tokenizer)
    with torch.no_grad():
        hf_reward = hf_rm(input_ids=torch.tensor(input_ids), attention_mask=mask, position_ids=position_ids).logits
    reward = last_token_values(rm(input_ids, attention_mask).data, response_mask)
    assert np.abs(hf_reward.numpy()[:, 0] - reward).max() < 1e-4
