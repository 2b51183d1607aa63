"""The exact-KL lab's closed-form facts, on every response of a tiny GPT listed (docs/kl.md derives them):
π sums to 1; the exact KL and its gradient (finite differences, and the score-function identity);
E[k1] = E[k3] = KL exactly, k2 biased by a third-order term; in the loss k1 has zero expected
gradient, k2 on the sequence log-ratio gives ∇ KL(π‖π_ref) and k3 gives ∇ KL(π_ref‖π); per token,
k2 and k3 give the position-wise token KLs' gradients (equal to the sequence ones only for L = 1);
k1 in the reward (REINFORCE) gives ∇ KL(π‖π_ref); the sampled gradient scores only the sampled rows,
exactly; and the quick experiment reaches the same verdicts."""
import json

import numpy as np
import pytest

from minirlhf.app.experiments import kl_lab as experiment
from minirlhf.engine.autograd import no_grad
from minirlhf.engine.gradcheck import gradcheck
from minirlhf.variants.kl_lab import (enumerate_responses, estimator_gradient, estimator_loss, estimator_values,
                                      exact_kl, flat_gradient, lab_batch, lab_models, positionwise_kl, relative_error,
                                      response_logprobs, reward_loss, sample_weights)

EXACT = 1e-10   # relative error of an identity that holds exactly, in float64


def lab(vocab=3, length=3, distance=0.2, seed=0):
    """Everything listed: (policy, ref, responses, batch, logprobs Tensor, ref_logprobs, π)."""
    ref, policy = lab_models(vocab, length, seed, distance=distance)
    responses = enumerate_responses(vocab, length)
    batch = lab_batch(responses)
    with no_grad():
        ref_logprobs = response_logprobs(ref, batch).data
    logprobs = response_logprobs(policy, batch)
    return policy, ref, responses, batch, logprobs, ref_logprobs, np.exp(logprobs.data.sum(axis=1))


def exact_gradients(policy, logprobs, ref_logprobs):
    return (flat_gradient(policy, exact_kl(logprobs, ref_logprobs)),      # ∇ KL(π ‖ π_ref)
            flat_gradient(policy, exact_kl(ref_logprobs, logprobs)))      # ∇ KL(π_ref ‖ π)


def test_the_list_holds_every_response_once_and_pi_sums_to_one():
    responses = enumerate_responses(3, 4)
    assert responses.shape == (81, 4) and len({tuple(r) for r in responses}) == 81
    assert responses[0].tolist() == [0, 0, 0, 0] and responses[-1].tolist() == [2, 2, 2, 2]
    input_ids, attention_mask, response_mask = lab_batch(responses)
    assert input_ids.shape == (81, 5) and np.all(input_ids[:, 0] == 0) and attention_mask.all()
    assert not response_mask[:, 0].any() and response_mask[:, 1:].all()
    policy, ref, _, _, logprobs, ref_logprobs, probs = lab()
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.exp(ref_logprobs.sum(axis=1)).sum() == pytest.approx(1.0, abs=1e-12)


def test_exact_kl_is_zero_against_itself_positive_otherwise_and_its_gradient_checks():
    policy, ref, _, batch, logprobs, ref_logprobs, probs = lab(vocab=3, length=2)
    assert float(exact_kl(logprobs.data, logprobs.data).data) == 0.0
    kl = float(exact_kl(logprobs.data, ref_logprobs).data)
    assert kl > 0.05 and float(exact_kl(ref_logprobs, logprobs.data).data) > 0.05
    # finite differences through the whole model
    weight = policy.transformer.h[0].mlp.c_fc.weight
    gradcheck(lambda w: exact_kl(response_logprobs(policy, batch), ref_logprobs), [weight], max_elements=6,
              rng=np.random.default_rng(0))


def test_k1_and_k3_average_to_the_exact_kl_and_k2_is_biased_at_third_order():
    for per in ("token", "sequence"):
        policy, ref, _, _, logprobs, ref_logprobs, probs = lab()
        kl = float(exact_kl(logprobs.data, ref_logprobs).data)
        for estimator in ("k1", "k3"):
            assert float(probs @ estimator_values(logprobs.data, ref_logprobs, estimator, per)) == \
                pytest.approx(kl, rel=EXACT)
        assert np.all(estimator_values(logprobs.data, ref_logprobs, "k3", per) >= 0)
    assert np.any(estimator_values(logprobs.data, ref_logprobs, "k1") < 0)    # one sample of k1 can be < 0
    # k2 = ½ (log r)² agrees with KL to second order: its relative bias shrinks with the distance
    bias = []
    for distance in (0.2, 0.05):
        *_, logprobs, ref_logprobs, probs = lab(distance=distance)
        kl = float(exact_kl(logprobs.data, ref_logprobs).data)
        bias.append(abs(float(probs @ estimator_values(logprobs.data, ref_logprobs, "k2")) - kl) / kl)
    assert bias[0] > 1e-3 and bias[1] < bias[0] / 2


def test_the_exact_kl_gradient_is_the_score_function_identity():
    policy, _, responses, _, logprobs, ref_logprobs, probs = lab()
    reverse, _ = exact_gradients(policy, logprobs, ref_logprobs)
    # ∇ KL(π ‖ π_ref) = E_π[(log π − log π_ref) ∇ log π]: k1 in the reward, weighted by π, exactly
    reinforce = estimator_gradient(policy, responses, ref_logprobs, probs, "reward", "k1")
    assert relative_error(reinforce, reverse) < EXACT


def test_k1_in_the_loss_has_zero_expected_gradient():
    policy, _, responses, _, logprobs, ref_logprobs, probs = lab()
    reverse, _ = exact_gradients(policy, logprobs, ref_logprobs)
    # E_π[∇ log π] = ∇ Σ_y π(y) = 0
    g = estimator_gradient(policy, responses, ref_logprobs, probs, "loss", "k1")
    assert np.linalg.norm(g) < EXACT * np.linalg.norm(reverse)
    # ... while one sample's is not zero: it is the score ∇ log π(y)
    one = np.eye(len(probs))[0]
    assert np.linalg.norm(estimator_gradient(policy, responses, ref_logprobs, one, "loss", "k1")) > 0.1


def test_on_the_sequence_k2_in_the_loss_gives_reverse_and_k3_forward_kl_gradients():
    policy, _, responses, _, logprobs, ref_logprobs, probs = lab()
    reverse, forward = exact_gradients(policy, logprobs, ref_logprobs)
    k2 = estimator_gradient(policy, responses, ref_logprobs, probs, "loss", "k2", per="sequence")
    k3 = estimator_gradient(policy, responses, ref_logprobs, probs, "loss", "k3", per="sequence")
    assert relative_error(k2, reverse) < EXACT        # E_π[ℓ ∇ℓ] = ∇ KL(π ‖ π_ref)
    assert relative_error(k3, forward) < EXACT        # E_π[(1 − π_ref/π) ∇ log π] = −E_π_ref[∇ log π]
    assert relative_error(reverse, forward) > 0.05     # and the two targets do differ


def test_per_token_k2_and_k3_give_the_positionwise_token_kl_gradients():
    policy, ref, responses, batch, logprobs, ref_logprobs, probs = lab()
    reverse, forward = exact_gradients(policy, logprobs, ref_logprobs)
    k2 = estimator_gradient(policy, responses, ref_logprobs, probs, "loss", "k2")
    k3 = estimator_gradient(policy, responses, ref_logprobs, probs, "loss", "k3")
    assert relative_error(k2, flat_gradient(policy, positionwise_kl(policy, ref, batch, probs))) < EXACT
    assert relative_error(k3, flat_gradient(policy, positionwise_kl(policy, ref, batch, probs, reverse=False))) < EXACT
    # with L > 1 that is not the sequence KL's gradient: the later tokens' KL terms are missing
    assert relative_error(k2, reverse) > 1e-3 and relative_error(k3, forward) > 1e-3


def test_with_one_token_per_response_token_and_sequence_coincide():
    policy, _, responses, _, logprobs, ref_logprobs, probs = lab(vocab=4, length=1)
    reverse, forward = exact_gradients(policy, logprobs, ref_logprobs)
    assert relative_error(estimator_gradient(policy, responses, ref_logprobs, probs, "loss", "k2"), reverse) < EXACT
    assert relative_error(estimator_gradient(policy, responses, ref_logprobs, probs, "loss", "k3"), forward) < EXACT


def test_sampled_weights_and_scoring_only_the_sampled_rows():
    policy, _, responses, _, logprobs, ref_logprobs, probs = lab()
    weights = sample_weights(probs, 10, np.random.default_rng(0))
    assert weights.sum() == pytest.approx(1.0) and np.allclose(weights * 10, np.round(weights * 10))
    # the sampled gradient scores only the rows with w > 0; the same loss over the whole list agrees
    for placement, loss in (("loss", estimator_loss), ("reward", reward_loss)):
        g = estimator_gradient(policy, responses, ref_logprobs, weights, placement, "k3")
        full = flat_gradient(policy, loss(logprobs, ref_logprobs, weights, "k3"))
        np.testing.assert_allclose(g, full, rtol=1e-9, atol=1e-12)


def test_the_experiment_at_quick_settings_reaches_the_derived_verdicts():
    results = experiment.run(vocab=3, length=3, distance=0.2, trials=2, value_draws=100)
    assert json.loads(json.dumps(results)) == results                  # what write_results stores
    verdicts = {(e["placement"], e["estimator"], e["per"]): experiment.verdict(e) for e in results["expected"]}
    assert "0" in verdicts["loss", "k1", "token"] and "reverse" in verdicts["reward", "k1", "token"]
    assert "reverse" in verdicts["loss", "k2", "sequence"] and "forward" in verdicts["loss", "k3", "sequence"]
    assert verdicts["loss", "k2", "token"] == "neither"
    assert max(results["positionwise"].values()) < EXACT
    assert results["values"]["k3"]["bias"] == pytest.approx(0.0, abs=1e-9)
    assert results["values"]["k1"]["p_negative"] > 0 == results["values"]["k3"]["p_negative"]
    assert "| loss | k1 | token | — |" in experiment.table(results)
