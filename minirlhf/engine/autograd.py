"""Reverse-mode automatic differentiation over NumPy arrays (micrograd, grown up to arrays).

A `Tensor` wraps an `np.ndarray` (`.data`). A tensor computed by an op remembers its parents and
a `backward` closure written right beside the forward line: given the gradient of the loss with
respect to the output, it returns the gradient with respect to each parent (the local chain rule).
`Tensor.backward()` orders the graph topologically (iteratively, so a 100,000-node chain does not
hit Python's recursion limit) and runs those closures from the output back to the leaves.

Every broadcasting rule of every binary op is undone by one helper, `unbroadcast`. Fused,
numerically stable functions (softmax, cross-entropy, LayerNorm, attention, ...) live in
`functional.py` and are built the same way, through `Tensor.from_op`. The one fused op here is
`gelu`: its plain formula is `gelu_reference`, and its loops are in `kernels.py`, with the rest of
the code that exists only for speed.

Deliberate simplifications, compared with PyTorch:
- `.grad` is kept only on leaves (and on tensors that called `retain_grad()`); it accumulates
  over uses of a node and over repeated `backward` calls.
- The graph is not freed by `backward`; it goes when its output is garbage-collected.
- `**` takes a Python number as exponent; `@` needs operands with at least 2 dimensions.
- Ties (max, maximum) share the gradient equally, as PyTorch's `amax` does.
"""
import contextlib
import math

import numpy as np

from minirlhf.engine import kernels

_grad_enabled = True


def is_grad_enabled():
    """False inside a `no_grad()` block."""
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Build no graph inside this block (sampling, evaluation, finite differences)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def unbroadcast(grad, shape):
    """Sum `grad` back to `shape`: the reverse of NumPy broadcasting, for every binary op."""
    # axes that broadcasting prepended
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    # axes of size 1 that broadcasting stretched
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


def _lift(x, like):
    """A Tensor from `x`; a Python number takes the float dtype of `like` (no float64 promotion)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (int, float)) and like.data.dtype.kind == "f":
        return Tensor(np.asarray(x, dtype=like.data.dtype))
    return Tensor(x)


def _broadcast(op, f, a, b):
    """f(a.data, b.data), with a shape error that names the op and both shapes."""
    try:
        return f(a.data, b.data)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None


def _shape_op(op, request, f, x):
    """f(x.data) for a shape op or reduction, with an error naming the op, the request and x's shape."""
    try:
        return f(x.data)
    except ValueError:   # NumPy's AxisError (an axis out of range) is a ValueError too
        raise ValueError(f"{op}({request}) does not fit an input of shape {x.shape}") from None


def _expand(g, axis, keepdims):
    """Put back the axes a reduction removed, so `g` broadcasts against the input."""
    return g if keepdims or axis is None else np.expand_dims(g, axis)


class Tensor:
    __array_priority__ = 1000  # `ndarray + Tensor` calls Tensor.__radd__

    def __init__(self, data, requires_grad=False):
        self.data = data.data if isinstance(data, Tensor) else np.asarray(data)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"only float tensors can require grad, got dtype {self.data.dtype}")
        self.requires_grad = requires_grad
        self.grad = None
        self._parents, self._backward, self._op, self._retain = (), None, "leaf", False

    @staticmethod
    def from_op(data, parents, backward, op):
        """The output of op `op`; `backward(g)` returns one gradient (or None) per parent."""
        out = Tensor(data)
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents, out._backward, out._op = tuple(parents), backward, op
        return out

    # ----- plumbing -----
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    T = property(lambda self: self.transpose())

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def retain_grad(self):
        """Keep `.grad` on this non-leaf tensor too (for inspecting intermediate gradients)."""
        self._retain = True
        return self

    # ----- elementwise binary ops (NumPy broadcasting; `unbroadcast` undoes it) -----
    def __add__(self, other):
        other = _lift(other, self)
        def backward(g):
            return unbroadcast(g, self.shape), unbroadcast(g, other.shape)
        return Tensor.from_op(_broadcast("+", np.add, self, other), (self, other), backward, "+")

    def __sub__(self, other):
        other = _lift(other, self)
        def backward(g):
            return unbroadcast(g, self.shape), unbroadcast(-g, other.shape)
        return Tensor.from_op(_broadcast("-", np.subtract, self, other), (self, other), backward, "-")

    def __mul__(self, other):
        other = _lift(other, self)
        def backward(g):
            return unbroadcast(g * other.data, self.shape), unbroadcast(g * self.data, other.shape)
        return Tensor.from_op(_broadcast("*", np.multiply, self, other), (self, other), backward, "*")

    def __truediv__(self, other):
        other = _lift(other, self)
        def backward(g):
            # d(a/b)/da = 1/b,  d(a/b)/db = −a/b²
            ga = g / other.data
            return unbroadcast(ga, self.shape), unbroadcast(-ga * self.data / other.data, other.shape)
        return Tensor.from_op(_broadcast("/", np.divide, self, other), (self, other), backward, "/")

    def __pow__(self, p):
        if not isinstance(p, (int, float)):
            raise TypeError(f"**: the exponent must be a Python number, got {type(p).__name__}")
        def backward(g):
            # d(x^p)/dx = p·x^(p−1)
            return (g * p * self.data ** (p - 1),)
        return Tensor.from_op(self.data ** p, (self,), backward, "**")

    def __matmul__(self, other):
        other = _lift(other, self)
        if self.ndim < 2 or other.ndim < 2 or self.shape[-1] != other.shape[-2]:
            raise ValueError(f"@: shapes {self.shape} and {other.shape} do not align "
                             "(both need ≥ 2 dims and a shared inner dimension)")
        def backward(g):
            # C = A B:  ∂A = g Bᵀ,  ∂B = Aᵀ g   (summed over broadcast batch axes)
            return (unbroadcast(g @ np.swapaxes(other.data, -1, -2), self.shape),
                    unbroadcast(np.swapaxes(self.data, -1, -2) @ g, other.shape))
        return Tensor.from_op(_broadcast("@", np.matmul, self, other), (self, other), backward, "@")

    __radd__ = __add__
    __rmul__ = __mul__

    def __rsub__(self, other):
        return _lift(other, self) - self

    def __rtruediv__(self, other):
        return _lift(other, self) / self

    def __rmatmul__(self, other):
        return _lift(other, self) @ self

    def __neg__(self):
        return Tensor.from_op(-self.data, (self,), lambda g: (-g,), "neg")

    # ----- reductions -----
    def sum(self, axis=None, keepdims=False):
        return self._sum(axis, keepdims, "sum")

    def mean(self, axis=None, keepdims=False):
        total = self._sum(axis, keepdims, "mean")
        return total * (total.size / max(self.size, 1))  # × 1/n, n = elements averaged

    def _sum(self, axis, keepdims, op):
        """The sum behind `sum` and `mean`; `op` names the caller in a bad-axis error."""
        def backward(g):
            return (np.broadcast_to(_expand(g, axis, keepdims), self.shape),)
        data = _shape_op(op, f"axis={axis}", lambda x: x.sum(axis=axis, keepdims=keepdims), self)
        return Tensor.from_op(data, (self,), backward, "sum")

    def max(self, axis=None, keepdims=False):
        top = _shape_op("max", f"axis={axis}", lambda x: x.max(axis=axis, keepdims=True), self)
        def backward(g):
            # the gradient goes to the maximum; ties share it equally
            hit = self.data == top
            return (hit * (_expand(g, axis, keepdims) / hit.sum(axis=axis, keepdims=True, dtype=g.dtype)),)
        data = top if keepdims else np.squeeze(top, axis=axis)
        return Tensor.from_op(data, (self,), backward, "max")

    # ----- shape ops -----
    def reshape(self, *shape):
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        data = _shape_op("reshape", f"shape={shape}", lambda x: x.reshape(shape), self)
        return Tensor.from_op(data, (self,), lambda g: (g.reshape(self.shape),), "reshape")

    def transpose(self, *axes):
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = axes or tuple(reversed(range(self.ndim)))
        data = _shape_op("transpose", f"axes={axes}", lambda x: x.transpose(axes), self)
        def backward(g):
            # the inverse permutation, of the axes counted from 0 (a negative axis counts from the end)
            return (g.transpose(np.argsort([a % self.ndim for a in axes])),)
        return Tensor.from_op(data, (self,), backward, "transpose")

    def __getitem__(self, index):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index) if isinstance(index, tuple) \
            else (index.data if isinstance(index, Tensor) else index)
        def backward(g):
            grad = np.zeros_like(self.data)
            np.add.at(grad, index, g)  # repeated integer indices accumulate
            return (grad,)
        return Tensor.from_op(self.data[index], (self,), backward, "getitem")

    # ----- elementwise unary ops -----
    def exp(self):
        y = np.exp(self.data)
        return Tensor.from_op(y, (self,), lambda g: (g * y,), "exp")

    def log(self):
        return Tensor.from_op(np.log(self.data), (self,), lambda g: (g / self.data,), "log")

    def tanh(self):
        y = np.tanh(self.data)
        # d tanh(x)/dx = 1 − tanh²(x)
        return Tensor.from_op(y, (self,), lambda g: (g * (1.0 - y * y),), "tanh")

    def sqrt(self):
        y = np.sqrt(self.data)
        return Tensor.from_op(y, (self,), lambda g: (g * 0.5 / y,), "sqrt")

    def sigmoid(self):
        # σ(x) = (1 + tanh(x/2)) / 2: the same number as 1/(1+e^−x), with no overflow at |x| = 1e4
        y = 0.5 * (1.0 + np.tanh(0.5 * self.data))
        return Tensor.from_op(y, (self,), lambda g: (g * y * (1.0 - y),), "sigmoid")

    def relu(self):
        return Tensor.from_op(np.maximum(self.data, 0), (self,), lambda g: (g * (self.data > 0),), "relu")

    def clip(self, lo=None, hi=None):
        inside = np.ones(self.shape, bool)
        if lo is not None:
            inside &= self.data >= lo
        if hi is not None:
            inside &= self.data <= hi
        # zero gradient where the value was clipped
        return Tensor.from_op(np.clip(self.data, lo, hi), (self,), lambda g: (g * inside,), "clip")

    def gelu(self):
        """GPT-2's tanh GELU as one node. Plain: `gelu_reference` (below the class), the same formula
        in the ops above; `tests/test_autograd.py::test_gelu_equals_reference` proves them equal.
        The elementwise passes run in cache-sized blocks (`kernels.gelu`), which is faster."""
        # gelu(x) = x·a,  a = ½(1 + tanh u),  u = √(2/π)·(x + 0.044715·x³)
        y, a = kernels.gelu(self.data)
        def backward(g):
            # d gelu/dx = a + x·½(1 − tanh²u)·du/dx = a + x·a(1 − a)·2√(2/π)(1 + 3·0.044715·x²)
            return (kernels.gelu_backward(self.data, a, g),)
        return Tensor.from_op(y, (self,), backward, "gelu")

    # ----- backpropagation -----
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) · grad into every leaf's `.grad` (grad defaults to 1 for a scalar)."""
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad (no leaf below it does)")
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward(): a non-scalar output of shape {self.shape} needs a grad argument")
            grad = np.ones_like(self.data)
        grads = {id(self): np.asarray(grad, dtype=self.dtype).reshape(self.shape)}
        for node in reversed(self._topological_order()):
            g = grads.pop(id(node), None)
            if g is None:  # no path from the output reached this node
                continue
            if not node._parents or node._retain:
                node.grad = np.array(g) if node.grad is None else node.grad + g
            if not node._parents:
                continue
            for parent, pg in zip(node._parents, node._backward(g)):
                if pg is None or not parent.requires_grad:
                    continue
                if pg.shape != parent.shape:
                    raise RuntimeError(f"backward of '{node._op}' returned a gradient of shape {pg.shape} "
                                       f"for an input of shape {parent.shape}")
                if pg.dtype != parent.dtype:
                    pg = pg.astype(parent.dtype)
                key = id(parent)
                grads[key] = grads[key] + pg if key in grads else pg

    def _topological_order(self):
        """Nodes that need a gradient, every node after all of its parents (iterative DFS)."""
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif id(node) not in seen:
                seen.add(id(node))
                stack.append((node, True))
                stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)
        return order


def gelu_reference(x):
    """GPT-2's tanh GELU from the primitive ops (autograd gives its backward): `Tensor.gelu` ≡ this."""
    # gelu(x) = ½x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    u = (x + x * x * x * 0.044715) * math.sqrt(2.0 / math.pi)
    return x * 0.5 * (u.tanh() + 1.0)


def concatenate(tensors, axis=0):
    """Join tensors along an existing axis; the gradient is split back at the same cuts."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    cuts = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    def backward(g):
        return tuple(np.split(g, cuts, axis=axis))
    try:
        data = np.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        raise ValueError(f"concatenate(axis={axis}): shapes {[t.shape for t in tensors]} do not fit") from None
    return Tensor.from_op(data, tensors, backward, "concatenate")


def stack(tensors, axis=0):
    """Join tensors along a new axis; the gradient is unstacked along it."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    def backward(g):
        return tuple(np.moveaxis(g, axis, 0))
    try:
        data = np.stack([t.data for t in tensors], axis=axis)
    except ValueError:
        raise ValueError(f"stack(axis={axis}): shapes {[t.shape for t in tensors]} differ") from None
    return Tensor.from_op(data, tensors, backward, "stack")


def where(condition, a, b):
    """`a` where `condition` is True, else `b` (masked fill: `where(mask, x, -1e9)`)."""
    condition = np.asarray(condition.data if isinstance(condition, Tensor) else condition, dtype=bool)
    like = a if isinstance(a, Tensor) else b
    a, b = _lift(a, like), _lift(b, like)
    def backward(g):
        return (unbroadcast(np.where(condition, g, 0), a.shape),
                unbroadcast(np.where(condition, 0, g), b.shape))
    try:
        data = np.where(condition, a.data, b.data)
    except ValueError:
        raise ValueError(f"where: shapes {condition.shape}, {a.shape}, {b.shape} do not broadcast") from None
    return Tensor.from_op(data, (a, b), backward, "where")


def maximum(a, b):
    """Elementwise max; at ties each input gets half the gradient."""
    like = a if isinstance(a, Tensor) else b
    a, b = _lift(a, like), _lift(b, like)
    def backward(g):
        share = (a.data > b.data) + 0.5 * (a.data == b.data)  # a's share of the gradient
        return unbroadcast(g * share, a.shape), unbroadcast(g * (1.0 - share), b.shape)
    return Tensor.from_op(_broadcast("maximum", np.maximum, a, b), (a, b), backward, "maximum")


def minimum(a, b):
    """Elementwise min, as min(a, b) = −max(−a, −b)."""
    like = a if isinstance(a, Tensor) else b
    return -maximum(-_lift(a, like), -_lift(b, like))
