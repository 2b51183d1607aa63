"""Log-probabilities of tokens under a model: the one place where the off-by-one is solved.

A causal LM's logits at position t − 1 predict token t. Every stage needs some form of it, and
each is written here once, on the batch layout of DEVELOPING.md (`input_ids (B, T)`, left-padded,
`attention_mask`, `response_mask` True on response tokens including their <eos>):

    sequence_logprobs   log π(x_t | x_<t) = log softmax(logits_{t−1} / temperature)[x_t]
                        for every response token, 0 elsewhere, and the sum per sequence
                        (SFT, the reward model's data, PPO, DPO and every variant train on it)
    token_values        V(x_<t): a scalar head's output at t − 1, the state in which token t
                        was chosen (PPO's value model)
    next_token_loss     −mean_i log π(u_i | u_<i) on windows of a token stream (pretraining,
                        PPO-ptx, the held-out pretraining loss)

`shift_right` is the off-by-one itself: column t takes column t − 1.
"""
import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import concatenate


def shift_right(x):
    """(B, T) -> (B, T): column t takes column t − 1; column 0 is 0. Works on Tensors and arrays."""
    return concatenate([np.zeros((x.shape[0], 1), x.dtype), x[:, :-1]], axis=1)


def sequence_logprobs(model, input_ids, attention_mask, response_mask, temperature=1.0, *,
                      return_entropy=False):
    """-> token_logprobs (B, T) Tensor (0 off the response) and seq_logprobs (B,) Tensor, their sum.

    With return_entropy, also the entropy (B, T) of the distribution each response token was
    drawn from (0 off the response).
    """
    ids = np.asarray(input_ids)
    response_mask = np.asarray(response_mask, bool)
    if response_mask.shape != ids.shape or np.shape(attention_mask) != ids.shape:
        raise ValueError(f"sequence_logprobs: input_ids {ids.shape}, attention_mask "
                         f"{np.shape(attention_mask)} and response_mask {response_mask.shape} must match")
    if response_mask[:, 0].any():
        raise ValueError("sequence_logprobs: response_mask[:, 0] must be False (token 0 has no context)")
    logits = model(ids, attention_mask)                                       # (B, T, V)
    if temperature != 1.0:
        logits = logits * (1.0 / temperature)
    # logits at t − 1 predict token t: gather next tokens, then shift the result right by one
    next_ids = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)  # (B, T)
    token_logprobs = shift_right(F.log_softmax_gather(logits, next_ids)) * response_mask   # (B, T)
    seq_logprobs = token_logprobs.sum(axis=1)                                 # (B,)
    if not return_entropy:
        return token_logprobs, seq_logprobs
    # H = −Σ_v p_v log p_v
    entropy = -(F.softmax(logits) * F.log_softmax(logits)).sum(axis=-1)      # (B, T)
    return token_logprobs, seq_logprobs, shift_right(entropy) * response_mask


def token_values(value_model, input_ids, attention_mask, response_mask):
    """V(x_<t) for every response token t, (B, T) Tensor, 0 off the response.

    The scalar head at position t − 1 has read x_<t, the state in which token t is chosen, so its
    output is shifted right by one (the same off-by-one as the log-probs).
    """
    v = value_model(input_ids, attention_mask)                           # (B, T), V of the prefix ending at t
    return shift_right(v) * response_mask                                # (B, T), V(x_<t)


def next_token_loss(model, windows):
    """Next-token loss on windows (B, T + 1) of a token stream: −mean log π(u_i | u_<i), a scalar Tensor."""
    # L = −mean_i log p(u_i | u_<i) over the window        (GPT-1, eq. 1, as a loss)
    return F.cross_entropy(model(windows[:, :-1]), windows[:, 1:])       # logits (B, T, V)
