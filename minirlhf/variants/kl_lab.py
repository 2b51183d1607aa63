"""The exact-KL lab: a policy small enough to list every response, so each KL estimator meets the truth.

A tiny GPT over V tokens answers one prompt (the single token 0) with exactly L tokens. There is
no <eos>, so every response has length L, all V^L of them (≤ 1,024) fit in one batch
(`enumerate_responses`, `lab_batch`) and the sequence probabilities

    π(y) = Π_t π(y_t | y_<t)         sum to 1 over the list, exactly.

Everything a sampler only estimates is then a sum over that list:

    KL(π ‖ π_ref) = Σ_y π(y) (log π(y) − log π_ref(y))       reverse KL, the one RLHF penalises
    KL(π_ref ‖ π) = Σ_y π_ref(y) (log π_ref(y) − log π(y))   forward KL              (`exact_kl`)

and the engine differentiates either sum (`flat_gradient`) to give its exact gradient. An
estimator K(y) = Σ_t k_t(y) (`grpo.kl_penalty`, per token as the libraries use it, or applied
once to the whole sequence's log-ratio) reaches the policy in one of two ways:

    in the loss    ĝ = ∇_θ (1/N) Σ_n K(y_n)                    GRPO's placement     (`estimator_loss`)
    in the reward  ĝ = (1/N) Σ_n K(y_n) ∇_θ log π(y_n)         REINFORCE, K held fixed (`reward_loss`)

N samples y_n ∼ π are a weight vector over the list, w_y = count_y / N (`sample_weights`): both
losses are Σ_y w_y (…), one backward pass whatever N is, and w = π gives each gradient's exact
expectation over the sampling. `positionwise_kl` is Σ_t KL(π(·|y_<t) ‖ π_ref(·|y_<t)) over the
whole vocabulary at each visited context, weighted by a frozen π: the quantity whose gradient
the per-token estimators turn out to estimate (docs/kl.md derives it; tests/test_kl_lab.py checks it).

Simplifications: one prompt; fixed-length responses; random models (`lab_models`) stand in for
an SFT model and a policy trained away from it; float64 throughout, so the exact identities hold
to rounding.
"""
import copy
import itertools

import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor, no_grad
from minirlhf.lm.logprobs import sequence_logprobs, shift_right
from minirlhf.lm.model import GPT, GPTConfig
from minirlhf.variants.grpo import kl_penalty


def enumerate_responses(vocab_size, length):
    """Every response of exactly `length` tokens over `vocab_size` tokens, in lexicographic order: (V^L, L)."""
    return np.array(list(itertools.product(range(vocab_size), repeat=length)), np.int64).reshape(-1, length)


def lab_batch(responses):
    """The prompt [0] followed by each response, in the project's batch layout:
    (input_ids, attention_mask, response_mask), each (B, 1 + L)."""
    B, L = responses.shape
    input_ids = np.concatenate([np.zeros((B, 1), np.int64), responses], axis=1)      # (B, 1 + L)
    response_mask = np.concatenate([np.zeros((B, 1), bool), np.ones((B, L), bool)], axis=1)
    return input_ids, np.ones((B, 1 + L), bool), response_mask


def lab_models(vocab_size, length, seed=0, scale=0.5, distance=0.2, n_embd=16, n_layer=2):
    """(π_ref, π): a random float64 GPT whose matrices are N(0, scale²) (peaked, context-dependent
    next-token distributions), and a copy with N(0, distance²) added to every matrix (for one seed,
    the same noise direction at every distance)."""
    rng = np.random.default_rng(seed)
    config = GPTConfig(vocab_size=vocab_size, block_size=length + 1, n_layer=n_layer, n_head=2, n_embd=n_embd)
    ref = GPT(config, rng).astype(np.float64)
    for p in ref.parameters():
        if p.ndim == 2:
            p.data = rng.normal(0.0, scale, p.shape)
    policy = copy.deepcopy(ref)
    for p in policy.parameters():
        if p.ndim == 2:
            p.data = p.data + rng.normal(0.0, distance, p.shape)
    return ref, policy


def response_logprobs(model, batch):
    """log π(y_t | y_<t) of every listed response, (B, 1 + L) Tensor, 0 on the prompt column."""
    return sequence_logprobs(model, *batch)[0]


def exact_kl(p_logprobs, q_logprobs):
    """KL(p ‖ q) = Σ_y p(y) (log p(y) − log q(y)) over the whole list; per-token log-probs (B, T),
    either a Tensor (the result is differentiable through it) or an array."""
    p, q = (x if isinstance(x, Tensor) else Tensor(np.asarray(x)) for x in (p_logprobs, q_logprobs))
    log_p, log_q = p.sum(axis=1), q.sum(axis=1)                       # (B,) log p(y) = Σ_t log p(y_t | y_<t)
    # KL(p ‖ q) = Σ_y p(y) (log p(y) − log q(y))
    return (log_p.exp() * (log_p - log_q)).sum()


def estimator_values(logprobs, ref_logprobs, estimator, per="token"):
    """K(y) for every listed response, (B,): the estimator summed over tokens (per="token"), or
    applied once to the sequence log-ratio log π(y) − log π_ref(y) (per="sequence").
    A Tensor in gives a Tensor out (differentiable); arrays give an array."""
    if per == "sequence":
        logprobs, ref_logprobs = logprobs.sum(axis=1, keepdims=True), np.asarray(ref_logprobs).sum(axis=1, keepdims=True)
    elif per != "token":
        raise ValueError(f"estimator_values: per must be 'token' or 'sequence', got {per!r}")
    # K(y) = Σ_t k_t(y)      (off the response both log-probs are 0, so k_t = 0 there)
    return kl_penalty(logprobs, ref_logprobs, estimator).sum(axis=1)


def estimator_loss(logprobs, ref_logprobs, weights, estimator, per="token"):
    """The estimator in the loss: Σ_y w_y K(y), a scalar Tensor (w = sample counts / N, or π)."""
    # L = (1/N) Σ_n K(y_n) = Σ_y w_y K(y)
    return (estimator_values(logprobs, ref_logprobs, estimator, per) * weights).sum()


def reward_loss(logprobs, ref_logprobs, weights, estimator, per="token"):
    """The estimator in the reward: Σ_y w_y K(y) log π(y) with K(y) held fixed, whose gradient is
    REINFORCE's (1/N) Σ_n K(y_n) ∇ log π(y_n), a scalar Tensor."""
    k = estimator_values(logprobs.data, ref_logprobs, estimator, per)                 # (B,) no gradient
    # ĝ = Σ_y w_y K(y) ∇ log π(y)
    return (logprobs.sum(axis=1) * (weights * k)).sum()


def positionwise_kl(model, ref_model, batch, weights, reverse=True):
    """Σ_y w_y Σ_t KL(π(·|y_<t) ‖ π_ref(·|y_<t)) over the whole vocabulary (reverse=False:
    KL(π_ref(·|y_<t) ‖ π(·|y_<t))), the weights held fixed; a scalar Tensor."""
    input_ids, attention_mask, response_mask = batch
    log_p = F.log_softmax(model(input_ids, attention_mask))                          # (B, T, V)
    with no_grad():
        log_q = F.log_softmax(ref_model(input_ids, attention_mask)).data              # (B, T, V)
    # KL_t = Σ_v p(v) (log p(v) − log q(v)) at the context y_<t, read at column t − 1
    kl = (log_p.exp() * (log_p - log_q)).sum(axis=-1) if reverse else \
        (np.exp(log_q) * (log_q - log_p)).sum(axis=-1)                                # (B, T)
    return ((shift_right(kl) * response_mask).sum(axis=1) * weights).sum()


def estimator_gradient(policy, responses, ref_logprobs, weights, placement, estimator, per="token"):
    """ĝ of one estimator placed in the "loss" or the "reward", on the weighted responses (B, L);
    ref_logprobs (B, 1 + L) of the same rows. Only the rows with w > 0 are scored, as a sampler would."""
    if placement not in ("loss", "reward"):
        raise ValueError(f"estimator_gradient: placement must be 'loss' or 'reward', got {placement!r}")
    rows = np.flatnonzero(weights)
    logprobs = response_logprobs(policy, lab_batch(responses[rows]))                   # (n, 1 + L)
    loss = (estimator_loss if placement == "loss" else reward_loss)(logprobs, ref_logprobs[rows], weights[rows],
                                                                      estimator, per)
    return flat_gradient(policy, loss)


def flat_gradient(model, loss):
    """∇_θ loss as one vector over every parameter of `model` (the graph is kept, .grad cleared)."""
    model.zero_grad()
    loss.backward()
    return np.concatenate([np.zeros(p.size) if p.grad is None else p.grad.reshape(-1) for p in model.parameters()])


def sample_weights(probs, n, rng):
    """n samples from the list with probabilities `probs`, as weights count_y / n, (B,)."""
    counts = np.bincount(rng.choice(len(probs), size=n, p=probs / probs.sum()), minlength=len(probs))
    return counts / n


def cosine(a, b):
    """cos ∠(a, b); 0 when either is the zero vector."""
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def relative_error(estimate, target):
    """‖estimate − target‖ / ‖target‖."""
    return float(np.linalg.norm(estimate - target) / np.linalg.norm(target))
