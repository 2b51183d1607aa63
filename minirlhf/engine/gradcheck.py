"""Finite-difference gradient checker: the tool that keeps every op honest.

`gradcheck(fn, inputs)` computes the engine's gradient of a scalar `fn(*inputs)` by `backward()`
and compares it, element by element, with the central difference

    ∂f/∂x_i ≈ (f(x + ε e_i) − f(x − ε e_i)) / 2ε          (error O(ε²) + rounding O(1e-16/ε))

in float64. An element passes when |analytic − numeric| ≤ atol + rtol·|numeric|. On failure it
raises `GradcheckError` naming the input, the worst element index, both values and the error.
It returns the worst relative error max |a − n| / max(|a|, |n|, atol) over all checked elements.

For big inputs (a whole model) pass `max_elements` and an `rng`: that many elements of each input
are drawn at random instead of checking every one.
"""
import numpy as np

from minirlhf.engine.autograd import no_grad


class GradcheckError(AssertionError):
    pass


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, *, names=None, max_elements=None, rng=None):
    """Check the gradient of scalar `fn(*inputs)` against central differences; return the worst relative error."""
    names = names or [f"input {i}" for i in range(len(inputs))]
    for name, x in zip(names, inputs):
        if x.dtype != np.float64 or not x.requires_grad:
            raise TypeError(f"gradcheck: {name} must be a float64 Tensor with requires_grad=True, "
                            f"got dtype {x.dtype}, requires_grad={x.requires_grad}")
        x.data = np.ascontiguousarray(x.data)  # so that a flat view perturbs x in place
    out = fn(*inputs)
    if out.size != 1:
        raise ValueError(f"gradcheck: fn must return a scalar, got shape {out.shape}")
    for x in inputs:
        x.grad = None
    out.backward()
    analytic_grads = [np.zeros_like(x.data) if x.grad is None else x.grad.copy() for x in inputs]

    def f():
        with no_grad():
            return float(fn(*inputs).item())

    worst = 0.0
    for name, x, analytic in zip(names, inputs, analytic_grads):
        flat = x.data.reshape(-1)  # a view: writing it perturbs x
        indices = range(flat.size)
        if max_elements is not None and flat.size > max_elements:
            indices = np.sort((rng or np.random.default_rng(0)).choice(flat.size, max_elements, replace=False))
        for i in indices:
            old = flat[i]
            flat[i] = old + eps
            f_plus = f()
            flat[i] = old - eps
            f_minus = f()
            flat[i] = old
            numeric = (f_plus - f_minus) / (2.0 * eps)
            a = analytic.reshape(-1)[i]
            err = abs(a - numeric)
            worst = max(worst, err / max(abs(a), abs(numeric), atol))
            if err > atol + rtol * abs(numeric):
                index = np.unravel_index(i, x.shape)
                raise GradcheckError(
                    f"gradcheck failed for {name} (shape {x.shape}) at index {tuple(int(j) for j in index)}: "
                    f"analytic {a:.10g}, numeric {numeric:.10g}, |difference| {err:.3g} > "
                    f"atol + rtol·|numeric| = {atol + rtol * abs(numeric):.3g}")
    return worst
