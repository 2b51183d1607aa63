"""The engine: every primitive op against central finite differences (float64), broadcasting,
repeated indices, reused nodes, accumulation, a 100,000-node chain, no_grad, dtypes, errors,
and the fused GELU against its reference from primitives."""
import math

import numpy as np
import pytest

from minirlhf.engine.autograd import (Tensor, concatenate, gelu_reference, is_grad_enabled, maximum, minimum, no_grad,
                                      stack, unbroadcast, where)
from minirlhf.engine.gradcheck import GradcheckError, gradcheck


def weights(shape):
    """Fixed, non-trivial weights that turn an op's output into a scalar: f = Σ w ⊙ op(x)."""
    return np.cos(1.0 + np.arange(int(np.prod(shape)))).reshape(shape)


def check(fn, shapes, positive=False, seed=0):
    """gradcheck Σ w ⊙ fn(*inputs) for random float64 inputs, |x| in [0.3, 1.5] (away from kinks)."""
    rng = np.random.default_rng(seed)
    inputs = []
    for shape in shapes:
        x = rng.uniform(0.3, 1.5, shape)
        if not positive:
            x *= rng.choice([-1.0, 1.0], shape)
        inputs.append(Tensor(x, requires_grad=True))
    w = weights(fn(*inputs).shape)
    return gradcheck(lambda *xs: (fn(*xs) * w).sum(), inputs)


CASES = {
    # name: (fn, input shapes, inputs positive)
    "add broadcast": (lambda a, b: a + b, [(3, 4), (4,)], False),
    "add scalar (radd)": (lambda a: 2.5 + a, [(3,)], False),
    "sub broadcast": (lambda a, b: a - b, [(2, 1, 4), (3, 1)], False),
    "rsub": (lambda a: 1.0 - a, [(2, 3)], False),
    "mul broadcast": (lambda a, b: a * b, [(2, 3, 4), (1, 3, 1)], False),
    "div broadcast": (lambda a, b: a / b, [(3, 4), (3, 1)], True),
    "rtruediv": (lambda a: 2.0 / a, [(5,)], True),
    "pow 3": (lambda a: a ** 3, [(2, 3)], False),
    "pow -0.5": (lambda a: a ** -0.5, [(4,)], True),
    "neg": (lambda a: -a, [(3, 2)], False),
    "matmul 2-D": (lambda a, b: a @ b, [(3, 4), (4, 5)], False),
    "matmul batched": (lambda a, b: a @ b, [(2, 3, 4), (2, 4, 5)], False),
    "matmul broadcast batch": (lambda a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)], False),
    "sum all": (lambda a: a.sum(), [(3, 4)], False),
    "sum axis keepdims": (lambda a: a.sum(axis=1, keepdims=True), [(2, 3, 4)], False),
    "sum tuple axes": (lambda a: a.sum(axis=(0, 2)), [(2, 3, 4)], False),
    "mean axis -1": (lambda a: a.mean(axis=-1), [(3, 5)], False),
    "mean all": (lambda a: a.mean(), [(3, 5)], False),
    "max axis": (lambda a: a.max(axis=1), [(3, 5)], False),
    "max all keepdims": (lambda a: a.max(keepdims=True), [(3, 5)], False),
    "reshape": (lambda a: a.reshape(6, 2), [(3, 4)], False),
    "transpose axes": (lambda a: a.transpose(2, 0, 1), [(2, 3, 4)], False),
    "transpose .T": (lambda a: a.T, [(2, 3)], False),
    "transpose negative axes": (lambda a: a.transpose(0, -1, -2), [(2, 3, 4)], False),
    "getitem slices": (lambda a: a[1:, ::2], [(4, 5)], False),
    "getitem repeated ints": (lambda a: a[[0, 2, 0, 0]], [(3, 2)], False),
    "getitem int arrays": (lambda a: a[np.array([0, 1, 1]), np.array([2, 2, 0])], [(2, 3)], False),
    "concatenate": (lambda a, b: concatenate([a, b, a], axis=1), [(2, 3), (2, 1)], False),
    "stack": (lambda a, b: stack([a, b], axis=-1), [(2, 3), (2, 3)], False),
    "exp": (lambda a: a.exp(), [(3, 4)], False),
    "log": (lambda a: a.log(), [(3, 4)], True),
    "tanh": (lambda a: a.tanh(), [(3, 4)], False),
    "sqrt": (lambda a: a.sqrt(), [(3, 4)], True),
    "sigmoid": (lambda a: a.sigmoid(), [(3, 4)], False),
    "relu": (lambda a: a.relu(), [(3, 4)], False),
    "gelu": (lambda a: (a * 3.0).gelu(), [(3, 4)], False),
    "clip": (lambda a: a.clip(-0.6, 0.9), [(4, 5)], False),
    "maximum broadcast": (lambda a, b: maximum(a, b), [(3, 4), (4,)], False),
    "minimum with scalar": (lambda a: minimum(a, 0.4), [(3, 4)], False),
    "where broadcast": (lambda a, b: where(np.array([True, False, True]), a, b), [(2, 3), (1,)], False),
    "where scalar fill": (lambda a: where(np.eye(3, dtype=bool), a, -9.0), [(3, 3)], False),
    "reused node": (lambda a: a * a + a.exp() * a, [(3,)], False),
    "composite": (lambda a, b: ((a @ b).tanh() * 2.0 - b.sum(axis=0)).sigmoid(), [(2, 3), (3, 4)], False),
}


@pytest.mark.parametrize("name", CASES)
def test_gradcheck_op(name):
    fn, shapes, positive = CASES[name]
    check(fn, shapes, positive)  # raises GradcheckError naming the element on failure


def random_broadcast_shapes(rng, n):
    """n shapes that broadcast together: one random shape, in each copy some axes set to 1 and
    some leading axes dropped (at least one axis kept)."""
    full = rng.integers(2, 4, size=rng.integers(2, 5))
    shapes = []
    for _ in range(n):
        shape = [1 if rng.random() < 0.3 else int(k) for k in full]
        shapes.append(tuple(shape[rng.integers(0, len(shape)):]))
    return shapes


BINARY = {
    # name: (fn of a, b and where's condition, inputs positive)
    "+": (lambda a, b, condition: a + b, False),
    "-": (lambda a, b, condition: a - b, False),
    "*": (lambda a, b, condition: a * b, False),
    "/": (lambda a, b, condition: a / b, True),
    "maximum": (lambda a, b, condition: maximum(a, b), False),
    "where": (lambda a, b, condition: where(condition, a, b), False),
}
_shapes_rng = np.random.default_rng(2024)
BROADCAST_CASES = [pytest.param(name, shapes, id=f"{name} {shapes[0]} {shapes[1]} condition {shapes[2]}")
                   for name in BINARY for shapes in (random_broadcast_shapes(_shapes_rng, 3) for _ in range(8))]


@pytest.mark.parametrize("name, shapes", BROADCAST_CASES)
def test_gradcheck_binary_ops_on_random_broadcast_shapes(name, shapes):
    fn, positive = BINARY[name]
    condition = np.random.default_rng(1).random(shapes[2]) < 0.5   # used by where only
    check(lambda a, b: fn(a, b, condition), shapes[:2], positive)


def test_forward_values_closed_form():
    x = Tensor(np.array([0.0, 1.0, -1.0]))
    # gelu(1) = ½·(1 + tanh(√(2/π)·1.044715))
    expected = 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * 1.044715))
    np.testing.assert_allclose(x.gelu().data, [0.0, expected, expected - 1.0], rtol=1e-14)
    np.testing.assert_allclose(x.sigmoid().data, [0.5, 1 / (1 + math.e ** -1), 1 / (1 + math.e)], rtol=1e-14)
    np.testing.assert_allclose(Tensor(np.arange(6.0).reshape(2, 3)).mean(axis=0).data, [1.5, 2.5, 3.5])


def test_gelu_equals_reference():
    """`Tensor.gelu` (blocked kernels) against `gelu_reference` (primitives): values and gradients in
    float64, on 150,003 elements (blocks of 65,536 and a partial last one) of a transposed view."""
    x = np.random.default_rng(3).normal(size=(50_001, 3)) * 3.0
    w = np.random.default_rng(4).normal(size=(3, 50_001))
    results = []
    for gelu in (Tensor.gelu, gelu_reference):
        leaf = Tensor(x, requires_grad=True)
        y = gelu(leaf.T)                                  # a non-contiguous input
        (y * w).sum().backward()
        results.append((y.data, leaf.grad))
    (y_fused, grad_fused), (y_reference, grad_reference) = results
    np.testing.assert_allclose(y_fused, y_reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad_fused, grad_reference, rtol=1e-12, atol=1e-12)


def test_ties_share_the_gradient():
    x = Tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.5, 0.5])
    a, b = Tensor(np.array([2.0, 1.0]), requires_grad=True), Tensor(np.array([2.0, 5.0]), requires_grad=True)
    maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad, [0.5, 0.0])
    np.testing.assert_array_equal(b.grad, [0.5, 1.0])


def test_gradients_accumulate_over_uses_and_backward_calls():
    x = Tensor(np.array([2.0, -1.0]), requires_grad=True)
    y = (x * x + x).sum()   # dy/dx = 2x + 1
    y.backward()
    np.testing.assert_array_equal(x.grad, [5.0, -1.0])
    y.backward()
    np.testing.assert_array_equal(x.grad, [10.0, -2.0])


def test_retain_grad_keeps_an_intermediate_gradient():
    x = Tensor(np.array(3.0), requires_grad=True)
    h = (x * 2.0).retain_grad()
    (h * h).backward()          # d(h²)/dh = 2h = 12, dx = 12·2
    assert h.grad == 12.0 and x.grad == 24.0


def test_100k_node_chain_has_no_recursion_limit():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y + 1e-5
    y.backward()
    assert x.grad == 1.0
    np.testing.assert_allclose(y.data, 2.0)


def test_no_grad_records_nothing_and_restores():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0).exp().sum()
    assert is_grad_enabled()
    assert not y.requires_grad and y._parents == ()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    with pytest.raises(ZeroDivisionError), no_grad():
        1 / 0
    assert is_grad_enabled()


def test_detach_cuts_the_graph():
    x = Tensor(np.ones(2), requires_grad=True)
    y = (x * 3.0).detach() * x
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_unbroadcast_sums_stretched_and_prepended_axes():
    g = np.ones((2, 3, 4))
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)), np.full((3, 1), 8.0))
    np.testing.assert_array_equal(unbroadcast(g, (4,)), np.full((4,), 6.0))
    assert unbroadcast(g, (2, 3, 4)) is g


def test_float32_stays_float32_with_python_and_numpy_scalars():
    x = Tensor(np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = ((x * 2.0 + 1.0) / 3.0 - np.float64(0.5)) ** 2
    z = (y.gelu() + y.sigmoid() + y.tanh() + maximum(y, 0.1) + where(y.data > 0.5, y, 0.0)).mean(axis=0)
    assert z.dtype == np.float32
    z.sum().backward()
    assert x.grad.dtype == np.float32


def test_shape_errors_name_the_op_and_both_shapes():
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"\+: shapes \(2, 3\) and \(4,\)"):
        a + b
    with pytest.raises(ValueError, match=r"@: shapes \(2, 3\) and \(2, 3\)"):
        a @ a
    with pytest.raises(ValueError, match=r"concatenate\(axis=0\)"):
        concatenate([a, Tensor(np.ones((2, 2)))])


@pytest.mark.parametrize("op, message", [
    (lambda x: x.reshape(4, 2), r"reshape\(shape=\(4, 2\)\) does not fit an input of shape \(2, 3\)"),
    (lambda x: x.reshape((-1, -1)), r"reshape\(shape=\(-1, -1\)\) does not fit an input of shape \(2, 3\)"),
    (lambda x: x.transpose(0, 2), r"transpose\(axes=\(0, 2\)\) does not fit an input of shape \(2, 3\)"),
    (lambda x: x.transpose(0, 0), r"transpose\(axes=\(0, 0\)\) does not fit an input of shape \(2, 3\)"),
    (lambda x: x.transpose(1, 0, 2), r"transpose\(axes=\(1, 0, 2\)\) does not fit an input of shape \(2, 3\)"),
    (lambda x: x.sum(axis=2), r"sum\(axis=2\) does not fit an input of shape \(2, 3\)"),
    (lambda x: x.mean(axis=-3), r"mean\(axis=-3\) does not fit an input of shape \(2, 3\)"),
    (lambda x: x.max(axis=(0, 0)), r"max\(axis=\(0, 0\)\) does not fit an input of shape \(2, 3\)"),
])
def test_shape_op_errors_name_the_op_the_request_and_the_shape(op, message):
    with pytest.raises(ValueError, match=message):
        op(Tensor(np.ones((2, 3)), requires_grad=True))


def test_backward_needs_a_gradient_for_non_scalars():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="non-scalar"):
        (x * 2.0).backward()
    (x * 2.0).backward(np.array([1.0, 0.0, 3.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, 6.0])


def test_a_wrong_backward_is_caught():
    """gradcheck points at the element; the engine rejects a gradient of the wrong shape."""
    def bad_square(x):  # forward x², backward claims x instead of 2x
        return Tensor.from_op(x.data ** 2, (x,), lambda g: (g * x.data,), "bad_square")
    x = Tensor(np.array([[0.5, 2.0], [1.0, -1.0]]), requires_grad=True)
    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(2, 2\)\) at index \(0, 0\): analytic 0.5, numeric 1"):
        gradcheck(lambda x: bad_square(x).sum(), [x])
    wrong_shape = Tensor.from_op(x.data.sum(), (x,), lambda g: (np.ones(3),), "wrong_shape")
    with pytest.raises(RuntimeError, match=r"'wrong_shape' returned a gradient of shape \(3,\)"):
        wrong_shape.backward()
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda x: x.sum(), [Tensor(np.ones(2, np.float32), requires_grad=True)])


def test_sigmoid_is_stable_at_1e4():
    x = Tensor(np.array([1e4, -1e4], dtype=np.float32), requires_grad=True)
    y = x.sigmoid()
    y.sum().backward()
    np.testing.assert_array_equal(y.data, [1.0, 0.0])
    np.testing.assert_array_equal(x.grad, [0.0, 0.0])
