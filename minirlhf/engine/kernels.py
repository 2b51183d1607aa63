"""Speed-only code, kept off the reading path: each routine computes exactly what the plain
formula at its call site says, and its comment says why it is written this way.

- `gelu`, `gelu_backward`: GPT-2's tanh GELU and its derivative as in-place steps over
  cache-sized blocks (called by `Tensor.gelu` in `autograd.py`, whose reference is
  `autograd.gelu_reference`).
- `rowsum`, `colsum`, `rowdot`: sums over short rows and columns as BLAS products, and row-wise
  dot products without a temporary (used by the fused kernels of `functional.py`).
- `tune_allocator()`: asks glibc's malloc to keep freed memory for the next training step. It is
  an explicit call, made by the command line, `quick_run`, the tests and the benchmarks; importing
  minirlhf never changes the process.

Blocking changes only which elements are in cache, never the float operations done on an
element: the numbers are those of the same steps run over the whole array.
"""
import ctypes
import functools

import numpy as np

_GELU_C = 0.7978845608028654  # √(2/π) as a Python float: a NumPy float64 would promote float32
_BLOCK = 1 << 16              # elements per block: 256 KiB per float32 array, so a block's arrays stay in L2


def _blocks(*arrays):
    """Matching flat blocks of `_BLOCK` elements of C-contiguous arrays of one shape (views)."""
    flat = [a.reshape(-1) for a in arrays]
    for i in range(0, flat[0].size, _BLOCK):
        yield tuple(f[i:i + _BLOCK] for f in flat)


# GELU is a chain of eight elementwise passes over a (B, T, 4C) array, a visible part of a
# training step; done in place block by block, each block stays in cache and the chain is 1.4×
# faster than the same NumPy expression over the whole array.
def gelu(x):
    """y = x·a and a = ½(1 + tanh u), u = √(2/π)·(x + 0.044715·x³); a is kept for the backward."""
    x = np.ascontiguousarray(x)
    a, y = np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype)
    for xb, ab, yb in _blocks(x, a, y):
        np.multiply(xb, xb, out=ab)
        ab *= _GELU_C * 0.044715
        ab += _GELU_C
        ab *= xb             # u
        np.tanh(ab, out=ab)
        ab += 1.0
        ab *= 0.5            # a
        np.multiply(xb, ab, out=yb)
    return y, a


def gelu_backward(x, a, g):
    """∂x = g ⊙ (a + x·a(1 − a)·2√(2/π)(1 + 3·0.044715·x²)), with a from `gelu(x)`."""
    x = np.ascontiguousarray(x)
    d = np.empty(x.shape, x.dtype)
    for xb, ab, gb, db in _blocks(x, a, np.ascontiguousarray(g), d):
        np.multiply(xb, xb, out=db)
        db *= 6.0 * _GELU_C * 0.044715
        db += 2.0 * _GELU_C  # 2·du/dx
        db *= xb
        db *= ab
        db *= 1.0 - ab
        db += ab
        db *= gb
    return d


# Sums over rows and columns as matrix-vector products: BLAS does them 3–5× faster than
# x.sum(axis) on the short rows (C = 128, T = 64) of this project.
def rowsum(x):
    """Σ over the last axis: x @ 1."""
    return x @ np.ones(x.shape[-1], x.dtype)


def colsum(x):
    """Σ over the rows of a 2-D array (N, C) -> (C,): 1ᵀ x."""
    return np.ones(x.shape[0], x.dtype) @ x


def rowdot(a, b):
    """Σ_i a[..., i] b[..., i], without building a ⊙ b."""
    return np.einsum("...i,...i->...", a, b)


# A training step frees its activations (hundreds of MB) at the end; by default glibc hands them
# back to the OS and the next step pays a page fault per 4 KiB to get them again, ~15% of a step
# measured on a 2-core machine.
@functools.cache   # idempotent: the settings are made once per process
def tune_allocator():
    """Ask glibc's malloc to keep freed memory for reuse; True if it did.

    Arrays up to 32 MiB are then served from the heap, and the heap is not trimmed below 1 GiB of
    free memory. A no-op returning False where glibc is absent (macOS, Windows, musl).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)    # M_TRIM_THRESHOLD: keep up to 1 GiB of free memory
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: allocate blocks < 32 MiB from the heap
    except (OSError, AttributeError):
        return False
    return True
