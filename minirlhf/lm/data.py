"""Text ↔ token batches, and the JSONL files users bring their own data in.

One encoding for every stage (SFT, reward model, PPO, DPO):

    encode_prompt(tok, prompt)         = [<bos>] + tok.encode(prompt)
    encode_pair(tok, prompt, response) = encode_prompt(...) + tok.encode(response) + [<eos>]
    response_mask                      = False on <bos> and the prompt, True on the response
                                         tokens and the <eos> that ends them

`collate` left-pads a list of such pairs into the one batch layout of DEVELOPING.md:
`input_ids (B, T)` int64, `attention_mask (B, T)` bool (False on padding), `response_mask
(B, T)` bool. Left padding keeps every sequence's last token in column T-1, where generation
continues and where a reward model reads its score.

File formats (the conventions of Hugging Face datasets / TRL; one JSON object per line):

    SFT        {"prompt": str, "completion": str}
    pairwise   {"prompt": str, "chosen": str, "rejected": str,
                "margin": number >= 0 (optional), "annotator": str (optional)}
    K-wise     {"prompt": str, "responses": [str, ...] (K >= 2),
                "ranking": [int, ...], "annotator": str (optional)}
    corpus     one document per line in a .txt file, or {"text": str} per line in .jsonl

`ranking` is a permutation of 0..K-1 listing response indices from most to least preferred:
`ranking = [2, 0, 1]` means responses[2] ≻ responses[0] ≻ responses[1]. `ranking_pairs`
expands it into the C(K, 2) (preferred, dispreferred) index pairs (InstructGPT, Sec. 3.5), and
`expand_comparisons` turns a list of pairwise and K-wise rows into what a scoring model reads:
each response once, and every pair as indices into them with its margin and weight.

Loaders validate every line: a malformed line raises ValueError naming the file, the line
number and the field; nothing is skipped. Unknown fields are errors too (a misspelt
"margn" would otherwise be silently ignored). Writers are atomic (temp file + os.replace).
"""

import json
import math
import os

import numpy as np


def encode_prompt(tok, prompt):
    """[<bos>] + prompt tokens."""
    return [tok.bos_id] + tok.encode(prompt)


def encode_pair(tok, prompt, response):
    """-> (ids, response_mask): <bos> prompt response <eos>, mask True on response + <eos>."""
    prompt_ids = encode_prompt(tok, prompt)
    response_ids = tok.encode(response) + [tok.eos_id]
    return prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids)


def collate(pairs, pad_id):
    """Left-pad [(ids, response_mask), ...] -> (input_ids, attention_mask, response_mask), each (B, T)."""
    if not pairs:
        raise ValueError("collate: got an empty list of sequences")
    for b, (ids, mask) in enumerate(pairs):
        if len(ids) != len(mask) or not ids:
            raise ValueError(f"collate: sequence {b} has {len(ids)} ids and {len(mask)} mask "
                             "entries (they must match and be non-empty)")
    T = max(len(ids) for ids, _ in pairs)
    input_ids = np.full((len(pairs), T), pad_id, dtype=np.int64)  # (B, T)
    attention_mask = np.zeros((len(pairs), T), dtype=bool)  # (B, T)
    response_mask = np.zeros((len(pairs), T), dtype=bool)  # (B, T)
    for b, (ids, mask) in enumerate(pairs):
        start = T - len(ids)  # left padding: the sequence ends in column T-1
        input_ids[b, start:] = ids
        attention_mask[b, start:] = True
        response_mask[b, start:] = mask
    return input_ids, attention_mask, response_mask


def token_stream(tok, documents):
    """Pretraining documents -> one stream `<bos> doc_1 <eos> <bos> doc_2 <eos> ...` (N,) int64."""
    ids = []
    for doc in documents:
        ids += [tok.bos_id] + tok.encode(doc) + [tok.eos_id]
    return np.asarray(ids, dtype=np.int64)


def random_windows(stream, batch_size, block_size, rng):
    """B random windows of block_size + 1 consecutive tokens (inputs and shifted targets), (B, T+1)."""
    if len(stream) <= block_size + 1:
        raise ValueError(f"random_windows: a stream of {len(stream)} tokens is too short for "
                         f"windows of {block_size + 1}")
    starts = rng.integers(0, len(stream) - block_size - 1, size=batch_size)      # (B,)
    return stream[starts[:, None] + np.arange(block_size + 1)]                   # (B, T+1)


def ranking_pairs(ranking):
    """K-wise ranking (best first) -> the C(K, 2) pairs (i, j) with response i preferred to j."""
    return [(ranking[a], ranking[b]) for a in range(len(ranking)) for b in range(a + 1, len(ranking))]


def expand_comparisons(rows):
    """Pairwise and K-wise rows -> what one forward pass scores, and the pairs to compare.

    Returns `texts` [(prompt, response)] (each response once), and per pair (N,) arrays:
    `chosen`, `rejected` (indices into texts), `margin` (the row's MARGIN_TABLE value, 0 if
    none) and `weight` (1 for a pair row, 1/C(K, 2) for each pair of a ranking of K).
    """
    texts, chosen, rejected, margin, weight = [], [], [], [], []
    for row in rows:
        start = len(texts)
        if "chosen" in row:
            texts += [(row["prompt"], row["chosen"]), (row["prompt"], row["rejected"])]
            pairs, m = [(0, 1)], float(row.get("margin", 0.0))
        else:
            texts += [(row["prompt"], response) for response in row["responses"]]
            pairs, m = ranking_pairs(row["ranking"]), 0.0
        for i, j in pairs:
            chosen.append(start + i)
            rejected.append(start + j)
            margin.append(m)
            weight.append(1.0 / len(pairs))
    return texts, np.array(chosen), np.array(rejected), np.array(margin), np.array(weight)


# ---------------------------------------------------------------- writing

def write_jsonl(path, rows):
    """Write dicts one per line, atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_sft(path, pairs):
    """[(prompt, completion), ...] -> SFT JSONL."""
    write_jsonl(path, ({"prompt": p, "completion": c} for p, c in pairs))


def write_corpus(path, texts):
    """Documents -> .txt (one per line) or .jsonl ({"text": ...} per line)."""
    if str(path).endswith(".jsonl"):
        write_jsonl(path, ({"text": t} for t in texts))
        return
    texts = list(texts)
    for i, t in enumerate(texts):
        if "\n" in t or not t.strip():
            raise ValueError(f"write_corpus: document {i} is empty or contains a newline; "
                             "a .txt corpus holds one document per line (use .jsonl instead)")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in texts)
    os.replace(tmp, path)


# ---------------------------------------------------------------- reading and validating

def read_rows(path):
    """Yield (line_number, dict) for every line of a JSONL file; malformed lines raise."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                raise ValueError(f"{path}, line {n}: empty line (every line must be one JSON object)")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def check_fields(path, n, row, required, optional=()):
    for key in required:
        if key not in row:
            raise ValueError(f"{path}, line {n}: missing field '{key}'")
    for key in row:
        if key not in required and key not in optional:
            raise ValueError(f"{path}, line {n}: unknown field '{key}' "
                             f"(allowed: {', '.join(list(required) + list(optional))})")


def check_str(path, n, row, key):
    if not isinstance(row[key], str):
        raise ValueError(f"{path}, line {n}: field '{key}' must be a string, got {type(row[key]).__name__}")


def _check_annotator(path, n, row):
    if "annotator" in row:
        check_str(path, n, row, "annotator")


def load_sft(path):
    """SFT JSONL -> [(prompt, completion), ...]."""
    pairs = []
    for n, row in read_rows(path):
        check_fields(path, n, row, ("prompt", "completion"))
        for key in ("prompt", "completion"):
            check_str(path, n, row, key)
        pairs.append((row["prompt"], row["completion"]))
    return pairs


def _check_pairwise(path, n, row):
    check_fields(path, n, row, ("prompt", "chosen", "rejected"), ("margin", "annotator"))
    for key in ("prompt", "chosen", "rejected"):
        check_str(path, n, row, key)
    if "margin" in row:
        m = row["margin"]
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
            raise ValueError(f"{path}, line {n}: field 'margin' must be a finite number >= 0, got {m!r}")
    _check_annotator(path, n, row)


def _check_kwise(path, n, row):
    check_fields(path, n, row, ("prompt", "responses", "ranking"), ("annotator",))
    check_str(path, n, row, "prompt")
    responses, ranking = row["responses"], row["ranking"]
    if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise ValueError(f"{path}, line {n}: field 'responses' must be a list of at least 2 strings")
    if (not isinstance(ranking, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ranking)
            or sorted(ranking) != list(range(len(responses)))):
        raise ValueError(f"{path}, line {n}: field 'ranking' must be a permutation of 0..{len(responses) - 1} "
                         f"(response indices, most preferred first), got {ranking!r}")
    _check_annotator(path, n, row)


def load_preferences(path):
    """Pairwise or K-wise rows (each line checked by its own format: 'chosen' marks pairwise)."""
    rows = []
    for n, row in read_rows(path):
        (_check_pairwise if "chosen" in row else _check_kwise)(path, n, row)
        rows.append(row)
    return rows


def load_corpus(path):
    """.txt (one document per line) or .jsonl ({"text": ...}) -> list of documents."""
    if str(path).endswith(".jsonl"):
        docs = []
        for n, row in read_rows(path):
            check_fields(path, n, row, ("text",))
            check_str(path, n, row, "text")
            docs.append(row["text"])
        return docs
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            doc = line.rstrip("\n")
            if not doc.strip():
                raise ValueError(f"{path}, line {n}: empty document (one document per line)")
            docs.append(doc)
    return docs
