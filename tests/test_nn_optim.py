"""Modules, checkpoint files, optimizers (against the update computed by hand), clipping, the
learning-rate schedule, and a small MLP learning a non-linear problem."""
import math
import os

import numpy as np
import pytest

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.nn import Dropout, Embedding, LayerNorm, Linear, Module, load_state_dict_file, save_state_dict
from minirlhf.engine.optim import SGD, AdamW, clip_grad_norm, cosine_schedule, decay_groups

import claims
from claims import assert_holds


class MLP(Module):
    def __init__(self, rng, sizes=(2, 32, 32, 1)):
        self.layers = [Linear(a, b, rng, std=1.0 / math.sqrt(a)) for a, b in zip(sizes[:-1], sizes[1:])]
        self.norm = LayerNorm(sizes[1])
        self.drop = Dropout(0.5, rng)

    def __call__(self, x):
        x = self.norm(self.layers[0](x)).tanh()
        for layer in self.layers[1:-1]:
            x = layer(self.drop(x)).tanh()
        return self.layers[-1](x)


def test_named_parameters_are_dotted_and_ordered():
    model = MLP(np.random.default_rng(0))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                     "layers.2.weight", "layers.2.bias", "norm.weight", "norm.bias"]
    assert model.num_params() == 2 * 32 + 32 + 32 * 32 + 32 + 32 + 1 + 32 + 32
    assert all(p.dtype == np.float32 and p.requires_grad for p in model.parameters())


def test_train_eval_reach_children_and_astype_casts():
    model = MLP(np.random.default_rng(0)).eval()
    assert not model.drop.training and not model.layers[1].training
    model.train()
    assert model.drop.training
    model.astype(np.float64)
    assert all(p.dtype == np.float64 for p in model.parameters())


def test_state_dict_round_trip_through_a_checkpoint(tmp_path):
    a, b = MLP(np.random.default_rng(0)), MLP(np.random.default_rng(1))
    path = tmp_path / "model.npz"
    save_state_dict(path, a.state_dict())
    b.load_state_dict(load_state_dict_file(path))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert os.listdir(tmp_path) == ["model.npz"]   # the temp file was renamed, none left over


def test_module_save_and_load_round_trip(tmp_path):
    a, b = MLP(np.random.default_rng(0)), MLP(np.random.default_rng(1)).astype(np.float64)
    a.save(tmp_path / "mlp.npz")
    assert b.load(tmp_path / "mlp.npz") is b
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        assert q.dtype == np.float64   # loading keeps the module's dtype
    assert os.listdir(tmp_path) == ["mlp.npz"]   # written through a temp file, none left over
    first_layer = Module()
    first_layer.layers = [Linear(2, 32, np.random.default_rng(2))]   # only the keys layers.0.*
    with pytest.raises(ValueError, match="unexpected key layers.1.weight"):
        first_layer.load(tmp_path / "mlp.npz")
    first_layer.load(tmp_path / "mlp.npz", strict=False)   # the keys both have are loaded
    np.testing.assert_array_equal(first_layer.layers[0].weight.data, a.layers[0].weight.data)


def test_mismatched_load_names_the_keys():
    model = MLP(np.random.default_rng(0))
    state = model.state_dict()
    state["layers.0.weight"] = np.zeros((3, 32))
    state["extra.weight"] = np.zeros(2)
    del state["norm.bias"]
    with pytest.raises(ValueError) as err:
        model.load_state_dict(state)
    message = str(err.value)
    assert "shape mismatch for layers.0.weight: checkpoint (3, 32), model (2, 32)" in message
    assert "missing key norm.bias" in message and "unexpected key extra.weight" in message
    state["layers.0.weight"] = np.ones((2, 32))
    model.load_state_dict(state, strict=False)   # missing/unexpected allowed, shapes still checked
    assert model.layers[0].weight.dtype == np.float32 and model.layers[0].weight.data.sum() == 64


def test_checkpoint_files_refuse_pickles_and_garbage(tmp_path):
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled.npz: not a checkpoint"):
        load_state_dict_file(pickled)
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not a zip")
    with pytest.raises(ValueError, match="garbage.npz: not a checkpoint"):
        load_state_dict_file(garbage)


def param(values):
    return Tensor(np.array(values, dtype=np.float64), requires_grad=True)


def test_adamw_two_steps_match_the_algorithm_by_hand():
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.99, 1e-8, 0.5
    w, b = param([1.0, -2.0]), param([0.5])
    opt = AdamW([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}],
                lr=lr, betas=(b1, b2), eps=eps)
    grads = [(np.array([0.3, -0.4]), np.array([2.0])), (np.array([-0.1, 0.2]), np.array([1.0]))]
    theta, m, v = [np.array([1.0, -2.0]), np.array([0.5])], [0.0, 0.0], [0.0, 0.0]
    for t, gs in enumerate(grads, start=1):
        w.grad, b.grad = gs
        opt.step()
        for i, (g, decay) in enumerate(zip(gs, (wd, 0.0))):
            theta[i] = theta[i] * (1 - lr * decay)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            theta[i] = theta[i] - lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
        np.testing.assert_allclose(w.data, theta[0], rtol=1e-14)
        np.testing.assert_allclose(b.data, theta[1], rtol=1e-14)
        if t == 1:   # the first step moves each weight by lr·sign(g) (m̂/√v̂ = g/|g|), after the decay
            np.testing.assert_allclose(w.data, [1.0 * (1 - lr * wd) - lr, -2.0 * (1 - lr * wd) + lr], rtol=1e-7)
            np.testing.assert_allclose(b.data, [0.5 - lr], rtol=1e-7)
    assert opt.t == 2


def test_sgd_momentum_by_hand():
    w = param([1.0])
    opt = SGD([w], lr=0.1, momentum=0.9)
    for g in (2.0, 1.0):
        w.grad = np.array([g])
        opt.step()
    # v1 = 2, w1 = 1 − 0.2 = 0.8;  v2 = 0.9·2 + 1 = 2.8, w2 = 0.8 − 0.28 = 0.52
    np.testing.assert_allclose(w.data, [0.52], rtol=1e-14)


def test_parameters_without_grad_are_skipped():
    w = param([1.0])
    AdamW([w], lr=0.1).step()
    assert w.data[0] == 1.0


def test_decay_groups_decay_matrices_only():
    model = MLP(np.random.default_rng(0)).astype(np.float64)
    before = model.state_dict()
    opt = AdamW(decay_groups(model, 0.1), lr=0.5)
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    opt.step()   # zero gradients: only the decay acts, θ ← θ(1 − 0.05)
    for name, p in model.named_parameters():
        factor = 0.95 if p.ndim >= 2 else 1.0
        np.testing.assert_allclose(p.data, before[name] * factor, rtol=1e-14, err_msg=name)


def two_moons(rng, n=200):
    """Two interleaved half circles: points (n, 2) float32 and labels ±1."""
    angle = rng.uniform(0, math.pi, n)
    label = np.arange(n) % 2
    x = np.stack([np.cos(angle) + label, np.sin(angle) * (1 - 2 * label) + 0.5 * label], axis=1)
    return (x + rng.normal(0, 0.1, x.shape)).astype(np.float32), (2.0 * label - 1.0).astype(np.float32)


def train(model, opt, steps, data):
    """Full-batch logistic regression −log σ(y·f(x)); returns the last loss and the accuracy."""
    x, sign = data
    for _ in range(steps):
        margin = model(Tensor(x)).reshape(len(x)) * sign
        loss = -F.logsigmoid(margin).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item(), float(np.mean(margin.data > 0))


def test_mlp_learns_two_moons():
    assert_holds(claims.two_moons_mlp())


def test_optimizer_state_resumes_exactly(tmp_path):
    data = two_moons(np.random.default_rng(0))
    def fresh(seed):
        model = MLP(np.random.default_rng(seed)).eval()
        return model, AdamW(decay_groups(model, 0.01), lr=0.01)
    straight, opt = fresh(0)
    train(straight, opt, 5, data)
    model, opt = fresh(0)
    train(model, opt, 3, data)
    path = tmp_path / "ckpt.npz"
    save_state_dict(path, {**{f"model.{k}": a for k, a in model.state_dict().items()},
                           **{f"opt.{k}": a for k, a in opt.state_dict().items()}})
    state = load_state_dict_file(path)
    resumed, opt = fresh(1)   # other weights, empty moments: the checkpoint must restore both
    resumed.load_state_dict({k[6:]: a for k, a in state.items() if k.startswith("model.")})
    opt.load_state_dict({k[4:]: a for k, a in state.items() if k.startswith("opt.")})
    train(resumed, opt, 2, data)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    without_moments, opt = fresh(1)
    without_moments.load_state_dict({k[6:]: a for k, a in state.items() if k.startswith("model.")})
    train(without_moments, opt, 2, data)
    assert not np.array_equal(without_moments.layers[0].weight.data, straight.layers[0].weight.data)
    with pytest.raises(ValueError, match="missing key m.0"):
        opt.load_state_dict({"step": np.array(1)})


def test_clip_grad_norm():
    a, b = param([3.0]), param([4.0])
    a.grad, b.grad = np.array([3.0]), np.array([4.0])
    assert clip_grad_norm([a, b], 10.0) == pytest.approx(5.0)
    assert a.grad[0] == 3.0   # below the limit: untouched
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    assert math.hypot(a.grad[0], b.grad[0]) == pytest.approx(1.0, rel=1e-6)


def test_cosine_schedule_closed_form():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)
    assert cosine_schedule(0, **kw) == pytest.approx(0.1)       # (0 + 1) / 10 of max
    assert cosine_schedule(9, **kw) == pytest.approx(1.0)
    assert cosine_schedule(10, **kw) == pytest.approx(1.0)      # cos(0)
    assert cosine_schedule(60, **kw) == pytest.approx(0.55)     # halfway: (max + min) / 2
    assert cosine_schedule(110, **kw) == pytest.approx(0.1)
    assert cosine_schedule(500, **kw) == pytest.approx(0.1)


def test_dropout_train_only_scaled_and_seeded():
    x = Tensor(np.ones(100_000, np.float32), requires_grad=True)
    drop = Dropout(0.25)
    assert drop.eval()(x) is x
    drop.train()
    y = drop(x, rng=np.random.default_rng(0))
    kept = y.data != 0
    # binomial(1e5, 0.75): standard deviation 0.0014 of the fraction; 0.01 is 7 of them
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y.data[kept], 1 / 0.75, rtol=1e-6)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(drop(x, rng=np.random.default_rng(0)).data, y.data)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.data)   # the gradient goes through the same mask
    with pytest.raises(ValueError, match="needs an np.random.Generator"):
        drop(x)


def test_layers_shapes_and_gpt_layout():
    rng = np.random.default_rng(0)
    lin, emb, ln = Linear(3, 5, rng), Embedding(7, 4, rng), LayerNorm(4)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (5,)   # (C_in, C_out), as GPT-2's Conv1D
    assert emb(np.array([[0, 6]])).shape == (1, 2, 4)
    np.testing.assert_array_equal(ln.weight.data, 1.0)
    assert Linear(3, 5, rng, bias=False).bias is None
    assert [n for n, _ in Linear(3, 5, rng, bias=False).named_parameters()] == ["weight"]
