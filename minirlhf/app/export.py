"""Export to PyTorch: a minirlhf run written as a Hugging Face GPT-2 checkpoint directory.

`export_hf(run_dir, out_dir)` writes what `transformers` reads, so that

    GPT2LMHeadModel.from_pretrained(out_dir)                 # a language model run
    GPT2ForSequenceClassification.from_pretrained(out_dir)   # a reward / value / cost model run
    PreTrainedTokenizerFast.from_pretrained(out_dir)         # reads tokenizer_config.json too

load it and give the same logits (docs/moving_on.md shows the calls). Load the tokenizer from the
folder: `PreTrainedTokenizerFast(tokenizer_file=...)` reads tokenizer.json alone, which knows no
<pad>/<bos>/<eos> and pads on the right. The files:

    config.json               GPT2Config fields (written last: a folder without it is an unfinished export)
    model.safetensors         the weights, under GPT2LMHeadModel's names, in our own small safetensors writer
    tokenizer.json            the vocabulary in the `tokenizers` library's format
    vocab.json                token -> id
    tokenizer_config.json     the tokenizer class, special tokens, left padding
    special_tokens_map.json   <pad>, <bos>, <eos>, <unk>

The weights need no conversion: minirlhf's parameter names and shapes are already those of
GPT2LMHeadModel's state dict, Conv1D weights stored (C_in, C_out) so a layer is `x @ W + b`.
Choices where GPT-2's files leave room:

- `lm_head.weight` is not written. HF ties it to `transformer.wte.weight`
  (`tie_word_embeddings: true`), as minirlhf does, and its own `save_pretrained` leaves it out
  too (safetensors cannot store two names for one tensor).
- The attention buffers `attn.bias` / `attn.masked_bias` (a causal mask, old transformers
  versions) are not written: they are not weights, and transformers builds the mask itself.
- Dropout: `resid_pdrop` = `embd_pdrop` = the run's dropout and `attn_pdrop` = 0, which is
  where minirlhf applies dropout; continued training in PyTorch then regularises the same way.
- `scale_attn_weights` (1/√hs), `gelu_new` (tanh GELU) and `layer_norm_epsilon` 1e-5 are
  written out, not left to defaults: they are what minirlhf computes.
- A scalar-head run (reward, value or cost model) becomes `GPT2ForSequenceClassification`
  with one label. HF's `score` Linear has no bias, so minirlhf's bias b (which holds the
  reward normalisation) is folded into the final LayerNorm, which only the head reads:
  w·(LN(x) + δ) = w·LN(x) + b for δ = b·w/‖w‖². A head with w = 0 cannot be folded and is
  refused. HF reads the score at the last non-<pad> token, as minirlhf reads it at the <eos>.
- Tokenizer: a `WordLevel` model (one id per whole token, unknown → <unk>) after a
  `WhitespaceSplit` pre-tokenizer for the word tokenizer (Python's `str.split`), or after a
  `Split` on every character (regex `[\\s\\S]`) with a `Fuse` decoder (join with "") for the
  char tokenizer. No post-processor: like `tok.encode`, it adds neither <bos> nor <eos>;
  prepend <bos> yourself, as `data.encode_prompt` does.

Differences that remain: HF finds special-token strings anywhere in the text (a literal "<eos>"
inside a word, or a char-tokenizer text containing "<eos>", becomes the special id), and its
`decode(skip_special_tokens=True)` drops <unk> where minirlhf writes "<unk>".
"""
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from minirlhf.lm.model import ScalarHeadModel
from minirlhf.lm.tokenizer import SPECIAL_TOKENS
from minirlhf.stages.runs import load_run, write_json

SAFETENSORS_DTYPES = {"float32": "F32", "float64": "F64", "int64": "I64"}  # numpy name -> safetensors name


def export_hf(run_dir, out_dir, model_name="model"):
    """Write the run's model (`<model_name>.npz`) and tokenizer as a HF GPT-2 folder; -> out_dir as a Path."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / f"{model_name}.npz").is_file():
        raise FileNotFoundError(f"{run_dir} has no {model_name}.npz to export")
    if (out_dir / "model.npz").exists() or out_dir.resolve() == run_dir.resolve():
        raise ValueError(f"{out_dir} is a minirlhf run directory: exporting there would overwrite its "
                         "config.json and tokenizer.json; choose another folder")
    model, tokenizer, _ = load_run(run_dir, model_name)
    scalar = isinstance(model, ScalarHeadModel)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = sequence_classification_tensors(model) if scalar else model.state_dict()
    write_safetensors(out_dir / "model.safetensors", tensors, {"format": "pt"})
    for name, content in tokenizer_files(tokenizer, model.config.block_size).items():
        write_json(out_dir / name, content)
    write_json(out_dir / "config.json", hf_config(model.config, tokenizer, scalar,
                                                  model.transformer.wte.weight.dtype))
    return out_dir


def sequence_classification_tensors(model):
    """A ScalarHeadModel's weights as GPT2ForSequenceClassification's: score (1, C), bias folded into ln_f."""
    state = model.state_dict()
    w = state.pop("score.weight")[:, 0].astype(np.float64)                                # (C,)
    b = float(state.pop("score.bias")[0])
    if not np.any(w):
        raise ValueError("the score head's weight is all zero (every text scores the same), so its bias "
                         "cannot be folded into the LayerNorm; train the model before exporting it")
    # w·(LN(x) + δ) = w·LN(x) + b   for   δ = b · w / ‖w‖²
    ln_f_bias = state["transformer.ln_f.bias"]
    state["transformer.ln_f.bias"] = (ln_f_bias + b * w / (w @ w)).astype(ln_f_bias.dtype)     # (C,)
    # nn.Linear stores its weight (C_out, C_in): (1, C)
    state["score.weight"] = np.ascontiguousarray(w[None, :].astype(ln_f_bias.dtype))           # (1, C)
    return state


def hf_config(config, tokenizer, scalar, dtype):
    """config.json of a GPT2LMHeadModel (or, `scalar`, a one-label GPT2ForSequenceClassification)."""
    hf = {
        "architectures": ["GPT2ForSequenceClassification" if scalar else "GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,                      # 4 · n_embd
        "activation_function": "gelu_new",    # the tanh approximation of GELU, as GPT-2
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True,           # softmax(q·k / √hs)
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": 0.0,                    # minirlhf applies no dropout to attention weights
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "tie_word_embeddings": True,
        "torch_dtype": np.dtype(dtype).name,
    }
    if scalar:
        hf.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})   # num_labels = 1: one score
    return hf


def tokenizer_files(tokenizer, max_length):
    """{file name: JSON content} of the tokenizer files for `tokenizer` (a Char- or WordTokenizer)."""
    vocab = dict(tokenizer.stoi)                                                           # token -> id
    special = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), SPECIAL_TOKENS))
    if tokenizer.kind == "word":
        pre_tokenizer, decoder = {"type": "WhitespaceSplit"}, None        # no decoder: join with " "
    else:
        pre_tokenizer = {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated",
                         "invert": False}                                 # every character on its own
        decoder = {"type": "Fuse"}                                        # join with ""
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": tokenizer.stoi[t], "content": t, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True} for t in SPECIAL_TOKENS],
        "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": decoder,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "padding_side": "left",
                        "model_max_length": max_length, "clean_up_tokenization_spaces": False}
    return {"tokenizer.json": tokenizer_json, "vocab.json": vocab, "special_tokens_map.json": special,
            "tokenizer_config.json": tokenizer_config}


def write_safetensors(path, tensors, metadata=None):
    """Write {name: array} as a .safetensors file, atomically (temp file + os.replace).

    Layout: 8 bytes, the header's length N as a little-endian u64; N bytes of JSON
    {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, padded
    with spaces to a multiple of 8 so the data starts aligned; then every tensor's raw
    little-endian C-order bytes, one after another, with offsets counted from the end of the header.
    """
    arrays, header, offset = [], {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.name not in SAFETENSORS_DTYPES:
            raise ValueError(f"write_safetensors: tensor {name!r} has dtype {array.dtype}; "
                             f"supported: {', '.join(SAFETENSORS_DTYPES)}")
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        header[name] = {"dtype": SAFETENSORS_DTYPES[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        arrays.append(array)
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for array in arrays:
                f.write(array.tobytes())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
