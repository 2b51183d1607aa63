"""Fused functions: finite differences (float64), agreement with the package's plain references
built from primitives (value and gradient), stability at |x| = 1e4 in float32, dtypes; and
importing the package leaves the process alone (no allocator tuning)."""
import json
import math
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.gradcheck import gradcheck


def weights(shape):
    return np.cos(1.0 + np.arange(int(np.prod(shape)))).reshape(shape)


def leaf(x):
    return Tensor(np.array(x, dtype=np.float64), requires_grad=True)


def causal_padded_mask(B, T, pad):
    """(B, T, T): causal, the first pad[b] keys of row b padding, every query sees itself."""
    real = np.arange(T)[None, :] >= np.asarray(pad)[:, None]                  # (B, T)
    return np.tril(np.ones((T, T), bool)) & (real[:, None, :] | np.eye(T, dtype=bool))


rng = np.random.default_rng(0)
IDS = np.array([[1, 4, 4, 0], [2, 2, 2, 5]])          # repeated ids and targets
MASK = causal_padded_mask(2, 4, [0, 2])

FUSED = {
    # name: (fn, inputs)
    "softmax last axis": (lambda x: F.softmax(x), [rng.normal(size=(3, 5))]),
    "softmax axis 0": (lambda x: F.softmax(x, axis=0), [rng.normal(size=(3, 5))]),
    "log_softmax": (lambda x: F.log_softmax(x), [rng.normal(size=(2, 3, 5))]),
    "log_softmax_gather": (lambda x: F.log_softmax_gather(x, IDS), [rng.normal(size=(2, 4, 6))]),
    "logsigmoid": (lambda x: F.logsigmoid(x), [rng.normal(size=(4, 3)) * 3]),
    "cross_entropy": (lambda x: F.cross_entropy(x, IDS), [rng.normal(size=(2, 4, 6))]),
    "cross_entropy ignore_index": (lambda x: F.cross_entropy(x, np.where(IDS == 2, -100, IDS), ignore_index=-100),
                                   [rng.normal(size=(2, 4, 6))]),
    "cross_entropy mask": (lambda x: F.cross_entropy(x, IDS, mask=IDS != 4), [rng.normal(size=(2, 4, 6))]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), [rng.normal(size=(2, 3, 5)), rng.normal(size=5), rng.normal(size=5)]),
    "embedding repeated ids": (lambda w: F.embedding(IDS, w), [rng.normal(size=(6, 3))]),
    "linear 3-D with bias": (lambda x, w, b: F.linear(x, w, b), [rng.normal(size=(2, 3, 4)), rng.normal(size=(4, 5)), rng.normal(size=5)]),
    "linear no bias": (lambda x, w: F.linear(x, w), [rng.normal(size=(3, 4)), rng.normal(size=(4, 2))]),
    "linear transposed weight": (lambda x, w: F.linear(x, w.T), [rng.normal(size=(3, 4)), rng.normal(size=(6, 4))]),
    "attention causal + padding": (lambda qkv: F.attention(qkv, MASK, 2)[0], [rng.normal(size=(2, 4, 12))]),
    "attention with past": (lambda qkv: F.attention(qkv, np.ones((2, 2, 5), bool), 2,
                                                    past=(np.ones((2, 2, 3, 2)), np.arange(24.0).reshape(2, 2, 3, 2)))[0],
                            [rng.normal(size=(2, 2, 12))]),
}


@pytest.mark.parametrize("name", FUSED)
def test_gradcheck_fused(name):
    fn, arrays = FUSED[name]
    inputs = [leaf(a) for a in arrays]
    w = weights(fn(*inputs).shape)
    gradcheck(lambda *xs: (fn(*xs) * w).sum(), inputs)  # raises naming the element on failure


# Each fused function against its plain reference from `functional.py` (or a one-line composition).
PAIRS = {
    "softmax": (F.softmax, F.softmax_reference, [(3, 5)]),
    "softmax axis 0": (lambda x: F.softmax(x, axis=0), lambda x: F.softmax_reference(x, axis=0), [(3, 5)]),
    "log_softmax": (F.log_softmax, lambda x: F.softmax_reference(x).log(), [(3, 5)]),
    "log_softmax_gather": (lambda x: F.log_softmax_gather(x, IDS),
                           lambda x: F.softmax_reference(x).log()[np.arange(2)[:, None], np.arange(4), IDS],
                           [(2, 4, 6)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, IDS), lambda x: F.cross_entropy_reference(x, IDS), [(2, 4, 6)]),
    "cross_entropy mask": (lambda x: F.cross_entropy(x, IDS, mask=IDS != 4),
                           lambda x: F.cross_entropy_reference(x, IDS, IDS != 4), [(2, 4, 6)]),
    "logsigmoid": (F.logsigmoid, lambda x: x.sigmoid().log(), [(4, 3)]),
    "layer_norm": (F.layer_norm, F.layer_norm_reference, [(2, 3, 5), (5,), (5,)]),
    "embedding": (lambda w: F.embedding(IDS, w), lambda w: w[IDS], [(6, 3)]),
    "linear": (F.linear, lambda x, w, b: x @ w + b, [(2, 3, 4), (4, 5), (5,)]),
}


def values_and_gradients(fn, arrays):
    """[fn(inputs), ∂f/∂input...] with f = Σ w ⊙ fn(inputs), on float64 leaves made from `arrays`."""
    inputs = [leaf(a) for a in arrays]
    out = fn(*inputs)
    (out * weights(out.shape)).sum().backward()
    return [out.data] + [x.grad for x in inputs]


@pytest.mark.parametrize("name", PAIRS)
def test_fused_equals_reference(name):
    fused, reference, shapes = PAIRS[name]
    arrays = [np.random.default_rng(1).normal(size=s) for s in shapes]
    for got, want in zip(values_and_gradients(fused, arrays), values_and_gradients(reference, arrays)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("past_len", [0, 3], ids=["no past", "KV cache of 3"])
def test_attention_equals_reference(past_len):
    """The fused kernel against softmax(q kᵀ/√hs + mask) v from primitives: values and ∂qkv, float64,
    causal + padding mask (row 1 starts with 2 padding tokens), with and without a KV cache."""
    B, T, H, hs = 2, 4, 2, 3
    rng = np.random.default_rng(7)
    qkv = rng.normal(size=(B, T, 3 * H * hs))
    past = tuple(rng.normal(size=(B, H, past_len, hs)) for _ in "kv") if past_len else None
    mask = causal_padded_mask(B, past_len + T, [0, 2])[:, past_len:]             # (B, T, Tk)
    fused = values_and_gradients(lambda x: F.attention(x, mask, H, past)[0], [qkv])
    reference = values_and_gradients(lambda x: F.attention_reference(x, mask, H, past), [qkv])
    for got, want, name in zip(fused, reference, ["y", "∂qkv"]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


def test_attention_with_past_equals_full_sequence():
    qkv = np.random.default_rng(2).normal(size=(2, 5, 12))
    mask = causal_padded_mask(2, 5, [0, 1])
    full, _ = F.attention(Tensor(qkv), mask, 2)
    _, past = F.attention(Tensor(qkv[:, :3]), mask[:, :3, :3], 2)
    tail, present = F.attention(Tensor(qkv[:, 3:]), mask[:, 3:], 2, past=past)
    np.testing.assert_allclose(tail.data, full.data[:, 3:], rtol=1e-12, atol=1e-14)
    assert present[0].shape == (2, 2, 5, 2)


def test_attention_weights_are_the_plain_softmax():
    qkv = Tensor(np.random.default_rng(5).normal(size=(2, 4, 12)))
    att = F.attention_weights(qkv, MASK, 2)                                  # (B, H, T, T)
    B, T, hs = 2, 4, 2
    heads = qkv.data.reshape(B, T, 3, 2, hs).transpose(2, 0, 3, 1, 4)
    scores = np.where(MASK[:, None], heads[0] @ heads[1].transpose(0, 1, 3, 2) / np.sqrt(hs), -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(att, expected / expected.sum(-1, keepdims=True), rtol=1e-12, atol=1e-15)


def test_attention_padding_query_rows_stay_finite():
    mask = causal_padded_mask(2, 4, [3, 0])  # row 0: three padding queries that see only themselves
    out, _ = F.attention(Tensor(np.random.default_rng(3).normal(size=(2, 4, 12)).astype(np.float32)), mask, 2)
    assert np.isfinite(out.data).all()


BIG = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=np.float32)


def test_softmax_family_at_1e4_float32():
    x = Tensor(BIG, requires_grad=True)
    y = F.softmax(x)
    np.testing.assert_array_equal(y.data, [[1, 0, 0], [0, 0, 1]])
    (y * np.array([1.0, 2.0, 3.0], np.float32)).sum().backward()
    assert np.isfinite(x.grad).all()
    np.testing.assert_allclose(x.grad, 0.0, atol=1e-6)   # saturated softmax: zero gradient
    x = Tensor(BIG, requires_grad=True)
    y = F.log_softmax(x)
    np.testing.assert_allclose(y.data, [[0, -2e4, -1e4], [-2e4, -2e4, 0]], rtol=1e-6)
    y[:, 0].sum().backward()
    # ∂ log p_0 / ∂x = e_0 − softmax(x)
    np.testing.assert_allclose(x.grad, [[0, 0, 0], [1, 0, -1]], atol=1e-6)


def test_logsigmoid_at_1e4_float32():
    x = Tensor(np.array([1e4, -1e4, 0.0], np.float32), requires_grad=True)
    y = F.logsigmoid(x)
    y.sum().backward()
    np.testing.assert_allclose(y.data, [0.0, -1e4, -math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(x.grad, [0.0, 1.0, 0.5], rtol=1e-6)   # σ(−x)


def test_cross_entropy_and_gather_at_1e4_float32():
    x = Tensor(BIG, requires_grad=True)
    loss = F.cross_entropy(x, np.array([1, 2]))
    loss.backward()
    # losses 2e4 and 0: mean 1e4; gradient (softmax − onehot) / 2
    np.testing.assert_allclose(loss.data, 1e4, rtol=1e-6)
    np.testing.assert_allclose(x.grad, [[0.5, -0.5, 0], [0, 0, 0]], atol=1e-6)
    lp = F.log_softmax_gather(Tensor(BIG), np.array([0, 0]))
    np.testing.assert_allclose(lp.data, [0.0, -2e4], rtol=1e-6)


def in_float32_and_float64(fn, arrays):
    """[value, gradients...] of f = Σ w ⊙ fn(inputs)² on float32 inputs, and on the same numbers in float64."""
    results = []
    for dtype in (np.float32, np.float64):
        inputs = [Tensor(a.astype(dtype), requires_grad=True) for a in arrays]
        out = fn(*inputs)
        (out * out * weights(out.shape).astype(dtype)).sum().backward()   # ∂f/∂out = 2 w ⊙ out, as big as out
        results.append([out.data] + [x.grad for x in inputs])
    return results


def test_layer_norm_at_1e4_float32_matches_float64():
    # rows spread over ±1e4, a constant row 1e4 (zero variance: only ε keeps 1/σ finite), a row off centre
    x = np.array([[1e4, -1e4, 0.0, 5e3, -2.5e3], [1e4] * 5, [1e4, 9e3, -1e4, 3e3, 7e3]], np.float32)
    w, b = np.random.default_rng(6).normal(size=(2, 5)).astype(np.float32)
    got, want = in_float32_and_float64(F.layer_norm, [x, w, b])
    for name, g32, g64 in zip(["value", "∂x", "∂w", "∂b"], got, want):
        assert g32.dtype == np.float32 and np.isfinite(g32).all(), name
        np.testing.assert_allclose(g32, g64, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got[0][1], b, rtol=1e-6)   # the constant row normalises to 0: y = b


def test_embedding_at_1e4_float32_matches_float64():
    table = (1e4 * weights((6, 3))).astype(np.float32)   # rows of size 1e4, gradients of size 1e4
    (out32, grad32), (out64, grad64) = in_float32_and_float64(lambda w: F.embedding(IDS, w), [table])
    np.testing.assert_array_equal(out32, out64)           # a lookup copies: exact
    assert grad32.dtype == np.float32 and np.isfinite(grad32).all()
    np.testing.assert_allclose(grad32, grad64, rtol=1e-6)  # repeated ids (2 three times) summed
    assert np.all(grad64[3] == 0) and np.abs(grad64[2]).max() > 1e4


def test_cross_entropy_all_masked_is_zero_not_nan():
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    loss = F.cross_entropy(x, np.array([-100, -100]), ignore_index=-100)
    loss.backward()
    assert loss.item() == 0.0 and np.all(x.grad == 0.0)


def test_cross_entropy_uniform_logits_is_log_v():
    loss = F.cross_entropy(Tensor(np.zeros((4, 7))), np.array([0, 3, 6, 2]))
    assert loss.item() == pytest.approx(math.log(7), rel=1e-12)


def test_fused_functions_keep_float32():
    r = np.random.default_rng(4)
    f32 = lambda *s: Tensor(r.normal(size=s).astype(np.float32), requires_grad=True)
    x, w, b, W = f32(2, 4, 6), f32(6), f32(6), f32(6, 5)
    outs = [F.softmax(x), F.log_softmax(x), F.logsigmoid(x), F.layer_norm(x, w, b), F.linear(x, W, w[:5]),
            F.log_softmax_gather(x, IDS), F.embedding(IDS, W), F.attention(f32(2, 4, 12), MASK, 2)[0]]
    total = F.cross_entropy(x, IDS)
    for out in outs:
        assert out.dtype == np.float32
        total = total + out.sum()
    assert total.dtype == np.float32
    total.backward()
    assert all(t.grad.dtype == np.float32 for t in (x, w, b, W))


def test_fused_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"logits \(2, 4, 6\) need targets of shape \(2, 4\), got \(2, 3\)"):
        F.cross_entropy(Tensor(np.zeros((2, 4, 6))), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match=r"embedding: ids must lie in \[0, 6\)"):
        F.embedding(np.array([6]), Tensor(np.zeros((6, 3))))
    with pytest.raises(ValueError, match=r"linear: input \(3, 4\) does not fit weight \(5, 2\)"):
        F.linear(Tensor(np.zeros((3, 4))), Tensor(np.zeros((5, 2))))
    with pytest.raises(ValueError, match=r"layer_norm: input \(3, 4\)"):
        F.layer_norm(Tensor(np.zeros((3, 4))), Tensor(np.ones(5)), Tensor(np.ones(5)))


def test_importing_minirlhf_leaves_the_allocator_alone():
    """No module of the package calls glibc's mallopt when imported; `kernels.tune_allocator()` does, once.

    A fresh interpreter records every C function looked up through ctypes (the `ctypes.dlsym` audit
    event) while it imports every module, then calls `tune_allocator()` twice, so the test also shows
    that it would have seen a mallopt made at import time.
    """
    script = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        looked_up = []
        sys.addaudithook(lambda event, args: looked_up.append(args[1]) if event == "ctypes.dlsym" else None)
        import minirlhf
        for module in pkgutil.walk_packages(minirlhf.__path__, "minirlhf."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
        at_import = list(looked_up)
        from minirlhf.engine.kernels import tune_allocator
        tuned = [tune_allocator(), tune_allocator()]
        print(json.dumps({"at_import": at_import, "tuned": tuned, "mallopt": looked_up.count("mallopt")}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert "mallopt" not in seen["at_import"], "importing minirlhf called mallopt: call kernels.tune_allocator()"
    if platform.libc_ver()[0] == "glibc":
        assert seen["tuned"] == [True, True] and seen["mallopt"] == 1   # looked up once: the second call is a no-op
    else:
        assert seen["tuned"] == [False, False] and seen["mallopt"] == 0
