"""Optimizers (SGD with momentum, AdamW), gradient-norm clipping, warmup + cosine learning rate.

AdamW is Loshchilov & Hutter (2019), Algorithm 2, with the decay scaled by the learning rate as
PyTorch does (so η·λ, not λ alone, shrinks the weights each step):

    θ ← θ·(1 − η λ);  m ← β1 m + (1 − β1) g;  v ← β2 v + (1 − β2) g²
    θ ← θ − η · m̂ / (√v̂ + ε),   m̂ = m / (1 − β1^t),  v̂ = v / (1 − β2^t)

Parameters whose `.grad` is None are skipped. `params` may be a list of Tensors or, for AdamW,
a list of groups {"params": [...], "weight_decay": λ}; `decay_groups(model, λ)` makes the usual GPT
split (decay matrices and embeddings, not biases and LayerNorm gains).

An optimizer's state (step count and buffers) is a flat dict of arrays (`state_dict()`), saved in
the same .npz files as the model, so a resumed run continues exactly as if never stopped.

Every stage's update takes the same four steps, written out where the algorithm is:

    optimizer.zero_grad(); loss.backward(); check_finite(loss, model)   # stop on NaN/inf
    clip_grad_norm(optimizer.params, max_norm); optimizer.step()
"""
import math

import numpy as np


class Optimizer:
    """Shared plumbing: parameter list, per-parameter buffers, zero_grad and state dicts."""

    def __init__(self, params, lr, buffer_names):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters")
        self.lr, self.t = lr, 0
        self.buffers = {name: [np.zeros_like(p.data) for p in self.params] for name in buffer_names}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def state_dict(self):
        """{"step": t, "<buffer>.<i>": array} as copies."""
        state = {"step": np.array(self.t)}
        for name, arrays in self.buffers.items():
            state.update({f"{name}.{i}": a.copy() for i, a in enumerate(arrays)})
        return state

    def load_state_dict(self, state):
        expected = self.state_dict()
        problems = [f"missing key {k}" for k in expected if k not in state]
        problems += [f"unexpected key {k}" for k in state if k not in expected]
        problems += [f"shape mismatch for {k}: checkpoint {np.shape(state[k])}, optimizer {v.shape}"
                     for k, v in expected.items() if k in state and np.shape(state[k]) != v.shape]
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        self.t = int(state["step"])
        for name, arrays in self.buffers.items():
            for i, a in enumerate(arrays):
                a[...] = state[f"{name}.{i}"]


class SGD(Optimizer):
    """θ ← θ − η v,  v ← μ v + g  (heavy-ball momentum as PyTorch writes it; μ = 0 is plain SGD)."""

    def __init__(self, params, lr, momentum=0.0):
        super().__init__(params, lr, ["velocity"])
        self.momentum = float(momentum)

    def step(self):
        self.t += 1
        for p, v in zip(self.params, self.buffers["velocity"]):
            if p.grad is None:
                continue
            # v ← μ v + g
            v *= self.momentum
            v += p.grad
            # θ ← θ − η v
            p.data -= float(self.lr) * v


class AdamW(Optimizer):
    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
        super().__init__([p for g in groups for p in g["params"]], lr, ["m", "v"])
        self.weight_decay = [float(g.get("weight_decay", weight_decay)) for g in groups for _ in g["params"]]
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)

    def step(self):
        self.t += 1
        lr, b1, b2 = float(self.lr), self.beta1, self.beta2
        bias1, bias2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        for p, m, v, wd in zip(self.params, self.buffers["m"], self.buffers["v"], self.weight_decay):
            if p.grad is None:
                continue
            g = p.grad
            # θ ← θ·(1 − η λ)   (decoupled weight decay)
            if wd:
                p.data *= 1.0 - lr * wd
            # m ← β1 m + (1 − β1) g;   v ← β2 v + (1 − β2) g²
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * g * g
            # θ ← θ − η m̂ / (√v̂ + ε)
            step = np.sqrt(v * (1.0 / bias2))
            step += self.eps
            np.divide(m, step, out=step)
            p.data -= (lr / bias1) * step


def decay_groups(model, weight_decay):
    """AdamW groups: weight decay on ≥ 2-D parameters (matrices, embeddings), none on the rest."""
    params = model.parameters()
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN or inf; training stops instead of silently diverging."""


def check_finite(loss, model):
    """Stop, naming the tensor, if the loss or any gradient of `model` is NaN or inf (call after backward).

    The run's bookkeeping (`runs.Run`) adds the step to the message.
    """
    if not np.isfinite(loss.data).all():
        raise NonFiniteError(f"the loss is {float(np.asarray(loss.data).ravel()[0])}")
    for name, param in model.named_parameters():
        if param.grad is not None and not np.isfinite(param.grad).all():
            bad = int((~np.isfinite(param.grad)).sum())
            raise NonFiniteError(f"gradient of {name} has {bad} NaN/inf element(s)")


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm; returns the norm before."""
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g *= scale
    return total


def cosine_schedule(step, *, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """Learning rate at `step` (0-based): linear warmup to max_lr, cosine decay to min_lr, then flat."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    # η = η_min + ½ (η_max − η_min)(1 + cos(π · progress))   (Loshchilov & Hutter 2017, eq. 5)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
