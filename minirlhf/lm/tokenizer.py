"""Character- and word-level tokenizers with the four special tokens every stage relies on.

A tokenizer is a fixed vocabulary: a list of token strings whose position is the token id.
Ids 0–3 are always the special tokens, in this order:

    <pad> = 0   fills the left of a batch (never attended to)
    <bos> = 1   starts every sequence: [<bos>] + prompt + response + [<eos>]
    <eos> = 2   ends a response / document; generation stops on it
    <unk> = 3   any character or word the vocabulary does not hold

`CharTokenizer` splits text into characters (what nanoGPT's Shakespeare example does);
`WordTokenizer` splits on whitespace and joins with one space. Toy-world text puts spaces
around punctuation ("it was good ."), so `decode(encode(s)) == s` for every toy-world string.
A word-level vocabulary of a few hundred words keeps the GPT tiny and every sample readable.

Simplifications (vs GPT-2's byte-level BPE): no merges, no byte fallback — unknown symbols
become <unk>. `decode` drops <pad>, <bos> and <eos> (like `skip_special_tokens=True` in
Hugging Face) but writes <unk> out as "<unk>", so a model that emits it is visible in its text.
A word tokenizer maps a literal "<eos>" word in the text to the special id.
"""

import json
import os
from collections import Counter

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


class _Tokenizer:
    """Shared machinery: vocabulary list ↔ id lookup, encode/decode, JSON save.
    Subclasses define `split(text) -> tokens` and `join(tokens) -> text`."""

    kind = ""  # "char" or "word"; written to the JSON file so `load_tokenizer` can rebuild it

    def __init__(self, tokens):
        """`tokens`: the ordinary (non-special) tokens; ids follow the four special tokens."""
        tokens = list(tokens)
        clash = [t for t in tokens if t in SPECIAL_TOKENS]
        if clash:
            raise ValueError(f"tokens: {clash[0]!r} is a special token and is added automatically")
        if len(set(tokens)) != len(tokens):
            dup = next(t for t, c in Counter(tokens).items() if c > 1)
            raise ValueError(f"tokens: {dup!r} appears more than once")
        self.itos = list(SPECIAL_TOKENS) + tokens  # id -> token string
        self.stoi = {t: i for i, t in enumerate(self.itos)}  # token string -> id
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.vocab_size = len(self.itos)

    def encode(self, text):
        """text -> list of token ids (no <bos>/<eos>; `data.encode_pair` adds those)."""
        return [self.stoi.get(t, self.unk_id) for t in self.split(text)]

    def decode(self, ids):
        """list of ids -> text, dropping <pad>, <bos> and <eos>."""
        skip = (self.pad_id, self.bos_id, self.eos_id)
        return self.join([self.itos[int(i)] for i in ids if int(i) not in skip])

    def save(self, path):
        """Write the vocabulary as JSON, atomically (temp file + os.replace)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"kind": self.kind, "tokens": self.itos[len(SPECIAL_TOKENS):]}, f, indent=0)
        os.replace(tmp, path)

    @classmethod
    def from_corpus(cls, texts, min_count=1, max_vocab=None):
        """Build a vocabulary from `texts`: tokens seen at least `min_count` times, most
        frequent first (ties alphabetical, so the result is deterministic), at most
        `max_vocab` ordinary tokens."""
        counts = Counter(t for text in texts for t in cls.split(text))
        ranked = sorted((t for t, c in counts.items() if c >= min_count and t not in SPECIAL_TOKENS),
                        key=lambda t: (-counts[t], t))
        return cls(ranked[:max_vocab] if max_vocab is not None else ranked)

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(_Tokenizer):
    """One token per character."""

    kind = "char"

    @staticmethod
    def split(text):
        return list(text)

    @staticmethod
    def join(tokens):
        return "".join(tokens)


class WordTokenizer(_Tokenizer):
    """One token per whitespace-separated word; decode joins with single spaces."""

    kind = "word"

    @staticmethod
    def split(text):
        return text.split()

    @staticmethod
    def join(tokens):
        return " ".join(tokens)


def load_tokenizer(path):
    """Rebuild a tokenizer written by `save`."""
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    kinds = {"char": CharTokenizer, "word": WordTokenizer}
    if not isinstance(spec, dict) or spec.get("kind") not in kinds or not isinstance(spec.get("tokens"), list):
        raise ValueError(f"{path}: not a minirlhf tokenizer file (expected keys 'kind' in "
                         f"{sorted(kinds)} and 'tokens' as a list)")
    return kinds[spec["kind"]](spec["tokens"])
