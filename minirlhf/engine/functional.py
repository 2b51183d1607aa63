"""Fused, numerically stable functions with hand-written backward passes, beside their plain formulas.

Each function here computes what a few primitives of `autograd.py` compute. Where the fused code
hides that formula, it is written out directly above it as a reference function built from the
primitives, so autograd gives its backward: `softmax_reference`, `cross_entropy_reference`,
`layer_norm_reference`, `attention_reference`; elsewhere the docstring gives the composition.
`tests/test_functional.py::test_fused_equals_reference` and `::test_attention_equals_reference`
prove fused ≡ reference in value and gradient (float64). Fusing buys two things:
- stability: softmax and friends subtract the row maximum, log σ never exponentiates a positive
  number, so nothing overflows at |x| = 1e4 in float32;
- speed: one graph node instead of five to fifteen, in-place NumPy steps, and backward formulas
  that need fewer passes over the big (B, T, V) and (B, H, T, T) arrays; `linear` works on 2-D
  (B·T, C) data so that every product is one BLAS call. Helpers that exist only for speed (sums
  as BLAS products) are in `kernels.py`.

Kernels never modify the gradient `g` they receive (it may be a read-only broadcast view).
Constants are Python floats, so float32 inputs stay float32.
"""
import math

import numpy as np

from minirlhf.engine import kernels
from minirlhf.engine.autograd import Tensor, concatenate

MASKED = -1e30  # score of a masked attention entry: exp(MASKED − max) is exactly 0 in float32 and float64


def _shifted_exp(x, axis):
    """m = max x, e = exp(x − m) and s = Σ e along `axis` (the stable core of every softmax)."""
    m = x.max(axis=axis, keepdims=True)
    e = x - m
    np.exp(e, out=e)
    return m, e, e.sum(axis=axis, keepdims=True)


def softmax_reference(x, axis=-1):
    """softmax from the primitives (autograd gives its backward): `softmax` ≡ this."""
    # softmax(x)_i = exp(x_i − max x) / Σ_j exp(x_j − max x)
    e = (x - x.max(axis=axis, keepdims=True)).exp()
    return e / e.sum(axis=axis, keepdims=True)


def softmax(x, axis=-1):
    """softmax(x) along `axis`, fused.   Plain: `softmax_reference`."""
    _, y, s = _shifted_exp(x.data, axis)
    # softmax = e / Σ e,  e = exp(x − max x)
    y /= s
    def backward(g):
        # ∂x = y ⊙ (g − Σ_j g_j y_j)
        return (y * (g - (g * y).sum(axis=axis, keepdims=True)),)
    return Tensor.from_op(y, (x,), backward, "softmax")


def log_softmax(x, axis=-1):
    """log softmax(x) along `axis`, fused.   Plain: `softmax_reference(x).log()`."""
    m, _, s = _shifted_exp(x.data, axis)
    # log softmax(x)_i = x_i − max x − log Σ_j exp(x_j − max x)
    y = x.data - (m + np.log(s))
    def backward(g):
        # ∂x = g − softmax(x) · Σ_j g_j
        return (g - np.exp(y) * g.sum(axis=axis, keepdims=True),)
    return Tensor.from_op(y, (x,), backward, "log_softmax")


def log_softmax_gather(logits, targets):
    """log softmax(logits)[..., targets]: (..., V), (...) int -> (...), never building (..., V) log-probs.

    Plain: `softmax_reference(logits).log()` at the targets (see `cross_entropy_reference`).
    """
    targets = np.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"log_softmax_gather: logits {logits.shape} need targets of shape "
                         f"{logits.shape[:-1]}, got {targets.shape}")
    V = logits.shape[-1]
    t = targets.reshape(-1)
    if t.size and (t.min() < 0 or t.max() >= V):
        raise ValueError(f"log_softmax_gather: targets must lie in [0, {V}), got [{t.min()}, {t.max()}]")
    x = logits.data.reshape(-1, V)                    # (N, V)
    rows = np.arange(len(t))
    m, e, s = _shifted_exp(x, -1)                     # (N, 1), (N, V), (N, 1)
    # log p(t) = x_t − max x − log Σ exp(x − max x)
    lp = x[rows, t] - (m + np.log(s))[:, 0]
    def backward(g):
        # ∂x_v = g · (1[v = t] − p_v)
        g = g.reshape(-1, 1)
        gx = e * (-g / s)
        gx[rows, t] += g[:, 0]
        return (gx.reshape(logits.shape),)
    return Tensor.from_op(lp.reshape(targets.shape), (logits,), backward, "log_softmax_gather")


def cross_entropy_reference(logits, targets, mask=None):
    """Cross-entropy from the primitives (autograd gives its backward), over the tokens where
    `mask` is True (default all): `cross_entropy(logits, targets, mask=mask)` ≡ this."""
    V = logits.shape[-1]
    t = np.asarray(targets).reshape(-1)                                   # (N,)
    counted = np.ones(t.shape, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    logp = softmax_reference(logits).log().reshape(-1, V)                 # (N, V)
    # L = −(1/N) Σ_counted log softmax(logits)[target],  N = number of counted tokens
    return -(logp[np.arange(len(t)), t] * counted).sum() * (1.0 / max(int(counted.sum()), 1))


def cross_entropy(logits, targets, *, ignore_index=None, mask=None):
    """Mean over counted tokens of −log softmax(logits)[target]; logits (..., V), targets (...).

    Tokens are counted where `mask` is True (default all) and `targets != ignore_index`.
    With no counted token the loss is a defined 0 (and its gradient is 0), never NaN.
    Plain: `cross_entropy_reference`; fused through `log_softmax_gather`, which never builds the
    (..., V) log-probabilities.
    """
    targets = np.asarray(targets)
    counted = np.ones(targets.shape, bool) if mask is None else np.asarray(mask, bool)
    if ignore_index is not None:
        counted = counted & (targets != ignore_index)
    if counted.shape != targets.shape:
        raise ValueError(f"cross_entropy: mask shape {counted.shape} differs from targets {targets.shape}")
    logp = log_softmax_gather(logits, np.where(counted, targets, 0))   # (...)
    # L = −(1/N) Σ_counted log p(target),  N = number of counted tokens
    return (logp * counted).sum() * (-1.0 / max(int(counted.sum()), 1))


def logsigmoid(x):
    """log σ(x), fused.   Plain: x.sigmoid().log() (−inf at x = −1e4)."""
    # log σ(x) = min(x, 0) − log(1 + exp(−|x|))
    y = np.minimum(x.data, 0.0) - np.log1p(np.exp(-np.abs(x.data)))
    def backward(g):
        # d/dx log σ(x) = σ(−x) = exp(log σ(x) − x)
        return (g * np.exp(y - x.data),)
    return Tensor.from_op(y, (x,), backward, "logsigmoid")


def layer_norm_reference(x, weight, bias, eps=1e-5):
    """LayerNorm from the primitives (autograd gives its backward): `layer_norm` ≡ this."""
    # y = (x − μ) / √(σ² + ε) · w + b,  μ and σ² the mean and variance over the last axis
    xc = x - x.mean(axis=-1, keepdims=True)
    return xc / ((xc * xc).mean(axis=-1, keepdims=True) + eps).sqrt() * weight + bias


def layer_norm(x, weight, bias, eps=1e-5):
    """y = (x − μ) / √(σ² + ε) · w + b over the last axis (Ba et al. 2016), fused.

    Plain: `layer_norm_reference`.
    """
    C = x.shape[-1]
    if weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"layer_norm: input {x.shape} needs weight and bias of shape ({C},), "
                         f"got {weight.shape} and {bias.shape}")
    x2 = x.data.reshape(-1, C)                                        # (N, C)
    # x̂ = (x − μ) / σ,  μ = mean x,  σ = √(mean (x − μ)² + ε)
    xhat = x2 - (kernels.rowsum(x2) * (1.0 / C))[:, None]             # x − μ
    rstd = 1.0 / np.sqrt(kernels.rowdot(xhat, xhat) * (1.0 / C) + eps)   # (N,) 1/σ
    xhat *= rstd[:, None]
    def backward(g):
        g2 = g.reshape(-1, C)
        gx = g2 * weight.data                                         # ĝ = g ⊙ w
        # ∂x = (1/σ) · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))
        mean_g, mean_gx = kernels.rowsum(gx) * (1.0 / C), kernels.rowdot(gx, xhat) * (1.0 / C)
        gx -= mean_g[:, None]
        gx -= xhat * mean_gx[:, None]
        gx *= rstd[:, None]
        return gx.reshape(x.shape), np.einsum("ni,ni->i", g2, xhat), kernels.colsum(g2)
    # y = x̂ · w + b
    y = xhat * weight.data
    y += bias.data
    return Tensor.from_op(y.reshape(x.shape), (x, weight, bias), backward, "layer_norm")


def embedding(ids, weight):
    """weight[ids]: (...) int, (V, C) -> (..., C).   Plain: weight[ids] (whose backward uses np.add.at)."""
    ids = np.asarray(ids)
    V, C = weight.shape
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"embedding: ids must lie in [0, {V}), got [{ids.min()}, {ids.max()}]")
    def backward(g):
        # a row used k times receives the sum of its k gradients: sort the ids, sum each run
        flat = ids.reshape(-1)
        order = np.argsort(flat, kind="stable")
        sorted_ids = flat[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        gw = np.zeros_like(weight.data)
        gw[sorted_ids[starts]] = np.add.reduceat(g.reshape(-1, C)[order], starts, axis=0)
        return (gw,)
    return Tensor.from_op(weight.data[ids], (weight,), backward, "embedding")


def linear(x, weight, bias=None):
    """y = x W + b on the last axis; W is (C_in, C_out), as GPT-2's Conv1D stores it.

    Plain: `x @ W + b`; here the (..., C_in) input is viewed as 2-D (N, C_in), so that each
    gradient is one BLAS product: ∂x = g Wᵀ, ∂W = xᵀ g, ∂b = Σ_rows g.
    """
    c_in = x.shape[-1]
    if weight.ndim != 2 or weight.shape[0] != c_in:
        raise ValueError(f"linear: input {x.shape} does not fit weight {weight.shape} (C_in, C_out)")
    x2 = x.data.reshape(-1, c_in)                                 # (N, C_in)
    y = x2 @ weight.data                                          # (N, C_out)
    if bias is not None:
        y += bias.data
    def backward(g):
        g2 = g.reshape(-1, weight.shape[1])                       # (N, C_out)
        gx = (g2 @ weight.data.T).reshape(x.shape) if x.requires_grad else None
        return (gx, x2.T @ g2) + ((kernels.colsum(g2),) if bias is not None else ())
    parents = (x, weight) if bias is None else (x, weight, bias)
    return Tensor.from_op(y.reshape(x.shape[:-1] + (weight.shape[1],)), parents, backward, "linear")


def attention_reference(qkv, mask, n_head, past=None):
    """y = softmax(q kᵀ/√hs + mask) v in each head, from the primitives (autograd gives its backward).

    Takes the arguments of `attention` and returns its y (B, T, C). `attention` is this, fused:
    `tests/test_functional.py::test_attention_equals_reference` proves fused ≡ reference in values
    and gradients (float64, causal + padding mask, with and without a KV cache).
    """
    B, T, C3 = qkv.shape
    hs = C3 // 3 // n_head
    heads = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)       # (3, B, H, T, hs)
    q, k, v = heads[0], heads[1], heads[2]                                   # (B, H, T, hs)
    if past is not None:
        k, v = concatenate([past[0], k], axis=2), concatenate([past[1], v], axis=2)   # (B, H, Tk, hs)
    # the mask as a term of the scores: 0 where query t may attend to key s, −∞ (MASKED) elsewhere
    mask_term = np.where(mask, 0.0, MASKED).astype(qkv.dtype)[:, None]      # (B, 1, T, Tk)
    # y = att v,  att = softmax(q kᵀ/√hs + mask)
    scores = q @ k.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(hs)) + mask_term  # (B, H, T, Tk)
    y = softmax_reference(scores) @ v                                        # (B, H, T, hs)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)                    # merge heads (B, T, C)


def _attention_scores(qkv, mask, n_head, past):
    """The shared forward of `attention` and `attention_weights`, on arrays:
    qᵀ/√hs (B, H, hs, T), k and v (B, H, Tk, hs), P (B, H, Tk, T) and Z (B, H, T)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    if C3 != 3 * C or C % n_head or mask.shape[:2] != (B, T):
        raise ValueError(f"attention: qkv {qkv.shape} with {n_head} heads and mask {mask.shape} do not fit")
    hs = C // n_head
    heads = qkv.reshape(B, T, 3, n_head, hs)
    qT = np.ascontiguousarray(heads[:, :, 0].transpose(0, 2, 3, 1))    # (B, H, hs, T)
    qT *= 1.0 / math.sqrt(hs)                                         # q / √hs
    k = np.ascontiguousarray(heads[:, :, 1].transpose(0, 2, 1, 3))     # (B, H, T, hs)
    v = np.ascontiguousarray(heads[:, :, 2].transpose(0, 2, 1, 3))     # (B, H, T, hs)
    if past is not None:
        k, v = np.concatenate([past[0], k], axis=2), np.concatenate([past[1], v], axis=2)  # (B, H, Tk, hs)
    # P[s, t] = exp(k_s · q_t / √hs − max_s), 0 where masked;  Z_t = Σ_s P[s, t]
    P = k @ qT                                                        # (B, H, Tk, T)
    P += np.where(mask.transpose(0, 2, 1), P.dtype.type(0.0), P.dtype.type(MASKED))[:, None]
    P -= P.max(axis=-2, keepdims=True)
    np.exp(P, out=P)
    Z = np.ones(k.shape[2], P.dtype) @ P                              # (B, H, T)
    return qT, k, v, P, Z


def attention(qkv, mask, n_head, past=None):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017, eq. 1), fused: `attention_reference`
    (above) computes the same y, as `tests/test_functional.py::test_attention_equals_reference` proves.

    qkv (B, T, 3C) holds the query, key and value projections side by side; mask (B, T, Tk) is
    True where query t may attend to key s (Tk = T, or past + T with a KV cache); `past` is
    (k, v) of earlier positions, each (B, H, Tp, hs), which receives no gradient. Returns
    (y (B, T, C), present (k, v) each (B, H, Tk, hs)).

    Fused, for speed (measured with NumPy on 2 cores):
    - scores are kept transposed, P = k qᵀ (B, H, Tk, T): the max and sum over keys become
      column reductions, which NumPy does 3× faster than row reductions on 64-wide rows;
    - the mask is added as 0 / MASKED; the normalisation divides y (B, H, T, hs), not P;
    - backward uses Σ_s att_s ∂att_s = ∂y · y (as FlashAttention does), so only two passes
      touch a (B, H, Tk, T) array on the way back;
    - every batched product has contiguous operands (or a transposed first one), NumPy's fast path.
    """
    B, T, C3 = qkv.shape
    hs = C3 // 3 // n_head
    scale = 1.0 / math.sqrt(hs)
    qT, k, v, P, Z = _attention_scores(qkv.data, mask, n_head, past)
    Tk = k.shape[2]
    # y_t = Σ_s att[t, s] v_s = (Pᵀ v)_t / Z_t
    y = P.transpose(0, 1, 3, 2) @ v                                   # (B, H, T, hs)
    y /= Z[..., None]
    def backward(g):
        gy = np.ascontiguousarray(g.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3))  # (B, H, T, hs)
        gy /= Z[..., None]                                            # ∂y / Z
        gv = P @ gy                                                   # (B, H, Tk, hs) = attᵀ ∂y
        # ∂score = att ⊙ (∂att − Σ_s att_s ∂att_s) = P ⊙ (v ∂yᵀ/Z − (∂y/Z)·y)
        gP = v @ np.ascontiguousarray(gy.transpose(0, 1, 3, 2))       # (B, H, Tk, T)
        gP -= kernels.rowdot(gy, y)[:, :, None, :]
        gP *= P
        gqkv = np.empty((B, T, 3, n_head, hs), dtype=P.dtype)
        gqkv[:, :, 0] = (gP.transpose(0, 1, 3, 2) @ k).transpose(0, 2, 1, 3) * scale
        q = np.ascontiguousarray(qT.transpose(0, 1, 3, 2))           # (B, H, T, hs), scaled
        gqkv[:, :, 1] = (gP @ q)[:, :, Tk - T:].transpose(0, 2, 1, 3)
        gqkv[:, :, 2] = gv[:, :, Tk - T:].transpose(0, 2, 1, 3)
        return (gqkv.reshape(B, T, C3),)
    out = y.transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)               # merge heads (B, T, C)
    return Tensor.from_op(out, (qkv,), backward, "attention"), (k, v)


def attention_weights(qkv, mask, n_head):
    """The attention probabilities att[b, h, t, s] (B, H, T, Tk) of `attention`, as an array (for plots)."""
    _, _, _, P, Z = _attention_scores(qkv.data, mask, n_head, None)
    return (P / Z[:, :, None, :]).transpose(0, 1, 3, 2)
