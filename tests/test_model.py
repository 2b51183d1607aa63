"""The GPT: config, Hugging Face names, whole-model finite differences (float64), causality,
padding invariance, the KV cache, dtypes, loss at init, memorisation, the scalar head."""
import math

import numpy as np
import pytest

from minirlhf.engine import functional as F
from minirlhf.engine.autograd import Tensor
from minirlhf.engine.gradcheck import gradcheck
from minirlhf.lm.model import GPT, GPTConfig, KVCache, ScalarHeadModel, last_token_values

import claims
from claims import assert_holds

MICRO = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)


def micro(cls=GPT, seed=0, config=MICRO):
    return cls(config, np.random.default_rng(seed)).astype(np.float64)


def perturb(model, seed=1, scale=0.3):
    """Move every parameter off its init (LayerNorm 1/0, zero biases) so no gradient is trivially 0."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = p.data + rng.normal(0, scale, p.shape)
    return model


def left_pad(seqs, pad_id=0):
    T = max(map(len, seqs))
    ids = np.full((len(seqs), T), pad_id)
    mask = np.zeros((len(seqs), T), bool)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):], mask[b, T - len(s):] = s, True
    return ids, mask


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"n_embd \(10\) must be divisible by n_head \(3\)"):
        GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=3, n_embd=10)
    with pytest.raises(ValueError, match="GPTConfig.n_layer must be an integer ≥ 1, got 0"):
        GPTConfig(vocab_size=5, block_size=4, n_layer=0, n_head=1, n_embd=4)
    with pytest.raises(ValueError, match=r"GPTConfig.dropout must lie in \[0, 1\)"):
        GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4, dropout=1.0)
    assert GPTConfig.from_dict(MICRO.to_dict()) == MICRO
    with pytest.raises(ValueError, match="unknown fields"):
        GPTConfig.from_dict({**MICRO.to_dict(), "n_embed": 8})


def test_state_dict_has_hugging_face_gpt2_names_and_shapes():
    C, L = MICRO.n_embd, MICRO.n_layer
    expected = {"transformer.wte.weight": (11, C), "transformer.wpe.weight": (8, C)}
    for i in range(L):
        h = f"transformer.h.{i}."
        expected.update({h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
                         h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
                         h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
                         h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
                         h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
                         h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,)})
    expected.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    state = GPT(MICRO, np.random.default_rng(0)).state_dict()
    assert {k: v.shape for k, v in state.items()} == expected
    # V·C + block·C + L·(12C² + 13C) + 2C
    assert GPT(MICRO, np.random.default_rng(0)).num_params() == 11 * 8 + 8 * 8 + 2 * (12 * 64 + 13 * 8) + 16


def test_init_follows_gpt2():
    config = GPTConfig(vocab_size=64, block_size=64, n_layer=4, n_head=4, n_embd=64)
    model = GPT(config, np.random.default_rng(0))
    block = model.transformer.h[0]
    assert np.std(model.transformer.wte.weight.data) == pytest.approx(0.02, rel=0.05)
    assert np.std(block.mlp.c_proj.weight.data) == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert np.all(block.attn.c_attn.bias.data == 0) and np.all(block.ln_1.weight.data == 1)


def test_whole_model_gradcheck_float64():
    model = perturb(micro())
    rng = np.random.default_rng(2)
    ids, mask = left_pad([rng.integers(0, 11, 5), rng.integers(0, 11, 3)])     # (2, 5), left-padded
    loss = lambda *_: F.cross_entropy(model(ids[:, :-1], mask[:, :-1]), ids[:, 1:], mask=mask[:, 1:])
    names, params = zip(*model.named_parameters())
    gradcheck(loss, list(params), names=list(names), max_elements=20, rng=rng)


def test_scalar_head_gradcheck_float64():
    model = perturb(micro(ScalarHeadModel))
    ids, mask = left_pad([[3, 1, 4, 1], [5, 9]])
    score = lambda *_: (last_token_values(model(ids, mask), mask) * np.array([1.0, -2.0])).sum()
    names, params = zip(*model.named_parameters())
    gradcheck(score, list(params), names=list(names), max_elements=10, rng=np.random.default_rng(3))


def test_causality_future_tokens_do_not_change_the_past():
    model = perturb(micro())
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    changed = ids.copy()
    changed[0, 3] = 9
    a, b = model(ids).data, model(changed).data
    np.testing.assert_allclose(a[:, :3], b[:, :3], rtol=0, atol=1e-12)
    assert np.abs(a[:, 3:] - b[:, 3:]).max() > 1e-3


def test_left_padding_gives_each_sequence_its_own_logits():
    model = perturb(micro())
    seqs = [[1, 2, 3, 4, 5, 6], [7, 3], [10, 0, 5, 5]]
    ids, mask = left_pad(seqs, pad_id=4)
    batched = model(ids, mask).data                                   # (3, 6, V)
    assert np.isfinite(batched).all()                                 # padding rows too
    for b, s in enumerate(seqs):
        alone = model(np.array([s])).data[0]
        np.testing.assert_allclose(batched[b, 6 - len(s):], alone, rtol=0, atol=1e-9)


def test_kv_cache_matches_full_forward():
    model = perturb(micro())
    ids, mask = left_pad([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10]])
    full = model(ids, mask).data
    cache = KVCache()
    parts = [model(ids[:, :4], mask[:, :4], kv_cache=cache).data]
    for t in range(4, 7):
        parts.append(model(ids[:, t:t + 1], mask[:, t:t + 1], kv_cache=cache).data)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=0, atol=1e-9)
    assert cache.mask.shape == (2, 7) and cache.layers[0][0].shape == (2, 2, 7, 4)


def test_float32_stays_float32_through_the_model():
    model = GPT(MICRO, np.random.default_rng(0))
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    logits, hidden = model(ids, return_hidden=True)
    assert logits.dtype == hidden.dtype == np.float32 and logits.shape == (2, 3, 11) and hidden.shape == (2, 3, 8)
    F.cross_entropy(logits, ids).backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


def test_loss_at_init_is_log_vocab():
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32)
    ids = np.random.default_rng(0).integers(0, 50, (4, 17))
    loss = F.cross_entropy(GPT(config, np.random.default_rng(0))(ids[:, :-1]), ids[:, 1:]).item()
    assert abs(loss - math.log(50)) < 0.05


def test_micro_model_memorises_a_sequence():
    assert_holds(claims.micro_model_memorises())


def test_position_beyond_block_size_is_an_error():
    with pytest.raises(ValueError, match="9 real tokens exceed block_size 8"):
        micro()(np.zeros((1, 9), int))
    micro()(np.zeros((1, 9), int), np.arange(9)[None] > 0)   # 8 real tokens, one pad: fine


def test_dropout_only_in_train_mode():
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.5)
    model, plain = GPT(config, np.random.default_rng(0)), GPT(MICRO, np.random.default_rng(0))
    ids = np.array([[1, 2, 3]])
    a, b = model(ids).data, model(ids).data
    assert np.abs(a - b).max() > 1e-4
    model.eval()
    np.testing.assert_array_equal(model(ids).data, plain(ids).data)


def test_scalar_head_from_lm_copies_the_body():
    lm = perturb(micro())
    rm = ScalarHeadModel.from_lm(lm, np.random.default_rng(5))
    names = [n for n, _ in rm.named_parameters()]
    assert names[-2:] == ["score.weight", "score.bias"] and rm.score.weight.shape == (8, 1)
    for name, array in lm.state_dict().items():
        np.testing.assert_array_equal(rm.state_dict()[name], array)
    assert rm.transformer.wte.weight.dtype == np.float64
    lm.transformer.wte.weight.data[0, 0] += 1.0          # a copy, not shared
    assert rm.transformer.wte.weight.data[0, 0] != lm.transformer.wte.weight.data[0, 0]
    ids = np.array([[1, 2, 3, 4]])
    _, hidden = lm(ids, return_hidden=True)
    lm.transformer.wte.weight.data[0, 0] -= 1.0
    scores = rm(ids)
    assert scores.shape == (1, 4)
    np.testing.assert_allclose(scores.data, hidden.data @ rm.score.weight.data[:, 0] + rm.score.bias.data[0], atol=1e-12)


def test_scalar_head_from_lm_without_an_rng_is_reproducible():
    lm = perturb(micro())
    rm = ScalarHeadModel.from_lm(lm)   # the head from np.random.default_rng(0)
    same = ScalarHeadModel.from_lm(lm, np.random.default_rng(0))
    for name, array in same.state_dict().items():
        np.testing.assert_array_equal(rm.state_dict()[name], array, err_msg=name)
    np.testing.assert_array_equal(rm.transformer.wte.weight.data, lm.transformer.wte.weight.data)
    other = ScalarHeadModel.from_lm(lm, np.random.default_rng(1))   # another rng, another head
    assert not np.array_equal(rm.score.weight.data, other.score.weight.data)


def test_last_token_values_left_and_right_padding():
    values = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    mask = np.array([[False, True, True, True],     # left-padded: last at 3
                     [True, True, False, False],    # right-padded: last at 1
                     [False, True, False, False]])  # a single token at 1
    picked = last_token_values(values, mask)
    np.testing.assert_array_equal(picked.data, [3.0, 5.0, 9.0])
    picked.sum().backward()
    assert values.grad.sum() == 3.0 and values.grad[0, 3] == values.grad[1, 1] == values.grad[2, 1] == 1.0
    np.testing.assert_array_equal(last_token_values(values.data, mask), [3.0, 5.0, 9.0])
    with pytest.raises(ValueError, match=r"rows \[1\] have no True"):
        last_token_values(values, np.array([[True] * 4, [False] * 4, [True] * 4]))
