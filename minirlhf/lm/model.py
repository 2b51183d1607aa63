"""A GPT-2 language model (Radford et al. 2019) and a scalar-head variant, in NumPy.

Architecture, exactly GPT-2's: token + learned position embeddings; `n_layer` pre-LayerNorm
blocks x ← x + attn(ln_1(x)), x ← x + mlp(ln_2(x)) with causal multi-head self-attention and a
4× MLP with tanh-GELU; a final LayerNorm; the LM head tied to the token embedding. Parameter names
and shapes are those of Hugging Face's `GPT2LMHeadModel` state dict (Conv1D weights stored
(C_in, C_out)), so a checkpoint maps 1:1 onto GPT-2; the tied `lm_head.weight` is not a separate
parameter here (it is `transformer.wte.weight`).

Padding: batches are left-padded. A token's position id is the number of real tokens before it
(cumsum(mask) − 1), and a query attends to real keys at or before it, so each sequence of a
left-padded batch gets the same logits as when run alone. A padding query attends to itself
only, so its row stays finite. A `KVCache` keeps the keys and values of past tokens for
generation; the mask of the new tokens is appended to the cached one.

Init as GPT-2: N(0, 0.02²) weights, zero biases, and the residual projections (attn.c_proj,
mlp.c_proj) at 0.02/√(2·n_layer).

Simplifications: dropout is applied to the embeddings and to each residual branch but not to
the attention weights (GPT-2's attn_pdrop), which the fused attention kernel does not support.
"""
import dataclasses
import math

import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.nn import Dropout, Embedding, LayerNorm, Linear, Module


@dataclasses.dataclass
class GPTConfig:
    vocab_size: int   # V, tokens in the vocabulary (≥ 1)
    block_size: int   # longest sequence of real tokens: number of position embeddings (≥ 1)
    n_layer: int      # transformer blocks (≥ 1)
    n_head: int       # attention heads per block (≥ 1, divides n_embd)
    n_embd: int       # C, width of the residual stream (≥ 1)
    dropout: float = 0.0  # dropout probability in train mode, in [0, 1)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be an integer ≥ 1, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must lie in [0, 1), got {self.dropout!r}")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"GPTConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**d)


@dataclasses.dataclass
class KVCache:
    """Per-layer (k, v) of the tokens seen so far, each (B, H, Tk, hs), and their mask (B, Tk)."""
    layers: list = dataclasses.field(default_factory=list)
    mask: np.ndarray = None


def attention_pattern(mask, T):
    """Position ids (B, T) and the allowed attention (B, T, Tk) of the last T columns of mask (B, Tk).

    A token's position is the number of real tokens before it (left padding shifts nothing).
    Query t (column Tk − T + t) sees the real keys at or before it, and itself (so a padding
    query's softmax row is never empty).
    """
    Tk = mask.shape[1]
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, Tk - T:]                          # (B, T)
    causal = np.tri(T, Tk, Tk - T, dtype=bool)                                            # (T, Tk)
    itself = np.eye(T, Tk, Tk - T, dtype=bool)                                            # (T, Tk)
    return pos, causal & (mask[:, None, :] | itself)                                      # (B, T, Tk)


class CausalSelfAttention(Module):
    def __init__(self, config, rng):
        C = config.n_embd
        self.n_head = config.n_head
        self.c_attn = Linear(C, 3 * C, rng)                                    # q, k, v projections
        self.c_proj = Linear(C, C, rng, std=0.02 / math.sqrt(2 * config.n_layer))
        self.resid_dropout = Dropout(config.dropout, rng)

    def __call__(self, x, mask, past=None):
        qkv = self.c_attn(x)                                                   # (B, T, 3C)
        y, present = F.attention(qkv, mask, self.n_head, past)                 # (B, T, C)
        return self.resid_dropout(self.c_proj(y)), present


class MLP(Module):
    def __init__(self, config, rng):
        C = config.n_embd
        self.c_fc = Linear(C, 4 * C, rng)
        self.c_proj = Linear(4 * C, C, rng, std=0.02 / math.sqrt(2 * config.n_layer))
        self.dropout = Dropout(config.dropout, rng)

    def __call__(self, x):
        h = self.c_fc(x).gelu()                                                # (B, T, 4C)
        return self.dropout(self.c_proj(h))                                    # (B, T, C)


class Block(Module):
    def __init__(self, config, rng):
        self.ln_1 = LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, rng)
        self.ln_2 = LayerNorm(config.n_embd)
        self.mlp = MLP(config, rng)

    def __call__(self, x, mask, past=None):
        a, present = self.attn(self.ln_1(x), mask, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class Transformer(Module):
    """The GPT-2 body: ids (B, T) -> final hidden states (B, T, C)."""

    def __init__(self, config, rng):
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd, rng)
        self.wpe = Embedding(config.block_size, config.n_embd, rng)
        self.drop = Dropout(config.dropout, rng)
        self.h = [Block(config, rng) for _ in range(config.n_layer)]
        self.ln_f = LayerNorm(config.n_embd)

    def __call__(self, input_ids, attention_mask=None, kv_cache=None):
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be (B, T), got shape {ids.shape}")
        B, T = ids.shape
        mask = np.ones((B, T), bool) if attention_mask is None else np.asarray(attention_mask, bool)
        if mask.shape != (B, T):
            raise ValueError(f"attention_mask {mask.shape} does not match input_ids {ids.shape}")
        past_mask = None if kv_cache is None else kv_cache.mask
        full = mask if past_mask is None else np.concatenate([past_mask, mask], axis=1)   # (B, Tk)
        pos, allowed = attention_pattern(full, T)                                         # (B, T), (B, T, Tk)
        if pos.max() >= self.config.block_size:
            raise ValueError(f"{pos.max() + 1} real tokens exceed block_size {self.config.block_size}")
        x = self.drop(self.wte(ids) + self.wpe(pos))                                      # (B, T, C)
        presents = []
        for i, block in enumerate(self.h):
            x, present = block(x, allowed, kv_cache.layers[i] if past_mask is not None else None)
            presents.append(present)
        if kv_cache is not None:
            kv_cache.layers, kv_cache.mask = presents, full
        return self.ln_f(x)                                                               # (B, T, C)


class GPT(Module):
    def __init__(self, config, rng):
        self.config = config
        self.transformer = Transformer(config, rng)

    def __call__(self, input_ids, attention_mask=None, *, kv_cache=None, return_hidden=False):
        """Logits (B, T, V) — and the final hidden states (B, T, C) if return_hidden."""
        h = self.transformer(input_ids, attention_mask, kv_cache)                         # (B, T, C)
        # LM head tied to the token embedding: logits = h · W_teᵀ
        logits = F.linear(h, self.transformer.wte.weight.T)                               # (B, T, V)
        return (logits, h) if return_hidden else logits


class ScalarHeadModel(Module):
    """Transformer body + `score` Linear(C, 1): one scalar per position (reward, value, cost)."""

    def __init__(self, config, rng):
        self.config = config
        self.transformer = Transformer(config, rng)
        self.score = Linear(config.n_embd, 1, rng)

    @classmethod
    def from_lm(cls, lm, rng=None):
        """A scalar-head model whose body is a copy of language model `lm`'s (the head is new).

        `rng` initialises the new head; the default, `np.random.default_rng(0)`, makes
        `from_lm(lm)` give the same head every time.
        """
        rng = np.random.default_rng(0) if rng is None else rng
        model = cls(lm.config, rng).astype(lm.transformer.wte.weight.dtype)
        model.transformer.load_state_dict(lm.transformer.state_dict())
        return model

    def __call__(self, input_ids, attention_mask=None):
        """Scores (B, T)."""
        h = self.transformer(input_ids, attention_mask)                                   # (B, T, C)
        return self.score(h).reshape(h.shape[:2])                                         # (B, T)


def last_token_values(values, mask):
    """values[b, t_b] with t_b the last position where mask[b] is True: (B, T) -> (B,).

    The reward model's score is read at the last response token (the <eos>); this is right for
    left- and right-padded rows alike. Works on Tensors (differentiably) and on arrays.
    """
    mask = np.asarray(mask, bool)
    if not mask.any(axis=1).all():
        raise ValueError(f"last_token_values: rows {np.flatnonzero(~mask.any(axis=1)).tolist()} have no True")
    return values[np.arange(len(mask)), last_token_index(mask)]                           # (B,)


def last_token_index(mask):
    """The last column where each row of mask (B, T) is True: (B,) int (rows may end in different columns)."""
    mask = np.asarray(mask, bool)
    return mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)                           # (B,)
