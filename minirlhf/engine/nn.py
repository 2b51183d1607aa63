"""Modules (parameters with dotted names, train/eval, state dicts), layers, and checkpoint files.

A `Module` finds its parameters by walking its attributes in the order they were set: a
`Tensor` attribute is a parameter, a `Module` attribute or a list of Modules is a child. The
dotted names that result (`transformer.h.0.attn.c_attn.weight`) are the checkpoint keys.

Layers: `Linear` (weight stored (C_in, C_out), as GPT-2's Conv1D), `Embedding`, `LayerNorm`,
`Dropout` (inverted dropout, Srivastava et al. 2014; active only in train mode, with an explicit
`np.random.Generator`).

Checkpoint files are `.npz` archives of a flat dict name -> array (model, optimizer or RNG state
alike; `module.save(path)` / `module.load(path)` for a module's own state dict), written
atomically (temp file in the same folder + `os.replace`, so a crash never leaves a half-written
checkpoint) and read with `allow_pickle=False` (a checkpoint cannot run code).

Simplification: a parameter shared by two attributes is listed twice; GPT ties its LM head by
using `wte.weight` directly instead.
"""
import os
import tempfile
import zipfile

import numpy as np

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor


class Module:
    training = True

    def named_parameters(self, prefix=""):
        """(dotted name, Tensor) for every parameter, in the order the attributes were set."""
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                yield prefix + name, value
            for child_name, child in _children(name, value):
                yield from child.named_parameters(f"{prefix}{child_name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_params(self):
        """Number of parameter elements."""
        return sum(p.size for p in self.parameters())

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        """Set train mode (dropout on) here and in every child; returns self."""
        self.training = mode
        for name, value in vars(self).items():
            for _, child in _children(name, value):
                child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def state_dict(self):
        """name -> a copy of the parameter's array."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters (keeping each parameter's dtype).

        Raises a ValueError listing shape mismatches by name, and, when strict, missing and
        unexpected keys.
        """
        params = dict(self.named_parameters())
        problems = [f"shape mismatch for {name}: checkpoint {np.shape(state[name])}, model {p.shape}"
                    for name, p in params.items() if name in state and np.shape(state[name]) != p.shape]
        if strict:
            problems += [f"missing key {name}" for name in params if name not in state]
            problems += [f"unexpected key {name}" for name in state if name not in params]
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for name, p in params.items():
            if name in state:
                p.data = np.array(state[name], dtype=p.dtype)

    def save(self, path):
        """Write `state_dict()` to a checkpoint file (.npz, atomically): `save_state_dict`."""
        save_state_dict(path, self.state_dict())

    def load(self, path, strict=True):
        """Load a checkpoint file written by `save` into the parameters (see `load_state_dict`); returns self."""
        self.load_state_dict(load_state_dict_file(path), strict=strict)
        return self

    def astype(self, dtype):
        """Cast every parameter (e.g. to float64 for gradient checks); returns self."""
        for p in self.parameters():
            p.data, p.grad = p.data.astype(dtype), None
        return self


def _children(name, value):
    """(name, Module) pairs held by one attribute: the Module itself, or a list's Modules."""
    if isinstance(value, Module):
        return [(name, value)]
    if isinstance(value, (list, tuple)):
        return [(f"{name}.{i}", m) for i, m in enumerate(value) if isinstance(m, Module)]
    return []


def _parameter(array, dtype):
    return Tensor(np.asarray(array, dtype=dtype), requires_grad=True)


class Linear(Module):
    """y = x W + b, W (C_in, C_out) initialised N(0, std²), b = 0."""

    def __init__(self, in_features, out_features, rng, *, bias=True, std=0.02, dtype=np.float32):
        self.weight = _parameter(rng.normal(0.0, std, (in_features, out_features)), dtype)
        self.bias = _parameter(np.zeros(out_features), dtype) if bias else None

    def __call__(self, x):
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """Row lookup weight[ids], weight (num_embeddings, dim) initialised N(0, std²)."""

    def __init__(self, num_embeddings, dim, rng, *, std=0.02, dtype=np.float32):
        self.weight = _parameter(rng.normal(0.0, std, (num_embeddings, dim)), dtype)

    def __call__(self, ids):
        return F.embedding(ids, self.weight)


class LayerNorm(Module):
    """Normalise the last axis to zero mean and unit variance, then scale (1) and shift (0)."""

    def __init__(self, dim, eps=1e-5, dtype=np.float32):
        self.weight = _parameter(np.ones(dim), dtype)
        self.bias = _parameter(np.zeros(dim), dtype)
        self.eps = eps

    def __call__(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Zero each element with probability p and scale the rest by 1/(1 − p), in train mode only.

    The generator is given to the constructor or to the call (the call's wins).
    """

    def __init__(self, p, rng=None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must lie in [0, 1), got {p}")
        self.p, self.rng = p, rng

    def __call__(self, x, rng=None):
        if not self.training or self.p == 0.0:
            return x
        rng = rng or self.rng
        if rng is None:
            raise ValueError("Dropout in train mode needs an np.random.Generator (constructor or call)")
        keep = rng.random(x.shape) >= self.p
        return x * (keep * (1.0 / (1.0 - self.p))).astype(x.dtype)


def save_state_dict(path, arrays):
    """Write a flat dict name -> array to `path` (.npz), atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{name: np.asarray(a) for name, a in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_state_dict_file(path):
    """Read a dict name -> array written by `save_state_dict` (no pickled objects allowed)."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an archive of named arrays")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a checkpoint (.npz of plain arrays): {err}") from err
